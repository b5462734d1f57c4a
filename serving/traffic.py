"""Simulated viewers for the serving app: they send the feed's real posts and engage with what fits.

The verdict of an A/B test must be the models' doing, so nothing here knows which
arm is which: there is no lift to set. A viewer is served a post with the tags one
arm's model gave it, and engages (a click or a like) with probability

    p = min(propensity[viewer] * interest[viewer, truth] * fit, 0.95)

- ``propensity``: how much this viewer engages at all, log-normal around ``base_rate``
  (sd ``spread`` of its log). Most viewers rarely engage, a few a lot; this is the
  per-viewer variation CUPED's pre-period covariate removes.
- ``interest``: how much the viewer cares about what the post really shows (its
  truth: the simulator's oracle label). Interests over tags are a Dirichlet draw
  with the simulator's concentration (``components.simulator.social.make_users``),
  mapped through the simulator's own logistic link
  (``social.engagement_probability``, which its docstring reserves for the A/B
  tests) and divided by that link's mean over viewers and tags, so the factor is
  1 on average: an indifferent viewer about 0.35, a keen one up to about 6.
- ``fit``: 1 when the served top-1 tag is the truth, ``miss`` (0.25) when it is not.
  The top-1 tag is what the product files a post under (the topic pages and the
  followers of a tag see it there), so a wrong top-1 puts the post in front of
  people who did not come for it; the lower-ranked tags are not shown as the
  post's topic and get no weight. A model earns engagement only by being right.

The factors multiply because they are independent reasons to scroll past: a keen
viewer still skips a mis-filed post more often, and a right tag does not make an
indifferent viewer care. So an arm's engagement rate is about
``base_rate * E[interest * (miss + (1 - miss) * [top-1 right])]``: a challenger that is
right on a new class of share s that the champion always misses gains about
``s (1 - miss) / (miss + (1 - miss) f)`` in relative engagement, f the champion's
fit rate (with the defaults, s = 0.2 and f = 0.6: about +21%).

How much traffic that takes, measured over seeds with the defaults (base_rate 0.08), the
default ``DecisionRule`` (alpha 0.05, tau 0.05, 500 users per arm) and both arms 60-90%
right on the old classes, for that challenger: 20,000 requests from 2,000 viewers end
"continue" (the always-valid interval on the relative lift is 0.5-0.7 wide); 50,000 from
5,000 viewers promote, with a lower bound of +0.00 to +0.16 (interval 0.3-0.4 wide);
100,000 from 10,000 viewers promote with a lower bound of +0.07 or more (interval about
0.2 wide). Spread requests over many viewers: one viewer's exposures share its
propensity, so 100,000 requests from only 2,000 viewers give an interval about 0.3 wide.
``tests/test_ab_models.py`` decides in 5,000 requests with a more engaged audience.

A post whose truth is unknown (``plain_posts``: images without a feed, for load
tests) gets interest and fit factors of 1: engagement is then the propensity alone,
the same on both arms. Reports (``report_rate`` per exposure) are the same small
rate on both arms. Every served prediction is an impression (unless a caller
skips sending them).

Who views what, and every engagement draw, come from ``drive``'s seed, drawn per
request before any is sent: the events of a request do not depend on the order in
which concurrent requests complete, so a run is deterministic for a seed (given
deterministic models). Viewers draw their traits from their own random streams of
the audience's seed, apart from the simulator's posters' streams.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from components.simulator import social
from serving.eventlog import ENGAGEMENTS

# [seed, _VIEWERS, k]: never one of the simulator's streams ([seed, 1], [seed, 2, day], [seed, 3, day, post])
_VIEWERS, _PROPENSITY_STREAM, _INTEREST_STREAM = 101, 1, 2
MAX_RATE = 0.95  # no viewer engages with everything


@dataclass(frozen=True)
class FeedPost:
    """A post a viewer is served: the upload and what the request says of it, and the oracle's label."""

    post_id: str | None
    image: bytes
    caption: str | None = None
    hashtags: tuple[str, ...] = ()
    truth: str | None = None  # the simulator's content tag; None: unknown (no fit or interest effect)

    def params(self, user_id: str) -> dict:
        """The /predict query parameters for this post sent by ``user_id``."""
        params: dict = {"user_id": user_id}
        if self.post_id is not None:
            params["post_id"] = self.post_id
        if self.caption:
            params["caption"] = self.caption
        if self.hashtags:
            params["hashtags"] = list(self.hashtags)
        return params


