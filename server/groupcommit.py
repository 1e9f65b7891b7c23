"""Group commit: items submitted for one key while a batch of that key is in flight wait for the next batch.

Under load a conversation then commits many messages per round of database
work instead of one transaction each (docs/BENCHMARKS.md has the measured
effect), and they are stored and delivered in one order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, AsyncContextManager, Awaitable, Callable, Generic, Hashable, Sequence, TypeVar

from server import metrics

log = logging.getLogger("chat")

Item = TypeVar("Item")
Result = TypeVar("Result")

# commit(key, items) → (one outcome per item: a result, or the exception its submitter gets;
#                       anything the delivery needs to know of the commit)
Commit = Callable[[Hashable, Sequence[Any]], Awaitable[tuple[Sequence[Any], Any]]]
# deliver(key, items, outcomes, context) → runs after a successful commit, before anyone is answered.
Deliver = Callable[[Hashable, Sequence[Any], Sequence[Any], Any], Awaitable[None]]


class GroupCommit(Generic[Item, Result]):
    """Batches per key, one in flight per key while the guard (a per-key lock) serializes them; every
    submitter is answered, whatever happens.

    A batch is committed, then delivered (events, cache), then each submitter
    gets its result. A failure of the commit is every submitter's error; a
    failure after the commit is logged and does not change the answers: the
    items are stored, and answering an error would invite a duplicate.

    With ``deadline_secs`` a batch must have taken the guard and committed
    within that time of its oldest item's arrival, else every submitter gets
    ``deadline_error()``: an item queued behind a batch that waits for a
    frozen database gets one deadline, not the batch's and then its own.
    Delivery is never cancelled: it runs after the commit.
    """

    def __init__(
        self, commit: Commit, deliver: Deliver,
        guard: Callable[[Hashable], AsyncContextManager[None]] = lambda key: contextlib.nullcontext(),
        deadline_secs: float | None = None, deadline_error: Callable[[], Exception] = TimeoutError,
        counts_messages: bool = True,
    ) -> None:
        self._commit = commit
        self._counts_messages = counts_messages  # the commit and delivery metrics are the messages'

        self._deadline_secs = deadline_secs
        self._deadline_error = deadline_error
        self._deliver = deliver
        self._guard = guard  # held around a batch's commit and delivery (a per-key lock)
        # key → items not yet in a batch, each with its future and when it was submitted (perf_counter)
        self._waiting: dict[Hashable, list[tuple[Item, asyncio.Future, float]]] = {}
        self._first_arrival: dict[Hashable, float] = {}  # key → loop time its oldest waiting item arrived
        self._tasks: set[asyncio.Task[None]] = set()  # batches in flight, kept so none is garbage-collected
        self._unanswered = 0

    async def submit(self, key: Hashable, item: Item) -> Result:
        """Queue an item for the key's next batch; return its result once delivered."""
        result: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._unanswered += 1
        result.add_done_callback(self._answered)
        waiting = self._waiting.get(key)
        submitted = time.perf_counter()
        if waiting is None:
            self._waiting[key] = [(item, result, submitted)]
            self._first_arrival[key] = asyncio.get_running_loop().time()
            task = asyncio.ensure_future(self._run(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            waiting.append((item, result, submitted))
        return await result

    def _answered(self, _: asyncio.Future) -> None:
        self._unanswered -= 1

    async def _run(self, key: Hashable) -> None:
        arrived = self._first_arrival[key]
        batch: list[tuple[Item, asyncio.Future, float]] = []
        items: list[Item] = []
        outcomes: Sequence[Result | BaseException] = ()
        deadline = (
            asyncio.timeout_at(arrived + self._deadline_secs) if self._deadline_secs else contextlib.nullcontext()
        )
        try:
            async with contextlib.AsyncExitStack() as guarded:
                try:
                    async with deadline:
                        try:
                            await guarded.enter_async_context(self._guard(key))
                        finally:
                            # The batch is taken once the guard is held (or given up):
                            # whatever arrived while the previous batch held it joins this
                            # one. Taken before, it would hold one item, and group commit
                            # would commit one message per transaction.
                            batch = self._waiting.pop(key)
                            self._first_arrival.pop(key, None)
                            items = [item for item, _, _ in batch]
                        commit_started = time.perf_counter()
                        outcomes, context = await self._commit(key, items)
                except TimeoutError:
                    raise self._deadline_error() from None
                if self._counts_messages:
                    metrics.COMMIT_LATENCY.observe(time.perf_counter() - commit_started)
                    metrics.COMMIT_BATCH_SIZE.observe(len(items))
                    metrics.MESSAGES_COMMITTED.inc(
                        sum(1 for outcome in outcomes if not isinstance(outcome, BaseException))
                    )
                try:
                    await self._deliver(key, items, outcomes, context)
                except Exception:
                    log.exception("delivery of a committed batch of %d (key %s) failed", len(items), key)
                else:
                    delivered = time.perf_counter()
                    for (_, _, submitted), outcome in zip(batch, outcomes):
                        if self._counts_messages and not isinstance(outcome, BaseException):
                            metrics.DELIVERY_LATENCY.observe(delivered - submitted)
        except BaseException as error:
            outcomes = [error] * len(items)
            if not isinstance(error, Exception):
                raise
        finally:
            for index, (_, result, _) in enumerate(batch):
                if result.done():
                    continue
                outcome = outcomes[index] if index < len(outcomes) else RuntimeError("batch ended without a result")
                if isinstance(outcome, BaseException):
                    result.set_exception(outcome)
                else:
                    result.set_result(outcome)

    async def close(self) -> None:
        """Wait for the batches in flight (at shutdown, after no new item can arrive)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._tasks)

    def submitted(self) -> int:
        """Items submitted and not yet answered (waiting for a batch, or in one)."""
        return self._unanswered
