"""Tests of the working set (tm.core.workingset): one transition, memory and row alike;
indexes kept by events equal to indexes recomputed; scheduling fed by its queues."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tm.core import scheduler
from tm.core.model import ALLOWED_TRANSITIONS, Job, JobEnvironment, JobSpec, JobState
from tm.core.scheduler import HostView, JobView, SchedulerInput, schedule
from tm.core.workingset import WorkingSet
from tm.db import queries
from tm.db.store import Store


def make_job(
    job_id: int,
    user: str = "alice",
    slots: int = 1,
    priority: int = 0,
    excluded: tuple[str, ...] = (),
    state: JobState = JobState.WAITING,
    host: str | None = None,
) -> Job:
    spec = JobSpec(
        uuid=f"u-{job_id}", command="true", slots=slots, priority=priority, excluded_hosts=excluded
    )
    return Job(
        id=job_id,
        uuid=spec.uuid,
        user=user,
        spec=spec,
        state=state,
        attempt=1,
        submitted_at=0.0,
        host=host,
    )


# --- one transition: the job in memory and its row ----------------------------------------


def _database() -> sqlite3.Cursor:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    txn = conn.cursor()
    for _, path in Store.migrations():
        for stmt in queries.SQLITE.render_schema(Path(path).read_text()):
            txn.execute(stmt)
    return txn


STEPS: list[tuple[JobState, dict[str, Any]]] = [
    (JobState.PENDING, {"host": "h1"}),
    (JobState.RUNNING, {"host": "h1", "pid": 42}),
    (JobState.LOST, {}),
    (JobState.WAITING, {"new_attempt": 2, "clear_host": True}),
    (JobState.PENDING, {"host": "h2"}),
    (JobState.WAITING, {"clear_host": True}),
    (JobState.PENDING, {"host": "h2"}),
    (JobState.RUNNING, {"host": "h2", "pid": 7}),
    (JobState.FAILED, {"exit_code": 3, "signal": None, "host": "h2"}),
]


def test_a_transition_changes_memory_and_row_alike() -> None:
    txn = _database()
    [job_id], _ = queries.insert_jobs(
        txn,
        queries.SQLITE,
        "alice",
        JobEnvironment(cwd="/tmp"),
        [JobSpec(uuid="u-1", command="true")],
        1.0,
    )
    job = queries.get_job(txn, queries.SQLITE, job_id)
    assert job is not None
    work = WorkingSet([job])
    for at, (new, fields) in enumerate(STEPS, start=10):
        t = work.transition(job, new, f"to {new.value}", float(at), **fields)
        assert queries.apply_transitions(txn, queries.SQLITE, [t], 999.0) == [True]
        row = queries.get_job(txn, queries.SQLITE, job_id)
        assert row == job, (new, row, job)
    assert job_id not in work  # it ended: out of the working set


def test_changes_name_only_job_fields() -> None:
    names = set(Job.__dataclass_fields__)
    for old, targets in ALLOWED_TRANSITIONS.items():
        for new in targets:
            job = make_job(1, state=old)
            t = WorkingSet([job]).transition(
                job, new, "r", 5.0, host="h", pid=1, exit_code=0, signal=None, new_attempt=2
            )
            assert set(t.changes(0.0)) <= names


# --- indexes kept by events equal indexes recomputed ---------------------------------------


def _recomputed(jobs: list[Job]) -> dict[str, Any]:
    occupied: dict[str, int] = {}
    counts: dict[str, dict[JobState, int]] = {}
    for j in jobs:
        if j.state.holds_slots and j.host:
            occupied[j.host] = occupied.get(j.host, 0) + j.spec.slots
        c = counts.setdefault(j.user, {})
        c[j.state] = c.get(j.state, 0) + 1
    return {"occupied": occupied, "counts": counts}


def _check(work: WorkingSet) -> None:
    jobs = list(work.values())
    expected = _recomputed(jobs)
    assert work.occupied == expected["occupied"]
    for user, counts in expected["counts"].items():
        assert work.counts(user) == counts
    for j in jobs:
        if j.host:
            assert j in work.on(j.user, j.host)
            assert (j in work.holding_slots(j.user, j.host)) == j.state.holds_slots
    waiting = sorted(j.id for j in jobs if j.state is JobState.WAITING)
    assert [v.id for v in work.waiting_views()] == waiting
    queued = sorted(
        i
        for p in work.priorities()
        for u in work.users(p)
        for _, ids in work.shapes(p, u)
        for i in ids
    )
    assert queued == waiting
    for p in work.priorities():
        for u in work.users(p):
            for (slots, excluded), ids in work.shapes(p, u):
                assert list(ids) == sorted(ids)
                for i in ids:
                    j = work[i]
                    assert (j.user, j.spec.priority, j.spec.slots) == (u, p, slots)
                    assert frozenset(j.spec.excluded_hosts) == excluded
    assert set(work.waiting_users()) == {j.user for j in jobs if j.state is JobState.WAITING}
    for user in {j.user for j in jobs} | {None}:
        for states in ([JobState.WAITING], [JobState.PENDING, JobState.RUNNING], list(JobState)):
            listed = [j.id for j in work.listing(states, user, after_id=-1)]
            assert listed == sorted(
                j.id for j in jobs if j.state in states and user in (None, j.user)
            )
            if len(listed) > 1:
                after = listed[len(listed) // 2]
                assert [j.id for j in work.listing(states, user, after)] == [
                    i for i in listed if i > after
                ]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 9), st.sampled_from(list(JobState)), st.sampled_from(["h1", "h2"])
        ),
        max_size=60,
    )
)
def test_indexes_follow_every_transition(moves: list[tuple[int, JobState, str]]) -> None:
    work = WorkingSet(
        make_job(
            i,
            user=f"u{i % 3}",
            slots=1 + i % 2,
            priority=i % 2,
            excluded=("h2",) if i % 4 == 0 else (),
        )
        for i in range(10)
    )
    at = 0.0
    for job_id, new, host in moves:
        job = work.get(job_id)
        if job is None or new not in ALLOWED_TRANSITIONS[job.state]:
            continue
        at += 1.0
        fields: dict[str, Any] = {}
        if new is JobState.PENDING:
            fields = {"host": host}
        elif new is JobState.WAITING:
            fields = {"clear_host": True, "new_attempt": job.attempt + 1}
        work.transition(job, new, "", at, **fields)
        _check(work)
    for job_id in list(work)[:3]:
        work.discard(job_id)
    _check(work)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 30),
            st.sampled_from([JobState.WAITING, JobState.WAITING, JobState.RUNNING]),
            st.integers(0, 2),
        ),
        max_size=40,
    ),
    st.integers(0, 15),
)
def test_a_bulk_add_indexes_as_adding_one_by_one(
    rows: list[tuple[int, JobState, int]], already: int
) -> None:
    def jobs() -> list[Job]:
        return [
            make_job(
                i,
                user=f"u{k}",
                priority=k % 2,
                slots=1 + i % 2,
                state=state,
                host="h1" if state is JobState.RUNNING else None,
            )
            for i, state, k in rows
        ]

    one_by_one, bulk = WorkingSet(), WorkingSet()
    for job in jobs()[:already]:  # some known already: a resent chunk
        one_by_one.add(job)
    for job in jobs()[:already]:
        bulk.add(job)
    for job in jobs():
        one_by_one.add(job)
    bulk.add_many(jobs())
    _check(bulk)
    assert sorted(bulk) == sorted(one_by_one)
    assert bulk.occupied == one_by_one.occupied
    assert [v.id for v in bulk.waiting_views()] == [v.id for v in one_by_one.waiting_views()]
    for user in {f"u{k}" for _, _, k in rows}:
        assert bulk.counts(user) == one_by_one.counts(user)


def test_the_jobs_a_submission_creates_are_their_rows() -> None:
    txn = _database()
    env = JobEnvironment(cwd="/w", umask=0o027, env={"A": "1"})
    specs = [
        JobSpec(uuid="u-1", command="true"),
        JobSpec(
            uuid="u-2",
            command="x",
            shell="/bin/bash",
            slots=3,
            priority=7,
            group="g",
            info="i",
            stdout="o",
            stderr="e",
            logfile="l",
            excluded_hosts=("h1", "h2"),
            estimated_time=1.5,
            estimated_memory=2.0,
        ),
    ]
    ids, created = queries.insert_jobs(txn, queries.SQLITE, "alice", env, specs, 12.5)
    assert [j.id for j in created] == ids
    assert created == queries.get_jobs(txn, queries.SQLITE, ids)
    # Sent again with one more: the same ids, only the new job created, history once each.
    more = [*specs, JobSpec(uuid="u-3", command="y")]
    again, created = queries.insert_jobs(txn, queries.SQLITE, "alice", env, more, 13.0)
    assert again[:2] == ids and [j.uuid for j in created] == ["u-3"]
    assert created == queries.get_jobs(txn, queries.SQLITE, again[2:])
    for job_id in again:
        assert len(queries.get_history(txn, queries.SQLITE, job_id, 10)) == 1


# --- scheduling fed by the working set's queues ----------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_pass_over_the_queues_decides_as_over_the_list(data: st.DataObject) -> None:
    hosts = tuple(
        HostView(
            name=f"h{i}",
            max_slots=m,
            number_slots=m,
            occupied=data.draw(st.integers(0, m)),
            active=True,
        )
        for i, m in enumerate(data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    )
    jobs = [
        make_job(
            i,
            user=data.draw(st.sampled_from(["a", "b", "c"])),
            slots=data.draw(st.integers(1, 4)),
            priority=data.draw(st.integers(0, 2)),
            excluded=tuple(data.draw(st.lists(st.sampled_from(["h0", "h1"]), max_size=1))),
        )
        for i in range(1, data.draw(st.integers(0, 30)) + 1)
    ]
    work = WorkingSet(jobs)
    held = frozenset(data.draw(st.lists(st.sampled_from([j.id for j in jobs] or [0]), max_size=2)))
    reservations: dict[int, str] = {}
    reserve: bool = data.draw(st.booleans())
    if jobs and reserve:
        reservations = {data.draw(st.sampled_from([j.id for j in jobs])): "h0"}
    usage = {"a": data.draw(st.floats(0, 10)), "b": 0.0, "c": 5.0}
    common: dict[str, Any] = {"hosts": hosts, "usage": usage, "reservations": reservations}
    by_list = schedule(
        SchedulerInput(jobs=tuple(v for v in work.waiting_views() if v.id not in held), **common)
    )
    by_queues = schedule(SchedulerInput(queues=work, held=held, **common))
    assert by_queues == by_list
    listed = scheduler.queue_order(SchedulerInput(queues=work, held=held, **common))
    assert listed == scheduler.queue_order(
        SchedulerInput(jobs=tuple(v for v in work.waiting_views() if v.id not in held), **common)
    )


class CountingIds(Sequence[int]):
    """A queue that counts how many of its jobs a pass reads."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = ids
        self.reads = 0

    def __getitem__(self, index: Any) -> Any:
        self.reads += 1
        return self.ids[index]

    def __len__(self) -> int:
        return len(self.ids)


