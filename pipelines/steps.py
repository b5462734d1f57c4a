"""What each pipeline step does, as plain functions: the KFP components in ``pipelines.components`` only call these.

Every step takes the pipeline's ``config`` (the settings as JSON, from
``Settings.for_pipeline``), its parameters, and KFP artifacts: anything with a
``path`` to read or write and a ``metadata`` dict (``kfp.dsl.Artifact`` in a run, a
small stand-in in tests). Steps write their outputs atomically and change shared
state (the store, the registry, the label queue) only through operations that are
safe to repeat, so a step that fails can simply run again.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Protocol

import pandas as pd
import pyarrow as pa
from rich.console import Console

from active_learning.labelstudio import LabelingProject
from active_learning.loop import commit_labels, offered_labels, pull_labels, push_queued, select_posts
from components.batches import read_batch, write_batch
from components.errors import ConfigError, SnapshotError
from components.evaluate import Evaluation
from components.features import sync as sync_features
from components.gate import Verdict
from components.ingest import Checked, check_source, commit_checked, read_labels
from components.model import save_tagger
from components.monitor import check_drift, log_check, newest_days
from components.posts import parse_time, write_atomic, write_table
from components.predict import Predictor
from components.predlog import PredictionLog
from components.registry import CHALLENGER, CHAMPION
from components.side import side_refs
from components.simulator.feed import oracle_styles
from components.snapshot import Snapshot, Store
from components.sources import Candidate, read_source
from components.validate import Rejection
from components.workflow import compare, register_trained, train_logged
from serving import control
from trendloop import render
from trendloop.settings import Settings, settings_from_pipeline

MODES = ("auto", "fine-tune", "scratch")  # auto: fine-tune the champion when there is one
NO_VERSION = 0  # what the retrain pipeline returns when the gate refused the model
RUN_FILE = "trendloop-run.json"  # inside a Model artifact: the training run it came from


class Artifact(Protocol):
    path: str
    metadata: dict


class MetricsArtifact(Artifact, Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


# -- continual training: ingest -> validate -> snapshot -> train -> evaluate -> gate -> register -> load ------


def ingest(config: str, source: str, since: str, until: str, posts: Artifact) -> int:
    """Read what ``source`` offers in ``[since, until)`` into ``posts``; returns how many records."""
    settings_from_pipeline(config)  # a bad config fails here, at the first step
    offered = read_source(Path(source), since=parse_time(since, "since"), until=parse_time(until, "until"))
    write_batch(offered, None, Path(posts.path))
    bad = sum(1 for r in offered.records if not isinstance(r, Candidate))
    posts.metadata.update(kind=offered.kind, uri=offered.uri, records=len(offered.records), bad_records=bad)
    return len(offered.records)


def validate(config: str, posts: Artifact, checked: Artifact, metrics: MetricsArtifact) -> int:
    """Validate and normalise each image, storing the good ones; returns how many passed."""
    settings = settings_from_pipeline(config)
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
    head = Store(settings_from_pipeline(config).store_dir).head()
    return head.id if head else "none"


def snapshot(config: str, checked: Artifact, labels: str, head: str, snapshot: Artifact) -> str:
    """Commit the checked posts onto HEAD (which holds the annotators' checked labels) as a snapshot; returns its id.

    ``labels`` (a Parquet, CSV or JSONL file of post_id, label; empty for none) label
    the batch's posts: a labelled history imported with its posts. ``head`` (from
    ``head_state``) only keys the step's cache. Annotators' labels reach snapshots
    through ``label_sync``, whose checks they must pass.
    """
    settings = settings_from_pipeline(config)
    source, outcomes = read_batch(Path(checked.path))
    if outcomes is None:
        raise ConfigError(f"{checked.path}: the batch has not been through the validate step")
    store = Store(settings.store_dir)
    given = read_labels(Path(labels)) if labels else None
    report = commit_checked(source, outcomes, store, labels=given)
    head = store.head()
    if head is None:
        raise SnapshotError(f"{source.uri} offered no usable posts and there is no snapshot yet")
    if settings.features.on_ingest:
        sync_features(settings.open_features(), head, PredictionLog(settings.predictions_dir), settings.features.device)
    summary = {
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": report.rejected,
        "quarantine": report.quarantine,
        "relabelled": report.relabelled,
    }
    _write_snapshot(snapshot, head, summary)
    return head.id


def train(
    config: str, snapshot: Artifact, mode: str, kfp_run_id: str, kfp_run_name: str, model: Artifact,
    metrics: MetricsArtifact,
) -> str:  # fmt: skip
    """Train (or fine-tune the champion) on the snapshot and log the run; returns the MLflow run id."""
    settings = settings_from_pipeline(config)
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    store, registry = Store(settings.store_dir), settings.open_registry()
    snap = store.load(_snapshot_id(snapshot))
    from_champion = mode == "fine-tune" or (mode == "auto" and registry.alias(CHAMPION) is not None)
    tags = {"kfp_run_id": kfp_run_id, "kfp_run_name": kfp_run_name}
    run = train_logged(store, snap, settings.train, registry, settings.runs_dir, from_champion, tags=tags)
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
    settings = settings_from_pipeline(config)
    store, registry = Store(settings.store_dir), settings.open_registry()
    snap = store.load(_snapshot_id(snapshot))
    run = _run_of(model)
    candidate = Predictor.from_folder(Path(model.path), "cpu", registry.side_reader)
    name = f"{registry.model_name}/run-{run['run_id'][:8]}"
    ours, theirs = compare(store, snap, registry, candidate, name, oracle_styles(settings.feed_dir))
    payload = {"candidate": ours.to_dict(), "champion": theirs.to_dict() if theirs else None}
    write_atomic(Path(evaluation.path), json.dumps(payload, indent=2))
    champion = {"champion_test_accuracy": theirs.overall.accuracy} if theirs is not None else {}
    _log_metrics(metrics, ours.flat() | champion)
    _write_html(report, "evaluation", render.evaluation_table(ours, theirs))
    return ours.overall.accuracy


def gate(config: str, evaluation: Artifact, verdict: Artifact) -> bool:
    """Run the promotion gate on the evaluation; returns whether the new model passed."""
    settings = settings_from_pipeline(config)
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
    settings = settings_from_pipeline(config)
    registry = settings.open_registry()
    run = _run_of(model)
    decided = Verdict.from_dict(json.loads(Path(verdict.path).read_text()))
    if not decided.passed:
        raise ConfigError("the model did not pass the gate: it is not registered")
    ours, _ = _evaluations(evaluation)
    version = register_trained(registry, run["run_id"], Path(model.path), run["snapshot"], run["base_version"])
    if registry.placed(version) is not None:
        return version  # placed by an earlier run: its aliases may have moved on since, and stay as they are
    registry.record_review(version, decided, ours)
    refs = Predictor.from_folder(Path(model.path), "cpu").tagger.spec.side
    settings.open_features().register_model(version, run["snapshot"], side_refs(refs))
    if registry.alias(CHAMPION) is None:
        registry.promote(version)  # the first model that passes is the champion: there is nothing to test against
        registry.mark_placed(version, CHAMPION)
    else:
        registry.set_challenger(version)
        registry.mark_placed(version, CHALLENGER)
    return version


def hold(verdict: Artifact) -> int:
    """The model did not pass: nothing is registered. Returns ``NO_VERSION`` (0); the log says why."""
    decided = json.loads(Path(verdict.path).read_text())
    print("not registered: the gate refused it\n" + "\n".join(decided["reasons"]))
    return NO_VERSION


def load(config: str, version: int) -> str:
    """Ask serving to serve the registry's aliases (the new challenger among them); returns what happened."""
    settings = settings_from_pipeline(config)
    s = settings.serving_control()
    if not s.admin.reachable():
        return f"serving is not running: version {version} waits in the registry (`trendloop serve up` loads it)"
    experiment = control.follow(s, note=f"pipeline registered version {version}")
    if experiment is None:
        return f"serving follows the registry: version {version} serves as champion"
    return f"serving follows the registry: A/B test {experiment.id} runs version {experiment.challenger_version}"


