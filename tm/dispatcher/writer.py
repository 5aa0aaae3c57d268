"""Group commit: the state changes of one reactor turn are written in one transaction.

Transitions queue up; the first one of a turn schedules a flush for the next
turn.  One transaction is in flight at a time, so transitions are applied in
the order they were queued; those that arrive meanwhile form the next batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from tm.core.model import Transition

ApplyBatch = Callable[[list[Transition], float], Awaitable[list[bool]]]


class TransitionWriter:
    log = Logger()

    def __init__(self, clock: IReactorTime, apply_batch: ApplyBatch) -> None:
        self.clock = clock
        self.apply_batch = apply_batch
        self._queue: list[tuple[Transition, Deferred]] = []
        self._scheduled = False
        self._writing = False
        self.batches = 0

    def write(self, transition: Transition) -> Deferred:
        """Queue one compare-and-set; fires with True when it was applied and committed."""
        d: Deferred = Deferred()
        self._queue.append((transition, d))
        self._schedule()
        return d

    def _schedule(self) -> None:
        if not self._scheduled and not self._writing:
            self._scheduled = True
            # A zope interface declares its methods without ``self``, and mypy (without the
            # mypy-zope plugin) binds the first argument as self: here the delay.
            self.clock.callLater(0, self._flush)  # type: ignore[arg-type]

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
        except Exception as e:
            self.log.failure("writing {n} state changes failed", n=len(batch))
            for _, d in batch:
                d.errback(e)
        else:
            self.batches += 1
            for (_, d), ok in zip(batch, results, strict=True):
                d.callback(ok)
        finally:
            self._writing = False
            if self._queue:
                self._schedule()