def feed_posts(out: Path, days: range | None = None, readable_only: bool = False) -> list[FeedPost]:
    """The posts of a simulated feed (``components.simulator.feed.simulate``'s folder) in time order.

    ``readable_only`` leaves out the uploads an arm cannot decode (with the default ``ImageLimits``:
    the broken uploads the simulator makes on purpose); kept, the app refuses them with a 4xx,
    which ``drive`` counts in ``failed``.
    """
    from components.data.validate import ImageLimits, Rejection, decode_image  # noqa: PLC0415
    from components.simulator.feed import read_feed  # noqa: PLC0415 - pandas and pyarrow: only with a feed

    posts = [
        FeedPost(row.post_id, Path(row.path).read_bytes(), row.caption, tuple(row.hashtags), row.label)
        for row in read_feed(out, days).itertuples(index=False)
    ]
    if readable_only:
        limits = ImageLimits()
        posts = [p for p in posts if not isinstance(decode_image(p.image, limits), Rejection)]
    return posts


def plain_posts(images: Sequence[bytes]) -> list[FeedPost]:
    """Uploads with nothing known about them: engagement comes from each viewer's propensity alone."""
    return [FeedPost(None, image) for image in images]


@dataclass(frozen=True)
class Audience:
    """The viewers: a propensity each, and interests over ``tags`` (none: every interest factor is 1)."""

    viewers: int = 2000
    tags: tuple[str, ...] = ()  # the tag vocabulary of the feed (FeedSpec.tags()), new classes included
    base_rate: float = 0.08  # median propensity: engagements per exposure of a fitting post, median viewer
    spread: float = 0.6  # sd of log-propensity across viewers
    concentration: float = 0.3  # Dirichlet concentration of interests, as the simulator's users
    miss: float = 0.25  # engagement factor of a post whose served top-1 tag is not its truth
    report_rate: float = 0.001  # reports per exposure, both arms
    seed: int = 0

    def __post_init__(self) -> None:
        if self.viewers < 1 or not 0 <= self.miss <= 1 or self.base_rate <= 0 or not 0 <= self.report_rate <= 1:
            raise ValueError("an audience needs viewers >= 1, base_rate > 0, miss and report_rate in [0, 1]")

    def user_ids(self) -> list[str]:
        return [f"viewer-{i:05d}" for i in range(self.viewers)]

    def propensities(self) -> np.ndarray:
        """(viewers,) engagement probability per exposure of a fitting post of average interest."""
        rng = np.random.default_rng([self.seed, _VIEWERS, _PROPENSITY_STREAM])
        return self.base_rate * np.exp(rng.normal(0, self.spread, self.viewers))

    def interest_factors(self) -> np.ndarray:
        """(viewers, tags) multiplier of each viewer's engagement by a post's true tag; mean 1."""
        if not self.tags:
            return np.ones((self.viewers, 0))
        rng = np.random.default_rng([self.seed, _VIEWERS, _INTEREST_STREAM])
        interests = rng.dirichlet(np.full(len(self.tags), self.concentration), size=self.viewers)  # (V, T)
        link = social.engagement_probability(interests)
        return link / link.mean()


class Engagement:
    """An audience's engagement probabilities, computed once: ``probability(viewer, truth, served)``."""

    def __init__(self, audience: Audience):
        self.audience = audience
        self.propensity = audience.propensities()  # (V,)
        self.interest = audience.interest_factors()  # (V, T)
        self.tag_index = {tag: k for k, tag in enumerate(audience.tags)}

    def probability(self, viewer: int, truth: str | None, served: str | None) -> float:
        """Chance that ``viewer`` engages with a post whose true tag is ``truth`` served with top-1 ``served``."""
        if truth is None:  # a plain upload: nothing to fit, nothing to be interested in
            return min(float(self.propensity[viewer]), MAX_RATE)
        k = self.tag_index.get(truth)
        # a truth outside the audience's vocabulary: no taste for or against it
        interest = 1.0 if k is None else float(self.interest[viewer, k])
        # only the top-1 tag counts: it is the topic the post is filed and shown under
        fit = 1.0 if served == truth else self.audience.miss
        return min(float(self.propensity[viewer]) * interest * fit, MAX_RATE)


def events_for(probability: float, draws: np.ndarray, report_rate: float) -> list[str]:
    """The feedback one served post gets, from three uniform draws: always an impression, a click or a
    like with ``probability`` (7 in 10 engagements are clicks), a report with ``report_rate``."""
    events = ["impression"]
    if draws[0] < probability:
        events.append("click" if draws[1] < 0.7 else "like")
    if draws[2] < report_rate:
        events.append("report")
    return events