# -- drift monitor: drift report -> select -> push ----------------------------------------------------------


def drift_report(config: str, since: str, until: str, report: Artifact, check: Artifact) -> bool:
    """Check ``[since, until)`` of traffic against the champion's training data; returns whether it drifted.

    ``since`` empty: the newest day of the snapshot's posts.
    """
    settings = settings_from_pipeline(config)
    store, registry = Store(settings.store_dir), settings.open_registry()
    head = _head(store)
    start, end = parse_time(since, "since") or newest_days(head, 1), parse_time(until, "until")
    found = check_drift(
        store, head, registry, PredictionLog(settings.predictions_dir), settings.checks_dir, start, end,
        settings.drift, settings.emerging,
    )  # fmt: skip
    log_check(registry, found)
    shutil.copyfile(found.folder / "drift.html", report.path)
    shutil.copyfile(found.folder / "drift.json", check.path)
    check.metadata.update(id=found.id, drifted=found.verdict.drifted, signals=list(found.verdict.drifted_signals))
    signals = ", ".join(found.verdict.drifted_signals)
    print(f"drift check {found.id}: {'drift in ' + signals if found.verdict.drifted else 'no drift'}")
    return found.verdict.drifted


def select(config: str, since: str, until: str, batch: Artifact) -> int:
    """Queue the unlabelled posts of the window the champion is least sure of; returns how many were queued."""
    settings = settings_from_pipeline(config)
    store, registry = Store(settings.store_dir), settings.open_registry()
    head = _head(store)
    version = registry.version_of(CHAMPION)
    queue = settings.label_queue()
    start = parse_time(since, "since") or newest_days(head, 1)
    picked = select_posts(
        store, head, registry.load_predictor(version), str(version), queue, settings.active_learning,
        since=start, until=parse_time(until, "until"),
    )  # fmt: skip
    rows = [vars(p) for p in queue.posts() if p.batch == picked.batch]
    frame = pd.DataFrame(rows, columns=["post_id", "image", "batch", "arm", "strategy", "score", "predicted"])
    _write_frame(frame, batch)
    batch.metadata.update(batch=picked.batch, pool=picked.pool, queued=picked.queued, strategy=picked.strategy)
    return picked.queued


