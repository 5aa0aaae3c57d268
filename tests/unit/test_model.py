"""The job state machine: allowed edges, endings, and transitions as records."""

from __future__ import annotations

import sys
from dataclasses import FrozenInstanceError

import pytest

from tm.core.model import (
    ALLOWED_TRANSITIONS,
    JobSpec,
    JobState,
    Transition,
    TransitionError,
    check_transition,
    ending_state,
    job_spec_of,
)


def test_the_normal_life_of_a_job_is_allowed() -> None:
    path = [JobState.WAITING, JobState.PENDING, JobState.RUNNING, JobState.FINISHED]
    for old, new in zip(path, path[1:], strict=False):
        check_transition(old, new)


@pytest.mark.parametrize("end", [JobState.FINISHED, JobState.FAILED, JobState.KILLED])
def test_terminal_states_are_final(end: JobState) -> None:
    assert end.terminal
    for new in JobState:
        with pytest.raises(TransitionError):
            check_transition(end, new)


def test_lost_is_left_only_by_requeue_or_giving_up() -> None:
    assert ALLOWED_TRANSITIONS[JobState.LOST] == {JobState.WAITING, JobState.FAILED}


def test_a_waiting_job_cannot_jump_to_running() -> None:
    with pytest.raises(TransitionError, match="waiting to running"):
        Transition(job_id=1, attempt=1, old=JobState.WAITING, new=JobState.RUNNING)


def test_only_pending_and_running_hold_slots() -> None:
    assert {s for s in JobState if s.holds_slots} == {JobState.PENDING, JobState.RUNNING}


@pytest.mark.parametrize(
    ("exit_code", "signal", "killed", "state"),
    [
        (0, None, False, JobState.FINISHED),
        (3, None, False, JobState.FAILED),
        (None, 9, False, JobState.FAILED),
        (None, 15, True, JobState.KILLED),
        (0, None, True, JobState.KILLED),
    ],
)
def test_ending_state(
    exit_code: int | None, signal: int | None, killed: bool, state: JobState
) -> None:
    assert ending_state(exit_code, signal, killed) is state


def test_a_spec_made_in_one_go_equals_the_generated_init_and_takes_no_more_memory() -> None:
    made = JobSpec(command="true", uuid="u-1", slots=2, excluded_hosts=("h",))
    values = {name: getattr(made, name) for name in JobSpec.__dataclass_fields__}
    spec = job_spec_of(dict(reversed(values.items())))  # any order of the given dict
    assert spec == made
    with pytest.raises(FrozenInstanceError):
        spec.slots = 3  # type: ignore[misc]
    # Its attributes share the class's table of keys, as those __init__ sets: a long queue
    # holds one spec per waiting job.
    assert sys.getsizeof(spec.__dict__) == sys.getsizeof(made.__dict__)
    with pytest.raises(TypeError, match="fields"):
        job_spec_of({"command": "true"})
