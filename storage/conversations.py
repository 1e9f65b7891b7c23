"""Conversations: creating, joining, leaving, deleting and reading one, and the lists of them.

Membership, the member limit and deleting exactly once must hold under
concurrency, so each is decided inside the transaction that acts on it, under
the conversation's row lock (storage/conversation_lock.py), by the database
(conditional updates), never by a check in Python followed by a write.
"""

from __future__ import annotations

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from storage.conversation_lock import lock_conversation
from storage.engine import DatabaseEngine, bounded, retried
from storage.errors import AlreadyMember, ConversationMissing, MembersFull, NameTaken, NotCreator, NotMember
from storage.messages import page_of_messages
from storage.models import Conversation, Member, Message, User
from storage.records import CONVERSATION_CREATED_TEXT, ConversationRow, Profile, Sequenced, StoredMessage


class ConversationStore(DatabaseEngine):
    """Conversations and their members."""

    @bounded
    @retried
    async def create_conversation(self, user_id: int, name: str, now: int) -> tuple[int, int]:
        """Create a conversation with its creator as member; return (id, first message id).

        Its creation is the conversation's first event: seq 1. It takes no
        conversation lock: nobody else sees the new row before commit.
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
            return await page_of_messages(session, conversation_id, 0, page), order

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
