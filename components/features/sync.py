"""Keeping the offline store in step with the loop: new ingest batches, batch scores, profiles, labels."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.data.posts import TIMESTAMP
from components.data.predlog import PredictionLog
from components.data.snapshot import Snapshot
from components.features.engineering import post_meta, user_profiles
from components.features.store import Features


@dataclass(frozen=True)
class SyncReport:
    post_batches: int  # ingest batches written to post_meta
    posts: int
    image_files: int  # prediction-log files written to post_image
    scored: int
    profile_days: int
    labels: int  # labels recorded and pushed

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def sync(features: Features, snapshot: Snapshot, log: PredictionLog, device: str = "cpu") -> SyncReport:
    """Write what the offline store lacks from ``snapshot`` and the champion's batch predictions.

    Post features go per ingest batch (a batch already written is skipped); the
    champion's scores per prediction-log file newer than its feature file; user
    profiles for every day from the first changed one to the day after the last post;
    labels the store does not hold yet, pushed online as well.
    """
    now = datetime.now(UTC)
    manifest = snapshot.manifest()
    done = {p.stem for p in features.source_dir("post_meta").glob("*.parquet")}
    batches = pc.fill_null(manifest.column("source"), "unknown")
    changed: list[datetime] = []
    posts_written = batches_written = 0
    for batch in sorted(set(batches.to_pylist()) - done):
        part = manifest.filter(pc.equal(batches, batch))
        posts_written += features.write("post_meta", post_meta(part, now, device), batch)
        batches_written += 1
        changed.append(pc.min(part.column("created_at")).as_py())

    image_files = scored = 0
    for log_file in sorted(log.root.glob("day=*/batch-v*.parquet")):
        name = f"{log_file.parent.name.removeprefix('day=')}-{log_file.stem}"
        target = features.source_dir("post_image") / f"{name}.parquet"
        if target.exists() and target.stat().st_mtime >= log_file.stat().st_mtime:
            continue
        wanted = ["post_id", "model_version", "predicted", "confidence", "embedding", "time"]
        records = pq.read_table(log_file, columns=wanted)
        table = pa.table(
            {
                "post_id": records.column("post_id"),
                "created_at": records.column("time"),
                "scored_at": pa.array([now] * len(records), TIMESTAMP),
                "image_embedding": records.column("embedding"),
                "predicted_tag": records.column("predicted"),
                "confidence": records.column("confidence"),
                "model_version": records.column("model_version"),
            }
        )
        scored += features.write("post_image", table, name)
        image_files += 1
        changed.append(pc.min(records.column("time")).as_py())

    profile_days = 0
    if changed and len(manifest):
        profile_days = _write_profiles(features, manifest, min(changed), now)

    labels = _new_labels(features, manifest)
    pushed = 0
    for source, group in labels.groupby("label_source", dropna=False):
        pushed += features.push_labels(group, str(source) if pd.notna(source) else "unknown", now)
    return SyncReport(batches_written, posts_written, image_files, scored, profile_days, pushed)


def _write_profiles(features: Features, manifest: pa.Table, first_changed: datetime, now: datetime) -> int:
    posts = manifest.select(["post_id", "user_id", "created_at", "views", "likes", "comments", "shares"]).to_pandas()
    scores = features.read("post_image", ["post_id", "predicted_tag", "scored_at"]).to_pandas()
    latest = scores.sort_values("scored_at").drop_duplicates("post_id", keep="last").set_index("post_id")
    posts["predicted_tag"] = posts["post_id"].map(latest["predicted_tag"])
    posts["created_at"] = pd.to_datetime(posts["created_at"], utc=True)
    start = pd.Timestamp(first_changed).tz_convert(UTC).normalize() + timedelta(days=1)
    end = posts["created_at"].max().normalize() + timedelta(days=1)
    days = list(pd.date_range(start, end, freq="D", tz=UTC))
    for day in days:
        table = user_profiles(posts, [day], now)
        features.write("user_profile", table, f"as_of={day:%Y-%m-%d}")
    return len(days)


def _new_labels(features: Features, manifest: pa.Table) -> pd.DataFrame:
    """Labels in the snapshot that differ from the newest recorded label of their post."""
    given = manifest.select(["post_id", "label", "label_source"]).to_pandas().dropna(subset=["label"])
    recorded = features.read("post_label", ["post_id", "label", "labelled_at"]).to_pandas()
    last = recorded.sort_values("labelled_at").drop_duplicates("post_id", keep="last").set_index("post_id")["label"]
    return given[given["post_id"].map(last) != given["label"]].reset_index(drop=True)
