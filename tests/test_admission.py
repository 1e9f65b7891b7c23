"""Admission control and the per-user socket cap (issue 21, API.md §3).

Handshakes in progress are held where real ones wait under a storm: in
the profile's write, behind a lock another client of the database holds.
"""

from __future__ import annotations

import asyncio
import json
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.helpers import ServerUnderTest, eventually, profile_writes_held

pytestmark = pytest.mark.gen_test(timeout=60)

BUSY_REASON = "Server busy: retry after 2 s"


async def refused(server: ServerUnderTest, user_id: int, ws_url: str | None = None) -> tuple[int | None, str | None]:
    """Open a socket that the server must close before its first frame; its close code and reason."""
    connection = await websocket_connect(f"{ws_url or server.ws_url}/v1/ws?{server.user(user_id).launch}")
    message = await asyncio.wait_for(connection.read_message(), 10)
    assert message is None, f"expected a refusal, got the frame {message}"
    return connection.close_code, connection.close_reason


@pytest.mark.server(max_handshakes=2)
async def test_handshakes_beyond_the_limit_are_refused_at_once_with_a_retry_hint(server: ServerUnderTest):
    admission = server.chat_server.admission
    with profile_writes_held(server):
        waiting = [asyncio.ensure_future(server.user(user_id).connect()) for user_id in (1, 2)]
        await eventually(lambda: admission.in_progress == 2, "the two handshakes never got in")
        code, reason = await refused(server, 3)
        assert (code, reason) == (1013, BUSY_REASON)
        assert not any(task.done() for task in waiting)  # still waiting for the database: refused at once
    first, second = await asyncio.gather(*waiting)  # they go through once the database answers
    assert {first.user_id, second.user_id} == {1, 2}
    assert admission.in_progress == 0
    # The refused one left nothing behind and, once the storm passed, gets in.
    assert await server.cache.sockets_of(3) == set()
    await server.user(3).connect()
    assert admission.in_progress == 0


@pytest.mark.server(max_handshakes=1)
async def test_a_refused_handshake_leaves_no_user_row(server: ServerUnderTest):
    with profile_writes_held(server):
        waiting = asyncio.ensure_future(server.user(1).connect())
        await eventually(lambda: server.chat_server.admission.in_progress == 1)
        assert (await refused(server, 2))[0] == 1013
    await waiting
    # User 2 was refused before its profile was written: no row, so no name to show.
    assert await server.database.profile(2) is None


@pytest.mark.server(max_sockets_per_user=2)
async def test_a_user_holds_at_most_the_cap_of_sockets_on_all_processes(server: ServerUnderTest):
    alice = server.user(1)
    # The second socket on the other process, if there is one: the cap counts every process's.
    other_ws_url = server.base_url.replace("http://", "ws://")
    first = await alice.connect()
    second_connection = await websocket_connect(f"{other_ws_url}/v1/ws?{alice.launch}")
    second_frame = json.loads(await second_connection.read_message())
    assert second_frame["event"] == "connected"
    code, reason = await refused(server, 1)
    assert (code, reason) == (1008, "Too many open sockets: at most 2 per user")
    code, _ = await refused(server, 1, other_ws_url)
    assert code == 1008
    # The refused ones are not counted, nor do they satisfy X-Socket-Id.
    assert await server.cache.sockets_of(1) == {first.socket_id, second_frame["data"]["socket_id"]}
    # Others are not affected.
    await server.user(2).connect()
    # A resume replaces its old socket: it may go one over, and the old one is closed.
    resumed, frame = await alice.resume(first.position)
    assert frame["event"] == "resumed", frame
    assert await first.wait_closed() == 4000
    await eventually(lambda: first.socket_id not in server.registry.user_sockets(1))
    # Closing one makes room again.
    second_connection.close()
    await eventually(lambda: second_frame["data"]["socket_id"] not in server.http_chat_server.registry.user_sockets(1))
    await server.chat_server.chat.sockets.flush()
    await server.http_chat_server.chat.sockets.flush()
    await alice.connect()


@pytest.mark.server(db_timeout=0.5)
async def test_a_handshake_that_fails_in_storage_takes_its_socket_id_out_again(server: ServerUnderTest):
    with profile_writes_held(server):
        with pytest.raises(HTTPClientError) as failed:
            await websocket_connect(f"{server.ws_url}/v1/ws?{server.user(1).launch}")
        assert failed.value.code == 503
    await server.chat_server.chat.sockets.flush()
    assert await server.cache.sockets_of(1) == set()
    assert server.chat_server.admission.in_progress == 0


async def _open_from(server: ServerUnderTest, user_id: int, real_ip: str | None = None):
    """A handshake with ``X-Real-IP`` (as nginx sets it); the connection and its first frame, or None if closed."""
    headers = {"X-Real-IP": real_ip} if real_ip else {}
    request = HTTPRequest(f"{server.ws_url}/v1/ws?{server.user(user_id).launch}", headers=headers)
    connection = await websocket_connect(request)
    message = await asyncio.wait_for(connection.read_message(), 10)
    return connection, json.loads(message) if message is not None else None


@pytest.mark.parametrize("backend", ["embedded"])  # a cap of this process: the topology changes nothing
@pytest.mark.server(max_sockets_per_address=2)
async def test_sockets_from_one_address_are_capped_by_what_the_trusted_proxy_says(server: ServerUnderTest):
    first, frame = await _open_from(server, 1, "10.0.0.1")
    assert frame["event"] == "connected"
    second, frame = await _open_from(server, 2, "10.0.0.1")
    assert frame["event"] == "connected"
    third, frame = await _open_from(server, 3, "10.0.0.1")
    assert frame is None and (third.close_code, third.close_reason) == (1008, "Too many open sockets from this address")
    # Another address (the peer, 127.0.0.1, is a trusted proxy by default) is counted apart.
    other, frame = await _open_from(server, 3, "10.0.0.2")
    assert frame["event"] == "connected"
    # A closed socket makes room; so does one that was never let in (nothing was counted for it).
    first.close()
    await eventually(lambda: server.chat_server.addresses._open.get("10.0.0.1") == 1)
    again, frame = await _open_from(server, 4, "10.0.0.1")
    assert frame["event"] == "connected"
    for connection in (second, other, again):
        connection.close()
    await eventually(lambda: server.chat_server.addresses._open == {})


@pytest.mark.parametrize("backend", ["embedded"])
@pytest.mark.server(max_sockets_per_address=1, trusted_proxies=("192.0.2.0/24",))
async def test_an_untrusted_peer_cannot_pick_its_address(server: ServerUnderTest):
    first, frame = await _open_from(server, 1, "10.0.0.1")
    assert frame["event"] == "connected"
    # The peer (127.0.0.1) is no trusted proxy here: its X-Real-IP is ignored, and it is its own address.
    second, frame = await _open_from(server, 2, "10.0.0.2")
    assert frame is None and second.close_code == 1008
    first.close()
