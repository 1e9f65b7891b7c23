"""The event log's entries: the kinds, what each carries, and who each reaches.

An entry is a kind, a few JSON-able facts (``meta``, one-letter keys: they
are stored with every entry) and, for the kinds delivered to sockets, the
frame, encoded once. Every entry is built by one of the functions below, so
what each kind carries is written down once; :meth:`Entry.reaches` is the
one audience rule, used by the resume's replay and position check
(``server/resume.py``) and by live delivery (``server/hub.py``, through
``Registry.conversation_audience`` and the global subscription), and
:meth:`Entry.lane` says where the partitioned log keeps it. The bus's Lua
scripts store and order the encoded entries; for VIEWERS and SUBSCRIPTION,
built here too, a script fills in the one fact only its atomic step knows
(the count, the sockets that changed: storage/bus.py's PLACEHOLDER).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Iterable, Sequence

# A process id is this many hex characters; a socket id starts with its process's id.
PROCESS_ID_CHARS = 12

# Kinds, and who gets them.
ALL = "all"  # every socket: conversations created, joined, left, deleted
GLOBAL = "global"  # sockets subscribed to the global chat
CONVERSATION = "conversation"  # the members the entry names, and the conversation's viewers
VIEWERS = "viewers"  # a viewer count: the members the entry names, and the viewers
SUBSCRIPTION = "subscription"  # a socket started or stopped listening (not delivered)
STARTED = "started"  # a process started: the log is never empty, so every position names an entry
STOPPED = "stopped"  # a process stopped cleanly (it also wakes that process's own reader, to end it)
SOCKETS_CLOSED = "closed"  # sockets closed on their process: the others stop taking them as open (not delivered)
RESYNC = "resync"  # Redis lost the log: the publishing process's sockets are told their view may be stale
MARK = "mark"  # a point in the log one process waits to reach (not delivered)

# Where the bus keeps an entry so that every process with an audience for it reads it
# (Entry.lane), and nothing else: each process reads the shared lane and its own inbox.
SHARED = "s"  # the lane every process reads
PROCESSES = "p"  # the inboxes of the processes named
AUDIENCE = "c"  # the inboxes of the processes holding a socket of a member or a viewer


@dataclasses.dataclass(frozen=True)
class Entry:
    """One event of the log: who gets it (``kind`` and ``meta``) and its frame, without a position."""

    kind: str
    meta: dict[str, Any]
    frame: bytes = b""

    def reaches(self, user_id: int, subscribed: bool, views: Collection[int]) -> bool:
        """Whether a socket of ``user_id`` listening so (the global chat, ``views``) is sent this entry.

        RESYNC reaches its process's sockets, which the replay checks by the socket's id.
        """
        if self.kind == ALL:
            return True
        if self.kind == GLOBAL:
            return subscribed
        if self.kind in (CONVERSATION, VIEWERS):
            return user_id in self.meta.get("m", ()) or self.meta["c"] in views
        return False


    def lane(self) -> tuple[str, str]:
        """Where the log keeps this entry: SHARED, PROCESSES and their ids (comma-separated), or
        AUDIENCE and "<conversation>|<member>,<member>,...".

        The counterpart of ``reaches`` for storage: an entry goes to every
        process that may hold a socket it reaches, whether open or closed
        within the resume window (storage/bus.py routes AUDIENCE by the
        users and views each process holds), and a SUBSCRIPTION only to the
        processes of its sockets, the only ones that act on it.
        """
        kind = self.kind
        if kind in (CONVERSATION, VIEWERS):
            return AUDIENCE, f"{self.meta['c']}|{','.join(map(str, self.meta['m']))}"
        if kind == SUBSCRIPTION:
            return PROCESSES, ",".join(sorted({socket_id[:PROCESS_ID_CHARS] for socket_id in self.meta["s"]}))
        if kind in (RESYNC, STOPPED, MARK):
            return PROCESSES, self.meta["p"]
        return SHARED, ""


EntryBatch = list[tuple[str, Entry]]  # (entry id, entry), in log order


def id_key(entry_id: str) -> tuple[int, int]:
    """A log id as a sortable pair ("1700000000000-3" → (1700000000000, 3)); raises ValueError if malformed."""
    ms, _, seq = entry_id.partition("-")
    if not ms.isdigit() or not seq.isdigit() or len(entry_id) > 40:
        raise ValueError(f"not a log id: {entry_id!r}")
    return int(ms), int(seq)


# The entries, one function per kind (and per room change).


def conversation_event(conversation_id: int, members: Iterable[int], frame: bytes) -> Entry:
    """A conversation's message: "c" the conversation, "m" its members when it was committed."""
    return Entry(CONVERSATION, {"c": conversation_id, "m": list(members)}, frame)


def global_event(frame: bytes) -> Entry:
    """A global-chat message: no facts (who subscribed is each socket's own)."""
    return Entry(GLOBAL, {}, frame)


def room_change(change: str, conversation_id: int, user_id: int | None, frame: bytes) -> Entry:
    """A conversation created or joined ("join"), left ("leave") or deleted ("drop", no user): to everyone.

    A "drop" also ends every view of the conversation.
    """
    meta: dict[str, Any] = {"room": change, "c": conversation_id}
    if user_id is not None:
        meta["u"] = user_id
    return Entry(ALL, meta, frame)


def viewer_count(conversation_id: int, count: int | str, members: Sequence[int]) -> Entry:
    """Distinct viewers of a conversation: "n" the count, "m" the members who hear it (the frame is made on delivery)."""
    return Entry(VIEWERS, {"c": conversation_id, "n": count, "m": list(members)})


def subscription(
    op: str, user_id: int, socket_ids: Sequence[str], conversation_id: int | None = None,
    process_id: str | None = None, closed: bool = False,
) -> Entry:
    """Sockets ("s") of a user start listening to the global chat ("global"), or start or stop viewing
    a conversation ("view", "unview"; "c"). "p" the process that appended it; "closed": they stopped
    because they closed (a resume keeps their views)."""
    meta: dict[str, Any] = {"op": op, "u": user_id, "s": list(socket_ids)}
    if conversation_id is not None:
        meta["c"] = conversation_id
    if process_id is not None:
        meta["p"] = process_id
    if closed:
        meta["closed"] = True
    return Entry(SUBSCRIPTION, meta)


def sockets_closed(sockets: Iterable[tuple[int, str]], retired: bool = False) -> Entry:
    """Sockets ("s": [user, socket] pairs) closed; "r": a resume replaced them, so their process closes them."""
    meta: dict[str, Any] = {"s": [[user_id, socket_id] for user_id, socket_id in sockets]}
    if retired:
        meta["r"] = True
    return Entry(SOCKETS_CLOSED, meta)


def process_started(process_id: str) -> Entry:
    return Entry(STARTED, {"p": process_id})


def process_stopped(process_id: str) -> Entry:
    return Entry(STOPPED, {"p": process_id})


def mark(process_id: str) -> Entry:
    """A point in process "p"'s own inbox: once it applied this, it applied everything appended before."""
    return Entry(MARK, {"p": process_id})


def resync(process_id: str) -> Entry:
    """Redis lost the log: process "p" tells each of its sockets (API.md §3)."""
    return Entry(RESYNC, {"p": process_id})
