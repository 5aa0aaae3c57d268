"""Stand-ins for the dispatcher's unit tests: a store kept in memory (compare-and-set like
the real one), executor sessions whose answers the test decides, all on a task.Clock."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from tm.core.model import Host, Job, JobSpec, JobState, Transition, User
from tm.dispatcher.service import Dispatcher, Settings
from tm.dispatcher.session import Session
from tm.protocol import commands
from tm.protocol.commands import JobStartFailed


class MemoryStore:
    """The store's interface the dispatcher uses, in memory."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.history: list[tuple[int, int, str, float]] = []  # job, attempt, state, at
        #: set to an exception to make apply_transitions fail with it
        self.apply_error: BaseException | None = None
        self.apply_calls = 0
        self.deleted: list[int] = []
        self.settings: dict[str, str] = {}
        self.hosts: dict[str, tuple[bool, bool]] = {}
        self.users_enabled: dict[str, bool] = {}

    def add(self, job: Job) -> Job:
        self.jobs[job.id] = copy.deepcopy(job)
        return job

    def apply_transitions(self, transitions: list[Transition], now: float) -> Deferred:
        self.apply_calls += 1
        if self.apply_error is not None:
            return fail(self.apply_error)
        results = []
        for t in transitions:
            job = self.jobs.get(t.job_id)
            ok = job is not None and job.state is t.old and job.attempt == t.attempt
            if ok and job is not None:
                at = now if t.at is None else t.at
                job.state = t.new
                job.reason = t.reason
                job.state_since = at
                if t.new_attempt is not None:
                    job.attempt = t.new_attempt
                if t.clear_host:
                    job.host = job.pid = None
                if t.host is not None:
                    job.host = t.host
                if t.new is JobState.RUNNING:
                    job.started_at = at
                if t.new.terminal:
                    job.ended_at = at
                self.history.append((t.job_id, job.attempt, t.new.value, at))
            results.append(ok)
        return succeed(results)

    def submit_jobs(
        self, user: str, environment: Any, specs: list[JobSpec], now: float
    ) -> Deferred:
        return self.insert_jobs(user, environment, specs, now).addCallback(lambda r: r[0])

    def insert_jobs(
        self, user: str, environment: Any, specs: list[JobSpec], now: float
    ) -> Deferred:
        ids = []
        created = []
        by_uuid = {j.uuid: j.id for j in self.jobs.values()}
        for spec in specs:
            if spec.uuid in by_uuid:
                ids.append(by_uuid[spec.uuid])
                continue
            job_id = max(self.jobs, default=0) + 1
            self.jobs[job_id] = Job(
                id=job_id,
                uuid=spec.uuid,
                user=user,
                spec=spec,
                state=JobState.WAITING,
                attempt=1,
                submitted_at=now,
                cwd=environment.cwd,
                umask=environment.umask,
            )
            ids.append(job_id)
            by_uuid[spec.uuid] = job_id
            created.append(copy.deepcopy(self.jobs[job_id]))
        return succeed((ids, created))

    def insert_and_place(
        self, user: str, environment: Any, specs: list[JobSpec], now: float, placements: Any
    ) -> Deferred:
        """As the real store: the submission and its placements in one step."""
        self.placed_at_submission = getattr(self, "placed_at_submission", 0) + len(placements)
        ids, created = cast(
            tuple[list[int], list[Job]], self.insert_jobs(user, environment, specs, now).result
        )
        placed = []
        for job in created:
            host = placements.get(job.uuid)
            if host is None:
                continue
            t = Transition(job.id, job.attempt, job.state, JobState.PENDING, f"placed on {host}")
            t = dataclasses.replace(t, host=host, at=now)
            self.apply_transitions([t], now)
            for name, value in t.changes(now).items():
                setattr(job, name, value)
            placed.append(t)
        return succeed((ids, created, placed))

    def get_jobs(self, job_ids: list[int]) -> Deferred:
        return succeed([copy.deepcopy(self.jobs[i]) for i in job_ids if i in self.jobs])

    def summarise_jobs(self, user: str, ranges: list[tuple[int, int]], group: Any) -> Deferred:
        """As tm/db/queries_watch.py: counts per state, and the jobs that did not finish."""
        counts: dict[str, int] = {}
        failed = []
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.user != user or (group is not None and job.spec.group != group):
                continue
            if ranges and not any(a <= job.id <= b for a, b in ranges):
                continue
            counts[job.state.value] = counts.get(job.state.value, 0) + 1
            if job.state.terminal and job.state is not JobState.FINISHED:
                failed.append(
                    {
                        "id": job.id,
                        "state": job.state.value,
                        "exit_code": job.exit_code,
                        "signal": job.signal,
                        "reason": job.reason,
                    }
                )
        return succeed((counts, failed[:20]))

    def existing_ids(self, user: str, job_ids: list[int]) -> Deferred:
        return succeed({i for i in job_ids if i in self.jobs and self.jobs[i].user == user})

    def set_setting(self, name: str, value: str) -> Deferred:
        self.settings[name] = value
        return succeed(None)

    def save_host(self, name: str, active: bool, retired: bool) -> Deferred:
        self.hosts[name] = (active, retired)
        return succeed(None)

    def set_user_enabled(self, name: str, enabled: bool) -> Deferred:
        self.users_enabled[name] = enabled
        return succeed(True)

    def get_job(self, job_id: int) -> Deferred:
        job = self.jobs.get(job_id)
        return succeed(None if job is None else copy.deepcopy(job))

    def get_environment(self, env_id: int) -> Deferred:
        return succeed("")

    def get_history(self, job_id: int, limit: int = 200) -> Deferred:
        return succeed([])

    def list_jobs(self, states: list[JobState], user: str | None = None, **kw: Any) -> Deferred:
        return succeed(
            [
                copy.deepcopy(j)
                for j in self.jobs.values()
                if j.state in states and (user is None or j.user == user)
            ]
        )

    def delete_jobs(self, job_ids: list[int]) -> Deferred:
        for i in job_ids:
            if self.jobs.pop(i, None) is not None:
                self.deleted.append(i)
        return succeed(len(job_ids))

    def group_counts(self, user: str | None = None, group: str | None = None) -> Deferred:
        out: dict[str, dict[str, int]] = {}
        for j in self.jobs.values():
            if (user is None or j.user == user) and (group is None or j.spec.group == group):
                states = out.setdefault(j.spec.group, {})
                states[j.state.value] = states.get(j.state.value, 0) + 1
        return succeed(out)

    def group_usage(self, user: str | None = None, group: str | None = None) -> Deferred:
        out: dict[str, dict[str, float | int]] = {}
        for j in self.jobs.values():
            if (user is None or j.user == user) and (group is None or j.spec.group == group):
                if j.cpu_time is not None:
                    used = out.setdefault(j.spec.group, {"jobs": 0, "cpu_time": 0.0})
                    used["jobs"] += 1
                    used["cpu_time"] += j.cpu_time
        return succeed(out)


