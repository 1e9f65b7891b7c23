"""JSON Schemas of everything ``server.wire`` renders: REST items and socket frames.

The OpenAPI and AsyncAPI documents (``server.apidoc``) are built from these;
tests render real items and frames through ``server.wire`` and validate them
here, and schemathesis validates live answers, so a field added to one side
and not the other fails a test.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]


def closed_object(required: dict[str, Schema], optional: dict[str, Schema] | None = None, **extra: Any) -> Schema:
    """An object with exactly these members (the optional ones may be absent)."""
    return {
        "type": "object", "required": list(required), "properties": {**required, **(optional or {})},
        "additionalProperties": False, **extra,
    }


def array(items: Schema, max_items: int | None = None) -> Schema:
    schema: Schema = {"type": "array", "items": items}
    if max_items is not None:
        schema["maxItems"] = max_items
    return schema


ID: Schema = {"type": "integer", "minimum": 1}
COUNT: Schema = {"type": "integer", "minimum": 0}
UNIX_TIME: Schema = {"type": "integer", "minimum": 0, "description": "Unix seconds"}
TEXT: Schema = {"type": "string"}
AVATAR: Schema = {"type": "string", "description": "an http(s) URL, or empty"}

# REST items (docs/API.md §4-§5)

MESSAGE = closed_object(
    {"id": ID, "name": TEXT, "avatar": AVATAR, "user_id": ID, "message": TEXT, "time": UNIX_TIME},
    title="Message", description="A conversation's message, with its sender",
)
GLOBAL_MESSAGE = closed_object(
    {"id": ID, "message": TEXT, "time": UNIX_TIME},
    title="GlobalMessage", description="A global-chat message: anonymous, no sender data",
)
ANY_MESSAGE: Schema = {"anyOf": [MESSAGE, GLOBAL_MESSAGE]}

JOINED_CONVERSATION_ITEM = closed_object(
    {"id": ID, "name": TEXT, "members": COUNT, "unreadCount": COUNT, "message": TEXT, "senderAvatar": AVATAR,
     "viewers": COUNT, "creator_id": ID},
    title="JoinedConversation", description="A conversation you are a member of (mode=joined)",
)
NEW_CONVERSATION_ITEM = closed_object(
    {"id": ID, "name": TEXT, "members": COUNT, "viewers": COUNT, "creator_id": ID},
    title="OtherConversation", description="A conversation you are not a member of (mode=new)",
)
MEMBER = closed_object({"user_id": ID, "name": TEXT, "avatar": AVATAR}, title="Member")
CONVERSATION_INFO = closed_object(
    {"id": ID, "name": TEXT, "creator_id": ID, "members": COUNT, "viewers": COUNT, "users": array(MEMBER)},
    title="ConversationInfo",
)

# Socket frames (docs/API.md §3): {"event": name, "data": {...}}, data by event.

POSITION: Schema = {"type": "string", "description": "an opaque position of this event, for resume"}

EVENT_DATA: dict[str, Schema] = {
    "connected": closed_object({"socket_id": TEXT, "user_id": ID}),
    "new_message": {"anyOf": [
        closed_object({"conversation_id": ID, "id": ID, "user_id": ID, "name": TEXT, "avatar": AVATAR,
                       "message": TEXT, "time": UNIX_TIME}, title="conversation message"),
        closed_object({"conversation_id": {"const": 0}, "id": ID, "message": TEXT, "time": UNIX_TIME},
                      title="global-chat message (anonymous)"),
    ]},
    "joined_conversation": closed_object({"conversation_id": ID, "user_id": ID, "avatar": AVATAR, "name": TEXT}),
    "leaved_conversation": closed_object({"conversation_id": ID, "user_id": ID}),
    "new_conversation": closed_object(
        {"name": TEXT, "conversation_id": ID, "members": {"const": 1}, "senderAvatar": AVATAR}
    ),
    "delete_conversation": closed_object({"conversation_id": ID}),
    "conversationViewersChange": closed_object({"conversation_id": ID, "viewers": COUNT}),
    # First frame of a socket opened with ?resume= (instead of connected).
    "resumed": closed_object(
        {"socket_id": TEXT, "user_id": ID, "missed": COUNT},
    ),
    "resume_failed": closed_object({"socket_id": TEXT, "user_id": ID, "reason": TEXT}),
    "resync": closed_object({"reason": TEXT}),
}

# Frames without data.
BARE_EVENTS = ("pong",)

EVENT_DESCRIPTIONS = {
    "connected": "First frame of a new socket: its id (for X-Socket-Id) and the user's id.",
    "resumed": "First frame of a socket opened with `resume`: the events missed since that position follow.",
    "resume_failed": "First frame of a socket opened with `resume` that cannot be resumed: refetch, then go on.",
    "resync": "The server lost its event history (Redis restarted or was flushed): events may have been missed; "
              "refetch what you show. The socket stays open, later events follow, and its pos resumes from here.",
    "pong": "Answer to the client's {\"event\": \"ping\"}.",
    "new_message": "A message committed in a conversation the socket belongs to or views, or in the global chat it subscribed to.",
    "joined_conversation": "Someone joined a conversation (to every socket).",
    "leaved_conversation": "Someone left a conversation (to every socket).",
    "new_conversation": "A conversation was created (to every socket).",
    "delete_conversation": "A conversation was deleted (to every socket); nothing of it follows.",
    "conversationViewersChange": "The number of users viewing a conversation changed (to its members and viewers).",
}


def frame(event: str) -> Schema:
    """The whole frame of an event: ``event``, ``data`` if it has any, and the optional ``pos``."""
    if event in BARE_EVENTS:
        return closed_object({"event": {"const": event}}, title=event)
    return closed_object({"event": {"const": event}, "data": EVENT_DATA[event]}, {"pos": POSITION}, title=event)


CLIENT_PING = closed_object({"event": {"const": "ping"}}, title="ping")
