"""MLflow for real, on both backend stores: runs, verdicts, versions, aliases, loading.

Every test runs twice: on the embedded default's SQLite file in a temporary folder, and on a database of the
session's PostgreSQL server (the cluster's backend store, ``tests/databases.py``).

The retrain use-case (``components.model.retrain.retrain``) end to end: a candidate is a run
until the gate passes it; the first that passes is the champion, later ones challengers;
a refused one keeps its run and verdict and never becomes a version.

The first model is trained once for the module; each test gets its own copy of that
registry and of the training runs, so what it promotes, rolls back or adds stays its own.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from personal import PSEUDONYMS

from components.data.ingest import ingest, read_labels
from components.data.snapshot import Store
from components.model.gate import PromotionGate
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.registry import CHALLENGER, CHAMPION, PLACED_TAG, Registry, RegistryError
from components.model.retrain import Retrained, register_candidate, retrain, train_candidate
from components.model.train_config import TrainConfig
from infra.databases import LocalPostgres
from tests.conftest import mlflow_server
from tests.databases import BACKENDS, copy_database, fresh_name

pytestmark = pytest.mark.integration

# the input size these tests' margins were measured with (the default [train] preprocessing is larger)
SMALL = Preprocessing(image_size=32, resize=36)
QUICK = TrainConfig(epochs=2, patience=2, batch_size=32, preprocessing=SMALL)
# these tests are about the registry, not the gate (tests/test_gate.py): any candidate passes
LENIENT = PromotionGate(old_class_margin=1.0, newest_slice_gain=-1.0, stability_margin=1.0, min_stability=0.0)
STRICT = PromotionGate(stability_margin=-1.0)  # no lower bound reaches +1: every challenger is refused


class Backend:
    """Where one registry keeps its runs and versions: a SQLite file under ``root``, or a PostgreSQL database."""

    def __init__(self, root: Path, postgres: LocalPostgres | None = None, database: str | None = None):
        self.root, self.postgres = root, postgres
        self.database = database or (postgres.create_database(fresh_name("mlflow")) if postgres else None)

    @property
    def uri(self) -> str:
        return self.postgres.url(self.database) if self.postgres else f"sqlite:///{self.root / 'mlflow.db'}"

    def copy(self, root: Path) -> Backend:
        """The same registry as it stands now, for another test to change."""
        if self.postgres:
            return Backend(root, self.postgres, copy_database(self.postgres, self.database, "mlflow"))
        with sqlite3.connect(self.root / "mlflow.db") as source, sqlite3.connect(root / "mlflow.db") as copy:
            source.backup(copy)
        source.close()
        copy.close()
        return Backend(root)

    def open(self, artifacts: Path) -> Registry:
        return Registry(self.uri, artifact_location=artifacts.as_uri(), cache_dir=self.root / "models")


@pytest.fixture(scope="module", params=BACKENDS)
def trained(
    tmp_path_factory: pytest.TempPathFactory, small_feed: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Store, Backend, Retrained]]:
    """The feed ingested and a first model through the retrain use-case: version 1 of a registry under the root."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        root = tmp_path_factory.mktemp("registry")
        backend = Backend(root, request.getfixturevalue("postgres") if request.param == "postgresql" else None)
        store = Store(root / "store")
        ingest(
            small_feed,
            store,
            PSEUDONYMS,
            labels=read_labels(small_feed / "oracle" / "labels"),
            label_source="seed",
            workers=1,
        )
        yield store, backend, retrain(store, store.head(), QUICK, LENIENT, backend.open(root / "art"), root / "runs")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def first(trained: tuple[Store, Backend, Retrained]) -> Retrained:
    return trained[2]


@pytest.fixture
def setup(trained: tuple[Store, Backend, Retrained], tmp_path: Path) -> tuple[Store, Registry, Path]:
    """This test's copy of the registry just after the first model (its database and the training runs to resume);
    the versions' files stay where the first registry wrote them, and new runs write theirs beside them."""
    store, backend, _ = trained
    shutil.copytree(backend.root / "runs", tmp_path / "runs")
    return store, backend.copy(tmp_path).open(backend.root / "art"), tmp_path / "runs"


