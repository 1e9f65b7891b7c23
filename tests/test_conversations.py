"""Conversations: list, create, join, leave, delete, read, info; events and unread counts."""

from __future__ import annotations

import pytest
from tests.helpers import ServerUnderTest
from tests.redis_access import delete_matching

pytestmark = pytest.mark.gen_test


async def test_create_announces_to_everyone_and_starts_with_a_message(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1, name="Alice", avatar="https://a.example/a.png")
    bob, bob_socket = await server.connected_user(2)

    conversation_id = await alice.create("  Беседа для жабаскриптеров  ")

    for socket in (alice_socket, bob_socket):
        assert await socket.expect("new_conversation") == {
            "name": "Беседа для жабаскриптеров", "conversation_id": conversation_id,
            "members": 1, "senderAvatar": "https://a.example/a.png",
        }
    [item] = await alice.conversations("joined")
    assert item == {
        "id": conversation_id, "name": "Беседа для жабаскриптеров", "members": 1, "unreadCount": 0,
        "message": "Создана беседа.", "senderAvatar": "https://a.example/a.png", "viewers": 0,
        "creator_id": 1,
    }
    assert await alice.conversations("new") == []
    assert await bob.conversations("new") == [
        {"id": conversation_id, "name": "Беседа для жабаскриптеров", "members": 1, "viewers": 0, "creator_id": 1}
    ]
    assert await bob.conversations("joined") == []


