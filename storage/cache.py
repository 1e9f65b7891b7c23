"""The cache: open socket ids and the stored profile per user, unread counters per conversation.

Nothing here is the truth. Socket ids mirror the live connections (re-added
on every refresh, expiring when a crashed process stops refreshing them).

A cached profile is what the database stored at the user's last changed
launch; a handshake whose launch carries the same one skips the database.

Unread counters carry the version of the database they reflect: every commit
that changes a conversation's counts bumps ``conversations.counter_version``,
and the change is applied to the cached counters only if they are at the
version just before it (then they move to the new one); anything else drops
them. Readers serve a cached counter only when its version equals the one
the database shows them, and otherwise rebuild it from the database. So a
counter that missed an update (Redis was away, restarted from an old
snapshot, or paused past a timeout) is never served again, whatever happened
to the cache meanwhile.

Two implementations with one interface: :class:`RedisCache` and
:class:`MemoryCache`, chosen by :func:`create_cache`.
"""

from __future__ import annotations

import abc
import asyncio
from typing import Iterable, Mapping, Sequence

from redis.asyncio.cluster import RedisCluster

from storage.records import Profile, UnreadCounts
from storage.redis_client import bounded_client, read_retried
from storage.redis_keys import checked_prefix, slot_key

# Socket-id sets expire unless refreshed; the server refreshes them every
# SOCKET_REFRESH_SECS, so ids left by a crashed process vanish within a minute.
SOCKET_TTL_SECS = 60
# A user's profile stays cached this long after their last handshake.
PROFILE_TTL_SECS = 7 * 24 * 3600
SOCKET_REFRESH_SECS = 20
# Counters of quiet conversations are dropped after a day and rebuilt on demand.
UNREAD_TTL_SECS = 24 * 3600
VERSION_FIELD = "_v"


class Cache(abc.ABC):
    """What the chat service asks of its cache."""

    @abc.abstractmethod
    async def add_socket(self, user_id: int, socket_id: str) -> None:
        """Record an open socket of a user."""

    @abc.abstractmethod
    async def reserve_socket(self, user_id: int, socket_id: str, cap: int) -> tuple[bool, Profile | None]:
        """Record a socket about to open unless the user holds ``cap`` already (0: no cap); False if refused.

        One atomic step, so concurrent handshakes of one user on several
        processes cannot all slip under the cap. Also returns the user's
        cached profile (``cache_profile``), if any, in the same round trip:
        a returning user whose launch carries the same profile costs the
        handshake no database call.
        """

    @abc.abstractmethod
    async def cache_profile(self, user_id: int, profile: Profile) -> None:
        """Keep the profile the database stored for a user (for PROFILE_TTL_SECS after their last handshake)."""

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
    async def forget_process_sockets(self, process_id: str) -> None:
        """Drop the socket ids a dead process left."""

    @abc.abstractmethod
    async def unread_apply(
        self, conversation_id: int, version: int, set_to: Mapping[int, int], add: Mapping[int, int] = {},
        remove: Iterable[int] = (),
    ) -> None:
        """Apply the change that took the counters to ``version``, if they are at ``version - 1``; else drop them."""

    @abc.abstractmethod
    async def unread_drop(self, conversation_id: int) -> None:
        """Drop a conversation's counters (it was deleted)."""

    @abc.abstractmethod
    async def unread_get(self, versions: Mapping[int, int], user_id: int) -> dict[int, int | None]:
        """The user's counters where the cache holds them at the given version; None elsewhere."""

    @abc.abstractmethod
    async def unread_prime(self, counts: Mapping[int, UnreadCounts]) -> None:
        """Store counters rebuilt from the database, unless the cache already holds a newer version."""

    async def ping(self) -> None:
        """Return once the cache answers; raise if it cannot (readiness)."""

    async def close(self) -> None:
        """Release connections."""


