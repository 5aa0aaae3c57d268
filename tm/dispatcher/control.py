"""The responders of job control beyond kill and suspend (issue 11, points 4 and 5): hold,
release and kill of ids, ranges and groups; a waiting job's priority.

Who may do what is decided by :mod:`tm.core.dependencies` (holds and priority) and
:class:`~tm.dispatcher.sessionbase.SessionBase` (whose jobs): a user changes their own jobs;
the admin's powers (another user's job, raising a priority, a hold the user cannot release)
are used at the dispatcher (``hConnect -T``), as for every other admin action.
"""

from __future__ import annotations

from tm.core.dependencies import hold_problem, hold_value, priority_problem, release_problem
from tm.core.model import ACTIVE_STATES, MAX_PRIORITY, MIN_PRIORITY, Job, JobState
from tm.dispatcher.dependencies import NO_LIMIT
from tm.dispatcher.sessionbase import SessionBase, _fit_ids
from tm.protocol import commands, control

#: Notes (jobs skipped in a range or group) sent back, at most.
MAX_NOTES = 20
_VERBS = {"kill": "kill", "hold": "hold", "release": "release"}


class ControlResponders(SessionBase):
    @control.ControlJobs.responder
    async def control_jobs(
        self,
        action: str,
        job_ids: list[int],
        first: int | None = None,
        last: int | None = None,
        group: str | None = None,
    ) -> dict:
        me = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        if action not in control.ACTIONS:
            raise commands.InvalidRequest(
                f"unknown action {action!r}: one of {', '.join(control.ACTIONS)}"
            )
        if (first is None) != (last is None) or (first is not None and last < first):  # type: ignore[operator]
            raise commands.InvalidRequest("a range of job ids goes from a first id to a last id")
        verb = _VERBS[action]
        as_admin = self._sees_all()
        d = self.dispatcher
        single = len(job_ids) == 1 and first is None and group is None
        targets: dict[int, Job] = {}
        for job_id in job_ids:
            job = await self._own_job(job_id, verb)
            live = d.jobs.get(job_id)
            if live is not None:
                targets[job_id] = live
            elif single:
                raise commands.InvalidRequest(
                    f"job {job_id} has already ended ({job.state.value}): nothing to {verb}"
                )
        if first is not None and last is not None:
            for job in d.jobs.listing(ACTIVE_STATES, None if as_admin else me, first - 1):
                if job.id > last:
                    break
                targets[job.id] = job
        if group is not None:
            for job_id in d.deps.members_below(me, group, NO_LIMIT):
                live = d.jobs.get(job_id)
                if live is not None:
                    targets[job_id] = live
        notes: list[str] = []
        chosen: list[Job] = []
        for job_id in sorted(targets):
            job = targets[job_id]
            problem = None
            if action != "kill" and job.state is not JobState.WAITING:
                problem = f"is {job.state.value}: only a waiting job can be {verb}ed"
            elif action == "hold":
                problem = hold_problem(job.spec.hold, me, job.user, as_admin)
            elif action == "release":
                problem = release_problem(job.spec.hold, me, job.user, as_admin)
            if (
                problem
                and not single
                and (problem == "is not held" or job.state is not JobState.WAITING)
            ):
                continue  # a range or a group: only what can change is meant
            if problem:
                if single:
                    if job.user != me:
                        self._audit(verb, f"job {job_id} of {job.user}", f"refused: {problem}")
                    raise commands.InvalidRequest(f"job {job_id} {problem}")
                notes.append(f"job {job_id} {problem}")
                continue
            chosen.append(job)
        if action == "kill":
            for job in chosen:
                d.kill(job)
            done = sorted(j.id for j in chosen)
        else:
            hold = hold_value(me, as_admin) if action == "hold" else ""
            done = await d.set_hold(chosen, hold)
        others = sorted((j.id, j.user) for j in chosen if j.user != me)
        if others:
            self._audit(verb, ", ".join(f"job {i} of {u}" for i, u in others[:50]))
        listed = _fit_ids(done)
        more = len(notes) - MAX_NOTES
        if more > 0:
            notes = notes[:MAX_NOTES] + [f"... and {more} more jobs skipped"]
        return {"done": listed, "more": len(done) - len(listed) or None, "notes": notes}

    @control.SetPriority.responder
    async def set_priority(self, job_id: int, priority: int) -> dict:
        me = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        d = self.dispatcher
        job = await self._own_job(job_id, "change the priority of")
        live = d.jobs.get(job_id)
        if live is None or live.state is not JobState.WAITING:
            state = (live or job).state.value
            raise commands.InvalidRequest(
                f"job {job_id} is {state}: only a waiting job's priority can change"
            )
        old = live.spec.priority
        problem = priority_problem(
            old, priority, me, live.user, self._sees_all(), MIN_PRIORITY, MAX_PRIORITY
        )
        if problem:
            if problem.startswith("priority"):
                raise commands.InvalidRequest(problem)
            self._audit("setpriority", f"job {job_id} of {live.user}", f"refused: {problem}")
            raise commands.PermissionDenied(f"job {job_id} {problem}")
        await d.set_priority(live, priority)
        if live.user != me or priority > old:
            self._audit("setpriority", f"job {job_id} of {live.user}: {old} -> {priority}")
        return {"old": old}
