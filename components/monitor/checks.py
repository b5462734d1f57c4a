"""Monitoring as one use-case: check a window of traffic for drift, find trends, decide whether a retrain is due.

``check_drift`` and ``retrain_plan`` are what the CLI, the pipeline steps and the main job
call. A check reads the traffic the app served (the prediction log's served records), or
scores stored posts offline for an ad-hoc window; it leaves ``drift.json`` (verdict,
clusters, windows) and ``drift.html`` (Evidently's report) in its own folder, and an MLflow
run holding both. ``retrain_plan`` asks the one retrain policy with what the registry, the
store and the latest checks say.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow.compute as pc

from components.data.predlog import PredictionLog, served
from components.data.snapshot import Snapshot, Store
from components.errors import DriftError, QuietWindow
from components.files import write_atomic
from components.model.registry import CHAMPION, Registry
from components.monitor.drift import DriftConfig, DriftVerdict, Window
from components.monitor.emerging import EmergingCluster, EmergingConfig
from components.monitor.triggers import LABELS, Decision, RetrainPolicy, TriggerContext

if TYPE_CHECKING:
    import pandas as pd

    from components.model.predict import Predictor

Traffic = Literal["served", "stored"]  # what a check reads: the app's requests, or stored posts scored offline


def reference_windows(
    store: Store, snapshot: Snapshot, predictor: Predictor, max_posts: int, seed: int = 0
) -> tuple[Window, Window]:
    """The champion's training data as the champion sees it: (held-out posts, trained-on posts).

    The held-out (val and test) labelled posts are the reference the traffic is tested
    against: a model is more confident on, and embeds more tightly, the posts it fitted,
    so a reference of training posts would make every later window look drifted. The
    trained-on posts are what novelty is measured against, for reference and traffic alike.
    """
    from components.model.datasets import labelled_posts  # noqa: PLC0415 - torch loads only where images are

    posts = labelled_posts(store, snapshot)
    manifest = _manifest(snapshot)  # read once for both windows
    windows = []
    for held_out in (True, False):
        part = posts[(posts.split != "train") == held_out]
        if len(part) > max_posts:
            part = part.sample(max_posts, random_state=seed)
        meta = _metadata(manifest, snapshot, part.post_id.to_numpy())
        windows.append(predict_window(predictor, meta.assign(path=part.path.to_numpy())))
    return windows[0], windows[1]


def predict_window(predictor: Predictor, posts: pd.DataFrame) -> Window:
    """Predict ``posts`` (post_id, user_id, created_at, hashtags, caption, path to the image) into a window."""
    from components.model.datasets import decode_images  # noqa: PLC0415

    out = predictor.predict_base(decode_images(posts.path.tolist(), predictor.preprocessing), posts)
    frame = posts.drop(columns="path").reset_index(drop=True).assign(predicted=out.predicted, confidence=out.confidence)
    return Window(frame, out.embeddings)


@dataclass(frozen=True)
class Current:
    """The window of traffic a check tests, and how many logged predictions it came from."""

    window: Window
    requests: int  # logged predictions in the window


def current_window(
    snapshot: Snapshot,
    log: PredictionLog,
    version: int,
    since: datetime | None,
    until: datetime | None,
    traffic: Traffic = "stored",
) -> Current:
    """The version's logged predictions in ``[since, until)``, one per post, with each post's hashtags and caption.

    ``served``: the requests the app answered (a post viewed ten times is one post of the
    window: the posts drift, not the views); ``stored``: offline scores of stored posts.
    """
    where = served() if traffic == "served" else ~served()
    records = log.read(since, until, version, where=where)
    requests = len(records)
    records = records.filter(pc.is_valid(records.column("post_id")))
    ids = np.asarray(records.column("post_id").to_pylist(), dtype=object)
    manifest = _manifest(snapshot)
    keep = np.zeros(len(ids), bool)
    if len(ids):
        _, first = np.unique(ids, return_index=True)
        keep[first] = True
        keep &= np.isin(ids, manifest.index.to_numpy())
    if traffic == "stored" and len(ids) > keep.sum():
        raise DriftError(f"{len(ids) - keep.sum()} logged posts are not in snapshot {snapshot.id}; check a newer one")
    records = records.filter(keep)
    meta = _metadata(manifest, snapshot, ids[keep])
    frame = meta.assign(
        predicted=records.column("predicted").to_pylist(),
        confidence=records.column("confidence").to_numpy(),
        created_at=records.column("time").to_pandas().to_numpy(),
    )
    dim = len(records.column("embedding")[0]) if len(records) else 0
    embeddings = np.asarray(records.column("embedding").to_pylist(), np.float32).reshape(len(records), dim)
    return Current(Window(frame.reset_index(drop=True), embeddings), requests)


def _manifest(snapshot: Snapshot) -> pd.DataFrame:
    """The snapshot's post metadata a window needs, indexed by post_id."""
    columns = ["post_id", "user_id", "created_at", "hashtags", "caption"]
    return snapshot.manifest().select(columns).to_pandas().set_index("post_id")


