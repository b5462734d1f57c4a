"""What each pipeline step does, as plain functions: the KFP components in ``pipelines.components`` only call these.

Each step is one use-case of the loop, or one piece of one (``components.model.retrain`` for
retraining, ``components.monitor.checks`` for drift and the retrain policy,
``active_learning.loop`` for labels, ``serving.control`` for serving): the CLI and the
main job call the same functions. A step takes its own ``config`` (the settings sections
it reads, as JSON: ``configure`` cuts them from the run's settings, so changing a setting
only invalidates the cached steps that read it), its parameters, and KFP artifacts:
anything with a ``path`` to read or write and a ``metadata`` dict (``kfp.dsl.Artifact``
in a run, a small stand-in in tests). Steps write their outputs atomically and change
shared state (the store, the registry, the label queue) only through operations that
are safe to repeat, so a step that fails can simply run again.

Start-up is part of the design: this module imports only the settings; each step imports
what it uses, so a step that touches no model starts in about a second.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from components.errors import ConfigError, SnapshotError
from components.files import write_atomic
from trendloop import wiring
from trendloop.arguments import parse_time
from trendloop.settings import Settings, settings_for_step

if TYPE_CHECKING:
    import pandas as pd

    from active_learning.labelstudio import LabelingProject
    from components.data.snapshot import Snapshot, Store
    from components.model.evaluate import Evaluation

NO_VERSION = 0  # what a retrain returns when nothing was registered (the gate refused, or none was due)
RUN_FILE = "trendloop-run.json"  # inside a Model artifact: the training run it came from

# The settings sections each step reads (``home`` always comes along). A step that reads a
# section it does not list fails at once (``settings_for_step``), so this stays true.
READS: dict[str, tuple[str, ...]] = {
    "ingest": ("privacy",),
    "validate": ("ingest",),
    "head_state": (),
    "snapshot": ("features",),
    "plan": ("registry", "features", "retrain"),
    "train": ("registry", "features", "train"),
    "evaluate": ("registry", "features"),
    "gate": ("gate",),
    "register": ("registry", "features"),
    "hold": ("registry", "features"),
    "load": ("registry", "features", "serving", "ab", "ingest", "privacy"),
    "drift_report": ("registry", "features", "drift", "emerging"),
    "select": ("registry", "features", "active_learning"),
    "push": ("registry", "features", "labelstudio"),
    "pull": ("registry", "features", "labelstudio"),
    "check_labels": ("labelstudio",),
    "commit": ("features",),
}


class Artifact(Protocol):
    path: str
    metadata: dict


class MetricsArtifact(Artifact, Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


def configure(config: str) -> tuple[str, ...]:
    """The run's settings (``Settings.for_pipeline``) cut into each step's own, in the order of ``READS``."""
    settings = settings_for_step(config)
    return tuple(settings.for_step(reads) for reads in READS.values())


# -- continual training: ingest -> validate -> snapshot -> plan -> retrain --------------------------------


def ingest(config: str, source: str, since: str, until: str, posts: Artifact) -> int:
    """Read what ``source`` offers in ``[since, until)`` into ``posts``; returns how many records."""
    from components.data.batches import write_batch
    from components.data.sources import Candidate, read_source

    settings = settings_for_step(config)  # a bad config fails here, at the first step
    window = {"since": parse_time(since, "since"), "until": parse_time(until, "until")}
    offered = read_source(Path(source), wiring.pseudonyms(settings), **window)
    write_batch(offered, None, Path(posts.path))
    bad = sum(1 for r in offered.records if not isinstance(r, Candidate))
    posts.metadata.update(
        kind=offered.kind, uri=offered.uri, records=len(offered.records), bad_records=bad, forgotten=offered.forgotten
    )
    return len(offered.records)


def validate(config: str, posts: Artifact, checked: Artifact, metrics: MetricsArtifact) -> int:
    """Validate and normalise each image, storing the good ones; returns how many passed."""
    from components.data.batches import read_batch, write_batch
    from components.data.ingest import Checked, check_source
    from components.data.snapshot import Store
    from components.data.validate import Rejection

    settings = settings_for_step(config)
    source, _ = read_batch(Path(posts.path))
    store = Store(settings.store_dir)
    outcomes = check_source(source, store, settings.ingest.limits(), settings.ingest.worker_count())
    write_batch(source, outcomes, Path(checked.path))
    passed = sum(1 for o in outcomes if isinstance(o, Checked))
    reasons = Counter(o.reason for o in outcomes if isinstance(o, Rejection))
    counts = {"records": len(outcomes), "valid_images": passed, "bad_records": sum(1 for o in outcomes if o is None)}
    _log_metrics(metrics, counts | {f"rejected_{reason}": n for reason, n in sorted(reasons.items())})
    checked.metadata.update(valid=passed, rejected=dict(reasons))
    return passed


def head_state(config: str) -> str:
    """HEAD's id: what the snapshot step builds on (it holds every label ``label_sync`` committed).

    Never cached itself; passed to the snapshot step so that step is reused only while
    the batch and HEAD are unchanged.
    """
    from components.data.snapshot import Store

    head = Store(settings_for_step(config).store_dir).head()
    return head.id if head else "none"


def snapshot(config: str, checked: Artifact, labels: str, head: str, snapshot: Artifact) -> str:
    """Commit the checked posts onto HEAD (which holds the annotators' checked labels) as a snapshot; returns its id.

    ``labels`` (a Parquet, CSV or JSONL file of post_id, label; empty for none) label
    the batch's posts: a labelled history imported with its posts. ``head`` (from
    ``head_state``) only keys the step's cache. Annotators' labels reach snapshots
    through ``label_sync``, whose checks they must pass.
    """
    from components.data.batches import read_batch
    from components.data.ingest import commit_checked, read_labels
    from components.data.snapshot import Store

    settings = settings_for_step(config)
    source, outcomes = read_batch(Path(checked.path))
    if outcomes is None:
        raise ConfigError(f"{checked.path}: the batch has not been through the validate step")
    store = Store(settings.store_dir)
    given = read_labels(Path(labels)) if labels else None
    report = commit_checked(source, outcomes, store, labels=given)
    head = store.head()
    if head is None:
        raise SnapshotError(f"{source.uri} offered no usable posts and there is no snapshot yet")
    if settings.features.on_ingest and report.new_snapshot:
        wiring.sync_features(settings, head)
    summary = {
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": report.rejected,
        "quarantine": report.quarantine,
        "relabelled": report.relabelled,
    }
    _write_snapshot(snapshot, head, summary)
    return head.id


def plan(config: str, snapshot: Artifact, decision: Artifact) -> bool:
    """Ask the retrain policy whether a retrain on the snapshot is due; returns whether it is.

    Never cached: it reads the registry and the latest drift checks as they are now.
    """
    from components.data.predlog import PredictionLog
    from components.data.snapshot import Store
    from components.monitor.checks import retrain_plan

    settings = settings_for_step(config)
    store = Store(settings.store_dir)
    head, registry, log = (
        store.load(_snapshot_id(snapshot)),
        wiring.open_registry(settings),
        PredictionLog(settings.predictions_dir),
    )
    found = retrain_plan(store, head, registry, log, settings.checks_dir, settings.retrain)
    record = {"due": found.due, "reason": found.reason, "new_labels": found.new_labels}
    record["decisions"] = [vars(d) for d in found.decisions]
    write_atomic(Path(decision.path), json.dumps(record, indent=2))
    decision.metadata.update(due=found.due, reason=found.reason)
    print(found.reason)
    return found.due


def skip(decision: Artifact) -> int:
    """No retrain was due: nothing is trained. Returns ``NO_VERSION`` (0); the log says why."""
    print(json.loads(Path(decision.path).read_text())["reason"])
    return NO_VERSION


def train(
    config: str, snapshot: Artifact, mode: str, kfp_run_id: str, kfp_run_name: str, model: Artifact,
    metrics: MetricsArtifact,
) -> str:  # fmt: skip
    """Train (or fine-tune the champion) on the snapshot and log the run; returns the MLflow run id."""
    from components.data.snapshot import Store
    from components.model.retrain import fine_tunes, train_candidate
    from components.model.tagger import save_tagger

    settings = settings_for_step(config)
    store, registry = Store(settings.store_dir), wiring.open_registry(settings)
    snap = store.load(_snapshot_id(snapshot))
    tags = {"kfp_run_id": kfp_run_id, "kfp_run_name": kfp_run_name}
    run = train_candidate(
        store, snap, settings.train, registry, settings.runs_dir, fine_tunes(mode, registry), tags=tags
    )
    folder = save_tagger(run.result.tagger, Path(model.path))
    record = {"run_id": run.run_id, "snapshot": snap.id, "base_version": run.base_version}
    write_atomic(folder / RUN_FILE, json.dumps(record))
    best = run.result.history[run.result.best_epoch - 1]
    _log_metrics(
        metrics, {"best_epoch": run.result.best_epoch, "val_accuracy": best.val_accuracy, "val_loss": best.val_loss}
    )
    model.metadata.update(record | {"labels": list(run.result.labels), "arch": settings.train.arch})
    return run.run_id


def evaluate(
    config: str, snapshot: Artifact, model: Artifact, evaluation: Artifact, metrics: MetricsArtifact,
    report: Artifact,
) -> float:  # fmt: skip
    """Score the new model and the champion on the snapshot's test split; returns the new model's accuracy."""
    from components.data.snapshot import Store
    from components.model.predict import Predictor
    from components.model.retrain import candidate_name, compare

    settings = settings_for_step(config)
    store, registry = Store(settings.store_dir), wiring.open_registry(settings)
    snap = store.load(_snapshot_id(snapshot))
    run = _run_of(model)
    candidate = Predictor.from_folder(Path(model.path), "cpu", registry.side_reader)
    ours, theirs = compare(store, snap, registry, candidate, candidate_name(registry, run["run_id"]))
    payload = {"candidate": ours.to_dict(), "champion": theirs.to_dict() if theirs else None}
    write_atomic(Path(evaluation.path), json.dumps(payload))
    champion = {"champion_test_accuracy": theirs.overall.accuracy} if theirs is not None else {}
    _log_metrics(metrics, ours.flat() | champion)
    write_atomic(Path(report.path), _evaluation_html(ours, theirs))
    return ours.overall.accuracy


def gate(config: str, evaluation: Artifact, verdict: Artifact) -> bool:
    """Run the promotion gate on the evaluation; returns whether the new model passed."""
    settings = settings_for_step(config)
    ours, theirs = _evaluations(evaluation)
    decided = settings.gate.decide(ours, theirs)
    write_atomic(Path(verdict.path), json.dumps(decided.to_dict(), indent=2))
    verdict.metadata.update(passed=decided.passed, reasons=decided.reasons)
    print("\n".join(decided.reasons))  # the step's log says why
    return decided.passed


def register(config: str, model: Artifact, evaluation: Artifact, verdict: Artifact) -> int:
    """Register the model that passed as a new version: @challenger, or @champion when there is none yet.

    Safe to repeat: a training run registers one version, and its aliases are set once (a
    version that lost its A/B test does not come back because a schedule fired again).
    """
    from components.features.side import side_refs
    from components.model.gate import Verdict
    from components.model.predict import Predictor
    from components.model.retrain import register_candidate

    settings = settings_for_step(config)
    registry = wiring.open_registry(settings)
    run = _run_of(model)
    decided = Verdict.from_dict(json.loads(Path(verdict.path).read_text()))
    ours, _ = _evaluations(evaluation)
    refs = side_refs(Predictor.from_folder(Path(model.path), "cpu").tagger.spec.side)

    def feature_service(version: int) -> None:
        wiring.open_features(settings).register_model(version, run["snapshot"], refs)

    placed = register_candidate(
        registry, run["run_id"], Path(model.path), run["snapshot"], run["base_version"], decided, ours,
        feature_service,
    )  # fmt: skip
    print(f"version {placed.version} is @{placed.alias}" + ("" if placed.new else " (placed by an earlier run)"))
    return placed.version


def hold(config: str, model: Artifact, evaluation: Artifact, verdict: Artifact) -> int:
    """The model did not pass: its run keeps the verdict, nothing is registered. Returns ``NO_VERSION`` (0)."""
    from components.model.gate import Verdict
    from components.model.retrain import hold_candidate

    settings = settings_for_step(config)
    decided = Verdict.from_dict(json.loads(Path(verdict.path).read_text()))
    ours, _ = _evaluations(evaluation)
    hold_candidate(wiring.open_registry(settings), _run_of(model)["run_id"], decided, ours)
    print("not registered: the gate refused it\n" + "\n".join(decided.reasons))
    return NO_VERSION


def load(config: str, version: int) -> str:
    """Ask serving to serve the registry's aliases (the new challenger among them); returns what happened."""
    settings = settings_for_step(config)
    if not wiring.serve_admin(settings).reachable():  # before building the rest: nothing to follow
        return f"serving is not running: version {version} waits in the registry (`trendloop serve up` loads it)"
    from serving import control

    s = wiring.serving_control(settings)
    experiment = control.follow(s, note=f"pipeline registered version {version}")
    if experiment is None:
        return f"serving follows the registry: version {version} serves as champion"
    return f"serving follows the registry: A/B test {experiment.id} runs version {experiment.challenger_version}"


