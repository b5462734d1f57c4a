"""``simulate``: write a deterministic social feed, day by day.

Output layout (``out/``)::

    simulation.json                       the scenario, tags and days written
    users.parquet                         user_id, followers (what the platform knows)
    posts/day=YYYY-MM-DD/posts.parquet    the posts of one day (no labels)
    images/day=YYYY-MM-DD/<post_id>.jpg   their uploads, as phones sent them
    oracle/users.parquet                  each user's true interests over tags
    oracle/labels/day=YYYY-MM-DD/labels.parquet  ground truth: label, filter, upload defects

The oracle is kept apart from the posts: simulated annotators, viewers, tests and benchmarks read
it; the model never does. Each post draws from its own random stream keyed by
(seed, day, index), so a day comes out the same whatever else is simulated.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from components.data.posts import ORACLE_SCHEMA, POST_SCHEMA
from components.errors import ConfigError
from components.files import write_atomic, write_rows, write_table
from components.simulator import scenes, social, trends, uploads
from components.simulator.trends import NewClass, PriorShift, StyleShift, Trend

if TYPE_CHECKING:
    import pandas as pd

_USERS_STREAM, _DAY_STREAM, _POST_STREAM = 1, 2, 3


def default_trends() -> list[NewClass | StyleShift | PriorShift]:
    """The default scenario: January fitness resolutions, a new meme format, a vintage filter craze."""
    return [
        PriorShift(start_day=3, ramp_days=2, weights={"fitness": 3.0}),
        NewClass(name="meme", look="meme", start_day=8, ramp_days=0, share=0.3),
        StyleShift(filter="vintage", start_day=12, ramp_days=4, share=0.3),
    ]


class FeedSpec(BaseModel):
    """The scenario: everything that decides what the feed looks like. Same spec, same feed."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 7  # one seed drives users, schedule sampling and every image
    start_date: date = date(2026, 1, 5)  # the calendar date of day 0 (UTC)
    posts_per_day: int = Field(default=200, ge=1)
    image_size: int = Field(default=64, ge=16, le=1024)  # square RGB images, pixels per side
    image_format: Literal["jpeg", "png"] = "jpeg"  # how uploads are encoded
    users: int = Field(default=400, ge=1)
    difficulty: float = Field(default=1.0, ge=0.0, le=3.0)  # clutter, occlusion, noise; 1.0 is calibrated
    exif_share: float = Field(default=0.2, ge=0, le=1)  # uploads from phones: EXIF with GPS, half of them rotated
    corrupt_share: float = Field(default=0.01, ge=0, le=1)  # uploads that arrive broken
    repost_share: float = Field(default=0.02, ge=0, le=1)  # posts re-uploading an earlier image of the day
    base_priors: dict[str, float] | None = None  # base class shares before any trend; None: uniform
    trends: list[Trend] = Field(default_factory=default_trends)

    def tags(self) -> list[str]:
        """Every tag the scenario can produce: the base tags, then new classes in order."""
        return list(scenes.BASE_TAGS) + [t.name for t in self.trends if isinstance(t, NewClass)]

    def priors(self) -> dict[str, float]:
        priors = self.base_priors or {tag: 1.0 for tag in scenes.BASE_TAGS}
        unknown = set(priors) - set(scenes.BASE_TAGS)
        if unknown:
            raise ConfigError(
                f"base_priors names unknown tag {sorted(unknown)[0]!r}; tags: {', '.join(scenes.BASE_TAGS)}"
            )
        return {tag: float(priors.get(tag, 0.0)) for tag in scenes.BASE_TAGS}

    def check(self) -> None:
        trends.check_trends(scenes.BASE_TAGS, list(self.trends))
        if sum(self.priors().values()) <= 0:
            raise ConfigError("base_priors must give some class a positive share")

    def day_date(self, day: int) -> date:
        return self.start_date + timedelta(days=day)

    def day_start(self, day: int) -> datetime:
        """Midnight (UTC) at the start of ``day``."""
        return datetime.combine(self.day_date(day), datetime.min.time(), tzinfo=UTC)

    def class_shares(self, day: int) -> dict[str, float]:
        return trends.class_shares(day, self.priors(), list(self.trends))

    def filter_shares(self, day: int) -> dict[str, float]:
        return trends.filter_shares(day, list(self.trends))


