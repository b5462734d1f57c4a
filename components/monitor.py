"""The monitoring step of the loop as one unit: log predictions, check drift, find trends, report.

``check_drift`` is what the CLI, the demo and (later) the KFP component call. A
check leaves ``drift.json`` (verdict, clusters, windows) and ``drift.html``
(Evidently's report) in its own folder, and an MLflow run holding both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from components.data import decode_images, labelled_posts
from components.drift import DriftConfig, DriftVerdict, Window, detect_drift
from components.emerging import EmergingCluster, EmergingConfig, find_emerging
from components.errors import DriftError
from components.posts import write_atomic
from components.predict import Predictor
from components.predlog import PredictionLog, log_batch_predictions
from components.registry import CHAMPION, Registry
from components.snapshot import Snapshot, Store
from components.triggers import TriggerContext


def reference_windows(
    store: Store, snapshot: Snapshot, predictor: Predictor, max_posts: int, seed: int = 0
) -> tuple[Window, Window]:
    """The champion's training data as the champion sees it: (held-out posts, trained-on posts).

    The held-out (val and test) labelled posts are the reference the traffic is tested
    against: a model is more confident on, and embeds more tightly, the posts it fitted,
    so a reference of training posts would make every later window look drifted. The
    trained-on posts are what novelty is measured against, for reference and traffic alike.
    """
    posts = labelled_posts(store, snapshot)
    manifest = _manifest(snapshot)  # read once for both windows
    windows = []
    for held_out in (True, False):
        part = posts[(posts.split != "train") == held_out]
        if len(part) > max_posts:
            part = part.sample(max_posts, random_state=seed)
        meta = _metadata(manifest, snapshot, part.post_id)
        windows.append(predict_window(predictor, meta.assign(path=part.path.to_numpy())))
    return windows[0], windows[1]


def predict_window(predictor: Predictor, posts: pd.DataFrame) -> Window:
    """Predict ``posts`` (post_id, user_id, created_at, hashtags, caption, path to the image) into a window."""
    out = predictor.predict_base(decode_images(posts.path.tolist(), predictor.preprocessing), posts)
    frame = posts.drop(columns="path").reset_index(drop=True).assign(predicted=out.predicted, confidence=out.confidence)
    return Window(frame, out.embeddings)


def current_window(
    store: Store, snapshot: Snapshot, log: PredictionLog, version: int, since: datetime | None, until: datetime | None
) -> Window:
    """The version's logged predictions in ``[since, until)``, with each post's hashtags and caption."""
    records = log.read(since, until, version)
    records = records.filter(pc.is_valid(records.column("post_id")))
    ids = records.column("post_id").to_pylist()
    meta = _metadata(_manifest(snapshot), snapshot, pd.Series(ids))
    frame = meta.assign(
        predicted=records.column("predicted").to_pylist(),
        confidence=records.column("confidence").to_numpy(),
        created_at=records.column("time").to_pandas(),
    )
    dim = len(records.column("embedding")[0]) if len(records) else 0
    embeddings = np.asarray(records.column("embedding").to_pylist(), np.float32).reshape(len(records), dim)
    return Window(frame.reset_index(drop=True), embeddings)


def _manifest(snapshot: Snapshot) -> pd.DataFrame:
    """The snapshot's post metadata a window needs, indexed by post_id."""
    columns = ["post_id", "user_id", "created_at", "hashtags", "caption"]
    return snapshot.manifest().select(columns).to_pandas().set_index("post_id")


def _metadata(manifest: pd.DataFrame, snapshot: Snapshot, post_ids: pd.Series) -> pd.DataFrame:
    """post_id, user_id, created_at, hashtags, caption of ``post_ids``, in their order."""
    found = manifest.reindex(post_ids.to_numpy())
    missing = found.created_at.isna().sum()
    if missing:
        raise DriftError(f"{missing} logged posts are not in snapshot {snapshot.id}; check against a newer snapshot")
    found["hashtags"] = [list(t) if t is not None else [] for t in found.hashtags]
    return found.rename_axis("post_id").reset_index()


def newest_days(snapshot: Snapshot, days: int) -> datetime:
    """The start (UTC midnight) of the newest ``days`` days of the snapshot's traffic."""
    created = snapshot.manifest().column("created_at").to_pylist()
    if not created:
        raise DriftError(f"snapshot {snapshot.id} holds no posts")
    return max(created).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days - 1)


@dataclass(frozen=True)
class DriftCheck:
    id: str
    checked_at: datetime
    model_version: int
    reference_snapshot: str
    current_snapshot: str
    since: datetime | None
    until: datetime | None
    verdict: DriftVerdict
    clusters: list[EmergingCluster]
    folder: Path  # drift.json and drift.html

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "checked_at": self.checked_at.isoformat(),
            "model_version": self.model_version,
            "reference_snapshot": self.reference_snapshot,
            "current_snapshot": self.current_snapshot,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "verdict": self.verdict.to_dict(),
            "clusters": [c.to_dict() for c in self.clusters],
        }


