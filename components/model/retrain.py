"""Retraining as one use-case: train a candidate -> evaluate it beside the champion -> gate -> register -> place.

What the CLI, the pipeline steps and the main job call; each piece is also a step of its own
(a KFP component runs one of them in a fresh process). The behaviour lives here once:

- a candidate is a logged MLflow run, not a registry version: it becomes a version only
  after the gate passed it, so a refused model keeps its run and its verdict and can never
  be promoted by accident;
- the first model that passes becomes ``@champion`` (there is nothing to test it against);
  every later one becomes ``@challenger``, the candidate for the A/B test;
- a version is placed once: a schedule that fires again does not revive a challenger that
  lost its test.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.errors import ConfigError
from components.features.side import side_refs
from components.files import write_atomic
from components.model.registry import CHALLENGER, CHAMPION, Registry, RegistryError, code_version

if TYPE_CHECKING:
    import torch

    from components.data.snapshot import Snapshot, Store
    from components.model.evaluate import Evaluation
    from components.model.gate import PromotionGate, Verdict
    from components.model.predict import Predictor
    from components.model.preprocess import Preprocessing
    from components.model.train import EpochStats, Step, TrainResult
    from components.model.train_config import TrainConfig

MODES = ("auto", "fine-tune", "scratch")  # auto: fine-tune the champion when there is one


def fine_tunes(mode: str, registry: Registry) -> bool:
    """Whether a retrain in ``mode`` starts from the champion's weights."""
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r}: use one of {', '.join(MODES)}")
    return mode == "fine-tune" or (mode == "auto" and registry.alias(CHAMPION) is not None)


@dataclass(frozen=True)
class Candidate:
    """A finished training run, logged in the tracking server; not a registered version."""

    run_id: str
    result: TrainResult
    snapshot: str
    base_version: int | None  # the champion it was fine-tuned from, if any
    run_dir: Path

    @property
    def tagger_dir(self) -> Path:
        """The saved tagger (what evaluation loads and registration logs)."""
        return self.run_dir / "tagger"

    @property
    def feature_refs(self) -> list[str]:
        """The stored features the tagger reads beside the image: its feature service's contents."""
        return side_refs(self.result.tagger.spec.side)


