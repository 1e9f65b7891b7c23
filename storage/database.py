"""The system of record: one :class:`Database` per process, MySQL or SQLite.

Each public method is one short transaction (or one read) and returns plain
rows; the rules it enforces inside the transaction are the ones that must hold
under concurrency (membership, the member limit, deleting exactly once), so
they are decided by the database: a locked conversation row and conditional
updates, never a check in Python followed by a write.

Every operation has a deadline (``timeout_secs``, the setting
``CHAT_DB_TIMEOUT``): connecting, waiting for a pooled connection, the
statements and the commit together. Past it the operation is cancelled and
raises StorageTimeout (503 to the client); SQLAlchemy closes a connection
cancelled mid-statement instead of returning it to the pool, so a frozen
server leaves no half-used connection behind.

SQLite has one writer at a time; rather than letting concurrent writers fail
with "database is locked", write transactions on SQLite queue on an
in-process lock (the server is one process). MySQL needs no such lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
import functools
from typing import Any, AsyncIterator, Awaitable, Callable, NamedTuple, ParamSpec, Sequence, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import bindparam, case, delete, event, exists, func, insert, select, text, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker, create_async_engine

from storage import deadline
from storage.errors import (
    AlreadyMember,
    ConversationMissing,
    MembersFull,
    NameTaken,
    NotCreator,
    NotMember,
    StorageTimeout,
)
from storage.models import Conversation, GlobalChat, Member, Message, User
from storage.records import (
    CONVERSATION_CREATED_TEXT,
    GLOBAL_CHAT_ID,
    CommittedBatch,
    ConversationRow,
    Draft,
    Profile,
    Sequenced,
    StoredMessage,
    UnreadCounts,
    default_profile,
)

P = ParamSpec("P")
T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# MySQL's "deadlock found, try restarting the transaction": InnoDB picked this
# transaction as the victim (concurrent inserts of one unique key can do it).
MYSQL_DEADLOCK = 1213
TRANSACTION_ATTEMPTS = 3
DEFAULT_TIMEOUT_SECS = 5.0

# The send path runs on Core tables: ORM-enabled statements cost a measurable
# share of its CPU (see docs/BENCHMARKS.md) and nothing here needs objects.
CONVERSATIONS = Conversation.__table__
MEMBERS = Member.__table__
MESSAGES = Message.__table__
GLOBAL_CHAT = GlobalChat.__table__
GLOBAL_CHAT_ROW = 1

# The send path's statements, built once: building a statement and its cache
# key on every call cost as much as the rest of the transaction's Python
# (0.6-0.7 ms of CPU against 1.2-1.5 ms per transaction with a session, on MariaDB: docs/BENCHMARKS.md).
# The conversation row with every member, locked until commit (lock_conversation).
# MySQL 8 locks the conversation row only (OF); MariaDB, which has no OF, locks
# the member rows read as well, which changes nothing: whoever writes a member
# row holds its conversation's lock first.
LOCK_CONVERSATION = (
    select(
        CONVERSATIONS.c.seq, CONVERSATIONS.c.last_message_id, CONVERSATIONS.c.counter_version,
        CONVERSATIONS.c.creator_id, CONVERSATIONS.c.members_count, MEMBERS.c.user_id,
    )
    .outerjoin(MEMBERS, MEMBERS.c.conversation_id == CONVERSATIONS.c.id)
    .where(CONVERSATIONS.c.id == bindparam("conversation"))
    .with_for_update(of=CONVERSATIONS)
)
MOVE_CONVERSATION_HEAD = (
    update(CONVERSATIONS)
    .where(CONVERSATIONS.c.id == bindparam("conversation"))
    .values(last_message_id=bindparam("last"), seq=bindparam("seq"), counter_version=bindparam("version"))
)
MOVE_READ_MARK = (
    update(MEMBERS)
    .where(MEMBERS.c.conversation_id == bindparam("conversation"), MEMBERS.c.user_id == bindparam("user"))
    .values(last_read_message_id=bindparam("read"))
)
LOCK_GLOBAL_CHAT = (
    select(GLOBAL_CHAT.c.seq, GLOBAL_CHAT.c.last_message_id).where(GLOBAL_CHAT.c.id == GLOBAL_CHAT_ROW).with_for_update()
)
MOVE_GLOBAL_HEAD = (
    update(GLOBAL_CHAT).where(GLOBAL_CHAT.c.id == GLOBAL_CHAT_ROW).values(seq=bindparam("seq"), last_message_id=bindparam("last"))
)
INSERT_MESSAGE = insert(MESSAGES)
INSERT_MESSAGES_RETURNING = insert(MESSAGES).returning(MESSAGES.c.id, sort_by_parameter_order=True)


@contextlib.asynccontextmanager
async def _invalidated_if_cancelled(holder: Any) -> AsyncIterator[Any]:
    """Yield a session or connection; close it at the end, and invalidate it first if cancelled (see Database._session)."""
    try:
        yield holder
    except asyncio.CancelledError:
        try:
            await holder.invalidate()
        except Exception:  # already broken: nothing more to release
            pass
        raise
    finally:
        await holder.close()


def bounded(operation: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Give a Database method the database's deadline; past it, StorageTimeout.

    Outside ``retried``: one deadline for the operation, retries included.
    The cancellation also ends a wait for the SQLite write lock or the pool.
    """

    @functools.wraps(operation)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        database = args[0]
        try:
            async with deadline.timeout(database.timeout_secs):  # type: ignore[attr-defined]
                return await operation(*args, **kwargs)
        except TimeoutError:
            raise StorageTimeout(f"{operation.__name__} took over {database.timeout_secs:g} s") from None  # type: ignore[attr-defined]

    return run