class CountingQueues:
    def __init__(self, work: WorkingSet) -> None:
        self.work = work
        self.counted: list[CountingIds] = []

    def priorities(self) -> list[int]:
        return self.work.priorities()

    def users(self, priority: int) -> Any:
        return self.work.users(priority)

    def shapes(self, priority: int, user: str) -> Any:
        for shape, ids in self.work.shapes(priority, user):
            counted = CountingIds(ids)
            self.counted.append(counted)
            yield shape, counted

    def view(self, job_id: int) -> JobView | None:
        return self.work.view(job_id)

    @property
    def reads(self) -> int:
        return sum(c.reads for c in self.counted)


def test_a_pass_reads_a_bounded_number_of_jobs_whatever_the_queue_length() -> None:
    """Long queues: a pass reads about one job per placement and per queue, not the queue."""
    reads: dict[int, int] = {}
    for n in (1_000, 100_000):
        jobs = [make_job(i, user=f"u{i % 3}", slots=1 if i % 10 else 8) for i in range(1, n + 1)]
        work = WorkingSet(jobs)
        queues = CountingQueues(work)
        decision = schedule(
            SchedulerInput(
                hosts=(
                    HostView(name="h1", max_slots=16, number_slots=16, occupied=6, active=True),
                    HostView(name="h2", max_slots=4, number_slots=4, occupied=0, active=True),
                ),
                queues=queues,
            )
        )
        # Job 10 (8 slots) does not fit: it reserves h1, whose 2 last free slots stay free.
        assert len(decision.placements) == 12 and decision.reservations == {10: "h1"}
        reads[n] = queues.reads
    assert reads[100_000] == reads[1_000] < 100


def test_backed_off_user_does_not_make_a_pass_walk_the_queue() -> None:
    """Every job of a long queue blocked (e.g. its user's executors in back-off): one read
    per queue, not one per job."""
    work = WorkingSet(make_job(i) for i in range(1, 50_001))
    queues = CountingQueues(work)
    decision = schedule(
        SchedulerInput(
            hosts=(HostView(name="h1", max_slots=4, number_slots=4, occupied=0, active=True),),
            queues=queues,
            blocked=frozenset({("alice", "h1")}),
        )
    )
    assert decision.placements == [] and queues.reads <= 2
