"""Ray Serve for real: a local Ray head, the app deployed through Ray's REST API, requests over HTTP.

One deployment serves the whole module (it takes about a minute on two cores); the
tests run in order, the promotion last, since it moves the registry's aliases.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow.compute as pc
import pytest
from PIL import Image

from components.data.predlog import PredictionLog
from serving import control
from serving.control import Serving
from serving.eventlog import FeedbackLog
from serving.experiment import CHALLENGER, CHAMPION, assign_arm
from serving.traffic import Audience, drive, plain_posts
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


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Serving, str]]:
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
        ab={"min_users_per_arm": 20},
    )
    s = wiring.serving_control(settings)
    champion = register_untrained(s.registry, seed=1)
    s.registry.promote(champion)
    s.registry.set_challenger(register_untrained(s.registry, seed=2))
    ray = wiring.local_ray(settings)
    ray.up()
    try:
        control.up(s, timeout=600)
        yield settings, s, settings.serving.url
    finally:
        try:
            if s.admin.reachable():
                s.admin.shutdown()
                s.admin.wait_gone()
        finally:
            ray.down()


def run(coro):
    """Run a coroutine to the end in its own thread (Playwright's sync API holds this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def test_each_user_keeps_one_arm_and_the_split_holds(served: tuple[Settings, Serving, str]) -> None:
    _, s, url = served
    experiment = s.experiments.current()
    assert experiment is not None and experiment.split == 0.5
    stats = run(drive(url, POSTS, Audience(viewers=300, seed=1), requests=600, concurrency=8, keep_responses=True))
    assert stats.failed == {} and stats.ok == 600
    arms: dict[str, set[str]] = {}
    for body in stats.responses:
        arms.setdefault(body["user_id"], set()).add(body["arm"])
        assert body["arm"] == assign_arm(body["user_id"], experiment.salt, 0.5)  # the salted hash decides
        want = experiment.champion_version if body["arm"] == CHAMPION else experiment.challenger_version
        assert body["model_version"] == want and body["experiment"] == experiment.id
        assert len(body["tags"]) == 3 and body["tags"][0]["label"] == body["label"]
    assert all(len(seen) == 1 for seen in arms.values())  # sticky
    share = sum(1 for seen in arms.values() if CHALLENGER in seen) / len(arms)
    n = len(arms)
    assert abs(share - 0.5) < 3 * (0.25 / n) ** 0.5  # within 3 standard errors of the configured split


def test_bad_requests_get_a_clear_4xx_and_serving_goes_on(served: tuple[Settings, Serving, str]) -> None:
    _, _, url = served
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
        assert ready["ready"] and ready["models"] == {
            CHAMPION: ready["traffic"]["champion_version"],
            CHALLENGER: ready["traffic"]["challenger_version"],
        }
        spec = client.get("/openapi.json").json()
        assert {"/predict", "/feedback", "/ab", "/ab/report.json", "/healthz", "/readyz"} <= set(spec["paths"])
        body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
        assert "application/octet-stream" in body


def test_every_record_survives_a_clean_restart(served: tuple[Settings, Serving, str]) -> None:
    settings, s, url = served
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


def test_report_and_dashboard_in_a_real_browser(served: tuple[Settings, Serving, str], browser) -> None:
    _, s, url = served
    run(drive(url, POSTS, Audience(viewers=120, base_rate=0.2, seed=3), requests=300, concurrency=8, seed=9))
    time.sleep(0.5)  # one flush interval
    found = control.report(s)
    arms = found["arms"]
    assert arms[CHAMPION]["users"] + arms[CHALLENGER]["users"] >= 100
    assert found["srm"]["ok"] and found["decision"]["verdict"] in ("continue", "insufficient", "promote", "rollback")
    assert sum(r["exposures"] for r in found["timeline"]) == arms[CHAMPION]["exposures"] + arms[CHALLENGER]["exposures"]

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(f"{url}/ab")
    page.wait_for_selector("body:not([data-renders='0'])", timeout=30_000)  # the page fetched and drew the report
    assert page.text_content("#headline").strip() == found["decision"]["headline"]
    shown = page.text_content("#arms")
    assert f"{arms[CHAMPION]['exposures']:,}" in shown and f"{arms[CHALLENGER]['exposures']:,}" in shown
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-live.png"), full_page=True)
    assert errors == []
    page.close()


def test_live_split_change_and_promotion_drop_no_request(served: tuple[Settings, Serving, str]) -> None:
    _, s, url = served
    before = s.experiments.current()
    assert before is not None
    challenger = before.challenger_version
    outcome: dict[str, object] = {}

    def operate() -> None:
        time.sleep(2.0)
        outcome["split"] = control.follow(s, split=0.2, note="ramp down")
        time.sleep(2.0)
        s.registry.promote(challenger)
        s.experiments.finish(outcome["split"].id, "promote", "test")  # type: ignore[union-attr]
        outcome["promoted"] = control.follow(s)
        outcome["at"] = time.perf_counter()

    worker = threading.Thread(target=operate)
    worker.start()
    stats = run(drive(url, POSTS, Audience(viewers=200, seed=4), requests=900, concurrency=16, seed=11,
                      keep_responses=True))  # fmt: skip
    worker.join()
    assert stats.failed == {}, stats.failed  # zero failed requests through both changes
    assert outcome["split"].salt == before.salt and outcome["split"].split == 0.2  # type: ignore[union-attr]
    assert outcome["promoted"] is None  # no challenger left: no test runs
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as client:
        after = [
            client.post("/predict", params={"user_id": f"late-{i}"}, content=IMAGES[i % 8]).json() for i in range(20)
        ]
    assert {(b["arm"], b["model_version"]) for b in after} == {(CHAMPION, challenger)}
