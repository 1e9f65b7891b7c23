"""/v1/openapi.json: the OpenAPI document of the routes this server serves (built by ``server.apidoc``)."""

from __future__ import annotations

import json
from typing import Any

from handlers.base import ApiHandler


class OpenApiHandler(ApiHandler):
    """The OpenAPI 3.1 document of this server's HTTP routes."""

    requires_auth = False  # API descriptions are public, as Zulip's and Mattermost's are
    reply_media = ("application/json", {"type": "object", "required": ["openapi", "paths"]})

    def initialize(self, document: dict[str, Any], **services: Any) -> None:  # type: ignore[override]
        super().initialize(**services)
        self.document = document

    async def get(self) -> None:
        self.finish(json.dumps(self.document, ensure_ascii=False))
