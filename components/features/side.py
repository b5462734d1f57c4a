"""Side inputs: the stored features a fusion tagger reads beside the image.

A fusion tagger (``TaggerSpec.side``) scores an image together with a vector of
features from the feature store: the post's caption embedding, the poster's recent
activity and interests. The vector's layout is named column by column
(``side_columns``), so a tagger whose labels grow keeps the weights of every column
it knew (see ``components.model.tagger.extend_labels``).

Each group carries a ``known`` column: 1 when the store had the group's features for
the row, 0 when it did not (a post with no stored caption, a user with no profile
yet), in which case the group's other columns are 0. Training blanks whole groups now
and then (``TrainConfig.side_dropout``), so a model has seen rows with a
group unknown and degrades to the image, rather than to noise, when serving meets one.

Features are read point in time for training, evaluation and batch scoring
(``SideReader.historical``, at each post's ``created_at``), and from the online store
when serving (``SideReader.online``), where a caption not stored yet is encoded on the fly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from components.errors import ConfigError, FeatureError
from components.features import captions

if TYPE_CHECKING:  # pandas and Feast load where features are read, not where a tagger checks its inputs
    import pandas as pd

    from components.features.store import Features


@dataclass(frozen=True)
class SideGroup:
    """Features read together and encoded into consecutive columns."""

    name: str
    refs: tuple[str, ...]  # view:feature references in the feature store
    doc: str

    def columns(self, labels: Sequence[str]) -> list[str]:
        return [f"{self.name}:{c}" for c in _COLUMNS[self.name](labels)]


def _caption_columns(labels: Sequence[str]) -> list[str]:
    return ["known"] + [f"embedding[{i}]" for i in range(captions.DIM)]


def _user_columns(labels: Sequence[str]) -> list[str]:
    return ["known", "log1p_posts_28d", "engagement_rate_28d"] + [f"interest={label}" for label in labels]


_COLUMNS: dict[str, Callable[[Sequence[str]], list[str]]] = {"caption": _caption_columns, "user": _user_columns}

SIDE_GROUPS: dict[str, SideGroup] = {
    "caption": SideGroup(
        "caption",
        ("post_meta_fv:caption_embedding",),
        "the post's caption and hashtags, as the 384-d sentence embedding",
    ),
    "user": SideGroup(
        "user",
        (
            "user_profile_fv:posts_28d",
            "user_profile_fv:engagement_rate_28d",
            "user_profile_fv:interest_tags",
            "user_profile_fv:interest_shares",
        ),
        "the poster's last 28 days: how much they post, engagement, and their share of each tag",
    ),
}
RATE_SCALE = 10.0  # engagement rates sit around 0.05; scaled so their column is not drowned by the others


def check_side(side: Sequence[str] | str | None) -> tuple[str, ...]:
    """``side`` (names, or one comma-separated string; none: image only) as known groups in canonical order."""
    if side is None:
        return ()
    if isinstance(side, str):
        side = [name.strip() for name in side.split(",")]
    side = [name for name in side if name and name != "none"]
    unknown = sorted(set(side) - set(SIDE_GROUPS))
    if unknown:
        raise ConfigError(f"unknown side input {', '.join(unknown)}; choose from {', '.join(SIDE_GROUPS)}")
    return tuple(name for name in SIDE_GROUPS if name in set(side))


def side_refs(side: Sequence[str]) -> list[str]:
    """The feature references a tagger with ``side`` inputs reads, in order (its feature service)."""
    return [ref for name in check_side(side) for ref in SIDE_GROUPS[name].refs]


def side_columns(side: Sequence[str], labels: Sequence[str]) -> list[str]:
    return [c for name in check_side(side) for c in SIDE_GROUPS[name].columns(labels)]


def group_slices(side: Sequence[str], labels: Sequence[str]) -> list[slice]:
    """Where each group's columns sit in the side vector."""
    out, start = [], 0
    for name in check_side(side):
        width = len(SIDE_GROUPS[name].columns(labels))
        out.append(slice(start, start + width))
        start += width
    return out


