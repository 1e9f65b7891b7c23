"""Resume (docs/API.md §3, "Positions and resume"): a reconnecting socket gets exactly what it missed, or is told it cannot.

Every case runs on each topology: one process on MySQL + Redis, the
embedded backend, and two processes (sockets on one, HTTP on the other).
"resumed" must always mean complete: in order, no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from server import wire
from server.app import ChatServer
from tests.helpers import ServerUnderTest, Socket, User, close_and_wait, eventually
from tests.redis_access import async_client, delete_matching

pytestmark = pytest.mark.gen_test


def texts(frames: list[dict]) -> list[str]:
    return [frame["data"]["message"] for frame in frames if frame["event"] == "new_message"]


async def bob_goes_away(server: ServerUnderTest, name: str) -> tuple[User, User, int, str]:
    """Alice creates a conversation, Bob joins it, reads everything, then loses his connection.

    Return Alice, Bob, the conversation and the position Bob resumes from.
    """
    alice, _ = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create(name)
    await bob.join(conversation_id)
    await bob_socket.drain()
    position = bob_socket.position
    await close_and_wait(server, bob_socket)
    return alice, bob, conversation_id, position


async def test_resume_delivers_what_was_missed_in_order_then_live(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("tunnel")
    await bob.join(conversation_id)
    await alice.send("before", conversation_id)
    assert texts(await bob_socket.drain()) == ["before"]
    position = bob_socket.position

    await close_and_wait(server, bob_socket)
    for n in range(3):
        await alice.send(f"missed {n}", conversation_id)
    await alice.send("global, not subscribed")  # bob's socket never listened to the global chat

    resumed, first = await bob.resume(position)
    assert first["event"] == "resumed"
    assert first["data"]["missed"] == 3
    assert resumed.socket_id != bob_socket.socket_id  # a new socket, named in the frame
    missed = [await resumed.next_frame() for _ in range(3)]
    assert texts(missed) == ["missed 0", "missed 1", "missed 2"]
    await resumed.assert_silent()

    # Live events follow, and the new id is the one that counts for X-Socket-Id.
    await alice.send("live", conversation_id)
    assert texts(await resumed.drain()) == ["live"]
    assert (await bob.get("/v1/conversations/get", socket=resumed)).ok
    response = await bob.get("/v1/conversations/get", socket=bob_socket)
    assert (response.status, response.error_code) == (428, 1)


async def test_resume_from_an_earlier_position_gives_only_what_came_after(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("replay")
    await bob.join(conversation_id)
    await bob_socket.drain()
    for n in range(4):
        await alice.send(f"m{n}", conversation_id)
    first_two = [await bob_socket.next_frame() for _ in range(2)]
    assert texts(first_two) == ["m0", "m1"]
    position = bob_socket.position  # the client processed only two of them
    await close_and_wait(server, bob_socket)

    resumed, first = await bob.resume(position)
    assert first["event"] == "resumed" and first["data"]["missed"] == 2
    assert texts(await resumed.drain()) == ["m2", "m3"]


async def test_membership_changes_while_away_are_replayed(server: ServerUnderTest):
    """Joins, leaves and deletes that happened while away arrive as they would have live."""
    alice, alice_socket = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("members come and go")
    await alice_socket.drain()
    position = alice_socket.position
    await close_and_wait(server, alice_socket)
    await alice.connect()  # another tab keeps the 428 rule satisfied
    await bob.join(conversation_id)
    await bob.send("hi", conversation_id)
    other = await bob.create("bob's own")
    await bob.get(f"/v1/conversations/leave/{conversation_id}")

    resumed, first = await alice.resume(position)
    assert first["event"] == "resumed"
    frames = await resumed.drain()
    assert [frame["event"] for frame in frames] == [
        "joined_conversation", "new_message", "new_conversation", "leaved_conversation"
    ]
    assert frames[2]["data"]["conversation_id"] == other
    assert first["data"]["missed"] == 4


async def test_global_subscription_carries_over(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    assert (await bob.get("/v1/messages/get?chat=0")).ok  # subscribes bob's socket
    await alice.send("first")
    assert texts(await bob_socket.drain()) == ["first"]
    position = bob_socket.position
    await close_and_wait(server, bob_socket)
    await alice.send("while away")

    resumed, first = await bob.resume(position)
    assert first["event"] == "resumed"
    assert texts(await resumed.drain()) == ["while away"]
    await alice.send("after")  # the new socket listens without asking again
    assert texts(await resumed.drain()) == ["after"]


async def test_views_carry_over(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1)
    vera, vera_socket = await server.connected_user(3)
    conversation_id = await alice.create("watched")
    await vera.view(conversation_id)
    await alice.send("seen live", conversation_id)
    await alice_socket.drain()
    assert texts(await vera_socket.drain()) == ["seen live"]
    position = vera_socket.position
    await close_and_wait(server, vera_socket)
    await alice.send("missed", conversation_id)

    resumed, first = await vera.resume(position)
    assert first["event"] == "resumed"
    assert texts(await resumed.drain()) == ["missed"]
    # Still a viewer: counted, and getting the conversation's messages.
    await eventually(lambda: _viewers(alice, conversation_id, 1), "the resumed socket does not count as a viewer")
    await alice.send("after", conversation_id)
    assert texts(await resumed.drain()) == ["after"]


async def _viewers(user: User, conversation_id: int, expected: int) -> bool:
    return (await user.info(conversation_id))["viewers"] == expected


@pytest.mark.parametrize("position", [
    "nonsense",
    "a.b.c",
    "x" * 500,
    "..",
    "epoch.1-0.socket",
])
async def test_a_forged_position_fails_and_gives_a_fresh_socket(server: ServerUnderTest, position: str):
    alice, _ = await server.connected_user(1)
    bob = server.user(2)
    socket, first = await bob.resume(position)
    assert first["event"] == "resume_failed"
    assert first["data"]["reason"]  # "unknown position", or "history lost" when the made-up epoch is not ours
    # A fresh socket: it works for the 428 rule and gets live events only.
    conversation_id = await bob.create("fresh")
    await alice.join(conversation_id)
    frames = await socket.drain()
    assert [frame["event"] for frame in frames] == ["new_conversation", "joined_conversation"]


async def test_a_forged_position_with_the_right_epoch_fails(server: ServerUnderTest):
    """Only the epoch is right: the entry and the socket are made up."""
    alice, alice_socket = await server.connected_user(1)
    epoch, entry_id, tail = alice_socket.position.split(".", 2)
    for forged in (f"{epoch}.{entry_id}.nosuchsocket.key", f"{epoch}.99999999999999-0.{tail}"):
        socket, first = await alice.resume(forged)
        assert first["event"] == "resume_failed", forged
        socket.close()


async def test_another_users_position_is_not_a_capability(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1)
    mallory = server.user(66)
    conversation_id = await alice.create("private")
    await alice_socket.drain()
    position = alice_socket.position
    await close_and_wait(server, alice_socket)
    await alice.connect()
    await alice.send("secret", conversation_id)

    socket, first = await mallory.resume(position)
    assert first["event"] == "resume_failed"
    assert first["data"]["reason"] == "unknown position"
    await socket.assert_silent()  # nothing of alice's conversation


@pytest.mark.server(resume_window=1)
async def test_a_position_older_than_the_window_fails(server: ServerUnderTest):
    alice, bob, conversation_id, position = await bob_goes_away(server, "slow train")
    await alice.send("too late to replay", conversation_id)
    await asyncio.sleep(1.3)

    socket, first = await bob.resume(position)
    assert first["event"] == "resume_failed"
    assert "window" in first["data"]["reason"]


async def test_a_trimmed_log_fails_instead_of_skipping(server: ServerUnderTest):
    """The position's entry is no longer in the log (trimmed): no silent gap."""
    alice, bob, conversation_id, position = await bob_goes_away(server, "trimmed")
    await alice.send("lost in the trim", conversation_id)
    await _trim_log(server)

    socket, first = await bob.resume(position)
    assert first["event"] == "resume_failed"
    assert "trimmed" in first["data"]["reason"]
    await alice.send("live again", conversation_id)
    assert texts(await socket.drain()) == ["live again"]


