"""Viewers: view/stopView, viewer counts and their events, X-Socket-Id scoping, disconnect cleanup.

docs/API.md §3 (WebSocket, events) and §5 (view, stopView, join, leave,
delete, conversations/get, info). A viewer reads a conversation without being
a member; ``viewers`` counts distinct users, and ``conversationViewersChange``
goes to the members' and viewers' sockets of that conversation — never to
anyone else — whenever that count changes.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.helpers import ServerUnderTest, Socket, User, close_and_wait, delete_event, eventually

pytestmark = pytest.mark.gen_test

MESSAGE_FIELDS = {"id", "name", "avatar", "user_id", "message", "time"}


def viewers_change(conversation_id: int, viewers: int) -> dict:
    return {"event": "conversationViewersChange", "data": {"conversation_id": conversation_id, "viewers": viewers}}


async def drain_all(*sockets: Socket) -> None:
    for socket in sockets:
        await socket.drain()


# view / stopView


async def test_view_returns_the_newest_fifty_oldest_first(server: ServerUnderTest):
    """view answers with the newest 50 messages in ascending order, with sender data."""
    alice, _ = await server.connected_user(1, name="Alice", avatar="https://a.example/a.png")
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("long")
    sent = [await alice.send(f"m{i}", conversation_id) for i in range(60)]

    messages = await bob.view(conversation_id)

    assert [m["id"] for m in messages] == sent[-50:]
    assert messages[0] == {
        "id": sent[10], "name": "Alice", "avatar": "https://a.example/a.png", "user_id": 1,
        "message": "m10", "time": messages[0]["time"],
    }
    assert all(set(m) == MESSAGE_FIELDS for m in messages)
    # The same newest 50 a member reads, not a different window.
    member_view = (await alice.get(f"/v1/messages/get?chat={conversation_id}")).body["messages"]
    assert messages == member_view[-50:]


async def test_short_conversation_is_viewed_whole(server: ServerUnderTest):
    """With fewer than 50 messages view returns all of them, creation message first."""
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("short")
    await alice.send("hello", conversation_id)
    assert [m["message"] for m in await bob.view(conversation_id)] == ["Создана беседа.", "hello"]


async def test_viewer_gets_new_messages_until_stop_view(server: ServerUnderTest):
    """A viewer's socket gets the conversation's new_message events between view and stopView.

    view and stopView each announce the new count to members and viewers and
    to nobody else.
    """
    alice, alice_socket = await server.connected_user(1, name="Alice")
    bob, bob_socket = await server.connected_user(2)
    carol, carol_socket = await server.connected_user(3)
    conversation_id = await alice.create("watched")
    await drain_all(alice_socket, bob_socket, carol_socket)

    await bob.view(conversation_id)
    assert await alice_socket.drain() == [viewers_change(conversation_id, 1)]
    assert await bob_socket.drain() == [viewers_change(conversation_id, 1)]
    await carol_socket.assert_silent()

    message_id = await alice.send("for the audience", conversation_id)
    event = await bob_socket.expect("new_message")
    assert event == {
        "conversation_id": conversation_id, "id": message_id, "user_id": 1, "name": "Alice",
        "avatar": "", "message": "for the audience", "time": event["time"],
    }
    assert await alice_socket.expect("new_message") == event
    await carol_socket.assert_silent()

    await bob.stop_view(conversation_id)
    assert await alice_socket.drain() == [viewers_change(conversation_id, 0)]
    await carol_socket.assert_silent()
    await bob_socket.drain()  # whatever it was told about its own leaving

    await alice.send("after stopView", conversation_id)
    await alice_socket.expect("new_message")
    await bob_socket.assert_silent()
    await carol_socket.assert_silent()


async def test_viewing_again_is_not_an_error_and_not_a_new_count(server: ServerUnderTest):
    """A second view by the same viewer succeeds, returns the messages, and announces nothing."""
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("again")
    first = await bob.view(conversation_id)
    await drain_all(alice_socket, bob_socket)

    assert await bob.view(conversation_id) == first
    await alice_socket.assert_silent()
    await bob_socket.assert_silent()
    assert (await alice.info(conversation_id))["viewers"] == 1
    # Still exactly one copy of each message for the viewer.
    message_id = await alice.send("once", conversation_id)
    assert [(f["event"], f["data"]["id"]) for f in await bob_socket.drain()] == [("new_message", message_id)]


async def test_stop_view_when_not_viewing_is_success_and_silent(server: ServerUnderTest):
    """stopView by someone who is not viewing succeeds and changes no count."""
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("never viewed")
    await drain_all(alice_socket, bob_socket)

    await bob.stop_view(conversation_id)
    await bob.stop_view(conversation_id)
    await alice_socket.assert_silent()
    await bob_socket.assert_silent()
    assert (await bob.info(conversation_id))["viewers"] == 0


@pytest.mark.parametrize("route", ["view", "stopView"])
async def test_view_and_stop_view_errors(server: ServerUnderTest, route):
    """Members get code 2 (409), unknown conversations code 1 (404), no socket code 3 (428)."""
    alice, alice_socket = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("errors")
    await bob.join(conversation_id)
    await alice_socket.drain()

    for member in (alice, bob):
        response = await member.get(f"/v1/conversations/{route}/{conversation_id}")
        assert (response.status, response.error_code) == (409, 2)
    await alice_socket.assert_silent()

    response = await bob.get(f"/v1/conversations/{route}/987654")
    assert (response.status, response.error_code) == (404, 1)

    response = await server.user(3).get(f"/v1/conversations/{route}/{conversation_id}")
    assert (response.status, response.error_code) == (428, 3)
    # The socket check comes before the existence check.
    response = await server.user(3).get(f"/v1/conversations/{route}/987654")
    assert (response.status, response.error_code) == (428, 3)
    assert (await alice.info(conversation_id))["viewers"] == 0


async def test_viewers_cannot_write_or_read_as_members(server: ServerUnderTest):
    """A viewer is not a member: send is code 2 (403), messages/get code 3 (403), nothing stored."""
    alice, alice_socket = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("read only")
    await bob.view(conversation_id)
    await alice_socket.drain()

    response = await bob.post("/v1/messages/send", {"text": "let me in", "conversation_id": conversation_id})
    assert (response.status, response.error_code) == (403, 2)
    response = await bob.get(f"/v1/messages/get?chat={conversation_id}")
    assert (response.status, response.error_code) == (403, 3)
    await alice_socket.assert_silent()
    stored = await server.database.list_messages(conversation_id, 0, 100)
    assert [m.text for m in stored] == ["Создана беседа."]


# Counting distinct users


async def test_two_tabs_of_one_user_count_once(server: ServerUnderTest):
    """Viewing from all of a user's tabs counts one viewer; every tab gets the messages."""
    alice, alice_socket = await server.connected_user(1)
    bob = server.user(2)
    tabs = [await bob.connect(), await bob.connect()]
    dave, dave_socket = await server.connected_user(4)
    conversation_id = await alice.create("tabs")
    await drain_all(alice_socket, dave_socket, *tabs)

    await bob.view(conversation_id)  # no X-Socket-Id: every tab views
    for socket in (alice_socket, *tabs):
        assert await socket.drain() == [viewers_change(conversation_id, 1)]
    await dave_socket.assert_silent()

    await dave.view(conversation_id)
    for socket in (alice_socket, *tabs, dave_socket):
        assert await socket.drain() == [viewers_change(conversation_id, 2)]

    message_id = await alice.send("to both tabs", conversation_id)
    for socket in (*tabs, dave_socket):
        assert (await socket.expect("new_message"))["id"] == message_id
    assert (await alice.info(conversation_id))["viewers"] == 2


