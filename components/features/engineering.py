"""Feature tables computed from the loop's data: post captions and engagement, user profiles."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from components.data.posts import TIMESTAMP
from components.features import captions
from components.features.store import INTEREST_TAGS, SOURCE_SCHEMAS, WINDOWS


def engagement_rate(engaged: np.ndarray, views: np.ndarray) -> np.ndarray:
    """(likes + comments + shares) / views, 0 where nothing was viewed."""
    views = np.asarray(views, np.float64)
    return np.where(views > 0, np.asarray(engaged, np.float64) / np.maximum(views, 1), 0.0).astype(np.float32)


def post_meta(posts: pa.Table, ingested_at: datetime, device: str = "cpu") -> pa.Table:
    """Caption, hashtag and engagement features of ``posts`` (snapshot or source rows)."""
    frame = posts.select(["post_id", "created_at", "caption", "hashtags", "views", "likes", "comments", "shares"])
    captions_ = frame.column("caption").to_pylist()
    hashtags = frame.column("hashtags").to_pylist()
    texts = [captions.caption_text(c, h) for c, h in zip(captions_, hashtags, strict=True)]
    counts = {name: pc.fill_null(frame.column(name), 0) for name in ("views", "likes", "comments", "shares")}
    engaged = pc.add(pc.add(counts["likes"], counts["comments"]), counts["shares"])
    rate = engagement_rate(engaged.to_numpy(), counts["views"].to_numpy())
    return pa.table(
        {
            "post_id": frame.column("post_id"),
            "created_at": frame.column("created_at"),
            "ingested_at": pa.array([ingested_at] * len(frame), TIMESTAMP),
            "caption_length": pa.array([len(c or "") for c in captions_], pa.int64()),
            "hashtag_count": pa.array([len(h or []) for h in hashtags], pa.int64()),
            "hashtags": pa.array([list(h or []) for h in hashtags], pa.list_(pa.string())),
            "caption_embedding": pa.array(list(captions.encode(texts, device)), pa.list_(pa.float32())),
            **{name: counts[name] for name in ("views", "likes", "comments", "shares")},
            "engagement_rate": pa.array(rate, pa.float32()),
        }
    )


def user_profiles(posts: pd.DataFrame, days: Sequence[datetime], computed_at: datetime) -> pa.Table:
    """Each user's profile as of each midnight in ``days``, from the posts created before it.

    ``posts`` has user_id, created_at, views, likes, comments, shares and predicted_tag
    (the champion's tag; null when none scored the post). Users with no post in the
    longest window get no row that day.
    """
    longest = timedelta(days=max(WINDOWS))
    engaged = posts[["likes", "comments", "shares"]].fillna(0).sum(axis=1)
    frame = posts.assign(engaged=engaged, views=posts["views"].fillna(0))
    parts = []
    for as_of in days:
        recent = frame[(frame["created_at"] < as_of) & (frame["created_at"] >= as_of - longest)]
        if recent.empty:
            continue
        out = pd.DataFrame(index=pd.Index(sorted(recent["user_id"].unique()), name="user_id"))
        for w in WINDOWS:
            win = recent[recent["created_at"] >= as_of - timedelta(days=w)].groupby("user_id")
            out[f"posts_{w}d"] = win.size().reindex(out.index).fillna(0).astype("int64")
            sums = win[["engaged", "views"]].sum().reindex(out.index).fillna(0)
            out[f"engagement_rate_{w}d"] = engagement_rate(sums["engaged"].to_numpy(), sums["views"].to_numpy())
        tags, shares = _interests(recent)
        out["interest_tags"] = tags.reindex(out.index)
        out["interest_shares"] = shares.reindex(out.index)
        parts.append(out.reset_index().assign(as_of=as_of))
    schema = SOURCE_SCHEMAS["user_profile"]
    if not parts:
        return schema.empty_table()
    table = pd.concat(parts, ignore_index=True).assign(computed_at=computed_at)
    for column in ("interest_tags", "interest_shares"):
        table[column] = [v if isinstance(v, list) else [] for v in table[column]]
    return pa.Table.from_pandas(table[schema.names], schema=schema, preserve_index=False)


def _interests(recent: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    tagged = recent.dropna(subset=["predicted_tag"])
    if tagged.empty:
        empty = pd.Series(dtype=object)
        return empty, empty
    counts = tagged.groupby(["user_id", "predicted_tag"]).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby("user_id")["n"].transform("sum")
    top = counts.sort_values(["user_id", "n", "predicted_tag"], ascending=[True, False, True])
    top = top.groupby("user_id").head(INTEREST_TAGS).groupby("user_id")
    return top["predicted_tag"].agg(list), top["share"].agg(lambda s: [float(x) for x in s])
