"""Serving without Ray: assignment, the event writer, the router, experiments and the report's data."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
import torch
from personal import PSEUDONYMS
from PIL import Image
from scipy import stats

from components.data.predlog import PREDICTION_SCHEMA, PredictionLog, served
from components.data.validate import Rejection
from components.model.predict import Predictor
from components.model.preprocess import Preprocessing
from components.model.tagger import TaggerSpec, build_tagger
from infra.ray import LocalRay, RayError, RayPorts
from serving import control
from serving.api import build_api
from serving.control import Serving
from serving.deploy import ServingError, serve_config
from serving.eventlog import EventWriter, FeedbackLog
from serving.experiment import (
    CHALLENGER,
    CHAMPION,
    Experiment,
    ExperimentError,
    Experiments,
    assign_arm,
    bucket,
)
from serving.report import timeline, user_table
from serving.router import Refused, RequestBook, Router, Traffic
from serving.tagging import ArmModel, ModelNotLoaded, PostContext, Tagged
from serving.traffic import Audience, DriveStats, FeedPost, drive
from tests.conftest import free_port
from tests.models import register_untrained
from trendloop import wiring
from trendloop.settings import Settings

USERS = [f"u{i}" for i in range(20_000)]


def run(coro):
    """Run a coroutine to the end in its own thread and event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.mark.unit
def test_assignment_is_sticky_matches_the_split_and_only_moves_users_towards_the_challenger() -> None:
    arms = [assign_arm(u, "salt-1", 0.3) for u in USERS]
    assert arms == [assign_arm(u, "salt-1", 0.3) for u in USERS]  # same answer every time, every process
    share = arms.count(CHALLENGER) / len(USERS)
    assert stats.binomtest(arms.count(CHALLENGER), len(USERS), 0.3).pvalue > 0.001, share
    wider = [assign_arm(u, "salt-1", 0.5) for u in USERS]
    assert all(w == CHALLENGER for a, w in zip(arms, wider, strict=True) if a == CHALLENGER)  # a ramp-up moves one way
    other = np.array([bucket(u, "salt-2") for u in USERS])
    first = np.array([bucket(u, "salt-1") for u in USERS])
    assert abs(np.corrcoef(first, other)[0, 1]) < 0.03  # a new salt reshuffles everyone
    assert stats.kstest(first, "uniform").pvalue > 0.001
    assert {assign_arm(u, "s", 0.0) for u in USERS[:500]} == {CHAMPION}
    assert {assign_arm(u, "s", 1.0) for u in USERS[:500]} == {CHALLENGER}


@pytest.mark.unit
def test_traffic_rejects_unknown_knobs_and_bad_splits() -> None:
    with pytest.raises(ValueError, match="unknown router settings"):
        Traffic.from_config({"split": 0.5, "spilt": 0.2})
    with pytest.raises(ValueError, match="split"):
        Traffic.from_config({"split": 1.5})
    assert Traffic.from_config({"split": 0.5, "challenger_version": None}).arm_of("anyone") == CHAMPION


