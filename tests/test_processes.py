"""Several ``run.py`` processes as one chat (docs/API.md §9), as an operator runs them.

Each test starts real processes on one throwaway MySQL database and one
Redis prefix, and talks to them over the network: sends through both at
once, a process killed with SIGKILL, a rolling restart under traffic, the
member limit under joins split across processes, the send rate shared by
all processes, and the start-up refusal of settings that cannot work.
The API's behaviour tests also run against two in-process servers (the
``two-processes`` topology of conftest.py); these are the cases that need
real processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pymysql
import pytest
import redis as redis_sync
from sqlalchemy.engine import make_url
from tornado.httpclient import AsyncHTTPClient

from tests.conftest import MYSQL_URL, REDIS_URL, TEST_SECRET
from tests.helpers import ServerUnderTest, Socket, User
from tests.outages import free_port

pytestmark = pytest.mark.gen_test(timeout=120)

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECS = 30
# docs/API.md §9: a dead process is noticed within 30 s.
REAP_LIMIT_SECS = 30


class ChatProcess(ServerUnderTest):
    """One ``python run.py`` of the deployment, reached over the network."""

    def __init__(self, deployment: "Deployment", name: str) -> None:
        self.deployment = deployment
        self.name = name
        self.port = free_port()
        self.backend = "mysql"
        self.topology = "processes"
        self.secret = TEST_SECRET
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.sockets: list[Socket] = []
        self.http = AsyncHTTPClient(force_instance=True, max_clients=200)
        self.process: subprocess.Popen | None = None

    def spawn(self, **settings: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env.update({**self.deployment.env, "CHAT_PORT": str(self.port), **settings})
        log = open(self.deployment.directory / f"{self.name}.log", "ab")
        self.process = subprocess.Popen([sys.executable, "run.py"], cwd=REPO, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
        log.close()
        return self.process

    async def start(self) -> None:
        self.spawn()
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while True:
            assert self.process.poll() is None, f"{self.name} exited at start-up: {self.log()[-2000:]}"
            try:
                if (await self.http.fetch(self.base_url + "/healthz", raise_error=False)).code == 200:
                    return
            except (ConnectionRefusedError, OSError):
                pass
            assert time.monotonic() < deadline, f"{self.name} never started listening"
            await asyncio.sleep(0.1)

    def log(self) -> str:
        return (self.deployment.directory / f"{self.name}.log").read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, as a power loss."""
        self.process.kill()
        self.process.wait()

    async def terminate(self) -> None:
        """SIGTERM, the clean stop of a rolling deploy; wait for the exit."""
        self.process.send_signal(signal.SIGTERM)
        while self.process.poll() is None:
            await asyncio.sleep(0.05)
        assert self.process.returncode == 0, self.log()[-2000:]

    def close(self) -> None:
        self.close_sockets()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Deployment:
    """Processes sharing one database and one Redis prefix."""

    def __init__(self, directory: Path, database_url: str, prefix: str, **settings: str) -> None:
        self.directory = directory
        self.prefix = prefix
        self.env = {
            "CHAT_HOST": "127.0.0.1", "CHAT_VK_SECRET": TEST_SECRET, "CHAT_DATA_DIR": str(directory),
            "CHAT_DATABASE_URL": database_url, "CHAT_REDIS_URL": REDIS_URL, "CHAT_REDIS_PREFIX": prefix,
            "CHAT_SEND_RATE_LIMIT": "0", "CHAT_METRICS_ADDR": "off", **settings,
        }
        self.processes: list[ChatProcess] = []

    def process(self, name: str) -> ChatProcess:
        process = ChatProcess(self, name)
        self.processes.append(process)
        return process

    async def start(self, count: int) -> list[ChatProcess]:
        started = [self.process(chr(ord("a") + i)) for i in range(count)]
        for process in started:  # one after the other: the first migrates the schema
            await process.start()
        return started


@pytest.fixture
def database_url() -> Iterator[str]:
    url = make_url(MYSQL_URL)
    name = f"chat_proc_{uuid.uuid4().hex[:12]}"
    connect = dict(host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
                   password=url.password or "")
    with pymysql.connect(**connect) as connection, connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    yield url.set(database=name).render_as_string(hide_password=False)
    with pymysql.connect(**connect) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def deployment(io_loop, request: pytest.FixtureRequest, tmp_path: Path, database_url: str) -> Iterator[Deployment]:
    marker = request.node.get_closest_marker("deployment")
    prefix = f"chattest:{uuid.uuid4().hex}:"
    built = Deployment(tmp_path, database_url, prefix, **(marker.kwargs if marker else {}))
    yield built
    for process in built.processes:
        process.close()
    client = redis_sync.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def texts(frames: list[dict]) -> list[str]:
    return [frame["data"]["message"] for frame in frames if frame["event"] == "new_message"]


