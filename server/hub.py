"""The hub: this process's side of the bus. It publishes the chat's events, applies the log to the
local sockets, answers what only all processes together know, and resumes reconnecting sockets.

Every event goes through the log (``storage/bus.py``), also with one process:
a process applies the log in order to its registry, so every socket on every
process gets every event in the same order, and a socket's every frame
carries its position in the log. ``publish`` returns once this process has
applied the entry, so an HTTP answer still follows its own events on this
process's sockets.

What only all processes together know: whether a user has an open socket
anywhere (the 428 rule), their sockets, distinct viewers, the send rate. A
process that believes it is alone (no other heartbeat) answers from its own
registry and limiter, so one process pays nothing for the others.

Resume: a socket's positions name the log entry and the socket. A client
that reconnects with one gets, after ``resumed``, every entry since then that
its old socket would have received (its memberships as each entry names
them, its global-chat subscription and views as its record says), then live
events. Anything that makes this inexact (another epoch, an entry no longer
in the log, an unknown socket, another user's socket, the window passed)
answers ``resume_failed``: resumed always means complete.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import heapq
import itertools
import logging
import secrets
import time
from typing import Any, Callable, Collection, Iterable, Sequence

from server import metrics, wire
from server.ratelimit import RateLimiter
from server.registry import Connection, Registry
from server.settings import Settings
from storage.bus import (
    ALL, CONVERSATION, GLOBAL, HEARTBEAT_SECS, PROCESS_ID_CHARS, SOCKETS_CLOSED, STARTED, SUBSCRIPTION, VIEWERS, Bus,
    Entry, EntryBatch, id_key,
)
from storage.cache import SOCKET_REFRESH_SECS, Cache
from storage.database import Database
from storage.errors import is_storage_unavailable
from storage.records import GLOBAL_CHAT_ID, Profile, Sequenced, StoredMessage, default_profile

log = logging.getLogger("chat.hub")

# How long an entry held back for its predecessor waits before the gap is filled from the database.
GAP_WAIT_SECS = 2.0
GAP_POLL_SECS = 0.05
# How long publish waits for this process to apply its own entry (the reader may be cut off).
APPLIED_WAIT_SECS = 5.0
# Entries kept in memory for sockets that open while the log moves on.
RECENT_ENTRIES = 20_000
# A socket's record keeps this many subscription states (a resume needs the one at its position).
HISTORY_STATES = 20
# The close code of sockets whose events Redis lost: "service restart", reconnect.
CLOSE_HISTORY_LOST = 1012
# How long stopping waits for background work (socket records, announcements) before cancelling it.
STOP_GRACE_SECS = 2.0
# Profiles of users whose sockets are on other processes are read again after this long.
PROFILE_MEMORY_SECS = 10.0
PROFILE_MEMORY_SIZE = 10_000
# How often an event committed while Redis was away is offered again.
RETRY_SECS = 0.5
# How far ahead of this process's clock another process's log ids may be (Redis's clock names them).
CLOCK_SKEW_MS = 5000
# How long a closed socket is remembered, to undo a view that raced its close.
CLOSED_MEMORY_SECS = 60.0
# A socket of another process, once Redis said it is open, counts as open
# here (the 428 rule) without asking again until its process announces its
# close, dies, or this long passes (the bound if an announcement is lost).
REMOTE_SOCKET_MEMORY_SECS = 30.0
REMOTE_SOCKET_MEMORY_SIZE = 100_000  # users


class ResumeFailed(Exception):
    """A resume cannot be exact; the reason is told to the client."""


class Hub:
    """Publishing, applying and resuming over a bus, for one process."""

    def __init__(self, bus: Bus, cache: Cache, database: Database, registry: Registry, settings: Settings) -> None:
        self.bus = bus
        self.cache = cache
        self.database = database
        self.registry = registry
        self.window_secs = settings.resume_window
        self.rate = settings.send_rate_limit
        self.local_limiter = RateLimiter(settings.send_rate_limit)
        self.peers = 0  # other live processes, as the last heartbeat saw them
        self._applied = (0, 0)  # id of the last entry applied here
        self._applied_id = "0-0"
        self._waiters: list[tuple[tuple[int, int], int, asyncio.Future[None]]] = []  # heap: entry id → publisher
        self._tiebreak = itertools.count()
        self._recent: collections.deque[tuple[str, Entry]] = collections.deque(maxlen=RECENT_ENTRIES)
        # Local socket → its record for a resume: "u" user, "k" its key, "s" the
        # entry of its first frame, "h" [[entry id, global, views], ...] what it
        # listened to from each entry on (saved to the bus as it changes).
        self._records: dict[str, dict[str, Any]] = {}
        # Sockets of this process closed lately: a view appended while one
        # closed arrives after its close, and must be undone (see _apply_subscription).
        self._closed: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.closing: set[str] = set()  # sockets closed whose views are still being ended
        self._profiles: dict[int, tuple[Profile, float]] = {}  # users whose sockets are elsewhere → (profile, until)
        self._remote: dict[int, dict[str, float]] = {}  # user → their sockets known open elsewhere → until
        self._remote_closes = 0  # SOCKETS_CLOSED entries applied so far (see require_socket)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Closes a local socket whose place a resume on another process took (set by ChatService).
        self.on_retire: Callable[[Connection], None] | None = None
        self._beating: asyncio.Task[None] | None = None

    # Lifetime

    async def start(self) -> None:
        self._mark_applied(await self.bus.start(self._apply))
        self.peers, _, _ = await self.bus.beat()
        self._beating = asyncio.ensure_future(self._beat_forever())

    async def stop(self) -> None:
        """Let background work finish (briefly: an announcement waiting for Redis may wait long), then cancel it."""
        if self._beating is not None:
            self._beating.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=STOP_GRACE_SECS)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coroutine) -> None:
        # A fresh context: a request's storage deadline (storage/deadline.py) must not bound work it leaves behind.
        task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("heartbeat failed: %s", error)
            await asyncio.sleep(HEARTBEAT_SECS)

    async def beat(self) -> None:
        """One heartbeat: say we are alive, learn of the others, clean up after dead ones and lost history."""
        self.peers, dead, lost = await self.bus.beat()
        if lost:
            self._remote.clear()  # the announcements of closes went with the log
            await self.history_lost()
        for process_id in dead:
            self._forget_remote(None, lambda socket_id: socket_id[:PROCESS_ID_CHARS] == process_id)
            await self._reap(process_id)

    async def history_lost(self) -> None:
        """Redis lost events (it restarted, or was flushed): close every socket here, 1012.

        Some event may have been committed and never reached a socket, and
        nothing can tell which: the clients reconnect, their resume fails
        (the epoch changed) and they refetch, so nobody keeps a silent gap.
        """
        connections = self.registry.connections()
        log.warning("Redis lost the event log (restarted or flushed): closing %d sockets so they refetch",
                    len(connections))
        for connection in connections:
            connection.close(CLOSE_HISTORY_LOST, "Event history lost, reconnect")

    async def _reap(self, process_id: str) -> None:
        """Clean up after a process that died: its sockets stop counting, its views end (and are announced)."""
        if not await self.bus.claim_dead(process_id):
            return
        log.warning("process %s stopped beating: removing its sockets and views", process_id)
        await self.cache.forget_process_sockets(process_id)
        for conversation_id, user_id, socket_id in await self.bus.dead_process_views(process_id):
            members = await self._members(conversation_id)
            await self.bus.change_viewers(conversation_id, user_id, [socket_id], False, members, closed=True)
        await self.bus.forget_process(process_id)

    # Applying the log

    def _mark_applied(self, entry_id: str) -> None:
        self._applied_id = entry_id
        self._applied = id_key(entry_id)
        while self._waiters and self._waiters[0][0] <= self._applied:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                waiter.set_result(None)

    async def applied(self, entry_id: str) -> None:
        """Return once this process has applied the entry (or after APPLIED_WAIT_SECS)."""
        if not entry_id or id_key(entry_id) <= self._applied:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (id_key(entry_id), next(self._tiebreak), waiter))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), APPLIED_WAIT_SECS)
        except asyncio.TimeoutError:
            log.warning("entry %s not applied here within %.0f s", entry_id, APPLIED_WAIT_SECS)

    def _apply(self, batch: EntryBatch) -> None:
        """Invoked with each batch of log entries, in log order: deliver them to this process's sockets."""
        epoch = self.bus.epoch
        for entry_id, entry in batch:
            # Counted per entry, never per socket: what reading every entry costs a process shows
            # as read against delivered (chat_log_entries_*_total).
            read, delivered = metrics.log_entry_counters(entry.kind)
            read.inc()
            if id_key(entry_id) <= self._applied:
                continue  # already applied (a reader that reconnected)
            self._recent.append((entry_id, entry))
            try:
                if self._apply_one(epoch, entry_id, entry):
                    delivered.inc()
            except Exception:
                log.exception("applying log entry %s failed", entry_id)
            self._mark_applied(entry_id)

    def _apply_one(self, epoch: str, entry_id: str, entry: Entry) -> int:
        """Apply one entry here; return how many of this process's sockets it was sent to."""
        registry, meta, kind = self.registry, entry.meta, entry.kind
        if kind == ALL:
            self._apply_room_change(meta)
            sent = registry.send_all(wire.position_head(entry.frame, epoch, entry_id))
            if meta.get("room") == "drop":
                registry.drop_conversation(meta["c"])
            return sent
        if kind == CONVERSATION:
            return registry.send(registry.audience(meta["c"]), wire.position_head(entry.frame, epoch, entry_id))
        if kind == GLOBAL:
            return registry.send(registry.global_sockets(), wire.position_head(entry.frame, epoch, entry_id))
        if kind == VIEWERS:
            frame = wire.viewers_change(meta["c"], meta["n"])
            return registry.send(registry.viewers_audience(meta["c"], meta["m"]),
                                 wire.position_head(frame, epoch, entry_id))
        if kind == SUBSCRIPTION:
            self._apply_subscription(entry_id, meta)
        elif kind == SOCKETS_CLOSED:
            self._remote_closes += 1
            for user_id, socket_id in meta["s"]:
                self._forget_remote(user_id, lambda known: known == socket_id)
                connection = registry.connection(socket_id) if meta.get("r") else None
                if connection is not None and self.on_retire is not None:
                    self.on_retire(connection)  # a resume on another process took its place
        elif kind == STARTED and meta.get("p") != self.bus.process_id:
            self.peers = max(self.peers, 1)  # a new process: stop answering alone at once
        return 0

    def _apply_room_change(self, meta: dict[str, Any]) -> None:
        room, conversation_id, user_id = meta.get("room"), meta.get("c"), meta.get("u")
        if room == "join":
            self.registry.join_room(conversation_id, user_id)
        elif room == "leave":
            self.registry.leave_room(conversation_id, user_id)

    def _apply_subscription(self, entry_id: str, meta: dict[str, Any]) -> None:
        if meta["op"] == "view" and meta.get("p") != self.bus.process_id:
            ghosts = [s for s in meta["s"] if s in self._closed]
            if ghosts:  # another process's view raced the socket's close here, which could not end it
                self._spawn(self._end_views(meta["c"], meta["u"], ghosts))
        local = [s for s in meta.get("s") or [] if self.registry.connection(s) is not None]
        if not local:
            return
        op, user_id = meta["op"], meta["u"]
        if op == "global":
            self.registry.subscribe_global(local)
        elif op == "view":
            self.registry.start_viewing(meta["c"], user_id, local)
        elif op == "unview":
            self.registry.stop_viewing(meta["c"], user_id, local)
        for socket_id in local:
            self._remember_state(socket_id, user_id, entry_id)

    def _remember_state(self, socket_id: str, user_id: int, entry_id: str) -> None:
        """Record what a local socket listens to from this entry on (a resume needs it)."""
        record = self._records.get(socket_id)
        if record is None:
            return
        subscribed, views = self.registry.socket_state(socket_id)
        history = record["h"]
        history.append([entry_id, subscribed, views])
        del history[:-HISTORY_STATES]
        self._spawn(self._save_socket(socket_id))

    async def _save_socket(self, socket_id: str) -> None:
        record = self._records.get(socket_id)
        if record is None:
            return  # closed meanwhile: its record was saved at its close
        try:
            await self.bus.save_socket(socket_id, record, self.window_secs + 2 * SOCKET_REFRESH_SECS)
        except Exception as error:
            log.warning("socket %s record not saved: %s", socket_id, error)

    # Publishing

    async def publish(self, entries: Sequence[Entry]) -> None:
        """Append entries to the log; return once applied here."""
        await self.applied(await self.bus.append(entries))

    async def publish_in_order(
        self, chain: int, order: Sequenced, last_message_id: int, entries: Sequence[Entry],
        closes: bool = False, members: Sequence[int] = (),
    ) -> None:
        """Append a chat's event ``order.seq`` after its predecessor; return once applied here.

        ``last_message_id`` is the chat's last message id after this event.
        When the predecessor is late (its process may have died between its
        commit and its append), the gap is filled from the database.
        """
        name = "g" if chain == GLOBAL_CHAT_ID else str(chain)
        append = functools.partial(
            self.bus.append_in_order, name, order.seq - 1, order.seq, last_message_id, entries, closes, members
        )
        try:
            last = await append()
        except Exception as error:
            if not is_storage_unavailable(error):
                raise
            # Committed, but Redis is away: announce it once Redis answers
            # again (the append is idempotent: a chat's head never goes back).
            log.warning("chat %s event %d not announced yet (%s); retrying in the background", name, order.seq, error)
            self._spawn(self._append_when_back(name, append))
            return
        if last is None:
            await self._wait_or_fill(name, chain, order)
            return
        await self.applied(last)

    async def _append_when_back(self, name: str, append) -> None:
        give_up = time.monotonic() + self.window_secs
        while time.monotonic() < give_up:
            await asyncio.sleep(RETRY_SECS)
            try:
                await append()
                log.info("chat %s: the held-up event is announced", name)
                return
            except Exception as error:
                if not is_storage_unavailable(error):
                    log.exception("chat %s: announcing a held-up event failed", name)
                    return
        log.error("chat %s: an event was never announced (Redis away for %.0f s); clients refetch", name,
                  self.window_secs)

    async def _wait_or_fill(self, name: str, chain: int, order: Sequenced) -> None:
        deadline = time.monotonic() + GAP_WAIT_SECS
        while time.monotonic() < deadline:
            await asyncio.sleep(GAP_POLL_SECS)
            head = await self.bus.chain_head(name)
            if head is None and await self.bus.chain_closed(name):
                return  # the conversation was deleted meanwhile: nothing of it is announced any more
            if head is not None and head[0] >= order.seq:
                await self.applied(head[2])  # released by the predecessor's append (ours came with it)
                return
        head = await self.bus.chain_head(name)
        if head is not None and head[0] >= order.seq:
            await self.applied(head[2])
            return
        missing: list[StoredMessage] = []
        if head is not None:
            missing = await self.database.messages_between(chain, head[1], order.last_message_id)
        members = await self._members(chain) if chain != GLOBAL_CHAT_ID and missing else []
        log.warning("chat %s: events before %d never arrived; filling %d messages from the database",
                    name, order.seq, len(missing))
        await self.applied(await self.bus.fill_gap(
            name, order.seq - 1, order.last_message_id, [message_entry(message, members) for message in missing]
        ) or "")

    # Who is connected, anywhere

    async def require_socket(self, user_id: int, socket_id: str | None) -> None:
        """Raise LookupError unless the user (that socket) is open on some process.

        A socket on another process is asked of Redis once, then remembered
        until its process announces its close through the log (or dies): a
        user sending through this process again and again costs no Redis
        call per request.
        """
        if self.registry.user_sockets(user_id, socket_id):
            return
        if self.peers:
            if self._known_remote(user_id, socket_id):
                return
            closes_before = self._remote_closes
            cached = await self.cache.sockets_of(user_id)
            if cached and (socket_id is None or socket_id in cached):
                # A close announced while Redis answered may be of one of
                # these: remember them only if none was.
                if self._remote_closes == closes_before:
                    self._remember_remote(user_id, cached if socket_id is None else {socket_id})
                return
        raise LookupError("no open socket")

    def _known_remote(self, user_id: int, socket_id: str | None) -> bool:
        known = self._remote.get(user_id)
        if not known:
            return False
        now = time.monotonic()
        if socket_id is not None:
            return known.get(socket_id, 0.0) > now
        return any(until > now for until in known.values())

    def _remember_remote(self, user_id: int, socket_ids: Iterable[str]) -> None:
        if len(self._remote) >= REMOTE_SOCKET_MEMORY_SIZE:
            self._remote.clear()  # crude, and rare: asking Redis again is always right
        until = time.monotonic() + REMOTE_SOCKET_MEMORY_SECS
        mine = self.bus.process_id
        known = self._remote.setdefault(user_id, {})
        for socket_id in socket_ids:
            if socket_id[:PROCESS_ID_CHARS] != mine:
                known[socket_id] = until
        if not known:
            del self._remote[user_id]

    def _forget_remote(self, user_id: int | None, matches: Callable[[str], bool]) -> None:
        """Forget remembered remote sockets that ``matches`` picks, of one user (or of everyone: None)."""
        for user in [user_id] if user_id is not None else list(self._remote):
            known = self._remote.get(user)
            if known is None:
                continue
            for socket_id in [s for s in known if matches(s)]:
                del known[socket_id]
            if not known:
                del self._remote[user]

    async def sockets_closed(self, sockets: Sequence[tuple[int, str]]) -> None:
        """Announce closed sockets of this process to the others, which may remember them as open."""
        if self.peers:
            await self.bus.append([Entry(SOCKETS_CLOSED, {"s": [[user_id, socket_id] for user_id, socket_id in sockets]})])

    async def sockets_for(self, user_id: int, socket_id: str | None) -> list[str]:
        """The sockets a request acts for: the one it names, or all the user's; LookupError if none."""
        local = self.registry.user_sockets(user_id, socket_id)
        if self.peers and (socket_id is None or not local):
            cached = await self.cache.sockets_of(user_id)
            sockets = sorted(set(local) | (cached if socket_id is None else cached & {socket_id}))
        else:
            sockets = local
        if not sockets:
            raise LookupError("no open socket")
        return sockets

    async def profile(self, user_id: int) -> Profile:
        """The user's profile: from their socket here, else from the database (remembered briefly).

        A user whose socket is on another process sends through this one
        again and again; a profile changes only when a socket opens, so one
        read per PROFILE_MEMORY_SECS is enough.
        """
        profile = self.registry.profile(user_id)
        if profile is not None:
            return profile
        now = time.monotonic()
        remembered = self._profiles.get(user_id)
        if remembered is not None and remembered[1] > now:
            return remembered[0]
        profile = await self.database.profile(user_id) or default_profile(user_id)
        if len(self._profiles) >= PROFILE_MEMORY_SIZE:
            self._profiles.clear()  # crude, and rare: a burst of distinct remote senders
        self._profiles[user_id] = (profile, now + PROFILE_MEMORY_SECS)
        return profile

    async def take_send_token(self, user_id: int) -> float:
        """The send-rate limit, shared by every process when there are several; 0 or seconds to wait."""
        if self.rate <= 0:
            return 0.0
        if self.peers:
            return await self.bus.take_token(user_id, self.rate, self.local_limiter.burst)
        return self.local_limiter.take(user_id)

    async def viewer_counts(self, conversation_ids: Sequence[int]) -> dict[int, int]:
        """Distinct viewers on every process; alone and without Redis, this process's own count is exact."""
        try:
            return await self.bus.viewer_counts(conversation_ids)
        except Exception as error:
            if self.peers or not is_storage_unavailable(error):
                raise
            return {cid: self.registry.viewer_count(cid) for cid in conversation_ids}

    async def _members(self, conversation_id: int) -> list[int]:
        return await self.database.member_ids(conversation_id)

    # Subscriptions

    async def subscribe_global(self, user_id: int, socket_ids: Sequence[str]) -> None:
        await self.publish([Entry(SUBSCRIPTION, {"op": "global", "u": user_id, "s": list(socket_ids)})])

    async def change_viewers(
        self, conversation_id: int, user_id: int, socket_ids: Sequence[str], viewing: bool, members: Sequence[int],
    ) -> None:
        await self.applied(await self.bus.change_viewers(conversation_id, user_id, socket_ids, viewing, members))
        ghosts = [s for s in socket_ids if s in self._closed] if viewing else []
        if ghosts:  # a socket of this process closed meanwhile: its close could not end this view
            await self._end_views(conversation_id, user_id, ghosts)

    # Sockets opening and closing

    def new_socket_id(self) -> str:
        """A new socket's id: this process's id (whoever cleans up after it finds its views by it), then a secret."""
        return self.bus.process_id + secrets.token_urlsafe(9)

    async def connect(
        self, connection: Connection, profile: Profile, resume: str | None
    ) -> tuple[list[bytes], str | None]:
        """Register an open socket (resuming an old one's place if asked).

        Return its first frames (the greeting and, with a resume, the missed
        frames; the connection holds live frames until it sends them,
        ``Connection.release``) and the resumed socket if it may still be
        open somewhere: the caller retires it (``ChatService.open_connection``).
        """
        user_id, socket_id = connection.user_id, connection.socket_id
        old: dict[str, Any] | None = None
        failure = start = old_socket = ""
        fetched: EntryBatch = []
        if resume is not None:
            try:
                old, start, old_socket = await self._resumable(user_id, resume)
                # Read before the socket is registered: from then on nothing
                # may wait, or live entries would pass by it.
                fetched = self._recent_from(start, self._applied_id) or await self.bus.read(start, self._applied_id)
                if not fetched:
                    raise ResumeFailed("history trimmed: the position is no longer in the log")
            except ResumeFailed as error:
                old, failure = None, str(error)
        before = self._applied_id
        rooms = await self.database.user_conversation_ids(user_id)
        first = self.registry.add(connection, profile)
        if first:
            self.registry.set_rooms(user_id, rooms)
            self._catch_up_rooms(user_id, before)
        at = self._applied_id
        history: list[list[Any]] = [[at, False, []]]
        replay: list[bytes] = []
        if old is not None:
            try:
                history, replay = self._replay(old, old_socket, self._extended(fetched, at), connection)
            except ResumeFailed as error:
                old, failure = None, str(error)
        _, subscribed, views = history[-1]
        if subscribed:
            self.registry.subscribe_global([socket_id])
        for conversation_id in views:
            self.registry.start_viewing(conversation_id, user_id, [socket_id])
        self._records[socket_id] = {
            "u": user_id, "k": connection.position_key, "s": start if old is not None else at,
            "h": history[-HISTORY_STATES:],
        }
        self._spawn(self._save_socket(socket_id))
        if views:
            # Before the first frame: the user never stops viewing, so no
            # count drops in between if her other socket closes next.
            await self._carry_views(user_id, socket_id, views)
        head, epoch = wire.position_head, self.bus.epoch
        if old is not None:
            # The position asked for: resuming from it again replays the same frames.
            first_frame = head(wire.resumed(socket_id, user_id, len(replay)), epoch, start)
        elif resume is not None:
            first_frame = head(wire.resume_failed(socket_id, user_id, failure), epoch, at)
        else:
            first_frame = head(wire.connected(socket_id, user_id), epoch, at)
        retire = old_socket if old is not None and "e" not in old else None
        return [first_frame + connection.position_tail, *replay], retire

    def _catch_up_rooms(self, user_id: int, after: str) -> None:
        """Apply the room changes of this user that the log brought while their rooms were read."""
        after_key = id_key(after)
        changes = []
        for entry_id, entry in reversed(self._recent):
            if id_key(entry_id) <= after_key:
                break
            if entry.kind == ALL and entry.meta.get("u") == user_id:
                changes.append(entry.meta)
        for meta in reversed(changes):
            self._apply_room_change(meta)

    async def _carry_views(self, user_id: int, socket_id: str, conversation_ids: Sequence[int]) -> None:
        for conversation_id in conversation_ids:
            try:
                members = await self._members(conversation_id)
                if user_id not in members:
                    await self.bus.change_viewers(conversation_id, user_id, [socket_id], True, members)
            except Exception as error:
                log.warning("views of resumed socket %s not carried to conversation %s: %s",
                            socket_id, conversation_id, error)

    async def _resumable(self, user_id: int, position: str) -> tuple[dict[str, Any], str, str]:
        """The old socket's record, the entry to resume from and the old socket; ResumeFailed if not exact.

        A position resumes only a socket of this user, with that socket's
        key, at an entry between its first frame and its close.
        """
        try:
            epoch, entry_id, old_socket, key = wire.parse_position(position)
            entry_key = id_key(entry_id)
        except ValueError:
            raise ResumeFailed("unknown position") from None
        if epoch != self.bus.epoch:
            raise ResumeFailed("history lost (the server or its Redis restarted)")
        now_ms = time.time() * 1000
        if entry_key[0] < now_ms - self.window_secs * 1000:
            raise ResumeFailed("too late: the resume window has passed")
        if entry_key[0] > now_ms + CLOCK_SKEW_MS:
            raise ResumeFailed("unknown position")  # not yet written: made up
        record = self._records.get(old_socket) or await self.bus.load_socket(old_socket)
        if record is None or record.get("u") != user_id or not secrets.compare_digest(record.get("k", ""), key):
            raise ResumeFailed("unknown position")
        if entry_key < id_key(record["s"]) or ("e" in record and entry_key > id_key(record["e"])):
            raise ResumeFailed("unknown position")  # never sent to that socket
        if entry_key > self._applied and entry_key > id_key(await self.bus.last_id()):
            raise ResumeFailed("unknown position")  # past the log's head: made up
        await self.applied(entry_id)  # the position may come from a process ahead of this one
        return record, entry_id, old_socket

    def _extended(self, fetched: EntryBatch, upto: str) -> EntryBatch:
        """``fetched`` followed by what the log brought from memory since, up to ``upto``."""
        if fetched[-1][0] == upto:
            return fetched
        rest = self._recent_from(fetched[-1][0], upto)  # the log moved on while it was read
        if rest is None:
            raise ResumeFailed("history trimmed: the position is no longer in the log")
        return fetched + rest[1:]

    def _replay(
        self, record: dict[str, Any], old_socket: str, entries: EntryBatch, connection: Connection
    ) -> tuple[list[list[Any]], list[bytes]]:
        """The frames the old socket would have got after ``entries[0]``, and what it listened to meanwhile.

        The first entry is the position's: it must be one the old socket was
        sent (its first frame's, or one its audience rule gives it), so a
        position moved onto another socket resumes nothing.
        """
        start, first = entries[0]
        start_key = id_key(start)
        # What it listened to: the record's states (snapshots, in log order),
        # and the old socket's own subscription entries (a record saved by
        # another process may lag them).
        states = collections.deque(record["h"])
        if not states or id_key(states[0][0]) > start_key:
            raise ResumeFailed("unknown position")
        while len(states) > 1 and id_key(states[1][0]) <= start_key:
            states.popleft()
        _, subscribed, views = states.popleft()
        views = set(views)
        user_id = record["u"]
        if start != record["s"] and not receives(first, user_id, subscribed, views):
            raise ResumeFailed("unknown position")
        history: list[list[Any]] = [[start, subscribed, sorted(views)]]
        frames = []
        epoch = self.bus.epoch
        for entry_id, entry in entries[1:]:
            meta, kind = entry.meta, entry.kind
            if states and id_key(states[0][0]) <= id_key(entry_id):
                while states and id_key(states[0][0]) <= id_key(entry_id):
                    _, subscribed, state_views = states.popleft()
                views = set(state_views)
                history.append([entry_id, subscribed, sorted(views)])
            if kind == SUBSCRIPTION:
                if old_socket in (meta.get("s") or []) and not meta.get("closed"):
                    if meta["op"] == "global":
                        subscribed = True
                    elif meta["op"] == "view":
                        views.add(meta["c"])
                    elif meta["op"] == "unview":
                        views.discard(meta["c"])
                    history.append([entry_id, subscribed, sorted(views)])
                continue
            if receives(entry, user_id, subscribed, views):
                frame = wire.viewers_change(meta["c"], meta["n"]) if kind == VIEWERS else entry.frame
                frames.append(wire.position_head(frame, epoch, entry_id) + connection.position_tail)
            if kind == ALL and meta.get("room") == "drop" and meta["c"] in views:
                views.discard(meta["c"])
                history.append([entry_id, subscribed, sorted(views)])
        return history, frames

    def _recent_from(self, first: str, upto: str) -> EntryBatch | None:
        """The entries from ``first`` (included) up to ``upto`` from memory, if memory still holds ``first``."""
        if not self._recent or id_key(self._recent[0][0]) > id_key(first):
            return None
        first_key, upto_key = id_key(first), id_key(upto)
        batch = []
        for entry_id, entry in self._recent:
            key = id_key(entry_id)
            if first_key <= key <= upto_key:
                batch.append((entry_id, entry))
        return batch if batch and batch[0][0] == first else None

    async def disconnect(self, connection: Connection) -> bool:
        """Forget a closed socket: its views end (announced), its record stays for a resume. False if unknown."""
        views = self.registry.remove(connection)
        if views is None:
            return False
        socket_id, user_id = connection.socket_id, connection.user_id
        self._records.pop(socket_id, None)
        end = self._applied_id  # nothing after this entry reaches it
        now = time.monotonic()
        self._closed[socket_id] = now
        while next(iter(self._closed.values())) < now - CLOSED_MEMORY_SECS:
            self._closed.popitem(last=False)
        self.closing.add(socket_id)
        try:
            for conversation_id in views:
                await self._end_views(conversation_id, user_id, [socket_id])
        finally:
            self.closing.discard(socket_id)
        try:
            await self.bus.end_socket(socket_id, end, self.window_secs)
        except Exception as error:
            log.warning("socket %s record not ended: %s", socket_id, error)
        return True

    async def retire_remote(self, user_id: int, socket_id: str) -> None:
        """Close a socket of another process that a resume replaced: its process retires it, the others forget it."""
        await self.publish([Entry(SOCKETS_CLOSED, {"s": [[user_id, socket_id]], "r": True})])

    async def _end_views(self, conversation_id: int, user_id: int, socket_ids: list[str]) -> None:
        """End closed sockets' views of a conversation (announced if the count falls)."""
        try:
            members = await self._members(conversation_id)
            await self.bus.change_viewers(conversation_id, user_id, socket_ids, False, members, closed=True)
        except Exception as error:
            log.warning("views of closed sockets %s not ended in conversation %s: %s",
                        socket_ids, conversation_id, error)

    async def refresh(self) -> None:
        """Push back the expiry of live sockets' records."""
        await self.bus.expire_sockets(list(self._records), self.window_secs + 2 * SOCKET_REFRESH_SECS)


def receives(entry: Entry, user_id: int, subscribed: bool, views: Collection[int]) -> bool:
    """Whether a socket of ``user_id`` listening so (the global chat, ``views``) is sent ``entry``.

    The replay's rule; live delivery applies the same one through the registry's rooms.
    """
    kind = entry.kind
    if kind == ALL:
        return True
    if kind == GLOBAL:
        return subscribed
    if kind in (CONVERSATION, VIEWERS):
        return user_id in entry.meta.get("m", ()) or entry.meta["c"] in views
    return False

def message_entry(message: StoredMessage, members: Sequence[int]) -> Entry:
    """The log entry announcing a stored message."""
    if message.conversation_id == GLOBAL_CHAT_ID:
        return Entry(GLOBAL, {}, wire.new_message(message))
    return Entry(CONVERSATION, {"c": message.conversation_id, "m": list(members)}, wire.new_message(message))
