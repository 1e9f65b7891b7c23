"""Graceful shutdown (issue 14, item 5): SIGTERM under load cuts no request and loses no message.

The server runs as it does in production, ``python run.py`` in its own
process, configured through the environment. Several users send without
pause; the test sends SIGTERM and then checks the outcome of every request:
each got an HTTP answer (or found the port closed before it connected), each
200's message is stored and no other one is, and every WebSocket was closed
with 1001.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pymysql
import pytest
import redis as redis_sync
from sqlalchemy.engine import make_url
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from server.drain import Drain
from server.errors import ShuttingDown
from tests.conftest import REDIS_URL, TEST_SECRET
from tests.helpers import ServerUnderTest, Socket, User
from tests.outages import free_port
from tests.processes import spawn_run_py

SENDERS = 8
SENDING_BEFORE_SIGTERM_SECS = 1.5
EXIT_TIMEOUT_SECS = 20


class ServerProcess(ServerUnderTest):
    """A ``run.py`` process reached over the network, with the test clients of helpers.py."""

    def __init__(self, port: int) -> None:
        self.backend = "process"
        self.secret = TEST_SECRET
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.sockets: list[Socket] = []
        self.http = AsyncHTTPClient(force_instance=True, max_clients=200)


@pytest.fixture
def server_process(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, dict]]:
    port = free_port()
    env = dict(CHAT_HOST="127.0.0.1", CHAT_PORT=str(port), CHAT_VK_SECRET=TEST_SECRET, CHAT_DATA_DIR=str(tmp_path),
               CHAT_SEND_RATE_LIMIT="0")
    prefix = f"chattest:{uuid.uuid4().hex}:"
    if backend == "mysql":
        env.update(CHAT_DATABASE_URL=request.getfixturevalue("mysql_database_url"), CHAT_REDIS_URL=REDIS_URL,
                   CHAT_REDIS_PREFIX=prefix)
    process = spawn_run_py(env, tmp_path / "server.log")
    yield process, port, env
    if process.poll() is None:
        process.kill()
        process.wait()
    if backend == "mysql":
        client = redis_sync.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


async def _wait_listening(server: ServerProcess, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "the server exited at start-up"
        try:
            if (await server.http.fetch(server.base_url + "/v1/nothing", raise_error=False)).code == 404:
                return
        except ConnectionRefusedError:
            pass
        assert time.monotonic() < deadline, "the server never started listening"
        await asyncio.sleep(0.1)


def _stored_texts(env: dict, tag: str) -> set[str]:
    """Messages the database holds, read after the server exited."""
    if "CHAT_DATABASE_URL" in env:
        url = make_url(env["CHAT_DATABASE_URL"])
        with pymysql.connect(host=url.host, port=url.port or 3306, user=url.username or "root",
                             password=url.password or "", database=url.database) as connection:
            with connection.cursor() as cursor:
                cursor.execute("SELECT text FROM messages WHERE text LIKE %s", (tag + "%",))
                return {row[0] for row in cursor.fetchall()}
    with sqlite3.connect(Path(env["CHAT_DATA_DIR"]) / "chat.sqlite3") as connection:
        rows = connection.execute("SELECT text FROM messages WHERE text LIKE ?", (tag + "%",)).fetchall()
    return {row[0] for row in rows}


async def _send_until_refused(server: ServerProcess, user: User, conversation_id: int, tag: str, outcomes: list) -> None:
    """Send without pause; stop at the first answer other than 200 (a client told to go away)."""
    for n in range(100_000):
        text = f"{tag}-{user.user_id}-{n}"
        request = HTTPRequest(
            server.base_url + "/v1/messages/send", method="POST", request_timeout=60,
            headers={"Authorization": f"VK {user.launch}", "Content-Type": "application/json"},
            body=json.dumps({"text": text, "conversation_id": conversation_id}),
        )
        try:
            response = await server.http.fetch(request, raise_error=False)
        except ConnectionRefusedError:  # found the port closed: the request never reached the server
            outcomes.append((text, "refused", time.monotonic()))
            return
        except Exception as error:  # connected, and then no answer: the failure this test looks for
            outcomes.append((text, f"cut: {error!r}", time.monotonic()))
            return
        body = json.loads(response.body)
        outcomes.append((text, response.code, time.monotonic()))
        if response.code != 200:
            assert body["response"] is False and body["error"]["code"] == response.code
            return


@pytest.mark.gen_test(timeout=90)
async def test_sigterm_under_load_answers_every_request_and_loses_nothing(server_process):
    process, port, env = server_process
    server = ServerProcess(port)
    await _wait_listening(server, process)
    users = [server.user(user_id) for user_id in range(1, SENDERS + 1)]
    sockets = [await user.connect() for user in users]
    room = await users[0].create(f"Room {uuid.uuid4().hex[:8]}")
    for user in users[1:]:
        await user.join(room)
    tag = uuid.uuid4().hex
    outcomes: list = []
    # Half send to the global chat, half to a conversation: two group-commit queues.
    senders = [
        asyncio.ensure_future(_send_until_refused(server, user, room if user.user_id % 2 else 0, tag, outcomes))
        for user in users
    ]
    await asyncio.sleep(SENDING_BEFORE_SIGTERM_SECS)
    sigterm_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(asyncio.gather(*senders), EXIT_TIMEOUT_SECS)
    for socket in sockets:
        assert await socket.wait_closed() == 1001
    exit_code = await asyncio.get_running_loop().run_in_executor(None, process.wait, EXIT_TIMEOUT_SECS)
    assert exit_code == 0
    server.close_sockets()

    cut = [outcome for outcome in outcomes if isinstance(outcome[1], str) and outcome[1] != "refused"]
    assert not cut, f"requests without an answer: {cut[:5]}"
    stored = _stored_texts(env, tag)
    acknowledged = {text for text, status, _ in outcomes if status == 200}
    assert acknowledged <= stored, f"answered 200 but not stored: {sorted(acknowledged - stored)[:5]}"
    assert stored <= acknowledged, f"stored but not answered 200: {sorted(stored - acknowledged)[:5]}"
    statuses = {status for _, status, _ in outcomes if status != 200}
    assert statuses <= {503, "refused"}, statuses
    # The SIGTERM fell among requests in flight, and they were answered, not cut.
    assert any(status == 200 and at > sigterm_at for _, status, at in outcomes)
    assert len(acknowledged) > SENDERS


@pytest.mark.gen_test
async def test_the_door_stays_open_a_moment_after_the_last_answer():
    """A client answered during the drain sends its next request at once: it must get a 503, not a closed socket."""
    drain = Drain()
    drain.enter()  # one request in flight when the shutdown begins
    closing = asyncio.ensure_future(drain.close(5.0, 0.25))
    await asyncio.sleep(0.05)
    drain.leave()  # answered
    await asyncio.sleep(0.1)
    assert not closing.done(), "the listening socket would close under the client's next request"
    with pytest.raises(ShuttingDown):
        drain.enter()  # that next request: refused with 503
    assert await closing is True


@pytest.mark.parametrize("backend", ["mysql", "two-processes"])  # an embedded database refuses a second process earlier
@pytest.mark.gen_test(timeout=30)
async def test_a_start_that_fails_part_way_leaves_nothing_running(server: ServerUnderTest):
    """The port is taken, which fails the start after the log's reader and the heartbeat began: both must stop."""
    from server.app import ChatServer, SettingsConflict

    second = ChatServer(server.chat_server.settings)
    with pytest.raises(SettingsConflict, match="in use"):
        await second.start(port=int(server.ws_url.rsplit(':', 1)[1]))
    assert second.hub._beating is not None and second.hub._beating.done()
    reading = getattr(second.bus, "_reading", None)
    assert reading is None or reading.done()
    # The first server still serves.
    alice = server.user(1)
    await alice.connect()
    assert (await alice.get("/v1/conversations/get")).ok
