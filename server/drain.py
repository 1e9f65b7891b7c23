"""The HTTP requests in flight, counted so that shutdown can let them finish (docs/API.md §1).

Once closed, a :class:`Drain` turns new requests and WebSocket handshakes
away with 503 (``ShuttingDown``) while those already in flight run to their
answer; ``ChatServer.stop`` waits for that before it closes anything.
"""

from __future__ import annotations

import asyncio
import math

from server.errors import ShuttingDown

POLL_SECS = 0.02
# However often clients knock, the door closes this long after the last request in flight finished.
MAX_QUIET_WAIT_SECS = 1.0


class Drain:
    """Requests in flight; closed, it refuses new ones."""

    def __init__(self) -> None:
        self.closed = False
        self._active = 0  # requests admitted and not yet finished
        # Loop time a request was last turned away, or answered after the close:
        # a client just answered may knock again at once.
        self._last_knock = -math.inf

    def enter(self) -> None:
        """Admit a request (it must call ``leave`` when finished), or raise ShuttingDown."""
        if self.closed:
            self._last_knock = asyncio.get_running_loop().time()
            raise ShuttingDown()
        self._active += 1

    def leave(self) -> None:
        self._active -= 1
        if self.closed:
            self._last_knock = asyncio.get_running_loop().time()

    @property
    def active(self) -> int:
        return self._active

    async def close(self, timeout_secs: float, quiet_secs: float) -> bool:
        """Refuse from now on; wait until nothing is in flight and nobody knocked for ``quiet_secs``.

        The quiet period keeps the door answering 503 to clients still
        sending (they stop on their first 503) rather than closing the
        listening socket under them, which resets connections the kernel
        already accepted; it lasts at most MAX_QUIET_WAIT_SECS. It counts
        from the last answer too: a client whose request was in flight sends
        its next one as soon as it has the answer, and must find the door
        still answering. Return False if requests were still in flight after
        ``timeout_secs``.
        """
        self.closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_secs
        while self._active:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(POLL_SECS)
        quiet_deadline = min(deadline, loop.time() + MAX_QUIET_WAIT_SECS)
        while loop.time() - self._last_knock < quiet_secs and loop.time() < quiet_deadline:
            await asyncio.sleep(POLL_SECS)
        return True
