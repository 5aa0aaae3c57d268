"""The dispatcher: the queue, the slot accounting, and where each job runs.

State lives in the database; this service keeps the working set (waiting,
pending and running jobs, hosts, sessions) in memory and writes every change as
a compare-and-set through the group-commit writer.  A scheduling pass runs when
something changed, coalesced into one pass per reactor turn; a placement is
committed (``pending``) before the start order goes out.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tm import config
from tm.core import scheduler
from tm.core.fairshare import DEFAULT_HALF_LIFE, UsageLedger
from tm.core.model import Host, Job, JobState, Transition, User, ending_state
from tm.core.workingset import WorkingSet
from tm.dispatcher.executors import ExecutorTable
from tm.dispatcher.writer import TransitionWriter
from tm.protocol import commands

#: How long a placed job may wait for its user's executor to appear.
EXECUTOR_START_TIMEOUT = 60.0
#: The setting that keeps the recorded fair-share usage, and how often it is saved.
USAGE_SETTING = "fairshare_usage"
USAGE_SAVE_INTERVAL = 60.0
#: After a failed executor start, the host is not tried again for that user this long,
#: doubled after each further failure in a row, up to MAX_EXECUTOR_BACKOFF.
EXECUTOR_BACKOFF = 30.0
MAX_EXECUTOR_BACKOFF = 600.0
#: A job whose start order could not be delivered this many times in a row ends failed.
MAX_START_TRIES = 5
#: Between two tries of a job's start, the job is not placed again for this long, doubled
#: after each failure in a row, up to MAX_START_RETRY_DELAY.
START_RETRY_DELAY = 2.0
MAX_START_RETRY_DELAY = 120.0
#: A job state change that could not be written is re-read from the store; the read is
#: retried this often while it fails, the pause doubling up to the second value.
RESYNC_DELAY = (0.5, 10.0)


class NotWritten:
    """What a state change's Deferred fires with when it could not be committed.

    False in a boolean context, like a compare-and-set that did not apply; the job has
    been (or is being) re-read from the store by then.
    """

    def __init__(self, error: str) -> None:
        self.error = error

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"NotWritten({self.error!r})"


@dataclass
class Killing:
    """An attempt being killed by an admin repair: it holds its slots until its tree is
    gone (its end is reported, or its executor says it no longer runs it, or is lost);
    then ``then`` happens: ``waiting`` (requeue), ``finished``, or ``remove``."""

    attempt: int
    then: str
    delivered: bool = False


@dataclass
class Settings:
    var_dir: Path
    config_dir: Path
    database_url: str
    port: int = 10101
    interface: str = ""
    public_host: str = field(default_factory=socket.gethostname)
    hosts: list[Host] = field(default_factory=list)
    users: list[User] = field(default_factory=list)
    cluster_config: str = "tab"  # which of etc/cluster.tab | etc/cluster.cfg describes the hosts
    fairshare_half_life: float = DEFAULT_HALF_LIFE  # seconds for recorded usage to halve
    #: An executor silent this long is dropped; jobs on a dropped executor are lost (and
    #: requeued) only if it has not come back this long after.
    executor_lease: float = 300.0


def _fire_unless_called(d: Deferred) -> None:
    """A wait's deadline: fire ``d`` with None unless it has fired already."""
    if not d.called:
        d.callback(None)


