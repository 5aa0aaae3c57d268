"""The dispatcher's state and the one path of a job's state change.

:class:`DispatcherCore` holds what the dispatcher knows in memory -- the working set of
active jobs (:mod:`tm.core.workingset`), the executor table (:mod:`tm.dispatcher.executors`),
hosts, users, sessions -- and changes a job's state in one method, :meth:`_transition`:
the working set applies the transition record to the job, the group-commit writer commits
the same record. A scheduling pass (:meth:`_run_pass`) is fed by the working set's queues.
The other parts of the dispatcher (links to executors and TMS, job control, the service)
build on it; see docs/dispatcher.md.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from tm import trace
from tm.core import scheduler
from tm.core.dependencies import DependencyIndex
from tm.core.fairshare import DEFAULT_HALF_LIFE, UsageLedger
from tm.core.model import Host, Job, JobState, Transition, User
from tm.core.retry import DEFAULT_LOST_RETRIES, Cause, decide
from tm.core.workingset import WorkingSet
from tm.dispatcher import callbacks
from tm.dispatcher.executors import ExecutorTable
from tm.dispatcher.ports import DispatcherStore, PeerSession
from tm.dispatcher.startbatch import StartBatches
from tm.dispatcher.watching import Watchers
from tm.dispatcher.writer import TransitionWriter
from tm.protocol import records

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
    #: Retries of a lost job submitted without --retries (tm/core/retry.py).
    lost_retries: int = DEFAULT_LOST_RETRIES


class DispatcherCore:
    """The state, the transitions and the scheduling pass; the parts of
    :class:`~tm.dispatcher.service.Dispatcher` that the others build on."""

    log = Logger()

    def __init__(self, reactor: Any, settings: Settings, store: DispatcherStore) -> None:
        self.reactor = reactor
        self.settings = settings
        self.store = store
        self.writer = TransitionWriter(reactor, store.apply_transitions)
        self.hosts: dict[str, Host] = {h.name: h for h in settings.hosts}
        self.users: dict[str, User] = {u.name: u for u in settings.users}
        self.jobs = WorkingSet()  # waiting, pending, running, lost; indexed
        #: Who waits for whom (tm.dispatcher.dependencies); its waiting jobs stay unqueued.
        self.deps = DependencyIndex()
        self.jobs.blocked_ids = self.deps.unmet
        self.cluster_active = True
        self.loads: dict[str, float] = {}
        self.load_at: dict[str, float] = {}  # when each host's load was last reported
        self.tms_sessions: dict[str, PeerSession] = {}
        #: Each user's executor on each host: absent, starting, connected, away, backed off.
        self.executor_table: ExecutorTable[PeerSession] = ExecutorTable(
            reactor,
            settings.executor_lease,
            on_lease_over=self._lease_expired,
            on_start_over=self._start_timed_out,
            on_backoff_over=self.request_pass,
        )
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
        #: Waits for many jobs (WaitJobs), woken by the changes of their jobs once committed.
        self.watchers = Watchers(reactor)
        self.started_at = 0.0
        self._pass_scheduled = False
        self.passes = 0
        self._environments: dict[int, Any] = {}  # env_id -> as RunJob carries it
        self.start_batches = StartBatches(reactor)  # the start orders of a turn, per executor
        #: host -> slots claimed by jobs placed in their submission's transaction, not yet in
        #: the working set (tm/dispatcher/atonce.py); a pass counts them as occupied.
        self.claimed: dict[str, int] = {}
        #: Told of each transition (``transition(job, t)``), submission (``submitted(jobs)``)
        #: and scheduling pass (``pass_done(seconds)``): the dashboard and metrics (tm.web).
        self.observers: list[Any] = []
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
        for observer in self.observers:
            observer.transition(job, t)
        if new is JobState.RUNNING:
            self.start_failures.pop(job.id, None)  # its start order got through
        waiters: list[Deferred] = []
        if new.terminal:
            self._forget(job.id)
            trace.point("dispatcher", "ended", job.id)
            waiters = self.waiters.pop(job.id, [])
        d = self.writer.write(t)
        if new.terminal:
            self._settle_dependants(job, new)  # its dependants' changes are written after it
        if new in (
            JobState.WAITING,
            JobState.FINISHED,
            JobState.FAILED,
            JobState.KILLED,
            JobState.LOST,
            JobState.TIMEOUT,
        ):
            self.request_pass()
        if waiters:
            # Told once the end is committed: what they hear is what the database says from
            # then on (``lajob`` right after ``hRunJob --wait`` shows it). An end that cannot
            # be written is reported again by its executor: they wait again, for that one.
            d.addErrback(self._wait_again, job.id, waiters)
        d.addErrback(self._write_failed, job, t)
        if waiters:
            d.addCallback(self._end_recorded, job, waiters)
        if new.terminal and job.spec.on_end:
            d.addCallback(callbacks.tell_end, self, job)  # its user's TMS runs its on_end
        # Whoever waits when it is committed, not when it is queued: a WaitJobs that read the
        # store before this commit (and found its known counts) is woken by it.
        d.addCallback(self.watchers.committed, job)
        return d

    def remember_environment(self, env_id: int, text: str) -> Any:
        """The stored environment ``text`` of ``env_id``, cached as RunJob carries it (the
        last 256 submissions' environments)."""
        if len(self._environments) >= 256:
            self._environments.pop(next(iter(self._environments)))
        env = self._environments[env_id] = records.stored_environment(text)
        return env

    def _wait_again(self, failure: Failure, job_id: int, waiters: list[Deferred]) -> Failure:
        self.waiters.setdefault(job_id, []).extend(waiters)
        return failure

    @staticmethod
    def _end_recorded(written: Any, job: Job, waiters: list[Deferred]) -> Any:
        if not isinstance(written, NotWritten):
            for w in waiters:
                if not w.called:
                    w.callback(job)
        return written

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
        self.log.failure(
            "state change of job {id} ({old} -> {new}) not written: the job is "
            "re-read from the database",
            failure,
            id=t.job_id,
            old=t.old.value,
            new=t.new.value,
        )
        if job.id not in self._resyncing:
            self._resyncing.add(job.id)
            ensureDeferred(
                self._resync(
                    job, placement=t.new is JobState.PENDING, reason=failure.getErrorMessage()
                )
            )
        return NotWritten(failure.getErrorMessage())

    async def _resync(self, job: Job, placement: bool, reason: str) -> None:
        delay, top = RESYNC_DELAY
        while True:
            try:
                fresh = await self.store.get_job(job.id)
                break
            except Exception as e:
                self.log.warn(
                    "job {id} cannot be re-read yet ({e}); retry in {t:.1f} s",
                    id=job.id,
                    e=str(e),
                    t=delay,
                )
                await deferLater(self.reactor, delay, lambda: None)
                delay = min(top, delay * 2)
        self._resyncing.discard(job.id)
        if fresh is None or fresh.state.terminal:
            self._forget(job.id)
            self._settle_dependants(job, fresh.state if fresh else None)
            for d in self.waiters.pop(job.id, []):
                d.callback(fresh or job)
            self.request_pass()
            return
        self.jobs.refresh(job, fresh)
        if job.state is JobState.PENDING:
            # As at start-up: a placement whose start may not have gone out is redone.
            self._transition(
                job, JobState.WAITING, "placement redone after a failed write", clear_host=True
            )
        if placement and job.state is JobState.WAITING:
            self._start_not_delivered(
                job, f"the placement could not be written: {reason}", requeue=False
            )
        self.request_pass()

    def _lose(self, job: Job, reason: str) -> None:
        if self._killed_attempt_gone(job, reason):
            return
        self._transition(job, JobState.LOST, reason)
        self._fail_or_retry(job, Cause.LOST, "lost: " + reason)

    def _fail_or_retry(self, job: Job, failure: Cause, reason: str, **kw: Any) -> Deferred:
        """End ``job``'s attempt failed, or requeue it for another attempt where its retries
        allow (tm/core/retry.py); ``kw`` as for :meth:`_transition` of the ending."""
        spec = job.spec
        decision = decide(
            failure,
            job.attempt,
            reason,
            spec.retries,
            spec.retry_on_exit,
            kw.get("exit_code"),
            self.settings.lost_retries,
        )
        if not decision.retry:
            return self._transition(job, JobState.FAILED, decision.reason, **kw)
        self.start_failures.pop(job.id, None)
        return self._transition(
            job,
            JobState.WAITING,
            decision.reason,
            new_attempt=job.attempt + 1,
            clear_host=True,
        )

    def _start_not_delivered(self, job: Job, reason: str, requeue: bool = True) -> None:
        """A pending job's start order did not get through: back to waiting, not placed
        again for a growing pause; after MAX_START_TRIES in a row the job ends failed.

        No single job can keep the dispatcher or an executor busy this way."""
        failures = self.start_failures.get(job.id, (0, 0.0))[0] + 1
        if failures >= MAX_START_TRIES and job.state is JobState.PENDING:
            self.start_failures.pop(job.id, None)
            self._fail_or_retry(
                job,
                Cause.START,
                f"start failed {failures} times in a row; the last time: {reason}",
            )
            return
        pause = min(MAX_START_RETRY_DELAY, START_RETRY_DELAY * 2 ** (failures - 1))
        self.start_failures[job.id] = (failures, self.reactor.seconds() + pause)
        if requeue:
            self._transition(
                job,
                JobState.WAITING,
                f"start order not delivered: {reason} "
                f"(try {failures + 1} of {MAX_START_TRIES} in {pause:.0f} s)",
                clear_host=True,
            )
        self.reactor.callLater(pause + 0.01, self.request_pass)

    # --- scheduling ------------------------------------------------------------------------

    def request_pass(self) -> None:
        if not self._pass_scheduled:
            trace.point("dispatcher", "pass-requested")
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
        if self.claimed:
            occ = {h: occ.get(h, 0) + self.claimed.get(h, 0) for h in {*occ, *self.claimed}}
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
        held = frozenset(
            job_id for job_id, (_, until) in self.start_failures.items() if until > now
        )
        blocked = self.executor_table.blocked(now)
        waiting_users = self.jobs.waiting_users()
        for user in waiting_users:
            if user not in self.tms_sessions:
                # Nobody can start an executor for this user: only hosts with one qualify.
                blocked |= {(user, h) for h in self.hosts if (user, h) not in self.executors}
        return scheduler.SchedulerInput(
            hosts=hosts,
            jobs=tuple(v for v in self.jobs.waiting_views() if v.id not in held) if listing else (),
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
            arrays=self.jobs.arrays.caps(),
        )

    def usage(self, now: float) -> dict[str, float]:
        """Each user's recent usage in slot-seconds (decayed), running jobs included."""
        return self.ledger.usage(
            now,
            (
                (j.user, j.spec.slots, j.started_at)
                for j in self.jobs.in_state(JobState.RUNNING)
                if j.started_at is not None
            ),
        )

    def _run_pass(self) -> None:
        trace.point("dispatcher", "pass")
        self._pass_scheduled = False
        self.passes += 1
        began = time.perf_counter()
        decision = scheduler.schedule(self.scheduler_input())
        self.reservations = dict(decision.reservations)
        for job_id, host in decision.placements:
            trace.point("dispatcher", "placed", job_id)
            job = self.jobs[job_id]
            d = self._transition(job, JobState.PENDING, f"placed on {host}", host=host)
            d.addCallback(self._placed, job, job.attempt)
        for observer in self.observers:
            observer.pass_done(time.perf_counter() - began)

    # --- provided by the other parts (tm.dispatcher.links, tm.dispatcher.jobcontrol) --------

    def _placed(self, applied: bool, job: Job, attempt: int) -> None:
        raise NotImplementedError

    def _lease_expired(self, user: str, host: str) -> None:
        raise NotImplementedError

    def _start_timed_out(self, user: str, host: str) -> None:
        raise NotImplementedError

    async def _kill_for_repair(self, job: Job, session: PeerSession) -> None:
        raise NotImplementedError

    def _killed_attempt_gone(self, job: Job, reason: str) -> bool:
        raise NotImplementedError

    def _killed_attempt_ended(self, job: Job, at: float) -> Deferred:
        raise NotImplementedError

    def _settle_dependants(self, job: Job, new: JobState | None) -> None:
        raise NotImplementedError
