"""The test's own clients of the Redis a server runs on, plain or a cluster, for what tests do behind its back.

Tests read keys the server wrote, drop them (a flush, a trimmed log) and
clean up their prefix afterwards. ``CHAT_REDIS_URL`` may name a single
Redis or a cluster's seed nodes (storage/redis_cluster.py); these clients
take either. On a cluster ``scan_iter`` walks every master and ``delete``
of several keys is split by slot, so the same calls work on both.
"""

from __future__ import annotations

import redis as redis_sync
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from storage.redis_cluster import is_cluster_url, seed_nodes


def sync_client(url: str) -> redis_sync.Redis | redis_sync.RedisCluster:
    if is_cluster_url(url):
        return redis_sync.RedisCluster(startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in seed_nodes(url)])
    return redis_sync.Redis.from_url(url)


def async_client(url: str) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    if is_cluster_url(url):
        return redis.asyncio.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in seed_nodes(url)]
        )
    return redis.asyncio.from_url(url)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (a test's own)."""
    client = sync_client(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


async def delete_matching(url: str, pattern: str) -> None:
    """Delete every key matching ``pattern``, from a test's own loop."""
    client = async_client(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
