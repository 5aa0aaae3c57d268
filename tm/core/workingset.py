"""The dispatcher's active jobs, and the indexes a scheduling pass and the responders read.

Pure: no I/O, no reactor, no clock (the time of a change is passed in).

A job changes state in one place, :meth:`WorkingSet.transition`: it builds the
:class:`~tm.core.model.Transition` (the compare-and-set the writer commits) and applies the
very same record's :meth:`~tm.core.model.Transition.changes` to the job in memory, so the
job in memory and its row cannot be changed differently.

The indexes are kept up to date by each change instead of being recomputed:

- occupied slots per host (pending and running jobs), as counts;
- the jobs of a ``(user, host)`` (every active job placed there);
- the jobs in each state, and their count per user;
- the waiting queues: per priority, per user, per *shape* (slots, excluded hosts), the
  waiting job ids in submission order. A scheduling pass (:mod:`tm.core.scheduler`) reads
  only the heads of these queues; within one shape, a job that cannot start means none
  behind it can in the same pass, so a pass looks at a number of jobs bounded by the
  placements it makes and the number of queues, not by the length of the queues.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from typing import Any

from sortedcontainers import SortedList

from tm.core.arrays import ArrayIndex, queue_key, queue_shape
from tm.core.model import ACTIVE_STATES, Job, JobState, Transition
from tm.core.scheduler import JobView, Shape

_NO_JOBS: dict[int, Job] = {}


def shape_of(job: Job) -> Shape:
    return (job.spec.slots, frozenset(job.spec.excluded_hosts))


def _key(job: Job) -> Any:
    """The key of the job's waiting queue: its shape, or its capped array's own queue."""
    return queue_key(job, shape_of(job))


class WorkingSet:
    """The active jobs (waiting, pending, running, lost) by id, with their indexes.

    Reads like a mapping of job id to :class:`Job`. Adding and removing go through
    :meth:`add` and :meth:`discard` (or item assignment and ``del``); every state change
    through :meth:`transition`. A job's fields that the indexes use (state, host, user,
    attempt, spec) must not be assigned from outside.
    """

    def __init__(self, jobs: Iterable[Job] = ()) -> None:
        self._jobs: dict[int, Job] = {}
        #: host -> slots held there by pending and running jobs
        self.occupied: dict[str, int] = {}
        self._placed: dict[tuple[str, str], dict[int, Job]] = {}
        self._by_state: dict[JobState, dict[int, Job]] = {s: {} for s in ACTIVE_STATES}
        self._counts: dict[str, dict[JobState, int]] = {}
        #: (user, state) -> the ids of the user's jobs in that state, sorted (for listings)
        self._ids: dict[tuple[str, JobState], SortedList] = {}
        self._waiting: dict[int, dict[str, dict[Any, SortedList]]] = {}
        #: Waiting jobs kept out of the queues while they wait for dependencies (the
        #: DependencyIndex's ``unmet``); held jobs (``spec.hold``) are kept out too. Change
        #: either only inside :meth:`change`.
        self.blocked_ids: Container[int] = frozenset()
        #: the caps of job arrays (tm/core/arrays.py); a capped array waits in its own queues
        self.arrays = ArrayIndex()
        for job in jobs:
            self.add(job)

    # --- the mapping ------------------------------------------------------------------

    def __getitem__(self, job_id: int) -> Job:
        return self._jobs[job_id]

    def get(self, job_id: int, default: Any = None) -> Any:
        return self._jobs.get(job_id, default)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def __iter__(self) -> Iterator[int]:
        return iter(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def values(self) -> Iterable[Job]:
        return self._jobs.values()

    def items(self) -> Iterable[tuple[int, Job]]:
        return self._jobs.items()

    def __setitem__(self, job_id: int, job: Job) -> None:
        assert job_id == job.id
        self.add(job)

    def __delitem__(self, job_id: int) -> None:
        if self.discard(job_id) is None:
            raise KeyError(job_id)

    # --- membership -------------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Take ``job`` in (an active job loaded, submitted or re-read); replaces a job
        of the same id."""
        old = self._jobs.get(job.id)
        if old is not None:
            self._unindex(old)
        self._jobs[job.id] = job
        self._index(job)

    def add_many(self, jobs: Iterable[Job]) -> None:
        """Take in the jobs of a submission: as :meth:`add` each, with each waiting queue
        updated once for all of its new jobs."""
        waiting = self._by_state.setdefault(JobState.WAITING, {})
        fresh: dict[tuple[int, str, Any], list[int]] = {}
        for job in jobs:
            if (
                job.state is not JobState.WAITING
                or job.host
                or job.id in self._jobs
                or not self.queued(job)
            ):
                self._queue_all(fresh)
                self.add(job)
                continue
            self._jobs[job.id] = job
            waiting[job.id] = job
            counts = self._counts.setdefault(job.user, {})
            counts[JobState.WAITING] = counts.get(JobState.WAITING, 0) + 1
            fresh.setdefault((job.spec.priority, job.user, _key(job)), []).append(job.id)
            self.arrays.add(job)
        self._queue_all(fresh)

    def _queue_all(self, fresh: dict[tuple[int, str, Any], list[int]]) -> None:
        by_user: dict[str, list[int]] = {}
        for (priority, user, shape), ids in fresh.items():
            shapes = self._waiting.setdefault(priority, {}).setdefault(user, {})
            queue = shapes.get(shape)
            if queue is None:
                shapes[shape] = SortedList(ids)
            else:
                queue.update(ids)
            by_user.setdefault(user, []).extend(ids)
        for user, ids in by_user.items():
            listed = self._ids.get((user, JobState.WAITING))
            if listed is None:
                self._ids[user, JobState.WAITING] = SortedList(ids)
            else:
                listed.update(ids)
        fresh.clear()

    def discard(self, job_id: int) -> Job | None:
        """Drop a job (it ended or was removed); the job, or None if it was not here."""
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._unindex(job)
        return job

    def refresh(self, job: Job, fresh: Job) -> None:
        """Overwrite ``job``'s fields with ``fresh``'s (re-read from the store), in place:
        whoever holds ``job`` sees the store's state."""
        if job.id in self._jobs:
            self._unindex(self._jobs.pop(job.id))
        for name in Job.__dataclass_fields__:
            setattr(job, name, getattr(fresh, name))
        self._jobs[job.id] = job
        self._index(job)

    def queued(self, job: Job) -> bool:
        """A waiting job is in the queues unless it is held or waits for dependencies (it
        keeps its place: a queue is ordered by id)."""
        return not job.spec.hold and job.id not in self.blocked_ids

    def change(self, job: Job, apply: Callable[[Job], object]) -> None:
        """Change what places ``job`` in the queues (its hold, priority, dependencies):
        ``apply(job)`` runs while it is out of the indexes."""
        tracked = self._jobs.get(job.id) is job
        if tracked:
            self._unindex(job)
        apply(job)
        if tracked:
            self._index(job)

    # --- the one way a job changes state ------------------------------------------------

    def transition(
        self, job: Job, new: JobState, reason: str, at: float, **fields: Any
    ) -> Transition:
        """Change ``job`` to ``new`` at time ``at``; the returned record is what the writer
        commits, and exactly what was applied here. A job that ends leaves the set."""
        t = Transition(
            job_id=job.id,
            attempt=job.attempt,
            old=job.state,
            new=new,
            reason=reason,
            at=at,
            **fields,
        )
        tracked = self._jobs.get(job.id) is job
        if tracked:
            self._unindex(job)
        for name, value in t.changes(at).items():
            setattr(job, name, value)
        if tracked:
            if new.terminal:
                del self._jobs[job.id]
            else:
                self._index(job)
        return t

    # --- the indexes ------------------------------------------------------------------------

    def _index(self, job: Job) -> None:
        state = job.state
        self._by_state.setdefault(state, {})[job.id] = job
        counts = self._counts.setdefault(job.user, {})
        counts[state] = counts.get(state, 0) + 1
        listed = self._ids.get((job.user, state))
        if listed is None:
            self._ids[job.user, state] = SortedList((job.id,))
        else:
            listed.add(job.id)
        if job.host:
            self._placed.setdefault((job.user, job.host), {})[job.id] = job
            if state.holds_slots:
                self.occupied[job.host] = self.occupied.get(job.host, 0) + job.spec.slots
        self.arrays.add(job)
        if state is JobState.WAITING and self.queued(job):
            queue = (
                self._waiting.setdefault(job.spec.priority, {})
                .setdefault(job.user, {})
                .setdefault(_key(job), None)
            )
            if queue is None:
                queue = self._waiting[job.spec.priority][job.user][_key(job)] = SortedList()
            queue.add(job.id)

    def _unindex(self, job: Job) -> None:
        state = job.state
        self._by_state[state].pop(job.id, None)
        counts = self._counts[job.user]
        counts[state] -= 1
        listed = self._ids[job.user, state]
        listed.remove(job.id)
        if not listed:
            del self._ids[job.user, state]
        if not counts[state]:
            del counts[state]
            if not counts:
                del self._counts[job.user]
        if job.host:
            key = (job.user, job.host)
            placed = self._placed[key]
            del placed[job.id]
            if not placed:
                del self._placed[key]
            if state.holds_slots:
                left = self.occupied[job.host] - job.spec.slots
                if left:
                    self.occupied[job.host] = left
                else:
                    del self.occupied[job.host]
        self.arrays.remove(job)
        if state is JobState.WAITING:
            # Held and blocked jobs are in no queue: look before removing.
            by_user = self._waiting.get(job.spec.priority, {})
            shapes = by_user.get(job.user, {})
            shape = _key(job)
            queue = shapes.get(shape)
            if queue is None or job.id not in queue:
                return
            queue.remove(job.id)
            if not queue:
                del shapes[shape]
                if not shapes:
                    del by_user[job.user]
                    if not by_user:
                        del self._waiting[job.spec.priority]

    # --- questions --------------------------------------------------------------------------

    def in_state(self, state: JobState) -> Iterable[Job]:
        """The jobs in ``state`` (a live view: copy it before changing states)."""
        return self._by_state.get(state, _NO_JOBS).values()

    def on(self, user: str, host: str, state: JobState | None = None) -> list[Job]:
        """The jobs of ``user`` placed on ``host`` (in ``state``, if given), by id."""
        jobs = self._placed.get((user, host), _NO_JOBS).values()
        return sorted((j for j in jobs if state is None or j.state is state), key=lambda j: j.id)

    def holding_slots(self, user: str, host: str) -> list[Job]:
        """The pending and running jobs of ``user`` on ``host``, by id."""
        return [j for j in self.on(user, host) if j.state.holds_slots]

    def hosts_in_use(self) -> set[str]:
        """The hosts some active job is placed on."""
        return {host for (_, host) in self._placed}

    def counts(self, user: str) -> dict[JobState, int]:
        """How many of ``user``'s active jobs are in each state."""
        return dict(self._counts.get(user, {}))

    def listing(
        self, states: Iterable[JobState], user: str | None, after_id: int = 0
    ) -> Iterator[Job]:
        """The jobs in ``states`` (of ``user``, or everyone's) with id > ``after_id``, by id:
        a page of a listing costs the jobs it holds, not the length of the queue."""
        wanted = set(states)
        lists = [
            ids.irange(minimum=after_id, inclusive=(False, True))
            for (owner, state), ids in self._ids.items()
            if state in wanted and user in (None, owner)
        ]
        if not lists:
            return iter(())
        jobs = self._jobs
        ordered = lists[0] if len(lists) == 1 else heapq.merge(*lists)
        return (jobs[i] for i in ordered)

    def waiting_users(self) -> Iterable[str]:
        """The users with waiting jobs."""
        return [u for u, c in self._counts.items() if c.get(JobState.WAITING)]

    def waiting_count(self) -> int:
        return len(self._by_state.get(JobState.WAITING, _NO_JOBS))

    # --- the waiting queues, as a scheduling pass reads them (scheduler.WaitingQueues) -------

    def priorities(self) -> list[int]:
        return sorted(self._waiting, reverse=True)

    def users(self, priority: int) -> Iterable[str]:
        return self._waiting.get(priority, {}).keys()

    def shapes(self, priority: int, user: str) -> Iterable[tuple[Shape, Sequence[int]]]:
        queues = self._waiting.get(priority, {}).get(user, {})
        if not self.arrays.members:  # no capped array waits: every key is a shape
            return queues.items()
        return [(queue_shape(key), ids) for key, ids in queues.items()]

    def view(self, job_id: int) -> JobView | None:
        """The scheduler's view of a waiting job; None if it is not waiting."""
        job = self._jobs.get(job_id)
        if job is None or job.state is not JobState.WAITING or not self.queued(job):
            return None
        return JobView(
            id=job.id,
            user=job.user,
            slots=job.spec.slots,
            priority=job.spec.priority,
            excluded=frozenset(job.spec.excluded_hosts),
        )

    def waiting_views(self) -> tuple[JobView, ...]:
        """Every waiting job as the scheduler sees it, by id (for listings)."""
        views = (self.view(i) for i in sorted(self._by_state.get(JobState.WAITING, _NO_JOBS)))
        return tuple(v for v in views if v is not None)

    def newest(self, states: Iterable[JobState], user: str | None, count: int) -> list[Job]:
        """The ``count`` jobs in ``states`` (of ``user``, or everyone's) with the highest ids,
        newest first: what the dashboard lists, at the cost of ``count``, not of the queue."""
        wanted = set(states)
        lists = [
            reversed(ids)
            for (owner, state), ids in self._ids.items()
            if state in wanted and user in (None, owner)
        ]
        merged = heapq.merge(*lists, reverse=True)
        return [self._jobs[i] for _, i in zip(range(count), merged, strict=False)]
