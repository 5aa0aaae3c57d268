"""Pure job placement: which waiting jobs start on which hosts in one pass.

Pure: no I/O, no reactor, no clock.  The dispatcher builds a
:class:`SchedulerInput` from the database and its host monitors, calls
:func:`schedule`, and applies the :class:`Decision`.

Policy of one pass
------------------

* Nothing is placed while the cluster is deactivated; jobs of disabled users
  are skipped.
* A job never spans hosts.  A host is usable for a job only if it is active
  (active, not retired, its connection ok), not in the job's excluded set, and
  ``(user, host)`` is not in back-off.  ``occupied + slots <= max_slots``
  always holds.  With ``load_check``, ``load + slots placed there this pass +
  slots <= number_slots``; a host whose load no executor has reported yet
  counts as load 0 (the check starts with the first report: refusing would
  keep every executor, and so every report, away from it).
* Order: priority descending; at equal priority, fair share between users --
  the user with the least ``usage + PLACEMENT_CHARGE * slots placed this pass``
  goes next (ties: the user whose next job was submitted first); within one
  user, submission order (job id).  A job that fits nowhere is skipped and does
  not block the jobs behind it.
* Host choice among the fitting hosts: most free slots, then host name
  (deterministic "spread" placement).
* Starvation guard (reservations): at most one reservation is outstanding.  An
  earlier reservation from ``inp.reservations`` is kept while it is still valid
  (the job is still waiting, its user is enabled, the host is still usable for
  it and ``slots <= max_slots``); while kept, *no other job* is placed on the
  reserved host.  Without a valid earlier reservation, the first job in pass
  order that cannot be placed but fits the ``max_slots`` of some usable host
  gets one, on the usable host with the most free slots (then name); the load
  check is ignored for choosing it.

  Bound: once job J holds a reservation on host H, the occupied slots on H only
  decrease (nothing new starts there), so J starts in the first pass after
  enough of the jobs running on H at reservation time have ended (and, with
  load_check, the load has fallen) -- at the latest when all of them have
  ended.  A job that is the highest-ranked blocked job gets the reservation as
  soon as the outstanding one (if any) is consumed, so the wait of any job that
  fits some host is bounded by the run times of the jobs already running plus
  the jobs ranked ahead of it.

Cost: O(J log U + P * H) for J waiting jobs, U users, P placements and H hosts;
failed placements are memoised per (user, slots, excluded) until the next
placement changes the cluster, and the pass stops as soon as no usable host has
a free slot.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from tm.core.arrays import ArrayCaps, CapGate

#: Seconds of usage charged per slot placed in this pass, for fair share.
PLACEMENT_CHARGE = 3600.0


@dataclass(frozen=True)
class HostView:
    name: str
    max_slots: int
    number_slots: int
    occupied: int
    active: bool  # eligible: active, not retired, cluster-side connection ok
    load: float | None = None
    load_check: bool = False


@dataclass(frozen=True)
class JobView:
    id: int  # id order = submission order
    user: str
    slots: int
    priority: int
    excluded: frozenset[str] = frozenset()


#: What jobs of one user and priority share for placement: (slots, excluded hosts).
Shape = tuple[int, frozenset[str]]


class WaitingQueues(Protocol):
    """The waiting jobs as a pass reads them: per priority, per user, per shape, the job ids
    in submission order (the dispatcher's working set keeps them up to date)."""

    def priorities(self) -> list[int]: ...  # highest first

    def users(self, priority: int) -> Iterable[str]: ...

    def shapes(self, priority: int, user: str) -> Iterable[tuple[Shape, Sequence[int]]]: ...

    def view(self, job_id: int) -> JobView | None: ...  # None unless waiting


class ListQueues:
    """:class:`WaitingQueues` built from a list of jobs."""

    def __init__(self, jobs: Iterable[JobView]) -> None:
        self.views = {j.id: j for j in jobs}
        flat: dict[tuple[int, str, Shape], list[int]] = {}
        for job_id in sorted(self.views):
            j = self.views[job_id]
            key = (j.priority, j.user, (j.slots, j.excluded))
            queue = flat.get(key)
            if queue is None:
                flat[key] = [job_id]
            else:
                queue.append(job_id)
        self._queues: dict[int, dict[str, dict[Shape, list[int]]]] = {}
        for (prio, user, shape), ids in flat.items():
            self._queues.setdefault(prio, {}).setdefault(user, {})[shape] = ids

    def priorities(self) -> list[int]:
        return sorted(self._queues, reverse=True)

    def users(self, priority: int) -> Iterable[str]:
        return self._queues.get(priority, {}).keys()

    def shapes(self, priority: int, user: str) -> Iterable[tuple[Shape, Sequence[int]]]:
        return self._queues.get(priority, {}).get(user, {}).items()

    def view(self, job_id: int) -> JobView | None:
        return self.views.get(job_id)


@dataclass(frozen=True)
class SchedulerInput:
    hosts: tuple[HostView, ...]
    jobs: tuple[JobView, ...] = ()  # the waiting jobs, when ``queues`` is not given
    usage: Mapping[str, float] = field(default_factory=dict)  # decayed slot-seconds
    cluster_active: bool = True
    disabled_users: frozenset[str] = frozenset()
    blocked: frozenset[tuple[str, str]] = frozenset()  # (user, host) in back-off
    reservations: Mapping[int, str] = field(default_factory=dict)  # job id -> host
    #: The waiting jobs by priority, user and shape; built from ``jobs`` when None.
    queues: WaitingQueues | None = None
    held: frozenset[int] = frozenset()  # waiting jobs not to be placed in this pass
    arrays: ArrayCaps | None = None  # the caps of job arrays (tm/core/arrays.py)

    def waiting_queues(self) -> WaitingQueues:
        return self.queues if self.queues is not None else ListQueues(self.jobs)


@dataclass
class Decision:
    placements: list[tuple[int, str]] = field(default_factory=list)  # (job id, host)
    reservations: dict[int, str] = field(default_factory=dict)


def _usable(h: HostView, job: JobView, blocked: frozenset[tuple[str, str]]) -> bool:
    return h.active and h.name not in job.excluded and (job.user, h.name) not in blocked


def _valid_reservation(job: JobView, host: HostView | None, inp: SchedulerInput) -> bool:
    return (
        host is not None
        and job.user not in inp.disabled_users
        and _usable(host, job, inp.blocked)
        and job.slots <= host.max_slots
    )


class _UserQueues:
    """One user's queues at one priority (one per shape), ordered by their first job; a
    queue given up on (``drop``) is out until ``rebuild``."""

    __slots__ = ("heap", "ids", "pos", "shaped", "shapes", "skip")

    def __init__(
        self,
        queues: Iterable[tuple[Shape, Sequence[int]]],
        skip: AbstractSet[int],
        holders: Iterable[JobView],
    ) -> None:
        self.shapes: list[Shape] = []
        self.ids: list[Sequence[int]] = []
        for shape, ids in queues:
            self.shapes.append(shape)
            self.ids.append(ids)
        self.shaped = len(self.ids)  # the queues past these hold one job with a reservation
        for h in holders:
            self.shapes.append((h.slots, h.excluded))
            self.ids.append([h.id])
        self.skip = skip  # left out of the shape queues: held jobs and reservation holders
        self.pos = [0] * len(self.ids)
        self.heap: list[tuple[int, int]] = []
        self.rebuild()

    def _head(self, index: int) -> int | None:
        ids, pos, skip = self.ids[index], self.pos[index], self.skip
        n = len(ids)
        if skip and index < self.shaped:
            while pos < n and ids[pos] in skip:
                pos += 1
            self.pos[index] = pos
        return ids[pos] if pos < n else None

    def rebuild(self) -> None:
        if self.skip:
            heads = [(self._head(i), i) for i in range(len(self.ids))]
            heap = [(h, i) for h, i in heads if h is not None]
        else:
            heap = [
                (ids[p], i)
                for i, (ids, p) in enumerate(zip(self.ids, self.pos, strict=True))
                if p < len(ids)
            ]
        heapq.heapify(heap)
        self.heap = heap

    def advance(self) -> None:
        """The first job was placed: its queue moves on."""
        index = self.heap[0][1]
        self.pos[index] += 1
        job_id = self._head(index)
        if job_id is None:
            heapq.heappop(self.heap)
        else:
            heapq.heapreplace(self.heap, (job_id, index))

    def drop(self) -> None:
        """The first job was not placed: its queue is given up on."""
        heapq.heappop(self.heap)


#: What ``try_place`` says of a job: placed, placed and a reservation ended (queues given up
#: on in this priority are looked at again), not placed (its queue is given up on until a
#: reservation ends), or stop the pass.
PLACED, PLACED_FREED, NOT_PLACED, STOP = range(4)


def _walk(
    inp: SchedulerInput,
    queues: WaitingQueues,
    holders: dict[int, JobView],
    try_place: Callable[[JobView], int],
) -> None:
    """Offer jobs to ``try_place`` in pass order: priority descending; at one priority, the
    user with the least ``usage + PLACEMENT_CHARGE * slots placed`` next (ties: the user whose
    next job was submitted first); within a user, submission order.

    Only queue heads are looked at: a job that is not placed ends its queue's turn until a
    reservation ends (nothing else makes a job fit that did not: free slots only shrink in a
    pass), so the jobs looked at are bounded by the placements and the number of queues.
    ``holders`` (jobs with a reservation) are looked at on their own, in their place."""
    charge: dict[str, float] = {}
    skip = inp.held | holders.keys()
    views = queues.views if isinstance(queues, ListQueues) else None
    for prio in queues.priorities():
        users: dict[str, _UserQueues] = {}
        for user in queues.users(prio):
            if user in inp.disabled_users:
                continue
            own = [
                h
                for h in holders.values()
                if h.user == user and h.priority == prio and h.id not in inp.held
            ]
            users[user] = _UserQueues(queues.shapes(prio, user), skip, own)
        if not _walk_priority(inp, prio, users, charge, try_place, views):
            return


def _walk_priority(
    inp: SchedulerInput,
    prio: int,
    users: dict[str, _UserQueues],
    charge: dict[str, float],
    try_place: Callable[[JobView], int],
    views: Mapping[int, JobView] | None,
) -> bool:
    """One priority's turn of :func:`_walk`; False to stop the pass."""
    heap: list[tuple[float, int, str]] = []
    usage = inp.usage

    def push(user: str) -> None:
        first = users[user].heap
        if first:
            heapq.heappush(heap, (usage.get(user, 0.0) + charge.get(user, 0.0), first[0][0], user))

    for user in users:
        push(user)
    while heap:
        _, _, user = heapq.heappop(heap)
        uq = users[user]
        job_id, index = uq.heap[0]
        if views is not None:
            job = views[job_id]
        else:
            slots, excluded = uq.shapes[index]
            job = JobView(id=job_id, user=user, slots=slots, priority=prio, excluded=excluded)
        outcome = try_place(job)
        if outcome == STOP:
            return False
        if outcome == NOT_PLACED:
            uq.drop()
        else:
            uq.advance()
            charge[user] = charge.get(user, 0.0) + PLACEMENT_CHARGE * job.slots
        if outcome == PLACED_FREED:
            heap.clear()
            for name, other in users.items():
                other.rebuild()
                push(name)
        else:
            push(user)
    return True


def queue_order(inp: SchedulerInput) -> list[JobView]:
    """The waiting jobs in the order a pass would consider them if each one fitted:
    priority, then fair share between users (each job charged as if placed), then
    submission order. Jobs of disabled users are left out. Walks the whole queue: for
    listings."""
    order: list[JobView] = []

    def take(job: JobView) -> int:
        order.append(job)
        return PLACED

    _walk(inp, inp.waiting_queues(), {}, take)
    return order


def schedule(inp: SchedulerInput) -> Decision:
    """One placement pass; see the module docstring for the policy and bound."""
    decision = Decision()
    if not inp.cluster_active or not inp.hosts:
        return decision

    hosts = {h.name: h for h in inp.hosts}
    order = sorted(hosts)
    free = {n: hosts[n].max_slots - hosts[n].occupied for n in order}
    added = dict.fromkeys(order, 0)  # slots placed this pass per host

    reserved = (
        {} if inp.queues is not None else {j.id: j for j in inp.jobs if j.id in inp.reservations}
    )

    def view(job_id: int) -> JobView | None:
        return inp.queues.view(job_id) if inp.queues is not None else reserved.get(job_id)

    reserved_host_to_job: dict[str, int] = {}
    holders: dict[int, JobView] = {}
    for jid, hname in sorted(inp.reservations.items()):
        job = None if jid in inp.held else view(jid)
        if job is None or hname in reserved_host_to_job:
            continue
        if _valid_reservation(job, hosts.get(hname), inp):
            reserved_host_to_job[hname] = jid
            decision.reservations[jid] = hname
            holders[jid] = job
    # Memo of failures: key -> whether the job fits the max_slots of a usable host.
    failed: dict[tuple[str, int, frozenset[str]], bool] = {}
    # Free slots on active hosts (reserved ones included); the pass ends at 0.
    open_slots = [sum(max(0, free[n]) for n in order if hosts[n].active)]

    max_capacity = max((h.max_slots for h in inp.hosts if h.active), default=0)

    def open_max() -> int:
        """The most free slots on an active host not reserved for a job."""
        return max(
            (free[n] for n in order if hosts[n].active and n not in reserved_host_to_job),
            default=0,
        )

    max_open = [open_max()]
    gate = CapGate(inp.arrays)

    def fits(h: HostView, job: JobView) -> bool:
        n = h.name
        if free[n] < job.slots:
            return False
        if h.load_check:
            if (h.load or 0.0) + added[n] + job.slots > h.number_slots:
                return False
        return True

    def try_place(job: JobView) -> int:
        own = decision.reservations.get(job.id)
        if open_slots[0] <= 0:
            return STOP
        if gate.full(job.id):
            return NOT_PLACED  # its array is at its cap: only its array's queue waits
        if (
            own is None
            and job.slots > max_open[0]
            and (decision.reservations or job.slots > max_capacity)
        ):
            return NOT_PLACED  # fits no open host now, and no reservation to make
        key = (job.user, job.slots, job.excluded)
        if key in failed and own is None:
            can_reserve = failed[key]
        else:
            best: str | None = None
            res_best: str | None = None
            for n in order:
                h = hosts[n]
                if not _usable(h, job, inp.blocked):
                    continue
                holder = reserved_host_to_job.get(n)
                if holder is not None and holder != job.id:
                    continue
                if job.slots <= h.max_slots and (res_best is None or free[n] > free[res_best]):
                    res_best = n
                if fits(h, job) and (best is None or free[n] > free[best]):
                    best = n
            if best is not None:
                free[best] -= job.slots
                added[best] += job.slots
                open_slots[0] -= job.slots
                decision.placements.append((job.id, best))
                gate.placed(job.id)
                failed.clear()
                if own is not None:
                    # Started (on its host or elsewhere): the reservation ends.
                    reserved_host_to_job.pop(own, None)
                    del decision.reservations[job.id]
                    max_open[0] = open_max()
                    return PLACED_FREED
                max_open[0] = open_max()
                return PLACED
            can_reserve = res_best is not None
            failed[key] = can_reserve
            if can_reserve and not decision.reservations:
                assert res_best is not None
                decision.reservations[job.id] = res_best
                reserved_host_to_job[res_best] = job.id
                max_open[0] = open_max()
        return NOT_PLACED

    if open_slots[0] > 0:  # else the first job would stop the pass
        _walk(inp, inp.waiting_queues(), holders, try_place)
    return decision


def explain_wait(job: JobView, inp: SchedulerInput) -> str:
    """A one-line reason why the waiting ``job`` is not started."""
    if not inp.cluster_active:
        return "cluster is deactivated"
    if job.user in inp.disabled_users:
        return f"user {job.user} is disabled"
    if not inp.hosts:
        return "no hosts are configured"
    largest = max(h.max_slots for h in inp.hosts)
    if job.slots > largest:
        return f"needs {job.slots} slots, largest host has {largest}"
    candidates = [h for h in inp.hosts if h.active and h.name not in job.excluded]
    if not candidates:
        return "all hosts are excluded or inactive"
    usable = [h for h in candidates if (job.user, h.name) not in inp.blocked]
    if not usable:
        return f"all usable hosts are in back-off for user {job.user}"
    largest_usable = max(h.max_slots for h in usable)
    if job.slots > largest_usable:
        return f"needs {job.slots} slots, largest usable host has {largest_usable}"
    if job not in inp.jobs:
        inp = SchedulerInput(
            hosts=inp.hosts,
            jobs=(*inp.jobs, job),
            usage=inp.usage,
            cluster_active=inp.cluster_active,
            disabled_users=inp.disabled_users,
            blocked=inp.blocked,
            reservations=inp.reservations,
        )
    decision = schedule(inp)
    for jid, hname in decision.placements:
        if jid == job.id:
            return f"can start on {hname} in the next scheduling pass"
    free_now = [h for h in usable if h.max_slots - h.occupied >= job.slots]
    if free_now and all(
        h.load_check and (h.load or 0.0) + job.slots > h.number_slots for h in free_now
    ):
        return "load too high on every fitting host"
    if job.id in decision.reservations:
        return (
            f"slots reserved on {decision.reservations[job.id]}, "
            "waiting for running jobs there to end"
        )
    if not free_now:
        best = max(max(0, h.max_slots - h.occupied) for h in usable)
        return f"needs {job.slots} slots, largest free on an active host is {best}"
    reserved = {h: j for j, h in decision.reservations.items()}
    if all(h.name in reserved for h in free_now):
        return f"slots reserved for job {reserved[free_now[0].name]}"
    ahead = sum(
        1
        for j in inp.jobs
        if j.user not in inp.disabled_users
        and j.id != job.id
        and (j.priority > job.priority or (j.priority == job.priority and j.id < job.id))
    )
    return f"waiting for {ahead} jobs of higher priority or earlier submission"