def test_a_training_run_logs_params_metrics_snapshot_code_labels_and_its_verdict(
    setup: tuple[Store, Registry, Path], first: Retrained
) -> None:
    store, registry, _ = setup
    run = registry.client.get_run(first.candidate.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["arch"] == "resnet18" and run.data.params["pre_image_size"] == "32"
    assert run.data.tags["snapshot"] == store.head().id
    assert len(run.data.tags["code_version"]) >= 40  # a git commit (or "unknown" outside a checkout)
    history = registry.client.get_metric_history(first.candidate.run_id, "val_accuracy")
    assert [m.step for m in history] == [1, 2]
    assert run.data.metrics["best_epoch"] == first.candidate.result.best_epoch
    assert run.data.tags["gate"] == "passed"
    assert run.data.tags["gate_reasons"] == "\n".join(first.review.verdict.reasons)
    assert run.data.metrics["test_accuracy"] == pytest.approx(first.review.candidate.overall.accuracy)
    mv = registry.client.get_model_version(registry.model_name, str(first.placed.version))
    assert mv.tags["snapshot"] == store.head().id and mv.tags["gate"] == "passed"
    assert set(mv.tags["labels"].strip("[]").replace('"', "").split(", ")) == set(first.candidate.result.labels)


def test_the_first_model_that_passes_is_the_champion_and_loads_as_it_was_trained(
    setup: tuple[Store, Registry, Path], first: Retrained
) -> None:
    store, registry, _ = setup
    assert first.placed is not None and (first.placed.version, first.placed.alias) == (1, CHAMPION)
    assert first.review.champion is None and first.review.verdict.champion is None
    assert registry.alias(CHAMPION) == 1 and registry.alias(CHALLENGER) is None
    loaded = registry.load_predictor(CHAMPION)
    images = [(store.root / ref).read_bytes() for ref in store.head().manifest().column("image").to_pylist()[:16]]
    a, b = loaded.predict(images), Predictor(first.candidate.result.tagger).predict(images)
    assert a.labels == b.labels
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert loaded.preprocessing == first.candidate.result.tagger.spec.preprocessing


def test_the_same_retrain_after_success_returns_the_registered_version_and_adds_nothing(
    setup: tuple[Store, Registry, Path], first: Retrained
) -> None:
    store, registry, runs = setup
    before = [v.version for v in registry.versions()]
    again = retrain(store, store.head(), QUICK, LENIENT, registry, runs, "scratch")
    assert again.placed is not None and again.placed.version == first.placed.version and not again.placed.new
    assert again.candidate.run_id == first.candidate.run_id
    assert again.candidate.result.resumed_from == QUICK.epochs
    assert [v.version for v in registry.versions()] == before
    assert again.review is None  # not gated again: the verdict that let it in stays on its run
    run = registry.client.get_run(first.candidate.run_id)
    assert run.data.tags["gate_reasons"] == "\n".join(first.review.verdict.reasons)
    # a call that died after moving the alias, before noting where the version went: the rerun leaves it there
    registry.client.delete_model_version_tag(registry.model_name, str(first.placed.version), PLACED_TAG)
    c, verdict = first.candidate, first.review.verdict
    redo = register_candidate(registry, c.run_id, c.tagger_dir, c.snapshot, None, verdict, first.review.candidate)
    assert (redo.version, redo.alias, redo.new) == (first.placed.version, CHAMPION, True)
    assert registry.alias(CHAMPION) == first.placed.version and registry.alias(CHALLENGER) is None


def test_a_refused_candidate_keeps_its_run_and_verdict_and_is_never_a_version(
    setup: tuple[Store, Registry, Path], first: Retrained
) -> None:
    store, registry, runs = setup
    before = [v.version for v in registry.versions()], registry.alias(CHAMPION), registry.alias(CHALLENGER)
    refused = retrain(store, store.head(), QUICK.model_copy(update={"seed": 7}), STRICT, registry, runs, "scratch")
    assert refused.placed is None and not refused.review.verdict.passed
    run = registry.client.get_run(refused.candidate.run_id)
    assert run.data.tags["gate"] == "failed" and "FAIL stability" in run.data.tags["gate_reasons"]
    assert registry.version_of_run(refused.candidate.run_id) is None
    after = [v.version for v in registry.versions()], registry.alias(CHAMPION), registry.alias(CHALLENGER)
    assert after == before


def test_a_later_model_that_passes_is_the_challenger_and_promote_then_rollback_move_the_champion(
    setup: tuple[Store, Registry, Path], first: Retrained
) -> None:
    store, registry, runs = setup
    second = retrain(store, store.head(), QUICK.model_copy(update={"seed": 1}), LENIENT, registry, runs, "scratch")
    assert second.placed is not None and second.placed.alias == CHALLENGER
    assert second.review.verdict.champion == f"{registry.model_name}/{first.placed.version}"
    assert registry.alias(CHALLENGER) == second.placed.version  # gated: the candidate for an A/B test
    assert registry.promote(second.placed.version) == first.placed.version
    assert registry.alias(CHAMPION) == second.placed.version and registry.alias(CHALLENGER) is None
    registry.set_challenger(first.placed.version)  # the old champion under test again, then rolled back to
    assert registry.rollback() == (second.placed.version, first.placed.version)
    assert registry.alias(CHAMPION) == first.placed.version and registry.alias(CHALLENGER) is None
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback()
    listed = {v.version: v for v in registry.versions()}
    assert listed[first.placed.version].aliases == [CHAMPION] and listed[second.placed.version].gate == "passed"


def test_a_version_registered_without_a_verdict_is_not_promoted_unless_forced(
    setup: tuple[Store, Registry, Path],
) -> None:
    store, registry, runs = setup
    candidate = train_candidate(store, store.head(), QUICK.model_copy(update={"seed": 2}), registry, runs)
    version = registry.register(candidate.run_id, candidate.tagger_dir, candidate.snapshot)  # outside the loop
    with pytest.raises(RegistryError, match="has not been through the gate"):
        registry.promote(version)
    champion = registry.alias(CHAMPION)
    assert registry.promote(version, force=True) == champion and registry.alias(CHAMPION) == version


def test_unknown_versions_and_aliases_are_clear_errors(setup: tuple[Store, Registry, Path]) -> None:
    _, registry, _ = setup
    with pytest.raises(RegistryError, match="has no version 99"):
        registry.version_of(99)
    with pytest.raises(RegistryError, match="has no @nightly"):
        registry.load_predictor("nightly")


@pytest.mark.parametrize("trained", ["postgresql"], indirect=True)
def test_a_tracking_server_on_postgresql_serves_the_registry_and_keeps_what_clients_change_there(
    trained: tuple[Store, Backend, Retrained], first: Retrained, tmp_path: Path
) -> None:
    """The cluster's topology: clients talk HTTP to `mlflow server`, whose backend store is PostgreSQL."""
    store, backend, _ = trained
    copy = backend.copy(tmp_path)
    with mlflow_server(copy.uri, tmp_path / "mlflow-server.log", "--no-serve-artifacts") as url:
        registry = Registry(url, artifact_location=(backend.root / "art").as_uri(), cache_dir=tmp_path / "models")
        assert registry.alias(CHAMPION) == first.placed.version == 1
        images = [(store.root / ref).read_bytes() for ref in store.head().manifest().column("image").to_pylist()[:8]]
        assert registry.load_predictor(CHAMPION).predict(images).labels == (
            Predictor(first.candidate.result.tagger).predict(images).labels
        )
        registry.client.set_registered_model_alias(registry.model_name, "nightly", "1")
        with psycopg.connect(copy.postgres.url(copy.database, "postgresql")) as conn:
            rows = conn.execute("SELECT alias, version FROM registered_model_aliases ORDER BY alias").fetchall()
        assert rows == [(CHAMPION, 1), ("nightly", 1)]
