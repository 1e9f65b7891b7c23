"""A Redis Cluster client with the plain client's bounds (storage/redis_client.py).

``CHAT_REDIS_URL=redis+cluster://host:port[,host:port...]`` names seed
nodes; the client learns the rest of the cluster from them. What it keeps
of the plain client:

- Each command waits at most the timeout, on connections whose breaker
  fails calls fast after a timeout (one breaker per node: a frozen node
  does not fail the calls that go to the others).
- At most ``max_connections`` commands are in flight per client (a
  pipeline counts once: it takes one connection per node), so never more
  connections than that to any node, and a burst waits (up to the pool
  timeout) for its turn instead of failing: RedisCluster alone raises
  MaxConnectionsError at once.
- No command is sent twice: RedisCluster retries a command after a
  connection error or a timeout, but one that timed out may have run (an
  XADD twice is an event delivered twice). It still follows MOVED and ASK
  redirects, and after an error it re-learns the cluster's layout on the
  next command.

Which keys share a slot is storage/redis_keys.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from typing import Any, AsyncIterator

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

CLUSTER_SCHEME = "redis+cluster://"


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def seed_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of ``redis+cluster://host:port[,host:port...]``; ValueError if malformed."""
    nodes = []
    for part in url.removeprefix(CLUSTER_SCHEME).split(","):
        host, _, port = part.strip().rpartition(":")
        host = host.removeprefix("[").removesuffix("]")  # [::1]:7000
        if not host or not port.isdigit() or any(c in host for c in "/@?#"):
            raise ValueError(f"setting redis_url of a cluster is redis+cluster://host:port[,host:port...], got {url!r}")
        nodes.append((host, int(port)))
    return nodes


# The limit whose turn the running code holds: redis-py may run commands
# inside a call that holds one (a pipeline's redirected commands), and those
# must not wait for a second turn.
_HOLDING: contextvars.ContextVar[object | None] = contextvars.ContextVar("redis_cluster_turn", default=None)


class InFlightLimit:
    """At most ``limit`` calls at once; a call waits at most ``timeout_secs`` for its turn."""

    def __init__(self, limit: int, timeout_secs: float) -> None:
        self._turns = asyncio.Semaphore(limit)
        self.timeout_secs = timeout_secs

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if _HOLDING.get() is self:
            yield
            return
        if self._turns.locked():
            try:
                async with asyncio.timeout(self.timeout_secs):
                    await self._turns.acquire()
            except TimeoutError:
                # What the plain client's blocking pool raises when it times out.
                raise redis.ConnectionError("No connection available.") from None
        else:
            await self._turns.acquire()
        holding = _HOLDING.set(self)
        try:
            yield
        finally:
            try:
                _HOLDING.reset(holding)
            except ValueError:
                # A task garbage-collected mid-command closes this generator
                # in another context; the turn must still be given back.
                pass
            self._turns.release()


class BoundedRedisCluster(RedisCluster):
    """RedisCluster on the plain client's connection class, connection bound and no-resend rule."""

    def __init__(self, url: str, connection_class: type[Connection], max_connections: int, pool_timeout_secs: float,
                 **options: Any) -> None:
        super().__init__(
            startup_nodes=[ClusterNode(host, port) for host, port in seed_nodes(url)],
            max_connections=max_connections, retry=Retry(NoBackoff(), 0), **options,
        )
        # RedisCluster takes no connection class: the seed nodes were built
        # with its default, and the nodes it discovers are built from
        # connection_kwargs (tests/test_private_api.py pins both).
        self.connection_kwargs["connection_class"] = connection_class
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = connection_class
        self.in_flight = InFlightLimit(max_connections, pool_timeout_secs)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.in_flight.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused there
        return BoundedClusterPipeline(self, transaction)


class BoundedClusterPipeline(ClusterPipeline):
    """A pipeline takes one turn of its client: it uses at most one connection per node."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self.cluster_client.in_flight.turn():
            return await super().execute(raise_on_error, allow_redirections)


async def node_of(client: RedisCluster, key: str) -> ClusterNode:
    """The master that holds ``key``'s slot."""
    await client.initialize()  # learns the layout once; afterwards returns at once
    return client.get_node_from_key(key)
