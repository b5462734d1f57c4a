"""The model steps of the loop as whole units: train-and-register, evaluate-and-gate.

These are what the CLI, the demo and (later) the KFP components call: each takes
explicit stores and settings values and leaves its trace in the registry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from components.data import decode_images, labelled_posts
from components.errors import ConfigError
from components.evaluate import Evaluation, evaluate
from components.gate import PromotionGate, Verdict
from components.model import load_tagger, save_tagger
from components.posts import write_atomic
from components.predict import Predictor
from components.preprocess import Preprocessing
from components.registry import CHAMPION, Registry, code_version
from components.side import side_refs
from components.snapshot import Snapshot, Store
from components.train import Base, EpochStats, Step, TrainConfig, TrainResult, train


@dataclass(frozen=True)
class TrainedRun:
    """A finished training run, logged in the tracking server; not yet a registered version."""

    run_id: str
    result: TrainResult
    snapshot: str
    base_version: int | None  # the champion it was fine-tuned from, if any
    run_dir: Path


@dataclass(frozen=True)
class Trained(TrainedRun):
    """A training run and the version it registered."""

    version: int

    @property
    def feature_refs(self) -> list[str]:
        """The stored features the version reads beside the image: its feature service's contents."""
        return side_refs(self.result.tagger.spec.side)


