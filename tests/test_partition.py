"""The log partitioned by audience (issue 20): each process reads only the conversations it has an
audience for, and nothing is lost where an audience moves between processes.

Two servers on one Redis (the two-processes topology: sockets on one, HTTP on
the other unless a test connects elsewhere). The metrics test in
test_metrics.py shows, from /metrics, that a process without an audience reads
nothing of a conversation; these show that every socket still gets exactly its
events when its audience appears on a process while messages flow, or moves to
another process by a resume.
"""

from __future__ import annotations

import pytest

from server import metrics
from tests.helpers import ServerUnderTest, close_and_wait, eventually
from tests.test_resume import bob_goes_away, resume_while_messages_keep_coming, texts, texts_of_next

pytestmark = [pytest.mark.gen_test, pytest.mark.parametrize("backend", ["two-processes"])]


def conversation_entries_read() -> float:
    """Conversation entries read by the servers of this test process (both share the registry)."""
    return metrics.log_entry_counters("conversation")[0]._value.get()


async def test_a_process_without_an_audience_reads_nothing_until_a_socket_there_views(server: ServerUnderTest):
    """The HTTP process holds no socket: it reads none of the messages, until a viewer opens a socket
    on it; from then on it reads (and delivers) them, and the viewer misses none."""
    alice, bob, conversation_id, _ = await bob_goes_away(server, "audience moves")
    read_before = conversation_entries_read()
    await alice.send("not read over there", conversation_id)
    await server.settle()
    # Only the socket process read it (the counters are this test process's, shared by both servers).
    assert conversation_entries_read() - read_before == 1

    other_ws = server.base_url.replace("http://", "ws://")
    vera = server.user(5)
    vera_socket = await vera.connect(ws_url=other_ws)
    await vera.view(conversation_id, socket=vera_socket)
    await vera_socket.drain()
    sent = []

    async def flood() -> None:
        for n in range(20):
            sent.append(f"f{n}")
            await alice.send(f"f{n}", conversation_id)

    read_before = conversation_entries_read()
    await flood()
    assert await texts_of_next(vera_socket, len(sent)) == sent
    await server.settle()
    assert conversation_entries_read() - read_before == 2 * len(sent)  # now both processes read them


async def test_a_resume_on_another_process_while_messages_keep_coming_has_no_gap_and_no_duplicate(
    server: ServerUnderTest,
):
    """The old socket's process keeps Bob's entries for the window; the new one reads them from its
    inbox, then live from its own: the seam has no gap and no duplicate."""
    await resume_while_messages_keep_coming(server, "seam", ws_url=server.base_url.replace("http://", "ws://"))


async def test_a_viewer_resumed_on_another_process_gets_what_the_conversation_said_meanwhile(
    server: ServerUnderTest,
):
    """Vera views without being a member; her socket closes, and its view with it. The messages
    meanwhile reach her resumed socket on the other process (the old process's view route lingered),
    then live ones (the view is carried)."""
    alice, _ = await server.connected_user(1)
    conversation_id = await alice.create("seen from outside")
    vera, vera_socket = await server.connected_user(5)
    await vera.view(conversation_id)
    await vera_socket.drain()
    position = vera_socket.position
    await close_and_wait(server, vera_socket)
    await alice.send("while away 1", conversation_id)
    await alice.send("while away 2", conversation_id)

    other_ws = server.base_url.replace("http://", "ws://")
    resumed, first = await vera.resume(position, ws_url=other_ws)
    assert first["event"] == "resumed", first
    frames = await resumed.drain()
    assert texts(frames) == ["while away 1", "while away 2"]
    await alice.send("live", conversation_id)
    assert texts(await resumed.drain()) == ["live"]


async def test_a_process_stopped_cleanly_keeps_its_sockets_resumable_elsewhere(server: ServerUnderTest):
    """A rolling deploy: the socket process stops; messages are sent; Bob resumes on the other process
    and gets them all (the stopped process's inbox still receives them for the window)."""
    other_ws = server.base_url.replace("http://", "ws://")
    alice = server.user(1)
    await alice.connect(ws_url=other_ws)  # she keeps sending through the process that stays
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("deploy")
    await bob.join(conversation_id)
    await bob_socket.drain()
    position = bob_socket.position
    await server.chat_server.stop()
    await alice.send("during the deploy", conversation_id)

    resumed, first = await bob.resume(position, ws_url=other_ws)
    assert first["event"] == "resumed", first
    assert texts(await resumed.drain()) == ["during the deploy"]


async def test_a_socket_resumed_on_another_process_resumes_again_from_a_replayed_frame(server: ServerUnderTest):
    """Bob's socket on A closes; he resumes on B, which replays from A's lanes; that socket closes
    before anything new reaches it, and he resumes from the first replayed frame, on A again: the
    rest of the replay (from A's lanes) and what came since (from B's: its part of the history)."""
    alice, bob, conversation_id, position = await bob_goes_away(server, "twice")
    for text in ("m1", "m2", "m3"):
        await alice.send(text, conversation_id)
    other_ws = server.base_url.replace("http://", "ws://")
    on_b, first = await bob.resume(position, ws_url=other_ws)
    assert first["event"] == "resumed" and first["data"]["missed"] == 3
    assert texts([await on_b.next_frame()]) == ["m1"]
    after_m1 = on_b.position
    assert texts(await on_b.drain()) == ["m2", "m3"]
    on_b.close()
    hub_b = server.http_chat_server.hub
    await eventually(lambda: not server.http_chat_server.registry.user_sockets(2, on_b.socket_id)
                     and on_b.socket_id not in hub_b.closing)
    await alice.send("m4", conversation_id)

    on_a, first = await bob.resume(after_m1)
    assert first["event"] == "resumed", first
    assert texts(await on_a.drain()) == ["m2", "m3", "m4"]
    await alice.send("live", conversation_id)
    assert texts(await on_a.drain()) == ["live"]
