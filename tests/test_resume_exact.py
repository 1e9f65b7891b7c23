"""Resume that cannot lie (docs/API.md §3, "Positions and resume"): the defects a client author found.

A position resumes only what its socket was actually sent up to that point;
the ``resumed`` frame's own position resumes to where the client asked; the
old socket stops counting the moment its successor is resumed. Every case
runs on each topology.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import ServerUnderTest, close_and_wait, eventually
from tests.test_resume import bob_goes_away, texts

pytestmark = pytest.mark.gen_test


def swap_socket_part(position: str, other: str) -> str:
    """``position``'s epoch and entry with ``other``'s socket part (everything after the entry)."""
    epoch, entry_id, _ = position.split(".", 2)
    return f"{epoch}.{entry_id}.{other.split('.', 2)[2]}"


async def test_a_position_with_another_sockets_part_does_not_resume_with_a_gap(server: ServerUnderTest):
    """L closes; g2 reaches only K; K's position for g2 with L's socket part must not resume L."""
    alice, socket_l = await server.connected_user(1)
    socket_k = await alice.connect()
    bob, _ = await server.connected_user(2)
    assert (await alice.get("/v1/messages/get?chat=0")).ok  # both of alice's sockets listen to the global chat
    await bob.send("g1")
    assert texts(await socket_l.drain()) == ["g1"]
    assert texts(await socket_k.drain()) == ["g1"]
    position_l = socket_l.position
    await close_and_wait(server, socket_l)
    await bob.send("g2")
    assert texts(await socket_k.drain()) == ["g2"]

    forged = swap_socket_part(socket_k.position, position_l)
    resumed, first = await alice.resume(forged)
    assert first["event"] == "resume_failed", first
    assert first["data"]["reason"] == "unknown position"

    # L's own position still resumes, and g2 is what it missed.
    resumed, first = await alice.resume(position_l)
    assert first["event"] == "resumed" and first["data"]["missed"] == 1
    assert texts(await resumed.drain()) == ["g2"]


async def test_a_position_of_an_entry_the_socket_never_got_fails(server: ServerUnderTest):
    """K listens to the global chat, L does not: K's global position with L's socket part is not L's."""
    alice, socket_l = await server.connected_user(1)
    socket_k = await alice.connect()
    bob, _ = await server.connected_user(2)
    assert (await alice.get("/v1/messages/get?chat=0", socket=socket_k)).ok
    await bob.send("only for k")
    assert texts(await socket_k.drain()) == ["only for k"]
    await socket_l.assert_silent()
    forged = swap_socket_part(socket_k.position, socket_l.position)
    resumed, first = await alice.resume(forged)
    assert first["event"] == "resume_failed", first
    assert first["data"]["reason"] == "unknown position"


async def test_a_position_without_its_socket_secret_fails(server: ServerUnderTest):
    """The socket part is more than the socket id (which requests carry in X-Socket-Id): it is not guessable."""
    alice, socket = await server.connected_user(1)
    await alice.create("secret keeper")
    await socket.drain()
    epoch, entry_id, _ = socket.position.split(".", 2)
    await close_and_wait(server, socket)
    for forged in (f"{epoch}.{entry_id}.{socket.socket_id}", f"{epoch}.{entry_id}.{socket.socket_id}.AAAAAAAAAAA"):
        resumed, first = await alice.resume(forged)
        assert first["event"] == "resume_failed", forged
        assert first["data"]["reason"] == "unknown position"
        resumed.close()


async def test_the_resumed_frames_own_position_resumes_the_whole_replay(server: ServerUnderTest):
    """Miss m1, g2, m3; resume; drop right after ``resumed``; resuming from its pos replays all three."""
    alice, _ = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("tunnel")
    await bob.join(conversation_id)
    assert (await bob.get("/v1/messages/get?chat=0")).ok
    await bob_socket.drain()
    position = bob_socket.position
    await close_and_wait(server, bob_socket)
    await alice.send("m1", conversation_id)
    await alice.send("g2")
    await alice.send("m3", conversation_id)

    resumed, first = await bob.resume(position)
    assert first["event"] == "resumed" and first["data"]["missed"] == 3
    await close_and_wait(server, resumed)  # lost before any replayed frame was processed

    again, first = await bob.resume(first["pos"])
    assert first["event"] == "resumed", first
    assert first["data"]["missed"] == 3
    assert texts(await again.drain()) == ["m1", "g2", "m3"]


