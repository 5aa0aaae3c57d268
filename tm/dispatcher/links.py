"""The dispatcher's links: TMS and executor sessions, executor starts, leases and
heartbeats, and the start orders of placed jobs."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionDone, ConnectionLost

from tm import trace
from tm.core.model import Host, Job, JobState
from tm.core.retry import Cause
from tm.dispatcher.core import (
    EXECUTOR_BACKOFF,
    EXECUTOR_START_TIMEOUT,
    MAX_EXECUTOR_BACKOFF,
    DispatcherCore,
)
from tm.dispatcher.ports import PeerSession
from tm.protocol import commands, records


class ExecutorLinks(DispatcherCore):
    """Sessions of TMS and executors, and what goes over them to start jobs."""

    # --- sessions -------------------------------------------------------------------

    def tms_connected(self, user: str, session: PeerSession) -> None:
        self.tms_sessions[user] = session
        self.request_pass()

    def tms_disconnected(self, user: str, session: PeerSession) -> None:
        if self.tms_sessions.get(user) is session:
            del self.tms_sessions[user]

    def executor_connected(self, user: str, host: str, session: PeerSession) -> None:
        old = self.executor_table.connected(user, host, session)
        if old is not None:
            old.fence()
        for job in self._jobs_on(user, host, JobState.PENDING):
            if job.id in self.killing:
                ensureDeferred(self._kill_for_repair(job, session))  # not started: not found
            else:
                ensureDeferred(self._send_run(job, session))
        self.request_pass()

    def executor_disconnected(self, user: str, host: str, session: PeerSession) -> None:
        # Its jobs may well still run (a network blip, a dispatcher-side drop): the table
        # keeps them for one lease; if the executor is back by then, its heartbeat tells
        # what still runs.
        self.executor_table.disconnected(user, host, session)

    def _lease_expired(self, user: str, host: str) -> None:
        for job in self._jobs_on(user, host, JobState.RUNNING) + self._jobs_on(
            user, host, JobState.PENDING
        ):
            self._lose(
                job,
                f"the executor of {user} on {host} went away and did not come back "
                f"within {self.settings.executor_lease:.0f} s",
            )

    def heartbeat(
        self,
        user: str,
        host: str,
        session: PeerSession,
        running: set[tuple[int, int]] | None,
        load: float | None,
    ) -> None:
        """An executor's heartbeat: its host's load, and what it runs (None: unreadable)."""
        if load is not None:
            previous = self.loads.get(host)
            self.loads[host] = load
            self.load_at[host] = self.reactor.seconds()
            known = self.hosts.get(host)
            if known is not None and known.load_check and previous != load:
                self.request_pass()  # a job held back by this host's load may fit now
        if running is not None and self.executors.get((user, host)) is session:
            self.reconcile(user, host, session, running)

    def _check_leases(self) -> None:
        """Drop executors that stopped sending heartbeats (hung, or a half-open connection)."""
        now = self.reactor.seconds()
        for (user, host), session in list(self.executors.items()):
            if now - session.last_heard > self.settings.executor_lease:
                self.log.warn(
                    "the executor of {user} on {host} has been silent for {t:.0f} s: dropping it",
                    user=user,
                    host=host,
                    t=now - session.last_heard,
                )
                session.drop()

    def reconcile(
        self, user: str, host: str, session: PeerSession, running: set[tuple[int, int]]
    ) -> None:
        """Compare what an executor runs with what we believe runs there.

        A job we think runs there but which the executor does not run (and whose end it has
        not reported, since ends are sent before heartbeats) was lost. An attempt it runs that
        we do not expect there is a stale copy (requeued meanwhile, or removed): it is killed,
        so a job never runs twice.
        """
        now = self.reactor.seconds()
        # One pass over the working set per heartbeat: the jobs placed on this executor.
        placed = self.jobs.holding_slots(user, host)
        expected = {(j.id, j.attempt) for j in placed}
        for job in placed:
            since = now if job.state_since is None else job.state_since
            gone = (
                job.state is JobState.RUNNING
                and (job.id, job.attempt) not in running
                and now - since > 5.0
            )
            killing = self.killing.get(job.id)
            if killing is not None and not gone and not killing.delivered:
                ensureDeferred(self._kill_for_repair(job, session))
            elif gone:
                # _lose ends an attempt being killed the way its repair asked.
                self._lose(job, f"the executor on {host} no longer runs it")
        for job_id, attempt in running - expected:
            self.log.warn(
                "killing a stale copy of job {id} (attempt {a}) on {host}",
                id=job_id,
                a=attempt,
                host=host,
            )
            ensureDeferred(self._kill_stale(session, job_id, attempt))

    async def _kill_stale(self, session: PeerSession, job_id: int, attempt: int) -> None:
        try:
            await session.proto.call(
                commands.SignalJob, job_id=job_id, attempt=attempt, action="kill"
            )
        except Exception as e:
            self.log.info("could not kill the stale copy of job {id}: {e}", id=job_id, e=str(e))

    def executor_start_failed(self, user: str, host: str, reason: str) -> None:
        if (user, host) in self.executors:
            # An executor got there after all (e.g. a hung one woke up): nothing failed.
            self.log.info(
                "ignoring a failed executor start of {user} on {host}: one is connected ({reason})",
                user=user,
                host=host,
                reason=reason,
            )
            return
        self.log.warn(
            "starting an executor of {user} on {host} failed: {reason}",
            user=user,
            host=host,
            reason=reason,
        )
        self.executor_table.start_failed(user, host, EXECUTOR_BACKOFF, MAX_EXECUTOR_BACKOFF)
        for job in self._jobs_on(user, host, JobState.PENDING):
            self._transition(
                job, JobState.WAITING, f"executor start on {host} failed: {reason}", clear_host=True
            )

    def invoke_executors(self, user: str) -> list[str]:
        """Start ``user``'s executor on every active host that lacks one; say what happened."""
        tms = self.tms_sessions.get(user)
        now = self.reactor.seconds()
        out = []
        for host in sorted(self.hosts.values(), key=lambda h: h.name):
            key = (user, host.name)
            if not host.active or host.retired:
                out.append(f"{host.name}: skipped, the host is not active")
            elif key in self.executors:
                out.append(f"{host.name}: already running")
            elif key in self.starting:
                out.append(f"{host.name}: already starting")
            elif self.backoff.get(key, 0) > now:
                out.append(
                    f"{host.name}: skipped, the last start failed "
                    f"(retried after {self.backoff[key] - now:.0f} s)"
                )
            elif tms is None:
                out.append(f"{host.name}: skipped, no TMS of {user} is connected")
            else:
                ensureDeferred(self._start_executor(tms, user, host))
                out.append(f"{host.name}: starting")
        return out

    async def shutdown_executors(self, user: str) -> list[str]:
        """Stop ``user``'s idle executors; one with jobs on it keeps running."""
        out = []
        for (name, host), session in sorted(self.executors.items(), key=lambda kv: kv[0]):
            if name != user:
                continue
            busy = [j.id for j in self.jobs.holding_slots(user, host)]
            if busy:
                out.append(
                    f"{host}: kept, {len(busy)} job(s) run there "
                    f"(kill them first: killjob:{busy[0]})"
                )
                continue
            try:
                await session.proto.call(commands.Shutdown, reply_timeout=10)
                out.append(f"{host}: stopped")
            except (ConnectionDone, ConnectionLost):
                out.append(f"{host}: stopped")  # it went before its answer arrived
            except Exception as e:
                out.append(f"{host}: could not be stopped: {e}")
        return out or ["no executor is running"]

    def _placed(self, applied: bool, job: Job, attempt: int) -> None:
        if not applied or job.state is not JobState.PENDING or job.attempt != attempt:
            return
        host_name = job.host
        assert host_name is not None  # a pending job has been placed on a host
        key = (job.user, host_name)
        session = self.executors.get(key)
        if session is not None:
            ensureDeferred(self._send_run(job, session))
            return
        if key in self.starting:
            return
        tms = self.tms_sessions.get(job.user)
        if tms is None:
            self._transition(
                job, JobState.WAITING, "no TMS of the user is connected", clear_host=True
            )
            return
        ensureDeferred(self._start_executor(tms, job.user, self.hosts[host_name]))

    async def _start_executor(self, tms: PeerSession, user: str, host: Host) -> None:
        """Ask the user's TMS to start an executor on ``host``; fail it if none connects in time.

        ``starting`` marks the start (set before the first await, so at once) and its time is
        the start's token: the timer of an earlier start cannot fail a later one."""
        token = self.executor_table.start(user, host.name)
        try:
            await tms.proto.call(
                commands.StartExecutor,
                host=host.name,
                ssh_target=host.ssh_target,
                command=host.tmmenial_command,
                token=token,
            )
        except Exception as e:
            self.executor_start_failed(user, host.name, f"the TMS did not answer: {e}")
            return
        self.executor_table.start_asked(user, host.name, EXECUTOR_START_TIMEOUT)

    def _start_timed_out(self, user: str, host: str) -> None:
        self.executor_start_failed(
            user, host, f"no executor connected within {EXECUTOR_START_TIMEOUT:.0f} s"
        )

    async def _send_run(self, job: Job, session: PeerSession) -> None:
        attempt = job.attempt
        env = await self._environment(job.env_id)
        trace.point("dispatcher", "RunJob-sent", job.id)
        order = records.run_job_to_amp(job, env)
        del order["env"]
        try:
            # With the other orders of this turn for this executor (tm/dispatcher/startbatch.py).
            answer = await self.start_batches.order(session, job.env_id, env, order)
        except commands.JobStartFailed as e:
            if job.state is JobState.PENDING and job.attempt == attempt:
                self._fail_or_retry(job, Cause.START, f"start failed: {e}")
            return
        except Exception as e:
            if job.state is JobState.PENDING and job.attempt == attempt:
                self._start_not_delivered(job, " ".join((str(e) or type(e).__name__).split()))
            return
        trace.point("dispatcher", "RunJob-answered", job.id)
        if job.state is JobState.PENDING and job.attempt == attempt:
            self._transition(
                job, JobState.RUNNING, f"running on {job.host}", pid=answer["pid"], host=job.host
            )

    async def _environment(self, env_id: int | None) -> Any:
        """Submission environments as RunJob carries them (sealed), cached: a bulk submission
        shares one."""
        if env_id is None:
            return {}
        env = self._environments.get(env_id)
        if env is None:
            env = self.remember_environment(env_id, await self.store.get_environment(env_id))
        return env
