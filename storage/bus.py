"""The bus: the chat's ordered log of events, and what several processes must share to apply it.

Every event (a new message, a join, a viewer count, a subscription change) is
an entry (``storage/entries.py``) appended to the log; each process reads, in
log order, the part of the log with an audience on it and applies each entry
to its own sockets (``server/hub.py``). An entry's id in the log is its
position: one order everywhere, and a place a reconnecting client can resume
from.

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
:class:`RedisBus` (Redis streams partitioned by audience: a shared lane every
process reads and an inbox per process, Lua scripts for the steps that must be
atomic, process heartbeats so the survivors clean up after a process that
died).
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

from storage.entries import (
    PROCESS_ID_CHARS, Entry, EntryBatch, id_key, mark, process_started, process_stopped, subscription, viewer_count,
)
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
# A process's route of a user (or view) lingers this long past the resume window after its last socket
# closed: a resume on another process reads this one's inbox for what that socket missed.
ROUTE_LINGER_EXTRA_SECS = 60
# Stands in an entry's meta for what only a script knows (viewers: the sockets that changed, the count).
PLACEHOLDER = "@@filled-in-by-the-script@@"
# The part of Redis's run id an epoch starts with.
RUN_ID_CHARS = 8


class Bus(abc.ABC):
    """The ordered event log and the shared state beside it."""

    process_id: str  # this process, in the heartbeats and in what it owns
    epoch: str  # changes whenever the log's history may have been lost (a new Redis, a restart)
    partitioned = False  # whether a process reads only its audiences' part of the log (then it keeps routes)

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
    async def read(
        self, first: str, upto: str, process_id: str | None = None, exclusive: bool = False,
    ) -> EntryBatch | None:
        """What process ``process_id`` (this one by default) reads of the log from ``first`` (itself
        included) up to ``upto``, in order; None if ``first`` is not (or no longer) in it. With
        ``exclusive``, what follows ``first`` (in Redis ``first`` need not be in that process's part:
        it may end another process's part of a resumed socket's history; in memory there is one part)."""

    @abc.abstractmethod
    async def mark(self) -> str:
        """Append an entry only this process reads; return its id (once applied, so is all before it)."""

    @abc.abstractmethod
    async def route(self, users: Mapping[int, bool], views: Sequence[int], wait: bool) -> str:
        """Say which users' conversation entries reach this process: held (True: it has a socket of
        theirs) or lingering (False: for the resume window after its last one closed); ``views``
        linger too, until a view holds them. With ``wait``, return the id of a MARK after the change:
        once applied here, every entry for them appended since reaches this process ("" if nothing
        needs waiting for)."""

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

    async def read(
        self, first: str, upto: str, process_id: str | None = None, exclusive: bool = False,
    ) -> EntryBatch | None:
        index = self._ids.get(first)
        if index is None:
            return None
        upto_key = id_key(upto)
        skip = index - self._first_index + (1 if exclusive else 0)
        return [(i, e) for i, e in itertools.islice(self._log, skip, None) if id_key(i) <= upto_key]

    async def last_id(self) -> str:
        return self._log[-1][0] if self._log else "0-0"

    async def mark(self) -> str:
        return await self.last_id()  # applied as appended: everything before is applied already

    async def route(self, users: Mapping[int, bool], views: Sequence[int], wait: bool) -> str:
        return ""  # one process reads everything

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

# The log is partitioned by audience. Entries for everyone (the global chat,
# conversations created, joined, left, deleted; processes starting) go to the
# shared lane, which every process reads. A conversation's entries go to the
# inbox of each process that holds a socket of one of its members or viewers
# (or held one within the resume window, so a socket closed there can still
# be resumed anywhere): a process reads the shared lane and its own inbox,
# nothing of conversations it has no audience for. Which users and views a
# process holds are its routes ("uroute:<user>", "vroute:<conversation>":
# process → 0 while held, else the Redis time in ms its lingering ends),
# written by RedisBus.route and the viewers script.
#
# Every entry's id comes from one clock (``clock``), whatever its lane: ids
# are unique and ordered across lanes, so a process merges its two lanes into
# one order, a position is one id, and a resume can read any process's lanes.
#
# Common to the scripts that append. ARGV[1] the bus's key prefix (every key
# here is in its slot, so the keys are built here and a cluster allows it),
# ARGV[2] the calling process, ARGV[3] the trim bound (MINID), ARGV[4] how long
# an inbox lives without appends (ms). An entry is five values: lane, where
# (Entry.lane), kind, meta, frame. own() is the id of the last entry the caller
# reads itself (the shared lane or its inbox: what it may wait to apply), '' if
# every entry went to other processes' inboxes (or nowhere).
_LUA_HELPERS = """
local B, ME, MINID, INBOX_MS = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now_ms, clock_ms, clock_seq
do
  local t = redis.call('TIME')
  now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  clock_ms, clock_seq = 0, 0
  local c = redis.call('GET', B .. 'clock')
  if c then
    local m, s = string.match(c, '^(%d+)-(%d+)$')
    clock_ms, clock_seq = tonumber(m), tonumber(s)
  end
