"""Group commit: the state changes of one reactor turn are written in one transaction.

Transitions queue up; the first one of a turn schedules a flush for the next
turn.  One transaction is in flight at a time, so transitions are applied in
the order they were queued; those that arrive meanwhile form the next batch.

While the database is unavailable, a batch is kept and written again, in order and ahead of
everything queued since, with a growing pause (up to :data:`MAX_RETRY_DELAY`): nothing the
dispatcher decided is lost, and each change's Deferred fires only once it is committed (a
placement's start order waits for its commit).  Any other error fails the batch's changes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tm.core.model import Transition
from tm.protocol.commands import DatabaseUnavailable

ApplyBatch = Callable[[list[Transition], float], Awaitable[list[bool]]]

FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 5.0


class TransitionWriter:
    log = Logger()

    def __init__(self, clock: IReactorTime, apply_batch: ApplyBatch) -> None:
        self.clock = clock
        self.apply_batch = apply_batch
        self._queue: list[tuple[Transition, Deferred]] = []
        self._scheduled = False
        self._writing = False
        self.batches = 0
        self._retry_delay = 0.0  # 0 while the database answers

    def write(self, transition: Transition) -> Deferred:
        """Queue one compare-and-set; fires with True when it was applied and committed."""
        d: Deferred = Deferred()
        self._queue.append((transition, d))
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

    def _flush(self) -> None:
        self._scheduled = False
        if not self._queue:
            return
        batch, self._queue = self._queue, []
        self._writing = True
        ensureDeferred(self._write(batch))

    async def _write(self, batch: list[tuple[Transition, Deferred]]) -> None:
        try:
            # seconds() takes no argument: mypy takes it for a method without self (see above)
            results = await self.apply_batch(
                [t for t, _ in batch], self.clock.seconds()  # type: ignore[misc]
            )
        except DatabaseUnavailable as e:
            if not self._retry_delay:
                self.log.warn("the database is unavailable ({e}): keeping {n} state change(s) "
                              "to write when it is back", e=str(e), n=len(batch))
            self._retry_delay = min(MAX_RETRY_DELAY, max(FIRST_RETRY_DELAY,
                                                         self._retry_delay * 2))
            self._queue[:0] = batch
            self._writing = False
            self._schedule(self._retry_delay)
            return
        except Exception as e:
            self.log.failure("writing {n} state changes failed", n=len(batch))
            for _, d in batch:
                d.errback(e)
        else:
            if self._retry_delay:
                self.log.info("the database is back: state changes written again")
                self._retry_delay = 0.0
            self.batches += 1
            for (_, d), ok in zip(batch, results, strict=True):
                d.callback(ok)
        self._writing = False
        if self._queue:
            self._schedule()
