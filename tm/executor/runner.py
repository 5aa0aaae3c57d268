"""Runs jobs as real processes on the executor host (TMMS) and reports how they ended.

Each job starts under ``shim.py``, a small per-job shepherd that makes itself a child subreaper,
leads a new session, forks the job's shell and stays as the root of the job's process tree: every
descendant, even one that called ``setsid()`` or double-forked, stays below it. The runner talks
to the shepherd with signals: ``SIGTERM`` kills the whole tree (the shepherd freezes it, sends
TERM, and KILL after ``kill_grace``), ``SIGUSR1`` stops it, ``SIGUSR2`` continues it. The shepherd
exits with the shell's own status, so ``JobEnd`` reports the job as if the shell were the process.

As a last resort, ``last_resort_grace`` after a kill (longer than the shepherd's grace) on the
injected clock, the runner kills what it can find itself: the descendants of the shepherd in
``/proc``, its process group, then the shepherd. Output goes straight from the job to files
through ``childFDs``: the daemon never sits in the data path.
"""

from __future__ import annotations

import datetime
import errno
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.internet.base import DelayedCall
from twisted.internet.interfaces import IProcessTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from tm.executor import shim

SHIM_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "shim.py")
# Added to the shepherd's grace: time for its freeze, its KILL rounds and its own exit.
LAST_RESORT_MARGIN = 5.0
LAST_RESORT_ROUNDS = 5
DEFAULT_LOG_DIR = os.path.join(os.path.expanduser("~"), ".taskmanager", "logs")
LOGFILE_SECTION_CAP = 10 * 1024 * 1024


