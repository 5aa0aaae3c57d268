"""Signals to a job's shepherd: kill (TERM, then the last resort), stop and continue.

A mixin of :class:`tm.executor.runner.JobRunner`, which owns the jobs (:class:`_RunningJob`,
here), the clock and the grace;
kept apart so that each module stays small. The shepherd's signal protocol is described in
``tm/executor/shim.py``.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.internet.base import DelayedCall
from twisted.logger import Logger

from tm.executor.lastresort import kill_trees, shepherd_ready
from tm.executor.request import JobEnd, RunRequest


@dataclass
class _RunningJob:
    """A job from its start order until its end has been handed over.

    Its phases: opening its files, launching its shepherd (``launching``: the pid is not known
    yet), running (``spawned``, its shepherd's pid known), ended (``ended``, its log file
    perhaps still being assembled). It stays in the runner's table, and in
    :meth:`JobRunner.running`, until its end is handed to ``on_end``.
    """

    request: RunRequest
    on_end: Callable[[JobEnd], None]
    stdout_path: str = ""
    stderr_path: str = ""
    stderr_created: bool = False
    started_at: float = 0.0
    pid: int = 0
    launching: bool = False
    spawned: bool = False
    killed: bool = False
    # Suspended while launching: the shepherd is stopped once its pid is known.
    stop_wanted: bool = False
    # Stopped by the runner itself because it could not yet take SIGUSR1 (see suspend).
    shepherd_stopped: bool = False
    kill_timer: DelayedCall | None = None
    # The request's time limit: the timer, and whether it stopped the job.
    limit_timer: DelayedCall | None = None
    timed_out: bool = False
    ended: bool = False
    waiters: list[defer.Deferred[None]] = field(default_factory=list)


class JobSignals:
    log: Logger
    _jobs: dict[tuple[int, int], _RunningJob]
    _clock: Any
    _last_resort_grace: float

    # -- signals ----------------------------------------------------------------------------

    def _signalShepherd(self, job: _RunningJob, sig: int) -> bool:
        if job.pid <= 0:
            return False  # not spawned: kill(0) would signal the executor's own group
        try:
            os.kill(job.pid, sig)
            return True
        except OSError:
            return False

    def _killGroup(self, pgid: int) -> None:
        if pgid <= 0:
            return  # killpg(0) would kill the executor's own group
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except OSError as e:
            if e.errno != errno.EPERM:
                raise

    def kill(self, job_id: int, attempt: int) -> bool:
        """Kill a job's whole tree; whether the job was found (and still running or starting).

        A job still opening its files is marked, and ends ``killed`` without running."""
        job = self._jobs.get((job_id, attempt))
        if job is None or job.ended:
            return False
        if not job.spawned:
            # Opening its files (it will not run), or its shepherd's pid is not known yet (it
            # is sent TERM as soon as it is).
            if not job.killed:
                job.killed = True
                self.log.info(
                    "job {job_id}.{attempt} killed while starting", job_id=job_id, attempt=attempt
                )
            return True
        job.killed = True
        return self._sendKill(job)

    def _sendKill(self, job: _RunningJob) -> bool:
        job_id, attempt = job.request.job_id, job.request.attempt
        sent = self._signalShepherd(job, signal.SIGTERM)
        if job.shepherd_stopped:
            # Stopped by suspend before it could take USR1: it must run to act on TERM.
            self._continueShepherd(job)
        if job.kill_timer is None:
            job.kill_timer = self._clock.callLater(self._last_resort_grace, self._killHard, job)
        self.log.info("job {job_id}.{attempt} sent TERM", job_id=job_id, attempt=attempt)
        return sent

    def _killHard(self, job: _RunningJob) -> None:
        job.kill_timer = None
        if job.ended:
            return
        self.log.warn(
            "job {job_id}.{attempt} not ended by its shepherd in time, sending KILL",
            job_id=job.request.job_id,
            attempt=job.request.attempt,
        )
        # The shepherd did not do its work (stopped, or stuck). Kill below it first: once it is
        # gone, its orphans go to init and can no longer be told apart. Killed processes cannot
        # fork, and their orphans come to the shepherd, so a few rounds reach the whole tree.
        kill_trees([job.pid])
        self._killGroup(job.pid)
        self._signalShepherd(job, signal.SIGKILL)

    def suspend(self, job_id: int, attempt: int) -> bool:
        job = self._jobs.get((job_id, attempt))
        if job is None or job.ended:
            return False
        if not job.spawned:
            if not job.launching:
                return False  # opening its files: nothing to stop (yet)
            job.stop_wanted = True
            return True
        if shepherd_ready(job.pid):
            return self._signalShepherd(job, signal.SIGUSR1)
        # Just started: USR1 would still kill the shepherd. It blocks its control signals before
        # it forks, so it has no child yet and stopping it stops the whole job; the group covers
        # a child forked since the check.
        if not self._signalShepherd(job, signal.SIGSTOP):
            return False
        job.shepherd_stopped = True
        try:
            os.killpg(job.pid, signal.SIGSTOP)
        except OSError:
            pass  # no group yet: the shepherd has not reached setsid()
        return True

    def resume(self, job_id: int, attempt: int) -> bool:
        job = self._jobs.get((job_id, attempt))
        if job is None or job.ended:
            return False
        if not job.spawned:
            if not job.launching:
                return False
            job.stop_wanted = False
            return True
        sent = False
        if job.shepherd_stopped:
            sent = self._continueShepherd(job)
        if shepherd_ready(job.pid):
            sent = self._signalShepherd(job, signal.SIGUSR2) or sent
        return sent

    def _continueShepherd(self, job: _RunningJob) -> bool:
        job.shepherd_stopped = False
        try:
            os.killpg(job.pid, signal.SIGCONT)
        except OSError:
            pass
        return self._signalShepherd(job, signal.SIGCONT)
