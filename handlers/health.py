"""/healthz and /readyz: what load balancers and orchestrators ask (no authentication).

``/healthz`` answers from the event loop itself: if it answers, the process
is alive and its loop turns. ``/readyz`` also asks the database and the cache
(``server.health``); 503 names the ones that did not answer in time.
"""

from __future__ import annotations

from handlers.base import ApiHandler
from server.errors import NotReady
from server.wire_schemas import closed_object
from server.health import OK, Readiness


class HealthHandler(ApiHandler):
    """Liveness: the process is alive and its loop answers."""

    requires_auth = False

    async def get(self) -> None:
        self.reply()


class ReadyHandler(ApiHandler):
    """Readiness: the database and the cache answer within the deadline."""

    requires_auth = False
    returns = {"checks": closed_object({"database": {"const": "ok"}, "cache": {"const": "ok"}})}
    extra_errors = (NotReady,)

    def initialize(self, readiness: Readiness, **services) -> None:  # type: ignore[override]
        super().initialize(**services)
        self.readiness = readiness

    async def get(self) -> None:
        checks = await self.readiness.check()
        if any(state != OK for state in checks.values()):
            raise NotReady(checks)
        self.reply(checks=checks)