end
local own_last, any_last = false, false
local touched = {}
local function next_id()
  if now_ms > clock_ms then clock_ms, clock_seq = now_ms, 0 else clock_seq = clock_seq + 1 end
  local id = string.format('%.0f-%.0f', clock_ms, clock_seq)
  redis.call('SET', B .. 'clock', id)
  return id
end
local function xadd(key, id, e)
  redis.call('XADD', key, 'MINID', '~', MINID, id, 'k', e[3], 'm', e[4], 'f', e[5])
end
local function to_inbox(process, id, e)
  local key = B .. 'inbox:' .. process
  xadd(key, id, e)
  if not touched[process] then
    touched[process] = true
    redis.call('PEXPIRE', key, INBOX_MS)
  end
  if process == ME then own_last = id end
end
local function live_routes(hash, targets)
  local routes = redis.call('HGETALL', hash)
  for i = 1, #routes, 2 do
    local till = tonumber(routes[i + 1])
    if till == 0 or till > now_ms then targets[routes[i]] = true else redis.call('HDEL', hash, routes[i]) end
  end
end
local function add(e)
  local id = next_id()
  any_last = id
  if e[1] == 's' then
    xadd(B .. 'log', id, e)
    own_last = id
  elseif e[1] == 'p' then
    for process in string.gmatch(e[2], '[^,]+') do to_inbox(process, id, e) end
  else
    local c, users = string.match(e[2], '^([^|]*)|(.*)$')
    local targets = {}
    for user in string.gmatch(users, '[^,]+') do live_routes(B .. 'uroute:' .. user, targets) end
    live_routes(B .. 'vroute:' .. c, targets)
    for process in pairs(targets) do to_inbox(process, id, e) end
  end
end
local function publish(entries)
  for _, e in ipairs(entries) do add(e) end
end
local function entries_from(first)
  local entries = {}
  for i = first, #ARGV, 5 do entries[#entries + 1] = {ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]} end
  return entries
end
local function own() return own_last or '' end
local function until_ms(linger_ms) return string.format('%.0f', now_ms + linger_ms) end
"""

# A chat's events: appended in order, `close` ends a chat (its viewers' count of 0, prebuilt by the
# caller, goes just before the last entry, the delete), and the successors held back are released.
_CHAIN_HELPERS = """
local function close(head, held, viewers, count, c)
  if redis.call('HLEN', viewers) > 0 and count[1] ~= '' then add(count) end
  redis.call('DEL', viewers, held, B .. 'vroute:' .. c)
  redis.call('SET', head, 'x', 'EX', %(head_ttl)d)
