"""Job arrays (tm/core/arrays.py): the ``--array`` spec, hRunJob's jobs of an array, the signed
index, and the cap as the pure scheduler and the working set keep it."""

from __future__ import annotations

from typing import Any

import pytest

from tm import jobsign
from tm.cli.errors import CLIError
from tm.cli.hrunjob import prepare
from tm.core.arrays import (
    MAX_INDICES,
    ArrayCaps,
    ArraySpecError,
    parse_array_spec,
    split_queues,
)
from tm.core.model import Job, JobSpec, JobState
from tm.core.scheduler import HostView, JobView, SchedulerInput, schedule
from tm.core.workingset import WorkingSet
from tm.protocol import limits

# --- the spec ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "indices", "cap"),
    [
        ("0-9", list(range(10)), None),
        ("0-999%50", list(range(1000)), 50),
        ("0-10:5", [0, 5, 10], None),
        ("1,3,5-9", [1, 3, 5, 6, 7, 8, 9], None),
        ("7", [7], None),
        (" 2-4 , 0 %1", [0, 2, 3, 4], 1),
        (f"0-{MAX_INDICES - 1}", None, None),
    ],
)
def test_a_spec_gives_its_indices_in_order(text: str, indices: list[int] | None, cap: int | None):
    spec = parse_array_spec(text)
    assert spec.cap == cap
    if indices is not None:
        assert list(spec.indices) == indices
    else:
        assert len(spec.indices) == MAX_INDICES


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("5-1", "goes down: write the smaller index first (1-5)"),
        ("0-10:0", "step of 0-10:0 must be at least 1"),
        ("a", "'a' is not an index or a range"),
        ("0-9%0", "cap after % must be at least 1"),
        ("0-9%x", "cap after % must be a whole number"),
        ("0-9%", "cap after % must be a whole number"),
        (f"0-{MAX_INDICES}", f"more than {MAX_INDICES} indices"),
        ("0-99999999999999999999", "is larger than"),
        ("1,2,2", "index 2 is given twice"),
        ("", "no indices given"),
        ("1,,2", "'' is not an index"),
        ("-3", "is not an index"),
    ],
)
def test_a_bad_spec_is_refused_in_one_line(text: str, words: str) -> None:
    with pytest.raises(ArraySpecError) as e:
        parse_array_spec(text)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_huge_range_is_refused_before_its_indices_are_made() -> None:
    with pytest.raises(ArraySpecError, match="more than"):
        parse_array_spec("0-2000000000")  # would take gigabytes if made first


# --- hRunJob's jobs of an array -------------------------------------------------------------------


def test_hrunjob_makes_one_job_per_index_in_one_group() -> None:
    args, jobs = prepare(["--array", "3-5%2", "-o", "out.{idx}", "echo {idx} ${HOME}"])
    specs = [s for _, s in jobs]
    assert [s.command for s in specs] == [f"echo {i} ${{HOME}}" for i in (3, 4, 5)]
    assert [s.stdout for s in specs] == ["out.3", "out.4", "out.5"]
    assert [s.array_index for s in specs] == [3, 4, 5]
    assert {s.array_cap for s in specs} == {2}
    assert len({s.array_id for s in specs}) == 1 and len(specs[0].array_id) == 36
    assert len({s.uuid for s in specs}) == 3
    assert {s.group for s in specs} == {args.group} and args.group.startswith("array-")
    assert all(limits.spec_problem(s) is None for s in specs)


