"""The bus: the chat's ordered log of events, and what several processes must share to apply it.

Every event (a new message, a join, a viewer count, a subscription change) is
an entry (``storage/entries.py``) appended to one log; every process reads the log in the
same order and applies each entry to its own sockets (``server/hub.py``).
An entry's id in the log is its position: the same order everywhere, and a
place a reconnecting client can resume from.

Order within a chat. A chat's events are numbered by ``seq`` in the database,
under the chat's row lock, so their commit order is known; but processes
append after commit, and a slower process could append an earlier event
later. :meth:`Bus.append_in_order` therefore appends an event only when the
chat's head in the log is its predecessor, and otherwise holds it back until
the predecessor arrives; the append and the head check are one atomic step
(a Lua script in Redis). If the predecessor never arrives (its process died
between commit and append), the holder fills the gap after a short wait with
what the database says (:meth:`Bus.fill_gap`). Nothing is ever appended
before its commit.

Two implementations with one interface, like the cache: :class:`MemoryBus`
(one process, no Redis: a log in memory, applied as it is appended) and
:class:`RedisBus` (a Redis stream read by every process, Lua scripts for the
steps that must be atomic, process heartbeats so the survivors clean up after
a process that died).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import itertools
import json
import logging
import secrets
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from storage.entries import Entry, EntryBatch, id_key, process_started, process_stopped, subscription, viewer_count
from storage.redis_client import bounded_client, connection_generation, dedicated_client, read_retried, server_info
from storage.redis_keys import BUS_TAG, checked_prefix, slot_key
from storage.token_buckets import RateLimiter

log = logging.getLogger("chat.bus")

# How long a chat's head and its held-back events are kept when nothing happens.
HEAD_TTL_SECS = 7 * 24 * 3600
HELD_TTL_SECS = 3600
# A process is alive while it beats; the others reap it after PEER_TIMEOUT_SECS.
HEARTBEAT_SECS = 5.0
PEER_TIMEOUT_SECS = 15.0
# Entries read per round trip by each process's reader.
READ_COUNT = 1000
READ_BLOCK_MS = 5000
# The part of Redis's run id an epoch starts with.
RUN_ID_CHARS = 8
# A process id is this many hex characters; a socket id starts with its process's id.
PROCESS_ID_CHARS = 12


class Bus(abc.ABC):
    """The ordered event log and the shared state beside it."""

    process_id: str  # this process, in the heartbeats and in what it owns
    epoch: str  # changes whenever the log's history may have been lost (a new Redis, a restart)

    @abc.abstractmethod
    async def start(self, apply: Callable[[EntryBatch], None]) -> str:
        """Start reading the log from its current end, calling ``apply`` in order; return that end's id."""

    @abc.abstractmethod
    async def append(self, entries: Sequence[Entry]) -> str:
        """Append entries in order; return the last one's id."""

    @abc.abstractmethod
    async def append_in_order(
        self, chain: str, prev: int, seq: int, last_message_id: int, entries: Sequence[Entry],
        closes: bool = False, members: Sequence[int] = (), alone: bool = False,
    ) -> str | None:
        """Append a chat's event number ``seq`` once the chat's head is ``prev``; None when held back.

        ``closes`` ends the chat (a deleted conversation): its viewers are
        dropped (a count of 0 is announced to ``members`` and them just
        before the last entry, the delete)
        and nothing of it is appended afterwards. An unknown head (Redis
        lost it) holds the event back too, for the gap filler, unless the
        appending process is ``alone``: its own appends are in commit order
        already, and an older one that is late is covered by the resync.
        """

    @abc.abstractmethod
    async def fill_gap(self, chain: str, seq: int, last_message_id: int, entries: Sequence[Entry]) -> str | None:
        """Append ``entries`` as the chat's events up to ``seq`` if its head is still behind; release what waited."""

    @abc.abstractmethod
    async def chain_head(self, chain: str) -> tuple[int, int, str] | None:
        """The chat's head (seq, last message id, its last entry's id) in the log, or None if unknown."""

    @abc.abstractmethod
    async def chain_closed(self, chain: str) -> bool:
        """Whether the chat was closed (a deleted conversation)."""

    @abc.abstractmethod
    async def read(self, first: str, upto: str) -> EntryBatch | None:
        """The entries from ``first`` (itself included) up to ``upto``; None if ``first`` is not (or no longer) in the log."""

    @abc.abstractmethod
    async def last_id(self) -> str:
        """The id of the log's last entry ("0-0" if it is empty)."""

    @abc.abstractmethod
    async def change_viewers(
        self, conversation_id: int, user_id: int, socket_ids: Sequence[str], viewing: bool, members: Sequence[int],
        closed: bool = False,
    ) -> str:
        """Start (or stop) sockets viewing a conversation; append the subscription and any count change.

        Stopping with no socket ids stops all the user's viewing sockets;
        ``closed`` says the sockets stop because they closed (a resume keeps
        their views). Return the id of the last entry appended ("" if nothing changed).
        """

    @abc.abstractmethod
    async def viewer_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        """Distinct users viewing each conversation, on every process."""

    @abc.abstractmethod
    async def save_sockets(self, records: Mapping[str, dict[str, Any]], ttl_secs: float) -> None:
        """Keep what sockets listened to, for a resume (one round trip for all; each expires after ``ttl_secs``)."""

    @abc.abstractmethod
    async def end_sockets(self, ends: Mapping[str, str], ttl_secs: float) -> None:
        """Mark sockets' records closed after an entry (socket → its last possible frame's entry, one round
        trip for all); they expire after ``ttl_secs``.

        Kept apart from the record, so a late save of the record cannot undo it.
        """

    @abc.abstractmethod
    async def expire_sockets(self, socket_ids: Iterable[str], ttl_secs: float) -> None:
        """Push the expiry of socket records to ``ttl_secs`` from now."""

    @abc.abstractmethod
    async def load_socket(self, socket_id: str) -> dict[str, Any] | None:
        """A socket's record (with "e", its end, once closed), or None once it expired (or never existed)."""

    @abc.abstractmethod
    async def take_token(self, user_id: int, rate: float, burst: float) -> float:
        """The send-rate bucket shared by every process: 0, or the seconds to wait."""

    @abc.abstractmethod
    async def beat(self) -> tuple[int, list[str], bool]:
        """Say this process is alive; return the number of other live processes, the dead ones,
        and whether the shared state lost this process since the last beat (Redis restarted or was flushed)."""

    @abc.abstractmethod
    async def claim_dead(self, process_id: str) -> bool:
        """Take the cleanup of a dead process (only one survivor gets it)."""

    @abc.abstractmethod
    async def dead_process_views(self, process_id: str) -> list[tuple[int, int, str]]:
        """The (conversation, user, socket) views a dead process held."""

    @abc.abstractmethod
    async def forget_process(self, process_id: str) -> None:
        """Drop what is left of a dead process, once cleaned up."""

    async def shared_settings_conflict(self, settings: Mapping[str, str]) -> list[str]:
        """Publish the settings every process must share; return those a live process has otherwise."""
        return []

    async def next_beat(self, secs: float) -> None:
        """Wait until the next heartbeat is due: ``secs``, or sooner once the shared state answers again."""
        await asyncio.sleep(secs)

    async def close(self) -> None:
        """Stop reading and release connections."""