def train_logged(
    store: Store,
    snapshot: Snapshot,
    config: TrainConfig,
    registry: Registry,
    runs_dir: Path,
    from_champion: bool = False,
    on_step: Callable[[Step], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainedRun:
    """Train on ``snapshot`` (fine-tuning the champion if asked) and log the run; registers nothing.

    The run folder is keyed by what decides the result (config, snapshot, base model),
    so running the same call again after an interruption resumes the same run, and
    after success returns at once. ``tags`` (a pipeline run's id, say) go on the run.
    """
    base, base_version = None, None
    if from_champion:
        base_version = registry.alias(CHAMPION)
        if base_version is None:
            raise ConfigError("there is no champion to fine-tune yet; train from scratch first")
        base = Base(load_tagger(registry.model_dir(base_version)), store.load(registry.snapshot_of(base_version)))
    key = hashlib.sha256(
        json.dumps([config.record(), snapshot.id, registry.model_name, base_version], default=str).encode()
    ).hexdigest()[:12]
    run_dir = runs_dir / key
    state_path = run_dir / "run.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    run_id = state.get("run_id")
    if run_id is None or not registry.run_exists(run_id):
        params = config.record() | {"snapshot": snapshot.id, "base_version": base_version}
        run_tags = {
            "snapshot": snapshot.id,
            "code_version": code_version(),
            "mode": "fine-tune" if base else "scratch",
            "base_version": str(base_version or ""),
            "inputs": "+".join(("image", *config.side)),
        }
        run_id = registry.start_run(f"train-{snapshot.id[:8]}-{key[:6]}", params, run_tags | dict(tags or {}))
        write_atomic(state_path, json.dumps({"run_id": run_id}))
    else:
        registry.client.update_run(run_id, status="RUNNING")
        for name, value in (tags or {}).items():
            registry.client.set_tag(run_id, name, value)

    def epoch_done(stats: EpochStats) -> None:
        values = {k: v for k, v in vars(stats).items() if k != "epoch"}
        registry.log_metrics(run_id, values, step=stats.epoch)
        if on_epoch is not None:
            on_epoch(stats)

    try:
        result = train(store, snapshot, config, run_dir, base, on_step, epoch_done, side_reader=registry.side_reader)
    except BaseException:
        registry.finish_run(run_id, "KILLED")  # resumable: the next call reopens it
        raise
    if not json.loads(state_path.read_text()).get("summarised"):  # once: a finished run called again adds nothing
        best = result.history[result.best_epoch - 1]
        registry.log_metrics(
            run_id,
            {"best_epoch": result.best_epoch, "best_val_loss": best.val_loss, "best_val_accuracy": best.val_accuracy}
            | {f"examples_{k}": v for k, v in result.examples.items()},
        )
        registry.log_json(run_id, "labels.json", list(result.labels))
        write_atomic(state_path, json.dumps({"run_id": run_id, "summarised": True}))
    registry.finish_run(run_id)
    return TrainedRun(run_id, result, snapshot.id, base_version, run_dir)


def register_trained(
    registry: Registry, run_id: str, tagger_dir: Path, snapshot: str, base_version: int | None = None
) -> int:
    """Register the run's tagger (saved in ``tagger_dir``) as a new version of the model.

    A run registers one version: calling again, after a failure between registering
    and whatever came next, returns the version it made.
    """
    existing = registry.version_of_run(run_id)
    if existing is not None:
        return existing
    how = f"fine-tuned from version {base_version}" if base_version else "trained from scratch"
    return registry.register(run_id, tagger_dir, snapshot, f"{how} on snapshot {snapshot}")


def train_and_register(
    store: Store,
    snapshot: Snapshot,
    config: TrainConfig,
    registry: Registry,
    runs_dir: Path,
    from_champion: bool = False,
    on_step: Callable[[Step], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> Trained:
    """Train on ``snapshot``, log the run and register the model; again after an interruption resumes."""
    run = train_logged(store, snapshot, config, registry, runs_dir, from_champion, on_step, on_epoch)
    tagger_dir = run.run_dir / "tagger"
    if registry.version_of_run(run.run_id) is None:
        save_tagger(run.result.tagger, tagger_dir)
    version = register_trained(registry, run.run_id, tagger_dir, snapshot.id, run.base_version)
    return Trained(run.run_id, run.result, run.snapshot, run.base_version, run.run_dir, version)


@dataclass(frozen=True)
class Review:
    version: int
    challenger: Evaluation
    champion: Evaluation | None
    verdict: Verdict


def old_labels(store: Store, snapshot: Snapshot, champion: Predictor | None) -> tuple[str, ...]:
    """The classes forgetting is measured on: the champion's, or the first snapshot's labels."""
    if champion is not None:
        return champion.labels
    root = snapshot
    while root.parent is not None:
        root = store.load(root.parent)
    return tuple(sorted(root.labels))


class EvaluationSet:
    """A snapshot's labelled test posts, decoded once per preprocessing (models often share one)."""

    def __init__(self, store: Store, snapshot: Snapshot):
        posts = labelled_posts(store, snapshot)
        self.snapshot = snapshot
        self.posts = posts[posts.split == "test"].reset_index(drop=True)
        if self.posts.empty:
            raise ConfigError(f"snapshot {snapshot.id} has no labelled test posts")
        self._decoded: dict[Preprocessing, torch.Tensor] = {}

    def images(self, preprocessing: Preprocessing) -> torch.Tensor:
        if preprocessing not in self._decoded:
            self._decoded[preprocessing] = decode_images(self.posts.path.tolist(), preprocessing)
        return self._decoded[preprocessing]


def evaluate_model(
    test: EvaluationSet,
    predictor: Predictor,
    name: str,
    old: tuple[str, ...],
    styles: Mapping[str, str] | None = None,
) -> Evaluation:
    """One model on a snapshot's test split."""
    base = test.images(predictor.preprocessing)
    return evaluate(predictor, test.posts, base, name, test.snapshot.id, old, styles)


def compare(
    store: Store,
    snapshot: Snapshot,
    registry: Registry,
    candidate: Predictor,
    name: str,
    styles: Mapping[str, str] | None = None,
) -> tuple[Evaluation, Evaluation | None]:
    """Score ``candidate`` and the champion (unless it is the candidate) on one test split."""
    champion_version = registry.alias(CHAMPION)
    if name == f"{registry.model_name}/{champion_version}":
        champion_version = None  # the champion is not its own rival
    champion = registry.load_predictor(champion_version) if champion_version is not None else None
    old = old_labels(store, snapshot, champion)
    test = EvaluationSet(store, snapshot)
    ours = evaluate_model(test, candidate, name, old, styles)
    theirs = (
        evaluate_model(test, champion, f"{registry.model_name}/{champion_version}", old, styles) if champion else None
    )
    return ours, theirs


def review(
    store: Store,
    snapshot: Snapshot,
    registry: Registry,
    version: int,
    gate: PromotionGate,
    styles: Mapping[str, str] | None = None,
) -> Review:
    """Score a version and the champion on one test split, run the gate, record the verdict.

    A version that passes becomes ``@challenger`` (the candidate for an A/B test).
    """
    name = f"{registry.model_name}/{version}"
    ours, theirs = compare(store, snapshot, registry, registry.load_predictor(version), name, styles)
    verdict = gate.decide(ours, theirs)
    registry.record_review(version, verdict, ours)
    if verdict.passed and theirs is not None:
        registry.set_challenger(version)
    return Review(version, ours, theirs, verdict)
