"""The system of record: one :class:`Database` per process, MySQL or SQLite.

Each public method is one short transaction (or one read) and returns plain
rows. What each one owns lives in its own module; :class:`Database` only puts
them together on one engine, by inheritance, so a call costs no more than a
method of one class would:

- storage/engine.py: the engine, sessions, deadlines, migrations, the sole-process claim;
- storage/conversation_lock.py: the one way a transaction locks a conversation;
- storage/messages.py: sending (the hot path), pages of a chat, unread counts;
- storage/conversations.py: create, join, leave, delete, mark read, the lists;
- storage/users.py: profiles.
"""

from __future__ import annotations

from storage.conversations import ConversationStore
from storage.messages import MessageStore
from storage.users import UserStore


class Database(MessageStore, ConversationStore, UserStore):
    """Engine, sessions and the transactions the chat service runs."""
