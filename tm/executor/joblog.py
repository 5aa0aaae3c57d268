"""The runner's log lines of its jobs' starts and ends, one event per batch of them.

A line in the executor's log costs more CPU than the rest of a job's start in the executor
(Twisted's text observer formats a time stamp and the event for each): with a thousand jobs
a second, two lines per job were a fifth of the executor's CPU. The answers of the zygote
arrive many to one read of its socket; while such a read is handled (:meth:`JobLog.batch`),
the starts and ends it reports are gathered and written as one line each (``3 jobs started:
5.1 (pid 100), ...``). Outside a batch, and for a batch of one, a line is written at once in
the words of one job (``job 5.1 started, pid 100``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from twisted.logger import Logger


class JobLog:
    def __init__(self, log: Logger) -> None:
        self._log = log
        self._depth = 0
        self._started: list[tuple[int, int, int]] = []
        self._ended: list[tuple[int, int, str]] = []

    def started(self, job_id: int, attempt: int, pid: int) -> None:
        self._started.append((job_id, attempt, pid))
        if not self._depth:
            self._flush()

    def ended(self, job_id: int, attempt: int, reason: str) -> None:
        self._ended.append((job_id, attempt, reason))
        if not self._depth:
            self._flush()

    @contextmanager
    def batch(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth:
                self._flush()

    def _flush(self) -> None:
        started, self._started = self._started, []
        ended, self._ended = self._ended, []
        if len(started) == 1:
            job_id, attempt, pid = started[0]
            self._log.info(
                "job {job_id}.{attempt} started, pid {pid}", job_id=job_id, attempt=attempt, pid=pid
            )
        elif started:
            jobs = ", ".join(f"{j}.{a} (pid {p})" for j, a, p in started)
            self._log.info("{count} jobs started: {jobs}", count=len(started), jobs=jobs)
        if len(ended) == 1:
            job_id, attempt, reason = ended[0]
            self._log.info(
                "job {job_id}.{attempt} ended: {reason}",
                job_id=job_id,
                attempt=attempt,
                reason=reason,
            )
        elif ended:
            jobs = "; ".join(f"{j}.{a}: {r}" for j, a, r in ended)
            self._log.info("{count} jobs ended: {jobs}", count=len(ended), jobs=jobs)