def test_hrunjob_keeps_the_group_given() -> None:
    _, jobs = prepare(["--array", "0,1", "-g", "sweep", "true"])
    assert {s.group for _, s in jobs} == {"sweep"}
    assert {s.array_cap for _, s in jobs} == {None}


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--array", "5-1", "true"], "argument --array: '5-1': the range 5-1 goes down"),
        (["--array", "0-10:0", "true"], "the step of 0-10:0 must be at least 1"),
        (["--array", "a", "true"], "'a' is not an index or a range"),
        (["--array", "0-3%0", "true"], "the cap after % must be at least 1"),
        (["--array", "0-1000000", "true"], "more than 1000000 indices"),
        (["--array", "0-3", "-f", "jobs.txt", "true"], "--array and -f cannot be combined"),
        (["--array", "0-3"], "no command given"),
    ],
)
def test_hrunjob_refuses_a_bad_array_in_one_line(argv: list[str], words: str) -> None:
    with pytest.raises(CLIError) as e:
        prepare(argv)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_the_dispatcher_refuses_broken_array_fields() -> None:
    ok = JobSpec(uuid="u", command="true", array_id="a", array_index=0, array_cap=2)
    assert limits.spec_problem(ok) is None
    assert "must have an index" in (
        limits.spec_problem(JobSpec(uuid="u", command="x", array_cap=2)) or ""
    )
    bad_index = JobSpec(uuid="u", command="x", array_id="a", array_index=-1)
    assert "array index must be" in (limits.spec_problem(bad_index) or "")
    bad_cap = JobSpec(uuid="u", command="x", array_id="a", array_index=1, array_cap=0)
    assert "cap must be" in (limits.spec_problem(bad_cap) or "")
    no_array = JobSpec(uuid="u", command="x", array_index=1)
    assert "must name its array" in (limits.spec_problem(no_array) or "")


# --- the signed index ----------------------------------------------------------------------------

KEY = jobsign.JobKey(b"k" * 32)
JOB: dict[str, Any] = {
    "uuid": "00000000-0000-0000-0000-000000000001",
    "user": "alice",
    "command": "echo 4",
    "shell": "/bin/sh",
    "cwd": "/home/alice",
    "umask": 0o022,
    "slots": 1,
    "stdout": "",
    "stderr": "",
    "logfile": "",
}


def _check(order: dict, signature: str, sealed: str) -> str | None:
    return KEY.check(order, signature, 100.0, sealed, user="alice", now=100.0, max_age=86400.0)


def test_the_array_index_is_signed() -> None:
    sealed = KEY.seal("alice", {})
    signer = KEY.submission("alice", JOB["cwd"], JOB["umask"], sealed, 100.0)
    signature = signer.sign(JOB | {"array_index": 4})
    assert _check(JOB | {"array_index": 4}, signature, sealed) is None
    assert "not the one you signed" in (_check(JOB | {"array_index": 5}, signature, sealed) or "")
    assert "not the one you signed" in (
        _check(JOB | {"array_index": None}, signature, sealed) or ""
    )


def test_a_job_of_no_array_keeps_the_signature_it_had_before_arrays() -> None:
    sealed = KEY.seal("alice", {})
    signer = KEY.submission("alice", JOB["cwd"], JOB["umask"], sealed, 100.0)
    before = signer.sign(JOB)  # a row without the field: signed before migration 0006
    assert signer.sign(JOB | {"array_index": None}) == before
    assert _check(JOB | {"array_index": None}, before, sealed) is None


# --- the cap in the scheduler, on plain data ----------------------------------------------------


def view(job_id: int, user: str = "alice", slots: int = 1) -> JobView:
    return JobView(id=job_id, user=user, slots=slots, priority=0)


def capped(ids: range, cap: int, array: str = "A", user: str = "alice") -> dict:
    return {i: ((user, array), cap) for i in ids}


def pass_of(jobs: list[JobView], caps: ArrayCaps, slots: int = 20) -> list[int]:
    inp = SchedulerInput(
        hosts=(HostView(name="h", max_slots=slots, number_slots=slots, occupied=0, active=True),),
        queues=split_queues(jobs, caps),
        arrays=caps,
    )
    return sorted(j for j, _ in schedule(inp).placements)


def test_a_capped_array_places_up_to_its_cap_and_the_user_s_other_jobs_go_on() -> None:
    jobs = [view(i) for i in range(1, 11)]  # 1..8: the array; 9, 10: the same user's others
    caps = ArrayCaps(members=capped(range(1, 9), 2))
    assert pass_of(jobs, caps) == [1, 2, 9, 10]