# -- drift monitor: drift report -> select -> push ----------------------------------------------------------


def drift_report(config: str, since: str, until: str, report: Artifact, check: Artifact) -> bool:
    """Check the traffic the app served in ``[since, until)`` against the champion's training data; returns
    whether it drifted. ``since`` empty: the day before ``until`` (or now)."""
    from components.data.predlog import PredictionLog
    from components.data.snapshot import Store
    from components.errors import QuietWindow
    from components.monitor.checks import check_drift, log_check

    settings = settings_for_step(config)
    store, registry = Store(settings.store_dir), wiring.open_registry(settings)
    end = parse_time(until, "until")
    start = parse_time(since, "since") or _day_before(end)
    try:
        found = check_drift(
            store, _head(store), registry, PredictionLog(settings.predictions_dir), settings.checks_dir, start, end,
            settings.drift, settings.emerging, traffic="served",
        )  # fmt: skip
    except QuietWindow as err:  # too little traffic to test is not drift; any other DriftError fails the step
        write_atomic(Path(report.path), f"<html><title>no drift check</title><body>{err}</body></html>")
        write_atomic(Path(check.path), json.dumps({"checked": False, "reason": str(err)}))
        check.metadata.update(checked=False, reason=str(err))
        print(f"no drift check: {err}")
        return False
    log_check(registry, found)
    shutil.copyfile(found.folder / "drift.html", report.path)
    shutil.copyfile(found.folder / "drift.json", check.path)
    signals = list(found.verdict.drifted_signals)
    check.metadata.update(checked=True, id=found.id, drifted=found.verdict.drifted, signals=signals)
    print(f"drift check {found.id}: {'drift in ' + ', '.join(signals) if found.verdict.drifted else 'no drift'}")
    return found.verdict.drifted


