"""The pure parts of dependencies, holds and priority (tm/core/dependencies.py), and how the
working set keeps blocked and held jobs out of the scheduler's queues."""

from __future__ import annotations

import dataclasses

import pytest

from tests.unit.test_workingset import make_job
from tm.core.dependencies import (
    MAX_DEPENDENCIES,
    DependencyError,
    DependencyIndex,
    find_cycle,
    held_by,
    hold_problem,
    hold_value,
    ids_text,
    parse_ids,
    priority_problem,
    release_problem,
)
from tm.core.model import JobState, is_allowed
from tm.core.scheduler import HostView, SchedulerInput, queue_order, schedule
from tm.core.workingset import WorkingSet

# --- parsing ----------------------------------------------------------------------------


def test_ids_and_ranges_are_parsed_sorted_once() -> None:
    assert parse_ids("9,3, 4,7-8,3") == (3, 4, 7, 8, 9)
    assert parse_ids("") == ()
    assert ids_text([9, 3, 3]) == "3,9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("abc", "not a job id"),
        ("0", "not a job id"),
        ("5-3", "from low to high"),
        (f"1-{MAX_DEPENDENCIES + 1}", "--after-group"),
    ],
)
def test_bad_ids_are_refused_in_one_line(text: str, expected: str) -> None:
    with pytest.raises(DependencyError, match=expected) as e:
        parse_ids(text)
    assert "\n" not in str(e.value)


def test_cycles_are_found_and_chains_are_not_cycles() -> None:
    assert find_cycle({1: [2], 2: [3], 3: [1]}) == [1, 2, 3, 1]
    assert find_cycle({5: [5]}) == [5, 5]
    assert find_cycle({3: [2, 1], 2: [1], 1: []}) is None
    # A long chain: no recursion limit.
    assert find_cycle({i: [i - 1] for i in range(1, 50_000)}) is None


def test_cancelled_is_a_terminal_ending_of_a_waiting_job_only() -> None:
    assert JobState.CANCELLED.terminal
    assert is_allowed(JobState.WAITING, JobState.CANCELLED)
    assert not is_allowed(JobState.RUNNING, JobState.CANCELLED)
    assert not is_allowed(JobState.CANCELLED, JobState.WAITING)


# --- the index --------------------------------------------------------------------------


def test_a_dependant_is_released_when_all_its_dependencies_finished() -> None:
    index = DependencyIndex()
    index.wait(10, {1: False, 2: False})
    assert index.waits_for(10) == [1, 2]
    assert index.ended(1, "alice", "", True, "ended finished") == ([], [])
    assert index.ended(2, "alice", "", True, "ended finished") == ([10], [])
    assert index.unmet == {} and index.dependants == {}


def test_a_failed_dependency_cancels_the_whole_cascade_and_after_any_is_released() -> None:
    index = DependencyIndex()
    index.wait(10, {1: False, 2: False})
    index.wait(11, {10: False})
    index.wait(12, {11: False})
    index.wait(13, {10: True})  # after-any: released by the cancellation
    index.wait(14, {1: True})
    released, cancelled = index.ended(1, "alice", "", False, "ended failed")
    assert sorted(released) == [13, 14]
    assert cancelled == [
        (10, "dependency job 1 ended failed"),
        (11, "dependency job 10 was cancelled"),
        (12, "dependency job 11 was cancelled"),
    ]
    # Nothing is left of them; applying the cancellations changes nothing more.
    assert index.unmet == {} and index.dependants == {}
    for job_id, _ in cancelled:
        assert index.ended(job_id, "alice", "", False, "ended cancelled") == ([], [])
    assert index.ending_of(1) is False


def test_group_members_and_bad_endings() -> None:
    index = DependencyIndex()
    for job_id in (3, 5, 8):
        index.joined(job_id, "alice", "g")
    index.joined(4, "bob", "g")
    assert index.members_below("alice", "g", 8) == [3, 5]
    index.ended(5, "alice", "g", False, "ended killed")
    index.ended(3, "alice", "g", True, "ended finished")
    assert index.members_below("alice", "g", 100) == [8]
    assert index.bad_groups == {("alice", "g"): 5}


