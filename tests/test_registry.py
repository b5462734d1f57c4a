"""MLflow for real (SQLite tracking and registry in a temporary folder): runs, versions, aliases, loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from components.gate import PromotionGate
from components.ingest import ingest, read_labels
from components.predict import Predictor
from components.registry import CHALLENGER, CHAMPION, Registry, RegistryError
from components.snapshot import Store
from components.train import TrainConfig
from components.workflow import Trained, review, train_and_register

QUICK = TrainConfig(epochs=2, patience=2, batch_size=32)
LENIENT = PromotionGate(old_class_margin=1.0, newest_slice_gain=-1.0, min_stability=0.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, small_feed: Path) -> tuple[Store, Registry, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("registry")
    store = Store(root / "store")
    ingest(small_feed, store, labels=read_labels(small_feed / "oracle" / "labels"), label_source="seed", workers=1)
    registry = Registry(
        f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "art").as_uri(), cache_dir=root / "models"
    )
    return store, registry, root / "runs"


@pytest.fixture(scope="module")
def first(setup: tuple[Store, Registry, Path]) -> Trained:
    store, registry, runs = setup
    return train_and_register(store, store.head(), QUICK, registry, runs)


def test_a_training_run_logs_params_metrics_snapshot_code_and_labels(
    setup: tuple[Store, Registry, Path], first: Trained
) -> None:
    store, registry, _ = setup
    run = registry.client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["arch"] == "resnet18" and run.data.params["pre_image_size"] == "32"
    assert run.data.tags["snapshot"] == store.head().id
    assert len(run.data.tags["code_version"]) >= 40  # a git commit (or "unknown" outside a checkout)
    history = registry.client.get_metric_history(first.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["best_epoch"] == first.result.best_epoch
    mv = registry.client.get_model_version(registry.model_name, str(first.version))
    assert mv.tags["snapshot"] == store.head().id
    assert set(mv.tags["labels"].strip("[]").replace('"', "").split(", ")) == set(first.result.labels)


def test_registered_aliased_and_loaded_predictions_match_the_in_memory_model(
    setup: tuple[Store, Registry, Path], first: Trained
) -> None:
    store, registry, _ = setup
    with pytest.raises(RegistryError, match="has not been through the gate"):
        registry.promote(first.version)
    verdict = review(store, store.head(), registry, first.version, LENIENT).verdict
    assert verdict.passed and verdict.champion is None
    registry.promote(first.version)
    loaded = registry.load_predictor(CHAMPION)
    images = [(store.root / ref).read_bytes() for ref in store.head().manifest().column("image").to_pylist()[:16]]
    a, b = loaded.predict(images), Predictor(first.result.tagger).predict(images)
    assert a.labels == b.labels
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert loaded.preprocessing == first.result.tagger.spec.preprocessing


def test_the_same_command_after_success_returns_the_registered_version(
    setup: tuple[Store, Registry, Path], first: Trained
) -> None:
    store, registry, runs = setup
    again = train_and_register(store, store.head(), QUICK, registry, runs)
    assert again.version == first.version and again.run_id == first.run_id
    assert again.result.resumed_from == QUICK.epochs
    assert [v.version for v in registry.versions()] == [first.version]


def test_promote_moves_champion_and_rollback_brings_the_previous_one_back(
    setup: tuple[Store, Registry, Path], first: Trained
) -> None:
    store, registry, runs = setup
    if registry.alias(CHAMPION) is None:
        review(store, store.head(), registry, first.version, LENIENT)
        registry.promote(first.version)
    second = train_and_register(store, store.head(), QUICK.model_copy(update={"seed": 1}), registry, runs)
    strict = PromotionGate(min_stability=1.01)  # no model passes: the verdict is recorded as failed
    failed = review(store, store.head(), registry, second.version, strict)
    assert not failed.verdict.passed
    assert registry.client.get_model_version(registry.model_name, str(second.version)).tags["gate"] == "failed"
    with pytest.raises(RegistryError, match="failed its gate"):
        registry.promote(second.version)
    passed = review(store, store.head(), registry, second.version, LENIENT)
    assert passed.verdict.passed and passed.verdict.champion == f"{registry.model_name}/{first.version}"
    assert registry.alias(CHALLENGER) == second.version  # gated: the candidate for an A/B test
    assert registry.promote(second.version) == first.version
    assert registry.alias(CHAMPION) == second.version and registry.alias(CHALLENGER) is None
    assert registry.rollback() == (second.version, first.version)
    assert registry.alias(CHAMPION) == first.version
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback()
    listed = {v.version: v for v in registry.versions()}
    assert listed[first.version].aliases == [CHAMPION] and listed[second.version].gate == "passed"


def test_unknown_versions_and_aliases_are_clear_errors(setup: tuple[Store, Registry, Path]) -> None:
    _, registry, _ = setup
    with pytest.raises(RegistryError, match="has no version 99"):
        registry.version_of(99)
    with pytest.raises(RegistryError, match="has no @nightly"):
        registry.load_predictor("nightly")
