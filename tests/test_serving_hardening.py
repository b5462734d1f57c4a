"""Serving under abuse and faults, without Ray: the per-user rate limit, the report token, a full log disk."""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from personal import PSEUDONYMS
from PIL import Image

from components.data.predlog import PredictionLog
from serving.access import COOKIE, TokenFile, dashboard_key, is_loopback
from serving.api import build_api
from serving.eventlog import EventWriter, FeedbackLog
from serving.experiment import CHALLENGER, CHAMPION
from serving.limits import RateLimiter, rate_limiter
from serving.router import RequestBook, Router, Traffic
from serving.tagging import Tagged
from tests.browsers import missing
from trendloop import wiring
from trendloop.settings import Settings


def run(coro):
    """Run a coroutine to the end in its own thread and event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Clock:
    """A clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(buf, "PNG")
    return buf.getvalue()


async def answer(upload: bytes, context: dict) -> Tagged:
    return Tagged(1, ["food", "pets"], [0.7, 0.3], np.array([0.7, 0.3]), np.zeros(4))


def router_at(root: Path, limiter: RateLimiter | None = None, predictions: EventWriter | None = None) -> Router:
    """A router whose two arms answer at once, logging under ``root`` (predictions: where ``predictions`` writes)."""
    predictions = predictions or EventWriter(PredictionLog(root / "predictions"), "h", flush_every_s=0.05)
    return Router(
        {CHAMPION: answer, CHALLENGER: answer},
        predictions,
        EventWriter(FeedbackLog(root / "feedback"), "h", flush_every_s=0.05),
        RequestBook(predictions.log),  # type: ignore[arg-type]
        Traffic(split=0.5, salt="s", experiment="e1", champion_version=1, challenger_version=1),
        limiter=limiter,
        pseudonyms=PSEUDONYMS,
    )


