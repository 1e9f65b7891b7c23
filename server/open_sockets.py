"""Which sockets are open, on any process: the 428 rule and the sockets a request acts for.

This process's registry is the truth for its own sockets; the cache holds
every process's (``server/socket_mirror.py`` writes this one's). A socket of
another process, once the cache said it is open, is remembered here as open
until its process announces its close through the log (a SOCKETS_CLOSED
entry, applied by the hub), dies, or REMOTE_SOCKET_MEMORY_SECS pass: a user
whose socket is elsewhere and who sends through this process again and
again costs no Redis call per request. A process that believes it is alone
(no other heartbeat) answers from its registry and pays nothing for the
others.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Sequence

from server.registry import Registry
from storage.bus import PROCESS_ID_CHARS, Bus
from storage.entries import sockets_closed
from storage.cache import Cache

# The bound on remembering a remote socket as open if its close announcement is lost.
REMOTE_SOCKET_MEMORY_SECS = 30.0
REMOTE_SOCKET_MEMORY_SIZE = 100_000  # users


class OpenSockets:
    """Open sockets anywhere, asked of the registry, then of memory, then of the cache."""

    def __init__(self, registry: Registry, cache: Cache, bus: Bus, peers: Callable[[], int]) -> None:
        self.registry = registry
        self.cache = cache
        self.bus = bus
        self.peers = peers  # other live processes, as the last heartbeat saw them
        self._remote: dict[int, dict[str, float]] = {}  # user → their sockets known open elsewhere → until
        self._closes = 0  # SOCKETS_CLOSED entries applied so far (see require)

    async def require(self, user_id: int, socket_id: str | None) -> None:
        """Raise LookupError unless the user (that socket) is open on some process."""
        if self.registry.user_sockets(user_id, socket_id):
            return
        if self.peers():
            if self._known(user_id, socket_id):
                return
            closes_before = self._closes
            cached = await self.cache.sockets_of(user_id)
            if cached and (socket_id is None or socket_id in cached):
                # A close announced while Redis answered may be of one of
                # these: remember them only if none was.
                if self._closes == closes_before:
                    self._remember(user_id, cached if socket_id is None else {socket_id})
                return
        raise LookupError("no open socket")

    async def acting_for(self, user_id: int, socket_id: str | None) -> list[str]:
        """The sockets a request acts for: the one it names, or all the user's; LookupError if none."""
        local = self.registry.user_sockets(user_id, socket_id)
        if self.peers() and (socket_id is None or not local):
            cached = await self.cache.sockets_of(user_id)
            sockets = sorted(set(local) | (cached if socket_id is None else cached & {socket_id}))
        else:
            sockets = local
        if not sockets:
            raise LookupError("no open socket")
        return sockets

    async def announce_closed(self, sockets: Sequence[tuple[int, str]]) -> None:
        """Tell the other processes, which may remember them as open, of sockets closed here."""
        if self.peers():
            await self.bus.append([sockets_closed(sockets)])

    def closed_elsewhere(self, meta: dict[str, Any]) -> None:
        """Applying a SOCKETS_CLOSED entry: those sockets are not open any more."""
        self._closes += 1
        for user_id, socket_id in meta["s"]:
            self._forget(user_id, lambda known: known == socket_id)

    def process_died(self, process_id: str) -> None:
        self._forget(None, lambda socket_id: socket_id[:PROCESS_ID_CHARS] == process_id)

    def forget_all(self) -> None:
        """Redis lost the log, and with it the announcements of closes: ask the cache again."""
        self._remote.clear()

    def _known(self, user_id: int, socket_id: str | None) -> bool:
        known = self._remote.get(user_id)
        if not known:
            return False
        now = time.monotonic()
        if socket_id is not None:
            return known.get(socket_id, 0.0) > now
        return any(until > now for until in known.values())

    def _remember(self, user_id: int, socket_ids: Iterable[str]) -> None:
        if len(self._remote) >= REMOTE_SOCKET_MEMORY_SIZE:
            self._remote.clear()  # crude, and rare: asking Redis again is always right
        until = time.monotonic() + REMOTE_SOCKET_MEMORY_SECS
        mine = self.bus.process_id
        known = self._remote.setdefault(user_id, {})
        for socket_id in socket_ids:
            if socket_id[:PROCESS_ID_CHARS] != mine:
                known[socket_id] = until
        if not known:
            del self._remote[user_id]

    def _forget(self, user_id: int | None, matches: Callable[[str], bool]) -> None:
        """Forget remembered remote sockets that ``matches`` picks, of one user (or of everyone: None)."""
        for user in [user_id] if user_id is not None else list(self._remote):
            known = self._remote.get(user)
            if known is None:
                continue
            for socket_id in [s for s in known if matches(s)]:
                del known[socket_id]
            if not known:
                del self._remote[user]
