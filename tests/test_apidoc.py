"""The OpenAPI and AsyncAPI documents: served, complete, and true to what the server sends.

The documents are built from the code (``server.apidoc``); these tests close
the loop from the other side: every route the app serves is documented with
every error its handler's table names, real answers and real frames validate
against the documented schemas, the checked-in ``docs/asyncapi.json`` is the
generated one, and its events are exactly the ones ``server.wire`` emits.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import jsonschema_rs
import pytest

from server import apidoc, wire, wire_schemas
from server.app import StaticHandler, route_template
from tests.helpers import ServerUnderTest

pytestmark = pytest.mark.gen_test

REPO = Path(__file__).resolve().parent.parent
# Announced by the resume work (docs: resume query parameter), not yet emitted by
# server/wire.py on this branch; drop names from here as wire.py gains them.
EVENTS_PENDING_IN_WIRE = {"resumed", "resume_failed"}


async def openapi(server: ServerUnderTest) -> dict:
    response = await server.fetch("GET", "/v1/openapi.json", {}, None)
    assert response.status == 200
    return response.body


def success_schema(document: dict, method: str, path: str) -> dict:
    return document["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]


def assert_valid(schema: dict, instance: object) -> None:
    errors = [error.message for error in jsonschema_rs.validator_for(schema).iter_errors(instance)]
    assert not errors, (errors, instance)


async def test_openapi_documents_every_route_with_its_errors(server: ServerUnderTest):
    document = await openapi(server)
    assert document["openapi"].startswith("3.1")
    app_routes = {
        route_template(rule.matcher.regex.pattern.rstrip("$")): rule.target
        for rule in server.chat_server.make_app().wildcard_router.rules
        if rule.target is not StaticHandler
    }
    assert set(document["paths"]) == set(app_routes)
    for path, handler in app_routes.items():
        for method, operation in document["paths"][path].items():
            assert getattr(handler, method), (path, method)
            documented = {
                (int(status), code)
                for status, response in operation["responses"].items() if int(status) >= 400
                for code in response["content"]["application/json"]["schema"]["properties"]["error"]
                ["properties"]["code"]["enum"]
            }
            for error, code in getattr(handler, "error_codes", {}).items():
                assert (error.status, code) in documented, (path, error)
            if getattr(handler, "requires_auth", False):
                assert (401, 401) in documented and (503, 503) in documented
    # The route's limits are the validators' own numbers.
    send = document["paths"]["/v1/messages/send"]["post"]
    body = send["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["text"]["maxLength"] == 1000 and body["required"] == ["text"]
    assert body["properties"]["conversation_id"]["maximum"] == 99_999_999
    assert "Retry-After" in send["responses"]["429"]["headers"]
    listing = document["paths"]["/v1/conversations/get"]["get"]["parameters"]
    assert {p["name"]: p["schema"].get("enum") for p in listing}["mode"] == ["joined", "new"]


async def test_answers_match_the_documented_schemas(server: ServerUnderTest):
    document = await openapi(server)
    alice, alice_socket = await server.connected_user(1, name="Alice", avatar="https://a.example/a.png")
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("Schemas")
    await alice.send("hello", conversation_id)
    await alice.send("anonymous")
    join = f"/v1/conversations/join/{conversation_id}"
    calls = [
        ("get", "/v1/messages/get", f"/v1/messages/get?chat={conversation_id}", alice),
        ("get", "/v1/messages/get", "/v1/messages/get?chat=0", alice),
        ("get", "/v1/conversations/get", "/v1/conversations/get?mode=new", bob),
        ("get", "/v1/conversations/view/{conversation_id}", f"/v1/conversations/view/{conversation_id}", bob),
        ("get", "/v1/conversations/join/{conversation_id}", join, bob),
        ("get", "/v1/conversations/get", "/v1/conversations/get", bob),
        ("get", "/v1/conversations/info/{conversation_id}", f"/v1/conversations/info/{conversation_id}", bob),
        ("get", "/v1/conversations/read/{conversation_id}", f"/v1/conversations/read/{conversation_id}", bob),
        ("get", "/readyz", "/readyz", bob),
        ("get", "/v1/features", "/v1/features", bob),
    ]
    for method, template, path, user in calls:
        response = await user.get(path)
        assert response.status == 200, response.body
        assert_valid(success_schema(document, method, template), response.body)
    refused = await bob.get(join)  # already a member: an error body, as documented for 409
    schema = document["paths"]["/v1/conversations/join/{conversation_id}"]["get"]["responses"]["409"]
    assert_valid(schema["content"]["application/json"]["schema"], refused.body)


def test_asyncapi_file_is_the_generated_document():
    checked_in = json.loads((REPO / apidoc.ASYNCAPI_FILE).read_text())
    assert checked_in == apidoc.asyncapi_document(), "docs/asyncapi.json is stale: run `python run.py apidoc`"
    assert checked_in["asyncapi"].startswith("3.")


def emitted_events() -> set[str]:
    """The event names server/wire.py passes to encode()."""
    tree = ast.parse(Path(wire.__file__).read_text())
    return {
        node.args[0].value for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "encode"
        and node.args and isinstance(node.args[0], ast.Constant)
    }


def test_asyncapi_documents_exactly_the_events_wire_emits():
    documented = set(apidoc.asyncapi_document()["components"]["messages"]) - {"ping"}  # ping comes from clients
    assert emitted_events() <= documented, "an event is emitted but not documented in server/wire_schemas.py"
    assert documented - emitted_events() <= EVENTS_PENDING_IN_WIRE, "a documented event is never emitted"


async def test_frames_match_the_documented_schemas(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1, name="Alice")
    bob, bob_socket = await server.connected_user(2)
    assert (await alice.get("/v1/messages/get?chat=0")).ok  # subscribe to the global chat
    conversation_id = await bob.create("Frames")
    await alice.view(conversation_id)
    await alice.join(conversation_id)
    await bob.send("in the conversation", conversation_id)
    await alice.send("in the global chat")
    response = await alice.get(f"/v1/conversations/leave/{conversation_id}")
    assert response.ok
    response = await bob.call("DELETE", f"/v1/conversations/delete/{conversation_id}")
    assert response.ok
    frames = await alice_socket.drain()
    frames.append({"event": "pong"})  # drain() consumed it
    seen = set()
    for frame in frames:
        assert_valid(wire_schemas.frame(frame["event"]), frame)
        seen.add(frame["event"])
    assert seen == {"new_conversation", "conversationViewersChange", "joined_conversation", "new_message",
                    "leaved_conversation", "delete_conversation", "pong"}
    first = json.loads(wire.connected("abc", 1))
    assert_valid(wire_schemas.frame("connected"), first)
