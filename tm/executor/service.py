"""The TMMS: one user's executor on one host.

It connects out to the dispatcher (no listening port), proves its user, runs
the ``RunJob`` orders it receives (``RunJobs``: those of one dispatcher turn) through
:class:`JobRunner`, reports every end (kept and re-sent until the dispatcher has it; the ends
of one turn together: tm/executor/reports.py), heartbeats with the host's load, and exits
after an idle period without jobs.

Leases: every heartbeat answer renews the executor's lease (its length comes with the answer).
An executor that has heard nothing from the dispatcher for longer than that stops all its jobs
and reports them, once it is back in contact, as lost (the dispatcher requeues them). The
dispatcher declares an absent executor's jobs lost only after twice as long, so two copies of
one job never run at once, and a dispatcher restart shorter than the lease loses nothing.

No single job can make the executor busy or cost it its link: a start that cannot succeed is
answered with the declared ``JobStartFailed`` and its reason (never an undeclared error, which
would make AMP drop the link and the dispatcher place the job again at once); a start order
repeated while the first one is still opening the job's files waits for that one; and an end
whose report fails is sent again with a growing delay, a bounded number at a time.

File-system work that may block never runs on the reactor thread: a job's shepherd opens its
output files itself (tm/executor/runner.py), and what is left (assembling a ``-l`` log file,
reading output for ReadOutput) runs in a small thread pool of the executor's own. A job
counts as running (in heartbeats, for the lease and the idle exit) from its start order until
its end is in hand: while its files are opened, and while its log file is written.
"""

from __future__ import annotations

import getpass
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tm import jobsign
from tm.dispatcher_client import DispatcherLink
from tm.executor.outputs import OutputLocator
from tm.executor.outputtail import OutputTailResponder
from tm.executor.reports import (  # noqa: F401  (MAX_..., REPORT_...: read by the tests)
    MAX_REPORTS_IN_FLIGHT,
    REMEMBERED_ENDS,
    REPORT_RETRY_FIRST,
    REPORT_RETRY_MAX,
    EndReports,
    Reported,
)
from tm.executor.runner import JobRunner, JobStartError, RunRequest
from tm.executor.verify import SpecChecker
from tm.link import DispatcherInfo
from tm.protocol import batches, commands

HEARTBEAT_INTERVAL = 5.0
MIN_HEARTBEAT_INTERVAL = 0.25
MAX_HEARTBEAT_INTERVAL = 60.0
MIN_LEASE = 1.0
#: Threads for file-system work that may block (NFS): a few, so one stuck file system does not
#: hold every start, and bounded, so a burst of starts does not make hundreds of threads.
FS_THREADS = 4
T = TypeVar("T")


class ExecutorLocator(OutputLocator, OutputTailResponder):
    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    @commands.RunJob.responder
    async def run_job(self, job_id: int, attempt: int, **fields: Any) -> dict:
        """The start order; ``fields``: ``env`` and the job's fields of ``jobfields.RUN``."""
        self.executor.heard_from_dispatcher()
        return await self.executor.start_job(job_id, attempt, **fields)

    @batches.RunJobs.responder
    async def run_jobs(self, env: Any, orders: list[dict[str, Any]]) -> dict:
        """Start orders of one turn (one environment): each as RunJob's, one result each."""
        self.executor.heard_from_dispatcher()
        return {"results": await self.executor.start_jobs(env, orders)}

    @commands.SignalJob.responder
    def signal_job(self, job_id: int, attempt: int, action: str) -> dict:
        self.executor.heard_from_dispatcher()
        runner = self.executor.runner
        actions = {"kill": runner.kill, "stop": runner.suspend, "cont": runner.resume}
        if action not in actions:
            raise commands.InvalidRequest(f"unknown action {action!r}")
        try:
            return {"found": actions[action](job_id, attempt)}
        except Exception:
            # Declared, so that the link stays: an undeclared error would make AMP drop it.
            self.executor.log.failure(
                "job {job_id}.{attempt}: unexpected error on {action}",
                job_id=job_id,
                attempt=attempt,
                action=action,
            )
            raise commands.InvalidRequest(
                f"the executor could not {action} job {job_id} (an internal error, logged on "
                "its host)"
            ) from None

    @commands.Shutdown.responder
    def shutdown(self) -> dict:
        # A moment for the answer to leave before the connection closes.
        self.executor.reactor.callLater(0.2, self.executor.reactor.stop)
        return {}

    @commands.Ping.responder
    def ping(self) -> dict:
        return {"server": "tmmenial", "time": self.executor.reactor.seconds()}


