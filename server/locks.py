"""Per-key asyncio locks that exist only while someone holds or awaits them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Hashable

from storage import deadline
from storage.errors import StorageTimeout


class KeyedLocks:
    """A mutex per key (here: per conversation), created on demand and dropped when idle."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, asyncio.Lock] = {}  # key → its lock
        self._users: dict[Hashable, int] = {}  # key → tasks holding or awaiting it

    @contextlib.asynccontextmanager
    async def hold(self, *keys: Hashable) -> AsyncIterator[None]:
        """Hold the locks of all ``keys``, taken in sorted order so two holders never deadlock."""
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                await stack.enter_async_context(self._hold_one(key))
            yield

    @contextlib.asynccontextmanager
    async def _hold_one(self, key: Hashable) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            # Whoever holds the lock may be waiting for the database: waiting
            # for it counts against the request's storage deadline.
            try:
                async with deadline.timeout(None):
                    await lock.acquire()
            except TimeoutError:
                raise StorageTimeout(f"lock of {key!r} not free within the request's deadline") from None
            try:
                yield
            finally:
                lock.release()
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)
