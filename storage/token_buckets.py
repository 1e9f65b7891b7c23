"""Per-user token buckets in memory: how many messages a user may send, and how fast.

The rule the bus's Lua script applies for several processes (storage/bus.py,
``_TAKE_TOKEN_LUA``); one process alone keeps its buckets here.
"""

from __future__ import annotations

import time

# A bucket left alone this long is full again, so it can be forgotten.
IDLE_BUCKET_SECS = 60.0
PRUNE_EVERY_TAKES = 10_000


class RateLimiter:
    """``rate`` actions per second per key on average, bursts of up to ``burst``; rate 0 is no limit."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, 2 * rate)
        self._buckets: dict[int, tuple[float, float]] = {}  # key → (tokens, when last counted)
        self._takes = 0

    def take(self, key: int) -> float:
        """Spend one token; return 0, or the seconds to wait when there is none."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        self._takes += 1
        if self._takes % PRUNE_EVERY_TAKES == 0:
            self._prune(now)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self._buckets[key] = (tokens - 1, now)
        return 0.0

    def _prune(self, now: float) -> None:
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < IDLE_BUCKET_SECS}
