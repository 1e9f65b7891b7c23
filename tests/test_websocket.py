"""The WebSocket: connected event, ping, limits, cleanup, socket-id cache, slow readers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket as stdlib_socket
import struct

from prometheus_client import REGISTRY
import pytest

from tests.helpers import ServerUnderTest, close_and_wait, eventually
from tests.redis_access import async_client

pytestmark = pytest.mark.gen_test


async def test_connected_event_and_unique_socket_ids(server: ServerUnderTest):
    alice = server.user(1)
    sockets = [await alice.connect() for _ in range(3)]
    assert len({s.socket_id for s in sockets}) == 3
    for socket in sockets:
        assert socket.socket_id in await server.cache.sockets_of(1)
    assert server.registry.size()["sockets"] == 3 and server.registry.size()["users"] == 1


async def test_ping_is_answered_and_other_frames_ignored(server: ServerUnderTest):
    alice, socket = await server.connected_user(1)
    for frame in ["not json", json.dumps({"event": "hello"}), json.dumps([1, 2]), json.dumps({"event": "ping"})]:
        await socket.connection.write_message(frame)
    assert await socket.next_frame() == {"event": "pong"}


async def test_frames_over_64_kib_close_the_connection(server: ServerUnderTest):
    alice, socket = await server.connected_user(1)
    await socket.connection.write_message("x" * (64 * 1024 + 1))
    assert await socket.wait_closed() == 1009
    await eventually(lambda: _no_socket(server, 1))


async def test_closing_sockets_one_by_one(server: ServerUnderTest):
    alice = server.user(1)
    first, second = await alice.connect(), await alice.connect()
    first.close()
    await eventually(lambda: _lacks(server.cache.sockets_of(1), first.socket_id))
    assert (await alice.get("/v1/messages/get?chat=0")).ok
    second.close()
    await eventually(lambda: _no_socket(server, 1))
    response = await alice.get("/v1/messages/get?chat=0")
    assert (response.status, response.error_code) == (428, 4)
    assert server.registry.size() == {k: 0 for k in server.registry.size()}


async def test_lost_cache_does_not_disconnect_anyone(server: ServerUnderTest):
    alice, socket = await server.connected_user(1)
    await server.cache.remove_sockets([(1, socket.socket_id)])
    assert not await server.cache.sockets_of(1)
    if server.topology != "two-processes":
        # On its own process the live connection is what counts.
        assert (await alice.get("/v1/messages/get?chat=0")).ok
    else:
        # Another process knows the socket only through the cache.
        assert (await alice.get("/v1/messages/get?chat=0")).status == 428
    # The cache copy comes back with the next periodic refresh (run here rather than waited for).
    await server.chat_server.chat.refresh_socket_cache()
    assert socket.socket_id in await server.cache.sockets_of(1)
    assert (await alice.get("/v1/messages/get?chat=0")).ok


# Redis only: the in-process cache dies with its process, so nothing can be left behind.
@pytest.mark.parametrize("backend", ["mysql", "two-processes"])
async def test_socket_ids_in_the_cache_expire_unless_refreshed(server: ServerUnderTest):
    """Ids a crashed process left behind vanish on their own (the survivors also reap them: test_processes)."""
    alice, _ = await server.connected_user(1)
    client = async_client(server.chat_server.settings.redis_url)
    ttl = await client.ttl(server.cache.sockets_key(1))
    await client.aclose()
    assert 0 < ttl <= 60


@pytest.mark.server(ws_queue_limit=20)
async def test_a_stalled_reader_is_closed_and_does_not_hold_up_the_rest(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    staller = server.user(3)
    conversation_id = await alice.create("firehose")
    await bob.join(conversation_id)
    raw = await _open_raw_socket(server, staller.launch)  # never reads from here on
    await eventually(lambda: server.cache.sockets_of(3))
    # A congested network in miniature: the kernel would otherwise absorb
    # megabytes for this socket before the server's own queue fills.
    [stalled] = [c for c in server.registry.connections() if c.user_id == 3]
    stalled.ws_connection.stream.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 8192)
    await staller.join(conversation_id)
    await bob_socket.drain()

    slow_closed = REGISTRY.get_sample_value("chat_slow_sockets_closed_total")
    sent = []
    for number in range(1000):
        sent.append(await alice.send(f"{number:04} " + "x" * 990, conversation_id))
        if not server.registry.user_sockets(3):
            break
    assert not server.registry.user_sockets(3), "the stalled socket was never closed"
    assert REGISTRY.get_sample_value("chat_slow_sockets_closed_total") == slow_closed + 1
    # Once it reads again, it finds a 1013 close after what it had buffered
    # (read now: the server aborts a closed socket that never answers).
    assert await _read_close_code(raw) == 1013
    for _ in range(3):
        sent.append(await alice.send("after the close", conversation_id))

    # Everyone else got everything, in order, exactly once.
    received = [(await bob_socket.expect("new_message"))["id"] for _ in sent]
    assert received == sent
    await bob_socket.assert_silent()
    response = await staller.get("/v1/messages/get?chat=0")
    assert (response.status, response.error_code) == (428, 4)


async def _no_socket(server: ServerUnderTest, user_id: int) -> bool:
    return not server.registry.user_sockets(user_id) and not await server.cache.sockets_of(user_id)


async def _lacks(awaitable, item) -> bool:
    return item not in await awaitable


async def _open_raw_socket(server: ServerUnderTest, launch: str) -> stdlib_socket.socket:
    """A WebSocket handshake on a plain socket with a tiny receive buffer, then silence."""
    loop = asyncio.get_running_loop()
    raw = stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    raw.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    port = int(server.ws_url.rsplit(":", 1)[1])
    await loop.sock_connect(raw, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(raw, (
        f"GET /v1/ws?{launch} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += await loop.sock_recv(raw, 1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return raw


async def _read_close_code(raw: stdlib_socket.socket) -> int | None:
    """Read server frames until the close frame; return its status code."""
    loop = asyncio.get_running_loop()
    buffer = b""
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(raw, 65536), 10)
        if not chunk:
            return None
        buffer += chunk
        while len(buffer) >= 2:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, offset = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < offset + length:
                break
            payload, buffer = buffer[offset:offset + length], buffer[offset + length:]
            if opcode == 0x8:
                raw.close()
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


async def _user_rows(server: ServerUnderTest) -> int:
    from sqlalchemy import func, select

    from storage.models import User as UserRow

    async with server.database.sessions() as session:
        return await session.scalar(select(func.count()).select_from(UserRow))


async def test_refused_handshakes_answer_json_and_write_nothing(server: ServerUnderTest):
    """A plain GET, a foreign Origin, bad launch parameters or a bad profile: JSON, and no users row."""
    user = server.user(77)
    url = f"/v1/ws?{user.launch}"
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    cases = [
        ({}, url, 400),  # no Upgrade: not a WebSocket handshake
        ({"Upgrade": "websocket"}, url, 400),  # no Connection: Upgrade
        ({**upgrade, "Origin": "https://evil.example"}, url, 403),
        ({**upgrade, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}, url, 403),
        (upgrade, url.replace("sign=", "sign=x"), 401),
        (upgrade, url + "&avatar=ftp://nope", 400),
    ]
    for headers, path, status in cases:
        response = await server.fetch("GET", path, headers, None)
        assert response.status == status, (headers, response.body)
        assert response.body["response"] is False and response.body["error"]["code"] == status
    assert await _user_rows(server) == 0
    await user.connect()
    assert await _user_rows(server) == 1


# Only two processes have a socket that one process knows from another.
@pytest.mark.parametrize("backend", ["two-processes"])
async def test_another_process_remembers_an_open_socket_until_its_close_is_announced(server: ServerUnderTest, backend):
    """The process answering HTTP asks Redis for a socket of another process once, then remembers it.

    The socket's own process announces its close through the event log, so
    the 428 rule holds again within moments, not after the memory expires.
    """
    alice, socket = await server.connected_user(1)
    hub = server.http_chat_server.hub
    lookups = []
    asked = hub.cache.sockets_of

    async def counted(user_id):
        lookups.append(user_id)
        return await asked(user_id)

    hub.cache.sockets_of = counted
    for _ in range(3):
        assert (await alice.get("/v1/conversations/get", socket=socket)).ok
        assert (await alice.get("/v1/conversations/get")).ok
    assert lookups == [1], "Redis asked once, then the socket was remembered"

    await close_and_wait(server, socket)

    async def refused() -> bool:
        named, unnamed = await alice.get("/v1/conversations/get", socket=socket), await alice.get("/v1/conversations/get")
        return (named.status, named.error_code, unnamed.status, unnamed.error_code) == (428, 1, 428, 1)

    await eventually(refused, "the close never reached the other process", attempts=100)  # 2 s, far below 30