class Dispatcher(service.Service):
    log = Logger()

    def __init__(self, reactor: Any, settings: Settings, store: Any) -> None:
        self.reactor = reactor
        self.settings = settings
        self.store = store
        self.writer = TransitionWriter(reactor, store.apply_transitions)
        self.hosts: dict[str, Host] = {h.name: h for h in settings.hosts}
        self.users: dict[str, User] = {u.name: u for u in settings.users}
        self.jobs = WorkingSet()  # waiting, pending, running, lost; indexed
        self.cluster_active = True
        self.loads: dict[str, float] = {}
        self.load_at: dict[str, float] = {}  # when each host's load was last reported
        self.tms_sessions: dict[str, Any] = {}
        #: Each user's executor on each host: absent, starting, connected, away, backed off.
        self.executor_table: ExecutorTable[Any] = ExecutorTable(
            reactor, settings.executor_lease, on_lease_over=self._lease_expired,
            on_start_over=self._start_timed_out, on_backoff_over=self.request_pass)
        #: Ends of attempts reported but not yet committed, with the reports waiting for them.
        self._unwritten_ends: dict[tuple[int, int], list[Deferred]] = {}
        #: job id -> (start orders not delivered in a row, not placed again before)
        self.start_failures: dict[int, tuple[int, float]] = {}
        #: job id -> an attempt being killed by an admin repair (see Killing)
        self.killing: dict[int, Killing] = {}
        #: jobs whose state change could not be written, being re-read from the store
        self._resyncing: set[int] = set()
        self.reservations: dict[int, str] = {}
        self.ledger = UsageLedger(settings.fairshare_half_life)
        self.waiters: dict[int, list[Deferred]] = {}
        self.started_at = 0.0
        self._pass_scheduled = False
        self.passes = 0
        self._environments: dict[int, dict[str, str]] = {}
        #: Bounded pool for file-system checks that may block on NFS; whoever runs the
        #: dispatcher (tm.tap.dispatcher) provides, starts and stops it.
        self.fs_pool: ThreadPool | None = None

    # The executor table's parts, by their old names (read by the responders and tests).
    @property
    def executors(self) -> dict[tuple[str, str], Any]:
        return self.executor_table.sessions

    @property
    def starting(self) -> dict[tuple[str, str], float]:
        return self.executor_table.starting

    @property
    def absent(self) -> dict[tuple[str, str], float]:
        return self.executor_table.away

    @property
    def backoff(self) -> dict[tuple[str, str], float]:
        return self.executor_table.backoff

    @property
    def backoff_failures(self) -> dict[tuple[str, str], int]:
        return self.executor_table.failures

    # --- start-up -----------------------------------------------------------------

    async def start(self) -> None:
        await self.store.upgrade()
        self.started_at = self.reactor.seconds()
        await self.store.sync_users(list(self.users.values()))
        for name, enabled in (await self.store.load_users()).items():
            if name in self.users:
                self.users[name].enabled = enabled
        saved = await self.store.load_hosts()
        for name, (active, retired) in saved.items():
            if name in self.hosts:
                self.hosts[name].active = active
                if retired:  # back in the configuration
                    await self.store.save_host(name, active, False)
        active = await self.store.get_setting("cluster_active")
        self.cluster_active = active != "0"
        for job in await self.store.load_active_jobs():
            self.jobs.add(job)
        # Placements whose start order may not have gone out: back to waiting. (Had it gone
        # out, the executor's heartbeat shows the copy and it is killed: see heartbeat().)
        for job in list(self.jobs.in_state(JobState.PENDING)):
            self._transition(job, JobState.WAITING, "dispatcher restarted before the job started")
        # Running jobs wait for their executors to come back, for one lease at most.
        for job in list(self.jobs.in_state(JobState.RUNNING)):
            if job.host:
                self.executor_table.gone(job.user, job.host)
        saved_usage = await self.store.get_setting(USAGE_SETTING)
        if saved_usage:
            try:
                self.ledger.restore(json.loads(saved_usage))
            except (ValueError, TypeError, AttributeError) as e:
                self.log.warn("recorded fair-share usage unreadable, starting from zero: {e}",
                              e=str(e))
        self.usage_saver = LoopingCall(self._save_usage_in_background)
        self.usage_saver.clock = self.reactor
        self.usage_saver.start(USAGE_SAVE_INTERVAL, now=False)
        self.lease_check = LoopingCall(self._check_leases)
        self.lease_check.clock = self.reactor
        self.lease_check.start(max(0.5, self.settings.executor_lease / 4), now=False)
        self.request_pass()

        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._sighup)

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        for timer in (getattr(self, "lease_check", None), getattr(self, "usage_saver", None)):
            if timer is not None and timer.running:
                timer.stop()
        self.executor_table.stop()

    async def save_usage(self) -> None:
        """Store the recorded fair-share usage, so that a restart does not forget it."""
        await self.store.set_setting(USAGE_SETTING, json.dumps(self.ledger.snapshot()))

    def _save_usage_in_background(self) -> None:
        d = ensureDeferred(self.save_usage())
        d.addErrback(lambda f: self.log.warn("fair-share usage not saved: {e}",
                                             e=f.getErrorMessage()))

    # --- configuration reload -----------------------------------------------------------

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reload_from_signal)

    def _reload_from_signal(self) -> None:
        d = ensureDeferred(self.reload_config())
        d.addCallbacks(lambda summary: self.log.info("SIGHUP: {summary}", summary=summary),
                       lambda f: self.log.error("SIGHUP: {e}", e=f.getErrorMessage()))

    async def reload_config(self) -> str:
        """Re-read the cluster and users files; add, update and retire hosts and users.

        A host that left the file is retired: it gets no new jobs, its running jobs finish.
        A host's ``active`` column only sets the state of a host new to the dispatcher;
        activatehost/deactivatehost decide for known ones. Raises ConfigError (nothing changes)
        when a file is malformed.
        """
        s = self.settings
        try:
            hosts = config.load_cluster(s.config_dir, s.cluster_config, socket.gethostname(),
                                        os.cpu_count() or 1)
            users = config.load_users(s.config_dir, getpass.getuser())
        except OSError as e:
            raise config.ConfigError(e.filename or str(s.config_dir), 0,
                                     f"cannot be read: {e.strerror}") from None
        added, updated, retired, restored = [], [], [], []
        new_names = {h.name for h in hosts}
        for h in hosts:
            old = self.hosts.get(h.name)
            if old is None:
                self.hosts[h.name] = h
                added.append(h.name)
                await self.store.save_host(h.name, h.active, False)
                continue
            h.active = old.active
            if old.retired:
                restored.append(h.name)
                await self.store.save_host(h.name, h.active, False)
            elif h != old:
                updated.append(h.name)
            self.hosts[h.name] = h
        for name, old in list(self.hosts.items()):
            if name not in new_names and not old.retired:
                old.retired = True
                retired.append(name)
                await self.store.save_host(name, old.active, True)
        # Retired hosts with nothing left on them are forgotten (they stay retired in the store).
        busy = self.jobs.hosts_in_use()
        for name, h in list(self.hosts.items()):
            if h.retired and name not in busy:
                del self.hosts[name]
        user_names = {u.name for u in users}
        old_users = self.users
        self.users = {}
        for u in users:
            previous = old_users.get(u.name)
            if previous is not None:
                u.enabled = previous.enabled
            self.users[u.name] = u
        await self.store.sync_users(users)
        removed_users = sorted(set(old_users) - user_names)
        new_users = sorted(user_names - set(old_users))
        self.request_pass()
        parts = [f"{len(self.hosts)} host(s), {len(self.users)} user(s)"]
        for label, names in (("added", added), ("updated", updated), ("retired", retired),
                             ("back", restored), ("new users", new_users),
                             ("removed users", removed_users)):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        summary = "configuration reloaded: " + "; ".join(parts)
        self.log.info(summary)
        return summary

    # --- sessions -------------------------------------------------------------------

    def tms_connected(self, user: str, session: Any) -> None:
        self.tms_sessions[user] = session
        self.request_pass()

    def tms_disconnected(self, user: str, session: Any) -> None:
        if self.tms_sessions.get(user) is session:
            del self.tms_sessions[user]

    def executor_connected(self, user: str, host: str, session: Any) -> None:
        old = self.executor_table.connected(user, host, session)
        if old is not None:
            old.fence()
        for job in self._jobs_on(user, host, JobState.PENDING):
            if job.id in self.killing:
                ensureDeferred(self._kill_for_repair(job, session))  # not started: not found
            else:
                ensureDeferred(self._send_run(job, session))
        self.request_pass()

    def executor_disconnected(self, user: str, host: str, session: Any) -> None:
        # Its jobs may well still run (a network blip, a dispatcher-side drop): the table
        # keeps them for one lease; if the executor is back by then, its heartbeat tells
        # what still runs.
        self.executor_table.disconnected(user, host, session)

    def _lease_expired(self, user: str, host: str) -> None:
        for job in self._jobs_on(user, host, JobState.RUNNING) + self._jobs_on(
            user, host, JobState.PENDING
        ):
            self._lose(job, f"the executor of {user} on {host} went away and did not come back "
                            f"within {self.settings.executor_lease:.0f} s")

    def _check_leases(self) -> None:
        """Drop executors that stopped sending heartbeats (hung, or a half-open connection)."""
        now = self.reactor.seconds()
        for (user, host), session in list(self.executors.items()):
            if now - session.last_heard > self.settings.executor_lease:
                self.log.warn("the executor of {user} on {host} has been silent for {t:.0f} s: "
                              "dropping it", user=user, host=host, t=now - session.last_heard)
                session.drop()

    def reconcile(self, user: str, host: str, session: Any, running: set[tuple[int, int]]) -> None:
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
            gone = (job.state is JobState.RUNNING and (job.id, job.attempt) not in running
                    and now - since > 5.0)
            killing = self.killing.get(job.id)
            if killing is not None and not gone and not killing.delivered:
                ensureDeferred(self._kill_for_repair(job, session))
            elif gone:
                # _lose ends an attempt being killed the way its repair asked.
                self._lose(job, f"the executor on {host} no longer runs it")
        for job_id, attempt in running - expected:
            self.log.warn("killing a stale copy of job {id} (attempt {a}) on {host}",
                          id=job_id, a=attempt, host=host)
            ensureDeferred(self._kill_stale(session, job_id, attempt))

    async def _kill_stale(self, session: Any, job_id: int, attempt: int) -> None:
        try:
            await session.proto.call(commands.SignalJob, job_id=job_id, attempt=attempt,
                                     action="kill")
        except Exception as e:
            self.log.info("could not kill the stale copy of job {id}: {e}", id=job_id, e=str(e))

    def executor_start_failed(self, user: str, host: str, reason: str) -> None:
        if (user, host) in self.executors:
            # An executor got there after all (e.g. a hung one woke up): nothing failed.
            self.log.info("ignoring a failed executor start of {user} on {host}: one is "
                          "connected ({reason})", user=user, host=host, reason=reason)
            return
        self.log.warn("starting an executor of {user} on {host} failed: {reason}",
                      user=user, host=host, reason=reason)
        self.executor_table.start_failed(user, host, EXECUTOR_BACKOFF, MAX_EXECUTOR_BACKOFF)
        for job in self._jobs_on(user, host, JobState.PENDING):
            self._transition(job, JobState.WAITING, f"executor start on {host} failed: {reason}",
                             clear_host=True)

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
                out.append(f"{host.name}: skipped, the last start failed "
                           f"(retried after {self.backoff[key] - now:.0f} s)")
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
                out.append(f"{host}: kept, {len(busy)} job(s) run there "
                           f"(kill them first: killjob:{busy[0]})")
                continue
            try:
                await session.proto.call(commands.Shutdown, reply_timeout=10)
                out.append(f"{host}: stopped")
            except (ConnectionDone, ConnectionLost):
                out.append(f"{host}: stopped")  # it went before its answer arrived
            except Exception as e:
                out.append(f"{host}: could not be stopped: {e}")
        return out or ["no executor is running"]

    def _jobs_on(self, user: str, host: str, state: JobState) -> list[Job]:
        return self.jobs.on(user, host, state)

    # --- transitions -------------------------------------------------------------------

    def _transition(self, job: Job, new: JobState, reason: str = "", **kw: Any) -> Deferred:
        """Change ``job``'s state in memory now and in the store by the next group commit.

        The Deferred fires with True once committed, False if the compare-and-set did not
        apply, or a :class:`NotWritten` (false too) if the change could not be written: the
        job is then re-read from the store (see :meth:`_resync`).
        """
        now = self.reactor.seconds()
        # The time of the decision, not of the commit: the store and memory agree.
        at = kw.pop("at", None)
        at = now if at is None else at
        if job.state is JobState.RUNNING and new is not JobState.RUNNING and job.started_at:
            self.ledger.charge(job.user, job.spec.slots * max(0.0, at - job.started_at), now)
        # One record, applied to the job here and written by the writer: the two agree.
        t = self.jobs.transition(job, new, reason, at, **kw)
        if new is JobState.RUNNING:
            self.start_failures.pop(job.id, None)  # its start order got through
        if new.terminal:
            self._forget(job.id)
            for d in self.waiters.pop(job.id, []):
                d.callback(job)
        if new in (JobState.WAITING, JobState.FINISHED, JobState.FAILED, JobState.KILLED,
                   JobState.LOST):
            self.request_pass()
        d = self.writer.write(t)
        d.addErrback(self._write_failed, job, t)
        return d

    def _forget(self, job_id: int) -> None:
        """Drop a job that ended (or was removed) from the working set."""
        self.jobs.discard(job_id)
        self.reservations.pop(job_id, None)
        self.start_failures.pop(job_id, None)
        self.killing.pop(job_id, None)

    def _write_failed(self, failure: Failure, job: Job, t: Transition) -> NotWritten:
        """A state change the writer gave up on: the store keeps the old state. Never
        silently dropped: logged, the job re-read from the store (so memory and the store
        agree again), and the caller told (an end is then not acknowledged)."""
        self.log.failure("state change of job {id} ({old} -> {new}) not written: the job is "
                         "re-read from the database", failure, id=t.job_id, old=t.old.value,
                         new=t.new.value)
        if job.id not in self._resyncing:
            self._resyncing.add(job.id)
            ensureDeferred(self._resync(job, placement=t.new is JobState.PENDING,
                                        reason=failure.getErrorMessage()))
        return NotWritten(failure.getErrorMessage())

    async def _resync(self, job: Job, placement: bool, reason: str) -> None:
        delay, top = RESYNC_DELAY
        while True:
            try:
                fresh = await self.store.get_job(job.id)
                break
            except Exception as e:
                self.log.warn("job {id} cannot be re-read yet ({e}); retry in {t:.1f} s",
                              id=job.id, e=str(e), t=delay)
                await deferLater(self.reactor, delay, lambda: None)
                delay = min(top, delay * 2)
        self._resyncing.discard(job.id)
        if fresh is None or fresh.state.terminal:
            self._forget(job.id)
            for d in self.waiters.pop(job.id, []):
                d.callback(fresh or job)
            self.request_pass()
            return
        self.jobs.refresh(job, fresh)
        if job.state is JobState.PENDING:
            # As at start-up: a placement whose start may not have gone out is redone.
            self._transition(job, JobState.WAITING, "placement redone after a failed write",
                             clear_host=True)
        if placement and job.state is JobState.WAITING:
            self._start_not_delivered(job, f"the placement could not be written: {reason}",
                                      requeue=False)
        self.request_pass()

    def _lose(self, job: Job, reason: str) -> None:
        if self._killed_attempt_gone(job, reason):
            return
        self._transition(job, JobState.LOST, reason)
        self._transition(job, JobState.WAITING, "requeued after: " + reason,
                         new_attempt=job.attempt + 1, clear_host=True)

    def _start_not_delivered(self, job: Job, reason: str, requeue: bool = True) -> None:
        """A pending job's start order did not get through: back to waiting, not placed
        again for a growing pause; after MAX_START_TRIES in a row the job ends failed.

        No single job can keep the dispatcher or an executor busy this way."""
        failures = self.start_failures.get(job.id, (0, 0.0))[0] + 1
        if failures >= MAX_START_TRIES and job.state is JobState.PENDING:
            self.start_failures.pop(job.id, None)
            self._transition(job, JobState.FAILED, f"start failed {failures} times in a row, "
                             f"not tried again; the last time: {reason}")
            return
        pause = min(MAX_START_RETRY_DELAY, START_RETRY_DELAY * 2 ** (failures - 1))
        self.start_failures[job.id] = (failures, self.reactor.seconds() + pause)
        if requeue:
            self._transition(job, JobState.WAITING, f"start order not delivered: {reason} "
                             f"(try {failures + 1} of {MAX_START_TRIES} in {pause:.0f} s)",
                             clear_host=True)
        self.reactor.callLater(pause + 0.01, self.request_pass)

    # --- scheduling ------------------------------------------------------------------------

    def request_pass(self) -> None:
        if not self._pass_scheduled:
            self._pass_scheduled = True
            self.reactor.callLater(0, self._run_pass)

    def occupied(self) -> dict[str, int]:
        occ = self.jobs.occupied
        return {name: occ.get(name, 0) for name in self.hosts}

    def scheduler_input(self, listing: bool = False) -> scheduler.SchedulerInput:
        """What a pass decides from, fed by the working set's waiting queues: nothing here
        walks the waiting jobs. ``listing``: every waiting job as a list too (for
        lsnextjobs and the reason a job waits, which walk the queue anyway)."""
        occ = self.jobs.occupied
        now = self.reactor.seconds()
        hosts = tuple(
            scheduler.HostView(
                name=h.name,
                max_slots=h.max_slots,
                number_slots=h.number_slots,
                occupied=occ.get(h.name, 0),
                active=h.active and not h.retired,
                load=self.loads.get(h.name),
                load_check=h.load_check,
            )
            for h in self.hosts.values()
        )
        held = frozenset(job_id for job_id, (_, until) in self.start_failures.items()
                         if until > now)
        blocked = self.executor_table.blocked(now)
        waiting_users = self.jobs.waiting_users()
        for user in waiting_users:
            if user not in self.tms_sessions:
                # Nobody can start an executor for this user: only hosts with one qualify.
                blocked |= {(user, h) for h in self.hosts if (user, h) not in self.executors}
        return scheduler.SchedulerInput(
            hosts=hosts,
            jobs=tuple(v for v in self.jobs.waiting_views() if v.id not in held)
            if listing else (),
            queues=None if listing else self.jobs,
            held=held,
            usage=self.usage(now),
            cluster_active=self.cluster_active,
            # Users disabled, or removed from etc/users since they submitted.
            disabled_users=frozenset(
                {u.name for u in self.users.values() if not u.enabled}
                | {u for u in waiting_users if u not in self.users}
            ),
            blocked=frozenset(blocked),
            reservations=dict(self.reservations),
        )

    def usage(self, now: float) -> dict[str, float]:
        """Each user's recent usage in slot-seconds (decayed), running jobs included."""
        return self.ledger.usage(now, (
            (j.user, j.spec.slots, j.started_at) for j in self.jobs.in_state(JobState.RUNNING)
            if j.started_at is not None))

    def _run_pass(self) -> None:
        self._pass_scheduled = False
        self.passes += 1
        decision = scheduler.schedule(self.scheduler_input())
        self.reservations = dict(decision.reservations)
        for job_id, host in decision.placements:
            job = self.jobs[job_id]
            d = self._transition(job, JobState.PENDING, f"placed on {host}", host=host)
            d.addCallback(self._placed, job, job.attempt)

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
            self._transition(job, JobState.WAITING, "no TMS of the user is connected", clear_host=True)
            return
        ensureDeferred(self._start_executor(tms, job.user, self.hosts[host_name]))

    async def _start_executor(self, tms: Any, user: str, host: Host) -> None:
        """Ask the user's TMS to start an executor on ``host``; fail it if none connects in time.

        ``starting`` marks the start (set before the first await, so at once) and its time is
        the start's token: the timer of an earlier start cannot fail a later one."""
        self.executor_table.start(user, host.name)
        try:
            await tms.proto.call(
                commands.StartExecutor,
                host=host.name,
                ssh_target=host.ssh_target,
                command=host.tmmenial_command,
            )
        except Exception as e:
            self.executor_start_failed(user, host.name, f"the TMS did not answer: {e}")
            return
        self.executor_table.start_asked(user, host.name, EXECUTOR_START_TIMEOUT)

    def _start_timed_out(self, user: str, host: str) -> None:
        self.executor_start_failed(user, host, "no executor connected within "
                                   f"{EXECUTOR_START_TIMEOUT:.0f} s")

    async def _send_run(self, job: Job, session: Any) -> None:
        attempt = job.attempt
        env = await self._environment(job.env_id)
        try:
            answer = await session.proto.call(
                commands.RunJob,
                job_id=job.id,
                attempt=attempt,
                command=job.spec.command,
                shell=job.spec.shell,
                cwd=job.cwd,
                umask=job.umask,
                env=env,
                stdout=job.spec.stdout,
                stderr=job.spec.stderr,
                logfile=job.spec.logfile,
                slots=job.spec.slots,
            )
        except commands.JobStartFailed as e:
            if job.state is JobState.PENDING and job.attempt == attempt:
                self._transition(job, JobState.FAILED, f"start failed: {e}")
            return
        except Exception as e:
            if job.state is JobState.PENDING and job.attempt == attempt:
                self._start_not_delivered(job, " ".join((str(e) or type(e).__name__).split()))
            return
        if job.state is JobState.PENDING and job.attempt == attempt:
            self._transition(job, JobState.RUNNING, f"running on {job.host}", pid=answer["pid"],
                             host=job.host)

    async def _environment(self, env_id: int | None) -> dict[str, str]:
        """Submission environments, cached: a bulk submission shares one."""
        if env_id is None:
            return {}
        env = self._environments.get(env_id)
        if env is None:
            env = await self.store.get_environment(env_id)
            if len(self._environments) >= 256:
                self._environments.pop(next(iter(self._environments)))
            self._environments[env_id] = env
        return env

    def job_finished(self, user: str, host: str, job_id: int, attempt: int, exit_code: int | None,
                     signal: int | None, killed: bool, reason: str,
                     lost: bool = False, ended_at: float | None = None) -> Deferred | None:
        """Record an attempt's end. The Deferred fires once the end is committed: the executor
        forgets the end only then, so an end is never lost to a database outage or a dispatcher
        stop in between (a report repeated meanwhile waits for the same commit). If the end
        cannot be written, the Deferred fails (DatabaseUnavailable): the executor keeps the
        end and reports it again.

        ``ended_at`` is the executor's own time of the end (an end reported after an outage
        ended before its report): recorded as the end's time, but never before the job's
        start nor after now."""
        key = (job_id, attempt)
        if key in self._unwritten_ends:
            return self._wait_written(key)
        if job_id in self._resyncing:
            return fail(commands.DatabaseUnavailable(
                f"job {job_id}'s state is being re-read after a failed write: report again"))
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.user != user or job.host != host:
            self.log.info("ignoring the end of job {id} attempt {a}: not current", id=job_id, a=attempt)
            return None
        if lost:
            if job.state is JobState.PENDING:
                self._transition(job, JobState.RUNNING, f"running on {host}", host=host)
            self._lose(job, reason or f"stopped by the executor on {host}")
            return None
        if job.state is JobState.PENDING:
            # The end overtook the start answer; record the start first.
            self._transition(job, JobState.RUNNING, f"running on {host}", host=host)
        now = self.reactor.seconds()
        if ended_at is None or not math.isfinite(ended_at):
            at = now
        else:
            at = min(now, max(ended_at, job.started_at or now))
        if job.id in self.killing:
            written = self._killed_attempt_ended(job, at)
        else:
            new = ending_state(exit_code, signal, killed)
            if not reason:
                reason = (f"exit code {exit_code}") if signal is None else (f"signal {signal}")
            written = self._transition(job, new, reason, exit_code=exit_code, signal=signal,
                                       host=host, at=at)
        self._unwritten_ends[key] = []
        written.addBoth(self._end_written, key)
        return self._wait_written(key)

    def _wait_written(self, key: tuple[int, int]) -> Deferred:
        d: Deferred = Deferred()
        self._unwritten_ends[key].append(d)
        return d

    def _end_written(self, result: Any, key: tuple[int, int]) -> None:
        waiting = self._unwritten_ends.pop(key, [])
        if isinstance(result, NotWritten):
            # Not acknowledged: the executor keeps the end and reports it again.
            for d in waiting:
                d.errback(commands.DatabaseUnavailable(
                    f"the end of job {key[0]} could not be recorded ({result.error}): "
                    "report it again"))
            return
        for d in waiting:
            d.callback(None)

    # --- kill and suspend ------------------------------------------------------------------

    def kill(self, job: Job) -> None:
        """Kill a job: a waiting one ends at once; a placed one through its executor."""
        killing = self.killing.get(job.id)
        if killing is not None and killing.then != "remove":
            self.killing.pop(job.id)  # the user's kill decides: the end is recorded as killed
        if job.state in (JobState.WAITING, JobState.LOST):
            if job.state is JobState.LOST:
                self._transition(job, JobState.WAITING, "requeued", new_attempt=job.attempt + 1)
            self._transition(job, JobState.KILLED, "killed before it started")
            return
        session = self.executors.get((job.user, job.host or ""))
        if session is None:
            self._transition(job, JobState.KILLED, "killed before its executor started")
            return
        ensureDeferred(self._signal(job, session, "kill"))

    async def _signal(self, job: Job, session: Any, action: str) -> bool:
        try:
            answer = await session.proto.call(commands.SignalJob, job_id=job.id,
                                              attempt=job.attempt, action=action)
        except Exception as e:
            self.log.warn("could not {action} job {id}: {e}", action=action, id=job.id, e=str(e))
            return False
        if not answer["found"] and action == "kill" and job.state is JobState.PENDING:
            self._transition(job, JobState.KILLED, "killed before it started")
        return bool(answer["found"])

    async def suspend(self, job: Job, resume: bool) -> None:
        session = self.executors.get((job.user, job.host or ""))
        if session is None:
            raise commands.InvalidRequest(f"job {job.id} has no executor connected")
        if not await self._signal(job, session, "cont" if resume else "stop"):
            raise commands.InvalidRequest(f"the executor does not run job {job.id}")
        job.suspended = not resume
        await self.store.set_suspended(job.id, job.suspended)

    # --- admin repairs ------------------------------------------------------------------

    async def remove_jobs(self, user: str, waiting_only: bool) -> tuple[int, int]:
        """rmwjobs / rmjobs: remove a user's (waiting) jobs.

        A placed job is killed first and removed only once its tree is gone (see Killing):
        until then it keeps its slots. Returns (removed now, being killed then removed)."""
        states = [JobState.WAITING] if waiting_only else list(JobState)
        victims = await self.store.list_jobs(states, user=user, limit=1_000_000)
        now_ids = []
        later = 0
        for job in victims:
            live = self.jobs.get(job.id)
            if live is not None and live.state.holds_slots:
                self._kill_then(live, "remove")
                later += 1
                continue
            if job.id in self._resyncing:
                continue  # its state is being repaired: removed by a later rmjobs
            self._forget(job.id)
            now_ids.append(job.id)
        count = await self.store.delete_jobs(now_ids) if now_ids else 0
        self.request_pass()
        return count, later

    def set_all(self, old: JobState, new: JobState) -> int:
        """setall[p|r]jobsas[waiting|finished]: move every job in ``old``.

        A running job is killed first: its attempt keeps its slots until its tree is gone,
        then it is requeued (or set as finished). Two copies never run, and a host never
        holds more than its maximum."""
        jobs = sorted(self.jobs.in_state(old), key=lambda j: j.id)
        for job in jobs:
            if old is JobState.RUNNING:
                self._kill_then(job, "waiting" if new is JobState.WAITING else "finished")
            elif new is JobState.WAITING:
                self._transition(job, JobState.WAITING, "re-queued by the admin",
                                 new_attempt=job.attempt + 1, clear_host=True)
            else:
                self._transition(job, new, "set as finished by the admin")
        return len(jobs)

    def _kill_then(self, job: Job, then: str) -> None:
        """Kill ``job``'s attempt; when its tree is gone, do ``then`` (see Killing)."""
        current = self.killing.get(job.id)
        if current is not None and current.attempt == job.attempt:
            if then == "remove":
                current.then = "remove"  # removal wins over a requeue asked before
            return
        self.killing[job.id] = Killing(attempt=job.attempt, then=then)
        key = (job.user, job.host or "")
        session = self.executors.get(key)
        if session is not None:
            ensureDeferred(self._kill_for_repair(job, session))
        elif job.state is JobState.PENDING and key not in self.absent:
            # Placed, but no executor ever took the start order: nothing runs.
            self._killed_attempt_ended(job, self.reactor.seconds())
        # An absent executor: its end comes when it is back, or the lease loses the attempt.

    async def _kill_for_repair(self, job: Job, session: Any) -> None:
        killing = self.killing.get(job.id)
        if killing is None:
            return
        attempt = killing.attempt
        killing.delivered = True  # one order at a time; a failed one is sent again
        try:
            answer = await session.proto.call(commands.SignalJob, job_id=job.id,
                                              attempt=attempt, action="kill")
        except Exception as e:
            self.log.warn("could not kill job {id} (attempt {a}) for an admin repair: {e}; "
                          "sent again with the executor's next heartbeat", id=job.id, a=attempt,
                          e=str(e))
            if self.killing.get(job.id) is killing:
                killing.delivered = False
            return
        if (not answer["found"] and self.killing.get(job.id) is killing
                and job.attempt == attempt and job.state.holds_slots):
            # The executor does not run it (and reports ends before answering): gone.
            self._killed_attempt_gone(job, "the executor does not run it")

    def _killed_attempt_gone(self, job: Job, reason: str) -> bool:
        """If ``job``'s attempt was being killed for a repair, finish the repair now that its
        tree is gone, and say True; else False."""
        killing = self.killing.get(job.id)
        if killing is None or killing.attempt != job.attempt or not job.state.holds_slots:
            return False
        self._killed_attempt_ended(job, self.reactor.seconds())
        return True

    def _killed_attempt_ended(self, job: Job, at: float) -> Deferred:
        """The tree of an attempt killed for a repair is gone: requeue, finish or remove."""
        killing = self.killing.pop(job.id)
        if killing.then == "waiting":
            return self._transition(job, JobState.WAITING, "re-queued by the admin",
                                    new_attempt=job.attempt + 1, clear_host=True)
        if killing.then == "finished":
            return self._transition(job, JobState.FINISHED, "set as finished by the admin",
                                    at=at)
        written = self._transition(job, JobState.KILLED, "removed by the admin", at=at)
        written.addCallback(self._remove_after_end, job.id)
        return written

    def _remove_after_end(self, applied: Any, job_id: int) -> Any:
        if isinstance(applied, NotWritten):
            return applied  # the end is reported again; rmjobs again removes the job
        d = ensureDeferred(self.store.delete_jobs([job_id]))
        d.addErrback(lambda f: self.log.warn("job {id} ended but could not be removed: {e} "
                                             "(run rmjobs again)", id=job_id,
                                             e=f.getErrorMessage()))
        return applied

    # --- waiting for ends ---------------------------------------------------------------------

    async def wait_job(self, job_id: int, timeout: float) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None:
            return await self.store.get_job(job_id)
        d: Deferred = Deferred()
        self.waiters.setdefault(job_id, []).append(d)
        call = self.reactor.callLater(timeout, _fire_unless_called, d)
        result = await d
        if call.active():
            call.cancel()
        if result is None:
            lst = self.waiters.get(job_id, [])
            if d in lst:
                lst.remove(d)
            return self.jobs.get(job_id) or await self.store.get_job(job_id)
        return result

    # --- published information -----------------------------------------------------------------

    def public_info(self, certificate: bytes) -> dict[str, Any]:
        return {
            "host": self.settings.public_host,
            "port": self.settings.port,
            "certificate": certificate.decode("ascii"),
            "challenge_dir": str(self.settings.var_dir / "challenge"),
            "pid": os.getpid(),
            "started_at": self.started_at,
        }