def _metadata(manifest: pd.DataFrame, snapshot: Snapshot, post_ids: np.ndarray) -> pd.DataFrame:
    """post_id, user_id, created_at, hashtags, caption of ``post_ids``, in their order."""
    found = manifest.reindex(post_ids)
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
    traffic: str  # served or stored
    verdict: DriftVerdict
    clusters: list[EmergingCluster]
    folder: Path  # drift.json and drift.html
    requests: int = 0  # logged predictions in the window (a post viewed twice counts twice)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "checked_at": self.checked_at.isoformat(),
            "model_version": self.model_version,
            "reference_snapshot": self.reference_snapshot,
            "current_snapshot": self.current_snapshot,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "traffic": self.traffic,
            "requests": self.requests,
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
    traffic: Traffic = "stored",
) -> DriftCheck:
    """Check the traffic of ``[since, until)`` against the champion's training data.

    ``traffic="served"`` reads what the app served in the window (``since``/``until`` are
    times of the requests); ``"stored"`` scores the snapshot's posts created in the window
    that the version has not predicted yet, logs them, and reads those.
    """
    from components.monitor.batch import log_batch_predictions  # noqa: PLC0415
    from components.monitor.drift import detect_drift  # noqa: PLC0415 - Evidently and scikit-learn load on use
    from components.monitor.emerging import find_emerging  # noqa: PLC0415

    drift, emerging = drift or DriftConfig(), emerging or EmergingConfig()
    number = registry.version_of(version)
    predictor = registry.load_predictor(number)
    trained_on = store.load(registry.snapshot_of(number))
    if traffic == "stored":
        log_batch_predictions(store, snapshot, predictor, number, log, since, until)
    current = current_window(snapshot, log, number, since, until, traffic)
    if len(current.window) == 0:
        span = f"{since or 'the start'} to {until or 'now'}"
        what = "requests served" if traffic == "served" else "stored posts scored"
        raise QuietWindow(f"no {what} by version {number} from {span}")
    reference, index = reference_windows(store, trained_on, predictor, drift.max_reference, drift.seed)
    key = json.dumps([number, snapshot.id, str(since), str(until), traffic, drift.model_dump(), emerging.model_dump()])
    check_id = f"{(since or datetime.now(UTC)):%Y%m%d}-v{number}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    folder = checks_dir / check_id
    verdict, ref_novelty, cur_novelty = detect_drift(reference, current.window, drift, folder / "drift.html", index)
    clusters = find_emerging(reference, current.window, ref_novelty, cur_novelty, emerging) if verdict.drifted else []
    check = DriftCheck(
        check_id, datetime.now(UTC), number, trained_on.id, snapshot.id, since, until, traffic, verdict, clusters,
        folder, current.requests,
    )  # fmt: skip
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
        {"model_version": check.model_version, "since": check.since, "until": check.until, "traffic": check.traffic}
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


