"""Runs jobs as real processes on the executor host (TMMS) and reports how they ended.

Each job starts under a small per-job shepherd (:mod:`tm.executor.shim`) that makes itself a
child subreaper, leads a new session, forks the job's shell and stays as the root of the job's
process tree: every descendant, even one that called ``setsid()`` or double-forked, stays below
it. The runner talks to the shepherd with signals: ``SIGTERM`` kills the whole tree (the
shepherd freezes it, sends TERM, and KILL after ``kill_grace``), ``SIGUSR1`` stops it,
``SIGUSR2`` continues it. The shepherd exits with the shell's own status, so ``JobEnd`` reports
the job as if the shell were the process.

How a shepherd starts is the launcher's business (:mod:`tm.executor.launcher`): the executor
has them forked by one zygote process (a fork per job, no interpreter start; the shepherd is
the zygote's child and the zygote reports its end and its tree's rusage), or a fresh
interpreter per job with ``spawnProcess`` (the default here, for stand-ins). With the zygote the
pid comes a moment after the order: a kill or suspend meanwhile is carried out once it is
known. If the zygote dies, the jobs it had are reported lost (``JobEnd.lost``) once what is left
of their trees has been killed.

As a last resort, ``last_resort_grace`` after a kill (longer than the shepherd's grace) on the
injected clock, the runner kills what it can find itself: the descendants of the shepherd in
``/proc``, its process group, then the shepherd (by pid: it need not be the runner's child).
Output goes straight from the job to files (opened by the shepherd, or opened here and handed
to it): the daemon never sits in the data path.

File-system work that may block (a slow or NFS file system) never runs on the reactor thread.
With the zygote, the job's shepherd checks the working directory and opens the output files
itself, after its fork (the runner only works out their paths), and a file it cannot open
fails the start; with the other launchers that work, and with any launcher the assembling of
the ``-l`` log file at an end, go through ``blocking`` (the executor passes its own small
thread pool). A start is therefore asynchronous: :meth:`JobRunner.start` returns a Deferred.
Every start that cannot succeed fails it with :class:`JobStartError`, whose reason a user
understands.

The request's types, checks and files are in :mod:`tm.executor.request`, the last resort by
``/proc`` in :mod:`tm.executor.lastresort`; their names stay importable from here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from tm import trace
from tm.core.jobtime import format_duration, format_limit
from tm.executor.joblog import JobLog
from tm.executor.lastresort import LAST_RESORT_ROUNDS as LAST_RESORT_ROUNDS
from tm.executor.lastresort import kill_trees
from tm.executor.lastresort import shepherd_ready as shepherd_ready
from tm.executor.launcher import (
    SHIM_PATH,
    Launcher,
    LaunchError,
    ShepherdArgs,
    ShepherdEnd,
    SpawnLauncher,
    StartRefused,
    ZygoteLauncher,
)
from tm.executor.outputs import OutputPaths, finish_files
from tm.executor.request import (
    DEFAULT_LOG_DIR,
    JobEnd,
    JobOutputs,
    JobStartError,
    OutputFiles,
    RunRequest,
    check_request,
    names_a_home,
    open_outputs,
    output_files,
)
from tm.executor.request import LOGFILE_SECTION_CAP as LOGFILE_SECTION_CAP
from tm.executor.request import MAX_REASON as MAX_REASON
from tm.executor.signals import JobSignals, _RunningJob

__all__ = ["SHIM_PATH", "JobEnd", "JobRunner", "JobStartError", "RunRequest"]

# Added to the shepherd's grace: time for its freeze, its KILL rounds and its own exit.
LAST_RESORT_MARGIN = 5.0
KILLED_BEFORE_START = "killed before it started"

T = TypeVar("T")
#: Runs ``f(*args)`` where it may block and returns a Deferred of its result.
Blocking = Callable[..., "defer.Deferred[Any]"]


def timeout_reason(limit: float, run_time: float) -> str:
    """The reason of an end at the time limit: the limit, and how long the job ran."""
    return f"time limit of {format_limit(limit)} reached: stopped after {format_duration(run_time)}"


def run_inline(f: Callable[..., T], *args: Any) -> defer.Deferred[T]:
    """A ``blocking`` that runs the work at once, on the caller's thread (tests, simple tools)."""
    return defer.maybeDeferred(f, *args)


