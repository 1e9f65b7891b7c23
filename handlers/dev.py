"""/v1/dev/signin: signed launch parameters for local development.

The route is only registered when the server generated its own secret and
listens on loopback (see ``ChatServer.dev_signin_enabled``): with a real VK
secret, or reachable from other machines, it does not exist at all.
"""

from __future__ import annotations

import voluptuous as vol

from handlers.base import ApiHandler
from handlers.validators import Integer, Text
from server.auth import sign_launch_params

SIGNIN_SCHEMA = vol.Schema(
    {vol.Required("user_id"): Integer(1), vol.Optional("name"): Text(1, 100, strip=True)},
    extra=vol.REMOVE_EXTRA,
)


class DevSigninHandler(ApiHandler):
    """Launch parameters signed with the server's generated secret (development only)."""

    requires_auth = False  # this route is how a developer gets some
    parameters = SIGNIN_SCHEMA
    returns = {"launch_params": {"type": "string"}}

    async def post(self) -> None:
        params = self.parse()
        self.reply(launch_params=sign_launch_params(self.config.vk_secret, params["user_id"]))
