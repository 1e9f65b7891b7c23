"""The hub: this process's side of the bus. It applies the log to the local sockets, keeps their
records, opens (and resumes) and closes them, and holds the parts that know the other processes.

Every event goes through the log (``storage/bus.py``), also with one process:
a process applies its part of the log (the shared lane and its own inbox,
where only its audiences' conversation entries come: ``server/routes.py``)
in log order to its registry, so every socket on every process gets its
events in the same order, and a socket's every frame carries its position in
the log. ``publish`` returns once this process has applied what it reads of
the entries (or after APPLIED_WAIT_SECS, if its reader is cut off), so an
HTTP answer follows its own events on this process's sockets. An event
committed while Redis is away is announced in the background once it is
back; the request that committed it does not wait.

Redis losing the log (a restart, a flush) closes no socket: each process
rebuilds what Redis held of its sockets (ids, views, records) and sends each
of its sockets one ``resync`` frame through the new log; what was committed
meanwhile is in what the client refetches, what comes after flows live.

The parts, each in its module: chats' events in commit order
(``server/chain_order.py``: ``hub.chains``), open sockets on any process
(``server/open_sockets.py``: ``hub.open_sockets``), senders' profiles
(``server/profiles.py``: ``hub.profiles``), the users whose entries come
here (``server/routes.py``: ``hub.routes``) and the resume's replay
(``server/resume.py``). The hub itself keeps the heartbeat, applying the
log, the socket records, and distinct viewers and the send rate. A process
that believes it is alone (no other heartbeat) answers from its own
registry and limiter, so one process pays nothing for the others.

Resume: a socket's positions name the log entry, the socket and its key. A
client that reconnects with one gets, after ``resumed``, every entry since
then that its old socket would have received, then live events. Anything
that makes this inexact (another epoch, an entry no longer in the log, an
unknown socket, another user's socket, the window passed) answers
``resume_failed``: resumed always means complete.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import heapq
import itertools
import logging
import secrets
import time
from typing import Any, Callable, Sequence

from server import metrics, wire
from server.chain_order import RETRY_SECS, ChainPublisher
from server.open_sockets import OpenSockets
from server.profiles import Profiles
from server.registry import Connection, Registry
from server.resume import RecentEntries, ResumeFailed, replay
from server.routes import Routes
from server.settings import Settings
from storage.bus import HEARTBEAT_SECS, PROCESS_ID_CHARS, ROUTE_LINGER_EXTRA_SECS, Bus
from storage.entries import (
    ALL, CONVERSATION, GLOBAL, RESYNC, SOCKETS_CLOSED, STARTED, SUBSCRIPTION, VIEWERS, Entry, EntryBatch, id_key,
    process_started, resync, sockets_closed, subscription,
)
from storage.cache import SOCKET_REFRESH_SECS, Cache
from storage.database import Database
from storage.errors import is_storage_unavailable
from storage.records import Profile
from storage.token_buckets import RateLimiter

# Views of closed sockets ended concurrently (each one Redis call) when many close at once.
VIEWS_ENDED_AT_ONCE = 32

log = logging.getLogger("chat.hub")

# How long publish waits for this process to apply its own entry (the reader may be cut off).
APPLIED_WAIT_SECS = 5.0
# A socket's record keeps this many subscription states (a resume needs the one at its position).
HISTORY_STATES = 20
# How long stopping waits for background work (socket records, announcements) before cancelling it.
STOP_GRACE_SECS = 2.0
# How far ahead of this process's clock another process's log ids may be (Redis's clock names them).
CLOCK_SKEW_MS = 5000
# How long a closed socket is remembered, to undo a view that raced its close.
CLOSED_MEMORY_SECS = 60.0


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
        self.recent = RecentEntries()
        # Local socket → its record for a resume: "u" user, "k" its key, "s" the
        # entry of its first frame, "h" [[entry id, global, views], ...] what it
        # listened to from each entry on (saved to the bus as it changes), "o"
        # where its history before its process's own part lies (see _history).
        self._records: dict[str, dict[str, Any]] = {}
        # Sockets of this process closed lately: a view appended while one
        # closed arrives after its close, and must be undone (see _apply_subscription).
        self._closed: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.closing: set[str] = set()  # sockets closed whose views are still being ended
        self.open_sockets = OpenSockets(registry, cache, bus, lambda: self.peers)
        self.profiles = Profiles(registry, database)
        self.chains = ChainPublisher(bus, database, self.applied, self.reach, self._spawn, lambda: self.peers,
                                     self.window_secs)
        self.routes = Routes(bus, self.window_secs + ROUTE_LINGER_EXTRA_SECS, self._spawn)
        # What resumes here read of other processes' part of the log (after a restart, every resume
        # reads the old process's): process → its entries lately read, so the next resumes read less.
        self._foreign: dict[str, RecentEntries] = {}
        self._foreign_upto: dict[str, str] = {}  # process → the entry up to which what is kept is complete
        self._foreign_reads: dict[str, asyncio.Task[None]] = {}  # process → the read extending what is kept
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsaved: set[str] = set()  # sockets whose records changed since the last save (_save_record)
        self._saving = False
        # Closes a local socket whose place a resume on another process took (set by ChatService).
        self.on_retire: Callable[[Connection], None] | None = None
        self._beating: asyncio.Task[None] | None = None
        self._resync_pending = False  # Redis lost the log and this process has not resynced its sockets yet

    # Lifetime

    async def start(self) -> None:
        started = await self.bus.start(self._apply)
        # The reader starts after this process's own first entry: remember it as
        # applied, or a resume that reads up to it while the next entries arrive
        # would find no link from Redis's part to memory's ("history trimmed").
        self.recent.add(started, process_started(self.bus.process_id))
        self._mark_applied(started)
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

    def _spawn(self, coroutine) -> asyncio.Task[Any]:
        # A fresh context: a request's storage deadline (storage/deadline.py) must not bound work it leaves behind.
        task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _beat_forever(self) -> None:
        failing = False
        while True:
            try:
                await self.beat()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as error:
                if not failing:
                    log.warning("heartbeat failed: %s", error)
                failing = True
                # Soon, not in HEARTBEAT_SECS: if Redis came back without the
                # log, the other processes refuse this one's users until its
                # socket ids are written again (the breaker makes it cheap).
                await asyncio.sleep(RETRY_SECS)
                continue
            await self.bus.next_beat(HEARTBEAT_SECS)

    async def beat(self) -> None:
        """One heartbeat: say we are alive, learn of the others, clean up after dead ones and lost history."""
        peers_before = self.peers
        self.peers, dead, lost = await self.bus.beat()
        if lost:
            self.open_sockets.forget_all()
            self._resync_pending = True
            # The heartbeats went too: the others reappear as they beat again;
            # until then this process must not believe it is alone.
            self.peers = max(self.peers, peers_before)
        if self._resync_pending:
            await self.history_lost()  # retried at the next beat if Redis fails again meanwhile
            self._resync_pending = False
        for process_id in dead:
            self.open_sockets.process_died(process_id)
            await self._reap(process_id)
        self.routes.prune()
        if len(self._foreign) > 4:  # the old processes of a few restarts at most
            self._foreign = dict(list(self._foreign.items())[-4:])

    async def history_lost(self) -> None:
        """Redis lost the log (it restarted, or was flushed): resync this process's sockets, closing none.

        Some event may have been committed and never reached a socket, and
        nothing can tell which. What Redis held of these sockets is written
        again (their ids for the 428 rule, their views), then a RESYNC entry
        goes through the new log: applying it sends every socket here one
        ``resync`` frame, positioned in the new epoch, and restarts its
        record there (_resync_sockets). The client refetches what it shows:
        everything committed before the entry is in that, everything after it
        arrives live. Old positions answer ``resume_failed`` (another epoch).
        """
        connections = self.registry.connections()
        log.warning("Redis lost the event log (restarted or flushed): resyncing %d sockets", len(connections))
        await self.cache.refresh_sockets(self.registry.connected_users())
        self.routes.rehold(self.registry.connected_users())
        await self.routes.flush()
        self._foreign.clear()
        viewing: dict[tuple[int, int], list[str]] = collections.defaultdict(list)
        for connection in connections:
            for conversation_id in self.registry.socket_state(connection.socket_id)[1]:
                viewing[conversation_id, connection.user_id].append(connection.socket_id)
        for (conversation_id, user_id), socket_ids in viewing.items():
            members = await self._members(conversation_id)
            await self.bus.change_viewers(conversation_id, user_id, socket_ids, True, members)
        await self.publish([resync(self.bus.process_id)])

    def _resync_sockets(self, epoch: str, entry_id: str) -> int:
        """Applying this process's RESYNC entry: each socket here is told, and its record starts at the entry.

        Return how many sockets were told.
        """
        sent = self.registry.send_all(wire.position_head(wire.RESYNC, epoch, entry_id))
        for socket_id, record in self._records.items():
            subscribed, views = self.registry.socket_state(socket_id)
            record["s"], record["h"] = entry_id, [[entry_id, subscribed, views]]
        self._spawn(self._save_sockets())
        return sent

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

    async def reach(self, entry_id: str) -> None:
        """Return once this process applied everything up to that entry, wherever it is in the log (the
        entry may be in another process's inbox: a MARK of this one's, appended after it, is waited for)."""
        if entry_id and id_key(entry_id) > self._applied:
            await self.applied(await self.bus.mark())

    async def applied(self, entry_id: str) -> None:
        """Return once this process has applied the entry (or after APPLIED_WAIT_SECS): one it reads,
        as an append returns it ("" when every entry went to other processes: nothing to wait for)."""
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
            self.recent.add(entry_id, entry)
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
            sent = registry.send_all(wire.position_head(entry.frame, epoch, entry_id))
            if meta.get("room") == "drop":
                registry.drop_conversation(meta["c"])
            return sent
        if kind in (CONVERSATION, VIEWERS):  # Entry.reaches, from the same facts
            frame = wire.viewers_change(meta["c"], meta["n"]) if kind == VIEWERS else entry.frame
            return registry.send(registry.conversation_audience(meta["c"], meta["m"]),
                                 wire.position_head(frame, epoch, entry_id))
        if kind == GLOBAL:
            return registry.send(registry.global_sockets(), wire.position_head(entry.frame, epoch, entry_id))
        if kind == SUBSCRIPTION:
            self._apply_subscription(entry_id, meta)
        elif kind == SOCKETS_CLOSED:
            self.open_sockets.closed_elsewhere(meta)
            for _, socket_id in meta["s"]:
                connection = registry.connection(socket_id) if meta.get("r") else None
                if connection is not None and self.on_retire is not None:
                    self.on_retire(connection)  # a resume on another process took its place
        elif kind == RESYNC and meta.get("p") == self.bus.process_id:
            return self._resync_sockets(epoch, entry_id)
        elif kind == STARTED and meta.get("p") != self.bus.process_id:
            self.peers = max(self.peers, 1)  # a new process: stop answering alone at once
        return 0

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
        self._save_record(socket_id)

    async def _save_sockets(self) -> None:
        try:
            await self.bus.save_sockets(dict(self._records), self.window_secs + 2 * SOCKET_REFRESH_SECS)
        except Exception as error:
            log.warning("socket records not saved: %s", error)

    def _save_record(self, socket_id: str) -> None:
        """Save a socket's record soon, in one round trip with every other record that changed meanwhile.

        Under a storm thousands of sockets open at once, each with a record
        to save: one write each would queue on the connection pool. The
        batch takes each record as it is when it leaves, so a later change
        is never overwritten by an earlier one.
        """
        self._unsaved.add(socket_id)
        if not self._saving:
            self._saving = True
            self._spawn(self._save_unsaved())

    async def _save_unsaved(self) -> None:
        try:
            while self._unsaved:
                batch, self._unsaved = self._unsaved, set()
                # A socket closed meanwhile is gone from _records: its end was written at its close.
                records = {s: self._records[s] for s in batch if s in self._records}
                if not records:
                    continue
                try:
                    await self.bus.save_sockets(records, self.window_secs + 2 * SOCKET_REFRESH_SECS)
                except Exception as error:
                    log.warning("%d socket records not saved: %s", len(records), error)
        finally:
            self._saving = False

    # Publishing

    async def publish(self, entries: Sequence[Entry]) -> None:
        """Append entries to the log; return once applied here (or after APPLIED_WAIT_SECS)."""
        await self.applied(await self.bus.append(entries))

    # Shared limits and counts

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
        await self.publish([subscription("global", user_id, socket_ids)])

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
        covered = ""
        sources: list[Any] = []
        if resume is not None:
            try:
                old, start, old_socket = await self._resumable(user_id, resume)
            except ResumeFailed as error:
                old, failure = None, str(error)
        # From its first position on, the socket's entries (and the old one's views') must reach this
        # process: routed here, and applied up to a point after that.
        await self.applied(await self.routes.hold(user_id, old["h"][-1][2] if old is not None else ()))
        if old is not None:
            try:
                # Read before the socket is registered: from then on nothing
                # may wait, or live entries would pass by it.
                fetched, covered, sources = await self._history(start, old_socket, old)
            except ResumeFailed as error:
                old, failure = None, str(error)
        self.registry.add(connection, profile)
        at = self._applied_id
        history: list[list[Any]] = [[at, False, []]]
        frames: list[bytes] = []
        if old is not None:
            try:
                history, frames = replay(
                    old, old_socket, self._extended(fetched, covered, at), self.bus.epoch, connection.position_tail
                )
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
        if old is not None and sources:
            self._records[socket_id]["o"] = sources  # its replayed part is in other processes' lanes
        self._save_record(socket_id)
        if views:
            # Before the first frame: the user never stops viewing, so no
            # count drops in between if her other socket closes next.
            await self._carry_views(user_id, socket_id, views)
        head, epoch = wire.position_head, self.bus.epoch
        if old is not None:
            # The position asked for: resuming from it again replays the same frames.
            first_frame = head(wire.resumed(socket_id, user_id, len(frames)), epoch, start)
        elif resume is not None:
            first_frame = head(wire.resume_failed(socket_id, user_id, failure), epoch, at)
        else:
            first_frame = head(wire.connected(socket_id, user_id), epoch, at)
        retire = old_socket if old is not None and "e" not in old else None
        return [first_frame + connection.position_tail, *frames], retire

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
        await self.reach(entry_id)  # the position may come from a process ahead of this one
        return record, entry_id, old_socket

    async def _history(self, start: str, old_socket: str, old: dict[str, Any]) -> tuple[EntryBatch, str, list[Any]]:
        """What the old socket was sent from ``start`` on, as its processes read the log; the entry it
        reaches (one this process applied: what follows it, this process read too, the socket's routes
        being here); and where the new socket's history lies (its record's "o").

        A socket's entries are in its process's lanes, except those a resume
        replayed to it: these are in the lanes of the process it resumed, up
        to where its own took over (the record's "o": [[process, up to entry],
        ...], oldest first). So a resumed socket is resumed again exactly,
        wherever each part of its history was read.
        """
        upto = self._applied_id
        source = old_socket[:PROCESS_ID_CHARS]
        start_key = id_key(start)
        parts = [(process_id, until) for process_id, until in old.get("o", ()) if id_key(until) >= start_key]
        fetched: EntryBatch = []
        after = ""  # the entry the previous part ended at (the next part reads what follows it)
        for process_id, until in parts:
            if after:
                fetched += await self.bus.read(after, until, process_id, exclusive=True) or []
            else:
                fetched = await self.bus.read(start, until, process_id) or []
                if not fetched:
                    raise ResumeFailed("history trimmed: the position is no longer in the log")
            after = until
        if source == self.bus.process_id:
            if after:
                rest = self.recent.between(after, upto) if self.recent.holds(after) else None
                rest = rest[1:] if rest else await self.bus.read(after, upto, exclusive=True) or []
            else:
                rest = self.recent.between(start, upto)
                if rest is None:
                    rest, upto = await self._read_older(start)
        elif after:
            rest = await self.bus.read(after, upto, source, exclusive=True) or []
        else:
            rest = await self._read_foreign(source, start, upto)
        if not after and not rest:
            raise ResumeFailed("history trimmed: the position is no longer in the log")
        history = [list(part) for part in parts]
        if source != self.bus.process_id:
            history.append([source, upto])
        return fetched + (rest or []), upto, history

    async def _read_older(self, start: str) -> tuple[EntryBatch | None, str]:
        """This process's part of the log from ``start`` on, read from Redis only as far as memory does
        not reach (kept in memory), and the entry it reaches."""
        oldest = self.recent.oldest_id()
        upto = oldest if oldest is not None and id_key(oldest) > id_key(start) else self._applied_id
        fetched = await self.bus.read(start, upto)
        if fetched:
            self.recent.extend_back(fetched)
        return fetched, upto

    async def _read_foreign(self, source: str, start: str, upto: str) -> EntryBatch | None:
        """Another process's part of the log from ``start`` up to ``upto``, read from Redis only as far as
        what resumes here read of it lately does not reach.

        After a restart every resume is of the old process's sockets: the
        first one reads its part back to its position, the others (whose
        positions are mostly newer) only what was appended since.
        """
        kept = self._foreign.get(source)
        if kept is not None and kept.holds(start):
            # One read at a time extends what is kept: the resumes of a storm wait for it together.
            while id_key(self._foreign_upto[source]) < id_key(upto):
                reading = self._foreign_reads.get(source)
                if reading is None or reading.done():  # a done one may not have been popped yet
                    reading = self._foreign_reads[source] = self._spawn(self._extend_foreign(source, kept))
                    reading.add_done_callback(
                        lambda done: self._foreign_reads.pop(source) if self._foreign_reads.get(source) is done else None)
                await asyncio.shield(reading)
            fetched = kept.between(start, upto)
            if fetched:
                return fetched
        fetched = await self.bus.read(start, upto, source)
        if fetched and (kept is None or not kept.holds(start)) and source not in self._foreign_reads:
            kept = self._foreign[source] = RecentEntries()
            for entry_id, entry in fetched:
                kept.add(entry_id, entry)
            self._foreign_upto[source] = upto
        return fetched

    async def _extend_foreign(self, source: str, kept: RecentEntries) -> None:
        """Add to what is kept of another process's part of the log what it gained up to this process's
        applied entry."""
        covered, upto = self._foreign_upto[source], self._applied_id
        newest = id_key(kept.newest_id() or "0-0")
        for entry_id, entry in await self.bus.read(covered, upto, source, exclusive=True) or []:
            if id_key(entry_id) > newest:  # never twice, whatever read came first
                kept.add(entry_id, entry)
        if self._foreign.get(source) is kept:
            self._foreign_upto[source] = upto

    def _extended(self, fetched: EntryBatch, covered: str, upto: str) -> EntryBatch:
        """``fetched`` (the log up to ``covered``) followed by what this process applied since, up to ``upto``."""
        if covered == upto:
            return fetched
        rest = self.recent.between(covered, upto)  # the log moved on while it was read
        if rest is None:
            raise ResumeFailed("history trimmed: the position is no longer in the log")
        return fetched + rest[1:]

    async def disconnect(self, connection: Connection) -> bool:
        """Forget a closed socket: its views end (announced), its record stays for a resume. False if unknown."""
        return bool(await self.disconnect_all([connection]))

    async def disconnect_all(self, connections: Sequence[Connection]) -> list[Connection]:
        """``disconnect`` for many sockets at once (a shutdown closes every one): their records end in one
        round trip, and each conversation's views of one user end in one call. Return those it knew."""
        known: list[Connection] = []
        ended_views: dict[tuple[int, int], list[str]] = {}  # (conversation, user) → sockets that viewed it
        # Records whose last change is not saved yet (_save_record): saved with their end, or a
        # resume from the socket's last frames would find no record.
        unsaved: dict[str, dict[str, Any]] = {}
        now = time.monotonic()
        for connection in connections:
            views = self.registry.remove(connection)
            if views is None:
                continue
            known.append(connection)
            socket_id = connection.socket_id
            record = self._records.pop(socket_id, None)
            if record is not None and socket_id in self._unsaved:
                self._unsaved.discard(socket_id)
                unsaved[socket_id] = record
            self._closed[socket_id] = now
            self.closing.add(socket_id)
            for conversation_id in views:
                ended_views.setdefault((conversation_id, connection.user_id), []).append(socket_id)
        if not known:
            return known
        gone = {c.user_id for c in known if not self.registry.user_sockets(c.user_id)}
        while next(iter(self._closed.values())) < now - CLOSED_MEMORY_SECS:
            self._closed.popitem(last=False)
        end = self._applied_id  # nothing after this entry reaches them
        try:
            ending = list(ended_views.items())
            for first in range(0, len(ending), VIEWS_ENDED_AT_ONCE):
                await asyncio.gather(*(self._end_views(c, u, socket_ids)
                                       for (c, u), socket_ids in ending[first:first + VIEWS_ENDED_AT_ONCE]))
        finally:
            self.closing.difference_update(connection.socket_id for connection in known)
        try:
            if unsaved:
                await self.bus.save_sockets(unsaved, self.window_secs + 2 * SOCKET_REFRESH_SECS)
            await self.bus.end_sockets({connection.socket_id: end for connection in known}, self.window_secs)
        except Exception as error:
            log.warning("%d socket records not ended: %s", len(known), error)
        if gone:
            await self.routes.release(gone)
        return known

    async def retire_remote(self, user_id: int, socket_id: str) -> None:
        """Close a socket of another process that a resume replaced: its process retires it, the others forget it."""
        await self.publish([sockets_closed([(user_id, socket_id)], retired=True)])

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


