"""/v1/features: what this server offers a client before it signs in (no authentication).

The web client asks it on every load outside VK, to show the development
sign-in or the "open it in VK" screen. It always exists and always answers
200, so a page loads without a request that fails (a probe of
``/v1/dev/signin`` itself would be a 400 or a 404 in the console).
"""

from __future__ import annotations

from typing import Any

from handlers.base import ApiHandler


class FeaturesHandler(ApiHandler):
    """What this server offers before sign-in: whether the development sign-in exists."""

    requires_auth = False
    returns = {"dev_signin": {"type": "boolean", "description": "POST /v1/dev/signin exists (docs/API.md §2)"}}

    def initialize(self, dev_signin: bool, **services: Any) -> None:  # type: ignore[override]
        super().initialize(**services)
        self.dev_signin = dev_signin

    async def get(self) -> None:
        self.reply(dev_signin=self.dev_signin)