end
local function run(head, held, viewers, seq, lm, closes, entries, count, c)
  while true do
    if closes == '1' then
      publish({unpack(entries, 1, #entries - 1)})
      close(head, held, viewers, count, c)
      publish({entries[#entries]})
      return
    end
    publish(entries)
    local nxt = redis.call('HGET', held, tostring(seq))
    if not nxt then
      redis.call('SET', head, seq .. ':' .. lm .. ':' .. (any_last or ''), 'EX', %(head_ttl)d)
      return
    end
    redis.call('HDEL', held, tostring(seq))
    local h = cmsgpack.unpack(nxt)
    seq, lm, closes, entries, count = h[1], h[2], h[3], h[4], h[5]
  end
end
""" % {"head_ttl": HEAD_TTL_SECS}

# A chat's head and held events are keyed by the epoch the appending process
# believes in; a process that has not noticed yet that Redis lost the log
# (or whose epoch is stale) gets 'epoch' back, learns the new one and appends
# again, so every process orders a chat's events by the same head.
_EPOCH_CHECK = """
if redis.call('GET', KEYS[5]) ~= ARGV[EPOCH_ARG] then return {'epoch', ''} end
"""

# KEYS: log, head, held, viewers, epoch. ARGV: the common four, prev, seq, last message id, closes,
# chat, alone (1/0: an unknown head is no gap), epoch, the closing count (an entry, lane '' if none),
# entries…
_APPEND_IN_ORDER_LUA = _LUA_HELPERS + _CHAIN_HELPERS + _EPOCH_CHECK.replace("EPOCH_ARG", "11") + """
local head = redis.call('GET', KEYS[2])
if head == 'x' then return {'closed', ''} end
local prev, seq = tonumber(ARGV[5]), tonumber(ARGV[6])
local head_seq = nil
if head then head_seq = tonumber(string.match(head, '^(%d+)')) end
local count = {ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16]}
local entries = entries_from(17)
if (head_seq == nil and (prev == 0 or ARGV[10] == '1')) or head_seq == prev then
  run(KEYS[2], KEYS[3], KEYS[4], seq, ARGV[7], ARGV[8], entries, count, ARGV[9])
  return {'ok', own()}
end
if head_seq ~= nil and head_seq >= seq then return {'dup', ''} end
redis.call('HSET', KEYS[3], ARGV[5], cmsgpack.pack({seq, ARGV[7], ARGV[8], entries, count}))
redis.call('EXPIRE', KEYS[3], %(held_ttl)d)
return {'held', ''}
""".replace("%(held_ttl)d", str(HELD_TTL_SECS))

# KEYS: log, head, held, viewers, epoch. ARGV: the common four, seq, last message id, chat, epoch, entries…
_FILL_GAP_LUA = _LUA_HELPERS + _CHAIN_HELPERS + _EPOCH_CHECK.replace("EPOCH_ARG", "8") + """
local head = redis.call('GET', KEYS[2])
if head == 'x' then return {'closed', ''} end
local head_seq = nil
if head then head_seq = tonumber(string.match(head, '^(%d+)')) end
if head_seq ~= nil and head_seq >= tonumber(ARGV[5]) then return {'dup', ''} end
run(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[5]), ARGV[6], '0', entries_from(9), {''}, ARGV[7])
return {'ok', own()}
"""

# KEYS[1] the log (for the slot). ARGV: the common four, entries…
_APPEND_LUA = _LUA_HELPERS + """
publish(entries_from(5))
return own()
"""

# This process's routes. KEYS[1] the log (for the slot). ARGV: the common four, how long a route
# lingers (ms), mark (1/0: append a MARK entry, prebuilt, to wait for), the mark (5 values),
# then pairs: a route's key (after the prefix) and 0 (held), 1 (lingering from now) or 2 (lingering
# from now unless held: a view's, which the viewers script holds).
_ROUTE_LUA = _LUA_HELPERS + """
local linger = tonumber(ARGV[5])
local index = B .. 'routes:' .. ME
for i = 12, #ARGV, 2 do
  local key, state = B .. ARGV[i], ARGV[i + 1]
  if state == '0' then
    redis.call('HSET', key, ME, '0')
  elseif state == '1' or redis.call('HGET', key, ME) ~= '0' then
    redis.call('HSET', key, ME, until_ms(linger))
  end
  redis.call('SADD', index, key)
end
redis.call('PEXPIRE', index, INBOX_MS)
if ARGV[6] == '1' then add({ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]}) end
return own()
"""

# A dead process's routes linger (its sockets may be resumed elsewhere for the window), then lapse.
# KEYS[1] the log (for the slot). ARGV: the common four, the dead process, how long they linger (ms).
_REAP_ROUTES_LUA = _LUA_HELPERS + """
local index = B .. 'routes:' .. ARGV[5]
for _, key in ipairs(redis.call('SMEMBERS', index)) do
  if redis.call('HGET', key, ARGV[5]) == '0' then redis.call('HSET', key, ARGV[5], until_ms(tonumber(ARGV[6]))) end
end
redis.call('DEL', index)
return 1
"""

# KEYS: log, viewers (socket → user), head of the conversation, the prefix of the views each process's
# sockets hold (a socket id starts with its process's id: OWNER_CHARS characters). The views keys are
# built here, not declared: a cluster allows that because they are in the slot of the others ({bus}).
# ARGV: the common four, conversation, user, viewing (1/0), the SUBSCRIPTION entry's meta and the VIEWERS
# entry's meta and lane (built by storage/entries.py, each with a placeholder for what only this step
# knows: the sockets that changed, the count), how long a process's route lingers after its last view
# (ms), sockets… A process holds the conversation's view route while one of its sockets views it.
_CHANGE_VIEWERS_LUA = _LUA_HELPERS + """
if redis.call('GET', KEYS[3]) == 'x' then return '' end
local function distinct()
  local users, n = {}, 0
  for _, u in ipairs(redis.call('HVALS', KEYS[2])) do
    if not users[u] then users[u] = true n = n + 1 end
  end
  return n
end
local c, user, viewing = ARGV[5], ARGV[6], ARGV[7]
local function filled(template, placeholder, value)
  local i, j = string.find(template, placeholder, 1, true)
  return string.sub(template, 1, i - 1) .. value .. string.sub(template, j + 1)
end
local vroute = B .. 'vroute:' .. c
local before = distinct()
local changed, owners = {}, {}
if viewing == '1' then
  for i = 12, #ARGV do
    local owner = string.sub(ARGV[i], 1, OWNER_CHARS)
    if redis.call('HSETNX', KEYS[2], ARGV[i], user) == 1 then
      changed[#changed + 1] = ARGV[i]
      owners[owner] = true
      redis.call('SADD', KEYS[4] .. owner, c .. ':' .. user .. ':' .. ARGV[i])
      redis.call('HSET', vroute, owner, '0')
      redis.call('SADD', B .. 'routes:' .. owner, vroute)
    end
  end
else
  local targets = {}
  if #ARGV >= 12 then
    for i = 12, #ARGV do targets[#targets + 1] = ARGV[i] end
  else
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do if all[i + 1] == user then targets[#targets + 1] = all[i] end end
  end
  for _, s in ipairs(targets) do
    local owner = string.sub(s, 1, OWNER_CHARS)
    if redis.call('HGET', KEYS[2], s) == user then
      redis.call('HDEL', KEYS[2], s)
      changed[#changed + 1] = s
      owners[owner] = true
    end
    redis.call('SREM', KEYS[4] .. owner, c .. ':' .. user .. ':' .. s)
  end
  local still = {}
  for _, s in ipairs(redis.call('HKEYS', KEYS[2])) do still[string.sub(s, 1, OWNER_CHARS)] = true end
  for owner in pairs(owners) do
    if not still[owner] and redis.call('HGET', vroute, owner) == '0' then
      redis.call('HSET', vroute, owner, until_ms(tonumber(ARGV[11])))
    end
  end
end
local after = distinct()
if #changed == 0 then return '' end
local to = {}
for owner in pairs(owners) do to[#to + 1] = owner end
add({'p', table.concat(to, ','), 'subscription', filled(ARGV[8], '["PLACEHOLDER"]', cjson.encode(changed)), ''})
if after ~= before then add({'c', ARGV[10], 'viewers', filled(ARGV[9], '"PLACEHOLDER"', tostring(after)), ''}) end
return own()
""".replace("OWNER_CHARS", str(PROCESS_ID_CHARS)).replace("PLACEHOLDER", PLACEHOLDER)

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


def _merged(reply: Sequence[Any]) -> EntryBatch:
    """One XREAD of several lanes as one batch in log order (ids come from one clock).

    A lane that returned a full COUNT may hold more: entries of the other
    lanes after its last are left for the next read (which starts after the
    batch's last entry), or they would be applied before entries of that lane
    that come first.
    """
    bound: tuple[int, int] | None = None
    raw: list[tuple[tuple[int, int], str, Any]] = []
    for _, lane in reply or ():
        if len(lane) >= READ_COUNT:
            last = id_key(lane[-1][0].decode())
            bound = last if bound is None or last < bound else bound
        for entry_id, fields in lane:
            entry_id = entry_id.decode()
            raw.append((id_key(entry_id), entry_id, fields))
    raw.sort(key=lambda item: item[0])
    return [(entry_id, _decode(fields)) for key, entry_id, fields in raw if bound is None or key <= bound]


class RedisBus(Bus):
    """The log is Redis streams: the shared lane and one inbox per process (see _LUA_HELPERS). Each
    process reads the two that are its with one blocking XREAD on its own connection.

    On a Redis Cluster the lanes and every key their scripts touch share one
    hash slot (``{bus}``, storage/redis_keys.py).
    """

    partitioned = True

    def __init__(self, url: str, prefix: str, window_secs: float, timeout_secs: float = 1.0) -> None:
        self.process_id = secrets.token_hex(PROCESS_ID_CHARS // 2)
        self.epoch = ""
        self.prefix = checked_prefix(prefix)
        self.window_secs = window_secs
        self.client = bounded_client(url, timeout_secs)
        # The reader blocks on its own connection, never on the pool's.
        self.reader = dedicated_client(url, READ_BLOCK_MS / 1000 + timeout_secs, timeout_secs)
        self.log_key = self._bus_key("log")
        self.inbox_key = self._inbox_key(self.process_id)
        self.epoch_key = self._bus_key("epoch")
        self._append = self.client.register_script(_APPEND_LUA)
        self._append_in_order = self.client.register_script(_APPEND_IN_ORDER_LUA)
        self._fill_gap = self.client.register_script(_FILL_GAP_LUA)
        self._change_viewers = self.client.register_script(_CHANGE_VIEWERS_LUA)
        self._route = self.client.register_script(_ROUTE_LUA)
        self._reap_routes = self.client.register_script(_REAP_ROUTES_LUA)
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
    # The scripts touch the lanes, heads, held events, viewers, routes and the
    # views of processes in one step: all of them are in the bus's slot.

    def _bus_key(self, name: str) -> str:
        return slot_key(self.prefix, BUS_TAG, name)

    def _inbox_key(self, process_id: str) -> str:
        return self._bus_key(f"inbox:{process_id}")

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

    def _common(self) -> list[Any]:
        """The first arguments of every appending script (_LUA_HELPERS)."""
        return [self._bus_key(""), self.process_id, self._min_id(), int(self._linger_secs() * 2000)]

    def _linger_secs(self) -> float:
        # As long as a closed socket's record can be resumed (its expiry, with margin).
        return self.window_secs + ROUTE_LINGER_EXTRA_SECS

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
                lanes = {self.log_key: self._last_read, self.inbox_key: self._last_read}
                if failing:
                    # Without blocking: if Redis answers again, the heartbeat must learn now
                    # whether it lost the log, not once something arrives in this process's lanes.
                    reply = await self.reader.xread(lanes, count=READ_COUNT)
                else:
                    reply = await self.reader.xread(lanes, count=READ_COUNT, block=READ_BLOCK_MS)
                if not failing and len(reply or ()) == 1:
                    # A read that blocked is answered with the lane that woke it alone (Redis
                    # before 7.2), though the script that woke it may have appended to both:
                    # read both again, in one step, for one order.
                    reply = await self.reader.xread(lanes, count=READ_COUNT)
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
            batch = _merged(reply)
            if not batch:
                continue
            self._last_read = batch[-1][0]
            try:
                apply(batch)
            except Exception:
                log.exception("applying %d log entries failed", len(batch))

    @staticmethod
    def _flatten(entries: Sequence[Entry]) -> list[Any]:
        args: list[Any] = []
        for entry in entries:
            args += (*entry.lane(), entry.kind, _encode_meta(entry.meta), entry.frame)
        return args

    async def append(self, entries: Sequence[Entry]) -> str:
        if not entries:
            return ""
        return (await self._append(keys=[self.log_key], args=[*self._common(), *self._flatten(entries)])).decode()

    async def mark(self) -> str:
        return await self.append([mark(self.process_id)])

    async def route(self, users: Mapping[int, bool], views: Sequence[int], wait: bool) -> str:
        routes: list[Any] = []
        for user_id, held in users.items():
            routes += (f"uroute:{user_id}", "0" if held else "1")
        for conversation_id in views:
            routes += (f"vroute:{conversation_id}", "2")
        last = await self._route(
            keys=[self.log_key],
            args=[*self._common(), int(self._linger_secs() * 1000), "1" if wait else "0",
                  *self._flatten([mark(self.process_id)]), *routes],
        )
        return last.decode()

    async def append_in_order(
        self, chain: str, prev: int, seq: int, last_message_id: int, entries: Sequence[Entry],
        closes: bool = False, members: Sequence[int] = (), alone: bool = False,
    ) -> str | None:
        # A deleted conversation's viewers hear their count fall to 0 (appended only if it had viewers).
        count = self._flatten([viewer_count(int(chain), 0, members)]) if closes else ["", "", "", "", ""]
        outcome, last = await self._in_epoch(
            self._append_in_order,
            lambda: [self.log_key, self._head_key(chain), self._held_key(chain), self._viewers_key(chain),
                     self.epoch_key],
            lambda: [*self._common(), prev, seq, last_message_id, "1" if closes else "0", chain,
                     "1" if alone else "0", self.epoch, *count, *self._flatten(entries)],
        )
        return None if outcome == b"held" else last.decode()

    async def fill_gap(self, chain: str, seq: int, last_message_id: int, entries: Sequence[Entry]) -> str | None:
        _, last = await self._in_epoch(
            self._fill_gap,
            lambda: [self.log_key, self._head_key(chain), self._held_key(chain), self._viewers_key(chain),
                     self.epoch_key],
            lambda: [*self._common(), seq, last_message_id, chain, self.epoch, *self._flatten(entries)],
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

    async def read(
        self, first: str, upto: str, process_id: str | None = None, exclusive: bool = False,
    ) -> EntryBatch | None:
        keys = [self.log_key, self._inbox_key(process_id or self.process_id)]
        start = "(" + first if exclusive else first
        # Both lanes in one round trip (a resume is one of thousands after a restart); a lane that
        # returned a full COUNT is read on.
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.xrange(key, min=start, max=upto, count=READ_COUNT)
            lanes = [list(chunk) for chunk in await pipe.execute()]
        if not exclusive and not any(lane and lane[0][0].decode() == first for lane in lanes):
            return None
        for key, lane in zip(keys, lanes):
            while len(lane) % READ_COUNT == 0 and lane:
                chunk = await self.client.xrange(key, min="(" + lane[-1][0].decode(), max=upto, count=READ_COUNT)
                lane += chunk
                if len(chunk) < READ_COUNT:
                    break
        return sorted(((entry_id.decode(), _decode(fields)) for lane in lanes for entry_id, fields in lane),
                      key=lambda pair: id_key(pair[0]))

    async def change_viewers(
        self, conversation_id: int, user_id: int, socket_ids: Sequence[str], viewing: bool, members: Sequence[int],
        closed: bool = False,
    ) -> str:
        count = viewer_count(conversation_id, PLACEHOLDER, members)
        last = await self._change_viewers(
            keys=[self.log_key, self._viewers_key(conversation_id), self._head_key(str(conversation_id)),
                  self._views_key("")],
            args=[*self._common(), conversation_id, user_id, "1" if viewing else "0",
                  _encode_meta(subscription("view" if viewing else "unview", user_id, [PLACEHOLDER], conversation_id,
                                            self.process_id, closed).meta),
                  _encode_meta(count.meta), count.lane()[1], int(self._linger_secs() * 1000), *socket_ids],
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
        last = await self.client.get(self._bus_key("clock"))
        return last.decode() if last else "0-0"

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
            # What this process routes to itself is found by its reaper through this index.
            pipe.pexpire(self._bus_key(f"routes:{self.process_id}"), int(self._linger_secs() * 2000))
            _, processes, _ = await pipe.execute()
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
        # Its routes linger: its closed sockets can be resumed elsewhere within the window.
        await self._reap_routes(keys=[self.log_key],
                                args=[*self._common(), process_id, int(self._linger_secs() * 1000)])
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