@dataclass(frozen=True)
class DayResult:
    day: int
    posts: int
    labels: dict[str, int]  # label -> posts
    filtered: int  # posts carrying a trending filter
    corrupt: int  # uploads that arrive broken


def _looks(spec: FeedSpec) -> dict[str, str]:
    return {**{t: t for t in scenes.BASE_TAGS}, **{t.name: t.look for t in spec.trends if isinstance(t, NewClass)}}


@dataclass(frozen=True)
class DayPlan:
    """Who posts what on a day, before any image is drawn. Cheap: tests check the schedule on it."""

    labels: list[str]  # (N,) content tag of each post
    filters: list[str | None]  # (N,) trending filter applied, if any
    authors: np.ndarray  # (N,) index into the users
    created_at: list[datetime]  # (N,) sorted, inside the day (UTC)


def plan_day(spec: FeedSpec, day: int, users: social.Users) -> DayPlan:
    """Sample the day's labels from the schedule's class shares, filters, authors and times."""
    rng = np.random.default_rng([spec.seed, _DAY_STREAM, day])
    tags = spec.tags()
    shares = spec.class_shares(day)
    label_idx = rng.choice(len(tags), size=spec.posts_per_day, p=np.array([shares[t] for t in tags]))
    fshares = spec.filter_shares(day)
    filter_names = [None, *fshares]
    filter_p = np.array([1.0 - sum(fshares.values()), *fshares.values()])
    styles = rng.choice(len(filter_names), size=spec.posts_per_day, p=filter_p / filter_p.sum())
    authors = social.pick_authors(rng, users, label_idx)
    seconds = np.sort(rng.uniform(0, 86_400, size=spec.posts_per_day))
    midnight = spec.day_start(day)
    return DayPlan(
        labels=[tags[k] for k in label_idx],
        filters=[filter_names[k] for k in styles],
        authors=authors,
        created_at=[midnight + timedelta(seconds=float(x)) for x in seconds],
    )


def simulate_day(
    spec: FeedSpec, day: int, out: Path, users: social.Users, tick: Callable[[int], None] | None = None
) -> DayResult:
    """Write one day's posts, uploads and oracle under ``out``; the manifest lands last."""
    plan = plan_day(spec, day, users)
    tag_index = {tag: k for k, tag in enumerate(spec.tags())}
    part = f"day={spec.day_date(day).isoformat()}"
    image_dir = out / "images" / part
    image_dir.mkdir(parents=True, exist_ok=True)
    ext = "jpg" if spec.image_format == "jpeg" else "png"
    looks = _looks(spec)
    posts, oracle = [], []
    earlier: dict[str, list[tuple[str, bytes, str | None, Image.Exif | None]]] = {}  # label -> today's uploads
    for i in range(spec.posts_per_day):
        prng = np.random.default_rng([spec.seed, _POST_STREAM, day, i])
        post_id = f"s{spec.seed}-d{day:03d}-{i:05d}"
        label, style = plan.labels[i], plan.filters[i]
        repost_of = None
        if earlier.get(label) and prng.random() < spec.repost_share:
            # a repost shares the very same file: same bytes, same EXIF
            repost_of, data, style, exif = earlier[label][int(prng.integers(len(earlier[label])))]
        else:
            image = scenes.render_post(looks[label], prng, spec.image_size, spec.difficulty)
            if style:
                pixels = trends.apply_filter(np.asarray(image, np.float32), style, prng)
                image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
            exif = None
            if prng.random() < spec.exif_share:
                exif = uploads.phone_exif(prng, int(prng.choice([1, 1, 3, 6, 8])))
            data = uploads.encode(image, spec.image_format.upper(), exif)
            earlier.setdefault(label, []).append((post_id, data, style, exif))
        corruption = None
        if prng.random() < spec.corrupt_share:
            corruption = str(prng.choice(uploads.CORRUPTIONS))
            data = uploads.corrupt(data, corruption)
        rel = f"images/{part}/{post_id}.{ext}"
        (out / rel).write_bytes(data)
        caption, hashtags = social.write_caption(prng, looks[label], style)
        author = int(plan.authors[i])
        posts.append(
            {
                "post_id": post_id,
                "user_id": users.ids[author],
                "created_at": plan.created_at[i],
                "image": rel,
                "caption": caption,
                "hashtags": hashtags,
                **social.engagement(prng, users, author, tag_index[label]),
            }
        )
        oracle.append(
            {
                "post_id": post_id,
                "label": label,
                "filter": style,
                "corruption": corruption,
                "orientation": int(exif.get(uploads.EXIF_ORIENTATION, 1)) if exif else 1,
                "has_gps": exif is not None,
                "repost_of": repost_of,
            }
        )
        if tick:
            tick(1)
    write_rows(oracle, ORACLE_SCHEMA, out / "oracle" / "labels" / part / "labels.parquet")
    write_rows(posts, POST_SCHEMA, out / "posts" / part / "posts.parquet")  # the day's commit marker
    labels = Counter(o["label"] for o in oracle)
    return DayResult(
        day=day,
        posts=len(posts),
        labels=dict(labels.most_common()),
        filtered=sum(o["filter"] is not None for o in oracle),
        corrupt=sum(o["corruption"] is not None for o in oracle),
    )