class MemoryCache(Cache):
    """In-process cache for the embedded default: same behaviour, no Redis."""

    def __init__(self) -> None:
        self._sockets: dict[int, set[str]] = {}  # user id → open socket ids
        self._profiles: dict[int, Profile] = {}  # user id → stored profile
        self._unread: dict[int, UnreadCounts] = {}  # conversation id → its counters and their version

    async def add_socket(self, user_id: int, socket_id: str) -> None:
        self._sockets.setdefault(user_id, set()).add(socket_id)

    async def reserve_socket(self, user_id: int, socket_id: str, cap: int) -> tuple[bool, Profile | None]:
        user_sockets = self._sockets.setdefault(user_id, set())
        profile = self._profiles.get(user_id)
        if cap and len(user_sockets) >= cap and socket_id not in user_sockets:
            if not user_sockets:
                del self._sockets[user_id]
            return False, profile
        user_sockets.add(socket_id)
        return True, profile

    async def cache_profile(self, user_id: int, profile: Profile) -> None:
        # One process's users, as long as it runs: the database holds them all anyway.
        self._profiles[user_id] = profile

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

    async def forget_process_sockets(self, process_id: str) -> None:
        return None  # one process: nobody else's sockets

    def clear(self) -> None:
        """Lose everything, as a restarted Redis would."""
        self._sockets.clear()
        self._unread.clear()

    async def unread_apply(
        self, conversation_id: int, version: int, set_to: Mapping[int, int], add: Mapping[int, int] = {},
        remove: Iterable[int] = (),
    ) -> None:
        cached = self._unread.get(conversation_id)
        if cached is None or cached.version >= version:
            return
        if cached.version != version - 1:
            del self._unread[conversation_id]
            return
        counts = dict(cached.counts)
        counts.update(set_to)
        for user_id, count in add.items():
            counts[user_id] = counts.get(user_id, 0) + count
        for user_id in remove:
            counts.pop(user_id, None)
        self._unread[conversation_id] = UnreadCounts(version, counts)

    async def unread_drop(self, conversation_id: int) -> None:
        self._unread.pop(conversation_id, None)

    async def unread_get(self, versions: Mapping[int, int], user_id: int) -> dict[int, int | None]:
        result: dict[int, int | None] = {}
        for conversation_id, version in versions.items():
            cached = self._unread.get(conversation_id)
            result[conversation_id] = (
                cached.counts.get(user_id, 0) if cached is not None and cached.version == version else None
            )
        return result

    async def unread_prime(self, counts: Mapping[int, UnreadCounts]) -> None:
        for conversation_id, rebuilt in counts.items():
            cached = self._unread.get(conversation_id)
            if cached is None or cached.version < rebuilt.version:
                self._unread[conversation_id] = UnreadCounts(rebuilt.version, dict(rebuilt.counts))


# KEYS: the user's socket ids, the user's profile. ARGV: socket id, cap (0: none), socket ttl, profile ttl.
# Returns {1 if added (or already there) / 0 if refused, and the cached name and avatar if any}.
_RESERVE_SOCKET_LUA = """
local profile = redis.call('HMGET', KEYS[2], 'n', 'a')
local outcome = {1}
if profile[1] and profile[2] then
  outcome = {1, profile[1], profile[2]}
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 and redis.call('SCARD', KEYS[1]) >= cap then
  outcome[1] = 0
  return outcome
end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return outcome
"""

