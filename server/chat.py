"""The chat's domain rules, knowing nothing of HTTP.

:class:`ChatService` is what every handler calls: one method per API route
plus the WebSocket open/close hooks. Each method checks the socket
precondition, runs its transaction in the database, and only then publishes
its events through the hub (``server/hub.py``), so an event never announces
anything that is not committed. Unread counters a receiver may read once an
event lands are updated in the cache before it is published; a deleted
conversation's (delete, last member leaving) are dropped after, since
nobody can read them any more.

Order. Every transaction that announces something about a chat numbers it
(``seq``, under the chat's row lock), and the hub appends it to the log in
that order whichever process committed it: every socket everywhere sees a
conversation's messages in id order, and nothing of it after its
``delete_conversation``. Within this process, everything that touches one
conversation also runs under its in-process lock, so this process's own
events need no waiting (``server/chain_order.py``). Unread counters carry the database's version
(``storage/cache.py``), so they stay exact whatever the order of updates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Hashable, Iterable, Sequence

from server import metrics, wire
from server.errors import AlreadyMember, NotAMember, SocketRequired, TooManyRequests
from server.groupcommit import GroupCommit
from server.chain_order import message_entry
from server.hub import Hub
from server.locks import KeyedLocks
from server.ratelimit import retry_after_secs
from server.registry import Connection, Registry
from server.settings import Settings
from server.socket_mirror import SocketMirror
from storage.entries import Entry, room_change
from storage.cache import Cache
from storage.database import Database
from storage.errors import StorageTimeout, is_storage_unavailable
from storage.records import (
    GLOBAL_CHAT_ID,
    CommittedBatch,
    ConversationInfo,
    ConversationSummary,
    Draft,
    Profile,
    Sequenced,
    StoredMessage,
)

log = logging.getLogger("chat")

PAGE_MESSAGES = 100
PAGE_VIEW_MESSAGES = 50
PAGE_CONVERSATIONS = 100
# Batches of handshakes' profile writes in flight at once (users spread over them by id).
PROFILE_WRITERS = 4


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


async def _nothing_to_deliver(*_: Any) -> None:
    return None


class ChatService:
    """The chat's rules over a database, a cache, the hub and the registry of live sockets."""

    def __init__(self, settings: Settings, database: Database, cache: Cache, registry: Registry, hub: Hub) -> None:
        self.database = database
        self.cache = cache
        self.registry = registry
        self.hub = hub
        self.max_members = settings.max_members
        self.max_sockets_per_user = settings.max_sockets_per_user
        self.locks = KeyedLocks()
        self.sockets = SocketMirror(cache, announce=hub.open_sockets.announce_closed)
        hub.on_retire = self._retire_now
        self._forgetting: set[asyncio.Future[None]] = set()  # cleanups of closed sockets still running
        self._closing_all = False
        # Everything else that touches a conversation waits while a batch of
        # its messages commits and is published.
        self.outbox: GroupCommit[PendingMessage, int] = GroupCommit(
            self._commit_messages, self._publish_messages, guard=self.locks.hold,
            deadline_secs=settings.db_timeout, deadline_error=lambda: StorageTimeout("no commit within the deadline"),
        )
        # Handshakes' profile writes, batched: a burst of first-time users
        # stores a batch per transaction instead of queueing one transaction
        # each for the pool (PROFILE_WRITERS batches in flight at once).
        self.profile_writes: GroupCommit[tuple[int, str | None, str | None], Profile] = GroupCommit(
            self._store_profiles, _nothing_to_deliver, guard=KeyedLocks().hold, counts_messages=False,
            deadline_secs=settings.db_timeout, deadline_error=lambda: StorageTimeout("save_profile took over the deadline"),
        )

    async def _require_socket(self, user_id: int, socket_id: str | None) -> None:
        """Raise SocketRequired unless the user (the socket named) is open on some process."""
        try:
            await self.hub.open_sockets.require(user_id, socket_id)
        except LookupError:
            raise SocketRequired() from None

    async def _sockets_for(self, user_id: int, socket_id: str | None) -> list[str]:
        """The sockets a subscription applies to: the one named, or all the user's; SocketRequired if none."""
        try:
            return await self.hub.open_sockets.acting_for(user_id, socket_id)
        except LookupError:
            raise SocketRequired() from None

    # WebSocket lifecycle

    def new_socket_id(self) -> str:
        return self.hub.new_socket_id()

    async def reserve_socket(
        self, user_id: int, socket_id: str, resuming: bool
    ) -> tuple[bool | None, Profile | None]:
        """Count a socket about to open against its user's cap (on every process); False if over it.

        A resume may go one over: it replaces its old socket, which may
        still look open (API.md §3). If True the id is in the cache from now
        on, and ``release_socket`` takes it out if the socket does not open
        after all; None: the cache is away, nothing was counted or recorded.
        Also the user's cached profile, for ``prepare_connection``.
        """
        cap = self.max_sockets_per_user
        if cap and resuming:
            cap += 1
        return await self.sockets.reserve(user_id, socket_id, cap)

    def release_socket(self, user_id: int, socket_id: str) -> None:
        """Take a reserved socket id out of the cache again (its handshake failed)."""
        self.sockets.closed(user_id, socket_id)

    async def prepare_connection(
        self, user_id: int, name: str | None, avatar: str | None, cached: Profile | None = None
    ) -> Profile:
        """Store the profile a WebSocket launch carried, before the socket opens.

        A launch that carries the cached profile (or none) changes nothing:
        no database call, which is most reconnects, and all of a restart's.
        """
        if cached is not None and cached.kept_by(name, avatar):
            return cached
        profile = await self.profile_writes.submit(user_id % PROFILE_WRITERS, (user_id, name, avatar))
        try:
            await self.cache.cache_profile(user_id, profile)
        except Exception as error:
            log.warning("profile of user %s not cached (%s); the next handshake stores it again", user_id, error)
        return profile

    async def _store_profiles(
        self, _writer: Hashable, launches: Sequence[tuple[int, str | None, str | None]]
    ) -> tuple[list[Profile], None]:
        return await self.database.save_profiles(launches), None

    async def open_connection(
        self, connection: Connection, profile: Profile, resume: str | None = None, mirrored: bool = False
    ) -> None:
        """Register an open socket (resuming an old one's place if asked) and mirror its id in the cache.

        If registering fails (the database is away) nothing of the socket
        remains: a socket that did not open leaves no trace.
        """
        try:
            first_frames, replaced = await self.hub.connect(connection, profile, resume)
            if replaced is not None:
                await self._retire(connection.user_id, replaced)
        except BaseException:
            await self.hub.disconnect(connection)
            if mirrored:
                self.release_socket(connection.user_id, connection.socket_id)
            raise
        # Mirrored before the greeting (reserve_socket did, unless the cache
        # was away): a client that has it may call any process at once.
        if not mirrored:
            await self.sockets.opened(connection.user_id, connection.socket_id)
        connection.release(first_frames)

    async def _retire(self, user_id: int, socket_id: str) -> None:
        """Close the socket a resume replaced, wherever it is, before the resume is answered (API.md §3).

        A phone that changed networks resumes before anyone noticed its old
        TCP connection died: the old socket counts as closed from now on.
        """
        old = self.registry.connection(socket_id)
        if old is None:
            await self.hub.retire_remote(user_id, socket_id)
            await self.sockets.closed(user_id, socket_id)
            return
        old.retire(wire.CLOSE_REPLACED, wire.REPLACED_REASON)
        await self.close_connection(old)

    def _retire_now(self, connection: Connection) -> None:
        """Retire a socket of this process that a resume on another one replaced."""
        connection.retire(wire.CLOSE_REPLACED, wire.REPLACED_REASON)
        self.forget_connection(connection)

    async def close_connection(self, connection: Connection) -> None:
        """Forget a closed socket everywhere; viewers' audiences learn of changed counts."""
        if await self.hub.disconnect(connection):
            await self.sockets.closed(connection.user_id, connection.socket_id)

    def forget_connection(self, connection: Connection) -> None:
        """Forget a closed socket in the background (its handler cannot wait); shutdown waits for it."""
        if self._closing_all:
            return  # close_all_connections forgets whatever is still registered
        cleanup = asyncio.ensure_future(self._forget_quietly(connection))
        self._forgetting.add(cleanup)
        cleanup.add_done_callback(self._forgetting.discard)

    async def _forget_quietly(self, connection: Connection) -> None:
        try:
            await self.close_connection(connection)
        except Exception:
            log.exception("cleanup of socket %s failed", connection.socket_id)

    async def close_all_connections(self) -> None:
        """Forget every socket (at shutdown): their ids in one cache round trip, their records in one more.

        Cleanups of sockets that closed just before still run on the storage;
        they finish first (each is bounded by the storage deadlines). Sockets
        that close from now on are left to this.
        """
        self._closing_all = True
        while self._forgetting:
            await asyncio.gather(*self._forgetting)
        for connection in await self.hub.disconnect_all(self.registry.connections()):
            self.sockets.closed(connection.user_id, connection.socket_id)
        await self.sockets.flush()

    async def refresh_socket_cache(self) -> None:
        """Re-add every live socket id to the cache and push back its expiry (and its record's)."""
        await self.sockets.refresh(self.registry.connected_users())
        await self.hub.refresh()

    # Messages

    async def get_messages(self, user_id: int, socket_id: str | None, chat: int, offset: int) -> list[StoredMessage]:
        """A page of a chat's messages; the global chat also subscribes the socket(s)."""
        if chat == GLOBAL_CHAT_ID:
            await self.hub.subscribe_global(user_id, await self._sockets_for(user_id, socket_id))
        else:
            await self._require_socket(user_id, socket_id)
            if user_id not in await self._member_ids(chat):
                raise NotAMember()
        return await self.database.list_messages(chat, offset, PAGE_MESSAGES)

    async def _member_ids(self, conversation_id: int) -> list[int]:
        """The members; NoSuchConversation (through storage's refusal) if it does not exist."""
        return await self.database.member_ids(conversation_id, must_exist=True)

    async def send_message(self, user_id: int, socket_id: str | None, conversation_id: int, text: str) -> int:
        """Store a message and publish it; return its id once it is committed and published."""
        await self._require_socket(user_id, socket_id)
        wait = await self.hub.take_send_token(user_id)
        if wait:
            raise TooManyRequests(retry_after_secs(wait))
        pending = PendingMessage(Draft(user_id, text, int(time.time())), await self.hub.profiles.of(user_id))
        return await self.outbox.submit(conversation_id, pending)

    async def _commit_messages(
        self, conversation_id: int, batch: Sequence[PendingMessage]
    ) -> tuple[list[int | BaseException], CommittedBatch]:
        """Commit a conversation's waiting messages in one transaction; the members come along."""
        committed = await self.database.add_messages(conversation_id, [pending.draft for pending in batch])
        return [NotAMember() if message_id is None else message_id for message_id in committed.message_ids], committed

    async def _publish_messages(
        self, conversation_id: int, batch: Sequence[PendingMessage], outcomes: Sequence[int | BaseException],
        committed: CommittedBatch,
    ) -> None:
        """Update unread counters, then publish the events of a committed batch."""
        stored = [(pending, mid) for pending, mid in zip(batch, outcomes) if isinstance(mid, int)]
        if not stored:
            return
        if conversation_id != GLOBAL_CHAT_ID:
            # Counters first: a receiver may ask for its list as soon as the event lands.
            set_to, add = unread_changes(committed.members, [pending.draft.user_id for pending, _ in stored])
            await self._cache_quietly(
                self.cache.unread_apply(conversation_id, committed.order.counter_version, set_to, add), conversation_id
            )
        entries = [
            message_entry(self._stored_message(conversation_id, message_id, pending), committed.members)
            for pending, message_id in stored
        ]
        await self.hub.chains.publish(conversation_id, committed.order, stored[-1][1], entries)

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
            metrics.count_storage_error(error)
            log.warning("unread counters of conversation %s not updated: %s", conversation_id, error)

    # Conversations

    async def list_conversations(
        self, user_id: int, socket_id: str | None, mode: str, offset: int
    ) -> list[ConversationSummary]:
        """The user's conversations (``joined``) or the others (``new``), a page of them."""
        await self._require_socket(user_id, socket_id)
        if mode == "new":
            rows = await self.database.new_conversations(user_id, offset, PAGE_CONVERSATIONS)
            viewers = await self.hub.viewer_counts([row.id for row in rows])
            return [ConversationSummary(row, viewers[row.id]) for row in rows]
        rows = await self.database.joined_conversations(user_id, offset, PAGE_CONVERSATIONS)
        viewers = await self.hub.viewer_counts([row.id for row in rows])
        unread = await self._unread_counts({row.id: row.counter_version for row in rows}, user_id)
        return [ConversationSummary(row, viewers[row.id], unread.get(row.id, 0)) for row in rows]

    async def _unread_counts(self, versions: dict[int, int], user_id: int) -> dict[int, int]:
        """The user's counters: cached where the cache is at the database's version, else rebuilt."""
        try:
            counts = await self.cache.unread_get(versions, user_id)
        except Exception as error:
            if not is_storage_unavailable(error):
                raise
            counts = dict.fromkeys(versions)  # the cache is away: count from the database
        missing = [cid for cid, count in counts.items() if count is None]
        if missing:
            rebuilt = await self.database.unread_counts(missing)
            await self._cache_quietly(self.cache.unread_prime(rebuilt), missing[0])
            for conversation_id in missing:
                found = rebuilt.get(conversation_id)
                counts[conversation_id] = found.counts.get(user_id, 0) if found is not None else 0
        return counts  # type: ignore[return-value]

    async def create_conversation(self, user_id: int, socket_id: str | None, name: str) -> int:
        """Create a conversation with the user as its first member; announce it to everyone."""
        await self._require_socket(user_id, socket_id)
        profile = await self.hub.profiles.of(user_id)
        conversation_id, message_id = await self.database.create_conversation(user_id, name, int(time.time()))
        async with self.locks.hold(conversation_id):
            await self.hub.chains.publish(
                conversation_id, CREATED, message_id,
                [room_change("join", conversation_id, user_id, wire.new_conversation(conversation_id, name, profile.avatar))],
            )
        return conversation_id

    async def join(self, user_id: int, socket_id: str | None, conversation_id: int) -> list[StoredMessage]:
        """Make the user a member (ending their viewing); return the newest messages."""
        await self._require_socket(user_id, socket_id)
        profile = await self.hub.profiles.of(user_id)
        async with self.locks.hold(conversation_id):
            messages, order = await self.database.join(
                conversation_id, user_id, self.max_members, int(time.time()), PAGE_MESSAGES
            )
            await self._cache_quietly(
                self.cache.unread_apply(conversation_id, order.counter_version, {user_id: 0}), conversation_id
            )
            await self.hub.change_viewers(
                conversation_id, user_id, [], False, await self.database.member_ids(conversation_id)
            )
            await self.hub.chains.publish(
                conversation_id, order, order.last_message_id,
                [room_change("join", conversation_id, user_id,
                             wire.joined_conversation(conversation_id, user_id, profile.name, profile.avatar))],
            )
        return messages

    async def leave(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """End the user's membership; the last one out deletes the conversation."""
        await self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            deleted, order = await self.database.leave(conversation_id, user_id)
            left = room_change("leave", conversation_id, user_id, wire.leaved_conversation(conversation_id, user_id))
            if deleted:
                await self.hub.chains.publish(
                    conversation_id, order, order.last_message_id, [left, _deleted(conversation_id)],
                    closes=True, members=[],  # the last member has left: only viewers hear the count
                )
                await self._cache_quietly(self.cache.unread_drop(conversation_id), conversation_id)
                return
            await self._cache_quietly(
                self.cache.unread_apply(conversation_id, order.counter_version, {}, remove=[user_id]),
                conversation_id,
            )
            await self.hub.chains.publish(conversation_id, order, order.last_message_id, [left])

    async def delete(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Delete a conversation with everything in it; creator only."""
        await self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            order, members = await self.database.delete_conversation(conversation_id, user_id)
            # Closing the chat in the log announces viewers: 0 first, and nothing of it after.
            await self.hub.chains.publish(
                conversation_id, order, order.last_message_id, [_deleted(conversation_id)],
                closes=True, members=members,
            )
            await self._cache_quietly(self.cache.unread_drop(conversation_id), conversation_id)

    async def read(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Mark the conversation read for a member."""
        await self._require_socket(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            version = await self.database.mark_read(conversation_id, user_id)
            await self._cache_quietly(self.cache.unread_apply(conversation_id, version, {user_id: 0}), conversation_id)

    async def info(self, user_id: int, socket_id: str | None, conversation_id: int) -> ConversationInfo:
        """A conversation with its members' profiles and its viewer count."""
        await self._require_socket(user_id, socket_id)
        row, users = await self.database.conversation_info(conversation_id)
        viewers = await self.hub.viewer_counts([row.id])
        return ConversationInfo(row, viewers[row.id], users)

    # Viewers

    async def view(self, user_id: int, socket_id: str | None, conversation_id: int) -> list[StoredMessage]:
        """Start watching a conversation read-only; return its newest 50 messages."""
        sockets = await self._sockets_for(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            members = await self._member_ids(conversation_id)
            if user_id in members:
                raise AlreadyMember()
            await self.hub.change_viewers(conversation_id, user_id, sockets, True, members)
            return await self.database.list_messages(conversation_id, 0, PAGE_VIEW_MESSAGES)

    async def stop_view(self, user_id: int, socket_id: str | None, conversation_id: int) -> None:
        """Stop watching a conversation (not watching is fine)."""
        sockets = await self._sockets_for(user_id, socket_id)
        async with self.locks.hold(conversation_id):
            members = await self._member_ids(conversation_id)
            if user_id in members:
                raise AlreadyMember()
            await self.hub.change_viewers(conversation_id, user_id, sockets if socket_id else [], False, members)


# A conversation's creation is its first event (storage/conversations.py).
CREATED = Sequenced(seq=1, last_message_id=0)


def _deleted(conversation_id: int) -> Entry:
    return room_change("drop", conversation_id, None, wire.delete_conversation(conversation_id))
