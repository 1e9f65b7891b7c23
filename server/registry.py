"""The in-process registry of open sockets and what each listens to.

Members need no rooms here: a conversation's event names its members (as
the transaction that committed it saw them), and a member's every socket
gets it (``conversation_audience``); a resume's replay decides from the same
facts (``server/resume.py``). What is kept per *socket* is what a request may
scope with ``X-Socket-Id``: the global chat and viewing. Everything changes
only through the named methods below, which the hub calls (``server/hub.py``:
on a socket's open and close, and as it applies the event log, where
subscription changes arrive in order with the events); the WebSocket handler
never touches the registry itself. Delivery never touches the database or
the cache. A connection's ``send`` only queues a frame, so sending to many
sockets never waits on any one of them.
"""

from __future__ import annotations

from typing import Collection, Iterable, Protocol, Sequence

from server import metrics
from storage.records import Profile


class Connection(Protocol):
    """What the registry needs from an open socket."""

    socket_id: str
    user_id: int
    position_key: str  # the socket's secret part of its positions (server/wire.py)
    position_tail: bytes  # what ends this socket's positions: its id, its key and the frame's closing

    def send(self, frame: bytes) -> None:
        """Queue a pre-encoded frame; never blocks, never raises."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection."""

    def release(self, first: "Sequence[bytes]") -> None:
        """Send ``first``, then the frames held since the socket was registered."""

    def retire(self, code: int, reason: str) -> None:
        """Close now, without the usual cleanup on close: whoever retires the socket forgets it."""


