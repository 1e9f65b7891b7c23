"""Each chat's events in the log in commit order, whichever process committed them.

A chat's events are numbered by ``seq`` in the database (under the chat's
row lock), and appended after commit; a slower process may append an
earlier one later. ``Bus.append_in_order`` appends an event only after its
predecessor and holds it back otherwise; here the publisher of a held-back
event waits for the predecessor, and fills the gap from the database if it
never comes (its process died between commit and append). An event
committed while Redis was away is appended once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Coroutine, Sequence

from server import wire
from storage.bus import Bus
from storage.entries import Entry, conversation_event, global_event
from storage.database import Database
from storage.errors import is_storage_unavailable
from storage.records import GLOBAL_CHAT_ID, Sequenced, StoredMessage

log = logging.getLogger("chat.hub")

# How long an entry held back for its predecessor waits before the gap is filled from the database.
GAP_WAIT_SECS = 2.0
GAP_POLL_SECS = 0.05
# How often an event committed while Redis was away is offered again.
RETRY_SECS = 0.5


class ChainPublisher:
    """Publishes chats' numbered events in order, for one process."""

    def __init__(
        self, bus: Bus, database: Database, applied: Callable[[str], Awaitable[None]],
        reach: Callable[[str], Awaitable[None]], spawn: Callable[[Coroutine[Any, Any, Any]], None], peers: Callable[[], int], window_secs: float,
    ) -> None:
        self.bus = bus
        self.database = database
        self.applied = applied  # returns once this process applied an entry it reads
        self.reach = reach  # returns once this process applied what came before an entry anywhere in the log
        self.spawn = spawn  # runs background work the hub waits for when stopping
        self.peers = peers
        self.window_secs = window_secs

    async def publish(
        self, chain: int, order: Sequenced, last_message_id: int, entries: Sequence[Entry],
        closes: bool = False, members: Sequence[int] = (),
    ) -> None:
        """Append a chat's event ``order.seq`` after its predecessor; return once applied here.

        ``last_message_id`` is the chat's last message id after this event.
        When the predecessor is late (its process may have died between its
        commit and its append), the gap is filled from the database. When
        Redis is away, the event is announced in the background once it is
        back, and this returns at once.
        """
        name = "g" if chain == GLOBAL_CHAT_ID else str(chain)

        def append() -> Any:
            return self.bus.append_in_order(
                name, order.seq - 1, order.seq, last_message_id, entries, closes, members, alone=not self.peers()
            )

        try:
            last = await append()
        except Exception as error:
            if not is_storage_unavailable(error):
                raise
            # Committed, but Redis is away: announce it once Redis answers
            # again (the append is idempotent: a chat's head never goes back;
            # if Redis came back without the log, a later event may pass it,
            # and the resync covers it).
            log.warning("chat %s event %d not announced yet (%s); retrying in the background", name, order.seq, error)
            self.spawn(self._append_when_back(name, chain, order, append))
            return
        await self._settle(name, chain, order, last)

    async def _settle(self, name: str, chain: int, order: Sequenced, last: str | None) -> None:
        """Wait until an appended event is applied here, or fill the gap before one held back."""
        if last is None:
            await self._wait_or_fill(name, chain, order)
        else:
            await self.applied(last)

    async def _append_when_back(self, name: str, chain: int, order: Sequenced, append) -> None:
        give_up = time.monotonic() + self.window_secs
        while time.monotonic() < give_up:
            await asyncio.sleep(RETRY_SECS)
            try:
                await self._settle(name, chain, order, await append())
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
                await self.reach(head[2])  # released by the predecessor's append (ours came with it)
                return
        head = await self.bus.chain_head(name)
        if head is not None and head[0] >= order.seq:
            await self.reach(head[2])
            return
        missing: list[StoredMessage] = []
        if head is not None:
            missing = await self.database.messages_between(chain, head[1], order.last_message_id)
        members = await self.database.member_ids(chain) if chain != GLOBAL_CHAT_ID and missing else []
        log.warning("chat %s: events before %d never arrived; filling %d messages from the database",
                    name, order.seq, len(missing))
        await self.applied(await self.bus.fill_gap(
            name, order.seq - 1, order.last_message_id, [message_entry(message, members) for message in missing]
        ) or "")


def message_entry(message: StoredMessage, members: Sequence[int]) -> Entry:
    """The log entry announcing a stored message."""
    if message.conversation_id == GLOBAL_CHAT_ID:
        return global_event(wire.new_message(message))
    return conversation_event(message.conversation_id, members, wire.new_message(message))