def select(config: str, batch: Artifact) -> int:
    """Queue the unlabelled posts of HEAD's newest ``[active_learning] pool_days`` days the champion is least sure
    of; returns how many were queued."""
    import pandas as pd

    from active_learning.loop import select_posts
    from components.data.snapshot import Store
    from components.model.registry import CHAMPION
    from components.monitor.checks import newest_days

    settings = settings_for_step(config)
    store, registry = Store(settings.store_dir), wiring.open_registry(settings)
    head = _head(store)
    version = registry.version_of(CHAMPION)
    queue = wiring.label_queue(settings)
    start = newest_days(head, settings.active_learning.pool_days)
    picked = select_posts(
        store, head, registry.load_predictor(version), str(version), queue, settings.active_learning, since=start
    )
    rows = [vars(p) for p in queue.posts() if p.batch == picked.batch]
    frame = pd.DataFrame(rows, columns=["post_id", "image", "batch", "arm", "strategy", "score", "predicted"])
    _write_frame(frame, batch)
    batch.metadata.update(batch=picked.batch, pool=picked.pool, queued=picked.queued, strategy=picked.strategy)
    print(f"queued {picked.queued} of {picked.pool} unlabelled posts since {start:%Y-%m-%d}")
    return picked.queued


def push(config: str, batch: Artifact) -> int:
    """Send the queued posts to Label Studio as pre-annotated tasks; returns how many tasks were created.

    Starts the embedded Label Studio when no shared one is configured. What Label
    Studio does not take stays queued, and the step fails saying so.
    """
    from active_learning.loop import known_labels, offered_labels, push_queued
    from components.data.snapshot import Store

    settings = settings_for_step(config)
    project = _labeling_project(settings)
    store = Store(settings.store_dir)
    ls = settings.labelstudio
    labels = offered_labels(store, known_labels(store, wiring.open_registry(settings)))
    pushed = push_queued(
        wiring.label_queue(settings), project, labels, image_url=ls.image_url, overlap=ls.overlap,
        local_files=settings.local_files(),
    )  # fmt: skip
    print(f"{pushed.pushed} tasks created, {pushed.found} already in Label Studio, {pushed.pending} still queued")
    return pushed.pushed


