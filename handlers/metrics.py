"""/metrics: the Prometheus text format, never public by default.

It is served on its own listener (``CHAT_METRICS_ADDR``, loopback by
default), which has this one route; or, for a scraper that can only reach the
API port, on that port to a caller showing ``CHAT_METRICS_TOKEN`` as a bearer
token (the route does not exist there without a token configured).
"""

from __future__ import annotations

import hmac

import tornado.web

from handlers.base import ApiHandler, JsonErrorsMixin
from server import metrics
from server.errors import NotAuthenticated

BEARER_SCHEME = "Bearer "


class MetricsHandler(JsonErrorsMixin, tornado.web.RequestHandler):
    """Every metric, for whoever reaches the metrics listener."""

    def get(self) -> None:
        self.set_header("Content-Type", metrics.CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(metrics.render())


class TokenMetricsHandler(ApiHandler):
    """Every metric, on the API port, for a caller with the metrics token."""

    requires_auth = False  # not a VK user: the token below stands instead
    extra_errors = (NotAuthenticated,)
    reply_media = (metrics.CONTENT_TYPE_LATEST, {"type": "string"})

    def get(self) -> None:
        supplied = self.request.headers.get("Authorization", "").encode()
        expected = (BEARER_SCHEME + self.config.metrics_token).encode()
        if not hmac.compare_digest(supplied, expected):
            raise NotAuthenticated("Pass Authorization: Bearer <the metrics token>")
        self.set_header("Content-Type", metrics.CONTENT_TYPE_LATEST)
        self.finish(metrics.render())