class JobStartError(Exception):
    """The job could not be started; ``reason`` says why in words a user understands."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RunRequest:
    job_id: int
    attempt: int
    command: str
    shell: str = "/bin/sh"
    cwd: str = "/"
    umask: int = 0o022
    env: dict[str, str] = field(default_factory=dict)
    stdout: str | None = None
    stderr: str | None = None
    logfile: str | None = None
    slots: int = 1


@dataclass(frozen=True)
class JobEnd:
    job_id: int
    attempt: int
    exit_code: int | None
    signal: int | None
    killed: bool
    started_at: float
    ended_at: float
    reason: str


@dataclass
class _RunningJob:
    request: RunRequest
    on_end: Callable[[JobEnd], None]
    stdout_path: str
    stderr_path: str
    started_at: float
    pid: int = 0
    transport: IProcessTransport | None = None
    killed: bool = False
    # Stopped by the runner itself because it could not yet take SIGUSR1 (see suspend).
    shepherd_stopped: bool = False
    kill_timer: DelayedCall | None = None
    ended: bool = False
    waiters: list[defer.Deferred[None]] = field(default_factory=list)


class _JobProtocol(protocol.ProcessProtocol):
    def __init__(self, runner: JobRunner, job: _RunningJob) -> None:
        self._runner = runner
        self._job = job

    def processExited(self, reason: Failure) -> None:
        # processEnded would also wait for every inherited pipe to close; the job is over now.
        self._runner._jobExited(self._job, reason)


class JobRunner:
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        clock: Any,
        log_dir: str = DEFAULT_LOG_DIR,
        kill_grace: float = 10.0,
        last_resort_grace: float | None = None,
    ) -> None:
        """``kill_grace``: seconds the shepherd gives a killed job between TERM and KILL.

        ``last_resort_grace``: seconds on ``clock`` after which the runner kills a job whose
        shepherd has not ended it; by default ``kill_grace + LAST_RESORT_MARGIN``.
        """
        if last_resort_grace is None:
            last_resort_grace = kill_grace + LAST_RESORT_MARGIN
        if last_resort_grace <= kill_grace:
            raise ValueError("last_resort_grace must be longer than kill_grace")
        self._reactor = reactor
        self._clock = clock
        self._log_dir = log_dir
        self._kill_grace = kill_grace
        self._last_resort_grace = last_resort_grace
        self._jobs: dict[tuple[int, int], _RunningJob] = {}

    # -- starting ---------------------------------------------------------------------------

    def start(self, request: RunRequest, on_end: Callable[[JobEnd], None]) -> int:
        key = (request.job_id, request.attempt)
        if key in self._jobs:
            raise JobStartError(f"job {request.job_id} attempt {request.attempt} is already running")
        cwd = request.cwd
        if not os.path.exists(cwd):
            raise JobStartError(f"working directory {cwd} does not exist")
        if not os.path.isdir(cwd):
            raise JobStartError(f"working directory {cwd} is not a directory")
        stdout_path = self._outputPath(request, request.stdout, "out")
        stderr_path = self._outputPath(request, request.stderr, "err")
        mode = 0o666 & ~request.umask
        opened: list[int] = []
        try:
            out_fd = self._openOutput(stdout_path, mode, "stdout")
            opened.append(out_fd)
            if stderr_path == stdout_path:
                err_fd = out_fd
            else:
                err_fd = self._openOutput(stderr_path, mode, "stderr")
                opened.append(err_fd)
            if request.logfile is not None:
                logfile = self._resolve(request, request.logfile)
                # Checked now so that an unwritable log file fails the start, not the end.
                opened.append(self._openOutput(logfile, mode, "log"))
            null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            opened.append(null_fd)

            env = dict(request.env)
            env["TM_JOB_ID"] = str(request.job_id)
            env["TM_ATTEMPT"] = str(request.attempt)
            job = _RunningJob(
                request=request,
                on_end=on_end,
                stdout_path=stdout_path,
                stderr_path=stderr_path,
                started_at=self._clock.seconds(),
            )
            args = [
                sys.executable, "-I", "-S", SHIM_PATH, repr(float(self._kill_grace)),
                format(request.umask, "o"), cwd, request.shell, request.command,
            ]
            try:
                transport = self._reactor.spawnProcess(
                    _JobProtocol(self, job),
                    sys.executable,
                    args,
                    env=env,
                    childFDs={0: null_fd, 1: out_fd, 2: err_fd},
                )
            except OSError as e:
                raise JobStartError(f"cannot start job: {e.strerror or e}") from e
        finally:
            for fd in opened:
                os.close(fd)
        job.transport = transport
        job.pid = transport.pid
        if not job.ended:
            self._jobs[key] = job
        self.log.info(
            "job {job_id}.{attempt} started, pid {pid}",
            job_id=request.job_id, attempt=request.attempt, pid=job.pid,
        )
        return job.pid

    def _resolve(self, request: RunRequest, path: str) -> str:
        return os.path.normpath(os.path.join(request.cwd, os.path.expanduser(path)))

    def _outputPath(self, request: RunRequest, given: str | None, suffix: str) -> str:
        if given:
            return self._resolve(request, given)
        try:
            os.makedirs(self._log_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            raise JobStartError(f"cannot create log directory {self._log_dir}: {e.strerror}") from e
        return os.path.join(self._log_dir, f"{request.job_id}.{suffix}")

    def _openOutput(self, path: str, mode: int, what: str) -> int:
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        except OSError as e:
            raise JobStartError(f"cannot write {what} file {path}: {e.strerror}") from e

    # -- ending -----------------------------------------------------------------------------

    def _jobExited(self, job: _RunningJob, reason: Failure) -> None:
        job.ended = True
        request = job.request
        self._jobs.pop((request.job_id, request.attempt), None)
        exit_code: int | None = getattr(reason.value, "exitCode", None)
        sig: int | None = getattr(reason.value, "signal", None)
        # The shepherd has killed everything below it, unless it was itself killed outright;
        # then whatever stayed in its process group gets no further grace.
        self._killGroup(job.pid)
        if job.kill_timer is not None and job.kill_timer.active():
            job.kill_timer.cancel()
        job.kill_timer = None
        if job.killed:
            text = "killed on request"
        elif sig is not None:
            text = f"killed by signal {sig}"
        elif reason.check(error.ProcessDone):
            text = "exited normally"
        else:
            text = f"exited with code {exit_code}"
        end = JobEnd(
            job_id=request.job_id,
            attempt=request.attempt,
            exit_code=exit_code,
            signal=sig,
            killed=job.killed,
            started_at=job.started_at,
            ended_at=self._clock.seconds(),
            reason=text,
        )
        self.log.info(
            "job {job_id}.{attempt} ended: {reason}",
            job_id=request.job_id, attempt=request.attempt, reason=text,
        )
        if request.logfile is not None:
            try:
                self._writeLogfile(job, end)
            except OSError:
                self.log.failure("cannot write log file for job {job_id}", job_id=request.job_id)
        try:
            job.on_end(end)
        except Exception:
            self.log.failure("on_end of job {job_id} failed", job_id=request.job_id)
        waiters, job.waiters = job.waiters, []
        for d in waiters:
            d.callback(None)

    def _writeLogfile(self, job: _RunningJob, end: JobEnd) -> None:
        request = job.request
        path = self._resolve(request, request.logfile or "")

        def stamp(t: float) -> str:
            return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")

        parts = [
            "BEGIN command\n", request.command, "\nEND command\n",
            "BEGIN info\n",
            f"host: {socket.gethostname()}\n",
            f"job: {request.job_id}\n",
            f"attempt: {request.attempt}\n",
            f"start time: {stamp(end.started_at)}\n",
            f"end time: {stamp(end.ended_at)}\n",
            f"run time: {end.ended_at - end.started_at:.3f} s\n",
            f"end: {end.reason}\n",
            "END info\n",
        ]
        for name, source in (("stdout", job.stdout_path), ("stderr", job.stderr_path)):
            parts.append(f"BEGIN {name}\n")
            parts.append(self._readCapped(source))
            parts.append(f"END {name}\n")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~request.umask)
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.write("".join(parts))

    def _readCapped(self, path: str) -> str:
        try:
            with open(path, "rb") as f:
                data = f.read(LOGFILE_SECTION_CAP + 1)
        except OSError as e:
            return f"(cannot read {path}: {e.strerror})\n"
        truncated = len(data) > LOGFILE_SECTION_CAP
        text = data[:LOGFILE_SECTION_CAP].decode("utf-8", errors="replace")
        if text and not text.endswith("\n"):
            text += "\n"
        if truncated:
            text += f"(truncated at {LOGFILE_SECTION_CAP} bytes)\n"
        return text

    # -- signals ----------------------------------------------------------------------------

    def _signalShepherd(self, job: _RunningJob, sig: int) -> bool:
        try:
            os.kill(job.pid, sig)
            return True
        except OSError:
            return False

    def _killGroup(self, pgid: int) -> None:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except OSError as e:
            if e.errno != errno.EPERM:
                raise

    def kill(self, job_id: int, attempt: int) -> bool:
        job = self._jobs.get((job_id, attempt))
        if job is None or job.ended:
            return False
        job.killed = True
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
            job_id=job.request.job_id, attempt=job.request.attempt,
        )
        # The shepherd did not do its work (stopped, or stuck). Kill below it first: once it is
        # gone, its orphans go to init and can no longer be told apart. Killed processes cannot
        # fork, and their orphans come to the shepherd, so a few rounds reach the whole tree.
        for _ in range(LAST_RESORT_ROUNDS):
            tree = shim.live_descendants(job.pid)
            if not tree:
                break
            for pid in tree:
                shim.send(pid, signal.SIGKILL)
        self._killGroup(job.pid)
        self._signalShepherd(job, signal.SIGKILL)

    def suspend(self, job_id: int, attempt: int) -> bool:
        job = self._jobs.get((job_id, attempt))
        if job is None or job.ended:
            return False
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

    def running(self) -> list[tuple[int, int]]:
        return list(self._jobs)

    def kill_all(self) -> defer.Deferred[None]:
        """Kill every running job; the Deferred fires once they have all ended."""
        waits: list[defer.Deferred[None]] = []
        for (job_id, attempt), job in list(self._jobs.items()):
            d: defer.Deferred[None] = defer.Deferred()
            job.waiters.append(d)
            waits.append(d)
            self.kill(job_id, attempt)
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)


def shepherd_ready(pid: int) -> bool:
    """Whether the shepherd blocks or catches USR1 and USR2 yet; until then they would kill it.

    Both masks are read: while the shepherd waits in ``sigwaitinfo`` the kernel shows the waited
    signals as unblocked, but by then its handlers for them are installed.
    """
    masks = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"SigBlk:", b"SigCgt:")):
                    masks |= int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return False
    return all(masks >> (sig - 1) & 1 for sig in (signal.SIGUSR1, signal.SIGUSR2))
