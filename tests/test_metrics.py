"""/metrics: Prometheus text on its own listener (or on the API port with a token), counting what happens.

Metrics are process-wide, so every check compares a scrape before and after
what the test does.
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPClientError
from tornado.websocket import websocket_connect

from storage.database import Database
from tests.helpers import ServerUnderTest, User, eventually
from tests.processes import ChatProcess, Deployment, collect, texts

pytestmark = pytest.mark.gen_test

Samples = dict[tuple[str, frozenset], float]


async def scrape(server: ServerUnderTest, headers: dict[str, str] | None = None, port: int | None = None) -> Samples:
    port = port or server.chat_server.metrics_port
    response = await server.http.fetch(f"http://127.0.0.1:{port}/metrics", headers=headers)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# One server per Python process: two in-process servers would share one metric
# registry, which real processes never do.
@pytest.mark.parametrize("backend", ["mysql", "embedded"])
@pytest.mark.server(metrics_addr="127.0.0.1:0")
async def test_metrics_count_sockets_requests_commits_and_deliveries(server: ServerUnderTest):
    before = await scrape(server)
    alice, alice_socket = await server.connected_user(1)
    bob, bob_socket = await server.connected_user(2)
    conversation_id = await alice.create(name="Metrics")
    await bob.join(conversation_id)
    for text in ("one", "two", "three"):
        await alice.send(text, conversation_id)
    frames = await bob_socket.drain()
    assert [frame["event"] for frame in frames][-3:] == ["new_message"] * 3
    with pytest.raises(HTTPClientError) as refused:
        await websocket_connect(f"{server.ws_url}/v1/ws?vk_user_id=1&sign=forged")
    assert refused.value.code == 401
    after = await scrape(server)

    assert value(after, "chat_open_sockets") == 2 and value(after, "chat_connected_users") == 2
    assert grew(before, after, "chat_handshakes_total", outcome="accepted") == 2
    assert grew(before, after, "chat_handshakes_total", outcome="not_authenticated") == 1
    assert grew(before, after, "chat_messages_committed_total") == 3
    # the "created" message of a conversation is not a send; three sends, each a batch of at least one
    assert 1 <= grew(before, after, "chat_commit_duration_seconds_count") <= 3
    assert grew(before, after, "chat_commit_batch_size_sum") == 3
    assert grew(before, after, "chat_send_to_delivery_seconds_count") == 3
    # 3 messages to 2 members' sockets, new_conversation and joined_conversation to both sockets
    assert grew(before, after, "chat_events_delivered_total") == 3 * 2 + 2 + 2
    # one process: every conversation entry it read had an audience here
    read = grew(before, after, "chat_log_entries_read_total", kind="conversation")
    assert read >= 3 and grew(before, after, "chat_log_entries_delivered_total", kind="conversation") == read
    assert grew(before, after, "chat_log_entries_read_total", kind="all") == 2  # the join and new_conversation
    send = "/v1/messages/send"
    assert grew(before, after, "chat_http_requests_total", route=send, method="POST", status="200") == 3
    assert grew(before, after, "chat_http_request_duration_seconds_count", route=send) == 3
    join = "/v1/conversations/join/{conversation_id}"
    assert grew(before, after, "chat_http_requests_total", route=join, method="GET", status="200") == 1
    assert grew(before, after, "chat_http_requests_total", route="/v1/ws", method="GET", status="401") == 1
    assert value(after, "process_resident_memory_bytes") > 0  # the process collector comes along

    alice_socket.close()
    bob_socket.close()
    await eventually(lambda: not server.registry.connections())
    assert value(await scrape(server), "chat_open_sockets") == 0


@pytest.mark.server(metrics_addr="127.0.0.1:0", send_rate_limit=1)
async def test_metrics_count_429s_and_storage_errors(server: ServerUnderTest, tmp_path):
    alice, _ = await server.connected_user(1)
    before = await scrape(server)
    statuses = [(await alice.post("/v1/messages/send", {"text": "x"})).status for _ in range(4)]
    assert 429 in statuses
    chat = server.http_chat_server.chat  # the process answering HTTP
    working, chat.database = chat.database, Database(f"sqlite+aiosqlite:///{tmp_path}/gone/chat.sqlite3")
    (tmp_path / "gone").rmdir()
    (tmp_path / "gone").write_text("a file where the database folder was")
    try:
        assert (await alice.get("/v1/conversations/get")).status == 503
    finally:
        await chat.database.close()
        chat.database = working
    after = await scrape(server)
    assert grew(before, after, "chat_rate_limited_total") == statuses.count(429)
    assert grew(before, after, "chat_http_requests_total", route="/v1/messages/send", method="POST",
                status="429") == statuses.count(429)
    assert grew(before, after, "chat_storage_errors_total", store="database") >= 1


@pytest.mark.server(metrics_addr="127.0.0.1:0")
async def test_metrics_listener_serves_only_metrics(server: ServerUnderTest):
    response = await server.http.fetch(
        f"http://127.0.0.1:{server.chat_server.metrics_port}/v1/messages/get", raise_error=False
    )
    assert response.code == 404
    # and the API port has no /metrics without a token
    assert (await server.fetch("GET", "/metrics", {}, None)).status == 404


@pytest.mark.server(metrics_token="s3cret-scrape-token")
async def test_metrics_on_the_api_port_need_the_token(server: ServerUnderTest):
    assert server.chat_server.metrics_port is None  # no listener of its own unless configured
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-scrape-token"}):
        response = await server.fetch("GET", "/metrics", headers, None)
        assert (response.status, response.error_code) == (401, 401)
    port = int(server.base_url.rsplit(":", 1)[1])
    samples = await scrape(server, {"Authorization": "Bearer s3cret-scrape-token"}, port=port)
    assert ("chat_open_sockets", frozenset()) in samples


def test_metrics_addr_is_host_and_port_or_a_host_next_to_the_api_port():
    from server.settings import Settings

    assert Settings(metrics_addr="127.0.0.1:9180").metrics_bind(8080) == ("127.0.0.1", 9180)
    assert Settings(metrics_addr="[::1]:0").metrics_bind(8080) == ("::1", 0)
    assert Settings(metrics_addr="off").metrics_bind(8080) is None
    assert Settings(metrics_addr="").metrics_bind(8080) is None
    # A host alone: the port follows the API port, so processes on one host never meet.
    assert Settings(metrics_addr="127.0.0.1").metrics_bind(8080) == ("127.0.0.1", 9180)
    assert Settings(metrics_addr="127.0.0.1").metrics_bind(8081) == ("127.0.0.1", 9181)
    assert Settings(metrics_addr="[::1]").metrics_bind(8080) == ("::1", 9180)
    assert Settings(metrics_addr="127.0.0.1").metrics_bind(0) == ("127.0.0.1", 0)  # an ephemeral API port
    for malformed in ("9180", "127.0.0.1:", ":9180", "[]"):
        with pytest.raises(ValueError):
            Settings(metrics_addr=malformed).metrics_bind(8080)


SCRAPE_TOKEN = "log-metrics-scrape-token"


async def scrape_process(process: ChatProcess) -> Samples:
    return await scrape(process, {"Authorization": f"Bearer {SCRAPE_TOKEN}"}, port=process.port)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.deployment(CHAT_METRICS_TOKEN=SCRAPE_TOKEN)
async def test_a_process_reads_only_the_conversation_entries_it_has_an_audience_for(deployment: Deployment):
    """Issue 20's partitioned log, as each process's /metrics shows it: a conversation whose members
    are all on process a is read and delivered on a only, b reads nothing of it; a global message
    (the shared lane) with a listener only on b is read on both and delivered only on b."""
    a, b = await deployment.start(2)
    alice, bob, carol = User(a, 1), User(a, 2), User(b, 3)  # sockets and HTTP calls: alice and bob on a, carol on b
    sockets = [await alice.connect(), await bob.connect(), await carol.connect()]
    conversation_id = await alice.create("only on a")
    await bob.join(conversation_id)
    # Published through b after the setup above, and applied by b before it answers: b has read the setup.
    assert (await carol.get("/v1/messages/get?chat=0")).ok
    for socket in sockets:
        await socket.drain()
    before = {a: await scrape_process(a), b: await scrape_process(b)}

    for text in ("one", "two", "three"):
        await alice.send(text, conversation_id)  # answered once applied on a
    await alice.send("to everyone")
    assert [m["message"] for m in await collect(sockets[2], 1)] == ["to everyone"]  # b has applied all four
    after = {a: await scrape_process(a), b: await scrape_process(b)}

    def moved(process: ChatProcess, name: str, **labels: str) -> float:
        return grew(before[process], after[process], name, **labels)

    assert moved(a, "chat_log_entries_read_total", kind="conversation") == 3
    assert moved(b, "chat_log_entries_read_total", kind="conversation") == 0  # no audience there
    for process in (a, b):
        assert moved(process, "chat_log_entries_read_total", kind="global") == 1
    assert moved(a, "chat_log_entries_delivered_total", kind="conversation") == 3
    assert moved(b, "chat_log_entries_delivered_total", kind="conversation") == 0
    assert moved(a, "chat_log_entries_delivered_total", kind="global") == 0  # nobody on a listens
    assert moved(b, "chat_log_entries_delivered_total", kind="global") == 1
    assert moved(a, "chat_events_delivered_total") == 3 * 2  # frames: alice's and bob's sockets
    assert moved(b, "chat_events_delivered_total") == 1
    for socket in sockets[:2]:
        assert texts(await socket.drain()) == ["one", "two", "three"]
    await sockets[2].assert_silent()
