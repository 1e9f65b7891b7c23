"""The only functions that build server → client frames (docs/API.md §3).

Each returns the frame already JSON-encoded to UTF-8 bytes, so an event sent
to a thousand sockets is encoded once.
"""

from __future__ import annotations

import json
from typing import Any

from storage.database import StoredMessage


def encode(event: str, data: dict[str, Any] | None = None) -> bytes:
    frame: dict[str, Any] = {"event": event}
    if data is not None:
        frame["data"] = data
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":")).encode()


PONG = encode("pong")


def connected(socket_id: str, user_id: int) -> bytes:
    return encode("connected", {"socket_id": socket_id, "user_id": user_id})


def message_item(message: StoredMessage) -> dict[str, Any]:
    """A message as the REST API and events show it; anonymous in the global chat."""
    if message.conversation_id == 0:
        return {"id": message.id, "message": message.text, "time": message.time}
    return {
        "id": message.id, "name": message.name, "avatar": message.avatar,
        "user_id": message.user_id, "message": message.text, "time": message.time,
    }


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