def make_users(spec: FeedSpec) -> social.Users:
    return social.make_users(np.random.default_rng([spec.seed, _USERS_STREAM]), spec.users, spec.tags())


def _simulate_one_day(spec: FeedSpec, day: int, out: Path) -> DayResult:
    return simulate_day(spec, day, out, make_users(spec))


def simulate(
    spec: FeedSpec, out: Path, days: range, workers: int = 1, progress: Callable[[int], None] | None = None
) -> list[DayResult]:
    """Simulate ``days`` of the feed into ``out`` and return what each day holds.

    Days already written are written again identically; a folder holding a
    different scenario is refused. ``workers`` > 1 simulates days in parallel
    processes (the output is the same).
    """
    spec.check()
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "simulation.json"
    scenario = json.loads(spec.model_dump_json())
    written: set[int] = set()
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("scenario") != scenario:
            raise ConfigError(f"{out} holds a different simulation; choose another output folder")
        written = set(meta.get("days", []))
    users = make_users(spec)
    write_table(pa.table({"user_id": users.ids, "followers": users.followers}), out / "users.parquet")
    write_table(
        pa.table({"user_id": users.ids, "interests": [list(map(float, row)) for row in users.interests]}),
        out / "oracle" / "users.parquet",
    )
    if workers > 1 and len(days) > 1:
        results: list[DayResult] = []
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for done in as_completed([pool.submit(_simulate_one_day, spec, day, out) for day in days]):
                results.append(done.result())
                if progress:
                    progress(results[-1].posts)
        results.sort(key=lambda r: r.day)
    else:
        results = [simulate_day(spec, day, out, users, progress) for day in days]
    meta = {
        "scenario": scenario,
        "tags": spec.tags(),
        "days": sorted(written | set(days)),
    }
    write_atomic(meta_path, json.dumps(meta, indent=2))
    return results


def read_feed(out: Path, days: range | None = None) -> pd.DataFrame:
    """A simulated feed's posts joined with the oracle, in time order: post_id, user_id, created_at,
    hashtags, caption, path (absolute), label, filter. For experiments that bypass ingestion."""
    posts = pq.read_table(out / "posts").to_pandas()
    oracle = pq.read_table(out / "oracle" / "labels", columns=["post_id", "label", "filter"]).to_pandas()
    frame = posts.merge(oracle, on="post_id", how="left").sort_values("created_at", ignore_index=True)
    if days is not None:
        meta = json.loads((out / "simulation.json").read_text())
        spec = FeedSpec.model_validate(meta["scenario"])
        start, end = spec.day_start(days.start), spec.day_start(days.stop)
        frame = frame[(frame.created_at >= start) & (frame.created_at < end)].reset_index(drop=True)
    frame["path"] = [str(out / ref) for ref in frame.pop("image")]
    frame["hashtags"] = [list(t) if t is not None else [] for t in frame.hashtags]
    return frame[["post_id", "user_id", "created_at", "hashtags", "caption", "path", "label", "filter"]]