async def test_viewing_from_a_second_tab_is_not_a_new_viewer(server: ServerUnderTest):
    """Tab 1 views, then tab 2 views: still one viewer, no second count event."""
    alice, alice_socket = await server.connected_user(1)
    bob = server.user(2)
    first, second = await bob.connect(), await bob.connect()
    conversation_id = await alice.create("second tab")
    await bob.view(conversation_id, socket=first)
    await drain_all(alice_socket, first, second)

    await bob.view(conversation_id, socket=second)
    await alice_socket.assert_silent()
    await first.assert_silent()
    await second.assert_silent()
    assert (await alice.info(conversation_id))["viewers"] == 1


async def test_counts_appear_in_lists_and_info(server: ServerUnderTest):
    """conversations/get (joined and new) and info report the current viewer count."""
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    carol, _ = await server.connected_user(3)
    dave, _ = await server.connected_user(4)
    watched = await alice.create("watched")
    quiet = await alice.create("quiet")

    async def counts() -> tuple[dict, dict, int]:
        joined = {c["id"]: c["viewers"] for c in await alice.conversations("joined")}
        fresh = {c["id"]: c["viewers"] for c in await carol.conversations("new")}
        return joined, fresh, (await carol.info(watched))["viewers"]

    assert await counts() == ({watched: 0, quiet: 0}, {watched: 0, quiet: 0}, 0)
    await bob.view(watched)
    await dave.view(watched)
    assert await counts() == ({watched: 2, quiet: 0}, {watched: 2, quiet: 0}, 2)
    # A viewer's own "new" list shows the count too.
    assert {c["id"]: c["viewers"] for c in await bob.conversations("new")} == {watched: 2, quiet: 0}
    await bob.stop_view(watched)
    assert await counts() == ({watched: 1, quiet: 0}, {watched: 1, quiet: 0}, 1)


