"""The wire format: the only place that renders REST items and socket frames (docs/API.md §3-§5).

Items are plain dicts the handlers put in their JSON answers. Frames are
returned already JSON-encoded to UTF-8 bytes, so an event sent to a thousand
sockets is encoded once.
"""

from __future__ import annotations

import json
from typing import Any

from storage.records import GLOBAL_CHAT_ID, ConversationInfo, ConversationSummary, StoredMessage


def encode(event: str, data: dict[str, Any] | None = None) -> bytes:
    frame: dict[str, Any] = {"event": event}
    if data is not None:
        frame["data"] = data
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()


# REST items


def message_item(message: StoredMessage) -> dict[str, Any]:
    """A message as the REST API and events show it; anonymous in the global chat."""
    if message.conversation_id == GLOBAL_CHAT_ID:
        return {"id": message.id, "message": message.text, "time": message.time}
    return {
        "id": message.id, "name": message.name, "avatar": message.avatar,
        "user_id": message.user_id, "message": message.text, "time": message.time,
    }


def message_items(messages: list[StoredMessage]) -> list[dict[str, Any]]:
    return [message_item(message) for message in messages]


def conversation_item(summary: ConversationSummary) -> dict[str, Any]:
    """A conversation of a list: with unread count and last message in the joined list."""
    row = summary.row
    if summary.unread is None:
        return {"id": row.id, "name": row.name, "members": row.members, "viewers": summary.viewers,
                "creator_id": row.creator_id}
    return {
        "id": row.id, "name": row.name, "members": row.members, "unreadCount": summary.unread,
        "message": row.last_message or "", "senderAvatar": row.last_sender_avatar or "",
        "viewers": summary.viewers, "creator_id": row.creator_id,
    }


def conversation_info(info: ConversationInfo) -> dict[str, Any]:
    row = info.row
    return {
        "id": row.id, "name": row.name, "creator_id": row.creator_id, "members": row.members,
        "viewers": info.viewers,
        "users": [{"user_id": uid, "name": p.name, "avatar": p.avatar} for uid, p in info.users],
    }


# Socket frames
#
# Every event frame carries its position: "<epoch>.<log entry id>.<socket id>.<socket key>",
# appended as a last member "pos". The frame is encoded once per event; each
# socket adds only its own tail (see Registry.send). The key is a secret of the
# socket, given only in its frames (never in X-Socket-Id): a position cannot be
# made up from a socket id, and checking it costs nothing per delivery.

# The close code of a socket whose successor resumed its place (API.md §3).
CLOSE_REPLACED = 4000
REPLACED_REASON = "Replaced by a resumed socket"
# A handshake refused after the upgrade (a browser sees a close code, never
# a refused handshake's status): too many in progress (1013, try again
# later, with a hint), or the user holds too many sockets (1008, policy).
CLOSE_BUSY = 1013
CLOSE_TOO_MANY_SOCKETS = 1008


def busy_reason(retry_after_secs: int) -> str:
    """The close reason of a handshake refused as busy; clients read the number after "retry after"."""
    return f"Server busy: retry after {retry_after_secs} s"


def too_many_sockets_reason(cap: int) -> str:
    return f"Too many open sockets: at most {cap} per user"


TOO_MANY_FROM_ADDRESS_REASON = "Too many open sockets from this address"


def parse_position(value: str) -> tuple[str, str, str, str]:
    """(epoch, entry id, socket id, socket key) of a position; ValueError if it is not one."""
    if len(value) > 200:
        raise ValueError("not a position")
    epoch, entry_id, socket_id, key = value.split(".")
    if not (epoch and entry_id and socket_id and key):
        raise ValueError("not a position")
    return epoch, entry_id, socket_id, key


def position_head(frame: bytes, epoch: str, entry_id: str) -> bytes:
    """The frame with its position opened, up to the socket's part."""
    return frame[:-1] + b',"pos":"' + f"{epoch}.{entry_id}.".encode()


def position_tail(socket_id: str, key: str) -> bytes:
    """What closes a socket's positioned frames: its id and key, then the frame."""
    return f"{socket_id}.{key}".encode() + b'"}'

PONG = encode("pong")


def connected(socket_id: str, user_id: int) -> bytes:
    return encode("connected", {"socket_id": socket_id, "user_id": user_id})


def resumed(socket_id: str, user_id: int, missed: int) -> bytes:
    return encode("resumed", {"socket_id": socket_id, "user_id": user_id, "missed": missed})


def resume_failed(socket_id: str, user_id: int, reason: str) -> bytes:
    return encode("resume_failed", {"socket_id": socket_id, "user_id": user_id, "reason": reason})


# The one frame a socket gets when Redis lost the log: it may have missed events (API.md §3).
RESYNC = encode("resync", {"reason": "event history lost (Redis restarted or was flushed): refetch what you show"})


def new_message(message: StoredMessage) -> bytes:
    return encode("new_message", {"conversation_id": message.conversation_id, **message_item(message)})


def joined_conversation(conversation_id: int, user_id: int, name: str, avatar: str) -> bytes:
    return encode(
        "joined_conversation",
        {"conversation_id": conversation_id, "user_id": user_id, "avatar": avatar, "name": name},
    )


def leaved_conversation(conversation_id: int, user_id: int) -> bytes:
    return encode("leaved_conversation", {"conversation_id": conversation_id, "user_id": user_id})


def new_conversation(conversation_id: int, name: str, sender_avatar: str) -> bytes:
    return encode(
        "new_conversation",
        {"name": name, "conversation_id": conversation_id, "members": 1, "senderAvatar": sender_avatar},
    )


def delete_conversation(conversation_id: int) -> bytes:
    return encode("delete_conversation", {"conversation_id": conversation_id})


def viewers_change(conversation_id: int, viewers: int) -> bytes:
    return encode("conversationViewersChange", {"conversation_id": conversation_id, "viewers": viewers})
