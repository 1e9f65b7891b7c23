"""Every per-route error of docs/API.md §5, generated from the handlers' own ``error_codes`` tables.

Each (route, error) pair is one case: the test builds the situation the
error names, calls the route over HTTP and checks the status and the code.
A route or an error added to a handler without a case here fails the
coverage test below.
"""

from __future__ import annotations

import pytest

from handlers import conversations, messages
from handlers.base import ApiHandler
from server.errors import (
    AlreadyMember,
    ChatIdRequired,
    DuplicateName,
    MethodError,
    NoRights,
    NoSuchConversation,
    NotAMember,
    SocketRequired,
    TooManyMembers,
)
from tests.helpers import ServerUnderTest

pytestmark = pytest.mark.gen_test

MISSING_ID = 99_999_999

# Handler → (method, path with {id}, body with {id}); ids are filled in per case.
ROUTES: dict[type[ApiHandler], tuple[str, str, dict | None]] = {
    messages.GetMessagesHandler: ("GET", "/v1/messages/get?chat={id}", None),
    messages.SendMessageHandler: ("POST", "/v1/messages/send", {"text": "hi", "conversation_id": "{id}"}),
    conversations.ListConversationsHandler: ("GET", "/v1/conversations/get", None),
    conversations.NewConversationHandler: ("POST", "/v1/conversations/new", {"name": "Taken name"}),
    conversations.JoinHandler: ("GET", "/v1/conversations/join/{id}", None),
    conversations.LeaveHandler: ("GET", "/v1/conversations/leave/{id}", None),
    conversations.DeleteHandler: ("DELETE", "/v1/conversations/delete/{id}", None),
    conversations.ReadHandler: ("GET", "/v1/conversations/read/{id}", None),
    conversations.ViewHandler: ("GET", "/v1/conversations/view/{id}", None),
    conversations.StopViewHandler: ("GET", "/v1/conversations/stopView/{id}", None),
    conversations.InfoHandler: ("GET", "/v1/conversations/info/{id}", None),
}

CASES = [
    pytest.param(handler, error, code, id=f"{handler.__name__}-{error.__name__}-{code}")
    for handler in ROUTES
    for error, code in handler.error_codes.items()
]


def test_every_route_with_error_codes_has_a_case():
    routes = {cls for module in (messages, conversations) for cls in vars(module).values()
              if isinstance(cls, type) and issubclass(cls, ApiHandler) and cls.error_codes}
    assert routes == set(ROUTES)


@pytest.mark.server(max_members=1)
@pytest.mark.parametrize("handler, error, code", CASES)
async def test_route_error(server: ServerUnderTest, handler: type[ApiHandler], error: type[MethodError], code: int):
    alice, bob = server.user(1), server.user(2)
    await alice.connect()
    await bob.connect()
    conversation_id = await alice.create("Taken name")
    method, path, body = ROUTES[handler]
    # Who calls, and about which conversation, so that exactly `error` applies.
    caller, target = {
        SocketRequired: (server.user(3), conversation_id),
        NoSuchConversation: (bob, MISSING_ID),
        NotAMember: (bob, conversation_id),
        AlreadyMember: (alice, conversation_id),
        TooManyMembers: (bob, conversation_id),  # the limit is 1: alice fills it
        DuplicateName: (alice, conversation_id),
        NoRights: (bob, conversation_id),
        ChatIdRequired: (bob, None),
    }[error]
    if error is NoRights:
        await server.chat_server.chat.database.join(conversation_id, bob.user_id, 2, 0, 1)  # a member, not the creator
    if error is ChatIdRequired:
        path = "/v1/messages/get"
    if body is not None:
        body = {key: (target if value == "{id}" else value) for key, value in body.items()}
    response = await caller.call(method, path.format(id=target), body)
    assert (response.status, response.error_code) == (error.status, code), response.body