# Disconnects


async def test_closing_one_of_two_viewing_tabs_keeps_the_count(server: ServerUnderTest):
    """The count falls only when the user's last viewing socket closes."""
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    vera = server.user(3)
    first, second = await vera.connect(), await vera.connect()
    conversation_id = await alice.create("tabs closing")
    await vera.view(conversation_id)
    await drain_all(alice_socket, bob_socket, first, second)

    await close_and_wait(server, first)
    await alice_socket.assert_silent()
    await second.assert_silent()
    assert (await alice.info(conversation_id))["viewers"] == 1

    await close_and_wait(server, second)
    assert await alice_socket.drain() == [viewers_change(conversation_id, 0)]
    await bob_socket.assert_silent()
    assert (await alice.info(conversation_id))["viewers"] == 0


async def test_closed_socket_leaves_every_room(server: ServerUnderTest):
    """A closed socket stops viewing, leaves the global chat and, as the last one, the member rooms.

    Once the user's last socket is gone the next HTTP call is refused with
    428 and the cache holds no socket id for them.
    """
    alice, alice_socket = await server.connected_user(1)
    bob = server.user(2)
    first, second = await bob.connect(), await bob.connect()
    member_of = await alice.create("bob is a member")
    viewed = await alice.create("bob views")
    await bob.join(member_of)
    await bob.view(viewed, socket=first)
    assert (await bob.get("/v1/messages/get?chat=0", socket=first)).ok
    await drain_all(alice_socket, first, second)

    await close_and_wait(server, first)
    assert await alice_socket.drain() == [viewers_change(viewed, 0)]
    assert first.socket_id not in server.registry.conversation_audience(viewed, [])
    assert server.registry.size()["global"] == 0
    assert first.socket_id not in await server.cache.sockets_of(2)
    # The other tab still belongs to the member room.
    message_id = await alice.send("still here?", member_of)
    assert (await second.expect("new_message"))["id"] == message_id
    await alice_socket.drain()

    await close_and_wait(server, second)
    await eventually(lambda: _no_socket_cached(server, 2))
    response = await bob.get("/v1/messages/get?chat=0")
    assert (response.status, response.error_code) == (428, 4)
    assert second.socket_id not in server.registry.conversation_audience(member_of, [2])
    # Only Alice is left: her socket and her profile.
    assert server.registry.size() == {
        "sockets": 1, "users": 1, "profiles": 1, "global": 0,
        "viewers": 0, "socket_views": 0,
    }
    await alice.send("nobody else", member_of)
    await alice_socket.expect("new_message")