def encode(found: pd.DataFrame, side: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    """Feature columns as read from the store (one row per post) -> float32 (N, len(side_columns))."""
    encoders = {
        "caption": lambda: _encode_caption(found["caption_embedding"]),
        "user": lambda: _encode_user(found, labels),
    }
    parts = [encoders[name]() for name in check_side(side)]
    if not parts:
        return np.zeros((len(found), 0), np.float32)
    return np.concatenate(parts, axis=1)


def _missing(value: object) -> bool:
    """None, NaN or pd.NA: what a store returns for a value it does not hold."""
    import pandas as pd  # noqa: PLC0415 - the settings import this module (check_side): pandas loads on use

    return value is None or (not isinstance(value, list | tuple | np.ndarray) and bool(pd.isna(value)))


def _encode_caption(embeddings: pd.Series) -> np.ndarray:
    out = np.zeros((len(embeddings), 1 + captions.DIM), np.float32)
    for i, value in enumerate(embeddings):
        if _missing(value):
            continue
        vector = np.asarray(value, np.float32)
        if vector.shape != (captions.DIM,):
            raise FeatureError(f"a caption embedding has shape {vector.shape}, not ({captions.DIM},)")
        out[i, 0], out[i, 1:] = 1.0, vector
    return out


def _encode_user(found: pd.DataFrame, labels: Sequence[str]) -> np.ndarray:
    index = {label: j for j, label in enumerate(labels)}
    out = np.zeros((len(found), 3 + len(labels)), np.float32)
    counts = found["posts_28d"].to_numpy()
    rates = found["engagement_rate_28d"].to_numpy()
    for i, (tags, shares) in enumerate(zip(found["interest_tags"], found["interest_shares"], strict=True)):
        if _missing(counts[i]):
            continue  # no profile known for this user at this time
        out[i, 0] = 1.0
        out[i, 1] = np.log1p(float(counts[i]))
        out[i, 2] = RATE_SCALE * float(rates[i]) if not _missing(rates[i]) else 0.0
        if _missing(tags) or _missing(shares):
            continue  # a profile with no scored post yet: no interests
        if len(tags) != len(shares):
            raise FeatureError(f"a user profile has {len(tags)} interest tags but {len(shares)} shares")
        for tag, share in zip(tags, shares, strict=True):
            if tag in index:  # a tag the model does not score carries no column
                out[i, 3 + index[tag]] = float(share)
    return out


class SideReader:
    """Reads a tagger's side inputs from the feature store, opened on first use.

    ``features`` is a store or a callable that opens one: an image-only tagger never
    pays for opening Feast.
    """

    def __init__(self, features: Features | Callable[[], Features], device: str = "cpu"):
        self._features = features
        self.device = device  # where captions are encoded when serving meets one the store lacks

    @property
    def features(self) -> Features:
        if callable(self._features):
            self._features = self._features()
        return self._features

    def historical(self, side: Sequence[str], labels: Sequence[str], posts: pd.DataFrame) -> np.ndarray:
        """Side vectors for ``posts`` (post_id, user_id, created_at) as the store knew them at created_at."""
        missing = sorted({"post_id", "user_id", "created_at"} - set(posts.columns))
        if missing:
            raise ConfigError(f"a fusion tagger's posts need {', '.join(missing)}")
        import pandas as pd  # noqa: PLC0415

        entities = pd.DataFrame(
            {
                "post_id": posts["post_id"].astype(str).to_numpy(),
                "user_id": posts["user_id"].fillna("").astype(str).to_numpy(),
                "event_timestamp": pd.to_datetime(posts["created_at"], utc=True).to_numpy(),
            }
        )
        found = self.features.historical(entities, side_refs(side))
        return encode(found, side, labels)

    def online(
        self,
        side: Sequence[str],
        labels: Sequence[str],
        user_ids: Sequence[str | None],
        post_ids: Sequence[str | None],
        texts: Sequence[str | None],
    ) -> np.ndarray:
        """Side vectors at serving time, from the online store.

        A post's stored caption embedding is used when the store has it; otherwise
        the request's caption text (caption and hashtags) is encoded now, so a new
        upload gets the same caption input its training posts had. An empty text is
        encoded too, as ingestion does for a post without a caption.
        """
        side = check_side(side)
        rows = {"user_id": [u or "" for u in user_ids], "post_id": [p or "" for p in post_ids]}
        found = self.features.online(side_refs(side), rows)
        if "caption" in side:
            stored = found["caption_embedding"].tolist()
            fresh = [i for i, v in enumerate(stored) if _missing(v)]
            if fresh:
                encoded = captions.encode([texts[i] or "" for i in fresh], self.device)
                for row, i in enumerate(fresh):
                    stored[i] = encoded[row]
            found = found.assign(caption_embedding=stored)
        return encode(found, side, labels)
