"""Per-user rate limits on /predict: a token bucket per key, in bounded memory.

Each key (the user id the router validated) holds a bucket of at most ``burst`` tokens that
refills at ``rate`` tokens a second; a request takes one token, and a request that finds
none is refused with the seconds until one is back (the 429's ``Retry-After``). A refused
request takes nothing, so a client that waits as told gets through. Token bucket as in
RFC 2697's committed burst (one rate, one bucket).

Memory: at most ``max_keys`` buckets, least recently used first out. A bucket let go comes
back full, which is what it would have become anyway once idle for ``burst / rate`` seconds;
only keys that fill the table within that time lose anything, and they are already many users.
Each router replica keeps its own buckets: the limit a user meets is per replica.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    """``rate`` requests a second per key, bursts of up to ``burst``; ``clock`` is injected for tests."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic):
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError(f"a rate limit needs rate > 0, burst >= 1, max_keys >= 1; got {rate}, {burst}, {max_keys}")
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when counted)

    def wait(self, key: str) -> float:
        """0.0 when ``key`` may go now (its token is taken), else the seconds until it may."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0 if wait == 0.0 else tokens, now)  # most recently used last
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait: float) -> int:
        """A ``Retry-After`` in whole seconds (RFC 9110: an integer), never before the token is back."""
        return max(1, math.ceil(wait))

    def __len__(self) -> int:
        return len(self._buckets)


def rate_limiter(rate: float, burst: int) -> RateLimiter | None:
    """The limiter of the settings ``rate_per_user_s`` and ``burst``; None when ``rate`` is 0 (no limit)."""
    return RateLimiter(rate, burst) if rate > 0 else None
