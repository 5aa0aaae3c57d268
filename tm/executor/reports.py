"""The executor's reports of job ends: kept until the dispatcher has committed them, sent again
with a growing delay when a report fails, a bounded number of reports in flight at once.

Ends are batched per reactor turn (issue 13, point 2): the ends of one turn, and those that
became ready while every place in flight was taken, go in one ``JobsFinished``
(tm/protocol/batches.py; several when they do not fit one AMP value), a lone end in
``JobFinished``. The dispatcher answers a batch once each of its ends is committed or
refused, naming the ends it could not record: only those are kept and sent again. A
dispatcher that does not know ``JobsFinished`` (the previous version) gets each end alone
until the link is made again.

A mixin of :class:`tm.executor.service.Executor` (its state is the executor's).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.protocols import amp

from tm.dispatcher_client import DispatcherLink
from tm.executor.runner import JobEnd
from tm.executor.usage import end_usage
from tm.protocol import batches, commands, records

#: Reports of job ends in flight at once, each one box of one end or of a batch of them (the
#: dispatcher answers each only once its ends are written, and refuses more than 64 requests
#: in flight on one link).
MAX_REPORTS_IN_FLIGHT = 16
#: A report that failed is sent again after this delay, doubled at each failure up to the cap.
REPORT_RETRY_FIRST = 1.0
REPORT_RETRY_MAX = 60.0
#: Ends already reported that are remembered, so that a start order for one of those attempts
#: (sent again by a dispatcher that missed the answer) reports the end again instead of running
#: the job a second time.
REMEMBERED_ENDS = 1024


@dataclass(frozen=True)
class Reported:
    end: JobEnd
    lost: bool
    pid: int
    started_at: float


class EndReports:
    """Reports of ends (the executor's part that sends them)."""

    log: Logger
    reactor: Any
    link: DispatcherLink
    host: str
    lease: float | None
    unreported: list[JobEnd]
    started: dict[tuple[int, int], tuple[int, float]]
    lease_killed: set[tuple[int, int]]
    _reported: OrderedDict[tuple[int, int], Reported]

    def _init_reports(self) -> None:
        self.unreported = []
        self._reporting: set[tuple[int, int]] = set()  # ends whose report is under way
        #: Ends whose report failed: key -> (failures so far, time before which not to resend).
        self._report_retry: dict[tuple[int, int], tuple[int, float]] = {}
        self._reports_in_flight = 0  # boxes (JobFinished, JobsFinished) awaiting their answer
        self._flushing = False
        self._flush_again = False
        self._flush_scheduled = False
        self._single_reports = False  # the dispatcher of this link lacks JobsFinished
        self.report_boxes = 0  # boxes sent, and the ends they carried
        self.reported_ends = 0

    def activity(self) -> None:
        raise NotImplementedError

    def job_ended(self, end: JobEnd) -> None:
        self.unreported.append(end)
        self.activity()
        # Reported at the end of this turn, with the other ends of the turn.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.reactor.callLater(0, self._turn_ended)

    def _turn_ended(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _connected(self) -> None:
        # A new link: every end waiting for a retry is sent now (its failure count is kept).
        self._single_reports = False
        self._report_retry = {
            key: (failures, 0.0) for key, (failures, _) in self._report_retry.items()
        }
        self._flush()
        self._heartbeat()  # the dispatcher learns this host's load at once

    def _heartbeat(self) -> None:
        raise NotImplementedError

    def _end_pending(self, key: tuple[int, int]) -> bool:
        return any((end.job_id, end.attempt) == key for end in self.unreported)

    def _flush(self) -> None:
        """Send the reports that are due, at most MAX_REPORTS_IN_FLIGHT boxes at a time.

        Called at the end of a turn with ends, on each finished report, each heartbeat and each
        new link; a call from inside (a report that failed at once) makes the running one look
        again instead of recursing."""
        if self._flushing:
            self._flush_again = True
            return
        self._flushing = True
        try:
            self._flush_again = True
            while self._flush_again:
                self._flush_again = False
                self._send_due()
        finally:
            self._flushing = False

    def _send_due(self) -> None:
        if not self.link.connected or self._reports_in_flight >= MAX_REPORTS_IN_FLIGHT:
            return
        now = self.reactor.seconds()
        due = []
        for end in self.unreported:
            key = (end.job_id, end.attempt)
            if key in self._reporting or self._report_retry.get(key, (0, 0.0))[1] > now:
                continue
            due.append(end)
        while due and self._reports_in_flight < MAX_REPORTS_IN_FLIGHT:
            n = 1
            if not self._single_reports:
                rows, n = records.fit_to_value(batches.END_FIELDS, due, self._end_arguments)
            if n <= 1:  # one end (or one alone filling a value: JobFinished, a value per field)
                rows, n = [self._end_arguments(due[0])], 1
            ends, due = due[:n], due[n:]
            self._reporting.update((end.job_id, end.attempt) for end in ends)
            self._reports_in_flight += 1
            ensureDeferred(self._report(ends, rows))

    def _end_arguments(self, end: JobEnd) -> dict[str, Any]:
        """JobFinished's arguments for ``end``."""
        key = (end.job_id, end.attempt)
        lease_lost = key in self.lease_killed
        # Lost either way: stopped for the lease, or its end unknown (its zygote ended).
        lost = lease_lost or end.lost
        reason = (
            (
                f"stopped on {self.host}: no contact with the dispatcher for longer than "
                f"the executor's lease ({self.lease or 0:.0f} s)"
            )
            if lease_lost
            else end.reason
        )
        # ended_at is the process's own end, not the time of this report: an end that waited
        # for the dispatcher (away, or refusing) is recorded when it happened.
        return {
            "job_id": end.job_id,
            "attempt": end.attempt,
            "exit_code": end.exit_code,
            "signal": end.signal,
            "killed": end.killed,
            "ended_at": end.ended_at,
            "reason": reason,
            "lost": lost,
            **end_usage(end, lost),
        }

    async def _report(self, ends: list[JobEnd], rows: list[dict[str, Any]]) -> None:
        failed: dict[int, str] = {}
        self.report_boxes += 1
        self.reported_ends += len(ends)
        try:
            if len(ends) == 1:
                await self.link.call(commands.JobFinished, **rows[0])
            else:
                try:
                    answer = await self.link.call(batches.JobsFinished, ends=rows)
                except amp.UnhandledCommand:
                    self.log.info("the dispatcher lacks JobsFinished: ends are reported alone")
                    self._single_reports = True
                    self._reports_in_flight -= 1
                    self._reporting.difference_update((e.job_id, e.attempt) for e in ends)
                    self._flush()
                    return
                why = answer.get("error") or "not recorded by the dispatcher"
                failed = {i: why for i in answer.get("failed") or () if 0 <= i < len(ends)}
        except Exception as e:
            failed = dict.fromkeys(range(len(ends)), str(e) or e.__class__.__name__)
        self._reports_in_flight -= 1
        done: set[int] = set()
        for i, (end, row) in enumerate(zip(ends, rows, strict=True)):
            if i in failed:
                self._report_failed(end, failed[i], log=len(failed) == 1)
            else:
                self._report_done(end, bool(row["lost"]))
                done.add(id(end))
        if done:
            self.unreported = [end for end in self.unreported if id(end) not in done]
        if len(failed) > 1:
            self.log.info(
                "the ends of {n} jobs not reported yet ({e}); trying again later",
                n=len(failed),
                e=next(iter(failed.values())),
            )
        self._flush()  # a place in flight is free

    def _report_failed(self, end: JobEnd, error: str, log: bool) -> None:
        key = (end.job_id, end.attempt)
        failures = self._report_retry.get(key, (0, 0.0))[0] + 1
        delay = min(REPORT_RETRY_MAX, REPORT_RETRY_FIRST * 2 ** (failures - 1))
        self._report_retry[key] = (failures, self.reactor.seconds() + delay)
        if log:
            self.log.info(
                "end of job {id} not reported yet ({e}); trying again in {d:.0f} s",
                id=end.job_id,
                e=error,
                d=delay,
            )
        self._reporting.discard(key)

    def _report_done(self, end: JobEnd, lost: bool) -> None:
        key = (end.job_id, end.attempt)
        self._reporting.discard(key)
        self._report_retry.pop(key, None)
        pid, started_at = self.started.pop(key, (0, end.started_at))
        self.lease_killed.discard(key)
        self._reported[key] = Reported(end=end, lost=lost, pid=pid, started_at=started_at)
        while len(self._reported) > REMEMBERED_ENDS:
            self._reported.popitem(last=False)
