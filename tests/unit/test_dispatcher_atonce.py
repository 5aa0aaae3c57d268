"""Placement at submission (tm/dispatcher/atonce.py): a job that can start at once is placed
in its submission's transaction, its start order sent right after that commit; anything that
could come before it (a queued job, a reservation, a dependency, a hold) keeps it waiting for
a pass, and the slots it claims while its transaction runs are never given to another job."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.task import deferLater

from tests.unit.dispatcher_fakes import (
    FakeSession,
    MemoryStore,
    make_dispatcher,
    runs_everything,
)
from tests.unit.test_store import store_on
from tm.core.model import Host, JobEnvironment, JobSpec, JobState
from tm.db.store import Store
from tm.dispatcher.service import Dispatcher
from tm.protocol import commands

ENV = JobEnvironment(cwd="/tmp", sealed='"sealed"')


def spec(n: int, **kw: Any) -> JobSpec:
    return JobSpec(uuid=f"00000000-0000-0000-0000-{n:012d}", command="true", **kw)


def submitted(d: Dispatcher, *specs: JobSpec, user: str = "alice") -> Deferred:
    return ensureDeferred(d.submit(user, ENV, list(specs)))


def ids_of(result: Deferred) -> list[int]:
    out: list = []
    result.addBoth(out.append)
    assert out, "the submission has not been answered"
    ids, _ = out[0]
    return ids


class GatedStore(MemoryStore):
    """A store whose placing submissions commit when the test says (``gate``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: Deferred | None = None
        self.fail_with: BaseException | None = None

    def insert_and_place(self, *args: Any) -> Deferred:
        if self.fail_with is not None:
            return fail(self.fail_with)
        if self.gate is None:
            return super().insert_and_place(*args)
        gate, self.gate = self.gate, None
        return gate.addCallback(lambda _: super(GatedStore, self).insert_and_place(*args))


def connected(tmp_path: Path, hosts: list[Host] | None = None) -> Any:
    d, clock, store = make_dispatcher(tmp_path, hosts=hosts, store=GatedStore())
    executor = FakeSession(runs_everything)
    d.tms_connected("alice", FakeSession(runs_everything))
    d.executor_connected("alice", "h1", executor)
    clock.advance(0)
    return d, clock, store, executor


def test_a_job_that_can_start_is_placed_by_its_submission_s_commit(tmp_path: Path) -> None:
    d, clock, store, executor = connected(tmp_path)
    (job_id,) = ids_of(submitted(d, spec(1)))
    # No turn has passed: one commit stored and placed it, and its start order went out.
    assert store.placed_at_submission == 1
    assert [o["job_id"] for o in executor.proto.names("RunJob")] == [job_id]
    assert [(h[2]) for h in store.history if h[0] == job_id] == ["pending"]
    assert store.jobs[job_id].state is JobState.PENDING and store.jobs[job_id].host == "h1"
    assert d.jobs.occupied == {"h1": 1} and d.claimed == {}
    clock.advance(0)
    assert d.jobs[job_id].state is JobState.RUNNING
    assert store.jobs[job_id].state is JobState.RUNNING


def test_a_job_behind_a_reservation_waits_for_its_pass(tmp_path: Path) -> None:
    d, clock, store, executor = connected(tmp_path)
    (small,) = ids_of(submitted(d, spec(1)))
    (big,) = ids_of(submitted(d, spec(2, slots=2)))  # one slot free: it waits, reserves h1
    clock.advance(0)
    assert d.jobs[big].state is JobState.WAITING and d.reservations == {big: "h1"}
    (late,) = ids_of(submitted(d, spec(3)))  # a free slot, but the big job comes first
    clock.advance(0)
    assert d.jobs[late].state is JobState.WAITING
    assert store.placed_at_submission == 1
    assert d.jobs.occupied == {"h1": 1}


def test_dependencies_holds_and_capped_arrays_wait_for_a_pass(tmp_path: Path) -> None:
    d, clock, store, executor = connected(tmp_path, [Host(name="h1", number_slots=8, max_slots=8)])
    (first,) = ids_of(submitted(d, spec(1, hold="user")))
    assert d.jobs[first].state is JobState.WAITING
    # The held job is not queued: it does not keep the others from being placed at once.
    (after,) = ids_of(submitted(d, spec(2, after=str(first))))
    capped = ids_of(submitted(d, spec(3, array_id="a", array_index=0, array_cap=1)))
    assert d.jobs[after].state is JobState.WAITING
    assert d.jobs[capped[0]].state is JobState.WAITING
    assert not getattr(store, "placed_at_submission", 0)
    clock.advance(0)
    assert d.jobs[capped[0]].state in (JobState.PENDING, JobState.RUNNING)  # by its pass


def test_claimed_slots_are_not_given_away_while_the_submission_commits(tmp_path: Path) -> None:
    d, clock, store, executor = connected(tmp_path)
    store.gate = Deferred()
    gate = store.gate
    first = submitted(d, spec(1, slots=2))
    assert d.claimed == {"h1": 2} and not first.called
    # Another submission meanwhile: its job is not placed at once, nor by the pass after it.
    (second,) = ids_of(submitted(d, spec(2)))
    clock.advance(0)
    assert d.jobs[second].state is JobState.WAITING
    gate.callback(None)
    (job_id,) = ids_of(first)
    assert d.claimed == {} and d.jobs.occupied == {"h1": 2}
    clock.advance(0)
    assert d.jobs[job_id].state is JobState.RUNNING
    assert d.jobs[second].state is JobState.WAITING


def test_a_submission_that_fails_gives_its_slots_back(tmp_path: Path) -> None:
    d, clock, store, executor = connected(tmp_path)
    store.fail_with = RuntimeError("disk on fire")
    out: list = []
    submitted(d, spec(1)).addErrback(out.append)
    assert out and out[0].check(commands.DatabaseUnavailable)
    assert d.claimed == {} and d.waiting_in_flight == 0
    store.fail_with = None
    (job_id,) = ids_of(submitted(d, spec(2)))
    assert store.placed_at_submission == 1 and d.jobs[job_id].host == "h1"


@pytest.fixture(params=["sqlite", "mysql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_on(request.param, tmp_path, upgraded=True) as s:
        yield s


@pytest_twisted.ensureDeferred
async def test_the_store_inserts_and_places_in_one_transaction(store: Store) -> None:
    specs = [spec(1), spec(2), spec(3)]
    hosts = {specs[0].uuid: "h1", specs[2].uuid: "h2"}
    ids, created, placed = await store.insert_and_place("alice", ENV, specs, 10.0, hosts)
    assert [t.job_id for t in placed] == [ids[0], ids[2]]
    assert [(j.state, j.host) for j in created] == [
        (JobState.PENDING, "h1"),
        (JobState.WAITING, None),
        (JobState.PENDING, "h2"),
    ]
    for job in created:  # what the dispatcher holds is what the database holds
        stored = await store.get_job(job.id)
        assert stored is not None
        assert (stored.state, stored.host, stored.state_since, stored.reason) == (
            job.state,
            job.host,
            job.state_since,
            job.reason,
        )
    history = await store.get_history(ids[0])
    assert [(h.state, h.host) for h in history] == [
        (JobState.WAITING, None),
        (JobState.PENDING, "h1"),
    ]
    # Resent (a lost answer): nothing created, nothing placed again.
    again = await store.insert_and_place("alice", ENV, specs, 11.0, hosts)
    assert again == (ids, [], [])


@pytest_twisted.ensureDeferred
async def test_a_placed_job_not_started_goes_back_to_waiting_at_restart(
    store: Store, tmp_path: Path
) -> None:
    """A crash between the commit and the start order: the job is pending in the database,
    and the next dispatcher puts it back to waiting at start-up, as any placement."""
    d, clock, _ = make_dispatcher(tmp_path, store=store)
    await d.start()
    executor = FakeSession(lambda name, kw: Deferred())  # the start order is never answered
    d.tms_connected("alice", FakeSession(runs_everything))
    d.executor_connected("alice", "h1", executor)
    (job_id,), _ = await d.submit("alice", ENV, [spec(1)])
    assert [o["job_id"] for o in executor.proto.names("RunJob")] == [job_id]
    stored = await store.get_job(job_id)
    assert stored is not None and stored.state is JobState.PENDING and stored.host == "h1"
    d.stopService()  # the crash: nothing more is written

    again, clock2, _ = make_dispatcher(tmp_path, store=store)
    await again.start()
    job = again.jobs[job_id]
    assert job.state is JobState.WAITING and again.jobs.occupied == {}
    clock2.advance(0)  # the writer's turn: the change goes to the database
    deadline = time.monotonic() + 10
    while (
        stored := await store.get_job(job_id)
    ) is not None and stored.state is not JobState.WAITING:
        assert time.monotonic() < deadline, "the placement was not undone in the database"
        await deferLater(reactor, 0.01, lambda: None)
    again.stopService()


def test_no_job_is_placed_at_once_ahead_of_jobs_still_being_stored(tmp_path: Path) -> None:
    """While a submission whose jobs will wait is being stored, nothing is placed at once:
    the pass after it decides, with every waiting job in view."""
    d, clock, store, executor = connected(tmp_path)
    d.tms_connected("root", FakeSession(runs_everything))
    d.executor_connected("root", "h1", FakeSession(runs_everything))
    store.gate = Deferred()
    gate = store.gate
    first = submitted(d, spec(1), spec(2, slots=2))  # the first is placed, the second waits
    assert d.claimed == {"h1": 1} and d.waiting_in_flight == 1
    (other,) = ids_of(submitted(d, spec(3), user="root"))
    assert d.jobs[other].state is JobState.WAITING  # not placed at once
    assert not getattr(store, "placed_at_submission", 0)
    gate.callback(None)
    small, big = ids_of(first)
    assert store.placed_at_submission == 1 and d.waiting_in_flight == 0
    clock.advance(0)
    assert d.jobs[small].state is JobState.RUNNING
    assert d.jobs.occupied["h1"] <= 2
