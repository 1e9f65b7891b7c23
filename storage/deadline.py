"""One deadline per request for everything that waits on storage.

A request may wait on several things in a row: a conversation's lock held
by a batch that waits for the database, then its own statements. Each
operation has the database's deadline, but the request as a whole must not
wait longer than that either (docs/API.md: 503 after CHAT_DB_TIMEOUT). The
request's handler starts the clock (:func:`begin`); every storage wait then
ends at its own deadline or at the request's, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextvars

# Loop time at which the current request's storage waits end; None outside a request.
_request_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("request_deadline", default=None)


def begin(seconds: float) -> None:
    """Start the current request's clock (in its handler's task: later awaits inherit it)."""
    if seconds > 0:
        _request_deadline.set(asyncio.get_running_loop().time() + seconds)


def timeout(seconds: float | None) -> asyncio.Timeout:
    """A timeout at ``seconds`` from now (None: no limit of its own), or at the request's end if sooner."""
    at = None if not seconds else asyncio.get_running_loop().time() + seconds
    request_at = _request_deadline.get()
    if request_at is not None:
        at = request_at if at is None else min(at, request_at)
    return asyncio.timeout_at(at)