async def test_a_replayed_frames_position_resumes_after_it(server: ServerUnderTest):
    alice, bob, conversation_id, position = await bob_goes_away(server, "halfway")
    for text in ("a", "b", "c"):
        await alice.send(text, conversation_id)

    resumed, first = await bob.resume(position)
    assert first["data"]["missed"] == 3
    assert texts([await resumed.next_frame()]) == ["a"]
    await close_and_wait(server, resumed)
    again, first = await bob.resume(resumed.position)
    assert first["event"] == "resumed" and first["data"]["missed"] == 2
    assert texts(await again.drain()) == ["b", "c"]


async def test_resuming_retires_an_old_socket_that_still_looks_open(server: ServerUnderTest):
    """A phone changed networks: the old TCP connection is not known dead yet when the resume arrives."""
    alice, _ = await server.connected_user(1)
    bob, old = await server.connected_user(2)
    assert (await bob.get("/v1/messages/get?chat=0", socket=old)).ok
    assert (await bob.get("/v1/conversations/get", socket=old)).ok  # every process has seen it open
    await alice.send("g1")
    await old.drain()

    resumed, first = await bob.resume(old.position)
    assert first["event"] == "resumed"
    assert await old.wait_closed() == 4000  # closed at once, with the documented code
    response = await bob.get("/v1/conversations/get", socket=old)
    assert (response.status, response.error_code) == (428, 1)
    assert (await bob.get("/v1/conversations/get", socket=resumed)).ok
    await alice.send("g2")
    assert texts(await resumed.drain()) == ["g2"]  # the subscription moved; the old one is gone
    assert old.socket_id not in server.registry.user_sockets(2)


@pytest.mark.parametrize("backend", ["two-processes"])
async def test_resuming_retires_the_old_socket_on_another_process(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, old = await server.connected_user(2)
    assert (await bob.get("/v1/conversations/get", socket=old)).ok
    other_ws = server.base_url.replace("http://", "ws://")
    resumed, first = await bob.resume(old.position, ws_url=other_ws)
    assert first["event"] == "resumed", first
    assert await old.wait_closed() == 4000
    await eventually(lambda: not server.registry.user_sockets(2, old.socket_id))
    response = await bob.get("/v1/conversations/get", socket=old)
    assert (response.status, response.error_code) == (428, 1)


async def test_viewers_do_not_flicker_when_one_of_two_viewing_sockets_resumes(server: ServerUnderTest):
    """Vera views from two sockets, resumes one and closes the other: members see no 0 in between."""
    alice, alice_socket = await server.connected_user(1)
    vera, first_socket = await server.connected_user(3)
    second_socket = await vera.connect()
    conversation_id = await alice.create("watched twice")
    await vera.view(conversation_id)  # both sockets
    await alice_socket.drain()
    position = first_socket.position
    await close_and_wait(server, first_socket)

    resumed, first = await vera.resume(position)
    assert first["event"] == "resumed"
    await close_and_wait(server, second_socket)
    await asyncio.sleep(0.1)
    counts = [f["data"]["viewers"] for f in await alice_socket.drain() if f["event"] == "conversationViewersChange"]
    assert 0 not in counts, counts
    assert (await alice.info(conversation_id))["viewers"] == 1


async def test_an_empty_resume_is_a_malformed_position(server: ServerUnderTest):
    bob = server.user(2)
    socket, first = await bob.resume("")
    assert first["event"] == "resume_failed"
    assert first["data"]["reason"] == "unknown position"


async def test_a_position_past_the_logs_head_fails_at_once(server: ServerUnderTest):
    alice, socket = await server.connected_user(1)
    epoch, entry_id, tail = socket.position.split(".", 2)
    ms, _, seq = entry_id.partition("-")
    ahead = f"{epoch}.{int(ms) + 1000}-0.{tail}"
    resumed, first = await alice.resume(ahead)
    assert first["event"] == "resume_failed"
    # At once, and for what it is: not "history trimmed" after waiting for an entry that will never exist.
    assert first["data"]["reason"] == "unknown position"
