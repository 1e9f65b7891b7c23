"""Hostile input (issue 14, item 4): every request gets a JSON answer below 500, on both backends.

Each class of input has a documented bound (docs/API.md §1): ids and offsets
0..2^53-1, text that is valid Unicode, JSON nested at most 32 deep, bodies
of 64 KiB (1 MiB buffered by Tornado), headers of 64 KiB. Requests that an
HTTP client would refuse or normalise are sent as raw bytes.
"""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from server.auth import sign_launch_params
from tests.helpers import ServerUnderTest, raw_request

pytestmark = pytest.mark.gen_test

MAX_ID = 2**53 - 1


def _port(server: ServerUnderTest) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


async def _raw(server: ServerUnderTest, target: str, method: str = "GET", headers: dict[str, str] | None = None,
               body: bytes = b""):
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return await raw_request(_port(server), ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


async def _still_healthy(server: ServerUnderTest, user_id: int = 999) -> None:
    user = server.user(user_id)
    await user.connect()
    assert (await user.get("/v1/messages/get?chat=0")).ok


def _assert_json_error(response, status: int | tuple[int, ...]) -> dict:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status in statuses, (response.status, response.headers, response.body[:300])
    body = response.json()
    assert body["response"] is False and body["error"]["code"] == response.status, body
    return body


@pytest.mark.parametrize(
    "target, param",
    [
        ("/v1/conversations/get?x=%ff", "x"),
        ("/v1/conversations/get?mode=%ed%a0%80", "mode"),  # an encoded surrogate is not UTF-8 either
        ("/v1/messages/get?chat=%ff", "chat"),
        ("/v1/conversations/info/%ff", "conversation_id"),
        ("/v1/conversations/join/%c3", "conversation_id"),
    ],
)
async def test_invalid_utf8_escapes_are_400(server: ServerUnderTest, target, param):
    alice, _ = await server.connected_user(1)
    response = await _raw(server, target, headers={"Authorization": f"VK {alice.launch}"})
    body = _assert_json_error(response, 400)
    assert body["error"]["param"] == param
    await _still_healthy(server)


async def test_invalid_utf8_in_the_websocket_profile_is_400(server: ServerUnderTest):
    user = server.user(1)
    response = await _raw(server, f"/v1/ws?{user.launch}&name=%ff", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    })
    assert _assert_json_error(response, 400)["error"]["param"] == "name"


@pytest.mark.parametrize(
    "target", ["/../run.py", "//etc/passwd", "/%2e%2e/run.py", "/%2E%2E/%2e%2e/etc/passwd", "/index.html%00",
               "/..%2frun.py", "/web/../../run.py", "/%ff"],
)
async def test_static_paths_outside_web_are_refused(server: ServerUnderTest, target):
    response = await _raw(server, target)
    _assert_json_error(response, (400, 404))
    assert b"import" not in response.body and b"root:" not in response.body
    await _still_healthy(server)


@pytest.mark.parametrize("target", ["/v1/ws", "/", "/index.html", "/v1/messages/send"])
async def test_multipart_content_type_with_a_junk_body(server: ServerUnderTest, target):
    alice, _ = await server.connected_user(1)
    response = await _raw(server, target, method="POST", body=b"this is not multipart at all", headers={
        "Authorization": f"VK {alice.launch}", "Content-Type": "multipart/form-data; boundary=x",
    })
    assert response.status is not None and response.status < 500, response
    if target.startswith("/v1/") or response.status != 200:
        _assert_json_error(response, (400, 405))
    await _still_healthy(server)


@pytest.mark.parametrize("depth", [33, 200, 5000])
async def test_json_nested_too_deep_is_400(server: ServerUnderTest, depth):
    alice, _ = await server.connected_user(1)
    nested = "[" * depth + "]" * depth
    for raw_body in (nested, '{"text": "x", "extra": ' + nested + "}"):
        response = await alice.post("/v1/messages/send", raw_body=raw_body)
        assert (response.status, response.error_code, response.body["error"]["param"]) == (400, 400, "body")
        assert "deep" in response.body["error"]["message"]
    assert (await alice.get("/v1/messages/get?chat=0")).body["messages"] == []