async def _no_socket_cached(server: ServerUnderTest, user_id: int) -> bool:
    return not await server.cache.sockets_of(user_id)


# Join and deletion


async def test_join_ends_viewing(server: ServerUnderTest):
    """A viewer who joins stops being a viewer: join succeeds, then the count drops for everyone concerned.

    Afterwards the new member gets each message once (as a member), and may
    no longer view or stopView.
    """
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2, name="Bob")
    carol, carol_socket = await server.connected_user(3)
    conversation_id = await alice.create("join me")
    await bob.view(conversation_id)
    await drain_all(alice_socket, bob_socket, carol_socket)

    messages = await bob.join(conversation_id)
    assert [m["message"] for m in messages] == ["Создана беседа."]
    joined = {"event": "joined_conversation",
              "data": {"conversation_id": conversation_id, "user_id": 2, "avatar": "", "name": "Bob"}}
    for socket in (alice_socket, bob_socket):
        frames = await socket.drain()
        assert sorted(frames, key=str) == sorted([joined, viewers_change(conversation_id, 0)], key=str)
    assert await carol_socket.drain() == [joined]  # not concerned by the count
    conversation = await carol.info(conversation_id)
    assert (conversation["viewers"], conversation["members"]) == (0, 2)

    message_id = await alice.send("one copy", conversation_id)
    assert [(f["event"], f["data"]["id"]) for f in await bob_socket.drain()] == [("new_message", message_id)]
    response = await bob.get(f"/v1/conversations/view/{conversation_id}")
    assert (response.status, response.error_code) == (409, 2)


async def test_delete_drops_viewers_with_a_zero_count_first(server: ServerUnderTest):
    """Deleting a viewed conversation tells members and viewers "0 viewers", then deletes; others only see the delete."""
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    vera, vera_socket = await server.connected_user(3)
    carol, carol_socket = await server.connected_user(4)
    conversation_id = await alice.create("doomed")
    await bob.join(conversation_id)
    await vera.view(conversation_id)
    await drain_all(alice_socket, bob_socket, vera_socket, carol_socket)

    assert (await alice.call("DELETE", f"/v1/conversations/delete/{conversation_id}")).ok
    for socket in (alice_socket, bob_socket, vera_socket):
        assert await socket.drain() == [viewers_change(conversation_id, 0), delete_event(conversation_id)]
    assert await carol_socket.drain() == [delete_event(conversation_id)]
    size = server.registry.size()
    assert (size["viewers"], size["socket_views"]) == (0, 0)
    response = await vera.get(f"/v1/conversations/stopView/{conversation_id}")
    assert (response.status, response.error_code) == (404, 1)


async def test_last_member_leaving_drops_viewers(server: ServerUnderTest):
    """When the last member leaves, viewers hear "0 viewers" and then the delete."""
    alice, alice_socket = await server.connected_user(1)
    vera, vera_socket = await server.connected_user(3)
    carol, carol_socket = await server.connected_user(4)
    conversation_id = await alice.create("last one out")
    await vera.view(conversation_id)
    await drain_all(alice_socket, vera_socket, carol_socket)

    assert (await alice.get(f"/v1/conversations/leave/{conversation_id}")).ok
    left = {"event": "leaved_conversation", "data": {"conversation_id": conversation_id, "user_id": 1}}
    assert await vera_socket.drain() == [left, viewers_change(conversation_id, 0), delete_event(conversation_id)]
    assert await carol_socket.drain() == [left, delete_event(conversation_id)]
    # Alice is no longer a member when the count drops.
    assert await alice_socket.drain() == [left, delete_event(conversation_id)]
    size = server.registry.size()
    assert (size["viewers"], size["socket_views"]) == (0, 0)


