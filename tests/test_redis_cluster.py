"""The bus and the cache on a real Redis Cluster (the session's ``redis_cluster``: three masters).

On a cluster a Lua script may only touch keys of one hash slot, and Redis
refuses any that does not (CROSSSLOT): the bus's scripts run here, and the
keys they left are asked their slot (CLUSTER KEYSLOT). The cache's keys
must spread. Then two real ``run.py`` processes on the cluster: a message
sent through one reaches a socket on the other, in order, and a socket
resumes on the other process. The rest of the contract runs on the cluster
too, through the ``two-processes`` topology of conftest.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
import redis.exceptions

from storage.bus import RedisBus
from storage.entries import CONVERSATION, Entry
from storage.cache import RedisCache
from storage.records import UnreadCounts
from storage.redis_client import REDIS_MAX_CONNECTIONS, bounded_client
from storage.redis_cluster import seed_nodes
from tests.outages import RedisClusterInstance
from tests.helpers import User
from tests.processes import Deployment, collect
from tests.redis_access import delete_prefix, sync_client

pytestmark = pytest.mark.gen_test(timeout=60)


@pytest.fixture
def prefix(redis_cluster: RedisClusterInstance):
    prefix = f"chattest:{uuid.uuid4().hex}:"
    yield prefix
    delete_prefix(redis_cluster.url, prefix)


def _slots(redis_cluster: RedisClusterInstance, pattern: str) -> dict[str, int]:
    """Each key matching ``pattern`` and its hash slot, as the cluster computes it."""
    client = sync_client(redis_cluster.url)
    try:
        return {key.decode(): client.cluster_keyslot(key) for key in client.scan_iter(match=pattern, count=1000)}
    finally:
        client.close()


async def test_what_the_bus_scripts_touch_is_in_one_slot(redis_cluster: RedisClusterInstance, prefix: str):
    bus = RedisBus(redis_cluster.url, prefix, window_secs=120)
    try:
        await bus.start(lambda batch: None)  # the epoch script
        assert await bus.route({1: True}, [], True)  # the user's route, the process's routes, its inbox
        entry = Entry(CONVERSATION, {"c": 7, "m": [1]}, b"{}")
        assert await bus.append_in_order("7", 0, 1, 1, [entry])  # head, clock, the inbox of user 1's process
        assert await bus.append_in_order("7", 4, 5, 5, [entry]) is None  # held back: its predecessor is missing
        assert await bus.fill_gap("8", 1, 1, [entry])
        socket_id = bus.process_id + "s" * 20  # a socket id starts with its process's id
        assert await bus.change_viewers(7, 1, [socket_id], True, [1])  # viewers, views, the view's route
        assert await bus.viewer_counts([7]) == {7: 1}
        assert await bus.read(await bus.last_id(), await bus.last_id())
        slots = _slots(redis_cluster, prefix + "{bus}:*")
        names = {key.removeprefix(prefix + "{bus}:").split(":")[0] for key in slots}
        assert names == {"log", "epoch", "clock", "inbox", "uroute", "vroute", "routes", "head", "held", "viewers",
                         "procviews"}
        assert len(set(slots.values())) == 1, slots
        # Stopping with no socket ids finds the user's sockets, and their views keys, in the script.
        assert await bus.change_viewers(7, 1, [], False, [1])
        assert await bus.viewer_counts([7]) == {7: 0}
    finally:
        await bus.close()


async def test_cache_keys_of_different_users_spread_over_the_nodes(redis_cluster: RedisClusterInstance, prefix: str):
    cache = RedisCache(redis_cluster.url, prefix, process_id="p" * 12)
    owners = range(1, 13)
    try:
        for user_id in owners:
            await cache.add_socket(user_id, f"socket-{user_id}")
        await cache.unread_prime({cid: UnreadCounts(1, {1: cid}) for cid in owners})  # one call per slot, at once
        for pattern in ("{user:*}:sockets", "{conversation:*}:unread"):
            slots = _slots(redis_cluster, prefix + pattern)
            assert len(slots) == len(owners) and len(set(slots.values())) > 1, slots
            assert len({_node_of_slot(redis_cluster, slot) for slot in slots.values()}) > 1, slots

        assert await cache.unread_get({cid: 1 for cid in owners}, 1) == {cid: cid for cid in owners}
        await cache.unread_apply(3, 2, {}, add={1: 1})
        assert await cache.unread_get({3: 2}, 1) == {3: 4}
        await cache.ping()  # every master
        assert await cache.sockets_of(5) == {"socket-5"}
        await cache.forget_process_sockets("p" * 12)  # one pipeline over every user's slot
        assert await cache.sockets_of(5) == set()
    finally:
        await cache.close()


def _node_of_slot(redis_cluster: RedisClusterInstance, slot: int) -> str:
    """The master serving ``slot`` (CLUSTER SLOTS)."""
    client = sync_client(redis_cluster.url)
    try:
        return client.nodes_manager.get_node_from_slot(slot).name
    finally:
        client.close()


async def test_a_burst_waits_for_a_connection_as_on_a_single_redis(redis_cluster: RedisClusterInstance, prefix: str):
    """More calls at once than connections: they wait their turn (RedisCluster alone raises MaxConnectionsError)."""
    client = bounded_client(redis_cluster.url, 1.0)
    try:
        await client.ping()  # the layout is known: every call of the burst goes out at once
        burst = 5 * REDIS_MAX_CONNECTIONS
        await asyncio.gather(*(client.set(f"{prefix}burst:{n}", n) for n in range(burst)))
        async with client.pipeline(transaction=False) as pipe:
            for n in range(burst):
                pipe.get(f"{prefix}burst:{n}")
            assert [int(value) for value in await pipe.execute()] == list(range(burst))
        for node in client.get_nodes():
            assert len(node._connections) <= REDIS_MAX_CONNECTIONS
    finally:
        await client.aclose()


async def test_a_frozen_node_fails_its_own_calls_fast_and_no_others(tmp_path: Path):
    """One breaker per node: after one timeout its calls fail at once; the other nodes' calls go on."""
    timeout_secs = 0.5
    with RedisClusterInstance(tmp_path / "cluster") as cluster:  # its own: the session's is never paused
        client = bounded_client(cluster.url, timeout_secs)
        try:
            await client.ping()
            frozen = cluster.nodes[0]
            on_node: dict[bool, str] = {}
            for n in range(1000):
                on_node.setdefault(client.get_node_from_key(f"k{n}").port == frozen.port, f"k{n}")
            frozen.pause()
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.get(on_node[True])
            assert time.monotonic() - started < timeout_secs + 1
            started = time.monotonic()
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.get(on_node[True])
            assert time.monotonic() - started < timeout_secs / 2  # the breaker, not another timeout
            assert await client.set(on_node[False], "still here")
            frozen.resume()
        finally:
            await client.aclose()


