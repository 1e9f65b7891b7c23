"""Resume: what an old socket would have been sent after its position, and nothing else.

A socket's record (kept by the hub, saved to the bus) says whose it was, its
key, the entry of its first frame and what it listened to from each entry
on ("h": [[entry id, global chat, views], ...]). Replaying the log from the
position's entry with ``Entry.reaches`` (storage/entries.py), the one
audience rule of replay, position checks and live delivery, gives exactly the frames that socket was, or would have
been, sent. Anything that makes this inexact raises :class:`ResumeFailed`.
"""

from __future__ import annotations

import bisect
import collections
from typing import Any

from server import wire
from storage.bus import PROCESS_ID_CHARS
from storage.entries import ALL, RESYNC, SUBSCRIPTION, VIEWERS, Entry, EntryBatch, id_key

# Entries kept in memory for sockets that open while the log moves on.
RECENT_ENTRIES = 20_000


class ResumeFailed(Exception):
    """A resume cannot be exact; the reason is told to the client."""


def replay(
    record: dict[str, Any], old_socket: str, entries: EntryBatch, epoch: str, position_tail: bytes
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
    if start != record["s"] and not first.reaches(user_id, subscribed, views):
        raise ResumeFailed("unknown position")
    history: list[list[Any]] = [[start, subscribed, sorted(views)]]
    frames = []
    for entry_id, entry in entries[1:]:
        meta, kind = entry.meta, entry.kind
        if kind == RESYNC and meta.get("p") == old_socket[:PROCESS_ID_CHARS]:
            # The old socket was told (or would have been) that it may have missed events.
            raise ResumeFailed("history lost (the server or its Redis restarted)")
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
        if entry.reaches(user_id, subscribed, views):
            frame = wire.viewers_change(meta["c"], meta["n"]) if kind == VIEWERS else entry.frame
            frames.append(wire.position_head(frame, epoch, entry_id) + position_tail)
        if kind == ALL and meta.get("room") == "drop" and meta["c"] in views:
            views.discard(meta["c"])
            history.append([entry_id, subscribed, sorted(views)])
    return history, frames


class RecentEntries:
    """The entries this process applied lately, in log order (a resume here reads no Redis for them).

    Kept with their ids' sort keys, so a resume's range is found by bisection:
    after a restart thousands of resumes each ask for a range of it at once.
    Up to twice ``size`` entries are held between trims (the older half goes
    at once: trimming one by one would cost a shift each).
    """

    def __init__(self, size: int = RECENT_ENTRIES) -> None:
        self._size = size
        self._keys: list[tuple[int, int]] = []
        self._entries: list[tuple[str, Entry]] = []

    def add(self, entry_id: str, entry: Entry) -> None:
        self._keys.append(id_key(entry_id))
        self._entries.append((entry_id, entry))
        if len(self._entries) > 2 * self._size:
            del self._keys[:-self._size]
            del self._entries[:-self._size]

    def clear(self) -> None:
        self._keys.clear()
        self._entries.clear()

    def oldest_id(self) -> str | None:
        return self._entries[0][0] if self._entries else None

    def newest_id(self) -> str | None:
        return self._entries[-1][0] if self._entries else None

    def holds(self, entry_id: str) -> bool:
        """Whether memory reaches back to that entry (it may hold it: ``between`` says)."""
        return bool(self._keys) and self._keys[0] <= id_key(entry_id)

    def extend_back(self, batch: EntryBatch) -> None:
        """Keep a range read from the log that reaches the oldest entry held: memory then starts at its start.

        A range that does not reach it (memory moved on meanwhile) would leave
        a hole, and is not kept. Only as much as there is room for is kept,
        the newest of it: memory never drops its newest entries for older ones.
        """
        if not self._entries or not batch:
            return
        oldest = self._entries[0][0]
        oldest_key = self._keys[0]
        if not any(entry_id == oldest for entry_id, _ in batch):
            return
        older = [(entry_id, entry) for entry_id, entry in batch if id_key(entry_id) < oldest_key]
        room = 2 * self._size - len(self._entries)
        if room <= 0 or not older:
            return
        older = older[-room:]
        self._keys[:0] = [id_key(entry_id) for entry_id, _ in older]
        self._entries[:0] = older

    def between(self, first: str, upto: str) -> EntryBatch | None:
        """The entries from ``first`` (included) up to ``upto``, if memory still holds ``first``."""
        first_key = id_key(first)
        start = bisect.bisect_left(self._keys, first_key)
        if start == len(self._keys) or self._keys[start] != first_key:
            return None
        return self._entries[start:bisect.bisect_right(self._keys, id_key(upto))]
