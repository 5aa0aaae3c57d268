"""Group commit: the state changes of one reactor turn are written in one transaction.

Transitions queue up; the first one of a turn schedules a flush for the next
turn.  One transaction is in flight at a time, so transitions are applied in
the order they were queued; those that arrive meanwhile form the next batch.

Nothing the dispatcher decided is dropped:

- While the database is unavailable (:class:`~tm.db.errors.StoreUnavailable`: a lost
  connection, a locked or full SQLite file, ...), a batch is kept and written again, in order
  and ahead of everything queued since, with a growing pause (up to :data:`MAX_RETRY_DELAY`).
  Each change's Deferred fires only once it is committed (a placement's start order and an
  end's acknowledgement wait for the commit).
- Any other error may come from one change of the batch: the batch's changes are then
  written one per transaction, in order, so that the others commit.  A change that fails
  alone is tried :data:`SOLO_TRIES` times with the same growing pause; then its Deferred
  fails with the error (the caller re-reads the job: see the dispatcher's ``_resync``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tm import trace
from tm.core.model import Transition
from tm.db.errors import StoreUnavailable

ApplyBatch = Callable[[list[Transition], float], Awaitable[list[bool]]]

FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0
#: How often a change that fails on its own (not an unavailable database) is tried.
SOLO_TRIES = 3


@dataclass
class _Queued:
    transition: Transition
    deferred: Deferred
    failures: int = 0  # failed alone, in a row


class TransitionWriter:
    log = Logger()

    def __init__(self, clock: IReactorTime, apply_batch: ApplyBatch) -> None:
        self.clock = clock
        self.apply_batch = apply_batch
        self._queue: list[_Queued] = []
        self._scheduled = False
        self._writing = False
        self.batches = 0
        self.failed_changes = 0  # changes given up on (their Deferred failed)
        self._retry_delay = 0.0  # 0 while the database answers
        self._solo_delay = 0.0
        self._singles = 0  # the first changes of the queue are written one per transaction

    def write(self, transition: Transition) -> Deferred:
        """Queue one compare-and-set; fires with True when it was applied and committed."""
        d: Deferred = Deferred()
        if trace.ENABLED:
            trace.point("dispatcher", f"write-{transition.new.value}", transition.job_id)
        self._queue.append(_Queued(transition, d))
        self._schedule()
        return d

    def _schedule(self, delay: float = 0.0) -> None:
        if not self._scheduled and not self._writing:
            self._scheduled = True
            # A zope interface declares its methods without ``self``, and mypy (without the
            # mypy-zope plugin) binds the first argument as self: here the delay.
            self.clock.callLater(delay, self._flush)  # type: ignore[arg-type]

    @property
    def waiting_for_database(self) -> bool:
        return self._retry_delay > 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        if self._singles:
            batch, self._queue = self._queue[:1], self._queue[1:]
        else:
            batch, self._queue = self._queue, []
        self._writing = True
        ensureDeferred(self._write(batch))

    @staticmethod
    def _grow(delay: float) -> float:
        return min(MAX_RETRY_DELAY, max(FIRST_RETRY_DELAY, delay * 2))

    async def _write(self, batch: list[_Queued]) -> None:
        delay = 0.0
        if trace.ENABLED:
            for q in batch:
                trace.point("dispatcher", f"writing-{q.transition.new.value}", q.transition.job_id)
        try:
            # seconds() takes no argument: mypy takes it for a method without self (see above)
            results = await self.apply_batch(
                [q.transition for q in batch],
                self.clock.seconds(),  # type: ignore[misc]
            )
        except StoreUnavailable as e:
            if not self._retry_delay:
                self.log.warn(
                    "the database is unavailable ({e}): keeping {n} state change(s) "
                    "to write when it is back",
                    e=str(e),
                    n=len(batch) + len(self._queue),
                )
            self._retry_delay = delay = self._grow(self._retry_delay)
            self._queue[:0] = batch
        except Exception as e:
            if len(batch) > 1:
                # One change may be at fault: write them one by one, the others commit.
                self.log.warn(
                    "writing {n} state changes failed ({e}): writing them one by one",
                    n=len(batch),
                    e=str(e) or type(e).__name__,
                )
                self._queue[:0] = batch
                self._singles = len(batch)
            else:
                queued = batch[0]
                queued.failures += 1
                if queued.failures < SOLO_TRIES:
                    self._solo_delay = delay = self._grow(self._solo_delay)
                    self._queue[:0] = batch
                    self._singles = max(self._singles, 1)
                else:
                    self._solo_delay = 0.0
                    self._singles = max(0, self._singles - 1)
                    self.failed_changes += 1
                    queued.deferred.errback(e)
        else:
            if self._retry_delay:
                self.log.info("the database is back: state changes written again")
                self._retry_delay = 0.0
            self._solo_delay = 0.0
            if self._singles:
                self._singles = max(0, self._singles - len(batch))
            self.batches += 1
            for queued, ok in zip(batch, results, strict=True):
                if trace.ENABLED:
                    t = queued.transition
                    trace.point("dispatcher", f"written-{t.new.value}", t.job_id)
                queued.deferred.callback(ok)
        self._writing = False
        if self._queue:
            self._schedule(delay)
