"""Tables of the system of record (SQLAlchemy 2.0 declarative models).

The same models serve MySQL/MariaDB and SQLite; the few places where the
dialects must differ carry a ``with_variant`` and a comment saying why.
The migration in ``storage/migrations`` creates exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias), not a
# BIGINT one, so ids are BIGINT on MySQL and INTEGER (also 64-bit) on SQLite.
Id = BigInteger().with_variant(Integer(), "sqlite")

# Conversation names are unique per creator, exactly and case-sensitively, as
# SQLite's default BINARY collation compares; MySQL's default collation would
# fold case, so the column uses the binary utf8mb4 collation there.
ConversationName = String(50).with_variant(
    mysql.VARCHAR(50, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)

MYSQL_TABLE_ARGS = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_unicode_ci",
    # Never reuse the id of a deleted row: stale references (a client's open
    # conversation, a cached counter) must not point at a newer one.
    "sqlite_autoincrement": True,
}


class Base(DeclarativeBase):
    pass


class User(Base):
    """A VK user, with the profile their latest WebSocket launch carried."""

    __tablename__ = "users"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(100))
    avatar: Mapped[str] = mapped_column(String(500))


class Conversation(Base):
    """A conversation; ``members_count`` is kept in step with ``members`` rows."""

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("creator_id", "name", name="uq_conversations_creator_name"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(ConversationName)
    creator_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id"))
    members_count: Mapped[int] = mapped_column(Integer, default=0)
    # Denormalised for the "most recent activity first" list and its preview.
    last_message_id: Mapped[int] = mapped_column(Id, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger)
    # Numbers the conversation's announced events, bumped under the row lock
    # by each transaction that announces something: the order every process
    # publishes them in (server/hub.py).
    seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Changes with every commit that changes a member's unread count; the
    # cached counters are served only while they carry the same version.
    counter_version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class GlobalChat(Base):
    """The global chat's one row: its event sequence, locked by each global send."""

    __tablename__ = "global_chat"
    __table_args__ = (MYSQL_TABLE_ARGS,)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    last_message_id: Mapped[int] = mapped_column(Id, default=0, server_default="0")


class Member(Base):
    """Membership; messages with an id above ``last_read_message_id`` are unread."""

    __tablename__ = "members"
    __table_args__ = (Index("ix_members_user_id", "user_id"), MYSQL_TABLE_ARGS)

    conversation_id: Mapped[int] = mapped_column(
        Id, ForeignKey("conversations.id"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id"), primary_key=True)
    last_read_message_id: Mapped[int] = mapped_column(Id, default=0)
    joined_at: Mapped[int] = mapped_column(BigInteger)


class Message(Base):
    """A message; ``conversation_id`` is NULL in the global (anonymous) chat."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        MYSQL_TABLE_ARGS,
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int | None] = mapped_column(
        Id, ForeignKey("conversations.id"), nullable=True
    )
    user_id: Mapped[int] = mapped_column(Id, ForeignKey("users.id"))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[int] = mapped_column(BigInteger)