def retried(transaction: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run a whole transaction again when MySQL rolls it back as a deadlock victim."""

    @functools.wraps(transaction)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                return await transaction(*args, **kwargs)
            except OperationalError as error:
                code = error.orig.args[0] if error.orig is not None and error.orig.args else None
                if code != MYSQL_DEADLOCK or attempt == TRANSACTION_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    return run


class Database:
    """Engine, sessions and the transactions the chat service runs."""

    def __init__(self, url: str, timeout_secs: float = DEFAULT_TIMEOUT_SECS) -> None:
        parsed = make_url(url)
        self.timeout_secs = timeout_secs
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        engine_options: dict = {}
        if self.is_sqlite:
            Path(parsed.database or ".").parent.mkdir(parents=True, exist_ok=True)
        else:
            # utf8mb4 on the connection too, or emoji are mangled on the way.
            parsed = parsed.update_query_dict({"charset": "utf8mb4"})
            engine_options.update(
                # Locking reads below must see the latest committed rows.
                isolation_level="READ COMMITTED",
                # No pre-ping: it costs a round trip per transaction. After a
                # MySQL restart one request fails with 503 and the pool is renewed.
                pool_recycle=3600,
                # Every session ends in COMMIT or ROLLBACK already; a second
                # ROLLBACK on return to the pool would be one more round trip.
                pool_reset_on_return=None,
                pool_size=10, max_overflow=20,
                # Both within the operation's deadline (bounded), which is what
                # answers; these keep a lone connect or checkout from outliving it.
                pool_timeout=timeout_secs,
                connect_args={"connect_timeout": max(1, round(timeout_secs))},
            )
        self.url = parsed
        self.engine = create_async_engine(parsed, **engine_options)
        if self.is_sqlite:
            event.listen(
                self.engine.sync_engine, "connect", functools.partial(_configure_sqlite, busy_timeout_secs=timeout_secs)
            )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._sqlite_write_lock = asyncio.Lock() if self.is_sqlite else None
        self._migrate_lock = f"chat-migrate:{parsed.database}"
        self._sole_claim: Any = None  # the connection holding this process's claim (claim_sole_process)

    async def claim_sole_process(self) -> bool:
        """Take the database for this process alone (a process without Redis); False if another holds it.

        A MySQL named lock lives as long as the connection that took it: a
        process that dies, however it dies, frees it. SQLite is one process's
        file by design and needs no claim.
        """
        if self.is_sqlite:
            return True
        connection = await self.engine.connect()
        name = f"chat-sole-process:{self.url.database}"
        taken = (await connection.execute(text("SELECT GET_LOCK(:name, 0)"), {"name": name})).scalar()
        if taken != 1:
            await connection.close()
            return False
        self._sole_claim = connection
        return True

    async def close(self) -> None:
        """Close the pool's connections; a frozen server does not hold up shutdown past the deadline."""
        try:
            async with asyncio.timeout(self.timeout_secs):
                if self._sole_claim is not None:
                    claim, self._sole_claim = self._sole_claim, None
                    try:
                        await claim.close()
                    except Exception:  # the connection is already gone: so is the lock
                        pass
                await self.engine.dispose()
        except TimeoutError:
            pass

    async def ping(self) -> None:
        """Return once the database answers a query; raise if it cannot (readiness)."""
        async with self.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration."""

        def upgrade(connection) -> None:
            config = AlembicConfig()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

        async with self.engine.begin() as connection:
            if not self.is_sqlite:
                # Processes started together (docs/deploy.md) migrate one after the other:
                # the first upgrades, the others find the schema at head.
                await connection.execute(text("SELECT GET_LOCK(:name, 60)"), {"name": self._migrate_lock})
            try:
                await connection.run_sync(upgrade)
            finally:
                if not self.is_sqlite:
                    await connection.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": self._migrate_lock})

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction, committed on success."""
        lock = self._sqlite_write_lock or contextlib.nullcontext()
        async with lock, self._session() as session:
            yield session
            await session.commit()

    @contextlib.asynccontextmanager
    async def _write_connection(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction on a bare connection, committed on success: the send path's.

        No ORM session: its bookkeeping is a share of the hot path's CPU that
        buys nothing for statements that return plain rows. Cancelled
        mid-statement, the connection is closed, not rolled back (see _session).
        """
        lock = self._sqlite_write_lock or contextlib.nullcontext()
        async with lock, _invalidated_if_cancelled(await self.engine.connect()) as connection:
            await connection.begin()
            yield connection
            await connection.commit()

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with self._session() as session:
            yield session

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        """A session whose connection is closed, not reused, when a deadline cancels it mid-statement.

        A cancelled statement leaves its connection halfway through the
        protocol (its answer unread): a ROLLBACK on it would read that answer,
        or wait forever, and the pool would hand out a broken connection, or
        keep one in an open transaction that holds table locks. Closing it
        makes the server roll back on its own.
        """
        async with _invalidated_if_cancelled(self.sessions()) as session:
            yield session

    # Users

    @bounded
    @retried
    async def save_profile(self, user_id: int, name: str | None, avatar: str | None) -> Profile:
        """Store the profile a launch carried (latest wins) and return the stored one."""
        async with self._read() as session:
            user = await session.get(User, user_id)
        if user is not None and name in (None, user.name) and avatar in (None, user.avatar):
            # Most connections are reconnects with the same profile: no write.
            return Profile(name=user.name, avatar=user.avatar)
        default = default_profile(user_id)
        values = {"id": user_id, "name": name or default.name, "avatar": avatar or default.avatar}
        # A launch without a profile keeps the stored one.
        changes = {key: value for key, value in (("name", name), ("avatar", avatar)) if value}
        # Upsert is spelled differently by each dialect.
        if self.is_sqlite:
            statement = sqlite_insert(User).values(values)
            statement = (
                statement.on_conflict_do_update(index_elements=[User.id], set_=changes)
                if changes else statement.on_conflict_do_nothing()
            )
        else:
            statement = mysql_insert(User).values(values)
            statement = statement.on_duplicate_key_update(changes or {"id": statement.inserted.id})
        async with self._write() as session:
            await session.execute(statement)
            user = await session.get(User, user_id)
            return Profile(name=user.name, avatar=user.avatar)

    # Messages

    @bounded
    async def list_messages(self, conversation_id: int, offset: int, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages after skipping ``offset``, oldest first."""
        async with self._read() as session:
            return await self._list_messages(session, conversation_id, offset, limit)

    @staticmethod
    async def _list_messages(
        session: AsyncSession, conversation_id: int, offset: int, limit: int
    ) -> list[StoredMessage]:
        where = (
            Message.conversation_id.is_(None)
            if conversation_id == GLOBAL_CHAT_ID
            else Message.conversation_id == conversation_id
        )
        rows = (
            await session.execute(
                select(Message, User.name, User.avatar)
                .join(User, User.id == Message.user_id)
                .where(where)
                .order_by(Message.id.desc())
                .offset(offset)
                .limit(limit)
            )
        ).all()
        return [
            StoredMessage(
                id=m.id, conversation_id=conversation_id, user_id=m.user_id, name=name,
                avatar=avatar, text=m.text, time=m.created_at,
            )
            for m, name, avatar in reversed(rows)
        ]

    @bounded
    @retried
    async def add_messages(self, conversation_id: int, drafts: Sequence[Draft]) -> CommittedBatch:
        """Store messages in one transaction; return their ids, the members' ids and the batch's order.

        A draft whose sender is not a member gets ``None`` instead of an id
        and the rest are stored; if the conversation does not exist, nothing
        is (ConversationMissing). The conversation row (the global chat's row
        for the global chat) stays locked until commit, so batches of one chat
        commit one after another in ``seq`` order, and a concurrent delete
        either sees these messages (and deletes them) or makes this
        transaction find no conversation.
        """
        async with self._write_connection() as connection:
            if conversation_id == GLOBAL_CHAT_ID:
                return await self._add_global_messages(connection, drafts)
            conversation = await lock_conversation(connection, conversation_id)
            members = conversation.member_ids
            accepted = [draft for draft in drafts if draft.user_id in members]
            if not accepted:
                unchanged = Sequenced(conversation.seq, conversation.last_message_id, conversation.counter_version)
                return CommittedBatch([None] * len(drafts), members, unchanged)
            order = conversation.next_order()
            ids = iter(await self._insert_messages(connection, conversation_id, accepted))
            message_ids = [next(ids) if draft.user_id in members else None for draft in drafts]
            stored = [message_id for message_id in message_ids if message_id is not None]
            await connection.execute(MOVE_CONVERSATION_HEAD, {
                "conversation": conversation_id, "last": stored[-1], "seq": order.seq,
                "version": order.counter_version,
            })
            # Sending marks the conversation read for the sender, up to their own last message.
            last_sent = {draft.user_id: mid for draft, mid in zip(drafts, message_ids) if mid is not None}
            if len(last_sent) == 1:
                [(user_id, read)] = last_sent.items()
                await connection.execute(MOVE_READ_MARK, {"conversation": conversation_id, "user": user_id, "read": read})
            else:
                await connection.execute(
                    update(MEMBERS)
                    .where(MEMBERS.c.conversation_id == conversation_id, MEMBERS.c.user_id.in_(last_sent))
                    .values(last_read_message_id=case(last_sent, value=MEMBERS.c.user_id))
                )
            return CommittedBatch(message_ids, members, order)

    async def _add_global_messages(self, connection: AsyncConnection, drafts: Sequence[Draft]) -> CommittedBatch:
        """Global messages, in the global chat's order: its row is locked like a conversation's."""
        head = (await connection.execute(LOCK_GLOBAL_CHAT)).first()
        if head is None:  # the row is created by the migration; recreated if someone emptied the table
            await connection.execute(insert(GLOBAL_CHAT).values(id=GLOBAL_CHAT_ROW, seq=0, last_message_id=0))
            head = (0, 0)
        message_ids = await self._insert_messages(connection, None, drafts)
        order = Sequenced(head[0] + 1, head[1])
        await connection.execute(MOVE_GLOBAL_HEAD, {"seq": order.seq, "last": message_ids[-1]})
        return CommittedBatch(list(message_ids), [], order)

    @staticmethod
    async def _insert_messages(
        connection: AsyncConnection, conversation_id: int | None, drafts: Sequence[Draft]
    ) -> list[int]:
        """Insert rows (in one statement where the database can say their ids), returning ids in the drafts' order."""
        rows = [
            {"conversation_id": conversation_id, "user_id": d.user_id, "text": d.text, "created_at": d.time}
            for d in drafts
        ]
        if len(rows) == 1 or not connection.dialect.insert_executemany_returning_sort_by_parameter_order:
            # One row, or MySQL (unlike MariaDB and SQLite: no INSERT ... RETURNING): a row at a time.
            return [(await connection.execute(INSERT_MESSAGE, row)).inserted_primary_key[0] for row in rows]
        result = await connection.execute(INSERT_MESSAGES_RETURNING, rows)
        return list(result.scalars())

    # Conversations

    @bounded
    @retried
    async def create_conversation(self, user_id: int, name: str, now: int) -> tuple[int, int]:
        """Create a conversation with its creator as member; return (id, first message id).

        Its creation is the conversation's first event: seq 1.
        """
        try:
            async with self._write() as session:
                result = await session.execute(
                    insert(Conversation).values(
                        name=name, creator_id=user_id, members_count=1, last_message_id=0,
                        created_at=now,
                    )
                )
                conversation_id = result.inserted_primary_key[0]
                result = await session.execute(
                    insert(Message).values(
                        conversation_id=conversation_id, user_id=user_id,
                        text=CONVERSATION_CREATED_TEXT, created_at=now,
                    )
                )
                message_id = result.inserted_primary_key[0]
                await session.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation_id)
                    .values(last_message_id=message_id, seq=1)
                )
                await session.execute(
                    insert(Member).values(
                        conversation_id=conversation_id, user_id=user_id,
                        last_read_message_id=message_id, joined_at=now,
                    )
                )
        except IntegrityError as error:
            if "uq_conversations_creator_name" in str(error.orig) or "UNIQUE" in str(error.orig):
                raise NameTaken() from None
            raise
        return conversation_id, message_id

    @bounded
    @retried
    async def join(
        self, conversation_id: int, user_id: int, max_members: int, now: int, page: int
    ) -> tuple[list[StoredMessage], Sequenced]:
        """Make the user a member, within the member limit even under concurrent joins.

        Return the newest ``page`` messages, read in the same transaction, and the join's order.
        """
        async with self._write() as session:
            conversation = await lock_conversation(session, conversation_id)
            if user_id in conversation.member_ids:
                raise AlreadyMember()
            # The condition is checked by the database in the same statement
            # that takes the place, so two joins can never both take the last one.
            order = conversation.next_order()
            taken = await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id, Conversation.members_count < max_members)
                .values(members_count=Conversation.members_count + 1, seq=order.seq,
                        counter_version=order.counter_version)
            )
            if taken.rowcount != 1:
                raise MembersFull()
            await session.execute(
                insert(Member).values(
                    conversation_id=conversation_id, user_id=user_id,
                    last_read_message_id=conversation.last_message_id, joined_at=now,
                )
            )
            return await self._list_messages(session, conversation_id, 0, page), order

    @bounded
    @retried
    async def leave(self, conversation_id: int, user_id: int) -> tuple[bool, Sequenced]:
        """Remove a member; delete the conversation when nobody is left. Return (deleted, the leave's order)."""
        async with self._write() as session:
            conversation = await lock_conversation(session, conversation_id)
            if user_id not in conversation.member_ids:
                raise NotMember()
            await session.execute(
                delete(Member).where(
                    Member.conversation_id == conversation_id, Member.user_id == user_id
                )
            )
            order = conversation.next_order()
            if conversation.members_count <= 1:
                await self._delete_rows(session, conversation_id)
                return True, order
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(members_count=Conversation.members_count - 1, seq=order.seq,
                        counter_version=order.counter_version)
            )
            return False, order

    @bounded
    @retried
    async def delete_conversation(self, conversation_id: int, user_id: int) -> tuple[Sequenced, list[int]]:
        """Delete a conversation with everything in it; only its creator may. Return its order and its members."""
        async with self._write() as session:
            conversation = await lock_conversation(session, conversation_id)
            if conversation.creator_id != user_id:
                raise NotCreator()
            await self._delete_rows(session, conversation_id)
            return conversation.next_order(), conversation.member_ids

    @staticmethod
    async def _delete_rows(session: AsyncSession, conversation_id: int) -> None:
        for model in (Message, Member):
            await session.execute(delete(model).where(model.conversation_id == conversation_id))
        await session.execute(delete(Conversation).where(Conversation.id == conversation_id))

    @bounded
    @retried
    async def mark_read(self, conversation_id: int, user_id: int) -> int:
        """Mark every message of the conversation read for a member; return the new counter version."""
        async with self._write() as session:
            conversation = await lock_conversation(session, conversation_id)
            if user_id not in conversation.member_ids:
                raise NotMember()
            await session.execute(
                update(Member)
                .where(Member.conversation_id == conversation_id, Member.user_id == user_id)
                .values(last_read_message_id=conversation.last_message_id)
            )
            version = conversation.counter_version + 1
            await session.execute(
                update(Conversation).where(Conversation.id == conversation_id).values(counter_version=version)
            )
            return version

    @bounded
    async def joined_conversations(self, user_id: int, offset: int, limit: int) -> list[ConversationRow]:
        """The user's conversations, most recent activity first, with the last message."""
        last = Message.__table__.alias("last_message")
        sender = User.__table__.alias("last_sender")
        async with self._read() as session:
            rows = (
                await session.execute(
                    select(
                        Conversation.id, Conversation.name, Conversation.creator_id,
                        Conversation.members_count, last.c.text, sender.c.avatar, Conversation.counter_version,
                    )
                    .join(Member, Member.conversation_id == Conversation.id)
                    .outerjoin(last, last.c.id == Conversation.last_message_id)
                    .outerjoin(sender, sender.c.id == last.c.user_id)
                    .where(Member.user_id == user_id)
                    .order_by(Conversation.last_message_id.desc(), Conversation.id.desc())
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        return [ConversationRow(*row) for row in rows]

    @bounded
    async def new_conversations(self, user_id: int, offset: int, limit: int) -> list[ConversationRow]:
        """Conversations the user is not a member of, newest first."""
        is_member = exists().where(
            Member.conversation_id == Conversation.id, Member.user_id == user_id
        )
        async with self._read() as session:
            rows = (
                await session.execute(
                    select(
                        Conversation.id, Conversation.name, Conversation.creator_id,
                        Conversation.members_count,
                    )
                    .where(~is_member)
                    .order_by(Conversation.id.desc())
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        return [ConversationRow(*row) for row in rows]

    @bounded
    async def conversation_info(self, conversation_id: int) -> tuple[ConversationRow, list[tuple[int, Profile]]]:
        """A conversation and its members (user id, profile), in joining order."""
        async with self._read() as session:
            conversation = await session.get(Conversation, conversation_id)
            if conversation is None:
                raise ConversationMissing()
            users = (
                await session.execute(
                    select(User.id, User.name, User.avatar)
                    .join(Member, Member.user_id == User.id)
                    .where(Member.conversation_id == conversation_id)
                    .order_by(Member.joined_at, User.id)
                )
            ).all()
        row = ConversationRow(
            conversation.id, conversation.name, conversation.creator_id, conversation.members_count
        )
        return row, [(uid, Profile(name, avatar)) for uid, name, avatar in users]

    @bounded
    async def profile(self, user_id: int) -> Profile | None:
        """The stored profile of a user, if they ever connected."""
        async with self._read() as session:
            user = await session.get(User, user_id)
        return None if user is None else Profile(name=user.name, avatar=user.avatar)

    @bounded
    async def member_ids(self, conversation_id: int, must_exist: bool = False) -> list[int]:
        """The conversation's members; none if it does not exist, or ConversationMissing if it ``must_exist``."""
        async with self._read() as session:
            rows = (
                await session.execute(
                    select(Conversation.id, Member.user_id)
                    .outerjoin(Member, Member.conversation_id == Conversation.id)
                    .where(Conversation.id == conversation_id)
                )
            ).all()
        if not rows and must_exist:
            raise ConversationMissing()
        return [user_id for _, user_id in rows if user_id is not None]

    @bounded
    async def messages_between(self, chat: int, after_id: int, upto_id: int) -> list[StoredMessage]:
        """A chat's messages with ids in (after_id, upto_id], oldest first."""
        where = Message.conversation_id.is_(None) if chat == GLOBAL_CHAT_ID else Message.conversation_id == chat
        async with self._read() as session:
            rows = (
                await session.execute(
                    select(Message, User.name, User.avatar)
                    .join(User, User.id == Message.user_id)
                    .where(where, Message.id > after_id, Message.id <= upto_id)
                    .order_by(Message.id)
                )
            ).all()
        return [
            StoredMessage(id=m.id, conversation_id=chat, user_id=m.user_id, name=name, avatar=avatar,
                          text=m.text, time=m.created_at)
            for m, name, avatar in rows
        ]

    @bounded
    async def user_conversation_ids(self, user_id: int) -> list[int]:
        async with self._read() as session:
            return list(
                (await session.scalars(select(Member.conversation_id).where(Member.user_id == user_id))).all()
            )

    @bounded
    async def unread_counts(self, conversation_ids: Sequence[int]) -> dict[int, UnreadCounts]:
        """Count every member's unread messages from the truth (ids above their last read), with the version.

        One statement, so the counts and the version come from one snapshot.
        """
        counts: dict[int, UnreadCounts] = {}
        if not conversation_ids:
            return counts
        async with self._read() as session:
            rows = await session.execute(
                select(Member.conversation_id, Conversation.counter_version, Member.user_id, func.count(Message.id))
                .join(Conversation, Conversation.id == Member.conversation_id)
                .outerjoin(
                    Message,
                    (Message.conversation_id == Member.conversation_id)
                    & (Message.id > Member.last_read_message_id),
                )
                .where(Member.conversation_id.in_(conversation_ids))
                .group_by(Member.conversation_id, Conversation.counter_version, Member.user_id)
            )
            for conversation_id, version, user_id, count in rows:
                counts.setdefault(conversation_id, UnreadCounts(version, {})).counts[user_id] = count
        return counts


class LockedConversation(NamedTuple):
    """A conversation row as read under its lock: what a transaction on it decides from.

    A tuple because the send path builds one per batch.
    """

    seq: int
    last_message_id: int
    counter_version: int
    creator_id: int
    members_count: int
    member_ids: list[int]

    def next_order(self) -> Sequenced:
        """The order of a change announced from this transaction: the next seq and counter version."""
        return Sequenced(self.seq + 1, self.last_message_id, self.counter_version + 1)


async def lock_conversation(connection: AsyncConnection | AsyncSession, conversation_id: int) -> LockedConversation:
    """Lock a conversation's row until commit and read it with its members; ConversationMissing if it is gone.

    The one way a transaction serializes on a conversation (join, leave,
    delete, mark read, send): its seq and counter version can only be
    decided, and moved, by one transaction at a time, so changes commit in
    seq order. A new conversation needs no lock: its row is its creator's
    until commit. On SQLite, where FOR UPDATE does not exist, the write lock
    (Database._write) already makes writers take turns.
    """
    rows = (await connection.execute(LOCK_CONVERSATION, {"conversation": conversation_id})).all()
    if not rows:
        raise ConversationMissing()
    seq, last_message_id, counter_version, creator_id, members_count, _ = rows[0]
    member_ids = [row.user_id for row in rows if row.user_id is not None]
    return LockedConversation(seq, last_message_id, counter_version, creator_id, members_count, member_ids)


def _configure_sqlite(dbapi_connection, _record, busy_timeout_secs: float) -> None:
    cursor = dbapi_connection.cursor()
    # Foreign keys are off by default in SQLite; WAL lets readers run beside
    # the single writer; busy_timeout covers another process's brief locks.
    # It is the deadline too: a statement waiting for a lock blocks the
    # connection's thread, which cancelling the coroutine does not stop.
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_secs * 1000)}")
    cursor.close()
