"""Serving under abuse and faults, without Ray: the per-user rate limit, the report token, a full log disk."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from components.data.predlog import PredictionLog
from serving.api import build_api
from serving.eventlog import EventWriter, FeedbackLog
from serving.experiment import CHALLENGER, CHAMPION
from serving.limits import RateLimiter, rate_limiter
from serving.router import RequestBook, Router, Traffic
from serving.tagging import Tagged
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


def router_at(root: Path, limiter: RateLimiter | None = None, writer: dict | None = None) -> Router:
    """A router whose two arms answer at once, logging under ``root``."""
    predictions = PredictionLog(root / "predictions")
    return Router(
        {CHAMPION: answer, CHALLENGER: answer},
        EventWriter(predictions, "h", **(writer or {"flush_every_s": 0.05})),
        EventWriter(FeedbackLog(root / "feedback"), "h", flush_every_s=0.05),
        RequestBook(predictions),
        Traffic(split=0.5, salt="s", experiment="e1", champion_version=1, challenger_version=1),
        limiter=limiter,
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
