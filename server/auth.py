"""VK Mini App launch parameters: signing and verification (docs/API.md §2).

VK signs the query string it opens a Mini App with: every ``vk_*`` parameter,
sorted by name and URL-encoded, HMAC-SHA256'd with the app's secret key, the
digest in URL-safe base64 without padding. We check the same, in constant time.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import secrets
import time
import urllib.parse
from pathlib import Path
from typing import Iterable, Mapping

from server.errors import NotAuthenticated
from storage.records import MAX_ID

SECRET_FILE_NAME = "vk_secret"


@dataclasses.dataclass(frozen=True)
class LaunchUser:
    """Who a verified request comes from, and the profile its launch carried."""

    user_id: int
    name: str | None = None
    avatar: str | None = None


def compute_sign(params: Iterable[tuple[str, str]], secret: str) -> str:
    """Return VK's signature of the ``vk_*`` parameters among ``params``."""
    vk_params = sorted((k, v) for k, v in params if k.startswith("vk_"))
    digest = hmac.new(
        secret.encode(), urllib.parse.urlencode(vk_params).encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_launch_params(secret: str, user_id: int, app_id: int = 1, **extra: str) -> str:
    """Build a signed launch query string for ``user_id``, as VK would."""
    params = {
        "vk_app_id": str(app_id),
        "vk_user_id": str(user_id),
        "vk_ts": str(int(time.time())),
        "vk_platform": "desktop_web",
        "vk_language": "ru",
    }
    params.update({k: str(v) for k, v in extra.items()})
    params["sign"] = compute_sign(params.items(), secret)
    return urllib.parse.urlencode(params)


def verify_launch_params(
    query: str | Mapping[str, list[str]], secret: str, max_age_secs: int = 0
) -> LaunchUser:
    """Return the user a launch query string proves, or raise NotAuthenticated."""
    if isinstance(query, str):
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
    else:
        pairs = [(k, v.decode() if isinstance(v, bytes) else v) for k, vs in query.items() for v in vs]
    values: dict[str, str] = {}
    for key, value in pairs:
        if key in values:
            # A repeated parameter could be read one way here and another
            # way by the signer; refuse instead of guessing.
            raise NotAuthenticated("Malformed launch parameters: repeated " + key)
        values[key] = value
    sign = values.get("sign")
    if not sign:
        raise NotAuthenticated("Missing launch parameters signature")
    expected = compute_sign(values.items(), secret)
    if not hmac.compare_digest(expected.encode(), sign.encode()):
        raise NotAuthenticated("Invalid launch parameters signature")
    user_id_text = values.get("vk_user_id", "")
    # Bounded like every id (MAX_ID): a validly signed 2^63 must not reach the database.
    if (not user_id_text.isascii() or not user_id_text.isdigit() or len(user_id_text) > 16
            or not 0 < int(user_id_text) <= MAX_ID):
        raise NotAuthenticated("vk_user_id must be a positive integer up to 2^53-1")
    if max_age_secs > 0:
        ts_text = values.get("vk_ts", "")
        if not ts_text.isascii() or not ts_text.isdigit():
            raise NotAuthenticated("vk_ts is required")
        if time.time() - int(ts_text) > max_age_secs:
            raise NotAuthenticated("Launch parameters have expired")
    return LaunchUser(user_id=int(user_id_text))


def load_or_create_secret(data_dir: str) -> str:
    """Return the development secret kept in ``data_dir``, creating it once."""
    path = Path(data_dir) / SECRET_FILE_NAME
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(24)
    # Created with owner-only permissions: it signs logins.
    with open(path, "x") as secret_file:
        path.chmod(0o600)
        secret_file.write(secret)
    return secret
