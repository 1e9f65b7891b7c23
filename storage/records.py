"""The chat's own value types: what storage returns and the service, the registry and the events pass around.

This module imports nothing of the project (and nothing of SQLAlchemy), so
every layer can use it: storage builds these records, the registry keeps
profiles, the wire format renders messages and conversations.
"""

from __future__ import annotations

import dataclasses

# The global (anonymous) chat is chat/conversation 0 on the wire; its
# messages are stored with no conversation (NULL).
GLOBAL_CHAT_ID = 0
# The first message of every conversation, from its creator.
CONVERSATION_CREATED_TEXT = "Создана беседа."
# The largest id or offset anyone may name (docs/API.md §1): a JSON number
# every client reads exactly (JavaScript's Number.MAX_SAFE_INTEGER), well
# inside MySQL's BIGINT and SQLite's 64-bit INTEGER, so no bound check is
# left to the database, which answers past 2^63 with an error, not a refusal.
MAX_ID = 2**53 - 1


@dataclasses.dataclass(frozen=True)
class Profile:
    """A user's name and avatar, as their latest WebSocket launch carried them."""

    name: str
    avatar: str

    def kept_by(self, name: str | None, avatar: str | None) -> bool:
        """Whether a launch carrying ``name`` and ``avatar`` (None: not carried) leaves this profile as it is."""
        return name in (None, self.name) and avatar in (None, self.avatar)


def default_profile(user_id: int) -> Profile:
    """The profile of a user whose launch carried none."""
    return Profile(name=f"id{user_id}", avatar="")


@dataclasses.dataclass(frozen=True)
class Draft:
    """A message on its way into the database."""

    user_id: int
    text: str
    time: int


@dataclasses.dataclass(frozen=True)
class StoredMessage:
    """A committed message with its sender's profile."""

    id: int
    conversation_id: int  # GLOBAL_CHAT_ID for the global chat
    user_id: int
    name: str
    avatar: str
    text: str
    time: int


@dataclasses.dataclass(frozen=True)
class Sequenced:
    """Where a committed change stands in its chat's order of events (decided under the chat's row lock)."""

    seq: int  # the change's own number: the chat's seq after this commit
    last_message_id: int  # the chat's last message id before this commit
    counter_version: int = 0  # the conversation's unread-counter version after this commit


@dataclasses.dataclass(frozen=True)
class CommittedBatch:
    """Messages stored in one transaction: their ids (None: sender not a member), the members, the order."""

    message_ids: list[int | None]
    members: list[int]
    order: Sequenced


@dataclasses.dataclass(frozen=True)
class ConversationRow:
    """A conversation as the lists show it; the last message only in the joined list."""

    id: int
    name: str
    creator_id: int
    members: int
    last_message: str | None = None
    last_sender_avatar: str | None = None
    # Changes with every commit that changes a member's unread count: the
    # cached counters are served only while they carry the same version.
    counter_version: int = 0


@dataclasses.dataclass(frozen=True)
class UnreadCounts:
    """Every member's unread count of a conversation as of one counter version."""

    version: int
    counts: dict[int, int]


@dataclasses.dataclass(frozen=True)
class ConversationSummary:
    """A row of a conversation list with what the cache and the live sockets add."""

    row: ConversationRow
    viewers: int
    unread: int | None = None  # only in the joined list


@dataclasses.dataclass(frozen=True)
class ConversationInfo:
    """A conversation with its members' profiles, in joining order."""

    row: ConversationRow
    viewers: int
    users: list[tuple[int, Profile]]