def test_the_running_jobs_of_an_array_count_against_its_cap() -> None:
    jobs = [view(i) for i in range(3, 11)]
    assert pass_of(jobs, ArrayCaps(capped(range(3, 9), 2), {("alice", "A"): 1})) == [3, 9, 10]
    assert pass_of(jobs, ArrayCaps(capped(range(3, 9), 2), {("alice", "A"): 2})) == [9, 10]


def test_two_arrays_have_their_own_caps() -> None:
    jobs = [view(i) for i in range(1, 9)] + [view(i, "bob") for i in range(9, 13)]
    members = capped(range(1, 9), 3) | capped(range(9, 13), 1, "B", "bob")
    assert pass_of(jobs, ArrayCaps(members)) == [1, 2, 3, 9]


def test_a_capped_array_gets_no_reservation_and_blocks_nobody() -> None:
    # The host is full but for one slot: a 2-slot job behind a capped array still gets the
    # reservation, not the capped array's next job.
    jobs = [view(1), view(2), view(3, slots=2)]
    caps = ArrayCaps(capped(range(1, 3), 1), {("alice", "A"): 1})
    host = HostView(name="h", max_slots=2, number_slots=2, occupied=1, active=True)
    d = schedule(SchedulerInput(hosts=(host,), queues=split_queues(jobs, caps), arrays=caps))
    assert d.placements == [] and d.reservations == {3: "h"}


# --- the working set keeps the counts -----------------------------------------------------------


def make(job_id: int, cap: int | None = 2, array: str = "A", index: int = 0) -> Job:
    spec = JobSpec(
        uuid=f"u-{job_id}",
        command="true",
        array_id=array if cap is not None else "",
        array_index=index if cap is not None else None,
        array_cap=cap,
    )
    return Job(
        id=job_id,
        uuid=spec.uuid,
        user="alice",
        spec=spec,
        state=JobState.WAITING,
        attempt=1,
        submitted_at=0.0,
    )


def test_the_working_set_keeps_each_array_s_count_at_each_change() -> None:
    ws = WorkingSet()
    ws.add_many([make(i, index=i) for i in range(1, 6)] + [make(6, cap=None)])
    host = HostView(name="h", max_slots=10, number_slots=10, occupied=0, active=True)

    def placed() -> list[int]:
        inp = SchedulerInput(hosts=(host,), queues=ws, arrays=ws.arrays.caps())
        return [j for j, _ in schedule(inp).placements]

    assert placed() == [1, 2, 6]
    ws.transition(ws[1], JobState.PENDING, "", 1.0, host="h")
    assert ws.arrays.active == {("alice", "A"): 1}
    assert placed() == [2, 6]
    ws.transition(ws[2], JobState.PENDING, "", 1.0, host="h")
    ws.transition(ws[2], JobState.RUNNING, "", 1.0, host="h", pid=5)
    assert ws.arrays.active == {("alice", "A"): 2}
    assert placed() == [6]
    assert "cap (%2)" in ws.arrays.at_cap(ws[3])
    ws.transition(ws[2], JobState.FINISHED, "", 2.0, exit_code=0)
    assert ws.arrays.active == {("alice", "A"): 1}
    assert placed() == [3, 6] and ws.arrays.at_cap(ws[3]) == ""
    ws.transition(ws[1], JobState.WAITING, "requeued", 3.0, clear_host=True)
    assert ws.arrays.active == {} and placed() == [1, 3, 6]


def test_a_working_set_rebuilt_from_its_jobs_has_the_same_counts() -> None:
    ws = WorkingSet()
    jobs = [make(i, index=i) for i in range(1, 5)]
    ws.add_many(jobs)
    ws.transition(ws[1], JobState.PENDING, "", 1.0, host="h")
    again = WorkingSet(list(ws.values()))
    assert again.arrays.active == ws.arrays.active
    assert again.arrays.members == ws.arrays.members
