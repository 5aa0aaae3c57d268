"""Dependencies, holds and priority in the dispatcher (issue 11, points 1 and 5).

The rules are pure (:mod:`tm.core.dependencies`); here they meet the working set and the
store: a submission's dependencies are checked (nothing is stored when one is wrong), its
jobs registered in the :class:`~tm.core.dependencies.DependencyIndex`, the index settled when
a job ends (dependants released into the queues, or cancelled at once, the whole cascade),
and everything read back at start-up from the jobs' stored fields (migration 0003).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from tm.core.dependencies import (
    MAX_DEPENDENCIES,
    DependencyError,
    held_by,
    ids_text,
    parse_ids,
)
from tm.core.model import Job, JobSpec, JobState
from tm.dispatcher.core import DispatcherCore
from tm.jobfile import compress_ids
from tm.protocol import commands

#: What a submission's check found, for registering its jobs once stored: the states of the
#: ended jobs named, and per (user, group) the first job that ended other than finished.
Checked = tuple[dict[int, JobState], dict[tuple[str, str], tuple[int, str]]]
#: Larger than any job id: "every job of the group".
NO_LIMIT = 2**62


def _deps_of(spec: JobSpec) -> list[tuple[int, bool]]:
    """(job id, any ending will do) of a stored (canonical) spec."""
    return [(i, False) for i in parse_ids(spec.after)] + [
        (i, True) for i in parse_ids(spec.after_any)
    ]


class JobDependencies(DispatcherCore):
    """Dependencies, holds and priority on top of the working set."""

    # --- submission -----------------------------------------------------------------------

    async def check_dependencies(self, user: str, specs: list[JobSpec]) -> Checked:
        """Check the dependencies and holds of a submission and write them in their stored
        form into ``specs``; raises InvalidRequest in one line (nothing is stored then)."""
        admin = user in self.users and self.users[user].is_admin
        wanted: set[int] = set()
        groups: set[str] = set()
        for index, spec in enumerate(specs):
            where = f"job {index + 1} of {len(specs)}: " if len(specs) > 1 else ""
            if not (spec.after or spec.after_any or spec.after_group or spec.hold):
                continue
            try:
                after = parse_ids(spec.after, "--after")
                after_any = parse_ids(spec.after_any, "--after-any")
            except DependencyError as e:
                raise commands.InvalidRequest(f"{where}{e}; nothing was submitted") from None
            if len(after) + len(after_any) > MAX_DEPENDENCIES:
                raise commands.InvalidRequest(
                    f"{where}more than {MAX_DEPENDENCIES} dependencies; use --after-group; "
                    "nothing was submitted"
                )
            if spec.hold not in ("", "user", f"user:{user}"):
                raise commands.InvalidRequest(
                    f"{where}hold must be empty or 'user' (hRunJob --hold); nothing was submitted"
                )
            if spec.after_group and spec.after_group == spec.group:
                raise commands.InvalidRequest(
                    f"{where}--after-group {spec.after_group}: the job is in that group itself "
                    "and would wait for itself (a cycle); use another group; nothing was submitted"
                )
            if spec.after_group:
                groups.add(spec.after_group)
            wanted.update(after, after_any)
            specs[index] = dataclasses.replace(
                spec,
                after=ids_text(after),
                after_any=ids_text(after_any),
                hold=f"user:{user}" if spec.hold else "",
            )
        stored: dict[int, Job] = {}
        missing = sorted(i for i in wanted if i not in self.jobs)
        if missing:
            stored = {j.id: j for j in await self.store.get_jobs(missing)}
        for job_id in sorted(wanted):
            job = self.jobs.get(job_id) or stored.get(job_id)
            if job is None:
                raise commands.InvalidRequest(
                    f"unknown job {job_id} in --after: a job can wait only for jobs submitted "
                    "before it (never for itself or a job of its own submission); "
                    "nothing was submitted"
                )
            if job.user != user and not admin:
                raise commands.InvalidRequest(
                    f"job {job_id} is not yours: a job can wait only for your own jobs; "
                    "nothing was submitted"
                )
        bad: dict[tuple[str, str], tuple[int, str]] = {}
        for group in sorted(groups):
            if not self.deps.members.get((user, group)):
                if await self.store.group_size(user, group) == 0:
                    raise commands.InvalidRequest(
                        f"--after-group {group}: you have no jobs in group {group}; "
                        "nothing was submitted"
                    )
            first = await self.store.first_bad_in_group(user, group, NO_LIMIT)
            if first is not None:
                bad[user, group] = first
        return {i: j.state for i, j in stored.items()}, bad

    def take_in(self, jobs: list[Job], checked: Checked) -> None:
        """Take stored active jobs into the index and the working set; those whose
        dependency already ended badly end cancelled at once."""
        for job in jobs:
            self.deps.joined(job.id, job.user, job.spec.group)
        cancels = []
        coming = {job.id for job in jobs}
        for job in jobs:
            if job.state is JobState.WAITING:
                reason = self._register(job, coming, *checked)
                if reason:
                    cancels.append((job, reason))
        self.jobs.add_many(jobs)
        for job, reason in cancels:
            if job.state is JobState.WAITING:
                self._transition(job, JobState.CANCELLED, reason)

    def _register(
        self,
        job: Job,
        coming: set[int],
        ended: Mapping[int, JobState],
        bad: Mapping[tuple[str, str], tuple[int, str]],
    ) -> str | None:
        """Make ``job`` wait for its active dependencies; the reason it is cancelled, if one
        of them already ended badly."""
        spec = job.spec
        if not (spec.after or spec.after_any or spec.after_group):
            return None
        deps: dict[int, bool] = {}
        try:
            named = _deps_of(spec)
        except DependencyError as e:  # a row written by hand
            return f"unreadable dependency: {e}"
        for dep, any_end in named:
            if dep in self.jobs or dep in coming:
                deps[dep] = deps.get(dep, True) and any_end
                continue
            finished = self.deps.ending_of(dep)
            state = ended.get(dep)
            if finished is None and state is not None and state.terminal:
                finished = state is JobState.FINISHED
            if not finished and not any_end:
                if state is None and finished is None:
                    return f"dependency job {dep} was removed"
                return f"dependency job {dep} ended {state.value if state else 'badly'}"
        group = spec.after_group
        if group:
            first = bad.get((job.user, group))
            if first is not None and first[0] < job.id:
                return f"dependency group {group}: job {first[0]} ended {first[1]}"
            seen = self.deps.bad_groups.get((job.user, group))
            if seen is not None and seen < job.id:
                return f"dependency group {group}: job {seen} did not finish"
            for dep in self.deps.members_below(job.user, group, job.id):
                deps[dep] = False
        self.deps.wait(job.id, deps)
        return None

    async def take_in_loaded(self, jobs: list[Job]) -> None:
        """Start-up: the active jobs from the store, with their dependencies read back."""
        active = {j.id for j in jobs}
        named: set[int] = set()
        groups: set[tuple[str, str]] = set()
        for job in jobs:
            if job.state is JobState.WAITING and (job.spec.after or job.spec.after_any):
                try:
                    named.update(i for i, _ in _deps_of(job.spec) if i not in active)
                except DependencyError:
                    pass
            if job.state is JobState.WAITING and job.spec.after_group:
                groups.add((job.user, job.spec.after_group))
        ended = {j.id: j.state for j in await self.store.get_jobs(sorted(named))} if named else {}
        bad: dict[tuple[str, str], tuple[int, str]] = {}
        for user, group in sorted(groups):
            first = await self.store.first_bad_in_group(user, group, NO_LIMIT)
            if first is not None:
                bad[user, group] = first
        self.take_in(jobs, (ended, bad))

    # --- ends -----------------------------------------------------------------------------

    def _settle_dependants(self, job: Job, new: JobState | None) -> None:
        """``job`` ended (``new``; None: removed): release or cancel its dependants."""
        how = "was removed" if new is None else f"ended {new.value}"
        released, cancelled = self.deps.ended(
            job.id, job.user, job.spec.group, new is JobState.FINISHED, how
        )
        for dep_id in released:
            dependant = self.jobs.get(dep_id)
            if dependant is not None:
                self.jobs.change(dependant, _nothing)  # into the queues, in its place
        if released:
            self.request_pass()
        for dep_id, reason in cancelled:
            dependant = self.jobs.get(dep_id)
            if dependant is not None and dependant.state is JobState.WAITING:
                self._transition(dependant, JobState.CANCELLED, reason)

    def blocked_reason(self, job: Job) -> str:
        """Why a waiting job is kept out of the queues: its hold, its dependencies; ""."""
        parts = []
        if job.spec.hold:
            parts.append(f"held by {held_by(job.spec.hold)}")
        unmet = self.deps.unmet.get(job.id, {})
        finish = sorted(i for i, any_end in unmet.items() if not any_end)
        end = sorted(i for i, any_end in unmet.items() if any_end)
        if finish:
            parts.append(f"waits for job(s) {compress_ids(finish)} to finish")
        if end:
            parts.append(f"waits for job(s) {compress_ids(end)} to end")
        return "; ".join(parts)

    # --- holds and priority ---------------------------------------------------------------

    async def set_hold(self, jobs: Iterable[Job], hold: str) -> list[int]:
        """Hold (``hold`` names who) or release (``""``) waiting jobs; their ids. A held job
        leaves the queues and comes back in its place."""
        changed = [j for j in jobs if j.state is JobState.WAITING]
        before = {j.id: j.spec.hold for j in changed}
        for job in changed:
            self.jobs.change(job, _set_spec(hold=hold))
        try:
            if changed:
                await self.store.set_control_fields([j.id for j in changed], {"hold": hold})
        except Exception:
            for job in changed:
                if job.spec.hold == hold:
                    self.jobs.change(job, _set_spec(hold=before[job.id]))
            raise
        if not hold and changed:
            self.request_pass()
        return sorted(j.id for j in changed)

    async def set_priority(self, job: Job, priority: int) -> None:
        old = job.spec.priority
        self.jobs.change(job, _set_spec(priority=priority))
        try:
            await self.store.set_control_fields([job.id], {"priority": priority})
        except Exception:
            if job.spec.priority == priority:
                self.jobs.change(job, _set_spec(priority=old))
            raise
        self.request_pass()


def _nothing(job: Job) -> None:
    return None


def _set_spec(**values: Any) -> Any:
    def apply(job: Job) -> None:
        job.spec = dataclasses.replace(job.spec, **values)

    return apply
