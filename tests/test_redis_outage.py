"""Redis outages (issue 14, items 1-3): the server keeps answering and keeps users' data exact.

Each test runs a server on a private ``redis-server`` (tests/outages.py)
that it kills, pauses and restarts; the shared Redis is never touched.
MySQL stays up: it is the system of record, and what Redis held is rebuilt
from it or re-announced.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Iterator

import pytest

from server.settings import Settings
from tests.helpers import ServerUnderTest, Socket, User, eventually
from tests.outages import RedisInstance

pytestmark = [pytest.mark.gen_test(timeout=90), pytest.mark.parametrize("backend", ["mysql"])]

REDIS_TIMEOUT_SECS = 0.5
MARGIN_SECS = 1.5


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisInstance]:
    instance = RedisInstance(tmp_path / "redis")
    instance.start()
    yield instance
    instance.close()


@pytest.fixture
def server_settings(server_settings: Settings, private_redis: RedisInstance) -> Settings:
    return dataclasses.replace(server_settings, redis_url=private_redis.url, redis_timeout=REDIS_TIMEOUT_SECS)


async def _unread(user: User, conversation_id: int) -> int:
    [item] = [c for c in (await user.get("/v1/conversations/get")).body["conversations"] if c["id"] == conversation_id]
    return item["unreadCount"]


async def test_sockets_open_while_redis_is_away_and_leave_no_trace(server: ServerUnderTest, private_redis):
    """Item 1: a socket may open while Redis is down (the registry is this process's truth); none is a ghost."""
    private_redis.kill()
    user = server.user(7001)
    sockets = [await user.connect() for _ in range(30)]  # each gets "connected"
    assert (await user.get("/v1/conversations/get")).ok
    for socket in sockets[:20]:
        socket.close()
    await eventually(lambda: len(server.registry.user_sockets(7001)) == 10)

    private_redis.start()
    await server.chat_server.chat.refresh_socket_cache()  # the periodic refresh, run rather than waited for
    assert await server.cache.sockets_of(7001) == {socket.socket_id for socket in sockets[20:]}
    for socket in sockets[20:]:
        socket.close()
    await eventually(lambda: not server.registry.user_sockets(7001))
    await eventually(lambda: _none_cached(server, 7001), "closed sockets are still in the cache")
    response = await user.get("/v1/conversations/get")
    assert (response.status, response.error_code) == (428, 1)
    assert server.registry.size() == {name: 0 for name in server.registry.size()}


async def _beat(server: ServerUnderTest) -> bool:
    """One heartbeat (what the server runs every few seconds); False if Redis refused it (a stale connection)."""
    try:
        await server.chat_server.hub.beat()
    except Exception:
        return False
    return True


async def _none_cached(server: ServerUnderTest, user_id: int) -> bool:
    return not await server.cache.sockets_of(user_id)


async def test_counters_are_exact_after_redis_returns_from_an_old_snapshot(server: ServerUnderTest, private_redis):
    """Item 2: counters saved in a snapshot, then five sends while Redis was down: the snapshot's are never served."""
    alice, _ = await server.connected_user(1)
    members = [(await server.connected_user(user_id))[0] for user_id in (2, 3, 4)]
    conversation_id = await alice.create("snapshot")
    for member in members:
        await member.join(conversation_id)
    await alice.send("one", conversation_id)
    await members[2].get(f"/v1/conversations/read/{conversation_id}")
    assert [await _unread(m, conversation_id) for m in members] == [1, 1, 0]  # primed in Redis
    private_redis.save()
    private_redis.kill()

    for n in range(5):
        response = await alice.post("/v1/messages/send", {"text": f"while down {n}", "conversation_id": conversation_id})
        assert response.ok, response.body
    private_redis.start()  # from the snapshot: counters at an old version
    assert [await _unread(m, conversation_id) for m in members] == [6, 6, 5]
    await alice.send("after", conversation_id)
    assert [await _unread(m, conversation_id) for m in members] == [7, 7, 6]
    assert await _unread(alice, conversation_id) == 0


async def test_counters_are_exact_after_redis_froze_during_a_send(server: ServerUnderTest, private_redis):
    """Item 2: Redis paused (SIGSTOP) while a send updates the counters: they are rebuilt, not served stale."""
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("frozen")
    await bob.join(conversation_id)
    assert await _unread(bob, conversation_id) == 0
    private_redis.pause()
    try:
        response = await alice.post("/v1/messages/send", {"text": "in the freeze", "conversation_id": conversation_id})
        assert response.ok, response.body
    finally:
        private_redis.resume()
    await asyncio.sleep(2.1)  # the breaker lets calls through again
    assert await _unread(bob, conversation_id) == 1
    await alice.send("after", conversation_id)
    assert await _unread(bob, conversation_id) == 2


async def test_a_send_while_redis_is_frozen_answers_within_one_timeout_and_is_announced_later(
    server: ServerUnderTest, private_redis
):
    """Item 3: one bounded wait per request, not one per Redis call; the event reaches sockets when Redis is back."""
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("bounded")
    await bob.join(conversation_id)
    await alice_socket.drain()
    await bob_socket.drain()
    private_redis.pause()
    try:
        started = time.monotonic()
        response = await alice.post("/v1/messages/send", {"text": "frozen redis", "conversation_id": conversation_id})
        elapsed = time.monotonic() - started
        assert response.ok, response.body  # stored: MySQL is the record
        assert elapsed < REDIS_TIMEOUT_SECS + MARGIN_SECS, elapsed
        started = time.monotonic()
        # Alone, the process counts viewers itself; the breaker answers at once.
        assert (await alice.get("/v1/conversations/get")).ok
        assert time.monotonic() - started < REDIS_TIMEOUT_SECS + MARGIN_SECS
    finally:
        private_redis.resume()
    frames = await _frames_within(bob_socket, 10)
    assert [f["data"]["message"] for f in frames if f["event"] == "new_message"] == ["frozen redis"]


async def _frames_within(socket: Socket, seconds: float) -> list[dict]:
    """Frames that arrive within ``seconds`` (the first one awaited that long; then what is queued)."""
    item = await asyncio.wait_for(socket.frames.get(), seconds)
    assert item is not None
    return [item[0], *await socket.drain()]


async def test_a_restarted_redis_closes_sockets_so_clients_refetch(server: ServerUnderTest, private_redis):
    """Redis restarted without the events of its last moments: sockets close 1012 and resumes fail (no silent gap)."""
    alice, alice_socket = await server.connected_user(1)
    await alice_socket.drain()
    position = alice_socket.position
    private_redis.kill()
    private_redis.start()
    await eventually(lambda: _beat(server), "no heartbeat got through to the restarted Redis")
    assert await alice_socket.wait_closed() == 1012
    socket, first = await alice.resume(position)
    assert first["event"] == "resume_failed"
    assert (await alice.get("/v1/conversations/get")).ok
    socket.close()
