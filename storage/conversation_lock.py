"""The one way a transaction serializes on a conversation: :func:`lock_conversation`.

Every transaction that changes a conversation (join, leave, delete, mark
read, send) first locks its row, and holds it until commit: the row carries
the conversation's ``seq`` and unread-counter version, which number its
changes (records.Sequenced), so they are decided and moved by one
transaction at a time and commit in seq order.
"""

from __future__ import annotations

from typing import NamedTuple

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from storage.errors import ConversationMissing
from storage.models import Conversation, Member
from storage.records import Sequenced

CONVERSATIONS = Conversation.__table__
MEMBERS = Member.__table__

# The conversation row with every member, built once (the send path runs it
# per batch: docs/BENCHMARKS.md). MySQL 8 locks the conversation row only
# (OF); MariaDB, which has no OF, locks the member rows read as well, which
# changes nothing: whoever writes a member row holds its conversation's lock first.
LOCK_CONVERSATION = (
    select(
        CONVERSATIONS.c.seq, CONVERSATIONS.c.last_message_id, CONVERSATIONS.c.counter_version,
        CONVERSATIONS.c.creator_id, CONVERSATIONS.c.members_count, MEMBERS.c.user_id,
    )
    .outerjoin(MEMBERS, MEMBERS.c.conversation_id == CONVERSATIONS.c.id)
    .where(CONVERSATIONS.c.id == bindparam("conversation"))
    .with_for_update(of=CONVERSATIONS)
)


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

    A new conversation needs no lock: the row its transaction inserts is its
    own until commit. SQLite has no FOR UPDATE: there the write lock
    (DatabaseEngine._write) already makes writers take turns.
    """
    rows = (await connection.execute(LOCK_CONVERSATION, {"conversation": conversation_id})).all()
    if not rows:
        raise ConversationMissing()
    seq, last_message_id, counter_version, creator_id, members_count, _ = rows[0]
    member_ids = [row.user_id for row in rows if row.user_id is not None]
    return LockedConversation(seq, last_message_id, counter_version, creator_id, members_count, member_ids)