# X-Socket-Id


async def test_view_with_socket_id_applies_to_that_socket_only(server: ServerUnderTest):
    """With X-Socket-Id only the named socket views; stopView from another tab leaves it viewing."""
    alice, alice_socket = await server.connected_user(1)
    bob = server.user(2)
    first, second = await bob.connect(), await bob.connect()
    conversation_id = await alice.create("scoped")
    await drain_all(alice_socket, first, second)

    await bob.view(conversation_id, socket=first)
    assert await alice_socket.drain() == [viewers_change(conversation_id, 1)]
    assert await first.drain() == [viewers_change(conversation_id, 1)]
    await second.assert_silent()

    message_id = await alice.send("only the first tab", conversation_id)
    assert (await first.expect("new_message"))["id"] == message_id
    await second.assert_silent()
    await alice_socket.drain()

    await bob.stop_view(conversation_id, socket=second)  # that tab was not viewing
    await alice_socket.assert_silent()
    await alice.send("first tab still", conversation_id)
    assert (await first.expect("new_message"))["message"] == "first tab still"
    await alice_socket.drain()

    await bob.stop_view(conversation_id, socket=first)
    assert await alice_socket.drain() == [viewers_change(conversation_id, 0)]
    await alice.send("nobody watching", conversation_id)
    await first.assert_silent()
    await second.assert_silent()


async def test_stop_view_without_socket_id_stops_every_tab(server: ServerUnderTest):
    """stopView without X-Socket-Id ends viewing on all the user's sockets, whichever views."""
    alice, alice_socket = await server.connected_user(1)
    bob = server.user(2)
    first, second = await bob.connect(), await bob.connect()
    conversation_id = await alice.create("stop all")
    await bob.view(conversation_id, socket=first)
    await bob.view(conversation_id, socket=second)
    await drain_all(alice_socket, first, second)

    await bob.stop_view(conversation_id)
    assert await alice_socket.drain() == [viewers_change(conversation_id, 0)]
    await drain_all(first, second)
    await alice.send("unseen", conversation_id)
    await first.assert_silent()
    await second.assert_silent()


async def test_global_chat_subscription_follows_socket_id(server: ServerUnderTest):
    """messages/get?chat=0 with X-Socket-Id subscribes that socket; without it, all the user's sockets."""
    alice, _ = await server.connected_user(1)
    bob = server.user(2)
    first, second = await bob.connect(), await bob.connect()

    assert (await bob.get("/v1/messages/get?chat=0", socket=first)).ok
    message_id = await alice.send("first only")
    assert (await first.expect("new_message"))["id"] == message_id
    await second.assert_silent()

    assert (await bob.get("/v1/messages/get?chat=0")).ok
    message_id = await alice.send("both")
    for socket in (first, second):
        assert [(f["event"], f["data"]["id"]) for f in await socket.drain()] == [("new_message", message_id)]


ROUTES_428 = [
    ("GET", "/v1/conversations/view/{cid}", 3),
    ("GET", "/v1/conversations/stopView/{cid}", 3),
    ("GET", "/v1/messages/get?chat=0", 4),
    ("POST", "/v1/messages/send", 3),
    ("GET", "/v1/conversations/get", 1),
    ("GET", "/v1/conversations/info/{cid}", 2),
]


