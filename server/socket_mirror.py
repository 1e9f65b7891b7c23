"""The socket-id mirror: the cache's copy of which sockets this process holds open.

The registry is the truth for this process; the mirror is what everything
outside it sees. It is written on open, on close (in batches) and on every
refresh, and expires on its own when a process stops refreshing it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Iterable, Mapping, Sequence

from storage.cache import Cache
from storage.records import Profile

log = logging.getLogger("chat")


class SocketMirror:
    """Keeps the cache's socket ids in step with the live sockets, cheaply."""

    def __init__(
        self, cache: Cache, announce: Callable[[Sequence[tuple[int, str]]], Awaitable[None]] | None = None
    ) -> None:
        self.cache = cache
        self.announce = announce  # tells the other processes of a batch of closed sockets
        self._closed: list[tuple[int, str]] = []  # (user, socket) ids still in the cache
        self._forgetting: asyncio.Task[None] | None = None  # the task emptying _closed

    async def reserve(self, user_id: int, socket_id: str, cap: int) -> tuple[bool | None, Profile | None]:
        """Record a socket about to open, within the user's cap: True, False if over it, None if the cache is away;
        and the user's cached profile.

        A cache that cannot be asked refuses nobody (the registry is the
        truth for this process's sockets); ``opened`` then writes the id.
        """
        try:
            return await self.cache.reserve_socket(user_id, socket_id, cap)
        except Exception as error:
            log.warning("socket %s not checked against the cap (%s); letting it open", socket_id, error)
            return None, None

    async def opened(self, user_id: int, socket_id: str) -> None:
        """Record an open socket; if the cache is away, the next refresh writes it."""
        try:
            await self.cache.add_socket(user_id, socket_id)
        except Exception as error:
            log.warning("socket %s not mirrored yet (%s); the next refresh writes it", socket_id, error)

    def closed(self, user_id: int, socket_id: str) -> asyncio.Task[None]:
        """Forget a closed socket, batched with others closing at the same moment.

        When thousands of sockets close at once (a network blip, a restart of
        a proxy) one cache call per socket would queue on the connection
        pool; sockets closing while a batch is on its way wait for the next.
        """
        self._closed.append((user_id, socket_id))
        if self._forgetting is None or self._forgetting.done():
            self._forgetting = asyncio.ensure_future(self._forget())
        return self._forgetting

    async def _forget(self) -> None:
        while self._closed:
            batch, self._closed = self._closed, []
            try:
                await self.cache.remove_sockets(batch)
            except Exception as error:
                # They expire on their own within SOCKET_TTL_SECS.
                log.warning("could not remove %d closed socket ids from the cache: %s", len(batch), error)
            if self.announce is not None:
                try:
                    await self.announce(batch)
                except Exception as error:
                    # The others' memory of them expires on its own (server/open_sockets.py REMOTE_SOCKET_MEMORY_SECS).
                    log.warning("could not announce %d closed sockets: %s", len(batch), error)

    async def refresh(self, sockets_by_user: Mapping[int, Iterable[str]]) -> None:
        """Re-add every live socket id and push back its expiry."""
        await self.cache.refresh_sockets(sockets_by_user)

    async def flush(self) -> None:
        """Wait until every closed socket so far has left the cache (or failed to)."""
        if self._forgetting is not None:
            await self._forgetting
