"""Ray Serve for real: a local Ray head, the app deployed through Ray's REST API, requests over HTTP.

One deployment serves the whole module (it takes about a minute on two cores). Each test
starts from the same place whatever ran before it (the ``ab`` fixture): the module's
champion and challenger in the registry, a new experiment at a 50/50 split, the app
serving it. A test may promote, change the split or restart serving; the next one gets
its own experiment back, so its report holds its own traffic alone.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pytest
from PIL import Image

from components.data.predlog import PredictionLog
from serving import control
from serving.control import Serving
from serving.deploy import APP
from serving.eventlog import FeedbackLog
from serving.experiment import CHALLENGER, CHAMPION, Experiment, assign_arm
from serving.traffic import Audience, DriveStats, drive, plain_posts
from tests.conftest import free_port
from tests.models import register_untrained
from trendloop import wiring
from trendloop.settings import Settings

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def png(color: tuple[int, int, int], size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "PNG")
    return buf.getvalue()


IMAGES = [png((30 * i % 255, 90, 200 - 20 * i)) for i in range(8)]
POSTS = plain_posts(IMAGES)  # no truth: engagement from each viewer's propensity alone, the same on both arms
SALT = "test-serving"  # every test's experiment assigns users alike: the same viewers land on the same arms


@dataclass(frozen=True)
class Served:
    settings: Settings
    s: Serving
    url: str
    champion: int  # the versions the module registered; each test starts with them in place
    challenger: int


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serving")
    settings = Settings(
        home=root / "home",
        serving={
            "port": free_port(),
            "ray_ports": {"gcs": free_port(), "dashboard": free_port(), "agent": free_port(), "client": free_port()},
            "ray_cpus": 2,
            "flush_every_s": 0.2,
            "split": 0.5,
            "max_upload_bytes": 200_000,
        },
    )  # the default rule: 500 users per arm before any verdict, more than any test here sends
    s = wiring.serving_control(settings)
    champion = register_untrained(s.registry, seed=1)
    s.registry.promote(champion)
    challenger = register_untrained(s.registry, seed=2)
    s.registry.set_challenger(challenger)
    ray = wiring.local_ray(settings)
    ray.up()
    try:
        control.up(s, timeout=600)
        yield Served(settings, s, settings.serving.url, champion, challenger)
    finally:
        try:
            if s.admin.reachable():
                s.admin.shutdown()
                s.admin.wait_gone()
        finally:
            ray.down()


@pytest.fixture
def ab(served: Served) -> Experiment:
    """The module's champion and challenger back in place, a new experiment at 50/50, the app serving it."""
    s = served.s
    if not s.admin.reachable():  # a test stopped serving and failed before it started it again
        control.up(s, timeout=600)
    if s.registry.alias(CHAMPION) != served.champion:  # a test promoted the challenger
        s.registry.promote(served.champion)
    s.registry.set_challenger(served.challenger)
    experiment = s.experiments.start(served.champion, served.challenger, 0.5, s.rule.to_dict(), salt=SALT)
    assert control.follow(s) == experiment  # the aliases and the split match it: serving takes it as it is
    return experiment


def run(coro):
    """Run a coroutine to the end in its own thread (Playwright's sync API holds this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def wait_for_logs(settings: Settings, stats: DriveStats, timeout: float = 30.0) -> None:
    """Until the app's writers have flushed every answered request of ``stats`` and every feedback event it sent."""
    ids = [body["request_id"] for body in stats.responses]
    where = pc.field("request_id").isin(ids)
    deadline = time.monotonic() + timeout
    while True:
        predictions = len(PredictionLog(settings.predictions_dir).read(where=where))
        feedback = len(FeedbackLog(settings.serving_dir / "feedback").read(where=where))
        if (predictions, feedback) == (len(ids), stats.feedback):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"after {timeout:.0f} s the logs hold {predictions} of {len(ids)} predictions and {feedback} of "
                f"{stats.feedback} feedback events (the app flushes every {settings.serving.flush_every_s} s)"
            )
        time.sleep(settings.serving.flush_every_s / 4)


