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

import asyncio
import dataclasses
import logging
import time
from typing import Any, Iterable

from server import events
from server.errors import AlreadyMember, NotAMember, SocketRequired, TooManyRequests
from server.locks import KeyedLocks
from server.ratelimit import RateLimiter, retry_after_secs
from server.registry import Connection, Registry
from server.settings import Settings
from storage.cache import Cache
from storage.database import Database, Draft, Profile, StoredMessage, default_profile

log = logging.getLogger("chat")

PAGE_MESSAGES = 100
PAGE_VIEW_MESSAGES = 50
PAGE_CONVERSATIONS = 100
GLOBAL_CHAT_ID = 0


@dataclasses.dataclass
class PendingMessage:
    draft: Draft
    profile: Profile
    result: asyncio.Future[int]


def _fail(result: asyncio.Future[int], error: BaseException) -> None:
    if not result.done():
        result.set_exception(error)


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
        self.settings = settings
        self.database = database
        self.cache = cache
        self.registry = registry
        self.locks = KeyedLocks()
        self.send_limiter = RateLimiter(settings.send_rate_limit)
        self._outboxes: dict[int, list[PendingMessage]] = {}  # conversation → messages awaiting commit
        self._closed_sockets: list[tuple[int, str]] = []  # (user, socket) ids still in the cache
        self._forgetting: asyncio.Future[None] | None = None  # the task emptying _closed_sockets

    def _require_socket(self, user_id: int, socket_id: str | None) -> list[str]:
        """Return the sockets a request acts for, or raise SocketRequired.

        The registry of this process's live connections answers: it is what
        the cached socket ids mirror, and asking it costs no round trip on
        every request. The cache's copy is for everything outside this
        process; it is kept in step on open, close and every refresh.
        """
        sockets = self.registry.user_sockets(user_id, socket_id)
        if not sockets:
            raise SocketRequired()
        return sockets

    # WebSocket lifecycle

    async def prepare_connection(self, user_id: int, name: str | None, avatar: str | None) -> Profile:
        """Store the profile a WebSocket launch carried, before the socket opens."""
        return await self.database.save_profile(user_id, name, avatar)

    async def open_connection(self, connection: Connection, profile: Profile) -> None:
        """Register an open socket, its rooms, and its id in the cache."""
        if self.registry.add(connection, profile):
            conversation_ids = await self.database.user_conversation_ids(connection.user_id)
            self.registry.set_rooms(connection.user_id, conversation_ids)
        await self.cache.add_socket(connection.user_id, connection.socket_id)

    async def close_connection(self, connection: Connection) -> None:
        """Forget a closed socket everywhere, telling viewers' audiences of changed counts."""
        changed = self.registry.remove(connection)
        if changed is None:
            return  # already forgotten (closed for slowness, or at shutdown)
        for conversation_id in changed:
            self._announce_viewers(conversation_id)
        self._closed_sockets.append((connection.user_id, connection.socket_id))
        await self._schedule_forgetting()

    def _schedule_forgetting(self) -> asyncio.Future[None]:
        """The task removing closed sockets' ids from the cache, started if none runs."""
        if self._forgetting is None or self._forgetting.done():
            self._forgetting = asyncio.ensure_future(self._forget_closed_sockets())
        return self._forgetting

    async def _forget_closed_sockets(self) -> None:
        """Remove closed sockets' ids from the cache, many per round trip.

        When thousands of sockets close at once (a network blip, a restart of
        a proxy) one cache call per socket would queue on the connection
        pool; sockets closing while a batch is on its way wait for the next.
        """
        while self._closed_sockets:
            batch, self._closed_sockets = self._closed_sockets, []
            try:
                await self.cache.remove_sockets(batch)
            except Exception:
                # They expire on their own within SOCKET_TTL_SECS.
                log.exception("could not remove %d closed socket ids from the cache", len(batch))

    async def close_all_connections(self) -> None:
        """Forget every socket (at shutdown), in one cache round trip."""
        for connection in self.registry.connections():
            self.registry.remove(connection)
            self._closed_sockets.append((connection.user_id, connection.socket_id))
        await self._schedule_forgetting()

    async def refresh_socket_cache(self) -> None:
        """Re-add every live socket id to the cache and push back its expiry."""
        await self.cache.refresh_sockets(self.registry.connected_users())

    # Messages

    async def get_messages(self, user_id: int, socket_id: str | None, chat: int, offset: int) -> list[dict[str, Any]]:
        """A page of a chat's messages; the global chat also subscribes the socket(s)."""
        sockets = self._require_socket(user_id, socket_id)
        if chat == GLOBAL_CHAT_ID:
            self.registry.subscribe_global(sockets)
        elif not await self.database.membership(chat, user_id):
            raise NotAMember()
        messages = await self.database.list_messages(chat, offset, PAGE_MESSAGES)
        return [events.message_item(m) for m in messages]

    async def send_message(self, user_id: int, socket_id: str | None, conversation_id: int, text: str) -> int:
        """Store a message and deliver it; return its id once it is committed and sent."""
        self._require_socket(user_id, socket_id)
        wait = self.send_limiter.take(user_id)
        if wait:
            raise TooManyRequests(retry_after_secs(wait))
        pending = PendingMessage(
            Draft(user_id, text, int(time.time())),
            # Taken now: the sender's last socket may close before the commit.
            self.registry.profile(user_id) or default_profile(user_id),
            asyncio.get_running_loop().create_future(),
        )
        outbox = self._outboxes.get(conversation_id)
        if outbox is None:
            self._outboxes[conversation_id] = [pending]
            asyncio.ensure_future(self._commit_outbox(conversation_id))
        else:
            outbox.append(pending)
        return await pending.result

    async def _commit_outbox(self, conversation_id: int) -> None:
        """Commit every message waiting for a conversation in one transaction, then deliver them.

        Messages that arrive while one batch commits wait for the next, so
        under load a conversation commits many messages per round of database
        work (group commit), and they are stored and delivered in one order.
        """
        async with self.locks.hold(conversation_id):
            batch = self._outboxes.pop(conversation_id)
            try:
                message_ids, members = await self.database.add_messages(
                    conversation_id, [pending.draft for pending in batch]
                )
            except Exception as error:
                for pending in batch:
                    _fail(pending.result, error)
                return
            stored = [
                (pending, message_id) for pending, message_id in zip(batch, message_ids) if message_id is not None
            ]
            if conversation_id != GLOBAL_CHAT_ID and stored:
                # Counters first: a receiver may ask for its list as soon as the event lands.
                set_to, add = unread_changes(members, [pending.draft.user_id for pending, _ in stored])
                await self._cache_quietly(self.cache.unread_on_messages(conversation_id, set_to, add), conversation_id)
            audience = (
                None if conversation_id == GLOBAL_CHAT_ID else self.registry.audience(conversation_id)
            )
            for pending, message_id in stored:
                frame = events.new_message(self._stored_message(conversation_id, message_id, pending))
                if audience is None:
                    self.registry.send_global(frame)
                else:
                    self.registry.send(audience, frame)
            for pending, message_id in zip(batch, message_ids):
                if message_id is None:
                    _fail(pending.result, NotAMember())
                elif not pending.result.done():
                    pending.result.set_result(message_id)

    @staticmethod
    def _stored_message(conversation_id: int, message_id: int, pending: PendingMessage) -> StoredMessage:
        draft, profile = pending.draft, pending.profile
        return StoredMessage(
            id=message_id, conversation_id=conversation_id, user_id=draft.user_id,
            name=profile.name, avatar=profile.avatar, text=draft.text, time=draft.time,
        )

    async def _cache_quietly(self, operation, conversation_id: int) -> None:
        """Apply a counter update after commit; if the cache fails, drop the counters instead.

        The database already holds the truth; a counter the cache could not
        update must not survive, or it would be wrong once the cache is back.
        """
        try:
            await operation
        except Exception:
            log.exception("unread counters of conversation %s not updated", conversation_id)
            try:
                await self.cache.unread_drop(conversation_id)
            except Exception:
                log.warning("could not drop the unread counters of conversation %s", conversation_id)

    # Conversations

    async def list_conversations(self, user_id: int, socket_id: str | None, mode: str, offset: int) -> list[dict[str, Any]]:
        """The user's conversations (``joined``) or the others (``new``), a page of them."""
        self._require_socket(user_id, socket_id)
        if mode == "new":
            rows = await self.database.new_conversations(user_id, offset, PAGE_CONVERSATIONS)
            return [
                {
                    "id": row.id, "name": row.name, "members": row.members,
                    "viewers": self.registry.viewer_count(row.id), "creator_id": row.creator_id,
                }
                for row in rows
            ]
        rows = await self.database.joined_conversations(user_id, offset, PAGE_CONVERSATIONS)
        unread = await self._unread_counts([row.id for row in rows], user_id)
        return [
            {
                "id": row.id, "name": row.name, "members": row.members,
                "unreadCount": unread.get(row.id, 0), "message": row.last_message or "",
                "senderAvatar": row.last_sender_avatar or "",
                "viewers": self.registry.viewer_count(row.id), "creator_id": row.creator_id,
            }
            for row in rows
        ]

    async def _unread_counts(self, conversation_ids: list[int], user_id: int) -> dict[int, int]:
        """The user's cached counters, rebuilding from the database those the cache lost."""
        counts = await self.cache.unread_get(conversation_ids, user_id)
        missing = [cid for cid, count in counts.items() if count is None]
        if missing:
            async with self.locks.hold(*missing):
                rebuilt = await self.database.unread_counts(missing)
                await self.cache.unread_prime(rebuilt)
            for conversation_id in missing:
                counts[conversation_id] = rebuilt[conversation_id].get(user_id, 0)
        return counts  # type: ignore[return-value]

    async def create_conversation(self, user_id: int, socket_id: str | None, name: str) -> int:
        """Create a conversation with the user as its first member; announce it to everyone."""
        self._require_socket(user_id, socket_id)
        conversation_id, _ = await self.database.create_conversation(user_id, name, int(time.time()))
        async with self.locks.hold(conversation_id):
            self.registry.join_room(conversation_id, user_id)
            profile = self.registry.profile(user_id) or default_profile(user_id)
            self.registry.send_all(events.new_conversation(conversation_id, name, profile.avatar))
        return conversation_id

    async def join(self, user_id: int, socket_id: str | None, conversation_id: int) -> list[dict[str, Any]]:
        """Make the user a member (ending their viewing); return the newest messages."""
        self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            await self.database.join(conversation_id, user_id, self.settings.max_members, int(time.time()))
            await self._cache_quietly(self.cache.unread_set(conversation_id, user_id, 0), conversation_id)
            self.registry.join_room(conversation_id, user_id)
            if self.registry.stop_viewing(conversation_id, user_id):
                self._announce_viewers(conversation_id)
            profile = self.registry.profile(user_id) or default_profile(user_id)
            self.registry.send_all(
                events.joined_conversation(conversation_id, user_id, profile.name, profile.avatar)
            )
            messages = await self.database.list_messages(conversation_id, 0, PAGE_MESSAGES)
        return [events.message_item(m) for m in messages]

    async def leave(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """End the user's membership; the last one out deletes the conversation."""
        self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            deleted = await self.database.leave(conversation_id, user_id)
            self.registry.leave_room(conversation_id, user_id)
            self.registry.send_all(events.leaved_conversation(conversation_id, user_id))
            if deleted:
                await self._forget_conversation(conversation_id)
            else:
                await self._cache_quietly(self.cache.unread_remove(conversation_id, user_id), conversation_id)

    async def delete(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Delete a conversation with everything in it; creator only."""
        self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            await self.database.delete_conversation(conversation_id, user_id)
            await self._forget_conversation(conversation_id)

    async def _forget_conversation(self, conversation_id: int) -> None:
        """After a committed delete: drop viewers (telling them), the room and counters."""
        if self.registry.viewer_count(conversation_id):
            self.registry.send(self.registry.audience(conversation_id), events.viewers_change(conversation_id, 0))
        self.registry.drop_conversation(conversation_id)
        self.registry.send_all(events.delete_conversation(conversation_id))
        await self._cache_quietly(self.cache.unread_drop(conversation_id), conversation_id)

    async def read(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Mark the conversation read for a member."""
        self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            await self.database.mark_read(conversation_id, user_id)
            await self._cache_quietly(self.cache.unread_set(conversation_id, user_id, 0), conversation_id)

    async def info(self, user_id: int, socket_id: str | None, conversation_id: int) -> dict[str, Any]:
        """A conversation with its members' profiles and its viewer count."""
        self._require_socket(user_id, socket_id)
        row, users = await self.database.conversation_info(conversation_id)
        return {
            "id": row.id, "name": row.name, "creator_id": row.creator_id, "members": row.members,
            "viewers": self.registry.viewer_count(row.id),
            "users": [{"user_id": uid, "name": name, "avatar": avatar} for uid, name, avatar in users],
        }

    # Viewers

    async def view(self, user_id: int, socket_id: str | None, conversation_id: int) -> list[dict[str, Any]]:
        """Start watching a conversation read-only; return its newest 50 messages."""
        sockets = self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            if await self.database.membership(conversation_id, user_id):
                raise AlreadyMember()
            if self.registry.start_viewing(conversation_id, user_id, sockets):
                self._announce_viewers(conversation_id)
            messages = await self.database.list_messages(conversation_id, 0, PAGE_VIEW_MESSAGES)
        return [events.message_item(m) for m in messages]

    async def stop_view(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Stop watching a conversation (not watching is fine)."""
        sockets = self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            if await self.database.membership(conversation_id, user_id):
                raise AlreadyMember()
            if self.registry.stop_viewing(conversation_id, user_id, sockets if socket_id else None):
                self._announce_viewers(conversation_id)

    def _announce_viewers(self, conversation_id: int) -> None:
        frame = events.viewers_change(conversation_id, self.registry.viewer_count(conversation_id))
        self.registry.send(self.registry.audience(conversation_id), frame)
