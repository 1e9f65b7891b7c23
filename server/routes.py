"""Which users' conversation entries reach this process: its routes in the partitioned log.

The bus keeps a conversation's entries only in the inboxes of processes that
hold a socket of one of its members or viewers (storage/bus.py). A process
holds a user's route while it has a socket of theirs, and lets it linger for
the resume window after the last one closes: that socket may be resumed on
any process, which reads this one's inbox for what it missed. Views are
routed by the bus itself as they change.

A new socket's entries must reach this process from its first position on:
its handshake waits until the route is written and this process applied a
MARK appended after it (``hold``). Route changes are written by one writer,
in batches (a storm opens thousands of sockets at once), each batch as this
process's routes are when it leaves, so a later change is never overwritten
by an earlier one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Coroutine, Iterable

from storage.bus import Bus

log = logging.getLogger("chat.hub")

# A lingering route with less than this left is held again before a new socket relies on it.
LINGER_MARGIN_SECS = 10.0
RETRY_SECS = 0.5


class Routes:
    """This process's user routes, as the bus has them (or is about to)."""

    def __init__(self, bus: Bus, linger_secs: float, spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.bus = bus
        self.linger_secs = linger_secs
        self.spawn = spawn
        self._held: dict[int, float] = {}  # user → 0 (held) or when its lingering ends (monotonic)
        self._changed: set[int] = set()  # users whose route changed since the last write
        self._views: set[int] = set()  # conversations whose view route must linger (a resume carries the view)
        self._mark = False  # the next batch appends a MARK (a handshake waits for it)
        self._batch: asyncio.Future[str] | None = None  # answered when the next batch is written
        self._writing = False

    async def hold(self, user_id: int, views: Iterable[int] = ()) -> str:
        """Route the user's entries (and these conversations') here; return the id of an entry to apply
        before relying on it ("" if they already come here, or Redis did not answer: fail open, as a
        socket opens without Redis, and retried in the background)."""
        if not self.bus.partitioned:
            return ""  # one log read whole: every entry comes here
        views = set(views)
        state = self._held.get(user_id)
        self._held[user_id] = 0.0
        if not views and state is not None and (state == 0 or state > time.monotonic() + LINGER_MARGIN_SECS):
            if state:  # lingering: its entries come meanwhile; held again in the background
                self._changed.add(user_id)
                self._next_batch(False)
            return ""
        self._changed.add(user_id)
        self._views |= views
        return await asyncio.shield(self._next_batch(True))

    async def release(self, user_ids: Iterable[int]) -> None:
        """Users with no socket here any more: their entries keep coming for the resume window."""
        if not self.bus.partitioned:
            return
        until = time.monotonic() + self.linger_secs
        for user_id in user_ids:
            self._held[user_id] = until
            self._changed.add(user_id)
        await asyncio.shield(self._next_batch(False))

    def rehold(self, user_ids: Iterable[int]) -> None:
        """Redis lost every route (a restart, a flush): hold again those with sockets here, forget the rest."""
        self._held = {user_id: 0.0 for user_id in user_ids}
        self._changed = set(self._held)
        self._views.clear()

    async def flush(self) -> None:
        """Write what changed, now (the resync writes every route before telling the sockets)."""
        await asyncio.shield(self._next_batch(False))

    def prune(self) -> None:
        """Forget routes whose lingering ended (the bus drops them as it meets them)."""
        now = time.monotonic()
        self._held = {user_id: until for user_id, until in self._held.items() if until == 0 or until > now}

    def _next_batch(self, mark: bool) -> asyncio.Future[str]:
        self._mark = self._mark or mark
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        batch = self._batch
        if not self._writing:
            self._writing = True
            self.spawn(self._write())
        return batch

    async def _write(self) -> None:
        try:
            while self._batch is not None:
                users = {user_id: self._held.get(user_id) == 0 for user_id in self._changed}
                views, mark, batch = sorted(self._views), self._mark, self._batch
                self._changed, self._views, self._mark, self._batch = set(), set(), False, None
                try:
                    last = await self.bus.route(users, views, mark)
                except Exception as error:
                    log.warning("routes of %d users not written: %s; retrying", len(users), error)
                    batch.set_result("")
                    self._changed |= set(users)
                    self._views |= set(views)
                    await asyncio.sleep(RETRY_SECS)
                    if self._batch is None:
                        self._batch = asyncio.get_running_loop().create_future()
                    continue
                batch.set_result(last)
        finally:
            self._writing = False
