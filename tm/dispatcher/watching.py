"""Waiting for many jobs at once: who waits for which jobs, and waking them when one of
those jobs changes state.

A wait (``WaitJobs``) names a user's jobs by ranges of ids and/or a group. The dispatcher
tells :class:`Watchers` of every state change once it is committed (so what a woken waiter
reads from the store is what changed); the watches it concerns fire a short moment later,
so that a burst of changes (a sweep's jobs starting) wakes each waiter once, not per job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred

from tm.core.model import Job

#: Changes within this many seconds after the first one wake a waiter once.
SETTLE = 0.1


@dataclass(eq=False)
class Watch:
    user: str
    ranges: Sequence[tuple[int, int]]
    group: str | None
    changed: Deferred = field(default_factory=Deferred)
    timer: Any = None

    def concerns(self, job: Job) -> bool:
        if job.user != self.user:
            return False
        if self.group is not None and job.spec.group != self.group:
            return False
        return not self.ranges or any(a <= job.id <= b for a, b in self.ranges)


class Watchers:
    """The live watches; the dispatcher's transitions call :meth:`committed`."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.watches: list[Watch] = []

    def __bool__(self) -> bool:
        return bool(self.watches)

    def add(self, user: str, ranges: Sequence[tuple[int, int]], group: str | None) -> Watch:
        watch = Watch(user, ranges, group)
        self.watches.append(watch)
        return watch

    def remove(self, watch: Watch) -> None:
        if watch in self.watches:
            self.watches.remove(watch)
        if watch.timer is not None and watch.timer.active():
            watch.timer.cancel()
        watch.timer = None

    def committed(self, result: Any, job: Job) -> Any:
        """A state change of ``job`` was written (a callback on the writer's Deferred: passes
        ``result`` on)."""
        for watch in self.watches:
            if watch.timer is None and not watch.changed.called and watch.concerns(job):
                watch.timer = self.clock.callLater(SETTLE, self._fire, watch)
        return result

    def _fire(self, watch: Watch) -> None:
        watch.timer = None
        self.remove(watch)
        if not watch.changed.called:
            watch.changed.callback(None)
