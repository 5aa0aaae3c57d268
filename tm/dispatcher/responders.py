"""The responders of a dispatcher session that concern jobs: submission, listings, a job's
details and end, executors' reports, kill and suspend.

Each responder authorises (the session's proven user and role), converts records, and calls
one method of the dispatcher; the dispatcher's state is changed only by its methods.
"""

from __future__ import annotations

import dataclasses
import hashlib
from itertools import islice
from typing import TYPE_CHECKING, Any

from tm.core.jobtime import ended_usage
from tm.core.model import ACTIVE_STATES, Job, JobState
from tm.core.patterns import PatternError, compile_user_pattern
from tm.dispatcher.sessionbase import SessionBase, _first, _fit_ids, _fit_text  # noqa: F401
from tm.protocol import batches, commands, jobtable, records
from tm.protocol.base import one_line

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass

#: The longest interval between an executor's heartbeats (shorter with a short lease).
HEARTBEAT_INTERVAL = 5.0
#: Jobs in one page of a listing, at most; a page also ends where one AMP value is full
#: (about 250 short jobs).
MAX_PAGE = 1000
#: Rows read from the database for one page (those that do not fit the value are read
#: again for the next page): a little more than a value holds of short jobs.
SQL_PAGE = 300


class JobResponders(SessionBase):
    # --- jobs -----------------------------------------------------------------------

    @commands.SubmitJobs.responder
    async def submit_jobs(
        self, cwd: str, umask: int, env: Any, jobs: list[dict], sealed_env: str | None = None
    ) -> dict:
        return await self._submit(cwd, umask, env, jobs, sealed_env)

    @commands.SubmitJobTable.responder
    async def submit_job_table(
        self, cwd: str, umask: int, env: Any, jobs_table: str, sealed_env: str | None = None
    ) -> dict:
        self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        try:
            jobs = jobtable.rows_of_table(jobs_table)
        except jobtable.TableError as e:
            raise commands.InvalidRequest(str(e)) from None
        return await self._submit(cwd, umask, env, jobs, sealed_env)

    async def _submit(
        self, cwd: str, umask: int, env: Any, jobs: list[dict], sealed_env: str | None
    ) -> dict:
        user = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        d = self.dispatcher
        try:
            environment = records.environment_from_amp({"cwd": cwd, "umask": umask, "env": env})
        except (ValueError, TypeError) as e:
            raise commands.InvalidRequest(str(e)) from None
        if not cwd.startswith("/"):
            raise commands.InvalidRequest(f"the submission directory must be absolute, got {cwd!r}")
        problem = records.environment_problem(environment)
        if problem:
            raise commands.InvalidRequest(problem)
        # Only the user's TMS holds the user's key: a job it did not sign, or a plain
        # environment, would be stored only to be refused by the executor (tm/jobsign.py).
        if not sealed_env or environment.env or not all(j.get("signature") for j in jobs):
            raise commands.InvalidRequest(
                "jobs must be signed with your key by your TMS: submit them with hRunJob "
                "(hConnect -T cannot submit)"
            )
        if len(sealed_env) > records.MAX_SEALED_ENVIRONMENT_CHARS:
            raise commands.InvalidRequest("the sealed environment is too large")
        environment = dataclasses.replace(environment, sealed=sealed_env)
        specs = [records.spec_from_amp(j) for j in jobs]
        ids, warnings = await d.submit(user, environment, specs)
        return {"job_ids": ids, "warnings": warnings}

    @commands.ListJobs.responder
    async def list_jobs(self, **kw: Any) -> dict:
        page, n, next_after_id = await self._listing(records.fit_to_value, **kw)
        return {"jobs": page, "next_after_id": next_after_id}

    @commands.ListJobsJSON.responder
    async def list_jobs_json(self, **kw: Any) -> dict:
        page, n, next_after_id = await self._listing(records.fit_json, **kw)
        return {"jobs_json": page, "next_after_id": next_after_id}

    async def _listing(
        self,
        fit: Any,
        states: list[str],
        scope: str,
        after_id: int,
        limit: int,
        user: str | None = None,
        group: str | None = None,
        text: str | None = None,
        order: str | None = None,
    ) -> tuple[Any, int, int | None]:
        """A page of ListJobs made by ``fit`` (records.fit_to_value: its rows; fit_json:
        their JSON), how many jobs it holds, and the next page's ``after_id``."""
        owner = self._scope_user(scope, user)
        try:
            wanted = [JobState(s) for s in states] or list(JobState)
        except ValueError as e:
            raise commands.InvalidRequest(str(e)) from None
        limit = max(1, min(limit, MAX_PAGE))
        d = self.dispatcher
        if order == "schedule":
            # Pages of the queue order; after_id counts the jobs already sent (an offset).
            ranked = d.queue_order(owner)
            page = ranked[after_id : after_id + limit]
            rows, n = fit(records.JOB_SUMMARY_FIELDS, page, records.job_summary_to_amp)
            more = n < len(page) or after_id + limit < len(ranked)
            return rows, n, after_id + n if more and n else None
        if group is None and not text and ACTIVE_STATES.issuperset(wanted):
            # Active jobs are all in the working set, as they are now: no database read.
            jobs = list(islice(d.jobs.listing(wanted, owner, after_id), limit + 1))
        else:
            limit = min(limit, SQL_PAGE)
            jobs = await d.store.list_jobs(
                wanted, user=owner, group=group, text=text, after_id=after_id, limit=limit + 1
            )
            for i, job in enumerate(jobs):
                live = d.jobs.get(job.id)
                if live is not None:
                    jobs[i] = live
        rows, n = fit(records.JOB_SUMMARY_FIELDS, jobs[:limit], records.job_summary_to_amp)
        more = n < len(jobs)
        return rows, n, jobs[n - 1].id if more and n else None

    async def _visible_job(self, job_id: int) -> Job:
        me = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        d = self.dispatcher
        job = d.jobs.get(job_id) or await d.store.get_job(job_id)
        # Another user's job is unknown to a non-admin: its command, directory, outputs and
        # history are not theirs to read (nor whether it exists).
        if job is None:
            raise commands.UnknownJob(f"unknown job {job_id}")
        if not self._may_see_user(job.user):
            self.log.info(
                "{me} ({role}) asked for job {id}, not theirs: answered unknown",
                me=me,
                role=self.role,
                id=job_id,
            )
            raise commands.UnknownJob(f"unknown job {job_id}")
        return job

    @commands.GetJob.responder
    async def get_job(self, job_id: int) -> dict:
        job = await self._visible_job(job_id)
        d = self.dispatcher
        history = await d.store.get_history(job_id)
        reason = d.wait_reason(job)
        # The newest history that fits one value, oldest first.
        newest = list(reversed(history[-100:]))
        rows, _ = records.fit_to_value(records.HISTORY_FIELDS, newest, records.history_to_amp)
        rows.reverse()
        # The owner's TMS can open the environment; nobody else can (admins included).
        sealed = None
        if job.user == self.user and job.env_id is not None:
            stored = await d.store.get_environment(job.env_id)
            sealed = stored if stored and not stored.startswith("{") else None
        return {
            "job": [records.fit_job_detail(job)],
            "history": rows,
            "wait_reason": records.shorten(reason, 2_000),
            "sealed_env": sealed,
        }

    @commands.WaitJob.responder
    async def wait_job(self, job_id: int, timeout: float) -> dict:
        await self._visible_job(job_id)
        job = await self.dispatcher.wait_job(job_id, max(0.0, min(timeout, 300.0)))
        if job is None:
            raise commands.UnknownJob(f"unknown job {job_id}")
        return {
            "state": job.state.value,
            "exit_code": job.exit_code,
            "signal": job.signal,
            "reason": records.shorten(job.reason, 2_000),
        }

    @commands.GetStatus.responder
    async def get_status(self) -> dict:
        me = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        d = self.dispatcher
        occ = d.occupied()
        active = [h for h in d.hosts.values() if h.active and not h.retired]
        counts = await d.store.count_by_state()
        mine = await d.store.count_by_state(me)
        return {
            "cluster_active": d.cluster_active,
            "active_hosts": len(active),
            "total_slots": sum(h.max_slots for h in active),
            "occupied_slots": sum(occ[h.name] for h in active),
            "counts": [{"state": s.value, "count": counts.get(s, 0)} for s in JobState],
            "user_counts": [{"state": s.value, "count": mine.get(s, 0)} for s in JobState],
            "address": f"{d.settings.public_host}:{d.settings.port}",
            "started_at": d.started_at,
            "user": me,
        }

    @commands.ListHosts.responder
    def list_hosts(self) -> dict:
        self._require()
        d = self.dispatcher
        occ = d.occupied()
        execs: dict[str, int] = {}
        for _, host in d.executors:
            execs[host] = execs.get(host, 0) + 1
        hosts = list(d.hosts.values())
        rows, n = records.fit_to_value(
            records.HOST_FIELDS,
            hosts,
            lambda h: records.host_to_amp(
                h, occ[h.name], d.loads.get(h.name), execs.get(h.name, 0)
            ),
        )
        if n < len(hosts):
            raise commands.InvalidRequest(
                f"the {len(hosts)} hosts do not fit in one answer: shorten their "
                "additional_info in the cluster configuration"
            )
        return {"cluster_active": d.cluster_active, "hosts": rows}

    # --- executor reports ----------------------------------------------------------------

    @commands.JobFinished.responder
    async def job_finished(self, **end: Any) -> dict:
        """An attempt's end: answered once committed (until then the executor keeps it)."""
        user = self._require(commands.ROLE_TMMS)
        self.last_heard = self.dispatcher.reactor.seconds()
        written = self._record_end(user, **end)
        if written is not None:
            await written
        return {}

    @batches.JobsFinished.responder
    async def jobs_finished(self, ends: list[dict[str, Any]]) -> dict:
        """Ends of one turn: each recorded as JobFinished records it, in one group commit
        (tm/dispatcher/writer.py); answered once every one is committed or refused. One that
        cannot be recorded now is named in ``failed``: its executor reports it again."""
        user = self._require(commands.ROLE_TMMS)
        self.last_heard = self.dispatcher.reactor.seconds()
        pending: list[tuple[int, Any]] = []
        failed: list[int] = []
        error: str | None = None
        for i, end in enumerate(ends):
            try:
                written = self._record_end(user, **end)
            except Exception as e:
                self.log.failure("recording the end of job {id}", id=end.get("job_id"))
                failed.append(i)
                error = error or one_line(e)
                continue
            if written is not None:
                pending.append((i, written))
        for i, written in pending:
            try:
                await written
            except Exception as e:
                failed.append(i)
                error = error or one_line(e)
        return {"failed": sorted(failed), "error": error}

    def _record_end(
        self,
        user: str,
        job_id: int,
        attempt: int,
        exit_code: int | None,
        signal: int | None,
        killed: bool,
        ended_at: float,
        reason: str,
        lost: bool | None = None,
        timed_out: bool | None = None,
        **usage: Any,
    ) -> Any:
        """``usage``: the end's ``cpu_time``, ``max_rss_kib`` and ``run_time`` (optional).
        None (ignored: not current) or a Deferred that fires once the end is committed."""
        return self.dispatcher.job_finished(
            user,
            self.host or "",
            job_id,
            attempt,
            exit_code,
            signal,
            killed,
            reason,
            lost=bool(lost),
            ended_at=ended_at,
            timed_out=bool(timed_out),
            usage=ended_usage(usage),
        )

    @commands.Heartbeat.responder
    def heartbeat(self, running: Any, load: float | None = None) -> dict:
        user = self._require(commands.ROLE_TMMS)
        d = self.dispatcher
        self.last_heard = d.reactor.seconds()
        try:
            attempts: set[tuple[int, int]] | None = {(int(j), int(a)) for j, a in running}
        except (TypeError, ValueError):
            attempts = None
        d.heartbeat(user, self.host or "", self, attempts, load)
        if attempts is None:
            raise commands.InvalidRequest("running must be a list of [job_id, attempt]")
        lease = d.settings.executor_lease
        return {
            "time": d.reactor.seconds(),
            "lease": lease / 2,
            "interval": min(HEARTBEAT_INTERVAL, lease / 6),
        }

    @commands.ExecutorStartFailed.responder
    def executor_start_failed(self, host: str, reason: str) -> dict:
        user = self._require(commands.ROLE_TMS)
        self.dispatcher.executor_start_failed(user, host, reason)
        return {}

    # --- job control, groups and users ----------------------------------------------------

    @commands.KillJobs.responder
    async def kill_jobs(self, job_ids: list[int], all: bool, regex: str | None = None) -> dict:
        me = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        d = self.dispatcher
        targets = []
        for job_id in job_ids:
            job = await self._own_job(job_id, "kill")
            live = d.jobs.get(job_id)
            if live is not None:
                targets.append(live)
            elif not job.state.terminal:
                # The database still says active, the working set no longer has it: its end
                # (or removal) is being written, or the write failed and is being repaired.
                if len(job_ids) == 1 and regex is None and not all:
                    raise commands.InvalidRequest(
                        f"job {job_id} is ending (recorded as {job.state.value} while its "
                        "end is written): nothing to kill; see lsjobs in a moment"
                    )
            elif len(job_ids) == 1 and regex is None and not all:
                raise commands.InvalidRequest(
                    f"job {job_id} has already ended ({job.state.value}): nothing to kill"
                )
        if regex is not None or all:
            try:
                pattern = compile_user_pattern(regex) if regex is not None else None
            except PatternError as e:
                raise commands.InvalidRequest(str(e)) from None
            chosen = {j.id for j in targets}  # by id: comparing Job dataclasses is slow
            for job in list(d.jobs.values()):
                if (
                    job.user == me
                    and job.id not in chosen
                    and (pattern is None or pattern.search(job.spec.command))
                ):
                    chosen.add(job.id)
                    targets.append(job)
        for job in targets:
            d.kill(job)
        others = sorted((j.id, j.user) for j in targets if j.user != me)
        if others:
            self._audit("kill", ", ".join(f"job {i} of {u}" for i, u in others))
        ids = sorted(j.id for j in targets)
        listed = _fit_ids(ids)
        return {"killed": listed, "more": len(ids) - len(listed) or None}

    @commands.SuspendJob.responder
    async def suspend_job(self, job_id: int, resume: bool) -> dict:
        self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        d = self.dispatcher
        job = await self._own_job(job_id, "suspend or resume")
        if job.state is not JobState.RUNNING:
            raise commands.InvalidRequest(f"job {job_id} is {job.state.value}, not running")
        await d.suspend(job, resume)
        if job.user != self.user:
            self._audit("resume" if resume else "suspend", f"job {job_id} of {job.user}")
        return {}

    @commands.GroupSummary.responder
    async def group_summary(self, scope: str, group: str | None = None) -> dict:
        owner = self._scope_user(scope, None)
        if group is not None and len(group) > records.MAX_GROUP_CHARS:
            raise commands.InvalidRequest(
                f"a group name has at most {records.MAX_GROUP_CHARS} characters"
            )
        counts = await self.dispatcher.store.group_counts(owner, group)
        used = await self.dispatcher.store.group_usage(owner, group)
        groups: dict[str, dict[str, int]] = {}
        usage: dict[str, dict[str, float | int]] = {}
        for name, states in counts.items():
            shown = name
            # Names stored before the limit may be long: cut, kept apart by a digest.
            if len(name) > records.MAX_GROUP_CHARS:
                digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
                shown = f"{name[:200]}...[{digest}]"
            groups[shown] = states
            if name in used:
                usage[shown] = used[name]
        if records.json_size(groups) + records.json_size(usage) > records.MAX_VALUE_BYTES:
            raise commands.InvalidRequest(
                f"{len(groups)} groups do not fit in one answer: ask for one group "
                "(lagroups:GROUP) or list jobs with lsjobs"
            )
        return {"groups": groups, "usage": usage}