# --- holds and priority ---------------------------------------------------------------------


def test_hold_rules() -> None:
    assert hold_value("alice", False) == "user:alice"
    assert held_by(hold_value("root", True)) == "the admin root"
    assert hold_problem("", "alice", "alice", False) is None
    assert "not yours" in (hold_problem("", "alice", "bob", False) or "")
    assert hold_problem("", "root", "bob", True) is None
    assert "already held by the admin" in (
        hold_problem("admin:root", "alice", "alice", False) or ""
    )
    # A user cannot release the admin's hold; the admin can release anyone's.
    assert "only an admin" in (release_problem("admin:root", "alice", "alice", False) or "")
    assert release_problem("user:alice", "alice", "alice", False) is None
    assert release_problem("user:alice", "root", "alice", True) is None
    assert release_problem("", "alice", "alice", False) == "is not held"
    assert "not yours" in (release_problem("user:bob", "alice", "bob", False) or "")


def test_priority_rules() -> None:
    assert priority_problem(10, 3, "alice", "alice", False, 0, 127) is None
    assert "only the admin" in (priority_problem(3, 10, "alice", "alice", False, 0, 127) or "")
    assert priority_problem(3, 10, "root", "alice", True, 0, 127) is None
    assert "not yours" in (priority_problem(3, 1, "alice", "bob", False, 0, 127) or "")
    assert "out of range" in (priority_problem(3, 500, "root", "alice", True, 0, 127) or "")


# --- the working set and the scheduler ------------------------------------------------------

HOST = HostView(name="h", max_slots=8, number_slots=8, occupied=0, active=True)


def order(ws: WorkingSet) -> list[int]:
    return [v.id for v in queue_order(SchedulerInput(hosts=(HOST,), jobs=ws.waiting_views()))]


def placed(ws: WorkingSet) -> list[int]:
    return sorted(j for j, _ in schedule(SchedulerInput(hosts=(HOST,), queues=ws)).placements)


def test_blocked_and_held_jobs_are_not_in_the_queues_and_come_back_in_their_place() -> None:
    index = DependencyIndex()
    ws = WorkingSet()
    ws.blocked_ids = index.unmet
    index.wait(2, {9: False})  # registered before the job is taken in
    jobs = [make_job(i) for i in (1, 2, 3, 4)]
    ws.add_many(jobs)
    assert placed(ws) == [1, 3, 4] and order(ws) == [1, 3, 4]
    assert ws.waiting_count() == 4  # still waiting, and listed as such
    # Hold job 1: out of the queues; released: back first.
    ws.change(jobs[0], lambda j: setattr(j, "spec", dataclasses.replace(j.spec, hold="user:a")))
    assert order(ws) == [3, 4] and ws.view(1) is None
    ws.change(jobs[0], lambda j: setattr(j, "spec", dataclasses.replace(j.spec, hold="")))
    assert order(ws) == [1, 3, 4]
    # Job 9 finished: job 2 is released into its place.
    released, _ = index.ended(9, "alice", "", True, "ended finished")
    for job_id in released:
        ws.change(ws[job_id], lambda j: None)
    assert order(ws) == [1, 2, 3, 4] and placed(ws) == [1, 2, 3, 4]
    # A lower priority moves a job behind the others.
    ws.change(jobs[0], lambda j: setattr(j, "spec", dataclasses.replace(j.spec, priority=-1)))
    assert order(ws) == [2, 3, 4, 1]
    # A blocked job ends (cancelled) without ever having been queued.
    index.wait(4, {99: False})
    ws.change(jobs[3], lambda j: None)
    ws.transition(jobs[3], JobState.CANCELLED, "dependency job 99 ended failed", at=1.0)
    assert 4 not in ws and order(ws) == [2, 3, 1]