@pytest.mark.parametrize("kind", ["another user's socket", "random string", "closed socket"])
async def test_socket_id_not_open_for_this_user_is_no_socket(server: ServerUnderTest, kind):
    """An X-Socket-Id that is not an open socket of the caller is answered 428 everywhere.

    The caller does have another open socket, so the refusal is about the
    named one; and nothing gets subscribed by the refused calls.
    """
    alice, alice_socket = await server.connected_user(1)
    bob = server.user(2)
    bob_socket = await bob.connect()
    conversation_id = await alice.create("scoped errors")
    if kind == "another user's socket":
        socket_id = alice_socket.socket_id
    elif kind == "random string":
        socket_id = secrets.token_urlsafe(12)
    else:
        closed = await bob.connect()
        await close_and_wait(server, closed)
        socket_id = closed.socket_id
    await drain_all(alice_socket, bob_socket)

    for method, path, code in ROUTES_428:
        body = {"text": "nope"} if method == "POST" else None
        response = await bob.call(method, path.format(cid=conversation_id), body, socket=socket_id)
        assert (response.status, response.error_code) == (428, code), (path, response.body)

    # The refused calls subscribed nothing, viewed nothing and stored nothing.
    await alice.send("global, after the refusals")
    await bob_socket.assert_silent()
    await alice_socket.assert_silent()
    assert (await alice.info(conversation_id))["viewers"] == 0
    assert [m.text for m in await server.database.list_messages(0, 0, 100)] == ["global, after the refusals"]
    # The caller's real socket still works.
    assert (await bob.get("/v1/messages/get?chat=0", socket=bob_socket)).ok


# Leaks


async def _viewers_are(user: User, conversation_id: int, expected: int) -> bool:
    return (await user.info(conversation_id))["viewers"] == expected


async def test_hundreds_of_sockets_leave_nothing_behind(server: ServerUnderTest):
    """300 sockets that viewed, subscribed, joined and closed leave no trace.

    Afterwards the registry's tables are all empty, the cache holds no socket
    id for any of those users, and no per-conversation lock is left.
    """
    creator, creator_socket = await server.connected_user(1)
    joined = await creator.create("members")
    viewed = await creator.create("viewed")
    users = [server.user(100 + i) for i in range(30)]
    sockets: list[Socket] = []
    for batch in range(0, len(users), 10):
        opened = await asyncio.gather(*(user.connect() for user in users[batch:batch + 10] for _ in range(10)))
        sockets.extend(opened)
    assert server.registry.size()["sockets"] == 301

    async def take_part(index: int, user: User) -> None:
        tabs = user.sockets
        if index % 3 == 0:
            await user.join(joined)
            await user.view(viewed, socket=tabs[0])
        elif index % 3 == 1:
            await user.view(viewed)  # every tab views
            assert (await user.get("/v1/messages/get?chat=0", socket=tabs[1])).ok
        else:
            assert (await user.get("/v1/messages/get?chat=0")).ok  # every tab subscribes
            await user.view(viewed, socket=tabs[2])

    await asyncio.gather(*(take_part(i, user) for i, user in enumerate(users)))
    assert (await creator.info(viewed))["viewers"] == 30
    size = server.registry.size()
    assert size["viewers"] == 1 and size["socket_views"] == 10 * 10 + 10 + 10 and size["global"] == 10 * 10 + 10
    # Messages flow to all of them while they are open.
    await creator.send("to members and viewers", viewed)

    for socket in sockets:
        socket.close()
    await eventually(lambda: server.registry.size()["sockets"] == 1)
    # The closes' view ends go through the log, shortly after each close.
    await eventually(lambda: _viewers_are(creator, viewed, 0), "closed sockets are still counted as viewers")
    creator_socket.close()
    await eventually(lambda: server.registry.size()["sockets"] == 0)

    assert server.registry.size() == {name: 0 for name in server.registry.size()}
    still_cached: list[int] = []

    async def no_socket_ids_cached() -> bool:
        still_cached[:] = [user_id for user_id in [1, *(u.user_id for u in users)]
                           if await server.cache.sockets_of(user_id)]
        return not still_cached

    await eventually(no_socket_ids_cached, lambda: f"socket ids still cached for users {still_cached}")
    assert len(server.chat_server.chat.locks) == 0
