"""The cache: open socket ids per user and unread counters per conversation.

Nothing here is the truth. Socket ids mirror the live connections of this
process (re-added on every refresh, expiring when a crashed process stops
refreshing them); unread counters are rebuilt from the database whenever a
conversation's counters are missing. A conversation's counters are valid only
while its hash exists ("primed"): increments are applied only to a primed
hash, so a counter lost with Redis is never restarted from zero.

Two implementations with one interface: :class:`RedisCache` and
:class:`MemoryCache`, chosen by :func:`create_cache`.
"""

from __future__ import annotations

import abc
from typing import Iterable, Mapping, Sequence

import redis.asyncio as redis

# Socket-id sets expire unless refreshed; the server refreshes them every
# SOCKET_REFRESH_SECS, so ids left by a crashed process vanish within a minute.
SOCKET_TTL_SECS = 60
SOCKET_REFRESH_SECS = 20
# Counters of quiet conversations are dropped after a day and rebuilt on demand.
UNREAD_TTL_SECS = 24 * 3600
PRIMED_FIELD = "_primed"
REDIS_MAX_CONNECTIONS = 64
REDIS_POOL_TIMEOUT_SECS = 5


class Cache(abc.ABC):
    """What the chat service asks of its cache."""

    @abc.abstractmethod
    async def add_socket(self, user_id: int, socket_id: str) -> None:
        """Record an open socket of a user."""

    @abc.abstractmethod
    async def remove_sockets(self, sockets: Sequence[tuple[int, str]]) -> None:
        """Forget closed sockets, given as (user id, socket id)."""

    @abc.abstractmethod
    async def sockets_of(self, user_id: int) -> set[str]:
        """The user's socket ids the cache holds (open on any process)."""

    @abc.abstractmethod
    async def refresh_sockets(self, sockets_by_user: Mapping[int, Iterable[str]]) -> None:
        """Re-add the live sockets and extend their expiry."""

    @abc.abstractmethod
    async def forget_all_sockets(self) -> None:
        """Drop every socket id: at start-up no socket of ours is open."""

    @abc.abstractmethod
    async def unread_on_messages(
        self, conversation_id: int, set_to: Mapping[int, int], add: Mapping[int, int]
    ) -> None:
        """Set some members' counters and add to others', if the conversation is primed."""

    @abc.abstractmethod
    async def unread_set(self, conversation_id: int, user_id: int, count: int) -> None:
        """Set one member's counter, if primed."""

    @abc.abstractmethod
    async def unread_remove(self, conversation_id: int, user_id: int) -> None:
        """Drop a member's counter (they left)."""

    @abc.abstractmethod
    async def unread_drop(self, conversation_id: int) -> None:
        """Drop a conversation's counters (it was deleted)."""

    @abc.abstractmethod
    async def unread_get(self, conversation_ids: Sequence[int], user_id: int) -> dict[int, int | None]:
        """The user's counters; None where a conversation is not primed."""

    @abc.abstractmethod
    async def unread_prime(self, counts: Mapping[int, Mapping[int, int]]) -> None:
        """Replace conversations' counters with ones rebuilt from the database."""

    async def close(self) -> None:
        """Release connections."""


class MemoryCache(Cache):
    """In-process cache for the embedded default: same behaviour, no Redis."""

    def __init__(self) -> None:
        self._sockets: dict[int, set[str]] = {}  # user id → open socket ids
        self._unread: dict[int, dict[int, int]] = {}  # conversation id → user id → count

    async def add_socket(self, user_id: int, socket_id: str) -> None:
        self._sockets.setdefault(user_id, set()).add(socket_id)

    async def remove_sockets(self, sockets: Sequence[tuple[int, str]]) -> None:
        for user_id, socket_id in sockets:
            user_sockets = self._sockets.get(user_id)
            if user_sockets is not None:
                user_sockets.discard(socket_id)
                if not user_sockets:
                    del self._sockets[user_id]

    async def sockets_of(self, user_id: int) -> set[str]:
        return set(self._sockets.get(user_id, ()))

    async def refresh_sockets(self, sockets_by_user: Mapping[int, Iterable[str]]) -> None:
        for user_id, socket_ids in sockets_by_user.items():
            self._sockets.setdefault(user_id, set()).update(socket_ids)

    async def forget_all_sockets(self) -> None:
        self._sockets.clear()

    def clear(self) -> None:
        """Lose everything, as a restarted Redis would."""
        self._sockets.clear()
        self._unread.clear()

    async def unread_on_messages(
        self, conversation_id: int, set_to: Mapping[int, int], add: Mapping[int, int]
    ) -> None:
        counters = self._unread.get(conversation_id)
        if counters is None:
            return
        counters.update(set_to)
        for user_id, count in add.items():
            counters[user_id] = counters.get(user_id, 0) + count

    async def unread_set(self, conversation_id: int, user_id: int, count: int) -> None:
        if conversation_id in self._unread:
            self._unread[conversation_id][user_id] = count

    async def unread_remove(self, conversation_id: int, user_id: int) -> None:
        self._unread.get(conversation_id, {}).pop(user_id, None)

    async def unread_drop(self, conversation_id: int) -> None:
        self._unread.pop(conversation_id, None)

    async def unread_get(self, conversation_ids: Sequence[int], user_id: int) -> dict[int, int | None]:
        return {cid: self._unread.get(cid, {}).get(user_id) for cid in conversation_ids}

    async def unread_prime(self, counts: Mapping[int, Mapping[int, int]]) -> None:
        for conversation_id, counters in counts.items():
            self._unread[conversation_id] = dict(counters)


