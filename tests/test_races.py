"""Races that must come out right: real HTTP calls run concurrently with asyncio.gather.

Each test states the only outcomes the contract (docs/API.md) allows when
the calls overlap, whichever order the server happens to run them in, and
then checks what the database and every socket ended up with. Never a 500.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from storage.models import Member
from tests.helpers import Response, ServerUnderTest, Socket, User, delete_event, eventually

pytestmark = pytest.mark.gen_test

ROUNDS = 10


def outcome(response: Response) -> tuple[int, int | None]:
    """(HTTP status, error code) — (200, None) for a success."""
    return (response.status, None) if response.ok else (response.status, response.error_code)


def events_named(frames: list[dict], name: str) -> list[dict]:
    return [frame for frame in frames if frame["event"] == name]


async def member_rows(server: ServerUnderTest, conversation_id: int) -> int:
    """How many membership rows the database holds for a conversation."""
    async with server.database.sessions() as session:
        return await session.scalar(
            select(func.count()).select_from(Member).where(Member.conversation_id == conversation_id)
        )


async def conversation_gone(user: User, conversation_id: int) -> bool:
    response = await user.get(f"/v1/conversations/info/{conversation_id}")
    return (response.status, response.error_code) == (404, 1)


@pytest.mark.server(max_members=5)
async def test_many_users_joining_the_last_places(server: ServerUnderTest):
    """20 users join a conversation with 4 free places at once: exactly 4 get in, 16 get code 3 (409).

    info, the database and the joined_conversation events all agree on 5 members.
    """
    creator, creator_socket = await server.connected_user(1)
    conversation_id = await creator.create("crowded")
    joiners = [await server.connected_user(100 + i) for i in range(20)]
    for _, socket in joiners:
        await socket.drain()
    await creator_socket.drain()

    responses = await asyncio.gather(
        *(user.get(f"/v1/conversations/join/{conversation_id}") for user, _ in joiners)
    )

    outcomes = [outcome(response) for response in responses]
    assert outcomes.count((200, None)) == 4, outcomes
    assert outcomes.count((409, 3)) == 16, outcomes
    winners = sorted(user.user_id for (user, _), o in zip(joiners, outcomes) if o == (200, None))

    response = await creator.get(f"/v1/conversations/info/{conversation_id}")
    conversation = response.body["conversation"]
    assert conversation["members"] == 5
    assert sorted(u["user_id"] for u in conversation["users"]) == [1, *winners]
    row, users = await server.database.conversation_info(conversation_id)
    assert row.members == 5 and len(users) == 5
    assert await member_rows(server, conversation_id) == 5
    for socket in [creator_socket, *(socket for _, socket in joiners)]:
        joined = events_named(await socket.drain(), "joined_conversation")
        assert sorted(e["data"]["user_id"] for e in joined) == winners
    # A loser is still not a member; the conversation is still full.
    loser = next(user for (user, _), o in zip(joiners, outcomes) if o != (200, None))
    assert (await loser.get(f"/v1/messages/get?chat={conversation_id}")).error_code == 3


async def test_last_two_members_leaving_at_once(server: ServerUnderTest):
    """Both members leave at once: the conversation is deleted exactly once, never a 500.

    Each leave either succeeds (one of them as the last member, deleting) or
    is a clean 404 code 1 (it came after the delete); every socket gets
    exactly one delete_conversation, as its last frame about it.
    """
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    carol, carol_socket = await server.connected_user(3)
    for round_number in range(ROUNDS):
        conversation_id = await alice.create(f"leaving {round_number}")
        await bob.join(conversation_id)
        await alice.send("bye", conversation_id)
        for socket in (alice_socket, bob_socket, carol_socket):
            await socket.drain()

        responses = await asyncio.gather(
            alice.get(f"/v1/conversations/leave/{conversation_id}"),
            bob.get(f"/v1/conversations/leave/{conversation_id}"),
        )

        outcomes = [outcome(response) for response in responses]
        assert all(o in ((200, None), (404, 1)) for o in outcomes), outcomes
        assert (200, None) in outcomes
        left = sorted(user_id for user_id, o in zip((1, 2), outcomes) if o == (200, None))
        for socket in (alice_socket, bob_socket, carol_socket):
            frames = await socket.drain()
            assert events_named(frames, "delete_conversation") == [delete_event(conversation_id)]
            assert frames[-1] == delete_event(conversation_id)
            assert sorted(f["data"]["user_id"] for f in events_named(frames, "leaved_conversation")) == left
        assert await conversation_gone(carol, conversation_id)
        assert await member_rows(server, conversation_id) == 0
        assert await server.database.list_messages(conversation_id, 0, 100) == []


@pytest.mark.parametrize("sender_is_creator", [False, True], ids=["member sends", "creator sends"])
async def test_message_sent_while_the_conversation_is_deleted(server: ServerUnderTest, sender_is_creator):
    """A send racing the delete either lands before it (and is delivered before delete_conversation) or gets 404 code 1.

    Either way no message row of the conversation survives, and no
    new_message follows a delete_conversation on any socket.
    """
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    sender = alice if sender_is_creator else bob
    for round_number in range(ROUNDS * 2):
        conversation_id = await alice.create(f"deleting {round_number}")
        await bob.join(conversation_id)
        await alice_socket.drain()
        await bob_socket.drain()

        send, delete = await asyncio.gather(
            sender.post("/v1/messages/send", {"text": "last words", "conversation_id": conversation_id}),
            alice.call("DELETE", f"/v1/conversations/delete/{conversation_id}"),
        )

        assert outcome(delete) == (200, None), delete.body
        assert outcome(send) in ((200, None), (404, 1)), send.body
        for socket in (alice_socket, bob_socket):
            frames = await socket.drain()
            assert frames[-1] == delete_event(conversation_id), frames
            delivered = [f["data"]["id"] for f in events_named(frames, "new_message")]
            assert delivered == ([send.body["id"]] if send.ok else []), frames
        assert await server.database.list_messages(conversation_id, 0, 100) == []
        assert await member_rows(server, conversation_id) == 0


async def test_delete_while_someone_is_joining(server: ServerUnderTest):
    """A join racing the delete either succeeds first (then the joiner sees the delete) or gets 404 code 1.

    Afterwards no membership row is left and the conversation is gone.
    """
    alice, alice_socket = await server.connected_user(1)
    carol, carol_socket = await server.connected_user(3, name="Carol")
    for round_number in range(ROUNDS * 2):
        conversation_id = await alice.create(f"joining {round_number}")
        await alice_socket.drain()
        await carol_socket.drain()

        join, delete = await asyncio.gather(
            carol.get(f"/v1/conversations/join/{conversation_id}"),
            alice.call("DELETE", f"/v1/conversations/delete/{conversation_id}"),
        )

        assert outcome(delete) == (200, None), delete.body
        assert outcome(join) in ((200, None), (404, 1)), join.body
        frames = await carol_socket.drain()
        if join.ok:
            assert [f["event"] for f in frames] == ["joined_conversation", "delete_conversation"], frames
        else:
            assert frames == [delete_event(conversation_id)]
        assert await member_rows(server, conversation_id) == 0
        assert await conversation_gone(carol, conversation_id)
        assert await carol.conversations("joined") == []


async def test_concurrent_sends_arrive_everywhere_in_id_order_exactly_once(server: ServerUnderTest):
    """5 members send 60 messages at once: each member's and a viewer's socket gets all 60, in ascending id order.

    The stored order is the same, and each sender got the id it was delivered under.
    """
    members = [await server.connected_user(1 + i) for i in range(5)]
    (alice, _), others = members[0], members[1:]
    conversation_id = await alice.create("busy")
    for user, _ in others:
        await user.join(conversation_id)
    vera, vera_socket = await server.connected_user(50)
    assert (await vera.get(f"/v1/conversations/view/{conversation_id}")).ok
    sockets = [socket for _, socket in members] + [vera_socket]
    for socket in sockets:
        await socket.drain()

    sends = [(user, f"{user.user_id}:{n}") for n in range(12) for user, _ in members]
    ids = await asyncio.gather(*(user.send(text, conversation_id) for user, text in sends))

    assert len(set(ids)) == len(ids) == 60
    sent = dict(zip(ids, (text for _, text in sends)))
    for socket in sockets:
        delivered = [f["data"] for f in events_named(await socket.drain(), "new_message")]
        assert [d["id"] for d in delivered] == sorted(ids)
        assert all(d["message"] == sent[d["id"]] for d in delivered)
    stored = await server.database.list_messages(conversation_id, 0, 100)
    assert [m.id for m in stored][1:] == sorted(ids)


async def test_concurrent_sends_to_the_global_chat_keep_id_order(server: ServerUnderTest):
    """Concurrent global-chat sends reach every subscribed socket once each, in ascending id order."""
    users = [await server.connected_user(1 + i) for i in range(4)]
    for user, socket in users:
        assert (await user.get("/v1/messages/get?chat=0")).ok
    ids = await asyncio.gather(*(user.send(f"g{n}") for n in range(10) for user, _ in users))
    for _, socket in users:
        delivered = [f["data"]["id"] for f in events_named(await socket.drain(), "new_message")]
        assert delivered == sorted(ids)


@pytest.mark.parametrize("attempts", [2, 5, 8])
async def test_concurrent_creates_of_one_name(server: ServerUnderTest, attempts):
    """One user creating the same name several times at once: exactly one succeeds, the rest get code 1 (409)."""
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    for round_number in range(ROUNDS * 2):
        name = f"twin {round_number}"
        responses = await asyncio.gather(
            *(alice.post("/v1/conversations/new", {"name": name}) for _ in range(attempts))
        )
        outcomes = [outcome(response) for response in responses]
        assert outcomes.count((200, None)) == 1, outcomes
        assert outcomes.count((409, 1)) == attempts - 1, outcomes
        [created] = [r.body["conversation_id"] for r in responses if r.ok]
        for socket in (alice_socket, bob_socket):
            announced = events_named(await socket.drain(), "new_conversation")
            assert [e["data"]["conversation_id"] for e in announced] == [created]
    names = sorted(c["name"] for c in await bob.conversations("new"))
    assert names == sorted(f"twin {n}" for n in range(ROUNDS * 2))


async def close_after(socket: Socket, round_number: int) -> None:
    """Close a socket a little after a request was started, at a different moment each round.

    The moments sweep 0-4.5 ms so that over the rounds the close lands
    before, during and after the server's handling of the request; no
    outcome depends on which.
    """
    await asyncio.sleep((round_number % 10) * 0.0005)
    socket.close()


async def viewers_of(user: User, conversation_id: int, expected: int) -> bool:
    response = await user.get(f"/v1/conversations/info/{conversation_id}")
    return response.body["conversation"]["viewers"] == expected


async def test_view_racing_a_disconnect_leaves_no_ghost_viewer(server: ServerUnderTest):
    """A view whose only socket closes while the request runs must not leave a viewer behind.

    view either fails with code 3 (428: the socket was already gone) or
    succeeds; shortly after the close, the viewer count is 0 again and the registry holds nothing of that user.
    """
    alice, alice_socket = await server.connected_user(1)
    conversation_id = await alice.create("ghosts")
    for round_number in range(ROUNDS * 2):
        viewer = server.user(100 + round_number)
        socket = await viewer.connect()

        response, _ = await asyncio.gather(
            viewer.get(f"/v1/conversations/view/{conversation_id}"), close_after(socket, round_number)
        )
        assert outcome(response) in ((200, None), (428, 3)), response.body
        await eventually(lambda: not server.registry.user_sockets(viewer.user_id))
        # Ending a closed socket's views is announced through the log: it
        # lands shortly after the close; a ghost viewer never goes away.
        await eventually(lambda: viewers_of(alice, conversation_id, 0),
                         f"round {round_number}: a closed socket is still counted as a viewer")
        assert server.registry.size()["socket_views"] == 0
    await alice_socket.drain()


async def test_global_subscription_racing_a_disconnect_leaves_nothing(server: ServerUnderTest):
    """messages/get?chat=0 whose socket closes meanwhile must not leave the closed socket subscribed."""
    alice, _ = await server.connected_user(1)
    for round_number in range(ROUNDS * 2):
        reader = server.user(100 + round_number)
        socket = await reader.connect()

        response, _ = await asyncio.gather(reader.get("/v1/messages/get?chat=0"), close_after(socket, round_number))
        assert outcome(response) in ((200, None), (428, 4)), response.body
        await eventually(lambda: not server.registry.user_sockets(reader.user_id))
        assert server.registry.size()["global"] == 0, f"round {round_number}: a closed socket is still subscribed"


async def test_a_burst_of_concurrent_calls_is_served(server: ServerUnderTest):
    """200 users calling at once are all answered: no 500, no 503 while storage is up."""
    users = [server.user(100 + i) for i in range(200)]
    for start in range(0, len(users), 50):
        await asyncio.gather(*(user.connect() for user in users[start:start + 50]))
    responses = await asyncio.gather(*(user.get("/v1/conversations/get") for user in users))
    statuses = sorted({r.status for r in responses})
    assert statuses == [200], [(r.status, r.body) for r in responses if not r.ok][:3]