async def _trim_log(server: ServerUnderTest) -> None:
    """Drop every entry of the log, and of each process's memory of recent entries, as trimming by age would."""
    for chat_server in {server.chat_server, server.http_chat_server}:
        chat_server.hub.recent.clear()
    bus = server.chat_server.bus
    if server.backend == "mysql":
        client = async_client(server.chat_server.settings.redis_url)
        await client.xtrim(bus.log_key, maxlen=0)
        await client.aclose()
    else:
        bus._log.clear()
        bus._ids.clear()


# Redis only: the embedded log lives in the process (the restart test below covers its loss).
@pytest.mark.parametrize("backend", ["mysql", "two-processes"])
async def test_redis_losing_its_data_resyncs_sockets_and_fails_old_resumes(server: ServerUnderTest):
    """A flushed Redis lost the log: open sockets stay open and get one resync; old positions fail."""
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("flushed")
    await bob.join(conversation_id)
    await bob_socket.drain()
    position = bob_socket.position
    await close_and_wait(server, bob_socket)
    await alice.send("before the flush", conversation_id)
    await alice_socket.drain()
    settings = server.chat_server.settings
    await delete_matching(settings.redis_url, settings.redis_prefix + "*")
    for chat_server in {server.chat_server, server.http_chat_server}:
        await chat_server.hub.beat()  # each process's next heartbeat notices the loss (run rather than waited for)
    assert await alice_socket.drain() == [json.loads(wire.RESYNC)]

    socket, first = await bob.resume(position)
    assert first["event"] == "resume_failed"
    assert "history lost" in first["data"]["reason"]
    await alice.send("after the flush", conversation_id)
    assert texts(await socket.drain()) == ["after the flush"]
    assert texts(await alice_socket.drain()) == ["after the flush"]
    assert alice_socket.close_code is None