def test_each_user_keeps_one_arm_and_the_split_holds(served: Served, ab: Experiment) -> None:
    url, experiment = served.url, ab
    stats = run(drive(url, POSTS, Audience(viewers=300, seed=1), requests=600, concurrency=8, keep_responses=True))
    assert stats.failed == {} and stats.ok == 600
    arms: dict[str, set[str]] = {}
    pseudonyms = wiring.pseudonyms(served.settings)  # the app's key: the arm is the pseudonym's
    for body in stats.responses:
        arms.setdefault(body["user_id"], set()).add(body["arm"])
        assert body["arm"] == assign_arm(pseudonyms.of(body["user_id"]), experiment.salt, 0.5)  # the salted hash
        want = experiment.champion_version if body["arm"] == CHAMPION else experiment.challenger_version
        assert body["model_version"] == want and body["experiment"] == experiment.id
        assert len(body["tags"]) == 3 and body["tags"][0]["label"] == body["label"]
    assert all(len(seen) == 1 for seen in arms.values())  # sticky
    share = sum(1 for seen in arms.values() if CHALLENGER in seen) / len(arms)
    n = len(arms)
    assert abs(share - 0.5) < 3 * (0.25 / n) ** 0.5  # within 3 standard errors of the configured split


def test_bad_requests_get_a_clear_4xx_and_serving_goes_on(served: Served, ab: Experiment) -> None:
    url = served.url
    truncated = IMAGES[0][: len(IMAGES[0]) // 2]
    cases = [
        ("POST", "/predict?user_id=u1", {"content": b"<html>502 Bad Gateway</html>"}, 415, "not_an_image"),
        ("POST", "/predict?user_id=u1", {"content": truncated}, 422, "truncated"),
        ("POST", "/predict?user_id=u1", {"content": b""}, 400, "empty"),
        ("POST", "/predict?user_id=u1", {"content": b"\x89PNG" + b"0" * 300_000}, 413, "limit"),
        ("POST", "/predict", {"content": IMAGES[0]}, 422, "user_id"),
        ("POST", "/predict?user_id=%20", {"content": IMAGES[0]}, 422, "user_id"),
        ("POST", "/feedback", {"json": {"request_id": "no-such-request", "event": "click"}}, 404, "no-such-request"),
        ("POST", "/feedback", {"json": {"request_id": "x", "event": "purchase"}}, 422, "event"),
        ("POST", "/feedback", {"json": {"event": "click"}}, 422, "request_id"),
        ("POST", "/feedback", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, ""),
        ("GET", "/nowhere", {}, 404, ""),
    ]
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        for method, path, kwargs, status, needle in cases:
            response = client.request(method, path, **kwargs)
            assert response.status_code == status, (path, response.text)
            assert needle in json.dumps(response.json()["detail"]), (path, response.text)
        ok = client.post("/predict", params={"user_id": "u1"}, content=IMAGES[1])
        assert ok.status_code == 200
        assert (
            client.post("/feedback", json={"request_id": ok.json()["request_id"], "event": "like"}).status_code == 200
        )
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["models"] == {CHAMPION: served.champion, CHALLENGER: served.challenger}
        assert (ready["traffic"]["champion_version"], ready["traffic"]["challenger_version"]) == (
            ab.champion_version,
            ab.challenger_version,
        )
        spec = client.get("/openapi.json").json()
        assert {"/predict", "/feedback", "/ab", "/ab/report.json", "/healthz", "/readyz"} <= set(spec["paths"])
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
        assert "application/octet-stream" in body


def test_every_record_survives_a_clean_restart(served: Served, ab: Experiment) -> None:
    settings, s, url = served.settings, served.s, served.url
    stats = run(drive(url, POSTS, Audience(viewers=50, base_rate=0.3, seed=2), requests=120, concurrency=4, seed=5,
                      keep_responses=True))  # fmt: skip
    assert stats.failed == {}
    ids = [body["request_id"] for body in stats.responses]
    s.admin.shutdown()  # no waiting for a flush: shutting down must write what is queued
    s.admin.wait_gone()
    logged = PredictionLog(settings.predictions_dir).read(where=pc.field("request_id").isin(ids))
    assert sorted(logged.column("request_id").to_pylist()) == sorted(ids)
    assert len(logged.column("embedding")[0]) > 0 and logged.column("latency_ms").null_count == 0
    feedback = FeedbackLog(settings.serving_dir / "feedback").read(where=pc.field("request_id").isin(ids))
    assert len(feedback) == stats.feedback and feedback.column("arm").null_count == 0

    control.up(s, timeout=600)
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        late = client.post("/feedback", json={"request_id": ids[0], "event": "report"})  # known only from the log
        assert late.status_code == 200 and late.json()["arm"] == stats.responses[0]["arm"]


def test_report_and_dashboard_in_a_real_browser(served: Served, ab: Experiment, browser) -> None:
    s, url = served.s, served.url
    stats = run(drive(url, POSTS, Audience(viewers=120, base_rate=0.2, seed=3), requests=300, concurrency=8, seed=9,
                      keep_responses=True))  # fmt: skip
    assert stats.failed == {}
    wait_for_logs(served.settings, stats)
    found = control.report(s)
    arms = found["arms"]
    # the report holds this test's traffic, as the viewers sent it
    assert found["experiment"]["id"] == ab.id
    for arm in (CHAMPION, CHALLENGER):
        users = {body["user_id"] for body in stats.responses if body["arm"] == arm}
        assert (arms[arm]["users"], arms[arm]["exposures"]) == (len(users), stats.arms[arm]), arm
        assert arms[arm]["engagements"] == stats.engagements.get(arm, 0), arm
    assert sum(r["exposures"] for r in found["timeline"]) == stats.ok
    # about 55 users per arm, far below the rule's 500: no verdict can be reached yet, whatever the numbers say
    assert found["srm"]["ok"] and found["decision"]["verdict"] == "insufficient"

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{url}/ab")
    page.wait_for_selector("body:not([data-renders='0'])", timeout=30_000)  # the page fetched and drew the report
    # what the page shows is what the report says
    assert page.get_attribute("#verdict", "data-verdict") == found["decision"]["verdict"]
    assert page.text_content("#headline").strip() == found["decision"]["headline"]
    assert page.locator("#reasons li").all_inner_texts() == found["decision"]["reasons"]
    assert page.text_content("#experiment-id").strip() == ab.id
    assert page.text_content("#champion-version").strip() == f"v{served.champion}"
    assert page.text_content("#challenger-version").strip() == f"v{served.challenger}"
    assert page.text_content("#split").strip() == "50% champion / 50% challenger"
    for arm in (CHAMPION, CHALLENGER):
        for metric in ("users", "exposures", "engagements"):
            cell = page.text_content(f"#arms td[data-arm='{arm}'][data-metric='{metric}']").strip()
            assert cell == f"{arms[arm][metric]:,}", (arm, metric)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
    assert errors == []
    page.close()


def test_live_split_change_and_promotion_drop_no_request(served: Served, ab: Experiment) -> None:
    s, url = served.s, served.url
    requests = 900
    progressed, reached, finished = threading.Condition(), 0, False  # requests the viewers got done; all of them

    def progress(stats: DriveStats) -> None:
        nonlocal reached
        with progressed:
            reached = stats.done
            progressed.notify_all()

    def wait_for(n: int) -> None:
        with progressed:
            progressed.wait_for(lambda: reached >= n or finished, timeout=300)
        assert reached >= n, f"the viewers got {reached} of {requests} requests done (finished: {finished}), not {n}"

    def operate() -> tuple[Experiment, Experiment | None]:
        """Ramp the challenger down to 20%, then promote it, each with requests coming before and after."""
        wait_for(300)
        ramped = control.follow(s, split=0.2, note="ramp down")
        assert ramped is not None
        wait_for(reached + 150)  # 150 requests under the ramped split
        s.registry.promote(served.challenger)
        s.experiments.finish(ramped.id, "promote", "test")
        return ramped, control.follow(s)

    with ThreadPoolExecutor(1) as operator:
        operated = operator.submit(operate)
        try:
            stats = run(drive(url, POSTS, Audience(viewers=200, seed=4), requests=requests, concurrency=16, seed=11,
                              keep_responses=True, progress=progress))  # fmt: skip
        finally:
            with progressed:  # an operator still waiting learns that no more requests will come
                finished = True
                progressed.notify_all()
        ramped, promoted = operated.result()
    assert stats.failed == {}, stats.failed  # zero failed requests through both changes
    assert ramped.salt == ab.salt and ramped.split == 0.2
    assert promoted is None  # no challenger left: no test runs
    # both changes took effect while the traffic flowed: the first experiment, the ramped one, then the champion
    # alone (no experiment), now serving the promoted version
    assert {body["experiment"] for body in stats.responses} == {ab.id, ramped.id, None}
    served_by = {(body["arm"], body["model_version"]) for body in stats.responses}
    assert served_by == {(CHAMPION, served.champion), (CHALLENGER, served.challenger), (CHAMPION, served.challenger)}
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        after = [
            client.post("/predict", params={"user_id": f"late-{i}"}, content=IMAGES[i % 8]).json() for i in range(20)
        ]
    assert {(b["arm"], b["model_version"]) for b in after} == {(CHAMPION, served.challenger)}


def replica_pids(s: Serving, deployment: str) -> set[int]:
    """The pids of ``deployment``'s running replicas, as Ray Serve's REST API lists them."""
    found = s.admin.applications()[APP]["deployments"][deployment]["replicas"]
    return {r["pid"] for r in found if r.get("state") == "RUNNING" and r.get("pid")}


def wait_replaced(s: Serving, deployment: str, old: set[int], timeout: float = 300.0) -> set[int]:
    """Until Serve runs ``deployment`` on replicas none of which is in ``old`` and the app is healthy again."""
    deadline = time.monotonic() + timeout
    while True:
        pids = replica_pids(s, deployment)
        if pids and not pids & old:
            s.admin.wait_running(timeout=max(1.0, deadline - time.monotonic()))
            return pids
        assert time.monotonic() < deadline, f"{deployment} has not come back after {timeout:.0f} s: {pids}"
        time.sleep(0.5)


class Crash:
    """Kills a replica's process (SIGKILL: no shutdown hook runs) once the traffic has done ``at`` requests.

    Its ``progress`` is ``drive``'s callback: it runs in the driving loop while the other workers have requests
    in flight, so the kill lands mid-traffic. It notes when each request was done (its answer came no later),
    to tell which answers the crash could have cost their log record (those within the writer's last flush).
    """

    def __init__(self, pid: int, at: int):
        self.pid, self.at = pid, at
        self.killed_at: float | None = None
        self.answered_at: dict[str, float] = {}

    def progress(self, stats: DriveStats) -> None:
        now = time.monotonic()
        for body in stats.responses[len(self.answered_at) :]:
            self.answered_at[body["request_id"]] = now
        if self.killed_at is None and stats.done >= self.at:
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = now


def test_an_arm_replica_killed_during_traffic_costs_no_request(served: Served, ab: Experiment) -> None:
    """The challenger's replica dies mid-traffic: its users are answered by the champion until Serve has
    started a new one, none gets an error, and every answer is logged."""
    s, url = served.s, served.url
    (pid,) = replica_pids(s, CHALLENGER)
    crash = Crash(pid, at=150)
    stats = run(drive(url, POSTS, Audience(viewers=200, seed=6), requests=600, concurrency=16, seed=13,
                      keep_responses=True, progress=crash.progress))  # fmt: skip
    assert crash.killed_at is not None and stats.failed == {}, stats.failed  # 600 of 600 answered
    fallbacks = [body for body in stats.responses if body["fallback"]]
    # the requests in flight on the challenger when it died were answered by the champion, outside the test
    assert fallbacks and {(b["arm"], b["model_version"], b["experiment"]) for b in fallbacks} == {
        (CHAMPION, served.champion, None)
    }
    new = wait_replaced(s, CHALLENGER, {pid})
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        ready = client.get("/readyz").json()
        assert ready["models"] == {CHAMPION: served.champion, CHALLENGER: served.challenger}
        assert ready["outcomes"]["fallback"] >= len(fallbacks) and ready["outcomes"]["unavailable"] == 0
        users = {b["user_id"] for b in stats.responses if b["fallback"]}
        after = [client.post("/predict", params={"user_id": u}, content=IMAGES[0]).json() for u in sorted(users)]
    # the same users are the challenger's again, on the new replica, inside the test
    assert {(b["arm"], b["experiment"], b["fallback"]) for b in after} == {(CHALLENGER, ab.id, False)}
    wait_for_logs(served.settings, stats)  # every answer is in the prediction log, every feedback event too
    print(f"arm crash: 600 requests, 0 failed, {len(fallbacks)} answered by the champion, new replica {new}")


def test_the_router_killed_during_traffic_comes_back_and_loses_only_its_last_flush(
    served: Served, ab: Experiment
) -> None:
    """The router's replica dies mid-traffic (SIGKILL): Serve starts a new one; what fails are the requests
    that were inside the dead router, and what it had not yet written (at most one flush interval's answers)."""
    s, settings, url = served.s, served.settings, served.url
    (pid,) = replica_pids(s, "router")
    concurrency = 8
    crash = Crash(pid, at=150)
    stats = run(drive(url, POSTS, Audience(viewers=200, seed=7), requests=600, concurrency=concurrency, seed=17,
                      keep_responses=True, progress=crash.progress))  # fmt: skip
    assert crash.killed_at is not None
    status = dict(stats.failed)
    in_router, unknown = status.pop(500, 0), status.pop(404, 0)
    # only the calls in flight inside the dead router fail (one per viewer worker at most): Ray's proxy answers
    # those 500; a request that arrives while no router runs waits in the proxy until the new one takes it
    assert status == {} and 1 <= in_router <= concurrency, stats.failed
    new = wait_replaced(s, "router", {pid})
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:  # the new router writes in order:
        last = client.post("/predict", params={"user_id": "after"}, content=IMAGES[0]).json()  # once this is
    ids = [body["request_id"] for body in stats.responses]  # on disk, so is every answer it gave before
    wait_for_logs(settings, DriveStats(responses=[last]))
    logged = set(PredictionLog(settings.predictions_dir).read(where=pc.field("request_id").isin(ids))
                 .column("request_id").to_pylist())  # fmt: skip
    lost = [i for i in ids if i not in logged]
    # an answer's record waits in the router's queue for at most one flush (0.2 s): only those answered just
    # before the kill may be gone (2 s allows for a slow write on a busy machine)
    assert all(crash.answered_at[i] > crash.killed_at - 2.0 for i in lost), lost
    # feedback on such an answer is a 404 (the new router cannot know it): at most 3 events per lost answer
    assert unknown <= 3 * len(lost), (unknown, lost)
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        for request_id in lost:
            assert client.post("/feedback", json={"request_id": request_id, "event": "like"}).status_code == 404
        early = next(i for i in ids if crash.answered_at[i] < crash.killed_at - 2.0)
        late = client.post("/feedback", json={"request_id": early, "event": "like"})  # the new router reads the log
        assert late.status_code == 200, late.text
    print(f"router crash: 600 requests, {in_router} failed in the router, {len(lost)} records lost, "
          f"{unknown} feedback 404, new replica {new}")  # fmt: skip