@pytest.mark.unit
def test_the_traffic_driver_reports_each_request_done_to_its_progress_hook() -> None:
    """Each request, answered (its feedback sent) or refused, is reported once, as the count of requests done."""

    def app(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/feedback":
            return httpx.Response(200, json={})
        if request.content == b"broken":
            return httpx.Response(415, json={"detail": "not_an_image"})
        return httpx.Response(200, json={"request_id": "r", "arm": CHAMPION, "label": "food"})

    seen: list[tuple[int, int, int]] = []

    def progress(stats: DriveStats) -> None:
        seen.append((stats.done, stats.ok, sum(stats.failed.values())))

    posts = [FeedPost(None, b"fine"), FeedPost(None, b"broken")]
    stats = run(drive("http://app", posts, Audience(viewers=10), 40, concurrency=4, transport=httpx.MockTransport(app),
                      progress=progress))  # fmt: skip
    assert [done for done, _, _ in seen] == list(range(1, 41))
    assert (stats.done, stats.ok + stats.failed[415]) == (40, 40) and stats.ok > 0 and stats.failed[415] > 0
    assert seen[-1] == (40, stats.ok, stats.failed[415])
    assert stats.feedback >= stats.ok  # an impression at least for every answered request


def record(i: int, when: datetime) -> dict:
    return {
        "request_id": f"r{i}", "post_id": None, "user_id": f"u{i % 7}", "arm": CHAMPION, "model_version": 1,
        "predicted": "food", "confidence": 0.5, "probabilities": [0.5, 0.5], "embedding": [0.0, 1.0],
        "latency_ms": 3.0, "time": when, "experiment": "e1",
    }  # fmt: skip


@pytest.mark.unit
def test_the_writer_never_raises_keeps_records_through_failures_and_flushes_on_close(tmp_path: Path) -> None:
    root = tmp_path / "predictions"
    root.write_text("a file where the log's folder should be")  # every write fails
    log = PredictionLog(root)
    writer = EventWriter(log, "t", flush_every_s=0.05)
    now = datetime.now(UTC)
    for i in range(50):
        writer.append(record(i, now))  # never raises, never blocks
    assert writer.flush() == 0 and writer.pending == 50 and writer.failures >= 1
    assert "exists" in (writer.last_error or "") or "directory" in (writer.last_error or "").lower()
    root.unlink()  # the disk is back
    assert writer.close() == 0
    written = log.read()
    assert sorted(written.column("request_id").to_pylist()) == sorted(f"r{i}" for i in range(50))
    again = EventWriter(log, "t")  # a restarted writer never overwrites an earlier one's files
    again.append(record(99, now))
    again.close()
    assert len(log.read()) == 51


@pytest.mark.unit
def test_files_without_the_experiment_column_read_back_with_nulls(tmp_path: Path) -> None:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    old = pa.Table.from_pylist([record(1, datetime(2026, 1, 2, tzinfo=UTC))], schema=PREDICTION_SCHEMA)
    (tmp_path / "day=2026-01-02").mkdir()
    pq.write_table(old.drop_columns(["experiment"]), tmp_path / "day=2026-01-02" / "batch-v1.parquet")
    found = PredictionLog(tmp_path).read(since=datetime(2026, 1, 1, tzinfo=UTC))
    assert found.column("experiment").to_pylist() == [None] and found.column("request_id").to_pylist() == ["r1"]


@pytest.mark.unit
def test_records_written_before_the_source_column_count_as_served_or_batch_by_their_post_id(tmp_path: Path) -> None:
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    when = datetime(2026, 1, 2, tzinfo=UTC)
    request, scored = record(1, when), record(2, when) | {"post_id": "p2", "experiment": None}
    old = pa.Table.from_pylist([request, scored], schema=PREDICTION_SCHEMA).drop_columns(["source"])
    (tmp_path / "day=2026-01-02").mkdir()
    pq.write_table(old, tmp_path / "day=2026-01-02" / "old.parquet")
    new = [record(3, when) | {"source": "served"}, record(4, when) | {"post_id": "p4", "source": "batch"}]
    PredictionLog(tmp_path).write(pa.Table.from_pylist(new, schema=PREDICTION_SCHEMA), "new")
    log, since = PredictionLog(tmp_path), datetime(2026, 1, 1, tzinfo=UTC)
    assert sorted(log.read(since=since, where=served()).column("request_id").to_pylist()) == ["r1", "r3"]
    assert sorted(log.read(since=since, where=~served()).column("request_id").to_pylist()) == ["r2", "r4"]


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def model() -> ArmModel:
    torch.manual_seed(0)
    tagger = build_tagger(TaggerSpec("resnet18", ("a", "b", "c", "d"), Preprocessing(image_size=32, resize=36)))
    loaded: list[int] = []

    def load(version: int) -> Predictor:
        loaded.append(version)
        return Predictor(tagger)

    arm = ArmModel(load, top_k=2)
    arm.loaded = loaded  # type: ignore[attr-defined]
    return arm


@pytest.mark.unit
def test_an_arm_predicts_a_batch_and_a_bad_upload_costs_only_itself(model: ArmModel) -> None:
    with pytest.raises(ModelNotLoaded):
        model.predict([png((1, 2, 3))])
    assert model.use(3) and not model.use(3) and model.loaded == [3]  # type: ignore[attr-defined]
    good = png((200, 30, 30))
    out = model.predict([good, b"GIF89a broken", good[: len(good) // 2], good])
    assert isinstance(out[1], Rejection) and isinstance(out[2], Rejection)
    assert out[2].reason == "truncated"
    assert out[0].model_version == 3 and len(out[0].labels) == 2 and out[0].labels == out[3].labels
    assert out[0].scores[0] >= out[0].scores[1] and abs(out[0].probabilities.sum() - 1) < 1e-5
    alone = model.predict([good])[0]
    assert np.allclose(alone.probabilities, out[0].probabilities, atol=1e-5)  # batching does not change answers


def make_router(tmp_path: Path, model: ArmModel) -> Router:
    model.use(1)

    async def arm(upload: bytes, context: dict):
        return model.predict([upload], [PostContext(**context)])[0]

    predictions = PredictionLog(tmp_path / "predictions")
    return Router(
        {CHAMPION: arm, CHALLENGER: arm},
        EventWriter(predictions, "r", flush_every_s=0.05),
        EventWriter(FeedbackLog(tmp_path / "feedback"), "r", flush_every_s=0.05),
        RequestBook(predictions, capacity=2),
        Traffic(split=0.5, salt="s", experiment="e1", champion_version=1, challenger_version=1),
        max_upload_bytes=50_000,
        pseudonyms=PSEUDONYMS,
    )


@pytest.mark.unit
def test_the_router_refuses_bad_requests_precisely_and_finds_old_requests_after_a_restart(
    tmp_path: Path, model: ArmModel
) -> None:
    router = make_router(tmp_path, model)
    ok = [run(router.predict(png((i, 9, 9)), f"user{i}")) for i in range(4)]
    assert {b["arm"] for b in ok} <= {CHAMPION, CHALLENGER}
    assert all(b["arm"] == assign_arm(PSEUDONYMS.of(b["user_id"]), "s", 0.5) for b in ok)
    refusals = [
        (lambda: router.predict(b"", "u"), 400, "empty"),
        (lambda: router.predict(b"x" * 60_000, "u"), 413, "limit"),
        (lambda: router.predict(b"<html>oops</html>", "u"), 415, "not_an_image"),
        (lambda: router.predict(png((1, 1, 1)), "  "), 422, "user_id"),
        (lambda: router.predict(png((1, 1, 1)), "bad\nid"), 422, "printable"),
    ]
    for call, status, needle in refusals:
        with pytest.raises(Refused) as err:
            run(call())
        assert err.value.status == status and needle in err.value.message
    with pytest.raises(Refused) as err:
        router.feedback("nope", "click")
    assert err.value.status == 404
    with pytest.raises(Refused) as err:
        router.feedback(ok[0]["request_id"], "buy")
    assert err.value.status == 422
    assert router.feedback(ok[0]["request_id"], "click")["arm"] == ok[0]["arm"]
    assert router.close() == 0

    restarted = make_router(tmp_path, model)  # a new process: an empty memory of requests
    assert restarted.feedback(ok[0]["request_id"], "like")["arm"] == ok[0]["arm"]  # found in the log
    restarted.close()
    events = FeedbackLog(tmp_path / "feedback").read(where=pc.field("request_id") == ok[0]["request_id"])
    assert sorted(events.column("event").to_pylist()) == ["click", "like"]


@pytest.mark.unit
def test_experiments_declare_the_rule_at_the_start_and_close_once(tmp_path: Path) -> None:
    experiments = Experiments(tmp_path)
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    first = experiments.start(1, 2, 0.5, {"alpha": 0.05}, now=t0)
    assert experiments.current() == first and first.rule == {"alpha": 0.05} and first.running
    second = experiments.start(1, 3, 0.2, {"alpha": 0.01}, now=t0 + timedelta(hours=1))
    assert experiments.get(first.id).outcome == "stopped" and experiments.current() == second
    closed = experiments.finish(second.id, "promote", "won")
    assert closed.outcome == "promote" and experiments.current() is None
    with pytest.raises(ExperimentError, match="already ended"):
        experiments.finish(second.id, "rollback")
    with pytest.raises(ExperimentError, match="challenger"):
        experiments.start(1, None, 0.5, {})
    assert [e.id for e in experiments.all()] == [second.id, first.id]


@pytest.mark.unit
def test_users_are_counted_by_their_assigned_arm_and_the_timeline_adds_up() -> None:
    experiments_start = datetime(2026, 3, 1, tzinfo=UTC)
    exp = Experiment("e", 1, 2, 0.5, "salt", {}, experiments_start.isoformat())
    users = [f"v{i}" for i in range(200)]
    rng = np.random.default_rng(0)
    rows = []
    for i in range(1000):
        user = users[rng.integers(0, 200)]
        served = assign_arm(user, "salt", 0.5)
        if i % 97 == 0:
            served = CHAMPION  # the challenger was between versions: the champion answered
        rows.append({"request_id": f"q{i}", "user_id": user, "arm": served,
                     "time": experiments_start + timedelta(minutes=i / 10)})  # fmt: skip
    exposures = pd.DataFrame(rows)
    feedback = pd.DataFrame(
        [{"request_id": r["request_id"], "user_id": r["user_id"], "arm": r["arm"], "time": r["time"],
          "event": "click" if j % 3 == 0 else "impression"} for j, r in enumerate(rows[::2])]
    )  # fmt: skip
    table = user_table(exposures, feedback, exp)
    assert table["exposures"].sum() == 1000 and table["engagements"].sum() == (feedback["event"] == "click").sum()
    assert all(table["arm"] == [assign_arm(u, "salt", 0.5) for u in table["user_id"]])  # intention to treat
    buckets = timeline(exposures, feedback, experiments_start, experiments_start + timedelta(minutes=100))
    assert len({r["start"] for r in buckets}) <= 48
    assert sum(r["exposures"] for r in buckets) == 1000
    assert sum(r["engagements"] for r in buckets) == (feedback["event"] == "click").sum()


def write_test_traffic(s: Serving, experiment: Experiment, lift: float, users: int = 1200, seed: int = 0) -> None:
    """Exposures and feedback as the router logs them: the challenger's users engage ``lift`` more."""
    rng = np.random.default_rng(seed)
    start = experiment.started()
    predictions, feedback = [], []
    for u in range(users):
        user = f"w{u}"
        arm = assign_arm(user, experiment.salt, experiment.split)
        rate = 0.15 * (1 + lift if arm == CHALLENGER else 1)
        version = experiment.challenger_version if arm == CHALLENGER else experiment.champion_version
        for k in range(4):
            request_id = f"{user}-{k}"
            when = start + timedelta(microseconds=4 * u + k)  # all of it logged by now
            predictions.append({**record(0, when), "request_id": request_id, "user_id": user, "arm": arm,
                                "model_version": version, "experiment": experiment.id})  # fmt: skip
            event = "click" if rng.random() < rate else "impression"
            feedback.append({"request_id": request_id, "event": event, "user_id": user, "arm": arm,
                             "model_version": version, "experiment": experiment.id, "time": when})  # fmt: skip
    import pyarrow as pa  # noqa: PLC0415

    from serving.eventlog import FEEDBACK_SCHEMA  # noqa: PLC0415

    s.predictions.write(pa.Table.from_pylist(predictions, schema=PREDICTION_SCHEMA), f"test-{seed}")
    s.feedback.write(pa.Table.from_pylist(feedback, schema=FEEDBACK_SCHEMA), f"test-{seed}")


@pytest.mark.parametrize(
    ("lift", "verdict", "champion_after"), [(0.6, "promote", "challenger"), (-0.5, "rollback", "champion")]
)
@pytest.mark.integration
def test_decide_applies_the_declared_rule_to_the_registry(
    tmp_path: Path, lift: float, verdict: str, champion_after: str
) -> None:
    settings = Settings(home=tmp_path, serving={"ray_ports": {"dashboard": free_port()}})  # no Ray: nothing to follow
    s = wiring.serving_control(settings)
    champion, challenger = register_untrained(s.registry, 1), register_untrained(s.registry, 2)
    s.registry.promote(champion)
    s.registry.set_challenger(challenger)
    experiment = control.align_experiment(s)
    assert experiment is not None and experiment.rule == settings.ab.to_dict()
    write_test_traffic(s, experiment, lift)
    looked = control.decide(s, apply=False)
    assert looked.verdict == verdict and looked.action == "none" and s.registry.alias(CHALLENGER) == challenger
    outcome = control.decide(s, apply=True)
    assert outcome.verdict == verdict and outcome.experiment is None  # no challenger left: no test runs
    assert s.registry.alias(CHAMPION) == (challenger if champion_after == "challenger" else champion)
    assert s.registry.alias(CHALLENGER) is None
    closed = s.experiments.get(experiment.id)
    assert closed.outcome == verdict and not closed.running
    with pytest.raises(ServingError, match="no A/B test is running"):
        control.decide(s, apply=True)


@pytest.mark.unit
def test_a_failed_load_keeps_the_old_version_serving() -> None:
    tagger = build_tagger(TaggerSpec("resnet18", ("a", "b"), Preprocessing(image_size=32, resize=36)))

    def load(version: int) -> Predictor:
        if version == 2:
            raise OSError("registry unreachable")
        return Predictor(tagger)

    arm = ArmModel(load)
    assert arm.use(1)
    assert not arm.use(2) and arm.version == 1 and "registry unreachable" in (arm.load_error or "")
    assert arm.predict([png((5, 5, 5))])[0].model_version == 1


@pytest.mark.unit
def test_a_new_version_is_warmed_on_every_batch_size_and_one_that_cannot_predict_is_not_swapped_in() -> None:
    tagger = build_tagger(TaggerSpec("resnet18", ("a", "b"), Preprocessing(image_size=32, resize=36)))
    seen: list[int] = []

    class Counting(Predictor):
        def predict_base(self, base, posts=None, side=None):
            seen.append(len(base))
            return super().predict_base(base, posts, side)

    class Broken(Predictor):
        def predict_base(self, base, posts=None, side=None):
            raise RuntimeError("weights do not fit the architecture")

    arm = ArmModel(lambda v: Counting(tagger) if v == 1 else Broken(tagger))
    assert arm.use(1, warm_up=4) and seen == [1, 2, 3, 4]
    assert not arm.use(2, warm_up=4) and arm.version == 1
    assert "RuntimeError: weights do not fit" in (arm.load_error or "")
    assert arm.predict([png((5, 5, 5))])[0].model_version == 1 and seen[-1] == 1


@pytest.mark.unit
def test_an_arm_on_the_wrong_version_or_failing_is_kept_out_of_the_test(tmp_path: Path, model: ArmModel) -> None:
    router = make_router(tmp_path, model)  # the arms serve version 1
    router.configure(Traffic(split=0.0, salt="s", experiment="e2", champion_version=2, challenger_version=None))
    body = run(router.predict(png((3, 3, 3)), "someone"))
    assert body["model_version"] == 1 and body["experiment"] is None  # still loading v2: not an exposure of e2

    async def down(upload: bytes, context: dict):
        raise ConnectionError("replica died")

    router.arms[CHAMPION] = down
    with pytest.raises(Refused) as err:
        run(router.predict(png((3, 3, 3)), "someone"))
    assert err.value.status == 503 and "unavailable" in err.value.message
    router.close()


class FakeArm:
    """An arm that answers as ``version``, fails with ``error``, or never answers (``hang``); counts its calls."""

    def __init__(self, version: int, error: Exception | None = None, hang: bool = False):
        self.version, self.error, self.hang, self.calls = version, error, hang, 0

    async def __call__(self, upload: bytes, context: dict) -> Tagged:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.error is not None:
            raise self.error
        return Tagged(self.version, ["food", "pets"], [0.7, 0.3], np.array([0.7, 0.3]), np.zeros(4))


def fake_router(tmp_path: Path, champion: FakeArm, challenger: FakeArm, challenger_version: int | None = 2) -> Router:
    predictions = PredictionLog(tmp_path / "predictions")
    traffic = Traffic(split=0.5, salt="s", experiment="e1", champion_version=1, challenger_version=challenger_version)
    return Router(
        {CHAMPION: champion, CHALLENGER: challenger},
        EventWriter(predictions, "r", flush_every_s=0.05),
        EventWriter(FeedbackLog(tmp_path / "feedback"), "r", flush_every_s=0.05),
        RequestBook(predictions),
        traffic,
        arm_timeout_s=0.2,
        retry_after_s=7,
        pseudonyms=PSEUDONYMS,
    )


def users_of(arm: str, n: int) -> list[str]:
    """``n`` users the test's salt and split assign to ``arm``."""
    return [u for u in USERS if assign_arm(PSEUDONYMS.of(u), "s", 0.5) == arm][:n]


@pytest.mark.parametrize("failure", ["error", "timeout", "not_loaded"])
@pytest.mark.unit
def test_the_other_arm_answers_when_the_users_arm_fails_and_is_kept_out_of_the_test(
    tmp_path: Path, failure: str
) -> None:
    broken = {
        "error": FakeArm(1, error=ConnectionError("node gone")),
        "timeout": FakeArm(1, hang=True),
        "not_loaded": FakeArm(1, error=ModelNotLoaded("loading")),
    }[failure]
    router = fake_router(tmp_path, champion=broken, challenger=FakeArm(2))
    started = time.perf_counter()
    bodies = [run(router.predict(png((9, 9, 9)), user)) for user in users_of(CHAMPION, 3) + users_of(CHALLENGER, 2)]
    elapsed = time.perf_counter() - started
    # the champion's users: the challenger answered, flagged, outside the experiment; the challenger's own: as usual
    assert [(b["arm"], b["model_version"], b["fallback"], b["experiment"]) for b in bodies] == [
        (CHALLENGER, 2, True, None)
    ] * 3 + [(CHALLENGER, 2, False, "e1")] * 2
    assert router.outcomes == {"served": 2, "fallback": 3, "unavailable": 0}
    assert broken.calls == 3
    if failure == "timeout":  # each fallback waited one arm timeout (0.2 s), not longer
        assert 0.6 <= elapsed < 0.6 + 1.0
    assert router.close() == 0
    logged = PredictionLog(tmp_path / "predictions").read().to_pandas()
    assert sorted(zip(logged["arm"], logged["experiment"].fillna("-"), strict=True)) == sorted(
        [(CHALLENGER, "-")] * 3 + [(CHALLENGER, "e1")] * 2
    )  # a fallback is logged with the arm that answered and no experiment: the report never counts it


@pytest.mark.unit
def test_when_no_arm_answers_the_router_says_503_with_retry_after_and_counts_it(tmp_path: Path) -> None:
    champion, challenger = FakeArm(1, error=ConnectionError("replica died")), FakeArm(2, hang=True)
    router = fake_router(tmp_path, champion, challenger)
    user = users_of(CHALLENGER, 1)[0]
    with pytest.raises(Refused) as err:
        run(router.predict(png((9, 9, 9)), user))
    assert (err.value.status, err.value.retry_after) == (503, 7)
    assert "challenger: no answer in 0.2 s; champion: ConnectionError" in err.value.message
    assert router.outcomes == {"served": 0, "fallback": 0, "unavailable": 1}

    # with no test running, the champion's users never reach the challenger (it serves no version)
    alone = fake_router(tmp_path / "alone", FakeArm(1, error=ConnectionError("gone")), FakeArm(2), None)
    with pytest.raises(Refused) as err:
        run(alone.predict(png((9, 9, 9)), user))
    assert err.value.status == 503 and alone.arms[CHALLENGER].calls == 0  # type: ignore[attr-defined]

    api = build_api(router, {}, dict)

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as client:
            return await client.post("/predict", params={"user_id": user}, content=png((9, 9, 9)))

    response = run(post())
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert "unavailable" in response.json()["detail"] and router.outcomes["unavailable"] == 2
    router.close()
    alone.close()


@pytest.mark.integration
def test_repeated_feedback_on_one_request_counts_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, serving={"ray_ports": {"dashboard": free_port()}})
    s = wiring.serving_control(settings)
    s.registry.promote(register_untrained(s.registry, 1))
    s.registry.set_challenger(register_untrained(s.registry, 2))
    experiment = control.align_experiment(s)
    write_test_traffic(s, experiment, 0.3, users=200)
    before = control.report(s)["arms"]
    assert before[CHAMPION]["engagements"] > 0 and before[CHALLENGER]["engagements"] > 0
    clicks = s.feedback.read(where=pc.field("event") == "click")
    s.feedback.write(clicks, "retried")  # every click sent a second time (a client retry)
    after = control.report(s)["arms"]
    assert after == before


@pytest.mark.parametrize("taken", ["gcs", "dashboard", "agent", "client", "serve"])
@pytest.mark.unit
def test_a_taken_port_stops_the_local_ray_head_before_it_starts(tmp_path: Path, taken: str) -> None:
    """Another home's head or app on one of our ports: the setting to change is named, and nothing starts."""
    ports = {name: free_port() for name in ("gcs", "dashboard", "agent", "client", "serve")}
    ray = LocalRay(tmp_path / "ray", RayPorts(**{k: v for k, v in ports.items() if k != "serve"}))
    setting = "serving.port" if taken == "serve" else f"serving.ray_ports.{taken}"
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", ports[taken]))  # a listener on every address holds 127.0.0.1's port too
        holder.listen()
        with pytest.raises(RayError, match=rf"port taken on 127\.0\.0\.1.*: {re.escape(setting)} = {ports[taken]};"):
            ray.up(serve_port=ports["serve"])
    assert not (tmp_path / "ray").exists()  # no `ray start` ran: no log, no record
    assert not ray.running()


@pytest.mark.unit
def test_custom_resources_from_settings_reach_each_replicas_actor_options(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        serving={
            "champion": {"resources": {"arm_node": 1}},
            "challenger": {"resources": {"arm_node": 1}, "num_gpus": 0.5},
            "router": {"resources": {"router_node": 0.01}},
            "arm_timeout_s": 3,
            "retry_after_s": 2,
        },
    )
    sv = settings.serving
    config = serve_config(
        {"arm_timeout_s": sv.arm_timeout_s}, {CHAMPION: 1, CHALLENGER: 2}, Traffic(), {CHAMPION: sv.champion,
        CHALLENGER: sv.challenger}, sv.router)  # fmt: skip
    options = {d["name"]: d["ray_actor_options"] for d in config["applications"][0]["deployments"]}
    assert options == {
        "router": {"num_cpus": 0.25, "resources": {"router_node": 0.01}},
        CHAMPION: {"num_cpus": 0.5, "num_gpus": 0.0, "resources": {"arm_node": 1.0}},
        CHALLENGER: {"num_cpus": 0.5, "num_gpus": 0.5, "resources": {"arm_node": 1.0}},
    }
    plain = serve_config({}, {CHAMPION: 1, CHALLENGER: None}, Traffic(), {CHAMPION: Settings().serving.champion,
                         CHALLENGER: Settings().serving.challenger})  # fmt: skip
    assert all("resources" not in d["ray_actor_options"] for d in plain["applications"][0]["deployments"])


@pytest.mark.unit
def test_an_arm_asked_for_an_alias_serves_the_version_it_names_when_it_loads() -> None:
    tagger = build_tagger(TaggerSpec("resnet18", ("a", "b"), Preprocessing(image_size=32, resize=36)))
    aliases: dict[str, int | None] = {"champion": None}
    loaded: list[int] = []
    arm = ArmModel(lambda v: loaded.append(v) or Predictor(tagger), alias_of=aliases.get)
    assert not arm.use("@champion") and arm.version is None and arm.load_error is None  # a fresh cluster: nothing
    aliases["champion"] = 4
    assert arm.use("@champion") and arm.version == 4 and loaded == [4]
    assert arm.predict([png((5, 5, 5))])[0].model_version == 4  # records carry the number, never the alias
    assert not arm.use("@champion") and loaded == [4]  # same version: nothing reloads
    plain = ArmModel(lambda v: Predictor(tagger))  # folders of versions: no aliases to resolve
    assert not plain.use("@champion") and "resolves no aliases" in (plain.load_error or "")