def check_drift(
    store: Store,
    snapshot: Snapshot,
    registry: Registry,
    log: PredictionLog,
    checks_dir: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    drift: DriftConfig | None = None,
    emerging: EmergingConfig | None = None,
    version: int | str = CHAMPION,
) -> DriftCheck:
    """Check the traffic of ``[since, until)`` against the champion's training data.

    Posts of ``snapshot`` in the window that the version has not predicted yet are
    predicted and logged first (batch predictions, until serving logs them).
    """
    drift, emerging = drift or DriftConfig(), emerging or EmergingConfig()
    number = registry.version_of(version)
    predictor = registry.load_predictor(number)
    trained_on = store.load(registry.snapshot_of(number))
    log_batch_predictions(store, snapshot, predictor, number, log, since, until)
    current = current_window(store, snapshot, log, number, since, until)
    if len(current) == 0:
        span = f"{since or 'the start'} to {until or 'now'}"
        raise DriftError(f"no traffic logged for version {number} from {span}")
    reference, index = reference_windows(store, trained_on, predictor, drift.max_reference, drift.seed)
    key = json.dumps([number, snapshot.id, str(since), str(until), drift.model_dump(), emerging.model_dump()])
    check_id = f"{(since or datetime.now(UTC)):%Y%m%d}-v{number}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    folder = checks_dir / check_id
    verdict, ref_novelty, cur_novelty = detect_drift(reference, current, drift, folder / "drift.html", index)
    clusters = find_emerging(reference, current, ref_novelty, cur_novelty, emerging) if verdict.drifted else []
    check = DriftCheck(
        check_id, datetime.now(UTC), number, trained_on.id, snapshot.id, since, until, verdict, clusters, folder
    )
    write_atomic(folder / "drift.json", json.dumps(check.to_dict(), indent=2, default=_json))
    return check


def _json(value: object) -> object:
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def log_check(registry: Registry, check: DriftCheck) -> str:
    """Record a check as an MLflow run (tagged ``kind=drift-check``): signal scores, report files."""
    window = f"{check.since:%Y-%m-%d}" if check.since else "all"
    run_id = registry.start_run(
        f"drift-{window}-v{check.model_version}",
        {"model_version": check.model_version, "since": check.since, "until": check.until}
        | {"reference_snapshot": check.reference_snapshot, "current_snapshot": check.current_snapshot},
        {"kind": "drift-check", "drifted": str(check.verdict.drifted).lower(), "check_id": check.id},
    )
    metrics = {"drifted": float(check.verdict.drifted), "emerging_clusters": float(len(check.clusters))}
    metrics |= {"current_posts": check.verdict.current_posts, "reference_posts": check.verdict.reference_posts}
    for signal in check.verdict.signals:
        if np.isfinite(signal.score):
            metrics[f"{signal.name}_score"] = signal.score
        metrics[f"{signal.name}_drifted"] = float(signal.drifted)
    registry.log_metrics(run_id, metrics)
    for name in ("drift.json", "drift.html"):
        if (check.folder / name).exists():
            registry.client.log_artifact(run_id, str(check.folder / name))
    registry.finish_run(run_id)
    return run_id


def retrain_context(
    store: Store,
    snapshot: Snapshot,
    registry: Registry,
    log: PredictionLog,
    drift: DriftVerdict | None,
    now: datetime | None = None,
) -> TriggerContext:
    """Gather what the retrain triggers need: new labels, champion age, accuracy on feedback."""
    now = now or datetime.now(UTC)
    number = registry.alias(CHAMPION)
    labelled = labelled_posts(store, snapshot).set_index("post_id").label
    if number is None:
        return TriggerContext(now, drift, len(labelled), None, None, 0, None)
    info = next(v for v in registry.versions() if v.version == number)
    trained = labelled_posts(store, store.load(registry.snapshot_of(number)))
    fresh = labelled.drop(index=trained.post_id, errors="ignore")
    records = log.read(version=number).select(["post_id", "predicted"]).to_pandas()
    feedback = records[records.post_id.isin(fresh.index)]
    accuracy = (
        float((feedback.predicted.to_numpy() == fresh.loc[feedback.post_id].to_numpy()).mean())
        if len(feedback)
        else None
    )
    return TriggerContext(
        now=now,
        drift=drift,
        new_labels=len(fresh),
        champion_since=info.created_at,
        feedback_accuracy=accuracy,
        feedback_posts=len(feedback),
        champion_accuracy=info.metrics.get("test_accuracy"),
    )
