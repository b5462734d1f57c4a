"""The loop's shared decisions, written once: when a retrain is due, and which labels may train a model.

The pipelines' plan and check-labels steps, the CLI and the main job all call these.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch
from personal import PSEUDONYMS

from active_learning.loop import check_labels, commit_labels
from active_learning.queue import Decision, LabelQueue
from components.data.ingest import ingest, read_labels, relabel
from components.data.predlog import PredictionLog
from components.data.snapshot import Store
from components.model.preprocess import Preprocessing
from components.model.registry import CHALLENGER, CHAMPION, Registry
from components.model.tagger import TaggerSpec, build_tagger, save_tagger
from components.monitor.checks import retrain_plan
from components.monitor.drift import DriftVerdict, Signal
from components.monitor.triggers import LABELS, RetrainPolicy, TriggerContext
from tests.conftest import SMALL_FEED

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def context(**changes: object) -> TriggerContext:
    base = dict(
        now=NOW, drift=None, new_labels=0, champion_since=NOW - timedelta(days=1), feedback_accuracy=None,
        feedback_posts=0, champion_accuracy=0.8,
    )  # fmt: skip
    return TriggerContext(**(base | changes))


def verdict(drifted: bool) -> DriftVerdict:
    signal = Signal("novelty", "kNN novelty tail", 1e-5 if drifted else 0.4, 0.008, drifted, False)
    return DriftVerdict(drifted, [signal], 300, 200, 0.05, [])


@pytest.mark.unit
def test_a_retrain_is_due_when_a_trigger_fires_and_there_are_enough_new_labels() -> None:
    policy = RetrainPolicy(min_new_labels=20, new_labels=500, every_days=7)
    cases = [
        (context(drift=verdict(True), new_labels=50), True),  # drift, and labels to learn it from
        (context(drift=verdict(True), new_labels=19), False),  # drift, but nothing new to train on
        (context(new_labels=50), False),  # new labels, no trigger: 50 < 500
        (context(new_labels=500), True),  # enough new labels fire on their own
        (context(new_labels=30, champion_since=NOW - timedelta(days=8)), True),  # the schedule
        (context(new_labels=30, champion_since=None), True),  # no champion yet
        (context(new_labels=0, champion_since=None), False),  # ...but not without labels
    ]
    for found, due in cases:
        decisions = policy.decide(found)
        assert decisions[0].trigger == LABELS and decisions[0].fire == (found.new_labels >= 20)
        assert policy.due(decisions) is due, (found, decisions)
    # every trigger switched off: labels still make the first model, and nothing after it
    quiet = RetrainPolicy(min_new_labels=20, drift_signals=0, new_labels=0, every_days=0, max_accuracy_drop=0)
    assert quiet.due(quiet.decide(context(new_labels=30, champion_since=None)))
    assert not quiet.due(quiet.decide(context(new_labels=30, drift=verdict(True))))


@pytest.fixture(scope="module")
def world(small_feed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Registry, Path]:
    """Days 0-2 labelled; a registered champion trained (nominally) on that snapshot; days 3-4 unlabelled."""
    root = tmp_path_factory.mktemp("policy")
    store = Store(root / "store")
    labels = read_labels(small_feed / "oracle" / "labels")
    ingest(small_feed, store, PSEUDONYMS, labels=labels, label_source="seed", until=SMALL_FEED.day_start(3), workers=1)
    seed = store.head()
    ingest(small_feed, store, PSEUDONYMS, since=SMALL_FEED.day_start(3), workers=1)
    registry = Registry(
        f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "art").as_uri(), cache_dir=root / "models"
    )
    register(registry, seed.id, CHAMPION)
    return store, registry, root


def register(registry: Registry, snapshot: str, alias: str) -> int:
    torch.manual_seed(0)
    tagger = build_tagger(TaggerSpec("resnet18", ("cat", "dog"), Preprocessing(image_size=32, resize=36)))
    with tempfile.TemporaryDirectory() as tmp:
        run_id = registry.start_run("policy", {}, {"snapshot": snapshot})
        version = registry.register(run_id, save_tagger(tagger, Path(tmp) / "t"), snapshot)
        registry.finish_run(run_id)
    registry.client.set_model_version_tag(registry.model_name, str(version), "gate", "passed")
    registry.promote(version) if alias == CHAMPION else registry.set_challenger(version)
    return version


def write_check(checks: Path, version: int, when: datetime, drifted: bool) -> None:
    folder = checks / f"{when:%Y%m%d%H%M%S}-v{version}"
    folder.mkdir(parents=True)
    record = {"checked_at": when.isoformat(), "model_version": version, "verdict": verdict(drifted).to_dict()}
    (folder / "drift.json").write_text(json.dumps(record))


@pytest.mark.integration
def test_the_plan_counts_labels_and_drift_against_the_newest_version(world: tuple[Store, Registry, Path]) -> None:
    store, registry, root = world
    checks, log = root / "checks", PredictionLog(root / "predictions")
    policy = RetrainPolicy(min_new_labels=5, new_labels=500, every_days=0, max_accuracy_drop=0)
    champion = registry.alias(CHAMPION)
    born = next(v.created_at for v in registry.versions() if v.version == champion)
    write_check(checks, champion, born - timedelta(minutes=1), drifted=True)  # before the version: answered
    plan = retrain_plan(store, store.head(), registry, log, checks, policy)
    assert (plan.due, plan.new_labels) == (False, 0)
    assert plan.reason == "no retrain: 0 labels the newest version has not seen (a retrain needs 5)"

    fresh = store.head().manifest().to_pandas()
    unlabelled = fresh[fresh.label.isna()].post_id.tolist()[:8]
    relabel(store, {p: "meme" for p in unlabelled}, "annotators", {"batch": "policy-test", "uri": "test"})
    plan = retrain_plan(store, store.head(), registry, log, checks, policy)
    assert (plan.due, plan.new_labels) == (False, 8)  # labels, but the only drift check predates the version
    write_check(checks, champion, datetime.now(UTC), drifted=True)
    plan = retrain_plan(store, store.head(), registry, log, checks, policy)
    assert (plan.due, plan.new_labels) == (True, 8) and plan.reason == "retrain due: drift fired, 8 new labels"

    challenger = register(registry, store.head().id, CHALLENGER)  # trained on those labels: they are answered
    plan = retrain_plan(store, store.head(), registry, log, checks, policy)
    assert (plan.due, plan.new_labels) == (False, 0)
    assert registry.alias(CHALLENGER) == challenger


@pytest.mark.unit
def test_labels_train_only_when_decided_new_held_by_the_snapshot_and_agreed_on(
    small_feed: Path, tmp_path: Path
) -> None:
    store = Store(tmp_path / "store")
    ingest(small_feed, store, PSEUDONYMS, until=SMALL_FEED.day_start(2), workers=1)
    queue = LabelQueue(tmp_path / "queue.db")
    posts = store.head().manifest().column("post_id").to_pylist()
    queue.save_decisions(
        [
            Decision(posts[0], "meme", "decided", 3, 1.0, True),
            Decision(posts[1], "cat", "decided", 3, 0.67, False),  # two of three agreed
            Decision(posts[2], "dog", "tied", 2, 0.5, False),
            Decision("s0-d099-00001", "cat", "decided", 1, 1.0, False),  # a post no snapshot holds
            Decision(posts[3], "dog", "decided", 1, None, False),  # one vote: nothing to disagree on
        ]
    )
    checked = check_labels(queue, store.head(), min_agreement=0.75)
    assert checked.passed == {posts[0]: "meme", posts[3]: "dog"}
    assert checked.dropped == {"post not in the snapshot": 1, "agreement below 0.75": 1}
    assert check_labels(queue, store.head()).passed == {posts[0]: "meme", posts[1]: "cat", posts[3]: "dog"}
    commit_labels(store, queue, checked.passed)
    again = check_labels(queue, store.head(), min_agreement=0.75)
    assert again.passed == {}  # committed by an earlier sync: not new any more
