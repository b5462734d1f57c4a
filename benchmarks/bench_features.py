"""Feature store cost at loop scale: the point-in-time training join, materialisation and online reads.

    uv run python benchmarks/bench_features.py [--posts 100000] [--users 10000] [--days 28]
                                               [--repeats 1] [--requests 2000] [--dir PATH]

Synthetic sources, written through ``Features.write`` as the loop's sync would:
``post_meta`` one row per post (a random unit 384-d caption embedding, random
engagement counts), one file per day; ``post_image`` one row per post (64-d image
embedding, a tag, a confidence, model version 1), one file per day; ``user_profile``
one row per user per day (as of each midnight), one file ``as_of=YYYY-MM-DD`` per day.

It measures, on the embedded store (file offline store joined by Feast's Dask
engine, SQLite online store), or with ``--store redis`` on the cluster's (a local
redis-server online store, Feast's SQL registry in a local PostgreSQL; Debian's
packages, as ``make test`` installs them), which also prints Redis memory per
entity key (docs/cluster.md sizes Redis from it):

- ``historical``: every post as an entity row (post_id, user_id, event_timestamp =
  created_at, in shuffled order) joined with caption embedding, engagement rate,
  predicted tag and two user profile features through ``Features.historical``;
  each repeat is printed, the table has the best. It checks that the rows come back
  one for one in the input order and reports the share that found a user profile;
- ``materialize``: ``Features.materialize`` of every online view into SQLite;
- ``online``: ``--requests`` calls of ``Features.online`` for one entity row
  (post and user features, three views), after 20 warm-up calls: p50/p99/mean ms;
  the same calls straight to Feast's ``get_online_features`` (what the wrapper's
  checks of references and keys cost); then ``--batch-calls`` calls of
  ``--batch-rows`` rows each: p50/p99 ms per call.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from components.data.posts import TIMESTAMP
from components.features import captions
from components.features.engineering import engagement_rate
from components.features.store import SOURCE_SCHEMAS, Features

DAY0 = datetime(2026, 1, 5, tzinfo=UTC)
IMAGE_DIM = 64
TAGS = ("food", "travel", "fitness", "fashion", "pets", "art", "nature", "tech")
HISTORICAL = [
    "post_meta_fv:caption_embedding",
    "post_meta_fv:engagement_rate",
    "post_image_fv:predicted_tag",
    "user_profile_fv:engagement_rate_28d",
    "user_profile_fv:posts_7d",
]
ONLINE = [
    "post_meta_fv:engagement_rate",
    "post_image_fv:predicted_tag",
    "user_profile_fv:engagement_rate_28d",
    "user_profile_fv:interest_tags",
]
WARMUP = 20


def vectors(rng: np.random.Generator, n: int, dim: int) -> pa.Array:
    """``n`` random unit float32 vectors as a list<float32> column."""
    values = rng.standard_normal((n, dim), dtype=np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)
    offsets = np.arange(0, (n + 1) * dim, dim, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.ravel()))


def tag_lists(rng: np.random.Generator, n: int, most: int) -> pa.Array:
    """``n`` lists of 0..``most`` distinct tags."""
    lengths = rng.integers(0, most + 1, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = [t for k in lengths for t in rng.choice(TAGS, k, replace=False)]
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string()))


def posts_frame(rng: np.random.Generator, posts: int, users: int, days: int) -> pd.DataFrame:
    """post_id, user_id, created_at (uniform over the days, sorted)."""
    seconds = np.sort(rng.uniform(0, days * 86_400, posts))
    return pd.DataFrame(
        {
            "post_id": [f"p{i:07d}" for i in range(posts)],
            "user_id": [f"u{u:06d}" for u in rng.integers(0, users, posts)],
            "created_at": (pd.Timestamp(DAY0) + pd.to_timedelta(seconds, unit="s")).floor("us"),
        }
    )


def write_sources(features: Features, frame: pd.DataFrame, users: int, days: int, seed: int) -> dict[str, int]:
    """Write post_meta, post_image (one file per day) and user_profile (one file per as_of day)."""
    rng = np.random.default_rng(seed)
    written = {"post_meta": 0, "post_image": 0, "user_profile": 0}
    day_of = ((frame["created_at"] - pd.Timestamp(DAY0)) // pd.Timedelta(days=1)).to_numpy()
    for day in range(days):
        part = frame[day_of == day]
        n = len(part)
        created = pa.array(part["created_at"], TIMESTAMP)
        later = pa.array(part["created_at"] + pd.Timedelta(minutes=5), TIMESTAMP)
        views = rng.integers(0, 100_000, n)
        likes, comments, shares = (rng.integers(0, np.maximum(views // d, 1)) for d in (10, 100, 200))
        rate = engagement_rate(likes + comments + shares, views)
        stamp = f"{DAY0 + timedelta(days=day):%Y-%m-%d}"
        meta = pa.table(
            {
                "post_id": pa.array(part["post_id"], pa.string()),
                "created_at": created,
                "ingested_at": later,
                "caption_length": rng.integers(0, 300, n),
                "hashtag_count": rng.integers(0, 10, n),
                "hashtags": tag_lists(rng, n, 3),
                "caption_embedding": vectors(rng, n, captions.DIM),
                "views": views,
                "likes": likes,
                "comments": comments,
                "shares": shares,
                "engagement_rate": rate,
            }
        )
        written["post_meta"] += features.write("post_meta", meta, f"ingest-{stamp}")
        image = pa.table(
            {
                "post_id": pa.array(part["post_id"], pa.string()),
                "created_at": created,
                "scored_at": later,
                "image_embedding": vectors(rng, n, IMAGE_DIM),
                "predicted_tag": pa.array(rng.choice(TAGS, n), pa.string()),
                "confidence": rng.uniform(0.2, 1.0, n).astype(np.float32),
                "model_version": np.ones(n, np.int64),
            }
        )
        written["post_image"] += features.write("post_image", image, f"{stamp}-batch-v1")
        as_of = DAY0 + timedelta(days=day)
        shares_ = rng.dirichlet(np.ones(3), users).astype(np.float32)
        profile = pa.table(
            {
                "user_id": [f"u{u:06d}" for u in range(users)],
                "as_of": pa.array([as_of] * users, TIMESTAMP),
                "computed_at": pa.array([as_of + timedelta(minutes=30)] * users, TIMESTAMP),
                "posts_7d": rng.integers(0, 20, users),
                "posts_28d": rng.integers(0, 80, users),
                "engagement_rate_7d": rng.uniform(0, 0.2, users).astype(np.float32),
                "engagement_rate_28d": rng.uniform(0, 0.2, users).astype(np.float32),
                "interest_tags": [list(rng.choice(TAGS, 3, replace=False)) for _ in range(users)],
                "interest_shares": pa.ListArray.from_arrays(
                    pa.array(np.arange(0, 3 * users + 1, 3, dtype=np.int32)), pa.array(shares_.ravel())
                ),
            },
            schema=SOURCE_SCHEMAS["user_profile"],
        )
        written["user_profile"] += features.write("user_profile", profile, f"as_of={stamp}")
    return written


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(args: argparse.Namespace, data_dir: Path, online_memory: Callable[[], tuple[int, int]] | None = None) -> None:
    rng = np.random.default_rng(args.seed)
    results: list[tuple[str, str]] = []

    t0 = time.perf_counter()
    features = Features.open(data_dir, "feature_store.redis.yaml" if online_memory else "feature_store.yaml")
    features.apply()
    frame = posts_frame(rng, args.posts, args.users, args.days)
    written = write_sources(features, frame, args.users, args.days, args.seed + 1)
    setup = time.perf_counter() - t0
    rows = ", ".join(f"{k} {v:,}" for k, v in written.items())
    results.append(("generate + write + apply", f"{setup:.1f} s ({rows} rows)"))
    print(f"wrote {rows} rows in {setup:.1f} s", flush=True)

    # -- the point-in-time join ---------------------------------------------------------
    entities = (
        frame.rename(columns={"created_at": "event_timestamp"})
        .sample(frac=1.0, random_state=args.seed)
        .reset_index(drop=True)
    )
    times = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        out = features.historical(entities, HISTORICAL)
        times.append(time.perf_counter() - start)
        print(f"historical join {repeat + 1}/{args.repeats}: {times[-1]:.1f} s", flush=True)
    assert len(out) == len(entities), (len(out), len(entities))
    assert out.index.equals(entities.index)
    assert out["post_id"].tolist() == entities["post_id"].tolist()
    assert out["user_id"].tolist() == entities["user_id"].tolist()
    best = min(times)
    user_share = float(out["engagement_rate_28d"].notna().mean())
    post_share = float(out["caption_embedding"].notna().mean())
    tag_share = float(out["predicted_tag"].notna().mean())
    results.append(("historical join, best of " + str(args.repeats), f"{best:.1f} s"))
    results.append(("historical join rows/s", f"{len(entities) / best:,.0f}"))
    results.append(("rows out / in, order kept", f"{len(out):,} / {len(entities):,}, yes"))
    results.append(("share with user / post / image feature", f"{user_share:.1%} / {post_share:.1%} / {tag_share:.1%}"))

    # -- materialisation ----------------------------------------------------------------
    end = DAY0 + timedelta(days=args.days + 1)
    start = time.perf_counter()
    views = features.materialize(end=end)
    seconds = time.perf_counter() - start
    keys = args.posts * 2 + args.users  # post_meta and post_image by post, user_profile by user
    results.append(
        (f"materialize ({len(views)} views)", f"{seconds:.1f} s ({keys / seconds:,.0f} entity keys written/s)")
    )
    if online_memory is not None:
        used, hashes = online_memory()
        per = f"{used / hashes:,.0f} B per entity hash, {hashes:,} hashes"
        results.append(("Redis used_memory after materialize", f"{used / 2**20:,.1f} MiB ({per})"))

    # -- online reads ---------------------------------------------------------------------
    pick = rng.integers(0, len(frame), WARMUP + args.requests)
    post_ids, user_ids = frame["post_id"].to_numpy(), frame["user_id"].to_numpy()
    latencies = []
    for i, j in enumerate(pick):
        start = time.perf_counter()
        got = features.online(ONLINE, {"post_id": [post_ids[j]], "user_id": [user_ids[j]]})
        if i >= WARMUP:
            latencies.append((time.perf_counter() - start) * 1e3)
    assert len(got) == 1 and got["predicted_tag"].notna().all() and got["engagement_rate_28d"].notna().all()
    results.append(
        (
            f"online, 1 row x {args.requests} calls",
            f"p50 {percentile(latencies, 50):.2f} ms, p99 {percentile(latencies, 99):.2f} ms, "
            f"mean {statistics.fmean(latencies):.2f} ms",
        )
    )
    # the same reads straight through Feast, without the wrapper's checks of references and keys
    direct = []
    for j in pick[WARMUP:]:
        start = time.perf_counter()
        features.store.get_online_features(
            features=ONLINE, entity_rows=[{"post_id": post_ids[j], "user_id": user_ids[j]}]
        ).to_df()
        direct.append((time.perf_counter() - start) * 1e3)
    results.append(
        (
            "same 1-row calls, store.get_online_features direct",
            f"p50 {percentile(direct, 50):.2f} ms, p99 {percentile(direct, 99):.2f} ms, "
            f"mean {statistics.fmean(direct):.2f} ms",
        )
    )
    batched = []
    for _ in range(args.batch_calls):
        j = rng.integers(0, len(frame), args.batch_rows)
        start = time.perf_counter()
        got = features.online(ONLINE, {"post_id": post_ids[j].tolist(), "user_id": user_ids[j].tolist()})
        batched.append((time.perf_counter() - start) * 1e3)
    assert len(got) == args.batch_rows and got["post_id"].tolist() == post_ids[j].tolist()
    p50 = percentile(batched, 50)
    results.append(
        (
            f"online, {args.batch_rows} rows x {args.batch_calls} calls",
            f"p50 {p50:.1f} ms/call ({p50 / args.batch_rows:.2f} ms/row), p99 {percentile(batched, 99):.1f} ms",
        )
    )

    print()
    print("| measure | result |")
    print("|---|---|")
    for name, value in results:
        print(f"| {name} | {value} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=1, help="historical joins (the best counts)")
    parser.add_argument("--requests", type=int, default=2000, help="single-row online calls")
    parser.add_argument("--batch-rows", type=int, default=100)
    parser.add_argument("--batch-calls", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="data folder (default: a temporary one, removed after)")
    parser.add_argument("--store", choices=("embedded", "redis"), default="embedded")
    args = parser.parse_args()
    print(
        f"feature store: {args.posts:,} posts, {args.users:,} users, {args.days} days "
        f"({args.users * args.days:,} profile rows); {platform.platform()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        data_dir = args.dir or Path(tmp) / "features"
        if args.store == "embedded":
            run(args, data_dir)
            return
        memory = cluster_stores(servers)
        run(args, data_dir, memory)


def cluster_stores(servers: contextlib.ExitStack) -> Callable[[], tuple[int, int]]:
    """A redis-server and a PostgreSQL (for Feast's registry) on free ports, stopped on exit; returns a reader of
    Redis's used_memory above what it used empty, and of its key count (one hash per entity)."""
    import redis  # noqa: PLC0415

    from infra.databases import LocalPostgres, LocalRedis  # noqa: PLC0415
    from infra.processes import free_port  # noqa: PLC0415

    folders = [Path(tempfile.mkdtemp(prefix=f"trendloop-bench-{what}-")) for what in ("redis", "pg")]
    for folder in folders:
        servers.callback(shutil.rmtree, folder, ignore_errors=True)
    online = LocalRedis(folders[0], free_port())
    online.up()
    servers.callback(online.down)
    registry = LocalPostgres(folders[1], free_port())  # directly under /tmp: the postgres account reaches it
    registry.up()
    servers.callback(registry.down)
    os.environ["TRENDLOOP_REDIS"] = online.connection_string
    os.environ["TRENDLOOP_FEAST_REGISTRY"] = registry.url(registry.create_database("feast"))
    client = redis.Redis(host="127.0.0.1", port=online.port)
    empty = int(client.info("memory")["used_memory"])
    return lambda: (int(client.info("memory")["used_memory"]) - empty, int(client.dbsize()))


if __name__ == "__main__":
    main()