# ---------------------------------------------------------------- in memory


class MemoryBus(Bus):
    """One process, no Redis: the log is a list in memory, applied as it is appended."""

    def __init__(self, window_secs: float) -> None:
        self.process_id = secrets.token_hex(PROCESS_ID_CHARS // 2)
        # A restart loses the log: positions from before it cannot resume.
        self.epoch = secrets.token_urlsafe(6)
        self.window_secs = window_secs
        self._log: collections.deque[tuple[str, Entry]] = collections.deque()  # the window's entries
        self._ids: dict[str, int] = {}  # entry id → its index since start (to find it)
        self._first_index = 0  # index of _log[0]
        self._last_ms = 0
        self._seq = 0
        self._apply: Callable[[EntryBatch], None] | None = None
        self._heads: dict[str, tuple[int, int, str] | None] = {}  # chat → (seq, last message id, entry); None: closed
        self._held: dict[str, dict[int, tuple[int, int, bool, list[Entry], list[int]]]] = {}
        self._viewers: dict[int, dict[str, int]] = {}  # conversation → viewing socket → user
        self._sockets: dict[str, tuple[dict[str, Any], float]] = {}  # socket → (record, expires at)
        self._limiters: dict[tuple[float, float], RateLimiter] = {}  # (rate, burst) → the users' buckets

    async def start(self, apply: Callable[[EntryBatch], None]) -> str:
        started = self._add([process_started(self.process_id)])
        self._apply = apply
        return started

    def _next_id(self) -> str:
        now = int(time.time() * 1000)
        if now <= self._last_ms:
            self._seq += 1
        else:
            self._last_ms, self._seq = now, 0
        return f"{self._last_ms}-{self._seq}"

    def _add(self, entries: Sequence[Entry]) -> str:
        batch = []
        for entry in entries:
            entry_id = self._next_id()
            self._ids[entry_id] = self._first_index + len(self._log)
            self._log.append((entry_id, entry))
            batch.append((entry_id, entry))
        self._trim()
        if self._apply is not None and batch:
            self._apply(batch)
        return batch[-1][0] if batch else ""

    def _trim(self) -> None:
        oldest_ms = (time.time() - self.window_secs - 60) * 1000
        while self._log and id_key(self._log[0][0])[0] < oldest_ms:
            entry_id, _ = self._log.popleft()
            del self._ids[entry_id]
            self._first_index += 1

    async def append(self, entries: Sequence[Entry]) -> str:
        return self._add(entries)

    async def append_in_order(
        self, chain: str, prev: int, seq: int, last_message_id: int, entries: Sequence[Entry],
        closes: bool = False, members: Sequence[int] = (), alone: bool = True,
    ) -> str | None:
        if chain in self._heads and self._heads[chain] is None:
            return ""  # closed: the conversation is gone
        head = self._heads.get(chain)
        # One process appends in commit order already (a conversation's lock
        # spans commit and append): an unknown head (after a restart) is no gap.
        if head is None or head[0] == prev:
            return self._publish_from(chain, seq, last_message_id, list(entries), closes, list(members))
        if head is not None and head[0] >= seq:
            return ""  # already in the log (a gap filled it)
        self._held.setdefault(chain, {})[prev] = (seq, last_message_id, closes, list(entries), list(members))
        return None

    def _publish_from(
        self, chain: str, seq: int, last_message_id: int, entries: list[Entry], closes: bool, members: list[int]
    ) -> str:
        last = ""
        while True:
            if closes:
                conversation_id = int(chain)
                viewers = self._viewers.pop(conversation_id, {})
                if viewers:  # the count of 0 goes just before the last entry (the delete)
                    entries = [*entries[:-1], viewer_count(conversation_id, 0, members), entries[-1]]
            last = self._add(entries) or last
            if closes:
                self._heads[chain] = None
                self._held.pop(chain, None)
                return last
            self._heads[chain] = (seq, last_message_id, last)
            held = self._held.get(chain, {}).pop(seq, None)
            if held is None:
                return last
            seq, last_message_id, closes, entries, members = held

    async def fill_gap(self, chain: str, seq: int, last_message_id: int, entries: Sequence[Entry]) -> str | None:
        head = self._heads.get(chain)
        if chain in self._heads and head is None:
            return ""
        if head is not None and head[0] >= seq:
            return ""
        return self._publish_from(chain, seq, last_message_id, list(entries), False, [])

    async def chain_head(self, chain: str) -> tuple[int, int, str] | None:
        return self._heads.get(chain)

    async def chain_closed(self, chain: str) -> bool:
        return chain in self._heads and self._heads[chain] is None

    async def read(self, first: str, upto: str) -> EntryBatch | None:
        index = self._ids.get(first)
        if index is None:
            return None
        upto_key = id_key(upto)
        return [(i, e) for i, e in itertools.islice(self._log, index - self._first_index, None) if id_key(i) <= upto_key]

    async def last_id(self) -> str:
        return self._log[-1][0] if self._log else "0-0"

    async def change_viewers(
        self, conversation_id: int, user_id: int, socket_ids: Sequence[str], viewing: bool, members: Sequence[int],
        closed: bool = False,
    ) -> str:
        if self._heads.get(str(conversation_id), ()) is None:
            return ""  # deleted
        viewers = self._viewers.setdefault(conversation_id, {})
        before = len(set(viewers.values()))
        if viewing:
            changed = [s for s in socket_ids if s not in viewers]
            viewers.update({s: user_id for s in changed})
        else:
            changed = [s for s, u in viewers.items() if u == user_id and (not socket_ids or s in socket_ids)]
            for socket_id in changed:
                del viewers[socket_id]
        after = len(set(viewers.values()))
        if not viewers:
            del self._viewers[conversation_id]
        if not changed:
            return ""
        entries = [subscription("view" if viewing else "unview", user_id, changed, conversation_id, self.process_id,
                                closed)]
        if after != before:
            entries.append(viewer_count(conversation_id, after, members))
        return self._add(entries)

    async def viewer_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        return {cid: len(set(self._viewers.get(cid, {}).values())) for cid in conversation_ids}

    async def save_sockets(self, records: Mapping[str, dict[str, Any]], ttl_secs: float) -> None:
        expires = time.monotonic() + ttl_secs
        for socket_id, record in records.items():
            ended = self._sockets.get(socket_id, ({}, 0.0))[0].get("e")
            self._sockets[socket_id] = ({**record, "e": ended} if ended else dict(record), expires)

    async def end_sockets(self, ends: Mapping[str, str], ttl_secs: float) -> None:
        expires = time.monotonic() + ttl_secs
        for socket_id, entry_id in ends.items():
            record = self._sockets.get(socket_id, ({}, 0.0))[0]
            self._sockets[socket_id] = ({**record, "e": entry_id}, expires)

    async def expire_sockets(self, socket_ids: Iterable[str], ttl_secs: float) -> None:
        now = time.monotonic()
        for socket_id in socket_ids:
            if socket_id in self._sockets:
                self._sockets[socket_id] = (self._sockets[socket_id][0], now + ttl_secs)
        self._sockets = {s: v for s, v in self._sockets.items() if v[1] > now}

    async def load_socket(self, socket_id: str) -> dict[str, Any] | None:
        record = self._sockets.get(socket_id)
        return record[0] if record is not None and record[1] > time.monotonic() and "u" in record[0] else None

    async def take_token(self, user_id: int, rate: float, burst: float) -> float:
        # The one process's buckets, in memory: the same rule as the hub's own limiter.
        limiter = self._limiters.get((rate, burst))
        if limiter is None:
            limiter = self._limiters[rate, burst] = RateLimiter(rate, burst)
        return limiter.take(user_id)

    async def beat(self) -> tuple[int, list[str], bool]:
        return 0, [], False

    async def claim_dead(self, process_id: str) -> bool:
        return False

    async def dead_process_views(self, process_id: str) -> list[tuple[int, int, str]]:
        return []

    async def forget_process(self, process_id: str) -> None:
        return None


# ---------------------------------------------------------------- Redis

# Appends the entries ARGV[from..] (triples kind, meta, frame) to the log, trimming entries older than
# the resume window; `drain` then releases the chat's held-back successors, and `close` ends a chat.
_LUA_HELPERS = """
local function publish(log, minid, entries)
  local last = false
  for _, e in ipairs(entries) do
    last = redis.call('XADD', log, 'MINID', '~', minid, '*', 'k', e[1], 'm', e[2], 'f', e[3])
  end
  return last
end
local function close(log, minid, head, held, viewers, c, members)
  local last = false
  if redis.call('HLEN', viewers) > 0 then
    local meta = '{"c":' .. c .. ',"n":0,"m":' .. members .. '}'
    last = redis.call('XADD', log, 'MINID', '~', minid, '*', 'k', 'viewers', 'm', meta, 'f', '')
  end
  redis.call('DEL', viewers, held)
  redis.call('SET', head, 'x', 'EX', %(head_ttl)d)
  return last
end
local function run(log, minid, head, held, viewers, seq, lm, closes, entries, members, c)
  local last = false
  while true do
    if closes == '1' then
      -- The viewers' count of 0 goes just before the last entry (the delete).
      last = publish(log, minid, {unpack(entries, 1, #entries - 1)}) or last
      last = close(log, minid, head, held, viewers, c, members) or last
      return publish(log, minid, {entries[#entries]}) or last
    end
    last = publish(log, minid, entries) or last
    local nxt = redis.call('HGET', held, tostring(seq))
    if not nxt then
      redis.call('SET', head, seq .. ':' .. lm .. ':' .. (last or ''), 'EX', %(head_ttl)d)
      return last
    end
    redis.call('HDEL', held, tostring(seq))
    local h = cmsgpack.unpack(nxt)
    seq, lm, closes, entries, members = h[1], h[2], h[3], h[4], h[5]
  end
end
local function entries_from(first)
  local entries = {}
  for i = first, #ARGV, 3 do entries[#entries + 1] = {ARGV[i], ARGV[i + 1], ARGV[i + 2]} end
  return entries
end
""" % {"head_ttl": HEAD_TTL_SECS}

# A chat's head and held events are keyed by the epoch the appending process
# believes in; a process that has not noticed yet that Redis lost the log
# (or whose epoch is stale) gets 'epoch' back, learns the new one and appends
# again, so every process orders a chat's events by the same head.
_EPOCH_CHECK = """
if redis.call('GET', KEYS[5]) ~= ARGV[EPOCH_ARG] then return {'epoch', ''} end
"""

# KEYS: log, head, held, viewers, epoch. ARGV: prev, seq, last message id, closes, minid, members (JSON), chat,
# alone (1/0: an unknown head is no gap), epoch, entries…
_APPEND_IN_ORDER_LUA = _LUA_HELPERS + _EPOCH_CHECK.replace("EPOCH_ARG", "9") + """
local head = redis.call('GET', KEYS[2])
if head == 'x' then return {'closed', ''} end
local prev, seq = tonumber(ARGV[1]), tonumber(ARGV[2])
local head_seq = nil
if head then head_seq = tonumber(string.match(head, '^(%d+)')) end
local entries = entries_from(10)
if (head_seq == nil and (prev == 0 or ARGV[8] == '1')) or head_seq == prev then
  return {'ok', run(KEYS[1], ARGV[5], KEYS[2], KEYS[3], KEYS[4], seq, ARGV[3], ARGV[4], entries, ARGV[6], ARGV[7]) or ''}
end
if head_seq ~= nil and head_seq >= seq then return {'dup', ''} end
redis.call('HSET', KEYS[3], ARGV[1], cmsgpack.pack({seq, ARGV[3], ARGV[4], entries, ARGV[6]}))
redis.call('EXPIRE', KEYS[3], %(held_ttl)d)
return {'held', ''}
""".replace("%(held_ttl)d", str(HELD_TTL_SECS))

# KEYS: log, head, held, viewers, epoch. ARGV: seq, last message id, minid, chat, epoch, entries…
_FILL_GAP_LUA = _LUA_HELPERS + _EPOCH_CHECK.replace("EPOCH_ARG", "5") + """
local head = redis.call('GET', KEYS[2])
if head == 'x' then return {'closed', ''} end
local head_seq = nil
if head then head_seq = tonumber(string.match(head, '^(%d+)')) end
if head_seq ~= nil and head_seq >= tonumber(ARGV[1]) then return {'dup', ''} end
return {'ok', run(KEYS[1], ARGV[3], KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[1]), ARGV[2], '0', entries_from(6), '[]', ARGV[4]) or ''}
"""

# KEYS: log, viewers (socket → user), head of the conversation, the prefix of the views each process's
# sockets hold (a socket id starts with its process's id: OWNER_CHARS characters). The views keys are
# built here, not declared: a cluster allows that because they are in the slot of the others ({bus}).
# ARGV: conversation, user, viewing (1/0), minid, members (JSON), closed (1/0: the sockets closed), process, sockets…
_CHANGE_VIEWERS_LUA = """
if redis.call('GET', KEYS[3]) == 'x' then return 0 end
local function distinct()
  local users, n = {}, 0
  for _, u in ipairs(redis.call('HVALS', KEYS[1 + 1])) do
    if not users[u] then users[u] = true n = n + 1 end
  end
  return n
end
local c, user, viewing = ARGV[1], ARGV[2], ARGV[3]
local before = distinct()
local changed = {}
if viewing == '1' then
  for i = 8, #ARGV do
    if redis.call('HSETNX', KEYS[2], ARGV[i], user) == 1 then
      changed[#changed + 1] = ARGV[i]
      redis.call('SADD', KEYS[4] .. string.sub(ARGV[i], 1, OWNER_CHARS), c .. ':' .. user .. ':' .. ARGV[i])
    end
  end
else
  local targets = {}
  if #ARGV >= 8 then
    for i = 8, #ARGV do targets[#targets + 1] = ARGV[i] end
  else
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do if all[i + 1] == user then targets[#targets + 1] = all[i] end end
  end
  for _, s in ipairs(targets) do
    if redis.call('HGET', KEYS[2], s) == user then
      redis.call('HDEL', KEYS[2], s)
      changed[#changed + 1] = s
    end
    redis.call('SREM', KEYS[4] .. string.sub(s, 1, OWNER_CHARS), c .. ':' .. user .. ':' .. s)
  end
end
local after = distinct()
if #changed == 0 then return '' end
local op = 'unview'
if viewing == '1' then op = 'view' end
local closed = ''
if ARGV[6] == '1' then closed = ',"closed":true' end
local last = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[4], '*', 'k', 'subscription',
  'm', '{"op":"' .. op .. '","c":' .. c .. ',"u":' .. user .. ',"s":' .. cjson.encode(changed) .. closed .. ',"p":"' .. ARGV[7] .. '"}',
  'f', '')
if after ~= before then
  last = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[4], '*', 'k', 'viewers',
    'm', '{"c":' .. c .. ',"n":' .. after .. ',"m":' .. ARGV[5] .. '}', 'f', '')
end
return last
""".replace("OWNER_CHARS", str(PROCESS_ID_CHARS))

# KEYS[1] the user's bucket. ARGV: rate, burst, now (s). Returns the wait in ms (0: taken).
_TAKE_TOKEN_LUA = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) / rate * 1000) else tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return wait
"""


# KEYS[1] the epoch. ARGV: Redis's run id (a prefix), a new epoch starting with it.
# The epoch names the log's history: it is kept while Redis keeps running and
# keeps the key, and renewed when Redis restarted (another run id: it came
# back empty or from a snapshot without the log's tail) or lost the key (a
# flush). Every process runs this, so all of them agree on it.
_EPOCH_LUA = """
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, #ARGV[1]) == ARGV[1] then return current end
redis.call('SET', KEYS[1], ARGV[2])
return ARGV[2]
"""


def _encode_meta(meta: dict[str, Any]) -> str:
    return json.dumps(meta, separators=(",", ":"))


def _decode(fields: Mapping[bytes, bytes]) -> Entry:
    meta = json.loads(fields[b"m"])
    return Entry(fields[b"k"].decode(), meta, fields.get(b"f", b""))


class RedisBus(Bus):
    """The log is a Redis stream; every process reads it with a blocking XREAD on its own connection.

    On a Redis Cluster the log and every key its scripts touch with it share
    one hash slot (``{bus}``, storage/redis_keys.py).
    """

    def __init__(self, url: str, prefix: str, window_secs: float, timeout_secs: float = 1.0) -> None:
        self.process_id = secrets.token_hex(PROCESS_ID_CHARS // 2)
        self.epoch = ""
        self.prefix = checked_prefix(prefix)
        self.window_secs = window_secs
        self.client = bounded_client(url, timeout_secs)
        # The reader blocks on its own connection, never on the pool's.
        self.reader = dedicated_client(url, READ_BLOCK_MS / 1000 + timeout_secs, timeout_secs)
        self.log_key = self._bus_key("log")
        self.epoch_key = self._bus_key("epoch")
        self._append_in_order = self.client.register_script(_APPEND_IN_ORDER_LUA)
        self._fill_gap = self.client.register_script(_FILL_GAP_LUA)
        self._change_viewers = self.client.register_script(_CHANGE_VIEWERS_LUA)
        self._take_token = self.client.register_script(_TAKE_TOKEN_LUA)
        self._epoch = self.client.register_script(_EPOCH_LUA)
        self._reading: asyncio.Task[None] | None = None
        self._stopping = False
        self._lost = False  # the epoch changed since the last beat (Redis lost the log)
        self._generation = -1  # the client's connection generation when the epoch was last synced
        self._last_read = "0-0"
        self._answering_again = asyncio.Event()  # the reader got through after failing

    # Keys. A chat's head and held events are per epoch: after Redis lost its
    # data, old heads would hold back events that can never be released.
    # The scripts touch the log, heads, held events, viewers and the views of
    # processes in one step: all of them are in the bus's slot.

    def _bus_key(self, name: str) -> str:
        return slot_key(self.prefix, BUS_TAG, name)

    def _head_key(self, chain: str) -> str:
        return self._bus_key(f"head:{self.epoch}:{chain}")

    def _held_key(self, chain: str) -> str:
        return self._bus_key(f"held:{self.epoch}:{chain}")

    def _viewers_key(self, conversation_id: int | str) -> str:
        return self._bus_key(f"viewers:{conversation_id}")

    def _views_key(self, process_id: str) -> str:
        # _CHANGE_VIEWERS_LUA builds these from _views_key("") and a socket's owner.
        return self._bus_key(f"procviews:{process_id}")

    def _socket_key(self, socket_id: str) -> str:
        return f"{self.prefix}socket:{socket_id}"

    def _min_id(self) -> str:
        return str(int((time.time() - self.window_secs - 60) * 1000))

    async def _sync_epoch(self) -> None:
        """Learn the epoch every process shares, renewed when Redis lost the log (see _EPOCH_LUA)."""
        generation = connection_generation()
        # The run id of the server that holds the log: on a cluster, the log's master.
        info = await server_info(self.client, self.epoch_key, "server")
        run = str(info["run_id"])[:RUN_ID_CHARS]
        epoch = (await self._epoch(keys=[self.epoch_key], args=[run, run + secrets.token_hex(3)])).decode()
        if self.epoch and epoch != self.epoch:
            self._lost = True
        self.epoch, self._generation = epoch, generation

    async def _in_epoch(self, script, keys: Callable[[], list[str]], args: Callable[[], list[Any]]) -> tuple[bytes, bytes]:
        """Run a chat's script in the current epoch: learnt again first after a reconnect, and when the
        script says this process's is stale."""
        if self._generation != connection_generation():
            await self._sync_epoch()  # Redis closed our connections: it may have restarted from a snapshot
        outcome, last = await script(keys=keys(), args=args())
        if outcome == b"epoch":
            await self._sync_epoch()
            outcome, last = await script(keys=keys(), args=args())
        return outcome, last

    async def start(self, apply: Callable[[EntryBatch], None]) -> str:
        await self._sync_epoch()
        self._last_read = await self.append([process_started(self.process_id)])
        await self.beat()
        self._reading = asyncio.ensure_future(self._read_forever(apply))
        return self._last_read

    async def _read_forever(self, apply: Callable[[EntryBatch], None]) -> None:
        failing = False
        while not self._stopping:
            try:
                reply = await self.reader.xread({self.log_key: self._last_read}, count=READ_COUNT, block=READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("reading the event log failed (%s); retrying", error)
                failing = True
                await asyncio.sleep(0.5)
                continue
            if failing:
                failing = False
                self._answering_again.set()  # beat now: Redis may have come back without the log
            if not reply:
                continue
            batch = [(entry_id.decode(), _decode(fields)) for entry_id, fields in reply[0][1]]
            self._last_read = batch[-1][0]
            try:
                apply(batch)
            except Exception:
                log.exception("applying %d log entries failed", len(batch))

    @staticmethod
    def _flatten(entries: Sequence[Entry]) -> list[Any]:
        args: list[Any] = []
        for entry in entries:
            args += (entry.kind, _encode_meta(entry.meta), entry.frame)
        return args

    async def append(self, entries: Sequence[Entry]) -> str:
        min_id = self._min_id()
        async with self.client.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.xadd(self.log_key, {"k": entry.kind, "m": _encode_meta(entry.meta), "f": entry.frame},
                          minid=min_id, approximate=True)
            ids = await pipe.execute()
        return ids[-1].decode() if ids else ""

    async def append_in_order(
        self, chain: str, prev: int, seq: int, last_message_id: int, entries: Sequence[Entry],
        closes: bool = False, members: Sequence[int] = (), alone: bool = False,
    ) -> str | None:
        outcome, last = await self._in_epoch(
            self._append_in_order,
            lambda: [self.log_key, self._head_key(chain), self._held_key(chain), self._viewers_key(chain),
                     self.epoch_key],
            lambda: [prev, seq, last_message_id, "1" if closes else "0", self._min_id(), json.dumps(list(members)),
                     chain, "1" if alone else "0", self.epoch, *self._flatten(entries)],
        )
        return None if outcome == b"held" else last.decode()

    async def fill_gap(self, chain: str, seq: int, last_message_id: int, entries: Sequence[Entry]) -> str | None:
        _, last = await self._in_epoch(
            self._fill_gap,
            lambda: [self.log_key, self._head_key(chain), self._held_key(chain), self._viewers_key(chain),
                     self.epoch_key],
            lambda: [seq, last_message_id, self._min_id(), chain, self.epoch, *self._flatten(entries)],
        )
        return last.decode()

    async def chain_head(self, chain: str) -> tuple[int, int, str] | None:
        head = await self.client.get(self._head_key(chain))
        if head is None or head == b"x":
            return None
        seq, last_message_id, entry_id = (head.decode().split(":") + ["", ""])[:3]
        return int(seq), int(last_message_id or 0), entry_id

    async def chain_closed(self, chain: str) -> bool:
        return await self.client.get(self._head_key(chain)) == b"x"

    async def read(self, first: str, upto: str) -> EntryBatch | None:
        found = await self.client.xrange(self.log_key, min=first, max=first)
        if not found:
            return None
        batch: EntryBatch = [(entry_id.decode(), _decode(fields)) for entry_id, fields in found]
        start = "(" + first
        while True:
            chunk = await self.client.xrange(self.log_key, min=start, max=upto, count=READ_COUNT)
            batch += [(entry_id.decode(), _decode(fields)) for entry_id, fields in chunk]
            if len(chunk) < READ_COUNT:
                return batch
            start = "(" + batch[-1][0]

    async def change_viewers(
        self, conversation_id: int, user_id: int, socket_ids: Sequence[str], viewing: bool, members: Sequence[int],
        closed: bool = False,
    ) -> str:
        last = await self._change_viewers(
            keys=[self.log_key, self._viewers_key(conversation_id), self._head_key(str(conversation_id)),
                  self._views_key("")],
            args=[conversation_id, user_id, "1" if viewing else "0", self._min_id(), json.dumps(list(members)),
                  "1" if closed else "0", self.process_id, *socket_ids],
        )
        return last.decode() if isinstance(last, bytes) else ""

    async def viewer_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        if not conversation_ids:
            return {}
        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for conversation_id in conversation_ids:
                    pipe.hvals(self._viewers_key(conversation_id))
                return await pipe.execute()

        values = await read_retried(read)
        return {cid: len(set(users)) for cid, users in zip(conversation_ids, values)}

    async def last_id(self) -> str:
        last = await self.client.xrevrange(self.log_key, count=1)
        return last[0][0].decode() if last else "0-0"

    # A socket's record is a hash: "r" what it listened to (rewritten as it
    # changes), "e" its end (written once, at its close).

    async def save_sockets(self, records: Mapping[str, dict[str, Any]], ttl_secs: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for socket_id, record in records.items():
                key = self._socket_key(socket_id)
                pipe.hset(key, "r", json.dumps(record))
                pipe.expire(key, max(1, int(ttl_secs)))
            await pipe.execute()

    async def end_sockets(self, ends: Mapping[str, str], ttl_secs: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for socket_id, entry_id in ends.items():
                key = self._socket_key(socket_id)
                pipe.hset(key, "e", entry_id)
                pipe.expire(key, max(1, int(ttl_secs)))
            await pipe.execute()

    async def expire_sockets(self, socket_ids: Iterable[str], ttl_secs: float) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for socket_id in socket_ids:
                pipe.expire(self._socket_key(socket_id), max(1, int(ttl_secs)))
            await pipe.execute()

    async def load_socket(self, socket_id: str) -> dict[str, Any] | None:
        fields = await self.client.hgetall(self._socket_key(socket_id))
        if b"r" not in fields:
            return None
        record = json.loads(fields[b"r"])
        if b"e" in fields:
            record["e"] = fields[b"e"].decode()
        return record

    async def take_token(self, user_id: int, rate: float, burst: float) -> float:
        wait_ms = await self._take_token(keys=[f"{self.prefix}rate:{user_id}"], args=[rate, burst, time.time()])
        return int(wait_ms) / 1000

    async def beat(self) -> tuple[int, list[str], bool]:
        now = time.time()
        key = f"{self.prefix}procs"
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {self.process_id: now})
            pipe.zrange(key, 0, -1, withscores=True)
            _, processes = await pipe.execute()
        await self._sync_epoch()
        lost, self._lost = self._lost, False
        live = dead = 0
        dead_ids = []
        for process_id, beaten in processes:
            process_id = process_id.decode()
            if process_id == self.process_id:
                continue
            if beaten >= now - PEER_TIMEOUT_SECS:
                live += 1
            else:
                dead += 1
                dead_ids.append(process_id)
        return live, dead_ids, lost

    async def claim_dead(self, process_id: str) -> bool:
        return bool(await self.client.set(f"{self.prefix}reaping:{process_id}", self.process_id, nx=True, ex=60))

    async def dead_process_views(self, process_id: str) -> list[tuple[int, int, str]]:
        views = []
        for member in await self.client.smembers(self._views_key(process_id)):
            conversation_id, user_id, socket_id = member.decode().split(":", 2)
            views.append((int(conversation_id), int(user_id), socket_id))
        return views

    async def forget_process(self, process_id: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.zrem(f"{self.prefix}procs", process_id)
            pipe.delete(self._views_key(process_id))
            await pipe.execute()

    async def shared_settings_conflict(self, settings: Mapping[str, str]) -> list[str]:
        key = f"{self.prefix}settings"
        live, _, _ = await self.beat()
        stored = {k.decode(): v.decode() for k, v in (await self.client.hgetall(key)).items()}
        if live and stored:
            differing = sorted(name for name, value in settings.items() if stored.get(name, value) != value)
            if differing:
                return differing
        await self.client.hset(key, mapping=dict(settings))
        return []

    async def next_beat(self, secs: float) -> None:
        try:
            await asyncio.wait_for(self._answering_again.wait(), secs)
        except asyncio.TimeoutError:
            pass
        self._answering_again.clear()

    async def leave(self) -> None:
        """Say this process is gone (a clean shutdown), so nobody waits for it to time out."""
        await self.client.zrem(f"{self.prefix}procs", self.process_id)

    async def close(self) -> None:
        # Cancelling a blocked XREAD can wedge redis-py's connection; an
        # entry of our own wakes the reader, which then sees it must stop.
        self._stopping = True
        try:
            await self.leave()
            await self.append([process_stopped(self.process_id)])
        except Exception:
            pass
        if self._reading is not None:
            done, _ = await asyncio.wait([self._reading], timeout=1.0)
            if not done:
                self._reading.cancel()
        await self.reader.aclose()
        await self.client.aclose()


def create_bus(redis_url: str, prefix: str, window_secs: float, timeout_secs: float = 1.0) -> Bus:
    """Redis when a URL is configured, the in-process log otherwise."""
    return RedisBus(redis_url, prefix, window_secs, timeout_secs) if redis_url else MemoryBus(window_secs)
