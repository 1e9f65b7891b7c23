"""The chat's domain rules, knowing nothing of HTTP.

:class:`ChatService` is what every handler calls: one method per API route
plus the WebSocket open/close hooks. Each method checks the socket
precondition, runs its transaction in the database, updates the cache and the
registry, and only then sends events, so an event never announces anything
that is not committed.

Everything that touches one conversation (sending, joining, leaving, reading,
viewing, deleting, rebuilding its unread counters) runs under that
conversation's in-process lock, from the transaction to the last event. That
is what keeps events in commit order (every socket sees a conversation's
messages in id order, and none after its ``delete_conversation``) and keeps
the cached unread counters equal to what the database says.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Iterable, Sequence

from server import wire
from server.errors import AlreadyMember, NotAMember, SocketRequired, TooManyRequests
from server.groupcommit import GroupCommit
from server.locks import KeyedLocks
from server.ratelimit import RateLimiter, retry_after_secs
from server.registry import Connection, Registry
from server.settings import Settings
from server.socket_mirror import SocketMirror
from storage.cache import Cache
from storage.database import Database
from storage.errors import StorageTimeout
from storage.records import (
    GLOBAL_CHAT_ID,
    CommittedBatch,
    ConversationInfo,
    ConversationSummary,
    Draft,
    Profile,
    StoredMessage,
    default_profile,
)

log = logging.getLogger("chat")

PAGE_MESSAGES = 100
PAGE_VIEW_MESSAGES = 50
PAGE_CONVERSATIONS = 100


@dataclasses.dataclass(frozen=True)
class PendingMessage:
    draft: Draft
    profile: Profile  # taken at send: the sender's last socket may close before the commit


def unread_changes(members: Iterable[int], senders: list[int]) -> tuple[dict[int, int], dict[int, int]]:
    """How a batch of messages (their senders, in order) changes each member's unread count.

    A sender's count becomes the number of messages after their own last
    one; everyone else's grows by the size of the batch.
    """
    last_sent = {sender: index for index, sender in enumerate(senders)}
    set_to = {member: len(senders) - 1 - last_sent[member] for member in members if member in last_sent}
    add = {member: len(senders) for member in members if member not in last_sent}
    return set_to, add


class ChatService:
    """The chat's rules over a database, a cache and the registry of live sockets."""

    def __init__(self, settings: Settings, database: Database, cache: Cache, registry: Registry) -> None:
        self.database = database
        self.cache = cache
        self.registry = registry
        self.max_members = settings.max_members
        self.locks = KeyedLocks()
        self.send_limiter = RateLimiter(settings.send_rate_limit)
        self.sockets = SocketMirror(cache)
        # Everything else that touches a conversation waits while a batch of
        # its messages commits and is delivered, so events go out in commit order.
        self.outbox: GroupCommit[PendingMessage, int] = GroupCommit(
            self._commit_messages, self._deliver_messages, guard=self.locks.hold,
            deadline_secs=settings.db_timeout, deadline_error=lambda: StorageTimeout("no commit within the deadline"),
        )

    def _require_socket(self, user_id: int, socket_id: str | None) -> list[str]:
        """Return the sockets a request acts for, or raise SocketRequired.

        The registry of this process's live connections answers: it is what
        the cached socket ids mirror, and asking it costs no round trip on
        every request.
        """
        sockets = self.registry.user_sockets(user_id, socket_id)
        if not sockets:
            raise SocketRequired()
        return sockets

    def _profile(self, user_id: int) -> Profile:
        return self.registry.profile(user_id) or default_profile(user_id)

    # WebSocket lifecycle

    async def prepare_connection(self, user_id: int, name: str | None, avatar: str | None) -> Profile:
        """Store the profile a WebSocket launch carried, before the socket opens."""
        return await self.database.save_profile(user_id, name, avatar)

    async def open_connection(self, connection: Connection, profile: Profile) -> None:
        """Register an open socket with its rooms, and mirror its id in the cache.

        If loading the rooms fails the socket is forgotten again before the
        error propagates: a socket that did not open leaves no trace.
        """
        if self.registry.add(connection, profile):
            try:
                conversation_ids = await self.database.user_conversation_ids(connection.user_id)
            except BaseException:
                self.registry.remove(connection)
                raise
            self.registry.set_rooms(connection.user_id, conversation_ids)
        await self.sockets.opened(connection.user_id, connection.socket_id)

    async def close_connection(self, connection: Connection) -> None:
        """Forget a closed socket everywhere, telling viewers' audiences of changed counts."""
        changed = self.registry.remove(connection)
        if changed is None:
            return  # already forgotten (closed for slowness, or at shutdown)
        for conversation_id in changed:
            self._announce_viewers(conversation_id)
        await self.sockets.closed(connection.user_id, connection.socket_id)

    async def close_all_connections(self) -> None:
        """Forget every socket (at shutdown), in one cache round trip."""
        for connection in self.registry.connections():
            self.registry.remove(connection)
            self.sockets.closed(connection.user_id, connection.socket_id)
        await self.sockets.flush()

    async def refresh_socket_cache(self) -> None:
        """Re-add every live socket id to the cache and push back its expiry."""
        await self.sockets.refresh(self.registry.connected_users())

    # Messages

    async def get_messages(self, user_id: int, socket_id: str | None, chat: int, offset: int) -> list[StoredMessage]:
        """A page of a chat's messages; the global chat also subscribes the socket(s)."""
        sockets = self._require_socket(user_id, socket_id)
        if chat == GLOBAL_CHAT_ID:
            self.registry.subscribe_global(sockets)
        elif not await self.database.membership(chat, user_id):
            raise NotAMember()
        return await self.database.list_messages(chat, offset, PAGE_MESSAGES)

    async def send_message(self, user_id: int, socket_id: str | None, conversation_id: int, text: str) -> int:
        """Store a message and deliver it; return its id once it is committed and sent."""
        self._require_socket(user_id, socket_id)
        wait = self.send_limiter.take(user_id)
        if wait:
            raise TooManyRequests(retry_after_secs(wait))
        pending = PendingMessage(Draft(user_id, text, int(time.time())), self._profile(user_id))
        return await self.outbox.submit(conversation_id, pending)

    async def _commit_messages(
        self, conversation_id: int, batch: Sequence[PendingMessage]
    ) -> tuple[list[int | BaseException], list[int]]:
        """Commit a conversation's waiting messages in one transaction; the members come along."""
        committed = await self.database.add_messages(conversation_id, [pending.draft for pending in batch])
        return [NotAMember() if message_id is None else message_id for message_id in committed.message_ids], committed

    async def _deliver_messages(
        self, conversation_id: int, batch: Sequence[PendingMessage], outcomes: Sequence[int | BaseException],
        committed: CommittedBatch,
    ) -> None:
        """Update unread counters, then send the events of a committed batch."""
        stored = [(pending, mid) for pending, mid in zip(batch, outcomes) if isinstance(mid, int)]
        if conversation_id != GLOBAL_CHAT_ID and stored:
            # Counters first: a receiver may ask for its list as soon as the event lands.
            set_to, add = unread_changes(committed.members, [pending.draft.user_id for pending, _ in stored])
            await self._cache_quietly(
                self.cache.unread_apply(conversation_id, committed.order.counter_version, set_to, add), conversation_id
            )
        audience = None if conversation_id == GLOBAL_CHAT_ID else self.registry.audience(conversation_id)
        for pending, message_id in stored:
            frame = wire.new_message(self._stored_message(conversation_id, message_id, pending))
            if audience is None:
                self.registry.send_global(frame)
            else:
                self.registry.send(audience, frame)

    @staticmethod
    def _stored_message(conversation_id: int, message_id: int, pending: PendingMessage) -> StoredMessage:
        draft, profile = pending.draft, pending.profile
        return StoredMessage(
            id=message_id, conversation_id=conversation_id, user_id=draft.user_id,
            name=profile.name, avatar=profile.avatar, text=draft.text, time=draft.time,
        )

    async def _cache_quietly(self, operation, conversation_id: int) -> None:
        """Apply a counter update after commit; a failure only logs.

        The database already holds the truth, and counters that missed this
        update no longer match its version, so nobody is served them again.
        """
        try:
            await operation
        except Exception as error:
            log.warning("unread counters of conversation %s not updated: %s", conversation_id, error)

    # Conversations

    async def list_conversations(
        self, user_id: int, socket_id: str | None, mode: str, offset: int
    ) -> list[ConversationSummary]:
        """The user's conversations (``joined``) or the others (``new``), a page of them."""
        self._require_socket(user_id, socket_id)
        if mode == "new":
            rows = await self.database.new_conversations(user_id, offset, PAGE_CONVERSATIONS)
            return [ConversationSummary(row, self.registry.viewer_count(row.id)) for row in rows]
        rows = await self.database.joined_conversations(user_id, offset, PAGE_CONVERSATIONS)
        unread = await self._unread_counts({row.id: row.counter_version for row in rows}, user_id)
        return [
            ConversationSummary(row, self.registry.viewer_count(row.id), unread.get(row.id, 0)) for row in rows
        ]

    async def _unread_counts(self, versions: dict[int, int], user_id: int) -> dict[int, int]:
        """The user's counters: cached where the cache is at the database's version, else rebuilt."""
        counts = await self.cache.unread_get(versions, user_id)
        missing = [cid for cid, count in counts.items() if count is None]
        if missing:
            rebuilt = await self.database.unread_counts(missing)
            await self._cache_quietly(self.cache.unread_prime(rebuilt), missing[0])
            for conversation_id in missing:
                counts[conversation_id] = rebuilt[conversation_id].counts.get(user_id, 0) if conversation_id in rebuilt else 0
        return counts  # type: ignore[return-value]

    async def create_conversation(self, user_id: int, socket_id: str | None, name: str) -> int:
        """Create a conversation with the user as its first member; announce it to everyone."""
        self._require_socket(user_id, socket_id)
        conversation_id, _ = await self.database.create_conversation(user_id, name, int(time.time()))
        async with self.locks.hold(conversation_id):
            self.registry.join_room(conversation_id, user_id)
            self.registry.send_all(wire.new_conversation(conversation_id, name, self._profile(user_id).avatar))
        return conversation_id

    async def join(self, user_id: int, socket_id: str | None, conversation_id: int) -> list[StoredMessage]:
        """Make the user a member (ending their viewing); return the newest messages."""
        self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            messages, order = await self.database.join(
                conversation_id, user_id, self.max_members, int(time.time()), PAGE_MESSAGES
            )
            await self._cache_quietly(
                self.cache.unread_apply(conversation_id, order.counter_version, {user_id: 0}), conversation_id
            )
            self.registry.join_room(conversation_id, user_id)
            if self.registry.stop_viewing(conversation_id, user_id):
                self._announce_viewers(conversation_id)
            profile = self._profile(user_id)
            self.registry.send_all(wire.joined_conversation(conversation_id, user_id, profile.name, profile.avatar))
        return messages

    async def leave(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """End the user's membership; the last one out deletes the conversation."""
        self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            deleted, order = await self.database.leave(conversation_id, user_id)
            self.registry.leave_room(conversation_id, user_id)
            self.registry.send_all(wire.leaved_conversation(conversation_id, user_id))
            if deleted:
                await self._forget_conversation(conversation_id)
            else:
                await self._cache_quietly(
                    self.cache.unread_apply(conversation_id, order.counter_version, {}, remove=[user_id]),
                    conversation_id,
                )

    async def delete(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Delete a conversation with everything in it; creator only."""
        self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            await self.database.delete_conversation(conversation_id, user_id)
            await self._forget_conversation(conversation_id)

    async def _forget_conversation(self, conversation_id: int) -> None:
        """After a committed delete: drop viewers (telling them), the room and counters."""
        if self.registry.viewer_count(conversation_id):
            self.registry.send(self.registry.audience(conversation_id), wire.viewers_change(conversation_id, 0))
        self.registry.drop_conversation(conversation_id)
        self.registry.send_all(wire.delete_conversation(conversation_id))
        await self._cache_quietly(self.cache.unread_drop(conversation_id), conversation_id)

    async def read(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Mark the conversation read for a member."""
        self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            version = await self.database.mark_read(conversation_id, user_id)
            await self._cache_quietly(self.cache.unread_apply(conversation_id, version, {user_id: 0}), conversation_id)

    async def info(self, user_id: int, socket_id: str | None, conversation_id: int) -> ConversationInfo:
        """A conversation with its members' profiles and its viewer count."""
        self._require_socket(user_id, socket_id)
        row, users = await self.database.conversation_info(conversation_id)
        return ConversationInfo(row, self.registry.viewer_count(row.id), users)

    # Viewers

    async def view(self, user_id: int, socket_id: str | None, conversation_id: int) -> list[StoredMessage]:
        """Start watching a conversation read-only; return its newest 50 messages."""
        sockets = self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            if await self.database.membership(conversation_id, user_id):
                raise AlreadyMember()
            if self.registry.start_viewing(conversation_id, user_id, sockets):
                self._announce_viewers(conversation_id)
            return await self.database.list_messages(conversation_id, 0, PAGE_VIEW_MESSAGES)

    async def stop_view(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Stop watching a conversation (not watching is fine)."""
        sockets = self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            if await self.database.membership(conversation_id, user_id):
                raise AlreadyMember()
            if self.registry.stop_viewing(conversation_id, user_id, sockets if socket_id else None):
                self._announce_viewers(conversation_id)

    def _announce_viewers(self, conversation_id: int) -> None:
        frame = wire.viewers_change(conversation_id, self.registry.viewer_count(conversation_id))
        self.registry.send(self.registry.audience(conversation_id), frame)