async def test_duplicate_names_are_exact_and_per_creator(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    await alice.create("Chat")
    duplicate = await alice.post("/v1/conversations/new", {"name": " Chat "})
    assert (duplicate.status, duplicate.error_code) == (409, 1)
    # Case-sensitive, on MySQL too; another creator may reuse the name.
    await alice.create("chat")
    await alice.create("CHAT")
    await bob.create("Chat")
    names = sorted(c["name"] for c in await bob.conversations("new"))
    assert names == ["CHAT", "Chat", "chat"]


@pytest.mark.parametrize(
    "body", [{}, {"name": "ab"}, {"name": "   ab   "}, {"name": "x" * 51}, {"name": 12345}, {"name": "      "}]
)
async def test_create_rejects_bad_names(server: ServerUnderTest, body):
    alice, socket = await server.connected_user(1)
    response = await alice.post("/v1/conversations/new", body)
    assert (response.status, response.error_code, response.body["error"]["param"]) == (400, 400, "name")
    await socket.assert_silent()
    assert await alice.conversations("joined") == []


async def test_join_and_leave_move_the_member_and_announce_it(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1, name="Alice")
    bob, bob_socket = await server.connected_user(2, name="Bob", avatar="https://b.example/b.png")
    carol, carol_socket = await server.connected_user(3)
    conversation_id = await alice.create("room")
    await alice.send("before bob", conversation_id)
    for socket in (alice_socket, bob_socket, carol_socket):
        await socket.drain()

    messages = await bob.join(conversation_id)
    assert [m["message"] for m in messages] == ["Создана беседа.", "before bob"]
    for socket in (alice_socket, bob_socket, carol_socket):
        assert await socket.expect("joined_conversation") == {
            "conversation_id": conversation_id, "user_id": 2, "avatar": "https://b.example/b.png", "name": "Bob",
        }
    [item] = await bob.conversations()
    assert item["unreadCount"] == 0 and item["members"] == 2 and item["message"] == "before bob"

    await alice.send("with bob", conversation_id)
    assert (await bob_socket.expect("new_message"))["message"] == "with bob"
    await carol_socket.assert_silent()

    await alice_socket.expect("new_message")

    response = await bob.get(f"/v1/conversations/leave/{conversation_id}")
    assert response.body == {"response": True}
    left = {"event": "leaved_conversation", "data": {"conversation_id": conversation_id, "user_id": 2}}
    for socket in (alice_socket, bob_socket, carol_socket):
        assert await socket.drain() == [left]
    await alice.send("after bob", conversation_id)
    await alice_socket.expect("new_message")
    await bob_socket.assert_silent()
    assert (await bob.get(f"/v1/messages/get?chat={conversation_id}")).error_code == 3
    [item] = await alice.conversations()
    assert item["members"] == 1


async def test_join_errors(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    conversation_id = await alice.create("room")
    response = await alice.get(f"/v1/conversations/join/{conversation_id}")
    assert (response.status, response.error_code) == (409, 2)
    response = await alice.get("/v1/conversations/join/424242")
    assert (response.status, response.error_code) == (404, 1)
    nobody = server.user(9)
    response = await nobody.get(f"/v1/conversations/join/{conversation_id}")
    assert (response.status, response.error_code) == (428, 4)


@pytest.mark.server(max_members=2)
async def test_member_limit(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    carol, carol_socket = await server.connected_user(3)
    conversation_id = await alice.create("small")
    await bob.join(conversation_id)
    await carol_socket.drain()
    response = await carol.get(f"/v1/conversations/join/{conversation_id}")
    assert (response.status, response.error_code) == (409, 3)
    await carol_socket.assert_silent()
    await bob.get(f"/v1/conversations/leave/{conversation_id}")
    assert await carol.join(conversation_id)


async def test_last_member_leaving_deletes_everything(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("ephemeral")
    await alice.send("soon gone", conversation_id)
    await alice_socket.drain()
    await bob_socket.drain()

    assert (await alice.get(f"/v1/conversations/leave/{conversation_id}")).ok
    for socket in (alice_socket, bob_socket):
        assert await socket.drain() == [
            {"event": "leaved_conversation", "data": {"conversation_id": conversation_id, "user_id": 1}},
            {"event": "delete_conversation", "data": {"conversation_id": conversation_id}},
        ]
    assert await server.database.list_messages(conversation_id, 0, 100) == []
    assert await bob.conversations("new") == []
    response = await bob.get(f"/v1/conversations/join/{conversation_id}")
    assert (response.status, response.error_code) == (404, 1)


@pytest.mark.parametrize("route", ["leave", "read"])
async def test_member_only_route_errors(server: ServerUnderTest, route):
    """leave and read share their errors: 1 no such conversation, 2 not a member, 3 no socket."""
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("room")
    response = await bob.get(f"/v1/conversations/{route}/{conversation_id}")
    assert (response.status, response.error_code) == (403, 2)
    response = await bob.get(f"/v1/conversations/{route}/777")
    assert (response.status, response.error_code) == (404, 1)
    response = await server.user(3).get(f"/v1/conversations/{route}/{conversation_id}")
    assert (response.status, response.error_code) == (428, 3)


async def test_creator_deletes_whatever_the_members(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("doomed")
    await bob.join(conversation_id)
    await bob.send("hi", conversation_id)
    await alice_socket.drain()
    await bob_socket.drain()

    forbidden = await bob.call("DELETE", f"/v1/conversations/delete/{conversation_id}")
    assert (forbidden.status, forbidden.error_code) == (403, 2)
    await alice_socket.assert_silent()

    assert (await alice.call("DELETE", f"/v1/conversations/delete/{conversation_id}")).ok
    for socket in (alice_socket, bob_socket):
        assert await socket.drain() == [{"event": "delete_conversation", "data": {"conversation_id": conversation_id}}]
    assert await bob.conversations() == [] and await alice.conversations() == []
    assert await server.database.list_messages(conversation_id, 0, 100) == []
    again = await alice.post(f"/v1/conversations/delete/{conversation_id}")
    assert (again.status, again.error_code) == (404, 1)
    no_socket = await server.user(5).call("DELETE", f"/v1/conversations/delete/{conversation_id}")
    assert (no_socket.status, no_socket.error_code) == (428, 3)


async def test_unread_counts_follow_messages_reads_and_own_sends(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    carol, _ = await server.connected_user(3)
    conversation_id = await alice.create("counted")
    await bob.join(conversation_id)
    await carol.join(conversation_id)

    for text in ("one", "two", "three"):
        await alice.send(text, conversation_id)
    assert await _unread(bob, conversation_id) == 3
    assert await _unread(carol, conversation_id) == 3
    assert await _unread(alice, conversation_id) == 0

    assert (await bob.get(f"/v1/conversations/read/{conversation_id}")).ok
    assert await _unread(bob, conversation_id) == 0
    await carol.send("carol reads by writing", conversation_id)
    assert await _unread(carol, conversation_id) == 0
    assert await _unread(bob, conversation_id) == 1
    assert await _unread(alice, conversation_id) == 1


async def test_unread_counts_survive_losing_the_cache(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    first = await alice.create("first")
    second = await alice.create("second")
    for conversation_id in (first, second):
        await bob.join(conversation_id)
    for _ in range(4):
        await alice.send("x", first)
    await alice.send("y", second)
    assert await _unread(bob, first) == 4

    await _lose_cache(server)
    assert await _unread(bob, first) == 4
    assert await _unread(bob, second) == 1
    # Counting goes on from the rebuilt numbers, not from zero.
    await _lose_cache(server)
    await alice.send("z", first)
    assert await _unread(bob, first) == 5
    await bob.get(f"/v1/conversations/read/{second}")
    await _lose_cache(server)
    assert await _unread(bob, second) == 0
    assert await _unread(bob, first) == 5


async def _lose_cache(server: ServerUnderTest) -> None:
    """What a Redis restart does to the cache: every counter and socket id is gone.

    (It also loses the event log, which closes every socket: test_resume.py.)
    """
    if server.backend == "mysql":
        url, prefix = server.chat_server.settings.redis_url, server.cache.prefix
        await delete_matching(url, prefix + "{conversation:*}:unread")
        await delete_matching(url, prefix + "{user:*}:sockets")
    else:
        server.cache.clear()
    # The periodic refresh writes the live sockets' ids again (run here rather than waited for).
    await server.chat_server.chat.refresh_socket_cache()


async def _unread(user, conversation_id: int) -> int:
    [item] = [c for c in await user.conversations() if c["id"] == conversation_id]
    return item["unreadCount"]


async def test_info_lists_members(server: ServerUnderTest):
    alice, _ = await server.connected_user(1, name="Alice", avatar="https://a.example/a.png")
    bob, _ = await server.connected_user(2, name="Bob")
    carol, _ = await server.connected_user(3)
    conversation_id = await alice.create("info")
    await bob.join(conversation_id)
    response = await carol.get(f"/v1/conversations/info/{conversation_id}")
    assert response.body == {
        "response": True,
        "conversation": {
            "id": conversation_id, "name": "info", "creator_id": 1, "members": 2, "viewers": 0,
            "users": [
                {"user_id": 1, "name": "Alice", "avatar": "https://a.example/a.png"},
                {"user_id": 2, "name": "Bob", "avatar": ""},
            ],
        },
    }
    response = await carol.get("/v1/conversations/info/999")
    assert (response.status, response.error_code) == (404, 1)
    response = await server.user(8).get(f"/v1/conversations/info/{conversation_id}")
    assert (response.status, response.error_code) == (428, 2)


async def test_joined_list_orders_by_recent_activity_and_pages(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    ids = [await alice.create(f"conv {i:03}") for i in range(105)]
    await alice.send("bump", ids[10])
    joined = await alice.conversations("joined")
    assert len(joined) == 100
    assert joined[0]["id"] == ids[10] and joined[0]["message"] == "bump"
    assert [c["id"] for c in joined[1:]] == [i for i in reversed(ids) if i != ids[10]][:99]
    rest = await alice.conversations("joined", offset=100)
    assert [c["id"] for c in rest] == [i for i in reversed(ids) if i != ids[10]][99:]

    bob, _ = await server.connected_user(2)
    fresh = await bob.conversations("new")
    assert [c["id"] for c in fresh] == list(reversed(ids))[:100]
    assert [c["id"] for c in await bob.conversations("new", offset=100)] == list(reversed(ids))[100:]


@pytest.mark.parametrize("query, param", [("mode=all", "mode"), ("offset=-1", "offset"), ("offset=z", "offset")])
async def test_list_rejects_bad_input(server: ServerUnderTest, query, param):
    alice, _ = await server.connected_user(1)
    response = await alice.get(f"/v1/conversations/get?{query}")
    assert (response.status, response.error_code, response.body["error"]["param"]) == (400, 400, param)


async def test_list_needs_a_socket(server: ServerUnderTest):
    response = await server.user(1).get("/v1/conversations/get")
    assert (response.status, response.error_code) == (428, 1)


async def test_state_changing_routes_accept_post(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("posted")
    assert (await bob.post(f"/v1/conversations/join/{conversation_id}")).ok
    assert (await bob.post(f"/v1/conversations/read/{conversation_id}")).ok
    assert (await bob.post("/v1/conversations/get", {"mode": "joined"})).body["conversations"][0]["id"] == conversation_id
    assert (await bob.post(f"/v1/conversations/leave/{conversation_id}")).ok
    assert (await bob.post(f"/v1/conversations/view/{conversation_id}")).ok
    assert (await bob.post(f"/v1/conversations/stopView/{conversation_id}")).ok
    assert (await alice.post(f"/v1/conversations/delete/{conversation_id}")).ok


@pytest.mark.parametrize("route", ["join", "leave", "delete", "read", "view", "stopView", "info"])
@pytest.mark.parametrize("raw_id", ["abc", "0", "-3", "1.5", "99999999999999999999999"])
async def test_bad_path_ids_are_json_errors(server: ServerUnderTest, route, raw_id):
    alice, _ = await server.connected_user(1)
    method = "DELETE" if route == "delete" else "GET"
    response = await alice.call(method, f"/v1/conversations/{route}/{raw_id}")
    assert response.status in (400, 404) and response.body["response"] is False
    assert response.error_code in (400, 404)


async def test_unread_counts_under_concurrent_senders(server: ServerUnderTest):
    """Messages committed together (group commit) count exactly as one by one would."""
    import asyncio

    users = [(await server.connected_user(user_id))[0] for user_id in (1, 2, 3, 4)]
    conversation_id = await users[0].create("busy")
    for user in users[1:]:
        await user.join(conversation_id)
    await users[3].get(f"/v1/conversations/read/{conversation_id}")
    script = [users[i % 3] for i in range(30)]  # user 4 only reads
    await asyncio.gather(*(user.send(f"m{n}", conversation_id) for n, user in enumerate(script)))

    messages = (await users[3].get(f"/v1/messages/get?chat={conversation_id}")).body["messages"]
    senders = [m["user_id"] for m in messages if m["message"] != "Создана беседа."]
    expected = {
        user.user_id: len(senders) - 1 - max(i for i, s in enumerate(senders) if s == user.user_id)
        for user in users[:3]
    }
    expected[4] = 30
    for user in users:
        assert await _unread(user, conversation_id) == expected[user.user_id]
    await _lose_cache(server)
    for user in users:
        assert await _unread(user, conversation_id) == expected[user.user_id]


async def test_counters_that_missed_an_update_are_never_served(server: ServerUnderTest):
    """The cache holds counters at a version; a stale copy (an old snapshot, a lost update) is rebuilt, not served."""
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("versions")
    await bob.join(conversation_id)
    await alice.send("one", conversation_id)
    assert (await bob.conversations())[0]["unreadCount"] == 1  # primes the cache at the current version
    cache = server.chat_server.cache
    [row] = await server.database.joined_conversations(bob.user_id, 0, 10)
    assert await cache.unread_get({conversation_id: row.counter_version}, bob.user_id) == {conversation_id: 1}
    # What a cache restored from an old snapshot holds: the primed counters of
    # an earlier version, while the database moved on (two more messages).
    from storage.records import UnreadCounts

    for text in ("two", "three"):
        await alice.send(text, conversation_id)
    await cache.unread_drop(conversation_id)
    await cache.unread_prime({conversation_id: UnreadCounts(row.counter_version, {alice.user_id: 0, bob.user_id: 1})})
    assert (await bob.conversations())[0]["unreadCount"] == 3
    await alice.send("four", conversation_id)  # applies on the rebuilt counters
    assert (await bob.conversations())[0]["unreadCount"] == 4
    assert (await alice.conversations())[0]["unreadCount"] == 0
