"""Messages: the send path (``add_messages``), pages of a chat, and what is unread.

The send path runs on Core tables and a bare connection: ORM-enabled
statements and session bookkeeping cost a measurable share of its CPU (see
docs/BENCHMARKS.md) and nothing here needs objects.
"""

from __future__ import annotations

from typing import Sequence

from sqlalchemy import bindparam, case, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from storage.conversation_lock import lock_conversation
from storage.engine import DatabaseEngine, bounded, retried
from storage.models import Conversation, GlobalChat, Member, Message, User
from storage.records import GLOBAL_CHAT_ID, CommittedBatch, Draft, Sequenced, StoredMessage, UnreadCounts

CONVERSATIONS = Conversation.__table__
MEMBERS = Member.__table__
MESSAGES = Message.__table__
GLOBAL_CHAT = GlobalChat.__table__
GLOBAL_CHAT_ROW = 1

# The send path's statements, built once: building a statement and its cache
# key on every call cost as much as the rest of the transaction's Python
# (0.6-0.7 ms of CPU against 1.2-1.5 ms per transaction with a session, on MariaDB: docs/BENCHMARKS.md).
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


class MessageStore(DatabaseEngine):
    """Storing messages in their chat's order and reading them back."""

    @bounded
    async def list_messages(self, conversation_id: int, offset: int, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages after skipping ``offset``, oldest first."""
        async with self._read() as session:
            return await page_of_messages(session, conversation_id, offset, limit)

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


async def page_of_messages(
    session: AsyncSession, conversation_id: int, offset: int, limit: int
) -> list[StoredMessage]:
    """The newest ``limit`` messages of a chat after skipping ``offset``, oldest first, in the caller's transaction."""
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