# -- label sync: pull -> check -> snapshot -> plan -> retrain ------------------------------------------------


def pull(config: str, annotations: Artifact, metrics: MetricsArtifact) -> int:
    """Read the annotations made since the last pull and decide each post's label; returns new annotations."""
    import pandas as pd

    from active_learning.loop import known_labels, pull_labels
    from components.data.snapshot import Store

    settings = settings_for_step(config)
    queue = wiring.label_queue(settings)
    known = known_labels(Store(settings.store_dir), wiring.open_registry(settings))
    pulled = pull_labels(queue, _labeling_project(settings), known, settings.labelstudio.min_votes)
    decisions = pd.DataFrame([vars(d) for d in queue.decisions()])
    _write_frame(decisions, annotations)
    kappa = {"fleiss_kappa": pulled.agreement.kappa} if pulled.agreement.kappa is not None else {}
    _log_metrics(metrics, {"new_annotations": pulled.new_annotations, "decided": pulled.decided} | kappa)
    return pulled.new_annotations


def check_labels(config: str, annotations: Artifact, labels: Artifact) -> int:
    """Keep the decided labels no snapshot holds yet whose post exists and whose annotators agreed enough
    (``[labelstudio] min_agreement``). Returns how many passed; why the others did not is in ``labels``' metadata.

    ``annotations`` (the pull's decisions) keys the step: it runs again when they change.
    """
    import pandas as pd

    from active_learning.loop import check_labels as checked_labels
    from components.data.snapshot import Store

    settings = settings_for_step(config)
    found = checked_labels(
        wiring.label_queue(settings), _head(Store(settings.store_dir)), settings.labelstudio.min_agreement
    )
    frame = pd.DataFrame({"post_id": list(found.passed), "label": list(found.passed.values())})
    _write_frame(frame, labels)
    labels.metadata.update(passed=len(found.passed), dropped=found.dropped)
    print(f"{len(found.passed)} labels pass the checks" + "".join(f"; {n} {why}" for why, n in found.dropped.items()))
    return len(found.passed)


