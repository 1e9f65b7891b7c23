"""What a client is told when the send rate limit refuses it (the buckets: storage/token_buckets.py)."""

from __future__ import annotations

import math


def retry_after_secs(wait: float) -> int:
    """The Retry-After value for a wait: whole seconds, at least one."""
    return max(1, math.ceil(wait))