class Registry:
    """This process's open sockets, who they belong to, and what each listens to."""

    def __init__(self) -> None:
        self._sockets: dict[str, Connection] = {}  # socket id → open connection
        self._user_sockets: dict[int, set[str]] = {}  # user id → their open socket ids
        self._profiles: dict[int, Profile] = {}  # connected user id → name and avatar
        self._global: set[str] = set()  # sockets subscribed to the global chat
        self._viewers: dict[int, dict[int, set[str]]] = {}  # conversation → viewing user → sockets
        self._socket_views: dict[str, set[int]] = {}  # socket → conversations it views

    # Sockets

    def add(self, connection: Connection, profile: Profile) -> bool:
        """Register an open socket; return True if it is the user's first."""
        self._sockets[connection.socket_id] = connection
        sockets = self._user_sockets.setdefault(connection.user_id, set())
        sockets.add(connection.socket_id)
        self._profiles[connection.user_id] = profile
        return len(sockets) == 1

    def remove(self, connection: Connection) -> list[int] | None:
        """Forget a closed socket and all it listened to.

        Return the conversations it was viewing, or None if the socket was
        not registered (already forgotten).
        """
        socket_id, user_id = connection.socket_id, connection.user_id
        if self._sockets.get(socket_id) is not connection:
            return None
        del self._sockets[socket_id]
        self._global.discard(socket_id)
        changed = list(self._socket_views.get(socket_id, ()))
        for conversation_id in changed:
            self.stop_viewing(conversation_id, user_id, [socket_id])
        sockets = self._user_sockets[user_id]
        sockets.discard(socket_id)
        if not sockets:
            del self._user_sockets[user_id]
            del self._profiles[user_id]
        return changed

    def user_sockets(self, user_id: int, socket_id: str | None = None) -> list[str]:
        """The socket a request named, or all the user's open sockets."""
        sockets = self._user_sockets.get(user_id, set())
        if socket_id is not None:
            return [socket_id] if socket_id in sockets else []
        return list(sockets)

    def connected_users(self) -> dict[int, set[str]]:
        return {user_id: set(sockets) for user_id, sockets in self._user_sockets.items()}

    def connections(self) -> list[Connection]:
        return list(self._sockets.values())

    def connection(self, socket_id: str) -> Connection | None:
        return self._sockets.get(socket_id)

    def socket_state(self, socket_id: str) -> tuple[bool, list[int]]:
        """What a socket listens to beyond its user's memberships: (global chat, conversations viewed)."""
        return socket_id in self._global, sorted(self._socket_views.get(socket_id, ()))

    def profile(self, user_id: int) -> Profile | None:
        return self._profiles.get(user_id)

    def drop_conversation(self, conversation_id: int) -> None:
        """Forget a deleted conversation's viewers."""
        for sockets in self._viewers.pop(conversation_id, {}).values():
            for socket_id in sockets:
                self._socket_views.get(socket_id, set()).discard(conversation_id)
                if not self._socket_views.get(socket_id, True):
                    del self._socket_views[socket_id]

    # Subscriptions

    def subscribe_global(self, socket_ids: Iterable[str]) -> None:
        # A socket may have closed while the request that names it was waiting.
        self._global.update(s for s in socket_ids if s in self._sockets)

    def start_viewing(self, conversation_id: int, user_id: int, socket_ids: Iterable[str]) -> bool:
        """Subscribe sockets to a conversation as a viewer; return True if the count grew."""
        viewers = self._viewers.setdefault(conversation_id, {})
        was_viewing = user_id in viewers
        sockets = viewers.setdefault(user_id, set())
        for socket_id in socket_ids:
            if socket_id not in self._sockets:
                continue  # closed while the request that names it was waiting
            sockets.add(socket_id)
            self._socket_views.setdefault(socket_id, set()).add(conversation_id)
        if not sockets:
            del viewers[user_id]
        if not viewers:
            del self._viewers[conversation_id]
        return not was_viewing and user_id in viewers

    def stop_viewing(
        self, conversation_id: int, user_id: int, socket_ids: Iterable[str] | None = None
    ) -> bool:
        """Unsubscribe the sockets (all the user's if None); return True if the count fell."""
        viewers = self._viewers.get(conversation_id, {})
        sockets = viewers.get(user_id)
        if sockets is None:
            return False
        for socket_id in list(sockets) if socket_ids is None else socket_ids:
            sockets.discard(socket_id)
            views = self._socket_views.get(socket_id)
            if views is not None:
                views.discard(conversation_id)
                if not views:
                    del self._socket_views[socket_id]
        if sockets:
            return False
        del viewers[user_id]
        if not viewers:
            del self._viewers[conversation_id]
        return True

    def viewer_count(self, conversation_id: int) -> int:
        """Distinct users viewing a conversation through this process's sockets."""
        return len(self._viewers.get(conversation_id, ()))

    # Delivery

    def conversation_audience(self, conversation_id: int, member_ids: Iterable[int]) -> set[str]:
        """Sockets that get a conversation's event: the members' (as the event names them) and the viewing ones.

        The members come from the event, as in a resume's replay
        (``Entry.reaches``, storage/entries.py): live delivery and replay decide
        from the same facts. (A viewer who joins stops viewing before the
        join is applied, and still gets the count that says so.)
        """
        socket_ids = {socket_id for user_id in member_ids for socket_id in self._user_sockets.get(user_id, ())}
        for sockets in self._viewers.get(conversation_id, {}).values():
            socket_ids.update(sockets)
        return socket_ids

    def global_sockets(self) -> list[str]:
        return list(self._global)

    def send(self, socket_ids: Collection[str], position_head: bytes) -> int:
        """Send a frame to sockets, each with its own position: ``position_head`` (the frame, open) + its tail.

        Return how many sockets it went to.
        """
        # Counted once per fan-out, not per frame (that would show at 100k frames/s).
        metrics.EVENTS_DELIVERED.inc(len(socket_ids))
        for socket_id in socket_ids:
            connection = self._sockets.get(socket_id)
            if connection is not None:
                connection.send(position_head + connection.position_tail)
        return len(socket_ids)

    def send_all(self, position_head: bytes) -> int:
        connections = list(self._sockets.values())
        for connection in connections:
            connection.send(position_head + connection.position_tail)
        metrics.EVENTS_DELIVERED.inc(len(connections))
        return len(connections)

    def size(self) -> dict[str, int]:
        """How many entries each table holds (all zero when nobody is connected)."""
        return {
            "sockets": len(self._sockets), "users": len(self._user_sockets),
            "profiles": len(self._profiles), "global": len(self._global),
            "viewers": len(self._viewers), "socket_views": len(self._socket_views),
        }