def push(config: str, batch: Artifact) -> int:
    """Send the queued posts to Label Studio as pre-annotated tasks; returns how many tasks were created.

    Starts the embedded Label Studio when no shared one is configured. What Label
    Studio does not take stays queued, and the step fails saying so.
    """
    settings = settings_from_pipeline(config)
    project = _labeling_project(settings)
    store, registry = Store(settings.store_dir), settings.open_registry()
    ls = settings.labelstudio
    labels = offered_labels(store, registry.load_predictor(CHAMPION).labels)
    pushed = push_queued(
        settings.label_queue(), project, labels, image_url=ls.image_url, overlap=ls.overlap,
        local_files=settings.local_files(),
    )  # fmt: skip
    print(f"{pushed.pushed} tasks created, {pushed.found} already in Label Studio, {pushed.pending} still queued")
    return pushed.pushed


# -- label sync: pull -> check -> snapshot -> (enough new labels) retrain ----------------------------------


def pull(config: str, annotations: Artifact, metrics: MetricsArtifact) -> int:
    """Read the annotations made since the last pull and decide each post's label; returns new annotations."""
    settings = settings_from_pipeline(config)
    registry = settings.open_registry()
    known = registry.load_predictor(CHAMPION).labels if registry.alias(CHAMPION) is not None else ()
    queue = settings.label_queue()
    pulled = pull_labels(queue, _labeling_project(settings), known, settings.labelstudio.min_votes)
    decisions = pd.DataFrame([vars(d) for d in queue.decisions()])
    _write_frame(decisions, annotations)
    kappa = {"fleiss_kappa": pulled.agreement.kappa} if pulled.agreement.kappa is not None else {}
    _log_metrics(metrics, {"new_annotations": pulled.new_annotations, "decided": pulled.decided} | kappa)
    return pulled.new_annotations


def check_labels(config: str, annotations: Artifact, min_agreement: float, labels: Artifact) -> int:
    """Keep the decided labels no snapshot holds yet whose post exists and whose annotators agreed enough.

    Returns how many labels passed; the reasons the others did not are in ``labels``' metadata.
    """
    settings = settings_from_pipeline(config)
    store = Store(settings.store_dir)
    decisions = pd.read_parquet(annotations.path)
    uncommitted = settings.label_queue().uncommitted()
    held = set(_head(store).manifest().column("post_id").to_pylist())
    dropped: Counter[str] = Counter()
    keep = []
    for row in decisions.itertuples():
        if row.status != "decided" or uncommitted.get(row.post_id) != row.label:
            continue  # undecided, or committed by an earlier sync
        if row.post_id not in held:
            dropped["post not in the snapshot"] += 1
        elif row.agreement is not None and pd.notna(row.agreement) and row.agreement < min_agreement:
            dropped[f"agreement below {min_agreement:.2f}"] += 1
        else:
            keep.append({"post_id": row.post_id, "label": row.label, "votes": int(row.votes)})
    _write_frame(pd.DataFrame(keep, columns=["post_id", "label", "votes"]), labels)
    labels.metadata.update(passed=len(keep), dropped=dict(dropped))
    return len(keep)


def commit(config: str, labels: Artifact, snapshot: Artifact) -> int:
    """Commit the checked labels as a new snapshot; returns how many posts it labelled."""
    settings = settings_from_pipeline(config)
    store = Store(settings.store_dir)
    checked = pd.read_parquet(labels.path)
    report = commit_labels(store, settings.label_queue(), dict(zip(checked.post_id, checked.label, strict=True)))
    head = _head(store)
    if report.relabelled and settings.features.on_ingest:
        sync_features(settings.open_features(), head, PredictionLog(settings.predictions_dir), settings.features.device)
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
    raw = json.loads(Path(evaluation.path).read_text())
    champion = Evaluation.from_dict(raw["champion"]) if raw["champion"] else None
    return Evaluation.from_dict(raw["candidate"]), champion


def _write_frame(frame: pd.DataFrame, artifact: Artifact) -> None:
    write_table(pa.Table.from_pandas(frame, preserve_index=False), Path(artifact.path))


def _write_html(artifact: Artifact, title: str, *renderables: object) -> None:
    console = Console(record=True, width=140, file=io.StringIO())
    for item in renderables:
        console.print(item)
    html = console.export_html(inline_styles=True).replace("<title>Rich</title>", f"<title>{title}</title>", 1)
    write_atomic(Path(artifact.path), html)


def _labeling_project(settings: Settings) -> LabelingProject:
    """The configured Label Studio project; the embedded server is started first when it is the one."""
    if settings.labelstudio.url is None:
        settings.label_studio_server().up(settings.labelstudio.start_timeout)
    return settings.labeling_project()
