"""The router as a plain object: assign the user an arm, ask that arm's model, log, answer.

It knows nothing of HTTP or Ray: ``serving.api`` puts FastAPI in front of it and
``serving.app`` runs both in Ray Serve; the benchmark and tests call it directly.
An arm is any ``async (upload bytes) -> Tagged | Rejection`` callable: a Ray Serve
handle in the app, an in-process batcher elsewhere.

When the user's arm fails (its replica died, its node is gone, or it does not answer
within ``arm_timeout_s``) the router asks the other arm; when that fails too it
answers 503 with ``Retry-After``. Each request ends as one of ``OUTCOMES``, counted
in ``Router.outcomes`` and logged. An answer from the other arm is logged with the
arm that answered and no experiment: the user's assigned arm did not serve it, so it
is no exposure of the A/B test (the analysis counts users by their assigned arm).

The raw user id stops here: the router turns it into its pseudonym (``components.data.pseudonyms``)
before anything else sees it, so the arm assignment, the arms' feature lookups, the logs and
the request book hold only pseudonyms; the caller's own id is echoed back to it, never stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow.compute as pc

from components.data import predlog
from components.data.predlog import SERVED, PredictionLog
from components.data.pseudonyms import Pseudonyms
from components.data.validate import Rejection
from serving.eventlog import EVENTS, EventWriter
from serving.experiment import ARMS, CHALLENGER, CHAMPION, assign_arm
from serving.limits import RateLimiter
from serving.tagging import ModelNotLoaded, Tagged

# (upload, context) -> result; the context is a PostContext as a dict (it crosses Ray as plain data)
Arm = Callable[[bytes, dict], Awaitable["Tagged | Rejection"]]
log = logging.getLogger(__name__)

# how a request that reached an arm ended: its assigned arm answered, the other arm answered, or neither (503)
OUTCOMES = ("served", "fallback", "unavailable")


class Refused(Exception):
    """A request we refuse (4xx: the caller's fault; 503: retry later), with the message the caller sees."""

    def __init__(self, status: int, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


class ArmFailed(Exception):
    """One arm did not answer: why, in words (the exception's type, or the timeout)."""


@dataclass(frozen=True)
class Traffic:
    """The router's live knobs: its Ray Serve ``user_config``, changed without a restart."""

    split: float = 0.0  # the challenger's share of users
    salt: str = "trendloop"  # the experiment's assignment salt
    experiment: str | None = None  # the experiment id written into every record
    champion_version: int | None = None  # what each arm serves, as recorded in the experiment
    challenger_version: int | None = None

    @classmethod
    def from_config(cls, config: dict) -> Traffic:
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown router settings: {sorted(unknown)}")
        traffic = cls(**config)
        if not 0.0 <= traffic.split <= 1.0:
            raise ValueError(f"split must lie in [0, 1], not {traffic.split}")
        return traffic

    def arm_of(self, user_id: str) -> str:
        if self.challenger_version is None:
            return CHAMPION
        return assign_arm(user_id, self.salt, self.split)


@dataclass(frozen=True)
class Served:
    """What the router remembers of a request, to attach feedback to it."""

    user_id: str  # the pseudonym
    arm: str
    model_version: int
    experiment: str | None


class RequestBook:
    """Recent request ids in memory (bounded); older ones (up to ``lookback_days``) from the prediction log."""

    def __init__(self, log: PredictionLog, capacity: int = 200_000, lookback_days: float = 7.0):
        self.log, self.capacity, self.lookback = log, capacity, timedelta(days=lookback_days)
        self._recent: OrderedDict[str, Served] = OrderedDict()

    def remember(self, request_id: str, served: Served) -> None:
        self._recent[request_id] = served
        if len(self._recent) > self.capacity:
            self._recent.popitem(last=False)

    def find(self, request_id: str, pending: Callable[[], list[dict]]) -> Served | None:
        """The request, from memory, else ``pending()`` (queued, not yet on disk), else the log."""
        if request_id in self._recent:
            return self._recent[request_id]
        for record in pending():
            if record["request_id"] == request_id:
                return _served(record)
        found = self.log.read(
            since=datetime.now(UTC) - self.lookback,
            where=(pc.field("request_id") == request_id) & predlog.served(),
            columns=["request_id", "user_id", "arm", "model_version", "experiment"],
        )
        if len(found) == 0:
            return None
        served = _served(found.slice(0, 1).to_pylist()[0])
        self.remember(request_id, served)
        return served


def _served(record: dict) -> Served:
    return Served(record["user_id"], record["arm"], record["model_version"], record["experiment"])


class Router:
    def __init__(
        self,
        arms: dict[str, Arm],
        predictions: EventWriter,
        feedback: EventWriter,
        book: RequestBook,
        traffic: Traffic | None = None,
        max_upload_bytes: int = 10 * 2**20,
        arm_timeout_s: float = 10.0,
        retry_after_s: int = 5,
        limiter: RateLimiter | None = None,
        *,
        pseudonyms: Pseudonyms,
    ):
        self.arms, self.pseudonyms = arms, pseudonyms
        self.predictions, self.feedback_log, self.book = predictions, feedback, book
        self.traffic = traffic or Traffic()
        self.max_upload_bytes = max_upload_bytes
        self.arm_timeout_s, self.retry_after_s = arm_timeout_s, retry_after_s
        self.outcomes: Counter[str] = Counter({outcome: 0 for outcome in OUTCOMES})
        self.limiter = limiter  # None: no per-user limit
        self.limited = 0  # requests refused with 429 by the per-user limit

    def configure(self, traffic: Traffic) -> None:
        self.traffic = traffic  # one assignment: a request reads either the old knobs or the new ones

    async def predict(
        self,
        upload: bytes,
        user_id: str,
        caption: str | None = None,
        hashtags: Sequence[str] = (),
        post_id: str | None = None,
    ) -> dict:
        """Tag one upload for ``user_id``; the caption, hashtags and post id feed fusion versions."""
        start = time.perf_counter()
        given = _user_id(user_id)
        user_id = self.pseudonyms.of(given)  # from here on, only the pseudonym
        self._within_limit(user_id)
        tags = tuple(t.lstrip("#") for t in hashtags if t.lstrip("#"))  # as stored: without the #
        context = {"user_id": user_id, "post_id": post_id, "caption": caption, "hashtags": tags}
        if not upload:
            raise Refused(400, "the request body is empty: send the image bytes as the body")
        if len(upload) > self.max_upload_bytes:
            raise Refused(413, f"the image is {len(upload):,} bytes; the limit is {self.max_upload_bytes:,}")
        traffic = self.traffic
        assigned = traffic.arm_of(user_id)
        arm, result = await self._answer(assigned, traffic, upload, context)
        if isinstance(result, Rejection):
            raise Refused(415 if result.reason in ("not_an_image", "unsupported_format") else 422, _said(result))
        request_id = uuid.uuid4().hex
        latency_ms = 1000 * (time.perf_counter() - start)
        now = datetime.now(UTC)
        expected = traffic.champion_version if arm == CHAMPION else traffic.challenger_version
        # an arm still loading the experiment's version answered with another, or the other arm answered for the
        # user's (a fallback): not part of the test
        experiment = traffic.experiment if arm == assigned and result.model_version == expected else None
        self.predictions.append(
            {
                "request_id": request_id,
                "post_id": post_id,
                "user_id": user_id,
                "arm": arm,
                "model_version": result.model_version,
                "predicted": result.label,
                "confidence": result.confidence,
                "probabilities": result.probabilities.tolist(),
                "embedding": result.embedding.tolist(),
                "latency_ms": latency_ms,
                "time": now,
                "experiment": experiment,
                "source": SERVED,
            }
        )
        self.book.remember(request_id, Served(user_id, arm, result.model_version, experiment))
        return {
            "request_id": request_id,
            "user_id": given,
            "arm": arm,
            "model_version": result.model_version,
            "experiment": experiment,
            "label": result.label,
            "confidence": result.confidence,
            "tags": [{"label": lab, "score": s} for lab, s in zip(result.labels, result.scores, strict=True)],
            "latency_ms": round(latency_ms, 3),
            "side_inputs": result.side,
            "fallback": arm != assigned,
        }

    def _within_limit(self, user_id: str) -> None:
        """Refuse (429, Retry-After) a user past the per-user rate limit; counted in ``limited``."""
        if self.limiter is None:
            return
        wait = self.limiter.wait(user_id)
        if wait > 0:
            self.limited += 1
            limiter = self.limiter
            raise Refused(
                429,
                f"too many requests for this user (at most {limiter.rate:g} a second, bursts of {limiter.burst}); "
                f"retry in {limiter.retry_after(wait)} s",
                retry_after=limiter.retry_after(wait),
            )

    async def _answer(
        self, assigned: str, traffic: Traffic, upload: bytes, context: dict
    ) -> tuple[str, Tagged | Rejection]:
        """(the arm that answered, its answer): the assigned arm's, else the other arm's; else 503."""
        other = CHALLENGER if assigned == CHAMPION else CHAMPION
        # the challenger stands in only while it serves a version (a test runs); the champion always may
        order = [assigned] if other == CHALLENGER and traffic.challenger_version is None else [assigned, other]
        failed = []
        for arm in order:
            try:
                result = await self._ask(arm, upload, context)
            except ArmFailed as err:
                failed.append(f"{arm}: {err}")
                continue
            outcome = "served" if arm == assigned else "fallback"
            self.outcomes[outcome] += 1
            if outcome == "fallback":
                log.warning("the %s arm answered for the %s arm (%s)", arm, assigned, "; ".join(failed))
            return arm, result
        self.outcomes["unavailable"] += 1
        log.warning("no arm answered (%s): 503, retry after %s s", "; ".join(failed), self.retry_after_s)
        raise Refused(
            503,
            f"the model is unavailable right now ({'; '.join(failed)}); retry in {self.retry_after_s} s",
            retry_after=self.retry_after_s,
        )

    async def _ask(self, arm: str, upload: bytes, context: dict) -> Tagged | Rejection:
        try:
            return await asyncio.wait_for(self.arms[arm](upload, context), self.arm_timeout_s)
        except ModelNotLoaded:
            raise ArmFailed("no model version loaded yet") from None
        except TimeoutError:
            raise ArmFailed(f"no answer in {self.arm_timeout_s:g} s") from None
        except Exception as err:  # noqa: BLE001 - a replica died, is overloaded or unreachable: say so, not 500
            raise ArmFailed(type(err).__name__) from None

    def feedback(self, request_id: str, event: str) -> dict:
        if event not in EVENTS:
            raise Refused(422, f"unknown event {event!r}; one of {', '.join(EVENTS)}")
        served = self.book.find(request_id, self.predictions.pending_records)
        if served is None:
            raise Refused(404, f"no prediction with request id {request_id!r}")
        now = datetime.now(UTC)
        self.feedback_log.append(
            {
                "request_id": request_id,
                "event": event,
                "user_id": served.user_id,
                "arm": served.arm,
                "model_version": served.model_version,
                "experiment": served.experiment,
                "time": now,
            }
        )
        return {"request_id": request_id, "event": event, "arm": served.arm, "recorded_at": now.isoformat()}

    def close(self) -> int:
        """Write every queued record; returns how many could not be written."""
        return self.predictions.close() + self.feedback_log.close()


def _user_id(user_id: str) -> str:
    user_id = (user_id or "").strip()
    if not user_id:
        raise Refused(422, "user_id is required (a non-empty string)")
    if len(user_id) > 200 or not user_id.isprintable():
        raise Refused(422, "user_id must be at most 200 printable characters")
    return user_id


def _said(rejection: Rejection) -> str:
    return f"the upload is not an image we can read ({rejection.reason}): {rejection.detail}"


__all__ = ["ARMS", "CHALLENGER", "CHAMPION", "OUTCOMES", "Refused", "RequestBook", "Router", "Served", "Traffic"]