@dataclass
class DriveStats:
    sent: int = 0
    done: int = 0  # requests answered (their feedback sent) or failed
    ok: int = 0
    failed: dict[int, int] = field(default_factory=dict)  # HTTP status (0: no response) -> count
    latencies_ms: list[float] = field(default_factory=list)
    arms: dict[str, int] = field(default_factory=dict)  # arm -> posts served
    feedback: int = 0  # feedback events recorded
    seconds: float = 0.0
    responses: list[dict] = field(default_factory=list)
    judged: dict[str, Counter] = field(default_factory=dict)  # arm -> truth -> served posts with a known truth
    fitted: dict[str, Counter] = field(default_factory=dict)  # arm -> truth -> of those, top-1 tag == truth
    engagements: dict[str, int] = field(default_factory=dict)  # arm -> clicks and likes recorded

    @property
    def requests_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def fit_rate(self, arm: str, truth: str | None = None) -> float:
        """Share of ``arm``'s served posts (of true tag ``truth``, or all) whose top-1 tag was the truth."""
        judged, fitted = self.judged.get(arm, Counter()), self.fitted.get(arm, Counter())
        n = judged[truth] if truth else sum(judged.values())
        return (fitted[truth] if truth else sum(fitted.values())) / n if n else float("nan")


async def drive(
    url: str,
    posts: Sequence[FeedPost],
    audience: Audience,
    requests: int,
    concurrency: int = 8,
    feedback: bool = True,
    seed: int = 0,
    timeout: float = 60.0,
    keep_responses: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    impressions: bool = True,
    progress: Callable[[DriveStats], None] | None = None,
    until: float | None = None,
) -> DriveStats:
    """Send ``requests`` posts from random viewers of ``audience`` (``concurrency`` at a time) with feedback.

    Request i is viewer ``who[i]`` sending ``posts[what[i]]``, both uniform draws from ``seed``.
    ``transport`` (e.g. ``httpx.ASGITransport(app=api)``) drives an in-process app; ``url`` is then
    any base such as ``http://app``. ``impressions=False`` sends only clicks, likes and reports:
    nothing reads impression events (the analysis counts exposures in the prediction log), and
    skipping them halves the feedback calls of a long run. ``progress`` is called with the stats so far
    each time a request is done (answered with its feedback sent, or failed): a caller can act when
    the traffic reaches a point (``stats.done``) rather than after a guessed time; it runs in the
    driving event loop, so it must return at once. ``until`` (a ``time.monotonic()`` instant) ends the
    traffic then, however many of the ``requests`` are left: requests under way finish, no new one starts.
    """
    if not posts:
        raise ValueError("drive needs at least one post to send")
    rng = np.random.default_rng(seed)
    who = rng.integers(0, audience.viewers, requests)  # (requests,)
    what = rng.integers(0, len(posts), requests)  # (requests,)
    draws = rng.random((requests, 3))  # (requests, 3): engage?, click or like?, report?
    users, engagement = audience.user_ids(), Engagement(audience)
    stats = DriveStats()
    pending = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in pending:  # one shared iterator: each request is taken by one worker
            if until is not None and time.monotonic() >= until:
                return
            stats.sent += 1
            await request(client, i)
            stats.done += 1
            if progress is not None:
                progress(stats)

    async def request(client: httpx.AsyncClient, i: int) -> None:
        """Request ``i``: the post, then its feedback; every outcome is counted in ``stats``."""
        viewer, post = int(who[i]), posts[int(what[i])]
        start = time.perf_counter()
        try:
            response = await client.post(f"{url}/predict", params=post.params(users[viewer]), content=post.image)
        except httpx.HTTPError:
            stats.failed[0] = stats.failed.get(0, 0) + 1
            return
        if response.status_code != 200:  # a broken upload is refused with a 4xx: counted, not fatal
            stats.failed[response.status_code] = stats.failed.get(response.status_code, 0) + 1
            return
        stats.latencies_ms.append(1000 * (time.perf_counter() - start))
        stats.ok += 1
        body = response.json()
        arm = body["arm"]
        stats.arms[arm] = stats.arms.get(arm, 0) + 1
        if post.truth is not None:
            stats.judged.setdefault(arm, Counter())[post.truth] += 1
            stats.fitted.setdefault(arm, Counter())[post.truth] += body["label"] == post.truth
        if keep_responses:
            stats.responses.append(body)
        if not feedback:
            return
        chance = engagement.probability(viewer, post.truth, body["label"])
        for event in events_for(chance, draws[i], audience.report_rate)[0 if impressions else 1 :]:
            sent = await client.post(f"{url}/feedback", json={"request_id": body["request_id"], "event": event})
            if sent.status_code == 200:
                stats.feedback += 1
                if event in ENGAGEMENTS:
                    stats.engagements[arm] = stats.engagements.get(arm, 0) + 1
            else:
                stats.failed[sent.status_code] = stats.failed.get(sent.status_code, 0) + 1

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False, transport=transport) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    stats.seconds = time.perf_counter() - start
    return stats