def read_load() -> float | None:
    """The host's 1-minute load average.

    ``$TM_LOADAVG_FILE`` names another file in /proc/loadavg's format to read instead (for a
    host whose real load lives elsewhere, e.g. a container's, and for tests).
    """
    path = os.environ.get("TM_LOADAVG_FILE")
    if not path:
        return os.getloadavg()[0]
    try:
        with open(path) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Executor(EndReports, service.Service):
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        info: DispatcherInfo,
        host: str,
        idle_timeout: float,
        log_dir: str,
        job_max_age_days: float = jobsign.DEFAULT_MAX_AGE_DAYS,
        kill_grace: float = 10.0,
        shepherd: str = "auto",
    ) -> None:
        self.reactor = reactor
        self.checker = SpecChecker(getpass.getuser(), reactor, job_max_age_days)
        self.host = host
        self.idle_timeout = idle_timeout
        self.fs_pool = ThreadPool(0, FS_THREADS, name="tm-executor-fs")
        # Shepherds are forked by one zygote process: a job's start costs a fork, not an
        # interpreter (see tm.executor.launcher).
        self.runner = JobRunner(
            reactor,
            reactor,
            log_dir=log_dir,
            kill_grace=kill_grace,
            blocking=self._in_pool,
            launcher="zygote" if shepherd == "auto" else f"zygote-{shepherd}",
        )
        self._init_reports()  # self.unreported: ends not yet acknowledged
        #: Attempts started and not yet reported ended: (job_id, attempt) -> (pid, started_at).
        self.started: dict[tuple[int, int], tuple[int, float]] = {}
        #: Start orders under way (opening the job's files): the same order again waits here.
        self._starting: dict[tuple[int, int], list[Deferred]] = {}
        #: Ends reported lately, oldest first (see REMEMBERED_ENDS).
        self._reported: OrderedDict[tuple[int, int], Reported] = OrderedDict()
        self.lease: float | None = None  # told by the dispatcher with each heartbeat answer
        self.last_contact = reactor.seconds()
        self.lease_killed: set[tuple[int, int]] = set()
        self.link = DispatcherLink(
            reactor,
            info,
            commands.ROLE_TMMS,
            host,
            lambda: ExecutorLocator(self),
            on_connected=lambda proto: self._connected(),
            on_fatal=lambda e: reactor.stop(),
        )
        self.heartbeat = LoopingCall(self._heartbeat)
        self.heartbeat.clock = reactor
        self._idle_call: Any = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.fs_pool.start()
        self.link.start()
        self.heartbeat.start(HEARTBEAT_INTERVAL, now=False)
        self.activity()

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        if self.heartbeat.running:
            self.heartbeat.stop()
        self.link.stop()
        # The pool stops after the jobs: starts under way and log files need it to finish.
        d = self.runner.kill_all()
        d.addBoth(self._stop_runner)
        d.addBoth(self._stop_pool)
        return d

    def _stop_runner(self, result: T) -> Deferred:
        return self.runner.stop().addBoth(lambda _: result)

    def _stop_pool(self, result: T) -> T:
        if self.fs_pool.started:
            self.fs_pool.stop()
        return result

    def _in_pool(self, f: Callable[..., T], *args: Any) -> Deferred:
        """Run ``f(*args)`` in the executor's file-system pool (not the reactor's, which DNS
        shares)."""
        return deferToThreadPool(self.reactor, self.fs_pool, f, *args)

    # --- starts ----------------------------------------------------------------------------

    async def start_job(self, job_id: int, attempt: int, **fields: Any) -> dict:
        """Start an attempt as the dispatcher orders; its pid and start time.

        Never fails with anything but ``JobStartFailed`` (declared in ``RunJob``): an undeclared
        error would make AMP drop the link, and the dispatcher would place the job again."""
        key = (job_id, attempt)
        known = self.started.get(key)
        if known is not None:
            # A start order sent again after a reconnection: this attempt already started.
            return {"pid": known[0], "started_at": known[1]}
        reported = self._reported.get(key)
        if reported is not None:
            return self._started_again(key, reported)
        waiting = self._starting.get(key)
        if waiting is not None:
            # The same order again while the first is still under way: the same outcome.
            d: Deferred = Deferred()
            waiting.append(d)
            return await d
        self._starting[key] = []
        try:
            answer = await self._start(job_id, attempt, fields)
        except BaseException:
            failure = Failure()
            for d in self._starting.pop(key, []):
                d.errback(failure)
            raise
        for d in self._starting.pop(key, []):
            d.callback(answer)
        return answer

    async def start_jobs(self, env: Any, orders: list[dict[str, Any]]) -> list[dict]:
        """The orders of a RunJobs, each started as :meth:`start_job` starts RunJob's (side by
        side); their results in the orders' order: RunJob's answer, or the reason of its
        JobStartFailed. Answered once every one has its outcome, or after
        ``batches.ANSWER_WITHIN`` seconds: a start still under way then (its files on a hung
        file system) is answered ``{}``, and the dispatcher sends it again alone, so that it
        holds only its own job."""
        results: list[dict | None] = [None] * len(orders)
        all_done: Deferred = Deferred()
        left = len(orders)

        async def one(i: int, order: dict[str, Any]) -> None:
            nonlocal left
            fields = dict(order)
            job_id, attempt = fields.pop("job_id"), fields.pop("attempt")
            try:
                results[i] = await self.start_job(job_id, attempt, env=env, **fields)
            except commands.JobStartFailed as e:
                results[i] = {"error": str(e)}
            except Exception:  # start_job declares only JobStartFailed: never expected
                self.log.failure("job {job_id}.{attempt}: start", job_id=job_id, attempt=attempt)
                results[i] = {"error": "the executor could not start it (an internal error)"}
            left -= 1
            if not left and not all_done.called:
                all_done.callback(None)

        def out_of_time() -> None:
            if not all_done.called:
                all_done.callback(None)

        for i, order in enumerate(orders):
            ensureDeferred(one(i, order))
        if left:
            timer = self.reactor.callLater(batches.ANSWER_WITHIN, out_of_time)
            await all_done
            if timer.active():
                timer.cancel()
        answered = [{} if r is None else r for r in results]
        reasons = batches.error_results([r.get("error") for r in answered])
        return [
            {"error": reason} if reason is not None else result
            for result, reason in zip(answered, reasons, strict=True)
        ]

    async def _start(self, job_id: int, attempt: int, fields: dict[str, Any]) -> dict:
        key = (job_id, attempt)
        try:
            order = self.checker.order(job_id, attempt, fields)  # the user's signature
            request = RunRequest.from_order(job_id, attempt, order)
            pid = await self.runner.start(request, self.job_ended)
        except JobStartError as e:
            self.log.info(
                "job {job_id}.{attempt} not started: {reason}",
                job_id=job_id,
                attempt=attempt,
                reason=e.reason,
            )
            raise commands.JobStartFailed(e.reason) from None
        except Exception:
            self.log.failure(
                "job {job_id}.{attempt}: unexpected error while starting it",
                job_id=job_id,
                attempt=attempt,
            )
            raise commands.JobStartFailed(
                "the executor could not start it (an internal error, logged on its host)"
            ) from None
        self.activity()
        started_at = self.reactor.seconds()
        if key in self.runner.running() or self._end_pending(key):
            self.started[key] = (pid, started_at)
        return {"pid": pid, "started_at": started_at}

    def _started_again(self, key: tuple[int, int], reported: Reported) -> dict:
        """A start order for an attempt that ran here and whose end was reported: the dispatcher
        missed it (e.g. it had placed the job elsewhere meanwhile). The job does not run twice:
        the order is answered as a start, and the end is reported again."""
        self.log.info(
            "job {job_id}.{attempt} was ordered to start again after it ended: "
            "reporting its end again",
            job_id=key[0],
            attempt=key[1],
        )
        del self._reported[key]
        self.started[key] = (reported.pid, reported.started_at)
        if reported.lost:
            self.lease_killed.add(key)
        if not self._end_pending(key):
            self.unreported.append(reported.end)
        self._report_retry.pop(key, None)
        self._flush()
        return {"pid": reported.pid, "started_at": reported.started_at}

    # --- idle exit --------------------------------------------------------------------

    def activity(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = self.reactor.callLater(self.idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.runner.running() or self.unreported:
            self.activity()
            return
        self.log.info("no job for {t:.0f} s: the executor exits", t=self.idle_timeout)
        self.reactor.stop()

    # --- heartbeats and the lease ----------------------------------------------------------

    def heard_from_dispatcher(self) -> None:
        self.last_contact = self.reactor.seconds()

    def _heartbeat(self) -> None:
        self._check_lease()
        if not self.link.connected:
            return
        self._flush()  # ends whose report failed or timed out are sent again
        d = ensureDeferred(
            self.link.call(
                commands.Heartbeat,
                load=read_load(),
                running=[list(k) for k in self.runner.running()],
            )
        )
        d.addCallbacks(
            self._heartbeat_answered,
            lambda f: self.log.info("heartbeat failed: {e}", e=f.getErrorMessage()),
        )

    def _heartbeat_answered(self, answer: dict) -> None:
        self.heard_from_dispatcher()
        # Bounded whatever the dispatcher says: a tiny interval would make the heartbeat a busy
        # loop, a tiny lease would stop every job at once.
        if answer.get("lease"):
            self.lease = max(MIN_LEASE, float(answer["lease"]))
        if not answer.get("interval") or not self.heartbeat.running:
            return
        interval = min(
            MAX_HEARTBEAT_INTERVAL, max(MIN_HEARTBEAT_INTERVAL, float(answer["interval"]))
        )
        if abs(interval - (self.heartbeat.interval or 0.0)) > 1e-6:
            self.heartbeat.stop()
            self.heartbeat.start(interval, now=False)

    def _check_lease(self) -> None:
        if self.lease is None:
            return
        silent = self.reactor.seconds() - self.last_contact
        running = [key for key in self.runner.running() if key not in self.lease_killed]
        if silent <= self.lease or not running:
            return
        self.log.warn(
            "no answer from the dispatcher for {t:.0f} s (lease {lease:.0f} s): "
            "stopping {n} job(s); they will be reported lost and run again",
            t=silent,
            lease=self.lease,
            n=len(running),
        )
        for job_id, attempt in running:
            # Only a job this kill reaches ends as lost: one that has just ended on its own
            # (its log file being written) is reported as it ended.
            if self.runner.kill(job_id, attempt):
                self.lease_killed.add((job_id, attempt))
