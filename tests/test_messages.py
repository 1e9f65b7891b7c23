"""messages/get and messages/send, in the global chat and in conversations."""

from __future__ import annotations

import asyncio

import pytest

from server import metrics

from tests.helpers import ServerUnderTest

pytestmark = pytest.mark.gen_test


async def test_global_chat_round_trip_is_anonymous(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1, name="Alice", avatar="https://a.example/1.png")
    bob, bob_socket = await server.connected_user(2, name="Bob")
    assert (await bob.get("/v1/messages/get?chat=0")).body == {"response": True, "messages": []}

    message_id = await alice.send("привет, мир 👋🏽")

    event = await bob_socket.expect("new_message")
    assert set(event) == {"conversation_id", "id", "message", "time"}
    assert event["conversation_id"] == 0 and event["id"] == message_id
    assert event["message"] == "привет, мир 👋🏽"
    # Alice never asked for the global chat, so she is not subscribed.
    await alice_socket.assert_silent()
    messages = (await alice.get("/v1/messages/get?chat=0")).body["messages"]
    assert messages == [{"id": message_id, "message": "привет, мир 👋🏽", "time": event["time"]}]


async def test_text_is_stored_exactly_as_sent(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    for text in ["  leading and trailing  ", "line\nbreak\ttab", "a" * 1000, "😀" * 1000, "<b>&amp;</b>", "x"]:
        message_id = await alice.send(text)
        messages = (await alice.get("/v1/messages/get?chat=0")).body["messages"]
        assert messages[-1] == {"id": message_id, "message": text, "time": messages[-1]["time"]}


async def test_conversation_messages_carry_the_sender(server: ServerUnderTest):
    alice, alice_socket = await server.connected_user(1, name="Алиса", avatar="https://a.example/1.png")
    bob, bob_socket = await server.connected_user(2, name="Bob")
    carol, carol_socket = await server.connected_user(3)
    conversation_id = await alice.create("Беседа")
    await bob.join(conversation_id)
    for socket in (alice_socket, bob_socket, carol_socket):
        await socket.drain()

    message_id = await alice.send("hello", conversation_id)

    for socket in (alice_socket, bob_socket):
        event = await socket.expect("new_message")
        assert event == {
            "conversation_id": conversation_id, "id": message_id, "user_id": 1, "name": "Алиса",
            "avatar": "https://a.example/1.png", "message": "hello", "time": event["time"],
        }
    await carol_socket.assert_silent()  # not a member
    messages = (await bob.get(f"/v1/messages/get?chat={conversation_id}")).body["messages"]
    assert [m["message"] for m in messages] == ["Создана беседа.", "hello"]
    assert messages[1] == {k: v for k, v in event.items() if k != "conversation_id"}


async def test_every_socket_of_a_member_gets_the_message(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob = server.user(2)
    tabs = [await bob.connect(), await bob.connect(), await bob.connect()]
    conversation_id = await alice.create("tabs")
    await bob.join(conversation_id)
    for tab in tabs:
        await tab.drain()
    await alice.send("to every tab", conversation_id)
    for tab in tabs:
        assert (await tab.expect("new_message"))["message"] == "to every tab"


async def test_paging_returns_newest_hundred_oldest_first(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    ids = [await alice.send(f"m{i}") for i in range(130)]
    first = (await alice.get("/v1/messages/get?chat=0")).body["messages"]
    assert [m["id"] for m in first] == ids[30:]
    second = (await alice.get("/v1/messages/get?chat=0&offset=100")).body["messages"]
    assert [m["id"] for m in second] == ids[:30]
    assert (await alice.get("/v1/messages/get?chat=0&offset=500")).body["messages"] == []


async def test_message_is_committed_before_response_and_event(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create("commit")
    await bob.join(conversation_id)
    await bob_socket.drain()
    message_id = await alice.send("durable", conversation_id)
    event = await bob_socket.expect("new_message")
    # A second, independent reader sees the row as soon as the event is out.
    messages = await server.database.list_messages(conversation_id, 0, 100)
    assert message_id == event["id"] and messages[-1].id == message_id


async def test_send_and_get_errors(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    conversation_id = await alice.create("private")

    missing = await alice.post("/v1/messages/send", {"text": "x", "conversation_id": 99999})
    assert (missing.status, missing.error_code) == (404, 1)
    not_member = await bob.post("/v1/messages/send", {"text": "x", "conversation_id": conversation_id})
    assert (not_member.status, not_member.error_code) == (403, 2)

    no_chat = await alice.get("/v1/messages/get")
    assert (no_chat.status, no_chat.error_code) == (400, 1)
    no_chat = await alice.get("/v1/messages/get?chat=")
    assert (no_chat.status, no_chat.error_code) == (400, 1)
    unknown = await alice.get("/v1/messages/get?chat=99999")
    assert (unknown.status, unknown.error_code) == (404, 2)
    forbidden = await bob.get(f"/v1/messages/get?chat={conversation_id}")
    assert (forbidden.status, forbidden.error_code) == (403, 3)


async def test_no_socket_errors(server: ServerUnderTest):
    alice = server.user(1)
    response = await alice.get("/v1/messages/get?chat=0")
    assert (response.status, response.error_code) == (428, 4)
    response = await alice.post("/v1/messages/send", {"text": "hi"})
    assert (response.status, response.error_code) == (428, 3)
    # Nothing was stored by the refused send.
    other, _ = await server.connected_user(2)
    assert (await other.get("/v1/messages/get?chat=0")).body["messages"] == []


@pytest.mark.parametrize(
    "body, param",
    [
        ({}, "text"),
        ({"text": ""}, "text"),
        ({"text": "   \n\t "}, "text"),
        ({"text": "a" * 1001}, "text"),
        ({"text": 5}, "text"),
        ({"text": None}, "text"),
        ({"text": ["a"]}, "text"),
        ({"text": "ok", "conversation_id": -1}, "conversation_id"),
        ({"text": "ok", "conversation_id": 100000000}, "conversation_id"),
        ({"text": "ok", "conversation_id": "abc"}, "conversation_id"),
        ({"text": "ok", "conversation_id": 1.5}, "conversation_id"),
        ({"text": "ok", "conversation_id": True}, "conversation_id"),
    ],
)
async def test_send_rejects_bad_input(server: ServerUnderTest, body, param):
    alice, socket = await server.connected_user(1)
    await alice.get("/v1/messages/get?chat=0")
    response = await alice.post("/v1/messages/send", body)
    assert (response.status, response.error_code) == (400, 400)
    assert response.body["error"]["param"] == param
    assert response.body["error"]["message"]
    await socket.assert_silent()
    assert (await alice.get("/v1/messages/get?chat=0")).body["messages"] == []


@pytest.mark.parametrize("query, param", [("chat=-1", "chat"), ("chat=abc", "chat"), ("chat=1.0", "chat"),
                                          ("chat=0&offset=-5", "offset"), ("chat=0&offset=x", "offset")])
async def test_get_rejects_bad_input(server: ServerUnderTest, query, param):
    alice, _ = await server.connected_user(1)
    response = await alice.get(f"/v1/messages/get?{query}")
    assert (response.status, response.error_code, response.body["error"]["param"]) == (400, 400, param)


async def test_parameter_errors_come_before_the_socket_check(server: ServerUnderTest):
    alice = server.user(1)
    response = await alice.post("/v1/messages/send", {"text": ""})
    assert (response.status, response.error_code) == (400, 400)
    response = await alice.get("/v1/messages/get")
    assert (response.status, response.error_code) == (400, 1)


async def test_form_body_and_string_numbers_are_accepted(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    conversation_id = await alice.create("forms")
    response = await alice.post(
        "/v1/messages/send", raw_body=f"text=form+text&conversation_id={conversation_id}",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.ok, response.body
    response = await alice.post("/v1/messages/send", {"text": "json", "conversation_id": str(conversation_id)})
    assert response.ok, response.body
    messages = (await alice.get(f"/v1/messages/get?chat={conversation_id}")).body["messages"]
    assert [m["message"] for m in messages][-2:] == ["form text", "json"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\"text\"", b"\xff\xfe{}"])
async def test_malformed_bodies_are_rejected(server: ServerUnderTest, raw):
    alice, _ = await server.connected_user(1)
    response = await alice.post("/v1/messages/send", raw_body=raw)
    assert (response.status, response.error_code, response.body["error"]["param"]) == (400, 400, "body")


@pytest.mark.server(send_rate_limit=2)
async def test_flooding_is_refused_with_429_and_nothing_stored(server: ServerUnderTest):
    alice, _ = await server.connected_user(1)
    bob, _ = await server.connected_user(2)
    # A burst of twice the rate passes; the next one is refused.
    accepted = [await alice.send(f"burst {n}") for n in range(4)]
    refused = await alice.post("/v1/messages/send", {"text": "one too many"})
    assert (refused.status, refused.error_code) == (429, 429)
    assert int(refused.headers["Retry-After"]) >= 1
    # Other users have their own allowance.
    assert await bob.send("bob is fine")
    texts = [m["message"] for m in (await bob.get("/v1/messages/get?chat=0")).body["messages"]]
    assert "one too many" not in texts and len(texts) == len(accepted) + 1


async def test_a_failure_after_the_commit_still_answers_every_waiting_sender(server: ServerUnderTest, monkeypatch):
    """Group commit: whatever fails after the batch is stored, every request gets its id."""
    import asyncio

    from server import wire

    alice, _ = await server.connected_user(1)
    conversation_id = await alice.create("batch")

    def broken_frame(message):
        raise RuntimeError("injected: building the frame failed")

    monkeypatch.setattr(wire, "new_message", broken_frame)
    responses = await asyncio.gather(
        *(alice.post("/v1/messages/send", {"text": f"m{n}", "conversation_id": conversation_id}) for n in range(8))
    )
    assert all(r.ok for r in responses), [r.body for r in responses]
    monkeypatch.undo()
    stored = (await alice.get(f"/v1/messages/get?chat={conversation_id}")).body["messages"]
    assert sorted(m["id"] for m in stored[1:]) == sorted(r.body["id"] for r in responses)
    assert not server.chat_server.chat.outbox, "a batch task was left behind"


def _batches_committed() -> float:
    """How many message batches this Python process has committed so far (the metric counts them)."""
    for metric in metrics.COMMIT_BATCH_SIZE.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


async def test_concurrent_sends_to_one_conversation_are_committed_together(server: ServerUnderTest):
    """Group commit: sends that arrive while a batch commits wait for the next batch and share its transaction."""
    alice, _ = await server.connected_user(1)
    conversation_id = await alice.create("busy room")
    ids: list[int] = []

    async def keep_sending(worker: int) -> None:  # ten clients, each sending as soon as the last answer came
        for n in range(8):
            ids.append(await alice.send(f"w{worker}.{n}", conversation_id))

    before = _batches_committed()
    await asyncio.gather(*(keep_sending(worker) for worker in range(10)))
    batches = _batches_committed() - before
    assert len(set(ids)) == 80
    assert batches <= 40, f"80 sends, 10 at a time, took {batches:.0f} transactions: they were not grouped"
