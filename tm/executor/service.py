"""The TMMS: one user's executor on one host.

It connects out to the dispatcher (no listening port), proves its user, runs
the ``RunJob`` orders it receives through :class:`JobRunner`, reports every end
(kept and re-sent until the dispatcher has it), heartbeats with the host's
load, and exits after an idle period without jobs.

Leases: every heartbeat answer renews the executor's lease (its length comes with the answer).
An executor that has heard nothing from the dispatcher for longer than that stops all its jobs
and reports them, once it is back in contact, as lost (the dispatcher requeues them). The
dispatcher declares an absent executor's jobs lost only after twice as long, so two copies of
one job never run at once, and a dispatcher restart shorter than the lease loses nothing.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application import service
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols import amp

from tm.dispatcher_client import DispatcherLink
from tm.executor.runner import JobEnd, JobRunner, JobStartError, RunRequest
from tm.link import DispatcherInfo
from tm.protocol import commands

HEARTBEAT_INTERVAL = 5.0


class ExecutorLocator(amp.CommandLocator):
    def __init__(self, executor: Executor) -> None:
        self.executor = executor

    @commands.RunJob.responder
    def run_job(self, job_id: int, attempt: int, command: str, shell: str, cwd: str, umask: int,
                env: Any, stdout: str, stderr: str, logfile: str, slots: int) -> dict:
        self.executor.heard_from_dispatcher()
        known = self.executor.started.get((job_id, attempt))
        if known is not None:
            # A start order sent again after a reconnection: this attempt already started.
            return {"pid": known[0], "started_at": known[1]}
        request = RunRequest(job_id=job_id, attempt=attempt, command=command, shell=shell, cwd=cwd,
                             umask=umask, env=dict(env), stdout=stdout or None,
                             stderr=stderr or None, logfile=logfile or None, slots=slots)
        try:
            pid = self.executor.runner.start(request, self.executor.job_ended)
        except JobStartError as e:
            raise commands.JobStartFailed(e.reason) from None
        self.executor.activity()
        started_at = self.executor.reactor.seconds()
        self.executor.started[(job_id, attempt)] = (pid, started_at)
        return {"pid": pid, "started_at": started_at}

    @commands.SignalJob.responder
    def signal_job(self, job_id: int, attempt: int, action: str) -> dict:
        self.executor.heard_from_dispatcher()
        runner = self.executor.runner
        actions = {"kill": runner.kill, "stop": runner.suspend, "cont": runner.resume}
        if action not in actions:
            raise commands.InvalidRequest(f"unknown action {action!r}")
        return {"found": actions[action](job_id, attempt)}

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


class Executor(service.Service):
    log = Logger()

    def __init__(self, reactor: Any, info: DispatcherInfo, host: str, idle_timeout: float,
                 log_dir: str) -> None:
        self.reactor = reactor
        self.host = host
        self.idle_timeout = idle_timeout
        self.runner = JobRunner(reactor, reactor, log_dir=log_dir)
        self.unreported: list[JobEnd] = []
        #: Attempts started and not yet reported ended: (job_id, attempt) -> (pid, started_at).
        self.started: dict[tuple[int, int], tuple[int, float]] = {}
        self.lease: float | None = None  # told by the dispatcher with each heartbeat answer
        self.last_contact = reactor.seconds()
        self.lease_killed: set[tuple[int, int]] = set()
        self._reporting: set[tuple[int, int]] = set()  # ends whose report is under way
        self.link = DispatcherLink(reactor, info, commands.ROLE_TMMS, host,
                                   lambda: ExecutorLocator(self),
                                   on_connected=lambda proto: self._connected(),
                                   on_fatal=lambda e: reactor.stop())
        self.heartbeat = LoopingCall(self._heartbeat)
        self.heartbeat.clock = reactor
        self._idle_call: Any = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.link.start()
        self.heartbeat.start(HEARTBEAT_INTERVAL, now=False)
        self.activity()

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        if self.heartbeat.running:
            self.heartbeat.stop()
        self.link.stop()
        return self.runner.kill_all()

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

    # --- reports -------------------------------------------------------------------------

    def job_ended(self, end: JobEnd) -> None:
        self.unreported.append(end)
        self.activity()
        self._flush()

    def _connected(self) -> None:
        self._flush()
        self._heartbeat()  # the dispatcher learns this host's load at once

    def _flush(self) -> None:
        if self.link.connected:
            for end in list(self.unreported):
                if (end.job_id, end.attempt) not in self._reporting:
                    ensureDeferred(self._report(end))

    async def _report(self, end: JobEnd) -> None:
        key = (end.job_id, end.attempt)
        self._reporting.add(key)
        try:
            lost = (end.job_id, end.attempt) in self.lease_killed
            reason = (f"stopped on {self.host}: no contact with the dispatcher for longer than "
                      f"the executor's lease ({self.lease:.0f} s)") if lost else end.reason
            await self.link.call(commands.JobFinished, job_id=end.job_id, attempt=end.attempt,
                                 exit_code=end.exit_code, signal=end.signal, killed=end.killed,
                                 ended_at=end.ended_at, reason=reason, lost=lost)
        except Exception as e:
            self.log.info("end of job {id} not reported yet: {e}", id=end.job_id, e=str(e))
            return
        finally:
            self._reporting.discard(key)
        if end in self.unreported:
            self.unreported.remove(end)
        self.started.pop((end.job_id, end.attempt), None)
        self.lease_killed.discard((end.job_id, end.attempt))

    # --- heartbeats and the lease ----------------------------------------------------------

    def heard_from_dispatcher(self) -> None:
        self.last_contact = self.reactor.seconds()

    def _heartbeat(self) -> None:
        self._check_lease()
        if not self.link.connected:
            return
        self._flush()  # ends whose report failed or timed out are sent again
        d = ensureDeferred(self.link.call(commands.Heartbeat, load=read_load(),
                                          running=[list(k) for k in self.runner.running()]))
        d.addCallbacks(self._heartbeat_answered,
                       lambda f: self.log.info("heartbeat failed: {e}", e=f.getErrorMessage()))

    def _heartbeat_answered(self, answer: dict) -> None:
        self.heard_from_dispatcher()
        if answer.get("lease"):
            self.lease = answer["lease"]
        interval = answer.get("interval")
        if interval and abs(interval - self.heartbeat.interval) > 1e-6 and self.heartbeat.running:
            self.heartbeat.stop()
            self.heartbeat.start(interval, now=False)

    def _check_lease(self) -> None:
        if self.lease is None:
            return
        silent = self.reactor.seconds() - self.last_contact
        running = [key for key in self.runner.running() if key not in self.lease_killed]
        if silent <= self.lease or not running:
            return
        self.log.warn("no answer from the dispatcher for {t:.0f} s (lease {lease:.0f} s): "
                      "stopping {n} job(s); they will be reported lost and run again",
                      t=silent, lease=self.lease, n=len(running))
        for job_id, attempt in running:
            self.lease_killed.add((job_id, attempt))
            self.runner.kill(job_id, attempt)