async def test_json_nested_32_deep_is_fine(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    nested = "[" * 31 + "]" * 31  # inside the object: 32 levels in all
    assert (await alice.post("/v1/messages/send", raw_body='{"text": "x", "extra": ' + nested + "}")).ok


async def test_deeply_nested_websocket_frames_are_ignored(server: ServerUnderTest):
    alice, socket = await server.connected_user(1)
    await socket.connection.write_message("[" * 30_000 + "]" * 30_000)  # within the 64 KiB frame limit
    await socket.connection.write_message(json.dumps({"event": "ping"}))
    assert await socket.next_frame() == {"event": "pong"}


@pytest.mark.parametrize("route, field", [("send_global", "text"), ("send_conversation", "text"), ("new", "name")])
async def test_lone_surrogates_are_400(server: ServerUnderTest, route, field):
    alice, _ = await server.connected_user(1)
    conversation_id = await alice.create("Room")
    bad = "a\ud800b"
    path, body = {
        "send_global": ("/v1/messages/send", {"text": bad}),
        "send_conversation": ("/v1/messages/send", {"text": bad, "conversation_id": conversation_id}),
        "new": ("/v1/conversations/new", {"name": bad + "cd"}),
    }[route]
    response = await alice.post(path, raw_body=json.dumps(body))  # ensure_ascii: "\ud800" escaped as JSON allows
    assert (response.status, response.error_code, response.body["error"]["param"]) == (400, 400, field)
    assert "Unicode" in response.body["error"]["message"]
    assert (await alice.get("/v1/messages/get?chat=0")).body["messages"] == []
    assert len(await alice.conversations()) == 1
    # A valid pair of surrogates is one character, an emoji: stored as sent.
    assert (await alice.post("/v1/messages/send", raw_body='{"text": "\\ud83d\\ude00"}')).ok
    assert (await alice.get("/v1/messages/get?chat=0")).body["messages"][0]["message"] == "\U0001F600"


@pytest.mark.parametrize("value", [MAX_ID + 1, 2**63 - 1, 2**63, 2**64, 10**30])
async def test_integers_past_the_bound_are_400(server: ServerUnderTest, value):
    alice, _ = await server.connected_user(1)
    checks = [
        (alice.post("/v1/conversations/get", {"offset": value}), "offset"),
        (alice.get(f"/v1/conversations/get?offset={value}"), "offset"),
        (alice.get(f"/v1/messages/get?chat={value}"), "chat"),
        (alice.get(f"/v1/messages/get?chat=0&offset={value}"), "offset"),
        (alice.post("/v1/messages/send", {"text": "x", "conversation_id": value}), "conversation_id"),
        (alice.get(f"/v1/conversations/info/{value}"), "conversation_id"),
        (alice.get(f"/v1/conversations/join/{value}"), "conversation_id"),
    ]
    for call, param in checks:
        response = await call
        assert (response.status, response.error_code, response.body["error"]["param"]) == (400, 400, param)


async def test_integers_at_the_bound_are_accepted(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    assert (await alice.post("/v1/conversations/get", {"offset": MAX_ID})).body == {
        "response": True, "conversations": []}
    assert (await alice.get(f"/v1/messages/get?chat=0&offset={MAX_ID}")).body["messages"] == []
    response = await alice.get(f"/v1/messages/get?chat={MAX_ID}")
    assert (response.status, response.error_code) == (404, 2)
    response = await alice.get(f"/v1/conversations/info/{MAX_ID}")
    assert (response.status, response.error_code) == (404, 1)


@pytest.mark.parametrize("user_id", [MAX_ID + 1, 2**63, 10**30])
async def test_websocket_for_a_user_id_past_the_bound_is_401(server: ServerUnderTest, user_id):
    launch = sign_launch_params(server.secret, user_id)
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(f"{server.ws_url}/v1/ws?{launch}")
    assert refused.value.code == 401
    assert json.loads(refused.value.response.body)["error"]["code"] == 401
    response = await server.fetch("GET", "/v1/conversations/get", {"Authorization": f"VK {launch}"}, None)
    assert (response.status, response.error_code) == (401, 401)
    await _still_healthy(server)


async def test_websocket_for_the_largest_user_id(server: ServerUnderTest):
    user, _ = await server.connected_user(MAX_ID)
    assert (await user.send("hi", None)) > 0


async def test_plain_get_of_the_websocket_is_json_400(server: ServerUnderTest):
    response = await _raw(server, "/v1/ws")
    _assert_json_error(response, 400)


@pytest.mark.parametrize("target", ["/v1/ws", "/index.html", "/v1/messages/send", "/v1/nothing"])
async def test_bodies_over_a_mebibyte_get_json_413(server: ServerUnderTest, target):
    alice, _ = await server.connected_user(1)
    response = await _raw(server, target, method="POST", body=b"x" * (1024 * 1024 + 1),
                          headers={"Authorization": f"VK {alice.launch}"})
    _assert_json_error(response, (404, 413) if target == "/v1/nothing" else 413)
    await _still_healthy(server)


@pytest.mark.parametrize("target", ["/v1/messages/get?chat=0", "/v1/ws", "/index.html"])
async def test_headers_over_64_kib_get_json_431(server: ServerUnderTest, target):
    alice, _ = await server.connected_user(1)
    response = await _raw(server, target, headers={"Authorization": f"VK {alice.launch}", "X-Padding": "p" * 70_000})
    _assert_json_error(response, 431)
    await _still_healthy(server)


async def test_headers_past_what_tornado_reads_close_the_connection(server: ServerUnderTest):
    """Past 256 KiB Tornado stops reading before any handler runs (docs/API.md §1)."""
    response = await _raw(server, "/v1/messages/get?chat=0", headers={"X-Padding": "p" * 300_000})
    assert response.status in (None, 431)
    await _still_healthy(server)


async def test_huge_request_line_is_json(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    response = await _raw(server, "/v1/messages/get?chat=0&pad=" + "p" * 70_000,
                          headers={"Authorization": f"VK {alice.launch}"})
    _assert_json_error(response, 431)


@pytest.mark.parametrize("byte_range", ["bytes=999999-", "bytes=5-1", "bytes=-0"])
async def test_unsatisfiable_range_on_a_web_file_is_json(server: ServerUnderTest, byte_range):
    """Found by tests/test_property_input.py: Tornado answered 416 with an empty text/plain body."""
    response = await _raw(server, "/index.html", headers={"Range": byte_range})
    assert response.status in (200, 206, 416)
    if response.status == 416:
        _assert_json_error(response, 416)
