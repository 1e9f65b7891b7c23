"""/v1/messages/*: read and send messages, in conversations and the global chat."""

from __future__ import annotations

import voluptuous as vol

from handlers.base import ApiHandler
from handlers.validators import Integer, Text
from server import wire, wire_schemas
from server.errors import ChatIdRequired, NoSuchConversation, NotAMember, SocketRequired, TooManyRequests

MAX_CONVERSATION_ID = 99_999_999

GET_MESSAGES_SCHEMA = vol.Schema(
    {
        vol.Required("chat"): Integer(0),
        vol.Optional("offset", default=0): Integer(0),
    },
    extra=vol.REMOVE_EXTRA,
)

SEND_MESSAGE_SCHEMA = vol.Schema(
    {
        vol.Required("text"): Text(1, 1000),
        vol.Optional("conversation_id", default=0): Integer(0, MAX_CONVERSATION_ID),
    },
    extra=vol.REMOVE_EXTRA,
)


class GetMessagesHandler(ApiHandler):
    """The newest 100 messages of a chat after skipping `offset`, oldest first; chat 0 also subscribes to the global chat."""

    parameters = GET_MESSAGES_SCHEMA
    returns = {"messages": wire_schemas.array(wire_schemas.ANY_MESSAGE, 100)}
    error_codes = {ChatIdRequired: 1, NoSuchConversation: 2, NotAMember: 3, SocketRequired: 4}

    async def get(self) -> None:
        arguments = self.arguments()
        if arguments.get("chat") in (None, ""):
            raise ChatIdRequired()
        params = self.parse(arguments)
        messages = await self.chat.get_messages(self.user.user_id, self.socket_id, params["chat"], params["offset"])
        self.reply(messages=wire.message_items(messages))


class SendMessageHandler(ApiHandler):
    """Send a message to a conversation, or (no conversation_id, or 0) to the anonymous global chat."""

    parameters = SEND_MESSAGE_SCHEMA
    returns = {"id": wire_schemas.ID}
    error_codes = {NoSuchConversation: 1, NotAMember: 2, SocketRequired: 3}
    extra_errors = (TooManyRequests,)

    async def post(self) -> None:
        params = self.parse()
        message_id = await self.chat.send_message(
            self.user.user_id, self.socket_id, params["conversation_id"], params["text"]
        )
        self.reply(id=message_id)