async def collect(socket: Socket, count: int) -> list[dict]:
    """The next ``count`` new_message frames of a socket (other events skipped)."""
    messages: list[dict] = []
    while len(messages) < count:
        frame = await socket.next_frame()
        assert frame is not None, "socket closed"
        if frame["event"] == "new_message":
            messages.append(frame["data"])
    return messages


async def test_concurrent_sends_through_both_processes_arrive_in_one_order(deployment: Deployment):
    a, b = await deployment.start(2)
    alice, bob = User(a, 1), User(b, 2)  # alice talks to a, bob to b
    alice_socket, bob_socket = await alice.connect(), await bob.connect()
    carol_socket = await User(b, 3).connect()
    conversation_id = await alice.create("both at once")
    await bob.join(conversation_id)
    await User(a, 3).join(conversation_id)  # carol: socket on b, HTTP on a
    for socket in (alice_socket, bob_socket, carol_socket):
        await socket.drain()

    per_sender = 40
    await asyncio.gather(
        *(alice.send(f"a{n}", conversation_id) for n in range(per_sender)),
        *(bob.send(f"b{n}", conversation_id) for n in range(per_sender)),
    )
    seen = [await collect(socket, 2 * per_sender) for socket in (alice_socket, bob_socket, carol_socket)]
    ids = [[message["id"] for message in messages] for messages in seen]
    assert ids[0] == sorted(ids[0]) and len(set(ids[0])) == 2 * per_sender  # ascending, no duplicate
    assert ids[0] == ids[1] == ids[2]  # the same order on every socket of every process
    stored = (await alice.get(f"/v1/messages/get?chat={conversation_id}")).body["messages"]
    assert [m["id"] for m in stored if m["message"] != "Создана беседа."] == ids[0]  # no gap
    for socket in (alice_socket, bob_socket, carol_socket):
        await socket.assert_silent()


async def test_global_chat_order_across_processes(deployment: Deployment):
    a, b = await deployment.start(2)
    readers = [await User(a, 10).connect(), await User(b, 11).connect()]
    assert (await User(a, 10).get("/v1/messages/get?chat=0")).ok
    assert (await User(b, 11).get("/v1/messages/get?chat=0")).ok
    senders = [User(a, 1), User(b, 2)]
    for sender in senders:
        await sender.connect()
    await asyncio.gather(*(senders[n % 2].send(f"g{n}") for n in range(60)))
    seen = [[m["id"] for m in await collect(socket, 60)] for socket in readers]
    assert seen[0] == seen[1] == sorted(seen[0])
    assert len(set(seen[0])) == 60


@pytest.mark.slow
async def test_a_killed_process_is_noticed_within_30_seconds(deployment: Deployment):
    """SIGKILL of a process holding viewers: counts fall and 428 holds within 30 s; acknowledged data stays."""
    a, b = await deployment.start(2)
    alice = User(a, 1)
    alice_socket = await alice.connect()
    conversation_id = await alice.create("who is watching")
    vera_on_b = User(b, 3)
    await vera_on_b.connect()
    await vera_on_b.view(conversation_id)
    vera_on_a = User(a, 3)  # her HTTP calls through the survivor
    assert (await vera_on_a.get("/v1/conversations/get")).ok  # her socket on b counts on a
    assert (await alice.info(conversation_id))["viewers"] == 1
    acknowledged = await User(b, 3).send("sent through b before it died")
    await alice_socket.drain()

    killed_at = time.monotonic()
    b.kill()
    frame = await asyncio.wait_for(_next_event(alice_socket, "conversationViewersChange"), REAP_LIMIT_SECS + 5)
    assert frame["data"] == {"conversation_id": conversation_id, "viewers": 0}
    assert time.monotonic() - killed_at <= REAP_LIMIT_SECS
    response = await vera_on_a.get("/v1/conversations/get")
    assert (response.status, response.error_code) == (428, 1)
    assert (await alice.info(conversation_id))["viewers"] == 0
    stored = (await alice.get("/v1/messages/get?chat=0")).body["messages"]
    assert acknowledged in [m["id"] for m in stored]


async def _next_event(socket: Socket, event: str) -> dict:
    """The next frame of that event, however long it takes (the caller bounds the wait)."""
    while True:
        item = await socket.frames.get()
        assert item is not None, "socket closed"
        frame, _ = item
        if frame["event"] == event:
            return frame