class FakeProto:
    """An executor's (or TMS's) end of the link: ``answer`` decides each call's outcome."""

    def __init__(self, answer: Callable[[str, dict], Any]) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.answer = answer

    def call(self, cmd: Any, /, **kw: Any) -> Deferred:
        name = cmd.commandName.decode()
        self.calls.append((name, kw))
        if name == "RunJobs":
            return self._run_jobs(kw)
        try:
            result = self.answer(name, kw)
        except Exception as e:
            return fail(e)
        return result if isinstance(result, Deferred) else succeed(result)

    def _run_jobs(self, kw: dict) -> Deferred:
        """A batch of start orders, each answered by ``answer`` as its RunJob: a start failure
        is its result, any other error (a dropped link) fails the whole batch."""
        results = []
        for order in kw["orders"]:
            try:
                result = self.answer("RunJob", {**order, "env": kw["env"]})
            except JobStartFailed as e:
                result = {"error": str(e)}
            except Exception as e:
                return fail(e)
            assert not isinstance(result, Deferred), "a fake answers a batch at once"
            results.append(result)
        return succeed({"results": results})

    def names(self, name: str) -> list[dict]:
        """The calls of command ``name``; for RunJob, the orders of RunJobs too (each with
        its batch's environment)."""
        out = []
        for n, kw in self.calls:
            if n == name:
                out.append(kw)
            elif name == "RunJob" and n == "RunJobs":
                out.extend({**order, "env": kw["env"]} for order in kw["orders"])
        return out


class FakeSession:
    def __init__(self, answer: Callable[[str, dict], Any]) -> None:
        self.proto = FakeProto(answer)
        self.last_heard = 0.0
        self.peer_pid: int | None = 1
        self.authenticated_at: float | None = 0.0

    def fence(self) -> None:
        pass

    def drop(self) -> None:
        pass


def runs_everything(name: str, kw: dict) -> dict:
    if name == "RunJob":
        return {"pid": 1000 + kw["job_id"], "started_at": 0.0}
    if name == "SignalJob":
        return {"found": True}
    return {}


def make_dispatcher(
    tmp_path: Path, hosts: list[Host] | None = None, store: Any = None
) -> tuple[Dispatcher, Clock, Any]:
    clock = Clock()
    settings = Settings(
        var_dir=tmp_path,
        config_dir=tmp_path,
        database_url="sqlite://",
        hosts=hosts or [Host(name="h1", number_slots=2, max_slots=2)],
        users=[User(name="alice"), User(name="root", roles=frozenset({"user", "admin"}))],
        executor_lease=30.0,
    )
    store = store if store is not None else MemoryStore()
    return Dispatcher(clock, settings, store), clock, store


def add_job(
    d: Dispatcher,
    store: Any,
    job_id: int,
    command: str = "true",
    slots: int = 1,
    user: str = "alice",
    **kw: Any,
) -> Job:
    spec = JobSpec(
        uuid=f"00000000-0000-0000-0000-{job_id:012d}",
        command=command,
        slots=slots,
        **{k: v for k, v in kw.items() if k in {f.name for f in dataclasses.fields(JobSpec)}},
    )
    job = Job(
        id=job_id,
        uuid=spec.uuid,
        user=user,
        spec=spec,
        state=JobState.WAITING,
        attempt=1,
        submitted_at=d.reactor.seconds(),
        cwd="/tmp",
    )
    if hasattr(store, "add"):
        store.add(job)
    d.jobs[job_id] = job
    return job


def client_session(d: Dispatcher, user: str = "alice") -> Session:
    s = Session(d, proto=None)  # type: ignore[arg-type]  # responders called directly
    s.user = user
    s.role = commands.ROLE_CLIENT
    return s
