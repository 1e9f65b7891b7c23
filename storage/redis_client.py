"""Redis clients with bounded waits: one timeout per outage, not one per call.

Every command waits at most ``timeout_secs`` for Redis (connecting or
reading). A request may make several Redis calls in a row; if Redis is
frozen (SIGSTOP, a stuck disk, a partition that drops packets) each of them
would wait the full timeout. So the first call that times out opens a
breaker: for ``BREAK_SECS`` every call on that client fails at once, as if
Redis refused the connection, and the request goes on with what it has
(the cache is never the only copy of anything). After that one call is let
through to see whether Redis is back.

A Redis that restarted closed every connection of the pool, and each would
fail once when next used: a few dozen failed calls in a row. So the first
call that finds its connection closed by the server marks every connection
opened before as stale, and each reconnects before its next command instead.

``CHAT_REDIS_URL=redis+cluster://...`` gets a Redis Cluster client with the
same bounds (storage/redis_cluster.py); any other URL a plain client.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any, Callable

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

from storage.redis_cluster import BoundedRedisCluster, is_cluster_url, node_of

REDIS_MAX_CONNECTIONS = 64
# How long a request may wait for a free connection of the bounded pool.
REDIS_POOL_TIMEOUT_SECS = 5
# After a timeout, calls fail at once for this long.
BREAK_SECS = 2.0


# Bumped whenever Redis closed a connection: every connection opened before is stale.
_generation = [0]


def connection_lost() -> None:
    _generation[0] += 1


def connection_generation() -> int:
    """Changes whenever Redis closed a connection (it may have restarted)."""
    return _generation[0]


class Breaker:
    """Whether Redis is believed to be away (one per client, the cache's and the bus's; on a cluster one per node)."""

    def __init__(self) -> None:
        self.open_until = 0.0

    def check(self) -> None:
        if self.open_until and time.monotonic() < self.open_until:
            raise redis.ConnectionError("Redis did not answer lately; failing fast (storage/redis_client.py)")

    def trip(self) -> None:
        self.open_until = time.monotonic() + BREAK_SECS

    def reset(self) -> None:
        self.open_until = 0.0


def _connection_class(breaker_for: Callable[[str, int], Breaker]) -> type[Connection]:
    """Connections that fail fast while the breaker of their server (``breaker_for(host, port)``) is open."""

    class BreakerConnection(Connection):
        generation = 0

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.breaker = breaker_for(self.host, self.port)

        async def connect(self) -> None:
            breaker = self.breaker
            breaker.check()
            self.generation = _generation[0]  # before connecting: the handshake sends commands too
            try:
                await super().connect()
            except (redis.TimeoutError, TimeoutError):
                breaker.trip()
                raise

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            breaker = self.breaker
            breaker.check()
            if self.generation < _generation[0]:
                # Redis closed a sibling: this one is closed too. (Reconnecting
                # below runs the handshake through here: mark it first.)
                self.generation = _generation[0]
                if self.is_connected:
                    await self.disconnect(nowait=True)
            if not self.is_connected or (check_health and self.health_check_interval):
                try:
                    await super().send_packed_command(command, check_health)
                except (redis.TimeoutError, TimeoutError):
                    breaker.trip()
                    raise
                return
            # redis-py bounds the write with asyncio.wait_for, which on
            # Python 3.11 wraps every command in a new Task: about a fifth
            # of a command's CPU. asyncio.timeout bounds it without one.
            if isinstance(command, str):
                command = command.encode()
            if isinstance(command, bytes):
                command = [command]
            try:
                async with asyncio.timeout(self.socket_timeout):
                    await self._send_packed_command(command)
            except TimeoutError:
                await self.disconnect(nowait=True)
                breaker.trip()
                raise redis.TimeoutError("Timeout writing to socket") from None
            except OSError as error:
                await self.disconnect(nowait=True)
                connection_lost()
                raise redis.ConnectionError(f"Error while writing to socket: {error}") from error
            except BaseException:
                # A write cut short leaves the connection mid-command: never reuse it.
                await self.disconnect(nowait=True)
                raise

        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                response = await super().read_response(*args, **kwargs)
            except (redis.TimeoutError, TimeoutError):
                self.breaker.trip()
                raise
            except redis.ConnectionError:
                connection_lost()
                raise
            self.breaker.reset()
            return response

    return BreakerConnection


def _breaker_per_node() -> Callable[[str, int], Breaker]:
    breakers: collections.defaultdict[tuple[str, int], Breaker] = collections.defaultdict(Breaker)
    return lambda host, port: breakers[host, port]


def bounded_client(url: str, timeout_secs: float, **options: Any) -> redis.Redis | RedisCluster:
    """A client on a bounded pool whose every wait for Redis ends after ``timeout_secs``."""
    if is_cluster_url(url):
        return BoundedRedisCluster(
            url, _connection_class(_breaker_per_node()), REDIS_MAX_CONNECTIONS, REDIS_POOL_TIMEOUT_SECS,
            socket_timeout=timeout_secs, socket_connect_timeout=timeout_secs, **options,
        )
    breaker = Breaker()
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_TIMEOUT_SECS,
        socket_timeout=timeout_secs, socket_connect_timeout=timeout_secs,
        connection_class=_connection_class(lambda host, port: breaker), **options,
    )
    client = redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
    client.breaker = breaker  # type: ignore[attr-defined]
    return client


def dedicated_client(url: str, read_timeout_secs: float, connect_timeout_secs: float) -> redis.Redis | RedisCluster:
    """A client for one long-lived task (the log's reader): its own connection, its own breaker."""
    if is_cluster_url(url):
        # Its own connections: one to the log's node, and what learning the layout takes.
        return BoundedRedisCluster(
            url, _connection_class(_breaker_per_node()), REDIS_MAX_CONNECTIONS, REDIS_POOL_TIMEOUT_SECS,
            socket_timeout=read_timeout_secs, socket_connect_timeout=connect_timeout_secs,
        )
    breaker = Breaker()
    return redis.Redis.from_url(
        url, socket_timeout=read_timeout_secs, socket_connect_timeout=connect_timeout_secs,
        connection_class=_connection_class(lambda host, port: breaker),
    )


async def server_info(client: redis.Redis | RedisCluster, key: str, section: str) -> dict[str, Any]:
    """INFO of the server that holds ``key`` (on a cluster, the master of its slot)."""
    if isinstance(client, RedisCluster):
        return await client.info(section, target_nodes=await node_of(client, key))
    return await client.info(section)