async def test_a_rolling_restart_disturbs_only_the_restarted_process(deployment: Deployment):
    a, b = await deployment.start(2)
    alice, bob = User(a, 1), User(a, 2)  # both on the process that stays
    alice_socket, bob_socket = await alice.connect(), await bob.connect()
    conversation_id = await alice.create("through the deploy")
    await bob.join(conversation_id)
    await alice_socket.drain()
    await bob_socket.drain()
    dave = User(b, 4)
    dave_socket = await dave.connect()

    sent: list[str] = []
    stop = asyncio.Event()

    async def keep_sending() -> None:
        n = 0
        while not stop.is_set():
            await alice.send(f"r{n}", conversation_id)
            sent.append(f"r{n}")
            n += 1
            await asyncio.sleep(0.01)

    sender = asyncio.ensure_future(keep_sending())
    await asyncio.sleep(0.3)
    await b.terminate()
    assert await dave_socket.wait_closed() == 1001  # only the restarted process's sockets close
    await b.start()
    await User(b, 4).connect()
    await asyncio.sleep(0.3)
    stop.set()
    await sender
    assert len(sent) > 10
    received = texts(await bob_socket.drain())
    assert received == sent  # nothing lost, nothing twice, in order
    assert alice_socket.close_code is None and bob_socket.close_code is None


@pytest.mark.deployment(CHAT_MAX_MEMBERS="5")
async def test_the_member_limit_holds_under_joins_split_across_processes(deployment: Deployment):
    a, b = await deployment.start(2)
    creator = User(a, 1)
    await creator.connect()
    conversation_id = await creator.create("five seats")
    joiners = [User(a if n % 2 else b, 100 + n) for n in range(16)]
    for joiner in joiners:
        await joiner.connect()
    responses = await asyncio.gather(*(j.post(f"/v1/conversations/join/{conversation_id}") for j in joiners))
    outcomes = sorted((r.status, r.error_code) for r in responses)
    assert outcomes.count((200, None)) == 4
    assert outcomes.count((409, 3)) == 12, outcomes
    assert (await creator.info(conversation_id))["members"] == 5


@pytest.mark.deployment(CHAT_SEND_RATE_LIMIT="1")
async def test_the_send_rate_is_shared_by_all_processes(deployment: Deployment):
    """One user's burst through both processes gets one bucket: twice the rate, not twice that."""
    a, b = await deployment.start(2)
    await User(a, 1).connect()
    await asyncio.sleep(0.5)  # both processes know of each other (their first heartbeat)
    senders = [User(a, 1), User(b, 1)]
    responses = [await senders[n % 2].post("/v1/messages/send", {"text": f"burst {n}"}) for n in range(8)]
    accepted = sum(1 for r in responses if r.status == 200)
    refused = [r for r in responses if r.status != 200]
    assert accepted <= 3, accepted  # a burst of 2 (twice the rate), plus at most one refilled token
    assert refused and all((r.status, r.error_code) == (429, 429) for r in refused)


async def test_a_second_process_without_redis_is_refused(deployment: Deployment):
    """Two processes on one MySQL database need Redis; a second one without it says so and exits."""
    a = deployment.process("a")
    a.spawn(CHAT_REDIS_URL="")
    first = a
    await _wait_healthy(first)
    second = deployment.process("b")
    process = second.spawn(CHAT_REDIS_URL="")
    assert process.wait(timeout=START_TIMEOUT_SECS) != 0
    assert "Redis" in second.log() and "another process" in second.log()


async def test_a_process_with_other_shared_settings_is_refused(deployment: Deployment):
    a = deployment.process("a")
    await a.start()
    second = deployment.process("b")
    process = second.spawn(CHAT_MAX_MEMBERS="7")
    assert process.wait(timeout=START_TIMEOUT_SECS) != 0
    assert "max_members" in second.log()


async def _wait_healthy(process: ChatProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECS
    while True:
        assert process.process.poll() is None, process.log()[-2000:]
        try:
            if (await process.http.fetch(process.base_url + "/healthz", raise_error=False)).code == 200:
                return
        except (ConnectionRefusedError, OSError):
            pass
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


async def test_resume_survives_a_rolling_restart_of_its_process(deployment: Deployment):
    a, b = await deployment.start(2)
    alice = User(a, 1)
    await alice.connect()
    conversation_id = await alice.create("deploy-proof")
    bob = User(b, 2)
    bob_socket = await bob.connect()
    await bob.join(conversation_id)
    await bob_socket.drain()
    position = bob_socket.position
    await b.terminate()
    await alice.send("during the deploy", conversation_id)
    socket, first = await User(a, 2).resume(position)  # nginx sends the reconnect to the survivor
    assert first["event"] == "resumed"
    assert texts(await socket.drain()) == ["during the deploy"]
