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
import time

import pytest

from tests.helpers import Socket, User
from tests.outages import free_port
from tests.processes import START_TIMEOUT_SECS, ChatProcess, Deployment, collect, texts

pytestmark = pytest.mark.gen_test(timeout=120)

# docs/API.md §9: a dead process is noticed within 30 s.
REAP_LIMIT_SECS = 30

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


def _port_with_free_metrics_neighbour() -> int:
    """A free port whose metrics neighbour (port + METRICS_PORT_OFFSET) is free too."""
    import socket

    from server.settings import METRICS_PORT_OFFSET

    while True:
        port = free_port()
        if port + METRICS_PORT_OFFSET > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + METRICS_PORT_OFFSET))
            except OSError:
                continue
        return port


async def test_two_processes_on_one_host_start_with_the_default_metrics_setting(deployment: Deployment):
    """config/chat.toml names a host only: each process's /metrics listens next to its own API port."""
    from server.settings import METRICS_PORT_OFFSET

    del deployment.env["CHAT_METRICS_ADDR"]  # the default of config/chat.toml
    processes = [deployment.process(name) for name in "ab"]
    for process in processes:
        process.port = _port_with_free_metrics_neighbour()
        process.base_url = f"http://127.0.0.1:{process.port}"
        process.ws_url = f"ws://127.0.0.1:{process.port}"
        process.spawn()
    for process in processes:
        await process.started()
        scraped = await process.http.fetch(f"http://127.0.0.1:{process.port + METRICS_PORT_OFFSET}/metrics")
        assert b"chat_open_sockets" in scraped.body


async def test_a_metrics_port_in_use_refuses_the_start_in_one_line(deployment: Deployment):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        process = deployment.process("a")
        assert process.spawn(CHAT_METRICS_ADDR=address).wait(timeout=START_TIMEOUT_SECS) == 2
    log = process.log()
    assert f"refusing to start: {address} is in use" in log and "CHAT_METRICS_ADDR" in log
    assert "Traceback" not in log