def train_candidate(
    store: Store,
    snapshot: Snapshot,
    config: TrainConfig,
    registry: Registry,
    runs_dir: Path,
    from_champion: bool = False,
    on_step: Callable[[Step], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Candidate:
    """Train on ``snapshot`` (fine-tuning the champion if asked), log the run and save the tagger.

    The run folder is keyed by what decides the result (config, snapshot, base model),
    so running the same call again after an interruption resumes the same run, and
    after success returns at once. ``tags`` (a pipeline run's id, say) go on the run.
    """
    from components.model.tagger import load_tagger, save_tagger  # noqa: PLC0415 - torch loads where a model is made
    from components.model.train import Base, train  # noqa: PLC0415

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
        state = {"run_id": run_id}
        write_atomic(state_path, json.dumps(state))
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
    candidate = Candidate(run_id, result, snapshot.id, base_version, run_dir)
    if not state.get("summarised"):  # once: a finished run called again adds nothing
        best = result.history[result.best_epoch - 1]
        registry.log_metrics(
            run_id,
            {"best_epoch": result.best_epoch, "best_val_loss": best.val_loss, "best_val_accuracy": best.val_accuracy}
            | {f"examples_{k}": v for k, v in result.examples.items()},
        )
        registry.log_json(run_id, "labels.json", list(result.labels))
        save_tagger(result.tagger, candidate.tagger_dir)
        write_atomic(state_path, json.dumps({"run_id": run_id, "summarised": True}))
    registry.finish_run(run_id)
    return candidate


def candidate_name(registry: Registry, run_id: str) -> str:
    """How a candidate is named before it has a version: ``trendloop-tagger/run-1a2b3c4d``."""
    return f"{registry.model_name}/run-{run_id[:8]}"


@dataclass(frozen=True)
class Review:
    candidate: Evaluation
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
        from components.model.datasets import labelled_posts  # noqa: PLC0415

        posts = labelled_posts(store, snapshot)
        self.snapshot = snapshot
        self.posts = posts[posts.split == "test"].reset_index(drop=True)
        if self.posts.empty:
            raise ConfigError(f"snapshot {snapshot.id} has no labelled test posts")
        self._decoded: dict[Preprocessing, torch.Tensor] = {}

    def images(self, preprocessing: Preprocessing) -> torch.Tensor:
        from components.model.datasets import decode_images  # noqa: PLC0415

        if preprocessing not in self._decoded:
            self._decoded[preprocessing] = decode_images(self.posts.path.tolist(), preprocessing)
        return self._decoded[preprocessing]


def evaluate_model(test: EvaluationSet, predictor: Predictor, name: str, old: tuple[str, ...]) -> Evaluation:
    """One model on a snapshot's test split, sliced by what the labels say (old classes, each new class)."""
    from components.model.evaluate import evaluate  # noqa: PLC0415

    return evaluate(predictor, test.posts, test.images(predictor.preprocessing), name, test.snapshot.id, old)


def compare(
    store: Store, snapshot: Snapshot, registry: Registry, candidate: Predictor, name: str
) -> tuple[Evaluation, Evaluation | None]:
    """Score ``candidate`` and the champion (unless it is the candidate) on one test split."""
    champion_version = registry.alias(CHAMPION)
    if name == f"{registry.model_name}/{champion_version}":
        champion_version = None  # the champion is not its own rival
    champion = registry.load_predictor(champion_version) if champion_version is not None else None
    old = old_labels(store, snapshot, champion)
    test = EvaluationSet(store, snapshot)
    ours = evaluate_model(test, candidate, name, old)
    theirs = evaluate_model(test, champion, f"{registry.model_name}/{champion_version}", old) if champion else None
    return ours, theirs


def review(
    store: Store, snapshot: Snapshot, registry: Registry, candidate: Predictor, name: str, gate: PromotionGate
) -> Review:
    """Score a candidate and the champion on one test split and run the gate on them; records nothing."""
    ours, theirs = compare(store, snapshot, registry, candidate, name)
    return Review(ours, theirs, gate.decide(ours, theirs))


@dataclass(frozen=True)
class Placed:
    version: int
    alias: str  # champion or challenger: where the version went when it was registered
    new: bool  # False: an earlier call registered and placed it (this one changed nothing)


def register_candidate(
    registry: Registry,
    run_id: str,
    tagger_dir: Path,
    snapshot: str,
    base_version: int | None,
    verdict: Verdict,
    evaluation: Evaluation,
    on_registered: Callable[[int], None] | None = None,
) -> Placed:
    """Register a candidate the gate passed and place it: ``@champion`` if there is none, else ``@challenger``.

    Safe to repeat: a run registers one version and its alias is set once.
    ``on_registered(version)`` runs once, before the alias moves (e.g. the version's feature
    service: serving must find it when it follows the alias).
    """
    if not verdict.passed:
        raise RegistryError(f"{candidate_name(registry, run_id)} did not pass the gate: it is not registered")
    version = registry.version_of_run(run_id)
    if version is not None and (placed := registry.placed(version)) is not None:
        # an earlier call registered and placed it: its verdict and aliases stay as they were
        return Placed(version, placed, new=False)
    registry.record_verdict(run_id, verdict, evaluation)
    if version is None:
        how = f"fine-tuned from version {base_version}" if base_version else "trained from scratch"
        version = registry.register(run_id, tagger_dir, snapshot, f"{how} on snapshot {snapshot}", verdict)
    if on_registered is not None:
        on_registered(version)
    # a call that died after moving the alias finds the version there already: it stays where it went
    alias = CHAMPION if registry.alias(CHAMPION) in (None, version) else CHALLENGER
    if alias == CHAMPION:
        registry.promote(version)  # the first model that passes: nothing to test it against
    else:
        registry.set_challenger(version)
    registry.mark_placed(version, alias)
    return Placed(version, alias, new=True)


def hold_candidate(registry: Registry, run_id: str, verdict: Verdict, evaluation: Evaluation) -> bool:
    """A candidate the gate refused: its run keeps the verdict and nothing is registered. Returns False
    (recording nothing) when the run was registered by an earlier call: the verdict that let it in stays."""
    if registry.version_of_run(run_id) is not None:
        return False
    registry.record_verdict(run_id, verdict, evaluation)
    return True


@dataclass(frozen=True)
class Retrained:
    candidate: Candidate
    review: Review | None  # None: an earlier call trained, gated and registered this very run
    placed: Placed | None  # None: the gate refused the candidate (its run keeps the verdict)


def retrain(
    store: Store,
    snapshot: Snapshot,
    config: TrainConfig,
    gate: PromotionGate,
    registry: Registry,
    runs_dir: Path,
    mode: str = "auto",
    on_step: Callable[[Step], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_registered: Callable[[int, Candidate], None] | None = None,
) -> Retrained:
    """The whole use-case in one process: train -> evaluate -> gate -> register -> place (what ``trendloop train``
    does; the pipelines run the same pieces as steps)."""
    from components.model.predict import Predictor  # noqa: PLC0415

    candidate = train_candidate(
        store, snapshot, config, registry, runs_dir, fine_tunes(mode, registry), on_step, on_epoch
    )
    earlier = registry.version_of_run(candidate.run_id)
    if earlier is not None and (alias := registry.placed(earlier)) is not None:
        return Retrained(candidate, None, Placed(earlier, alias, new=False))  # its verdict is on record already
    predictor = Predictor(candidate.result.tagger, side_reader=registry.side_reader)
    found = review(store, snapshot, registry, predictor, candidate_name(registry, candidate.run_id), gate)
    if not found.verdict.passed:
        hold_candidate(registry, candidate.run_id, found.verdict, found.candidate)
        return Retrained(candidate, found, None)
    hook = (lambda version: on_registered(version, candidate)) if on_registered is not None else None
    placed = register_candidate(
        registry, candidate.run_id, candidate.tagger_dir, candidate.snapshot, candidate.base_version,
        found.verdict, found.candidate, hook,
    )  # fmt: skip
    return Retrained(candidate, found, placed)