async def test_two_processes_on_the_cluster_deliver_in_order_and_resume(cluster_deployment: Deployment):
    a, b = await cluster_deployment.start(2)
    alice, bob_on_a = User(a, 1), User(a, 2)
    await alice.connect()
    bob_socket = await User(b, 2).connect()  # bob's socket is on b; every HTTP call goes to a
    conversation_id = await alice.create("across the cluster")
    await bob_on_a.join(conversation_id)
    await bob_socket.drain()

    sent = [await alice.send(f"m{n}", conversation_id) for n in range(20)]
    assert [message["id"] for message in await collect(bob_socket, 20)] == sent  # through a, to b, in order
    position = bob_socket.position
    bob_socket.close()
    missed = [await alice.send(f"late {n}", conversation_id) for n in range(5)]

    resumed, first = await bob_on_a.resume(position)  # on the other process
    assert first["event"] == "resumed" and first["data"]["missed"] == len(missed), first
    assert [message["id"] for message in await collect(resumed, len(missed))] == missed
    await resumed.assert_silent()

    client = sync_client(cluster_deployment.env["CHAT_REDIS_URL"])
    try:
        assert client.xlen(cluster_deployment.prefix + "{bus}:log") > 0  # the processes wrote to the cluster
    finally:
        client.close()


def test_a_cluster_url_names_its_seed_nodes():
    assert seed_nodes("redis+cluster://127.0.0.1:7000") == [("127.0.0.1", 7000)]
    assert seed_nodes("redis+cluster://a:7000, b:7001,[::1]:7002") == [("a", 7000), ("b", 7001), ("::1", 7002)]
    for malformed in ("redis+cluster://", "redis+cluster://a", "redis+cluster://a:7000/0", "redis+cluster://p@a:1"):
        with pytest.raises(ValueError, match="redis\\+cluster://host:port"):
            seed_nodes(malformed)


def test_a_prefix_with_a_hash_tag_is_refused():
    for make in (RedisCache, lambda url, prefix: RedisBus(url, prefix, window_secs=120)):
        with pytest.raises(ValueError, match="must not contain"):
            make("redis+cluster://127.0.0.1:7000", "chat:{x}:")  # before connecting to anything