def commit(config: str, labels: Artifact, snapshot: Artifact) -> int:
    """Commit the checked labels as a new snapshot; returns how many posts it labelled."""
    import pandas as pd

    from active_learning.loop import commit_labels
    from components.data.snapshot import Store

    settings = settings_for_step(config)
    store = Store(settings.store_dir)
    checked = pd.read_parquet(labels.path)
    report = commit_labels(store, wiring.label_queue(settings), dict(zip(checked.post_id, checked.label, strict=True)))
    head = _head(store)
    if report.relabelled and settings.features.on_ingest:
        wiring.sync_features(settings, head)
    _write_snapshot(snapshot, head, {"labels_committed": len(report.relabelled), "missing": len(report.missing)})
    return len(report.relabelled)


# -- helpers ----------------------------------------------------------------------------------------------


def _log_metrics(metrics: MetricsArtifact, values: dict[str, float]) -> None:
    """Log to KFP's metrics and keep them as a JSON file too: an artifact whose file is missing is never reused
    from kfp.local's cache, and on a cluster the file is the artifact's content."""
    for key, value in values.items():
        metrics.log_metric(key, float(value))
    write_atomic(Path(metrics.path), json.dumps(values, indent=2))


def _head(store: Store) -> Snapshot:
    head = store.head()
    if head is None:
        raise SnapshotError(f"{store.root} has no snapshot yet: run continual_training first")
    return head


