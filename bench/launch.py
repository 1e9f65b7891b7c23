"""Signed VK launch parameters for benchmark users.

A local copy of VK's signing algorithm (docs/API.md §2), kept here on purpose
so the benchmark never imports server internals: it must keep working while
the server changes, and it must be able to drive the baseline server, which
has no ``server`` package at all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse

# VK's own published example; checked by ``self_check`` so a broken copy of
# the algorithm shows up as a clear error instead of a wall of 401s.
_TEST_QUERY = (
    "vk_user_id=494075&vk_app_id=6736218&vk_is_app_user=1&vk_are_notifications_enabled=1"
    "&vk_language=ru&vk_access_token_settings=&vk_platform=android"
)
_TEST_SECRET = "wvl68m4dR1UpLrVRli"
_TEST_SIGN = "htQFduJpLxz7ribXRZpDFUH-XEUhC9rBPTJkjUFEkRA"


def compute_sign(params: dict[str, str] | list[tuple[str, str]], secret: str) -> str:
    """VK's signature: HMAC-SHA256 over the sorted, URL-encoded ``vk_*`` params."""
    items = params.items() if isinstance(params, dict) else params
    vk_params = sorted((k, v) for k, v in items if k.startswith("vk_"))
    digest = hmac.new(secret.encode(), urllib.parse.urlencode(vk_params).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_launch_params(secret: str, user_id: int, **extra_vk_params: str) -> str:
    """Return a signed launch query string for ``user_id`` (``sign`` included)."""
    params = {
        "vk_app_id": "1",
        "vk_user_id": str(user_id),
        "vk_ts": str(int(time.time())),
        "vk_platform": "desktop_web",
        "vk_language": "ru",
    }
    params.update({k: str(v) for k, v in extra_vk_params.items()})
    params["sign"] = compute_sign(params, secret)
    return urllib.parse.urlencode(params)


def self_check() -> None:
    """Raise if this copy of the algorithm disagrees with VK's test vector."""
    pairs = urllib.parse.parse_qsl(_TEST_QUERY, keep_blank_values=True)
    got = compute_sign(pairs, _TEST_SECRET)
    if got != _TEST_SIGN:
        raise AssertionError(f"launch signing is broken: got {got}, expected {_TEST_SIGN}")