# KEYS[1] the conversation's hash; ARGV: version, n_set, n_add, then user/count
# pairs to set, user/count pairs to add, then users to remove. The hash moves
# from version - 1 to version, or is dropped: a hash that missed a change must
# not serve again (see the module docstring).
_UNREAD_APPLY_LUA = """
local cached = redis.call('HGET', KEYS[1], '_v')
if not cached then return 0 end
local version = tonumber(ARGV[1])
if tonumber(cached) >= version then return 0 end
if tonumber(cached) ~= version - 1 then redis.call('DEL', KEYS[1]) return -1 end
local n_set, n_add = tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for _ = 1, n_set do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) i = i + 2 end
for _ = 1, n_add do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) i = i + 2 end
while i <= #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) i = i + 1 end
redis.call('HSET', KEYS[1], '_v', version)
return 1
"""
# KEYS[1] the hash; ARGV: version, ttl, then user/count pairs. Never replaces a newer version.
_UNREAD_PRIME_LUA = """
local cached = redis.call('HGET', KEYS[1], '_v')
if cached and tonumber(cached) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_v', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisCache(Cache):
    """Redis cache (``redis.asyncio``); every key starts with ``prefix``.

    A user's socket ids and a conversation's counters are each in their
    owner's hash slot (storage/redis_keys.py): on a Redis Cluster they spread
    over the nodes, and no call needs two of them in one slot.
    """

    def __init__(self, url: str, prefix: str, process_id: str = "", timeout_secs: float = 1.0) -> None:
        # A bounded pool that makes a burst of requests wait for a connection
        # instead of failing ("Too many connections") or opening hundreds,
        # and a bounded wait for a Redis that does not answer.
        self.prefix = checked_prefix(prefix)
        self.client = bounded_client(url, timeout_secs, decode_responses=True)
        self.on_cluster = isinstance(self.client, RedisCluster)
        # Each process also lists the socket ids it wrote, so that the
        # survivors can remove them at once if it dies (server/hub.py).
        self.process_key = f"{prefix}procsockets:{process_id}"
        self._unread_apply = self.client.register_script(_UNREAD_APPLY_LUA)
        self._unread_prime = self.client.register_script(_UNREAD_PRIME_LUA)

    def sockets_key(self, user_id: int) -> str:
        return slot_key(self.prefix, f"user:{user_id}", "sockets")

    def profile_key(self, user_id: int) -> str:
        return slot_key(self.prefix, f"user:{user_id}", "profile")

    def unread_key(self, conversation_id: int) -> str:
        return slot_key(self.prefix, f"conversation:{conversation_id}", "unread")

    async def add_socket(self, user_id: int, socket_id: str) -> None:
        key = self.sockets_key(user_id)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.sadd(key, socket_id).expire(key, SOCKET_TTL_SECS)
            pipe.sadd(self.process_key, f"{user_id}:{socket_id}").expire(self.process_key, SOCKET_TTL_SECS)
            await pipe.execute()

    async def reserve_socket(self, user_id: int, socket_id: str, cap: int) -> tuple[bool, Profile | None]:
        # The script touches the user's keys only (one slot on a cluster); the
        # process's list goes in the same round trip.
        keys = [self.sockets_key(user_id), self.profile_key(user_id)]
        async with self.client.pipeline(transaction=False) as pipe:
            # EVAL, not EVALSHA: a pipeline (on a cluster too) cannot reload a script Redis forgot.
            pipe.eval(_RESERVE_SOCKET_LUA, 2, *keys, socket_id, cap, SOCKET_TTL_SECS, PROFILE_TTL_SECS)
            pipe.sadd(self.process_key, f"{user_id}:{socket_id}").expire(self.process_key, SOCKET_TTL_SECS)
            (added, *profile), *_ = await pipe.execute()
        if not added:
            # Refused: it must not stay in the process's list either.
            await self.client.srem(self.process_key, f"{user_id}:{socket_id}")
        return bool(added), Profile(name=profile[0], avatar=profile[1]) if len(profile) == 2 else None

    async def cache_profile(self, user_id: int, profile: Profile) -> None:
        key = self.profile_key(user_id)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"n": profile.name, "a": profile.avatar}).expire(key, PROFILE_TTL_SECS)
            await pipe.execute()

    async def remove_sockets(self, sockets: Sequence[tuple[int, str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id, socket_id in sockets:
                pipe.srem(self.sockets_key(user_id), socket_id)
                pipe.srem(self.process_key, f"{user_id}:{socket_id}")
            await pipe.execute()

    async def sockets_of(self, user_id: int) -> set[str]:
        return set(await read_retried(lambda: self.client.smembers(self.sockets_key(user_id))))

    async def refresh_sockets(self, sockets_by_user: Mapping[int, Iterable[str]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for user_id, socket_ids in sockets_by_user.items():
                key = self.sockets_key(user_id)
                pipe.sadd(key, *socket_ids).expire(key, SOCKET_TTL_SECS)
                pipe.sadd(self.process_key, *(f"{user_id}:{s}" for s in socket_ids))
            pipe.expire(self.process_key, SOCKET_TTL_SECS)
            await pipe.execute()

    async def forget_process_sockets(self, process_id: str) -> None:
        key = f"{self.prefix}procsockets:{process_id}"
        members = await self.client.smembers(key)
        async with self.client.pipeline(transaction=False) as pipe:
            for member in members:
                user_id, _, socket_id = member.partition(":")
                pipe.srem(self.sockets_key(int(user_id)), socket_id)
            pipe.delete(key)
            await pipe.execute()

    async def unread_apply(
        self, conversation_id: int, version: int, set_to: Mapping[int, int], add: Mapping[int, int] = {},
        remove: Iterable[int] = (),
    ) -> None:
        args: list[int] = [version, len(set_to), len(add)]
        for counters in (set_to, add):
            for user_id, count in counters.items():
                args += (user_id, count)
        args += list(remove)
        await self._unread_apply(keys=[self.unread_key(conversation_id)], args=args)

    async def unread_drop(self, conversation_id: int) -> None:
        await self.client.delete(self.unread_key(conversation_id))

    async def unread_get(self, versions: Mapping[int, int], user_id: int) -> dict[int, int | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for conversation_id in versions:
                pipe.hmget(self.unread_key(conversation_id), VERSION_FIELD, str(user_id))
            values = await pipe.execute()
        result: dict[int, int | None] = {}
        for (conversation_id, version), (cached_version, count) in zip(versions.items(), values):
            fresh = cached_version is not None and int(cached_version) == version
            result[conversation_id] = (int(count) if count is not None else 0) if fresh else None
        return result

    async def unread_prime(self, counts: Mapping[int, UnreadCounts]) -> None:
        calls = []
        for conversation_id, rebuilt in counts.items():
            args: list[int] = [rebuilt.version, UNREAD_TTL_SECS]
            for user_id, count in rebuilt.counts.items():
                args += (user_id, count)
            calls.append(([self.unread_key(conversation_id)], args))
        if self.on_cluster:
            # Each conversation's hash is in a slot of its own, and a cluster
            # pipeline cannot load a script a node lacks: one call each, at once
            # (all of them waited for, so that none fails unheard).
            outcomes = await asyncio.gather(
                *(self._unread_prime(keys=keys, args=args) for keys, args in calls), return_exceptions=True
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await self._unread_prime(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def ping(self) -> None:
        if self.on_cluster:
            await self.client.ping(target_nodes=RedisCluster.PRIMARIES)  # the keys are spread over all of them
        else:
            await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()


def create_cache(redis_url: str, prefix: str, process_id: str = "", timeout_secs: float = 1.0) -> Cache:
    """Redis when a URL is configured, the in-process cache otherwise."""
    return RedisCache(redis_url, prefix, process_id, timeout_secs) if redis_url else MemoryCache()
