"""A frozen database (issue 14, item 3): every request that needs it answers 503 within the deadline.

The server runs on a private MariaDB (tests/outages.py) that the test
freezes with SIGSTOP: connections stay open and nothing answers, the worst
case for a client without deadlines. The cache is the in-process one, so
only the database is away.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Iterator

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from server.app import ChatServer
from server.settings import Settings
from tests.conftest import TEST_SECRET
from tests.helpers import ServerUnderTest, eventually
from tests.outages import MariaDBInstance

DEADLINE_SECS = 2.0
# What the answer may take beyond the deadline: the event loop, the client, a busy CI machine.
MARGIN_SECS = 1.5


@pytest.fixture(scope="module")
def private_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBInstance]:
    with MariaDBInstance(tmp_path_factory.mktemp("mariadb")) as instance:
        yield instance


@pytest.fixture
def frozen_server(io_loop, private_mariadb: MariaDBInstance, tmp_path: Path) -> Iterator[ServerUnderTest]:
    settings = Settings(
        host="127.0.0.1", port=0, vk_secret=TEST_SECRET, data_dir=str(tmp_path), send_rate_limit=0,
        database_url=private_mariadb.create_database("chat"), db_timeout=DEADLINE_SECS,
    )
    chat_server = ChatServer(settings)
    port = io_loop.run_sync(lambda: chat_server.start(port=0))
    under_test = ServerUnderTest(chat_server, port, "mysql")
    yield under_test
    if private_mariadb.paused:
        private_mariadb.resume()
    under_test.close_sockets()
    io_loop.run_sync(chat_server.stop)


async def _timed(call):
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


async def _open_socket_status(server: ServerUnderTest, user_id: int) -> int:
    """The status a WebSocket handshake is refused with (101 would mean it opened)."""
    try:
        connection = await websocket_connect(f"{server.ws_url}/v1/ws?{server.user(user_id).launch}")
    except HTTPClientError as refused:
        assert json.loads(refused.response.body)["error"]["code"] == refused.code
        return refused.code
    frame = await connection.read_message()
    connection.close()
    return 101 if frame is None else json.loads(frame).get("event")


@pytest.mark.gen_test(timeout=120)
async def test_frozen_database_answers_503_within_the_deadline(
    frozen_server: ServerUnderTest, private_mariadb: MariaDBInstance
):
    server = frozen_server
    users = [server.user(user_id) for user_id in range(1, 6)]
    for user in users:
        await user.connect()
    alice = users[0]
    conversation_id = await alice.create("Room")
    private_mariadb.pause()
    # More requests at once than the pool has connections (10 + 20 overflow):
    # waiting for a connection is bounded by the same deadline.
    calls = []
    for user in users:
        for n in range(8):
            calls.append(user.post("/v1/messages/send", {"text": f"frozen {user.user_id}.{n}"}))
    calls += [
        alice.post("/v1/messages/send", {"text": "frozen in the room", "conversation_id": conversation_id}),
        alice.get("/v1/conversations/get"),
        alice.get("/v1/conversations/get?mode=new"),
        alice.get("/v1/messages/get?chat=0"),
        alice.get(f"/v1/conversations/info/{conversation_id}"),
        alice.get(f"/v1/conversations/read/{conversation_id}"),
    ]
    answers = await asyncio.gather(*(_timed(call) for call in calls))
    # A new user's profile must be stored: 503 within the deadline. A returning
    # user whose profile is cached needs no database to open a socket.
    handshake, handshake_secs = await _timed(_open_socket_status(server, 99))
    returning = await _open_socket_status(server, 1)
    for call_number, (response, seconds) in enumerate(answers):
        assert (response.status, response.error_code) == (503, 503), response.body
        assert seconds < DEADLINE_SECS + MARGIN_SECS, (call_number, seconds)
    assert handshake == 503 and handshake_secs < DEADLINE_SECS + MARGIN_SECS
    assert returning == "connected"

    private_mariadb.resume()
    # Connections cancelled mid-statement were closed, not pooled: the next requests work.
    await eventually(lambda: _sends(alice), "sends never worked again after the database resumed",
                     attempts=100, pause=0.1)
    assert (await alice.get("/v1/conversations/get")).ok
    assert await _open_socket_status(server, 2) == "connected"
    texts = {row[0] for row in private_mariadb.query("SELECT text FROM messages")}
    assert not any(text.startswith("frozen") for text in texts), "a message answered 503 was stored"


async def _sends(user) -> bool:
    return (await user.post("/v1/messages/send", {"text": "thawed"})).ok


@pytest.mark.gen_test(timeout=120)
async def test_a_socket_opens_while_the_database_freezes_after_its_profile_is_stored(
    frozen_server: ServerUnderTest, private_mariadb: MariaDBInstance
):
    """The handshake's only database call is storing the profile: a freeze after it keeps nobody out.

    (Memberships are not loaded for a socket: each conversation event names
    its members, server/registry.py.)
    """
    server = frozen_server
    alice, alice_socket = await server.connected_user(1)
    conversation_id = await alice.create("Room")
    bob = server.user(2)
    await bob.connect()
    await bob.join(conversation_id)
    database = server.database
    storing = database.save_profiles

    async def store_then_freeze(*args, **kwargs):
        stored = await storing(*args, **kwargs)
        private_mariadb.pause()
        return stored

    database.save_profiles = store_then_freeze
    try:
        started = time.monotonic()
        socket = await bob.connect()  # "connected": asserted by connect
        assert time.monotonic() - started < DEADLINE_SECS
    finally:
        database.save_profiles = storing
        private_mariadb.resume()
    await alice.send("to both of bob's sockets", conversation_id)
    assert [f["data"]["message"] for f in await socket.drain() if f["event"] == "new_message"] == [
        "to both of bob's sockets"]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.server(db_timeout=DEADLINE_SECS)
@pytest.mark.parametrize("backend", ["embedded"])  # MariaDB is frozen in the test above
async def test_locked_sqlite_answers_503_within_the_deadline(server: ServerUnderTest):
    """The embedded backend's "frozen database": another process holds SQLite's write lock."""
    alice, _ = await server.connected_user(1)
    locker = sqlite3.connect(server.chat_server.settings.sqlite_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        response, seconds = await _timed(alice.post("/v1/messages/send", {"text": "locked out"}))
        assert (response.status, response.error_code) == (503, 503)
        assert seconds < DEADLINE_SECS + MARGIN_SECS
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    await eventually(lambda: _sends(alice), "sends never worked again after the lock was released",
                     attempts=100, pause=0.1)
    texts = [m["message"] for m in (await alice.get("/v1/messages/get?chat=0")).body["messages"]]
    assert "locked out" not in texts