def _day_before(end: datetime | None) -> datetime:
    return (end or datetime.now(UTC)) - timedelta(days=1)


def _write_snapshot(artifact: Artifact, head: Snapshot, summary: dict) -> None:
    record = {"id": head.id, "parent": head.parent, "posts": head.posts, "labelled": head.labelled} | summary
    write_atomic(Path(artifact.path), json.dumps(record, indent=2))
    artifact.metadata.update(record)


def _snapshot_id(artifact: Artifact) -> str:
    return json.loads(Path(artifact.path).read_text())["id"]


def _run_of(model: Artifact) -> dict:
    path = Path(model.path) / RUN_FILE
    if not path.exists():
        raise ConfigError(f"{model.path} is not a model from the train step (no {RUN_FILE})")
    return json.loads(path.read_text())


def _evaluations(evaluation: Artifact) -> tuple[Evaluation, Evaluation | None]:
    from components.model.evaluate import Evaluation

    raw = json.loads(Path(evaluation.path).read_text())
    champion = Evaluation.from_dict(raw["champion"]) if raw["champion"] else None
    return Evaluation.from_dict(raw["candidate"]), champion


def _write_frame(frame: pd.DataFrame, artifact: Artifact) -> None:
    import pyarrow as pa

    from components.files import write_table

    write_table(pa.Table.from_pandas(frame, preserve_index=False), Path(artifact.path))


def _evaluation_html(ours: Evaluation, theirs: Evaluation | None) -> str:
    """The evaluation as a small self-contained HTML page (the KFP UI shows HTML artifacts)."""
    from html import escape

    rows = []
    for _name, ev in (("candidate", ours), ("champion", theirs)):
        if ev is None:
            continue
        cells = [("all", ev.overall), *sorted(ev.slices.items())]
        rows += [
            f"<tr><td>{escape(ev.model)}</td><td>{escape(s)}</td><td>{m.posts}</td><td>{m.accuracy:.3f}</td>"
            f"<td>{m.macro_f1:.3f}</td><td>{m.ece:.3f}</td></tr>"
            for s, m in cells
        ]
    head = "<tr><th>model</th><th>slice</th><th>posts</th><th>accuracy</th><th>macro-F1</th><th>ECE</th></tr>"
    return (
        f"<html><head><title>evaluation</title></head><body><h1>test split of snapshot {escape(ours.snapshot)}</h1>"
        f"<table>{head}{''.join(rows)}</table></body></html>"
    )


def _labeling_project(settings: Settings) -> LabelingProject:
    """The configured Label Studio project; the embedded server is started first when it is the one."""
    if settings.labelstudio.url is None:
        wiring.label_studio_server(settings).up(settings.labelstudio.start_timeout)
    return wiring.labeling_project(settings)
