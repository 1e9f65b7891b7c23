"""/v1/conversations/*: list, create, join, leave, delete, read, view, info."""

from __future__ import annotations

import voluptuous as vol

from handlers.base import ApiHandler
from handlers.validators import CONVERSATION_ID, Integer, Text
from server import wire, wire_schemas
from server.errors import (
    AlreadyMember,
    DuplicateName,
    InvalidParameter,
    NoRights,
    NoSuchConversation,
    NotAMember,
    SocketRequired,
    TooManyMembers,
)

LIST_SCHEMA = vol.Schema(
    {
        vol.Optional("mode", default="joined"): vol.In(["joined", "new"], msg="expected joined or new"),
        vol.Optional("offset", default=0): Integer(0),
    },
    extra=vol.REMOVE_EXTRA,
)

NEW_SCHEMA = vol.Schema({vol.Required("name"): Text(3, 50, strip=True)}, extra=vol.REMOVE_EXTRA)


class ListConversationsHandler(ApiHandler):
    """Your conversations, most recent activity first (mode=joined), or the others, newest first (mode=new)."""

    parameters = LIST_SCHEMA
    returns = {"conversations": wire_schemas.array(
        {"anyOf": [wire_schemas.JOINED_CONVERSATION_ITEM, wire_schemas.NEW_CONVERSATION_ITEM]}, 100
    )}
    error_codes = {SocketRequired: 1}

    async def get(self) -> None:
        params = self.parse()
        conversations = await self.chat.list_conversations(
            self.user.user_id, self.socket_id, params["mode"], params["offset"]
        )
        self.reply(conversations=[wire.conversation_item(summary) for summary in conversations])

    post = get


class NewConversationHandler(ApiHandler):
    """Create a conversation; you are its first member and its admin."""

    parameters = NEW_SCHEMA
    returns = {"conversation_id": wire_schemas.ID}
    error_codes = {DuplicateName: 1, SocketRequired: 2}

    async def post(self) -> None:
        params = self.parse()
        conversation_id = await self.chat.create_conversation(self.user.user_id, self.socket_id, params["name"])
        self.reply(conversation_id=conversation_id)


class ConversationHandler(ApiHandler):
    """A route acting on the conversation named in its path."""

    path_parameters = {"conversation_id": CONVERSATION_ID}

    def conversation_id(self, raw: str) -> int:
        try:
            return CONVERSATION_ID(raw)
        except vol.Invalid:
            raise InvalidParameter("conversation_id", "conversation_id must be a positive integer") from None


class JoinHandler(ConversationHandler):
    """Become a member; returns the newest 100 messages, oldest first."""

    returns = {"messages": wire_schemas.array(wire_schemas.MESSAGE, 100)}
    error_codes = {NoSuchConversation: 1, AlreadyMember: 2, TooManyMembers: 3, SocketRequired: 4}

    async def get(self, raw_id: str) -> None:
        messages = await self.chat.join(self.user.user_id, self.socket_id, self.conversation_id(raw_id))
        self.reply(messages=wire.message_items(messages))

    post = get


class LeaveHandler(ConversationHandler):
    """End your membership; the last member out deletes the conversation."""

    error_codes = {NoSuchConversation: 1, NotAMember: 2, SocketRequired: 3}

    async def get(self, raw_id: str) -> None:
        await self.chat.leave(self.user.user_id, self.socket_id, self.conversation_id(raw_id))
        self.reply()

    post = get


class DeleteHandler(ConversationHandler):
    """Delete the conversation with everything in it (creator only)."""

    error_codes = {NoSuchConversation: 1, NoRights: 2, SocketRequired: 3}

    async def delete(self, raw_id: str) -> None:
        await self.chat.delete(self.user.user_id, self.socket_id, self.conversation_id(raw_id))
        self.reply()

    post = delete


class ReadHandler(ConversationHandler):
    """Set your unread count of the conversation to 0."""

    error_codes = {NoSuchConversation: 1, NotAMember: 2, SocketRequired: 3}

    async def get(self, raw_id: str) -> None:
        await self.chat.read(self.user.user_id, self.socket_id, self.conversation_id(raw_id))
        self.reply()

    post = get


class ViewHandler(ConversationHandler):
    """Watch the conversation read-only; returns its newest 50 messages, oldest first."""

    returns = {"messages": wire_schemas.array(wire_schemas.MESSAGE, 50)}
    error_codes = {NoSuchConversation: 1, AlreadyMember: 2, SocketRequired: 3}

    async def get(self, raw_id: str) -> None:
        messages = await self.chat.view(self.user.user_id, self.socket_id, self.conversation_id(raw_id))
        self.reply(messages=wire.message_items(messages))

    post = get


class StopViewHandler(ConversationHandler):
    """Stop watching the conversation (not watching is fine)."""

    error_codes = {NoSuchConversation: 1, AlreadyMember: 2, SocketRequired: 3}

    async def get(self, raw_id: str) -> None:
        await self.chat.stop_view(self.user.user_id, self.socket_id, self.conversation_id(raw_id))
        self.reply()

    post = get


class InfoHandler(ConversationHandler):
    """The conversation with its members."""

    returns = {"conversation": wire_schemas.CONVERSATION_INFO}
    error_codes = {NoSuchConversation: 1, SocketRequired: 2}

    async def get(self, raw_id: str) -> None:
        conversation = await self.chat.info(self.user.user_id, self.socket_id, self.conversation_id(raw_id))
        self.reply(conversation=wire.conversation_info(conversation))
