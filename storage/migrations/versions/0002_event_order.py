"""Event order and counter versions: conversations.seq, conversations.counter_version, the global chat's head row.

``seq`` numbers a conversation's events (each transaction that announces
something bumps it, under the row lock), so every process can publish them
in commit order; the global chat's row plays that part for the global chat.
``counter_version`` changes with every commit that changes an unread count:
the cached counters are served only while they carry the same version.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from storage.models import MYSQL_TABLE_ARGS, Id

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("counter_version", sa.BigInteger, nullable=False, server_default="0"))
    op.create_table(
        "global_chat",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_message_id", Id, nullable=False, server_default="0"),
        **MYSQL_TABLE_ARGS,
    )
    op.execute("INSERT INTO global_chat (id, seq, last_message_id) VALUES (1, 0, 0)")


def downgrade() -> None:
    op.drop_table("global_chat")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("counter_version")
        batch.drop_column("seq")
