"""Waiting for a job's end (WaitJob, ``hRunJob --wait``): answered once the end is committed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, fail

from tests.unit.dispatcher_fakes import (
    FakeSession,
    MemoryStore,
    add_job,
    make_dispatcher,
    runs_everything,
)
from tm.core.model import JobState, Transition


class GatedStore(MemoryStore):
    """A store whose commits the test lets through one batch at a time, or fails."""

    def __init__(self) -> None:
        super().__init__()
        self.gated = False
        self.held: list[tuple[list[Transition], float, Deferred]] = []

    def apply_transitions(self, transitions: list[Transition], now: float) -> Deferred:
        if not self.gated:
            return super().apply_transitions(transitions, now)
        d: Deferred = Deferred()
        self.held.append((transitions, now, d))
        return d

    def commit_held(self) -> None:
        held, self.held = self.held, []
        for transitions, now, d in held:
            super().apply_transitions(transitions, now).chainDeferred(d)

    def fail_held(self, error: Exception) -> None:
        held, self.held = self.held, []
        for _, _, d in held:
            fail(error).chainDeferred(d)


def running(tmp_path: Path) -> tuple[Any, Any, GatedStore]:
    d, clock, store = make_dispatcher(tmp_path, store=GatedStore())
    d.executor_connected("alice", "h1", FakeSession(runs_everything))
    add_job(d, store, 1)
    d.request_pass()
    clock.advance(0)
    clock.advance(0)
    assert d.jobs[1].state is JobState.RUNNING
    return d, clock, store


def test_a_wait_is_answered_once_the_end_is_committed_not_before(tmp_path: Path) -> None:
    d, clock, store = running(tmp_path)
    waited = ensureDeferred(d.wait_job(1, 60.0))
    store.gated = True
    d.job_finished("alice", "h1", 1, 1, 3, None, False, "")
    clock.advance(0)  # the group commit is under way
    assert store.held and not waited.called
    assert store.jobs[1].state is JobState.RUNNING  # what a listing would read now
    store.commit_held()
    assert waited.called
    assert waited.result.state is JobState.FAILED and waited.result.exit_code == 3
    assert store.jobs[1].state is JobState.FAILED


def test_a_wait_outlives_an_end_that_could_not_be_written_and_hears_the_next(
    tmp_path: Path,
) -> None:
    d, clock, store = running(tmp_path)
    waited = ensureDeferred(d.wait_job(1, 600.0))
    store.gated = True
    d.job_finished("alice", "h1", 1, 1, 0, None, False, "")
    for _ in range(30):  # the writer's tries, each failing on its own
        clock.advance(1)
        store.fail_held(RuntimeError("CHECK constraint failed"))
    assert not waited.called  # the end is not recorded: the job was re-read, running
    assert d.jobs[1].state is JobState.RUNNING
    store.gated = False
    d.job_finished("alice", "h1", 1, 1, 0, None, False, "")  # the executor reports again
    clock.advance(0)
    assert waited.called and waited.result.state is JobState.FINISHED
    assert store.jobs[1].state is JobState.FINISHED


def test_a_wait_that_times_out_first_is_left_alone_by_the_commit(tmp_path: Path) -> None:
    d, clock, store = running(tmp_path)
    waited = ensureDeferred(d.wait_job(1, 5.0))
    store.gated = True
    d.job_finished("alice", "h1", 1, 1, 0, None, False, "")
    clock.advance(0)
    clock.advance(5)  # the wait's time is up before the commit: the database's state
    result: Any = waited.result if waited.called else None
    assert result is not None and result.state is JobState.RUNNING
    store.commit_held()  # no second answer to a wait already answered
    assert store.jobs[1].state is JobState.FINISHED