@pytest.mark.unit
def test_a_bucket_lets_a_burst_through_then_one_request_per_refill() -> None:
    clock = Clock()
    bucket = RateLimiter(rate=2.0, burst=3, clock=clock)  # a token every 0.5 s, at most 3 saved up
    assert [bucket.wait("a") for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]  # refusals take no token
    assert bucket.wait("b") == 0.0  # another user has a bucket of their own
    clock.now = 0.25
    assert bucket.wait("a") == 0.25  # half a token back: a quarter second to go
    clock.now = 0.5
    assert [bucket.wait("a") for _ in range(2)] == [0.0, 0.5]
    clock.now = 100.0  # idle for long: the bucket holds the burst, not 200 tokens
    assert [bucket.wait("a") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    # then 8 requests a second for 10 s (t = 100.125 .. 110) from an empty bucket: exactly the refill, 2 a second
    allowed = 0
    for step in range(1, 81):
        clock.now = 100.0 + step / 8
        allowed += bucket.wait("a") == 0.0
    assert allowed == 20
    assert (RateLimiter.retry_after(0.25), RateLimiter.retry_after(1.0), RateLimiter.retry_after(2.01)) == (1, 1, 3)


@pytest.mark.unit
def test_the_buckets_memory_is_bounded_and_the_least_recent_user_goes_first() -> None:
    clock = Clock()
    bucket = RateLimiter(rate=1.0, burst=1, max_keys=2, clock=clock)
    assert [bucket.wait(u) for u in ("a", "b", "a")] == [0.0, 0.0, 1.0]  # a is now the most recent
    assert bucket.wait("c") == 0.0 and len(bucket) == 2  # b, the least recent, was let go
    assert (bucket.wait("a"), bucket.wait("b")) == (1.0, 0.0)  # a kept its empty bucket; b came back full
    assert len(bucket) == 2
    with pytest.raises(ValueError, match="rate > 0"):
        RateLimiter(rate=0.0, burst=1)
    assert rate_limiter(0.0, 50) is None and rate_limiter(10.0, 50).burst == 50  # type: ignore[union-attr]


@pytest.mark.unit
def test_the_rate_limit_reaches_the_app_from_the_settings_and_zero_turns_it_off(tmp_path: Path) -> None:
    args = wiring.serve_args(Settings(home=tmp_path))
    assert (args["rate_per_user_s"], args["burst"]) == (10.0, 50)
    off = wiring.serve_args(Settings(home=tmp_path, serving={"rate_per_user_s": 0}))
    assert rate_limiter(off["rate_per_user_s"], off["burst"]) is None


@pytest.mark.unit
def test_a_user_past_the_limit_gets_429_with_retry_after_others_do_not_and_readyz_counts_it(tmp_path: Path) -> None:
    clock = Clock()
    router = router_at(tmp_path, RateLimiter(rate=0.5, burst=2, clock=clock))  # a token every 2 s
    api = build_api(router, {CHAMPION: _loaded, CHALLENGER: _loaded}, dict)

    async def session() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as client:
            sent = [await client.post("/predict", params={"user_id": "busy"}, content=png()) for _ in range(4)]
            sent.append(await client.post("/predict", params={"user_id": "calm"}, content=png()))
            clock.now = 2.0
            sent.append(await client.post("/predict", params={"user_id": "busy"}, content=png()))
            sent.append(await client.get("/readyz"))
            return sent

    *predicted, ready = run(session())
    assert [r.status_code for r in predicted] == [200, 200, 429, 429, 200, 200]
    refused = predicted[2]
    assert refused.headers["retry-after"] == "2" and list(refused.json()) == ["detail"]
    assert refused.json()["detail"] == (
        "too many requests for this user (at most 0.5 a second, bursts of 2); retry in 2 s"
    )
    assert ready.json()["limited"] == 2 and ready.json()["outcomes"] == {"served": 4, "fallback": 0, "unavailable": 0}
    assert router.close() == 0
    assert len(PredictionLog(tmp_path / "predictions").read()) == 4  # a refused request is not logged


async def _loaded() -> int:
    return 1


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A real 1 MiB tmpfs, filled to its last byte by one file: (its folder, the filler). Root only (mount)."""
    if os.geteuid() != 0:
        missing("a full disk needs root (mount -t tmpfs)", os.environ, "full-disk tests")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=False, capture_output=True, text=True
    )
    if mounted.returncode != 0:
        missing(f"mount -t tmpfs failed: {mounted.stderr.strip()}", os.environ, "full-disk tests")
    try:
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        finally:
            os.close(fd)
        assert os.statvfs(disk).f_bavail == 0
        yield disk, filler
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.integration
def test_a_full_log_disk_costs_no_prediction_and_readyz_counts_what_waits_and_what_was_dropped(
    tmp_path: Path, full_disk: tuple[Path, Path]
) -> None:
    disk, filler = full_disk
    log = PredictionLog(disk / "predictions")
    # flushes only when the test says (and at close): every count below is exact
    writer = EventWriter(log, "full", flush_every_s=3600, max_queued=30)
    router = router_at(tmp_path, predictions=writer)
    api = build_api(router, {CHAMPION: _loaded, CHALLENGER: _loaded}, dict)

    async def predict(client: httpx.AsyncClient, users: range) -> list[httpx.Response]:
        return [await client.post("/predict", params={"user_id": f"u{i}"}, content=png()) for i in users]

    async def session() -> tuple[list[httpx.Response], list[dict]]:
        states = []
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as client:
            answered = await predict(client, range(20))
            assert writer.flush() == 0  # the disk is full: the 20 stay queued
            states.append((await client.get("/readyz")).json()["logs"])
            answered += await predict(client, range(20, 45))  # 45 queued in all, 30 kept: the 15 oldest go
            assert writer.flush() == 0
            states.append((await client.get("/readyz")).json()["logs"])
        return answered, states

    answered, (first, second) = run(session())
    assert [r.status_code for r in answered] == [200] * 45  # logging never cost a prediction
    no_space = "OSError: [Errno 28] No space left on device"
    assert first["predictions"]["last_error"].startswith(no_space)
    assert {k: v for k, v in first["predictions"].items() if k != "last_error"} == {
        "written": 0, "pending": 20, "dropped": 0, "failures": 1,
    }  # fmt: skip
    assert {k: v for k, v in second["predictions"].items() if k != "last_error"} == {
        "written": 0, "pending": 30, "dropped": 15, "failures": 2,
    }  # fmt: skip
    assert second["feedback"] == {"written": 0, "pending": 0, "dropped": 0, "failures": 0, "last_error": None}
    assert log.read().num_rows == 0

    filler.unlink()  # space is back: the writer catches up
    assert router.close() == 0
    assert (writer.written, writer.pending, writer.dropped) == (30, 0, 15)
    ids = [r.json()["request_id"] for r in answered]
    logged = log.read().column("request_id").to_pylist()
    assert len(logged) == 45 - 15 and sorted(logged) == sorted(ids[15:])  # the newest 30, each once


class StalledLog(PredictionLog):
    """A log whose write waits until ``fail`` is set, then fails as a full disk does."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.writing, self.fail = threading.Event(), threading.Event()

    def write(self, records, batch: str) -> int:
        self.writing.set()
        assert self.fail.wait(30)
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.unit
def test_records_that_arrive_during_a_failing_write_still_keep_the_queue_to_max_queued(tmp_path: Path) -> None:
    log = StalledLog(tmp_path / "predictions")
    writer = EventWriter(log, "stalled", flush_every_s=3600, max_queued=10)
    for i in range(10):
        writer.append({"request_id": f"r{i}"})
    with ThreadPoolExecutor(1) as pool:
        flushed = pool.submit(writer.flush)
        assert log.writing.wait(30)  # the 10 are out of the queue, in the write
        for i in range(10, 18):
            writer.append({"request_id": f"r{i}"})  # the queue is short now: nothing is dropped yet
        assert (writer.pending, writer.dropped) == (18, 0)
        assert [r["request_id"] for r in writer.pending_records()] == [f"r{i}" for i in range(18)]
        log.fail.set()
        assert flushed.result() == 0
    # the failed rows went back in front; the 8 oldest past max_queued are let go and counted
    assert (writer.pending, writer.dropped, writer.failures) == (10, 8, 1)
    assert [r["request_id"] for r in writer.pending_records()] == [f"r{i}" for i in range(8, 18)]


@pytest.mark.unit
def test_the_token_file_is_made_once_private_and_only_its_path_reaches_the_serve_config(tmp_path: Path) -> None:
    assert [is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.7", "serving.example")] == [False] * 4
    near = Settings(home=tmp_path)
    assert wiring.serve_args(near)["report_token_file"] is None and not (tmp_path / "secrets").exists()
    wide = Settings(home=tmp_path, serving={"host": "0.0.0.0"})
    path = Path(wiring.serve_args(wide)["report_token_file"])
    assert path == (tmp_path / "secrets" / "report.token").resolve()
    assert not path.exists()  # a config names it; only a deploy (serve up, the demo, serve token) makes it
    assert wiring.make_report_token(wide) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    token = path.read_text().strip()
    assert len(token) == 43  # 32 random bytes, URL-safe base64
    assert wiring.make_report_token(wide) == path and path.read_text().strip() == token  # kept, not made again
    config = wiring.serve_config_for(wide)({CHAMPION: 1, CHALLENGER: None}, Traffic())
    assert token not in json.dumps(config) and str(path) in json.dumps(config)
    elsewhere = Settings(home=tmp_path, serving={"host": "10.0.0.7", "report_token_file": str(tmp_path / "t")})
    assert wiring.serve_args(elsewhere)["report_token_file"] == str(tmp_path / "t")
    assert wiring.make_report_token(near) is None and not (tmp_path / "secrets" / "x").exists()


def guarded(tmp_path: Path, token_file: Path | None) -> httpx.AsyncClient:
    """A client of the real app over a router, its report surfaces guarded by ``token_file`` (None: open)."""
    router = router_at(tmp_path)
    report_token = TokenFile(token_file).read if token_file else None
    api = build_api(router, {CHAMPION: _loaded, CHALLENGER: _loaded}, lambda: {"arms": {}}, report_token=report_token)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t")


REPORTS = ("/ab", "/ab/static/dashboard.css", "/ab/static/dashboard.js", "/ab/report.json")


async def visit(client: httpx.AsyncClient, headers: dict | None = None) -> dict[str, httpx.Response]:
    """Every GET surface, and a prediction with its feedback (which never need the token)."""
    got = {path: await client.get(path, headers=headers) for path in (*REPORTS, "/readyz", "/healthz")}
    got["/predict"] = await client.post("/predict", params={"user_id": "u1"}, content=png())
    got["/feedback"] = await client.post("/feedback", json={"request_id": got["/predict"].json()["request_id"],
                                                            "event": "click"})  # fmt: skip
    return got


@pytest.mark.unit
def test_on_loopback_every_surface_is_open_without_a_token(tmp_path: Path) -> None:
    async def session() -> dict[str, httpx.Response]:
        async with guarded(tmp_path, None) as client:
            return await visit(client)

    got = run(session())
    assert {path: r.status_code for path, r in got.items()} == dict.fromkeys(got, 200)
    assert set(got["/readyz"].json()) == {"ready", "models", "traffic", "outcomes", "limited", "logs"}


@pytest.mark.unit
def test_beyond_loopback_the_reports_need_the_token_and_probes_predictions_and_feedback_do_not(tmp_path: Path) -> None:
    token_file = tmp_path / "report.token"
    token_file.write_text("right-token-of-enough-length\n")

    async def session() -> dict:
        seen = {}
        async with guarded(tmp_path, token_file) as client:
            seen["none"] = await visit(client)
            seen["wrong"] = await visit(client, {"Authorization": "Bearer wrong-token-of-enough-length"})
            seen["right"] = await visit(client, {"Authorization": "Bearer right-token-of-enough-length"})
            seen["wrong link"] = await client.get("/ab", params={"token": "wrong-token-of-enough-length"})
            seen["link"] = await client.get("/ab", params={"token": "right-token-of-enough-length"})
            seen["cookie"] = await visit(client)  # the client keeps the cookie, as a browser does
            token_file.write_text("a-new-token-of-enough-length\n")
            os.utime(token_file, ns=(1, 1))  # a rotation (the mtime surely differs from the first write's)
            seen["rotated"] = {path: await client.get(path) for path in REPORTS}
        return seen

    seen = run(session())
    none, wrong, right, cookie = seen["none"], seen["wrong"], seen["right"], seen["cookie"]
    assert {p: none[p].status_code for p in REPORTS} == dict.fromkeys(REPORTS, 401)
    assert none["/ab"].json() == {"detail": (
        "this needs the report token: send Authorization: Bearer <token>, or open /ab?token=<token> once in a browser"
    )}  # fmt: skip
    assert none["/ab/report.json"].headers["www-authenticate"] == 'Bearer realm="trendloop reports"'
    assert none["/readyz"].status_code == 200 and none["/readyz"].json() == {"ready": True}  # a probe's answer
    assert [none[p].status_code for p in ("/healthz", "/predict", "/feedback")] == [200, 200, 200]
    assert {p: wrong[p].status_code for p in (*REPORTS, "/readyz")} == dict.fromkeys((*REPORTS, "/readyz"), 401)
    assert wrong["/readyz"].json() == {"detail": "the report token is wrong"}
    assert [wrong[p].status_code for p in ("/healthz", "/predict", "/feedback")] == [200, 200, 200]
    assert {p: r.status_code for p, r in right.items()} == dict.fromkeys(right, 200)
    assert right["/readyz"].json()["logs"]["predictions"]["failures"] == 0 and "traffic" in right["/readyz"].json()

    assert seen["wrong link"].status_code == 401 and COOKIE not in seen["wrong link"].cookies
    link = seen["link"]
    assert (link.status_code, link.headers["location"]) == (303, "/ab")  # the token leaves the address
    set_cookie = link.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}={dashboard_key('right-token-of-enough-length')};")
    assert "right-token-of-enough-length" not in set_cookie
    assert {"HttpOnly", "Path=/ab", "SameSite=strict"} <= {part.strip() for part in set_cookie.split(";")}
    assert {p: cookie[p].status_code for p in REPORTS} == dict.fromkeys(REPORTS, 200)
    assert cookie["/ab"].text.startswith("<!DOCTYPE html>") and cookie["/ab/report.json"].json() == {"arms": {}}
    assert cookie["/readyz"].json() == {"ready": True}  # the cookie opens the dashboard's paths only
    assert {p: r.status_code for p, r in seen["rotated"].items()} == dict.fromkeys(REPORTS, 401)


@pytest.mark.unit
def test_serve_token_makes_the_file_once_and_prints_its_path_never_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner  # noqa: PLC0415

    from trendloop.cli import app  # noqa: PLC0415

    for key in [k for k in os.environ if k.startswith("TRENDLOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wide.toml").write_text(f'home = "{tmp_path / "home"}"\n[serving]\nhost = "0.0.0.0"\n')
    made = CliRunner().invoke(app, ["--config", "wide.toml", "serve", "token"])
    path = (tmp_path / "home" / "secrets" / "report.token").resolve()
    token = path.read_text().strip()
    assert made.exit_code == 0 and " ".join(made.stdout.split()) == f"the report token is in {path}"
    again = CliRunner().invoke(app, ["--config", "wide.toml", "serve", "token"])
    assert again.stdout == made.stdout and path.read_text().strip() == token and token not in made.stdout
    near = CliRunner().invoke(app, ["serve", "token"])
    assert near.exit_code == 0 and "serving.host is 127.0.0.1: the reports need no token" in near.stdout


@pytest.mark.unit
def test_the_replica_builds_its_limit_and_its_guard_from_the_apps_args(tmp_path: Path) -> None:
    from types import SimpleNamespace  # noqa: PLC0415

    from serving.app import Ingress  # noqa: PLC0415

    replica_class = Ingress.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper: a plain one
    assert replica_class.__module__ == "serving.app" and "__serve_build_asgi_app__" in vars(replica_class)
    (tmp_path / "token").write_text("replica-token-of-enough-length\n")
    handle = SimpleNamespace(version=SimpleNamespace(remote=_loaded))
    logs = {name: str(tmp_path / name) for name in ("predictions", "feedback", "experiments")}
    privacy = {"key_file": str(tmp_path / "pseudonym.key")}
    replica = replica_class(
        handle, handle, logs, rate_per_user_s=2.0, burst=3, report_token_file=str(tmp_path / "token"), privacy=privacy
    )
    assert (replica.router.limiter.rate, replica.router.limiter.burst) == (2.0, 3)
    api = replica.__serve_build_asgi_app__()

    async def ask(headers: dict) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://t") as client:
            return await client.get("/readyz", headers=headers)

    assert run(ask({})).json() == {"ready": True}
    assert run(ask({"Authorization": "Bearer replica-token-of-enough-length"})).json()["limited"] == 0
    replica.router.close()
    assert replica_class(handle, handle, logs, privacy=privacy).router.limiter is None  # no args: no limit, as before
