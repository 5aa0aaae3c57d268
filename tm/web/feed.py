"""What the dashboard shows over time: ends and waiting times per minute, the recent ends,
and a coalesced "something changed" for the live pages.

An observer of the dispatcher (``Dispatcher.observers``): told of every transition and
submission in the reactor thread, it does constant work per call and never raises into
the dispatcher's transition flow.  Listeners are called at most once per
``min_interval`` seconds however many jobs change state (a sweep of ten thousand jobs
ending at once is one update of the page).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from tm.core.model import Job, JobState, Transition

#: Minutes the charts cover.
WINDOW_MINUTES = 60
#: Ended jobs kept in memory for the job lists (all users together).
RECENT_ENDS = 2000
#: The fastest rate of updates to the pages: a few per second.
MIN_INTERVAL = 0.25


@dataclass
class _Minute:
    ends: int = 0
    failed: int = 0
    waits: int = 0
    wait_total: float = 0.0
    wait_max: float = 0.0


class DashboardFeed:
    log = Logger()

    def __init__(self, clock: Any, min_interval: float = MIN_INTERVAL) -> None:
        self.clock = clock
        self.min_interval = min_interval
        self.minutes: dict[int, _Minute] = {}
        self.recent: deque[Job] = deque(maxlen=RECENT_ENDS)
        self.listeners: list[Callable[[], None]] = []
        self.version = 0
        self._call: Any = None
        self._last = float("-inf")

    # --- the dispatcher's observer interface ------------------------------------------

    def transition(self, job: Job, t: Transition) -> None:
        try:
            at = self.clock.seconds() if t.at is None else t.at
            if t.new is JobState.RUNNING and t.old is not JobState.RUNNING:
                m = self._minute(at)
                m.waits += 1
                waited = max(0.0, at - job.submitted_at)
                m.wait_total += waited
                m.wait_max = max(m.wait_max, waited)
            if t.new.terminal:
                m = self._minute(at)
                m.ends += 1
                if t.new is not JobState.FINISHED:
                    m.failed += 1
                self.recent.append(job)
            self.changed()
        except Exception:  # the dashboard must never break a state change
            self.log.failure("dashboard feed: transition of job {id} not counted", id=t.job_id)

    def submitted(self, jobs: list[Job]) -> None:
        if jobs:
            self.changed()

    def pass_done(self, seconds: float) -> None:
        pass

    # --- per minute -------------------------------------------------------------------

    def _minute(self, at: float) -> _Minute:
        index = int(at // 60)
        m = self.minutes.get(index)
        if m is None:
            m = self.minutes[index] = _Minute()
            for old in [i for i in self.minutes if i <= index - WINDOW_MINUTES]:
                del self.minutes[old]
        return m

    def charts(self, now: float) -> dict[str, Any]:
        """The last :data:`WINDOW_MINUTES` minutes, oldest first: ends per minute (and how
        many of them did not finish well), and the mean and longest wait from submission to
        start of the jobs that started in each minute."""
        last = int(now // 60)
        rows = []
        for index in range(last - WINDOW_MINUTES + 1, last + 1):
            m = self.minutes.get(index, _Minute())
            rows.append(
                {
                    "minute": index * 60,
                    "ends": m.ends,
                    "failed": m.failed,
                    "started": m.waits,
                    "wait_mean": round(m.wait_total / m.waits, 3) if m.waits else None,
                    "wait_max": round(m.wait_max, 3) if m.waits else None,
                }
            )
        return {"minutes": rows}

    # --- coalesced notification -----------------------------------------------------------

    def changed(self) -> None:
        self.version += 1
        if self._call is not None and self._call.active():
            return
        delay = max(0.0, self._last + self.min_interval - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._notify)

    def _notify(self) -> None:
        self._call = None
        self._last = self.clock.seconds()
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:
                self.log.failure("dashboard listener failed")

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
