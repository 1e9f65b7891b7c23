"""Readiness: whether the database and the cache answer within a deadline.

Load balancers and orchestrators ask ``/readyz`` every few seconds and take a
process out of rotation while it says 503, so the check must be cheap (one
trivial query and one PING, run side by side), bounded (a dependency that
hangs counts as down after READY_TIMEOUT_SECS, instead of hanging the
probe), and must not leak internals to a public port: the answer names the
dependency and a one-word state; the log has the details.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import redis.exceptions

from server import metrics
from storage.cache import Cache
from storage.database import Database

log = logging.getLogger("chat.health")

READY_TIMEOUT_SECS = 2.0

OK = "ok"
TIMEOUT = "timeout"  # no answer within READY_TIMEOUT_SECS
UNAVAILABLE = "unavailable"  # answered with an error, or refused the connection


class Readiness:
    """Asks each dependency to answer; knows nothing of HTTP."""

    def __init__(self, database: Database, cache: Cache, timeout_secs: float = READY_TIMEOUT_SECS) -> None:
        self.checks: dict[str, Callable[[], Awaitable[None]]] = {"database": database.ping, "cache": cache.ping}
        self.timeout_secs = timeout_secs

    async def check(self) -> dict[str, str]:
        """The state of every dependency, by name: ``ok``, ``timeout`` or ``unavailable``."""
        names = list(self.checks)
        states = await asyncio.gather(*(self._check_one(name) for name in names))
        return dict(zip(names, states))

    async def _check_one(self, name: str) -> str:
        try:
            await asyncio.wait_for(self.checks[name](), self.timeout_secs)
        except (asyncio.TimeoutError, redis.exceptions.TimeoutError):  # ours, or the Redis client's own
            log.warning("not ready: %s did not answer within %.1f s", name, self.timeout_secs)
            metrics.STORAGE_ERRORS.labels(name).inc()  # the check names match the metric's stores
            return TIMEOUT
        except Exception as error:
            log.warning("not ready: %s: %s", name, error)
            metrics.STORAGE_ERRORS.labels(name).inc()
            return UNAVAILABLE
        return OK
