"""Job control in the dispatcher: ends reported by executors, kill and suspend, admin
repairs (rmjobs, setall...), and waiting for a job's end."""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, fail

from tm import trace
from tm.core.model import Job, JobState, ending_state
from tm.core.retry import Cause, final_reason
from tm.dispatcher.core import DispatcherCore, Killing, NotWritten
from tm.dispatcher.ports import PeerSession
from tm.protocol import commands


class JobControl(DispatcherCore):
    """What happens to placed jobs beyond their start."""

    def job_finished(
        self,
        user: str,
        host: str,
        job_id: int,
        attempt: int,
        exit_code: int | None,
        signal: int | None,
        killed: bool,
        reason: str,
        lost: bool = False,
        ended_at: float | None = None,
        timed_out: bool = False,
        usage: dict[str, Any] | None = None,
    ) -> Deferred | None:
        """Record an attempt's end. The Deferred fires once the end is committed: the executor
        forgets the end only then, so an end is never lost to a database outage or a dispatcher
        stop in between (a report repeated meanwhile waits for the same commit). If the end
        cannot be written, the Deferred fails (DatabaseUnavailable): the executor keeps the
        end and reports it again.

        ``ended_at`` is the executor's own time of the end (an end reported after an outage
        ended before its report): recorded as the end's time, but never before the job's
        start nor after now. ``timed_out``: stopped by its executor at its time limit;
        ``usage``: the end's ``cpu_time``, ``max_rss_kib`` and ``run_time``, written with it."""
        key = (job_id, attempt)
        if key in self._unwritten_ends:
            return self._wait_written(key)
        if job_id in self._resyncing:
            return fail(
                commands.DatabaseUnavailable(
                    f"job {job_id}'s state is being re-read after a failed write: report again"
                )
            )
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.user != user or job.host != host:
            self.log.info(
                "ignoring the end of job {id} attempt {a}: not current", id=job_id, a=attempt
            )
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
            new = ending_state(exit_code, signal, killed, timed_out)
            if not reason:
                reason = (f"exit code {exit_code}") if signal is None else (f"signal {signal}")
            end = {"exit_code": exit_code, "signal": signal, "host": host, "at": at}
            end.update(usage or {})
            if new is JobState.FAILED:
                written = self._fail_or_retry(job, Cause.EXIT, reason, **end)
            else:
                written = self._transition(job, new, final_reason(reason, job.attempt), **end)
        self._unwritten_ends[key] = []
        written.addBoth(self._end_written, key)
        return self._wait_written(key)

    def _wait_written(self, key: tuple[int, int]) -> Deferred:
        d: Deferred = Deferred()
        self._unwritten_ends[key].append(d)
        return d

    def _end_written(self, result: Any, key: tuple[int, int]) -> None:
        trace.point("dispatcher", "end-committed", key[0])
        waiting = self._unwritten_ends.pop(key, [])
        if isinstance(result, NotWritten):
            # Not acknowledged: the executor keeps the end and reports it again.
            for d in waiting:
                d.errback(
                    commands.DatabaseUnavailable(
                        f"the end of job {key[0]} could not be recorded ({result.error}): "
                        "report it again"
                    )
                )
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

    async def _signal(self, job: Job, session: PeerSession, action: str) -> bool:
        try:
            answer = await session.proto.call(
                commands.SignalJob, job_id=job.id, attempt=job.attempt, action=action
            )
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
            if not job.state.terminal:
                self._settle_dependants(job, None)
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
                self._transition(
                    job,
                    JobState.WAITING,
                    "re-queued by the admin",
                    new_attempt=job.attempt + 1,
                    clear_host=True,
                )
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

    async def _kill_for_repair(self, job: Job, session: PeerSession) -> None:
        killing = self.killing.get(job.id)
        if killing is None:
            return
        attempt = killing.attempt
        killing.delivered = True  # one order at a time; a failed one is sent again
        try:
            answer = await session.proto.call(
                commands.SignalJob, job_id=job.id, attempt=attempt, action="kill"
            )
        except Exception as e:
            self.log.warn(
                "could not kill job {id} (attempt {a}) for an admin repair: {e}; "
                "sent again with the executor's next heartbeat",
                id=job.id,
                a=attempt,
                e=str(e),
            )
            if self.killing.get(job.id) is killing:
                killing.delivered = False
            return
        if (
            not answer["found"]
            and self.killing.get(job.id) is killing
            and job.attempt == attempt
            and job.state.holds_slots
        ):
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
            return self._transition(
                job,
                JobState.WAITING,
                "re-queued by the admin",
                new_attempt=job.attempt + 1,
                clear_host=True,
            )
        if killing.then == "finished":
            return self._transition(job, JobState.FINISHED, "set as finished by the admin", at=at)
        written = self._transition(job, JobState.KILLED, "removed by the admin", at=at)
        written.addCallback(self._remove_after_end, job.id)
        return written

    def _remove_after_end(self, applied: Any, job_id: int) -> Any:
        if isinstance(applied, NotWritten):
            return applied  # the end is reported again; rmjobs again removes the job
        d = ensureDeferred(self.store.delete_jobs([job_id]))
        d.addErrback(
            lambda f: self.log.warn(
                "job {id} ended but could not be removed: {e} (run rmjobs again)",
                id=job_id,
                e=f.getErrorMessage(),
            )
        )
        return applied

    # --- waiting for ends ---------------------------------------------------------------------

    async def wait_job(self, job_id: int, timeout: float) -> Job | None:
        job = self.jobs.get(job_id)
        if job is None:
            return await self.store.get_job(job_id)
        d: Deferred = Deferred()
        self.waiters.setdefault(job_id, []).append(d)
        # At the deadline the wait answers None (the job as it stands), not an error.
        d.addTimeout(timeout, self.reactor, onTimeoutCancel=lambda _result, _timeout: None)
        result = await d
        if result is None:
            lst = self.waiters.get(job_id, [])
            if d in lst:
                lst.remove(d)
            return self.jobs.get(job_id) or await self.store.get_job(job_id)
        return result