# Applied only to a primed hash (see the module docstring). ARGV is
# (n, user, count × n for HSET, then user, count pairs for HINCRBY).
_UNREAD_ON_MESSAGES_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
for i = 2, 2 * n, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 2 * n + 2, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""
_UNREAD_SET_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class RedisCache(Cache):
    """Redis cache (``redis.asyncio``); every key starts with ``prefix``."""

    def __init__(self, url: str, prefix: str) -> None:
        # A bounded pool that makes a burst of requests wait for a connection
        # instead of failing ("Too many connections") or opening hundreds.
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_TIMEOUT_SECS, decode_responses=True
        )
        self.client = redis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self.prefix = prefix
        self._unread_on_messages = self.client.register_script(_UNREAD_ON_MESSAGES_LUA)
        self._unread_set = self.client.register_script(_UNREAD_SET_LUA)

    def _sockets_key(self, user_id: int) -> str:
        return f"{self.prefix}sockets:{user_id}"

    def _unread_key(self, conversation_id: int) -> str:
        return f"{self.prefix}unread:{conversation_id}"

    async def add_socket(self, user_id: int, socket_id: str) -> None:
        key = self._sockets_key(user_id)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(key, socket_id).expire(key, SOCKET_TTL_SECS)
            await pipe.execute()

    async def remove_sockets(self, sockets: Sequence[tuple[int, str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id, socket_id in sockets:
                pipe.srem(self._sockets_key(user_id), socket_id)
            await pipe.execute()

    async def sockets_of(self, user_id: int) -> set[str]:
        return set(await self.client.smembers(self._sockets_key(user_id)))

    async def refresh_sockets(self, sockets_by_user: Mapping[int, Iterable[str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id, socket_ids in sockets_by_user.items():
                key = self._sockets_key(user_id)
                pipe.sadd(key, *socket_ids).expire(key, SOCKET_TTL_SECS)
            await pipe.execute()

    async def forget_all_sockets(self) -> None:
        keys = [key async for key in self.client.scan_iter(match=f"{self.prefix}sockets:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await self.client.delete(*keys[start : start + 1000])

    async def unread_on_messages(
        self, conversation_id: int, set_to: Mapping[int, int], add: Mapping[int, int]
    ) -> None:
        args: list[int] = [len(set_to)]
        for counters in (set_to, add):
            for user_id, count in counters.items():
                args += (user_id, count)
        await self._unread_on_messages(keys=[self._unread_key(conversation_id)], args=args)

    async def unread_set(self, conversation_id: int, user_id: int, count: int) -> None:
        await self._unread_set(keys=[self._unread_key(conversation_id)], args=[user_id, count])

    async def unread_remove(self, conversation_id: int, user_id: int) -> None:
        await self.client.hdel(self._unread_key(conversation_id), str(user_id))

    async def unread_drop(self, conversation_id: int) -> None:
        await self.client.delete(self._unread_key(conversation_id))

    async def unread_get(self, conversation_ids: Sequence[int], user_id: int) -> dict[int, int | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for conversation_id in conversation_ids:
                pipe.hget(self._unread_key(conversation_id), str(user_id))
            values = await pipe.execute()
        return {
            cid: None if value is None else int(value)
            for cid, value in zip(conversation_ids, values)
        }

    async def unread_prime(self, counts: Mapping[int, Mapping[int, int]]) -> None:
        async with self.client.pipeline(transaction=True) as pipe:
            for conversation_id, counters in counts.items():
                key = self._unread_key(conversation_id)
                pipe.delete(key)
                pipe.hset(key, mapping={PRIMED_FIELD: 1, **{str(u): c for u, c in counters.items()}})
                pipe.expire(key, UNREAD_TTL_SECS)
            await pipe.execute()

    async def close(self) -> None:
        await self.client.aclose()


def create_cache(redis_url: str, prefix: str) -> Cache:
    """Redis when a URL is configured, the in-process cache otherwise."""
    return RedisCache(redis_url, prefix) if redis_url else MemoryCache()