async def restart_socket_server(server: ServerUnderTest) -> None:
    """Stop the server that holds the sockets and start it again on a new port (a deploy of that process)."""
    old = server.chat_server
    await old.stop()
    restarted = ChatServer(old.settings)
    port = await restarted.start(port=0)
    server.chat_server = restarted  # the fixture stops it (stopping the old one again is a no-op)
    server.ws_url = f"ws://127.0.0.1:{port}"
    if server.http_chat_server is old:
        server.http_chat_server = restarted
        server.base_url = f"http://127.0.0.1:{port}"


async def test_resume_after_the_process_restarts(server: ServerUnderTest):
    """With Redis the log outlives the process: a restarted process resumes its old sockets.

    The embedded log dies with the process: there the answer is resume_failed
    (another epoch), never a silent gap.
    """
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("rolling deploy")
    await bob.join(conversation_id)
    await bob_socket.drain()
    position = bob_socket.position

    await restart_socket_server(server)  # every socket of it closes (1001)
    assert await bob_socket.wait_closed() == 1001
    await alice.connect()
    await alice.send("during the restart", conversation_id)

    socket, first = await bob.resume(position)
    if server.backend == "mysql":
        assert first["event"] == "resumed"
        assert texts(await socket.drain()) == ["during the restart"]
    else:
        assert first["event"] == "resume_failed"
        assert "restarted" in first["data"]["reason"]
        await alice.send("live", conversation_id)
        assert texts(await socket.drain()) == ["live"]


@pytest.mark.parametrize("backend", ["mysql", "two-processes"])
async def test_resumes_from_before_a_restart_each_get_exactly_what_they_missed(server: ServerUnderTest):
    """After a restart every position is older than the process: the first resume reads the log back
    from Redis and the process keeps it, so the others (newer, older, in between) read little; each
    still gets exactly its own missed frames."""
    alice, _ = await server.connected_user(1)
    conversation_id = await alice.create("staggered")
    members = {user_id: await server.connected_user(user_id) for user_id in (2, 3, 4)}
    for user, _ in members.values():
        await user.join(conversation_id)
    for _, socket in members.values():
        await socket.drain()
    positions = {}
    stops_after = {2: 1, 3: 3, 4: 5}  # user 2 processed up to m1, user 3 up to m3, user 4 up to m5
    for n in range(6):
        await alice.send(f"m{n}", conversation_id)
        for user_id, (_, socket) in members.items():
            if user_id not in positions:
                assert texts(await socket.drain()) == [f"m{n}"]
                if n == stops_after[user_id]:
                    positions[user_id] = socket.position

    await restart_socket_server(server)
    await alice.connect()
    await alice.send("after", conversation_id)

    expected = {2: ["m2", "m3", "m4", "m5", "after"], 3: ["m4", "m5", "after"], 4: ["after"]}
    for user_id in (3, 4, 2):  # a middle position first, then the newest, then the oldest
        socket, first = await members[user_id][0].resume(positions[user_id])
        assert first["event"] == "resumed", first
        assert texts(await socket.drain()) == expected[user_id], user_id


@pytest.mark.parametrize("backend", ["two-processes"])
async def test_resume_lands_on_another_process(server: ServerUnderTest):
    """The reconnect goes to another process than the one the socket was on."""
    alice, bob, conversation_id, position = await bob_goes_away(server, "hop")
    for n in range(3):
        await alice.send(f"away {n}", conversation_id)

    other_ws = server.base_url.replace("http://", "ws://")  # the HTTP process holds no socket of bob's
    resumed, first = await bob.resume(position, ws_url=other_ws)
    assert first["event"] == "resumed" and first["data"]["missed"] == 3
    assert texts(await resumed.drain()) == ["away 0", "away 1", "away 2"]
    await alice.send("live", conversation_id)
    assert texts(await resumed.drain()) == ["live"]


async def test_resume_while_messages_keep_coming_has_no_gap_and_no_duplicate(server: ServerUnderTest):
    await resume_while_messages_keep_coming(server, "firehose")


async def resume_while_messages_keep_coming(server: ServerUnderTest, name: str, ws_url: str | None = None) -> None:
    """Bob resumes (on another server if ``ws_url``) while Alice sends 40 messages: he gets each once, in order."""
    alice, bob, conversation_id, position = await bob_goes_away(server, name)

    sent: list[str] = []

    async def keep_sending() -> None:
        for n in range(40):
            sent.append(f"n{n}")
            await alice.send(f"n{n}", conversation_id)

    sender = asyncio.ensure_future(keep_sending())
    await asyncio.sleep(0.05)
    resumed, first = await bob.resume(position, ws_url=ws_url)
    assert first["event"] == "resumed"
    await sender
    assert await texts_of_next(resumed, 40) == sent
    await resumed.assert_silent()


async def texts_of_next(socket: Socket, count: int) -> list[str]:
    """The texts of the socket's next ``count`` messages (other frames skipped)."""
    received: list[str] = []
    while len(received) < count:
        frame = await socket.next_frame()
        assert frame is not None
        received += texts([frame])
    return received
