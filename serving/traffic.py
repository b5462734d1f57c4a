"""Simulated users for the serving app: requests with images, feedback drawn from each user's taste.

Each user has an engagement propensity (log-normal around ``base_rate``: some users
click a lot, most rarely, which is what makes CUPED's pre-period covariate useful);
the challenger multiplies it by ``1 + lift``. A served prediction is an impression,
then a click or like with the user's (arm-adjusted) propensity, and a report with
``report_rate``. The demo, the tests and the benchmark drive the app with it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from serving.experiment import CHALLENGER


@dataclass(frozen=True)
class Audience:
    users: int = 2000
    base_rate: float = 0.08  # median engagements per exposure
    spread: float = 0.6  # sd of log-propensity across users
    lift: float = 0.0  # the challenger's true relative lift on engagement
    report_rate: float = 0.001  # reports per exposure, both arms
    seed: int = 0

    def user_ids(self) -> list[str]:
        return [f"user-{i:05d}" for i in range(self.users)]

    def propensities(self) -> np.ndarray:
        """(users,) engagement probability per exposure on the champion."""
        rng = np.random.default_rng(self.seed)
        return np.clip(self.base_rate * np.exp(rng.normal(0, self.spread, self.users)), 0, 0.9)


@dataclass
class DriveStats:
    sent: int = 0
    ok: int = 0
    failed: dict[int, int] = field(default_factory=dict)  # HTTP status (0: no response) -> count
    latencies_ms: list[float] = field(default_factory=list)
    arms: dict[str, int] = field(default_factory=dict)
    feedback: int = 0
    seconds: float = 0.0
    responses: list[dict] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


async def drive(
    url: str,
    images: Sequence[bytes],
    audience: Audience,
    requests: int,
    concurrency: int = 8,
    feedback: bool = True,
    seed: int = 0,
    timeout: float = 60.0,
    keep_responses: bool = False,
) -> DriveStats:
    """Send ``requests`` predictions from random users of ``audience`` (``concurrency`` at a time) with feedback."""
    rng = np.random.default_rng(seed)
    users, taste = audience.user_ids(), audience.propensities()
    who = rng.integers(0, audience.users, requests)
    stats = DriveStats()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            u = int(who[i])
            start = time.perf_counter()
            stats.sent += 1
            try:
                response = await client.post(
                    f"{url}/predict", params={"user_id": users[u]}, content=images[i % len(images)]
                )
            except httpx.HTTPError:
                stats.failed[0] = stats.failed.get(0, 0) + 1
                continue
            if response.status_code != 200:
                stats.failed[response.status_code] = stats.failed.get(response.status_code, 0) + 1
                continue
            stats.latencies_ms.append(1000 * (time.perf_counter() - start))
            stats.ok += 1
            body = response.json()
            stats.arms[body["arm"]] = stats.arms.get(body["arm"], 0) + 1
            if keep_responses:
                stats.responses.append(body)
            if feedback:
                for event in events_for(body["arm"], taste[u], audience, rng):
                    sent = await client.post(f"{url}/feedback", json={"request_id": body["request_id"], "event": event})
                    if sent.status_code == 200:
                        stats.feedback += 1
                    else:
                        stats.failed[sent.status_code] = stats.failed.get(sent.status_code, 0) + 1

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    stats.seconds = time.perf_counter() - start
    return stats


def events_for(arm: str, propensity: float, audience: Audience, rng: np.random.Generator) -> list[str]:
    """The feedback one served prediction gets: always an impression, maybe a click or like, rarely a report."""
    rate = min(propensity * (1 + audience.lift if arm == CHALLENGER else 1.0), 0.95)
    events = ["impression"]
    if rng.random() < rate:
        events.append("click" if rng.random() < 0.7 else "like")
    if rng.random() < audience.report_rate:
        events.append("report")
    return events