def latest_drift(checks_dir: Path, version: int, after: datetime | None = None) -> DriftVerdict | None:
    """The verdict of the newest check of ``version``'s traffic made after ``after`` (None: no such check)."""
    newest: tuple[datetime, dict] | None = None
    for path in checks_dir.glob("*/drift.json"):
        raw = json.loads(path.read_text())
        when = datetime.fromisoformat(raw["checked_at"])
        if raw["model_version"] == version and (after is None or when > after) and (newest is None or when > newest[0]):
            newest = (when, raw)
    return DriftVerdict.from_dict(newest[1]["verdict"]) if newest is not None else None


def labels_of(snapshot: Snapshot) -> dict[str, str]:
    """post_id -> label of the snapshot's labelled posts (no images read)."""
    table = snapshot.manifest().select(["post_id", "label"])
    table = table.filter(pc.is_valid(table.column("label")))
    return dict(zip(table.column("post_id").to_pylist(), table.column("label").to_pylist(), strict=True))


def retrain_context(
    store: Store,
    snapshot: Snapshot,
    registry: Registry,
    log: PredictionLog,
    checks_dir: Path,
    now: datetime | None = None,
) -> TriggerContext:
    """Gather what the retrain triggers read, as of ``snapshot``.

    New labels and drift are counted against the NEWEST registered version (a challenger
    in its test, or the champion): labels it trained on and drift flagged before it was
    made were answered by it already, and must not start the same retrain again.
    """
    now = now or datetime.now(UTC)
    labelled = labels_of(snapshot)
    versions = registry.versions()
    if not versions:
        return TriggerContext(now, None, len(labelled), None, None, 0, None)
    newest = versions[0]
    seen = labels_of(store.load(newest.snapshot))
    new_labels = sum(1 for post, label in labelled.items() if seen.get(post) != label)
    number = registry.alias(CHAMPION)
    champion = next((v for v in versions if v.version == number), None)
    if champion is None:
        return TriggerContext(now, None, new_labels, None, None, 0, None)
    trained = labels_of(store.load(champion.snapshot))
    fresh = {post: label for post, label in labelled.items() if post not in trained}
    records = log.read(version=number, columns=["post_id", "predicted"])
    predicted = dict(zip(records.column("post_id").to_pylist(), records.column("predicted").to_pylist(), strict=True))
    judged = [predicted[post] == label for post, label in fresh.items() if post in predicted]
    return TriggerContext(
        now=now,
        drift=latest_drift(checks_dir, champion.version, after=newest.created_at),
        new_labels=new_labels,
        champion_since=champion.created_at,
        feedback_accuracy=float(np.mean(judged)) if judged else None,
        feedback_posts=len(judged),
        champion_accuracy=champion.metrics.get("test_accuracy"),
    )


@dataclass(frozen=True)
class RetrainPlan:
    due: bool
    decisions: list[Decision]
    new_labels: int

    @property
    def reason(self) -> str:
        fired = [d.trigger for d in self.decisions if d.fire and d.trigger != LABELS]
        if self.due:
            return f"retrain due: {', '.join(fired)} fired, {self.new_labels} new labels"
        short = [d.reason for d in self.decisions if d.trigger == LABELS and not d.fire]
        return "no retrain: " + (short[0] if short else "no trigger fired")


def retrain_plan(
    store: Store,
    snapshot: Snapshot,
    registry: Registry,
    log: PredictionLog,
    checks_dir: Path,
    policy: RetrainPolicy,
    now: datetime | None = None,
) -> RetrainPlan:
    """Whether a retrain on ``snapshot`` is due under ``policy``, and each trigger's say."""
    context = retrain_context(store, snapshot, registry, log, checks_dir, now)
    decisions = policy.decide(context)
    return RetrainPlan(policy.due(decisions), decisions, context.new_labels)