class JobRunner(JobSignals):
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        clock: Any,
        log_dir: str = DEFAULT_LOG_DIR,
        kill_grace: float = 10.0,
        last_resort_grace: float | None = None,
        blocking: Blocking = run_inline,
        launcher: str | Launcher = "spawn",
    ) -> None:
        """``kill_grace``: seconds the shepherd gives a killed job between TERM and KILL.

        ``last_resort_grace``: seconds on ``clock`` after which the runner kills a job whose
        shepherd has not ended it; by default ``kill_grace + LAST_RESORT_MARGIN``.

        ``blocking(f, *args)``: runs file-system work that may block (opening output files,
        assembling log files) and returns a Deferred of its result; the executor gives a
        bounded thread pool of its own. By default the work runs at once on the caller's thread.

        ``launcher``: how shepherds start (see :mod:`tm.executor.launcher`): ``"zygote"``, forked
        by one helper process (the executor's choice: a fork per job; compiled where it is built,
        ``"zygote-native"`` or ``"zygote-python"`` to choose), ``"spawn"``, a fresh
        interpreter per job through ``reactor.spawnProcess`` (the default, so that a stand-in
        for ``spawnProcess`` can play the processes), or a :class:`Launcher`.
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
        self._blocking = blocking
        self._jobs: dict[tuple[int, int], _RunningJob] = {}
        #: The output files of the jobs started here, for ReadOutput (tm/executor/outputs.py).
        self.remembered_outputs = OutputPaths()
        if launcher == "spawn":
            self._launcher: Launcher = SpawnLauncher(reactor)
        elif launcher == "zygote":
            self._launcher = ZygoteLauncher(reactor)
        elif launcher in ("zygote-native", "zygote-python"):
            self._launcher = ZygoteLauncher(reactor, launcher.partition("-")[2])
        elif isinstance(launcher, str):
            raise ValueError(f"unknown launcher {launcher!r}")
        else:
            self._launcher = launcher
        self._job_log = JobLog(self.log)
        if isinstance(self._launcher, ZygoteLauncher):
            self._launcher.batch = self._job_log.batch  # the answers of one read: one line

    @property
    def launcher(self) -> Launcher:
        return self._launcher

    def stop(self) -> defer.Deferred[None]:
        """Let go of the launcher's helper process, if any (after :meth:`kill_all`)."""
        return self._launcher.stop()

    # -- starting ---------------------------------------------------------------------------

    def start(self, request: RunRequest, on_end: Callable[[JobEnd], None]) -> defer.Deferred[int]:
        """Start a job; the Deferred fires with its shepherd's pid once it runs.

        It fails with :class:`JobStartError` if the job cannot start. It fires with 0 if the job
        was killed while its files were being opened: it never ran, and its end (``killed``) has
        been given to ``on_end``. Otherwise ``on_end`` gets the end once the job has ended (and
        its log file, if any, has been written).
        """
        trace.point("executor", "start", request.job_id)
        key = (request.job_id, request.attempt)
        if key in self._jobs:
            return defer.fail(
                JobStartError(f"job {request.job_id} attempt {request.attempt} is already running")
            )
        try:
            check_request(request)
        except JobStartError as e:
            return defer.fail(e)
        job = _RunningJob(request=request, on_end=on_end)
        self._jobs[key] = job
        if not getattr(self._launcher, "opens_files", False):
            d = self._blocking(open_outputs, request, self._log_dir)
        elif names_a_home(request):  # ~name: a user's lookup, in the pool
            d = self._blocking(output_files, request, self._log_dir)
        else:  # its shepherd opens its files: nothing here touches the file system
            try:
                files = output_files(request, self._log_dir)
            except JobStartError as e:
                self._forget(job)
                return defer.fail(e)
            return self._launch(job, files)
        d.addErrback(self._openFailed, job)
        d.addCallback(self._spawn, job)
        return d

    def _openFailed(self, failure: Failure, job: _RunningJob) -> Failure:
        self._forget(job)
        if failure.check(JobStartError):
            return failure
        self.log.failure(
            "job {job_id}.{attempt}: unexpected error while opening its files",
            failure,
            job_id=job.request.job_id,
            attempt=job.request.attempt,
        )
        return Failure(
            JobStartError(
                f"cannot prepare the job's files: unexpected error ({failure.getErrorMessage()})"
            )
        )

    def _spawn(
        self, outputs: JobOutputs | OutputFiles, job: _RunningJob
    ) -> int | defer.Deferred[int]:
        request = job.request
        if job.killed:
            # Killed while its files were being opened (or their paths worked out): never runs.
            if isinstance(outputs, JobOutputs):
                outputs.close()
            now = self._clock.seconds()
            self.log.info(
                "job {job_id}.{attempt} killed before it started",
                job_id=request.job_id,
                attempt=request.attempt,
            )
            job.ended = True
            self._deliver(
                job,
                JobEnd(
                    job_id=request.job_id,
                    attempt=request.attempt,
                    exit_code=None,
                    signal=None,
                    killed=True,
                    started_at=now,
                    ended_at=now,
                    reason=KILLED_BEFORE_START,
                ),
            )
            return 0
        trace.point("executor", "files-opened", request.job_id)
        if isinstance(outputs, JobOutputs):
            job.stderr_created = outputs.stderr_created
        return self._launch(job, outputs)

    def _launch(self, job: _RunningJob, files: JobOutputs | OutputFiles) -> defer.Deferred[int]:
        """Have the job's shepherd started, with its files opened (closed once the launcher
        has them) or to be opened by the shepherd."""
        request = job.request
        fds: tuple[int, int, int] | None = None
        if isinstance(files, JobOutputs):
            outputs, wanted = files, None
            job.stdout_path, job.stderr_path = files.stdout_path, files.stderr_path
            fds = (files.null_fd, files.out_fd, files.err_fd)
        else:
            outputs, wanted = None, files
            job.stdout_path, job.stderr_path = files.stdout, files.stderr
        self.remembered_outputs.remember(request.job_id, job.stdout_path, job.stderr_path)
        job.started_at = self._clock.seconds()
        if request.time_limit is not None:
            job.limit_timer = self._clock.callLater(
                max(0.0, request.time_limit), self._timeLimitReached, job
            )
        env = dict(request.env)
        env["TM_JOB_ID"] = str(request.job_id)
        env["TM_ATTEMPT"] = str(request.attempt)
        if request.array_index is not None:  # signed: tm/core/arrays.py
            env["TM_ARRAY_INDEX"] = str(request.array_index)
        args = ShepherdArgs(
            grace=float(self._kill_grace),
            umask=request.umask,
            cwd=request.cwd,
            shell=request.shell,
            command=request.command,
            files=wanted,
        )
        job.launching = True
        try:
            d = self._launcher.launch(
                args,
                env,
                fds,
                lambda pid, remove: self._shepherdStarted(job, pid, remove),
                lambda end: self._jobExited(job, end),
            )
        except BaseException as e:
            if outputs is not None:
                outputs.close()
            return defer.fail(self._launchFailed(Failure(e), job))
        if outputs is not None:
            d.addBoth(outputs.closing)
        d.addCallbacks(
            lambda pid: self._launched(job, pid), lambda failure: self._launchFailed(failure, job)
        )
        return d

    def _launchFailed(self, failure: Failure, job: _RunningJob) -> Failure:
        request = job.request
        job.launching = False
        self._forget(job)
        e = failure.value
        if isinstance(e, StartRefused):
            return Failure(JobStartError(e.reason))
        if isinstance(e, LaunchError):
            return Failure(JobStartError(f"cannot start the job: {e.reason}"))
        if isinstance(e, OSError):
            return Failure(JobStartError(f"cannot start the job: {e.strerror or e}"))
        if isinstance(e, (ValueError, TypeError)):
            # check_request catches what we know of; this is what it did not foresee.
            return Failure(JobStartError(f"cannot start the job: {e}"))
        self.log.failure(
            "job {job_id}.{attempt}: unexpected error while starting its shepherd",
            failure,
            job_id=request.job_id,
            attempt=request.attempt,
        )
        return Failure(JobStartError(f"cannot start the job: unexpected error ({e})"))

    def _shepherdStarted(self, job: _RunningJob, pid: int, remove_empty_stderr: bool) -> None:
        """The shepherd's pid is known: anything asked meanwhile is sent now."""
        trace.point("executor", "forked", job.request.job_id)
        job.pid = pid
        job.stderr_created = job.stderr_created or remove_empty_stderr
        job.launching = False
        job.spawned = True
        if job.ended:
            return
        if job.killed:
            self._sendKill(job)
        elif job.stop_wanted:
            job.stop_wanted = False
            self.suspend(job.request.job_id, job.request.attempt)

    def _launched(self, job: _RunningJob, pid: int) -> int:
        self._job_log.started(job.request.job_id, job.request.attempt, pid)
        return pid

    def _forget(self, job: _RunningJob) -> None:
        """Drop a job that will not run, or whose end has been handed over; wake its waiters."""
        key = (job.request.job_id, job.request.attempt)
        if self._jobs.get(key) is job:
            del self._jobs[key]
        if job.kill_timer is not None and job.kill_timer.active():
            job.kill_timer.cancel()
        job.kill_timer = None
        self._stopLimit(job)
        waiters, job.waiters = job.waiters, []
        for d in waiters:
            d.callback(None)

    def _timeLimitReached(self, job: _RunningJob) -> None:
        """The job has run as long as its request allows: its whole tree is stopped (TERM,
        then KILL after the grace, by its shepherd) and it ends ``timed_out``."""
        job.limit_timer = None
        if job.ended or job.killed:
            return
        job.timed_out = True
        self.log.info(
            "job {job_id}.{attempt} reached its time limit of {limit} s: stopping it",
            job_id=job.request.job_id,
            attempt=job.request.attempt,
            limit=job.request.time_limit,
        )
        self.kill(job.request.job_id, job.request.attempt)

    @staticmethod
    def _stopLimit(job: _RunningJob) -> None:
        if job.limit_timer is not None and job.limit_timer.active():
            job.limit_timer.cancel()
        job.limit_timer = None

    # -- ending -----------------------------------------------------------------------------

    def _jobExited(self, job: _RunningJob, outcome: ShepherdEnd) -> None:
        trace.point("executor", "reaped", job.request.job_id)
        job.ended = True
        request = job.request
        exit_code, sig = outcome.exit_code, outcome.signal
        if outcome.lost is not None:
            # Its end will never be known; its shepherd may still be killing its tree (it got
            # TERM when its parent ended): no grace, nothing of the job may run on.
            self.log.warn(
                "job {job_id}.{attempt} lost: {why}",
                job_id=request.job_id,
                attempt=request.attempt,
                why=outcome.lost,
            )
            kill_trees([job.pid])
        # The shepherd has killed everything below it, unless it was itself killed outright;
        # then whatever stayed in its process group gets no further grace.
        try:
            self._killGroup(job.pid)
        except OSError:
            self.log.failure(
                "job {job_id}.{attempt}: cannot kill what is left of its group",
                job_id=request.job_id,
                attempt=request.attempt,
            )
        if job.kill_timer is not None and job.kill_timer.active():
            job.kill_timer.cancel()
        job.kill_timer = None
        self._stopLimit(job)
        ended_at = self._clock.seconds()
        if outcome.lost is not None:
            text = f"lost: {outcome.lost}"
        elif job.timed_out:
            text = timeout_reason(request.time_limit or 0.0, ended_at - job.started_at)
        elif job.killed:
            text = "killed on request"
        elif sig is not None:
            text = f"killed by signal {sig}"
        elif exit_code == 0:
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
            ended_at=ended_at,
            reason=text,
            lost=outcome.lost is not None,
            timed_out=job.timed_out and outcome.lost is None,
            cpu_user=outcome.cpu_user,
            cpu_system=outcome.cpu_system,
            max_rss_kib=outcome.max_rss_kib,
        )
        self._job_log.ended(request.job_id, request.attempt, text)
        tidy = job.stderr_created and job.stderr_path != job.stdout_path
        if request.logfile is None and not tidy:
            self._deliver(job, end)
            return
        # The end is handed over only once the log file is written (or failed to be) and an
        # empty stderr file removed: the job's end is then complete, and stays listed as
        # running meanwhile.
        d = self._blocking(finish_files, request, job.stdout_path, job.stderr_path, end, tidy)
        d.addErrback(self._logfileFailed, request)
        d.addCallback(lambda _: self._deliver(job, end))

    def _logfileFailed(self, failure: Failure, request: RunRequest) -> None:
        if failure.check(OSError):
            self.log.warn(
                "cannot write the log file of job {job_id}.{attempt}: {error}",
                job_id=request.job_id,
                attempt=request.attempt,
                error=failure.getErrorMessage(),
            )
        else:
            self.log.failure(
                "cannot write the log file of job {job_id}.{attempt}",
                failure,
                job_id=request.job_id,
                attempt=request.attempt,
            )

    def _deliver(self, job: _RunningJob, end: JobEnd) -> None:
        # Out of the table first: whoever gets the end sees the job no longer running.
        key = (job.request.job_id, job.request.attempt)
        if self._jobs.get(key) is job:
            del self._jobs[key]
        try:
            job.on_end(end)
        except Exception:
            self.log.failure("on_end of job {job_id} failed", job_id=job.request.job_id)
        self._forget(job)

    def output_paths(self, job_id: int, attempt: int) -> tuple[str, str] | None:
        """Where the attempt's stdout and stderr go, while the runner has it."""
        job = self._jobs.get((job_id, attempt))
        return None if job is None or not job.stdout_path else (job.stdout_path, job.stderr_path)

    def running(self) -> list[tuple[int, int]]:
        """Every job from its start order until its end is handed over (starting, running,
        or ended with its log file being written)."""
        return list(self._jobs)

    def kill_all(self) -> defer.Deferred[None]:
        """Kill every job; the Deferred fires once each has ended (or failed to start)."""
        waits: list[defer.Deferred[None]] = []
        for (job_id, attempt), job in list(self._jobs.items()):
            d: defer.Deferred[None] = defer.Deferred()
            job.waiters.append(d)
            waits.append(d)
            self.kill(job_id, attempt)
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)
