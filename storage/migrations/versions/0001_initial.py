"""Initial schema: users, conversations, members, messages.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from storage.models import MYSQL_TABLE_ARGS, ConversationName, Id

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("avatar", sa.String(500), nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    op.create_table(
        "conversations",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", ConversationName, nullable=False),
        sa.Column("creator_id", Id, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("members_count", sa.Integer, nullable=False),
        sa.Column("last_message_id", Id, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("creator_id", "name", name="uq_conversations_creator_name"),
        **MYSQL_TABLE_ARGS,
    )
    op.create_table(
        "members",
        sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id"), primary_key=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("last_read_message_id", Id, nullable=False),
        sa.Column("joined_at", sa.BigInteger, nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    op.create_index("ix_members_user_id", "members", ["user_id"])
    op.create_table(
        "messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id"), nullable=True),
        sa.Column("user_id", Id, sa.ForeignKey("users.id"), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        **MYSQL_TABLE_ARGS,
    )
    op.create_index("ix_messages_conversation_id_id", "messages", ["conversation_id", "id"])


def downgrade() -> None:
    op.drop_table("messages")
    op.drop_table("members")
    op.drop_table("conversations")
    op.drop_table("users")
