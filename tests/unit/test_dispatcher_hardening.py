"""Issue 8, the dispatcher's half: retries back off and are capped, user regexes run in
linear time, answers and submissions stay within their limits, an end is recorded at its
own time and acknowledged only once committed, and a killed attempt keeps its slots until
its processes are gone. All on a task.Clock with an in-memory store and fake executors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure

from tests.unit.dispatcher_fakes import (
    FakeSession,
    add_job,
    client_session,
    make_dispatcher,
    runs_everything,
)
from tm.core.model import Host, JobState
from tm.core.patterns import MAX_PATTERN_BYTES, compile_user_pattern
from tm.db.errors import StoreUnavailable
from tm.dispatcher import service
from tm.protocol import commands, records


def result_of(d: Any) -> Any:
    """The result of a Deferred (or coroutine) that has fired; raise its failure."""
    if not isinstance(d, Deferred):
        d = ensureDeferred(d)
    out: list = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def encodes(command: type[amp.Command], answer: dict) -> None:
    """Serialize ``answer`` as ``command``'s response: raises amp.TooLong if a value is over
    AMP's 64 KiB."""
    box = amp._objectsToStrings(answer, command.response, amp.AmpBox(), None)
    box.serialize()


#: An environment as the user's TMS seals it (opaque to the dispatcher).
SEALED = "1.0123456789abcdef.c2VhbGVk"


def spec_row(command: str = "true", **kw: Any) -> dict:
    row = {
        "uuid": "00000000-0000-0000-0000-000000000001",
        "command": command,
        "shell": "/bin/sh",
        "slots": 1,
        "priority": 0,
        "group": "",
        "info": "",
        "stdout": "",
        "stderr": "",
        "logfile": "",
        "excluded_hosts": [],
        "estimated_time": None,
        "estimated_memory": None,
        # As the user's TMS signs it (the dispatcher only sees that it is signed).
        "signature": "1.0123456789abcdef.sig",
        "signed_at": 100.0,
        "retries": None,
        "retry_on_exit": "",
        "on_end": "",
    }
    row.update(kw)
    return row


# --- 1: a start order that never gets through ---------------------------------------------


def drops_every_start(name: str, kw: dict) -> dict:
    if name == "RunJob":
        raise ConnectionLost("the executor's link dropped")
    return runs_everything(name, kw)


def test_a_job_whose_start_is_never_delivered_is_placed_a_bounded_number_of_times(
    tmp_path: Path,
) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    runs = 0

    def answer(name: str, kw: dict) -> dict:
        nonlocal runs
        if name == "RunJob":
            runs += 1
            if runs > 50:  # without a cap the loop never ends: stop it, and fail below
                return runs_everything(name, kw)
        return drops_every_start(name, kw)

    executor = FakeSession(answer)
    d.executor_connected("alice", "h1", executor)
    job = add_job(d, store, 1)
    d.request_pass()
    for _ in range(600):  # ten simulated minutes
        clock.advance(1)
    assert runs == service.MAX_START_TRIES
    assert job.state is JobState.FAILED and store.jobs[1].state is JobState.FAILED
    assert "5 times in a row" in job.reason and "link dropped" in job.reason
    # The pauses between tries grew: 2, 4, 8, 16 s.
    placed_at = [at for (_, _, state, at) in store.history if state == "pending"]
    gaps = [b - a for a, b in zip(placed_at, placed_at[1:], strict=False)]
    assert len(placed_at) == service.MAX_START_TRIES
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False))
    assert d.passes < 100  # no pass storm either


def test_a_start_that_gets_through_resets_the_count(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    fails = {"left": service.MAX_START_TRIES - 1}

    def answer(name: str, kw: dict) -> dict:
        if name == "RunJob" and fails["left"] > 0:
            fails["left"] -= 1
            raise ConnectionLost("dropped")
        return runs_everything(name, kw)

    d.executor_connected("alice", "h1", FakeSession(answer))
    job = add_job(d, store, 1)
    d.request_pass()
    clock.advance(0)
    for _ in range(120):
        clock.advance(1)
    assert job.state is JobState.RUNNING and 1 not in d.start_failures


def test_the_executor_start_back_off_grows_and_is_capped(tmp_path: Path) -> None:
    d, clock, _ = make_dispatcher(tmp_path)
    pauses = []
    for _ in range(8):
        d.executor_start_failed("alice", "h1", "ssh: connection refused")
        pauses.append(d.backoff[("alice", "h1")] - clock.seconds())
    assert pauses[:3] == [
        service.EXECUTOR_BACKOFF,
        2 * service.EXECUTOR_BACKOFF,
        4 * service.EXECUTOR_BACKOFF,
    ]
    assert max(pauses) == service.MAX_EXECUTOR_BACKOFF == pauses[-1]
    d.executor_connected("alice", "h1", FakeSession(runs_everything))
    assert ("alice", "h1") not in d.backoff_failures  # a start that worked resets it
    clock.advance(10_000)


# --- 2: killmatchingjobs in linear time ----------------------------------------------------


def test_a_catastrophic_pattern_is_matched_by_re2_and_the_kill_happens(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    victim = add_job(d, store, 1, command="a" * 30)
    bystander = add_job(d, store, 2, command="a" * 5000 + "!")  # backtracking: 2^5000 steps
    session = client_session(d)
    answer = result_of(session.kill_jobs(job_ids=[], all=False, regex="^(a+)+$"))
    assert answer["killed"] == [1]
    assert victim.state is JobState.KILLED and bystander.state is JobState.WAITING
    assert type(compile_user_pattern("^(a+)+$")).__module__.startswith("re2")
    clock.advance(1)


@pytest.mark.parametrize(
    "pattern, words",
    [
        (r"(a)\1", "backreferences are not supported"),
        (r"foo(?=bar)", "lookarounds"),
        ("[", "missing ]"),
        ("a" * (MAX_PATTERN_BYTES + 1), f"limit of {MAX_PATTERN_BYTES}"),
    ],
)
def test_a_pattern_re2_refuses_gets_one_line(tmp_path: Path, pattern: str, words: str) -> None:
    d, _, store = make_dispatcher(tmp_path)
    add_job(d, store, 1)
    with pytest.raises(commands.InvalidRequest) as e:
        result_of(client_session(d).kill_jobs(job_ids=[], all=False, regex=pattern))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_kill_of_many_jobs_answers_within_one_value(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    for i in range(1, 20_001):
        add_job(d, store, 1_000_000 + i)
    answer = result_of(client_session(d).kill_jobs(job_ids=[], all=True, regex=None))
    encodes(commands.KillJobs, answer)
    assert len(answer["killed"]) + answer["more"] == 20_000 and not d.jobs
    clock.advance(1)


# --- 11: killjob of a job the working set no longer has -------------------------------------


def test_killjob_of_a_running_job_missing_from_the_working_set_answers_one_line(
    tmp_path: Path,
) -> None:
    d, _, store = make_dispatcher(tmp_path)
    job = add_job(d, store, 7)
    store.jobs[7].state = JobState.RUNNING
    del d.jobs[job.id]
    with pytest.raises(commands.InvalidRequest) as e:
        result_of(client_session(d).kill_jobs(job_ids=[7], all=False, regex=None))
    assert "job 7 is ending" in str(e.value)
    # In a list it is skipped, the others are killed.
    add_job(d, store, 8)
    answer = result_of(client_session(d).kill_jobs(job_ids=[7, 8], all=False, regex=None))
    assert answer["killed"] == [8]


# --- 5: submission limits and answers that fit ------------------------------------------------


@pytest.mark.parametrize(
    "row, words",
    [
        (spec_row("x" * 100_000), "more than the limit of 16000"),
        (spec_row(slots=10**25), "between 1 and 100000 slots"),
        (spec_row(slots=0), "between 1 and 100000 slots"),
        (spec_row(priority=1000), "priority 1000 is out of range"),
        (spec_row(group="g" * 300), "group name is longer than 255"),
        (spec_row(info="i" * 5000), "info text is longer than 4000"),
        (spec_row(stdout="/" + "o" * 5000), "-o (stdout) path is longer"),
        (spec_row(logfile="a\0b"), "NUL byte"),
        (spec_row(shell="/" * 300), "shell's path is longer"),
        (spec_row(excluded_hosts=["h1"] * 1001), "more than 1000 excluded hosts"),
        (spec_row(estimated_time=float("inf")), "estimated time must be between 0 and"),
        (spec_row(estimated_memory=-1.0), "estimated memory must be between 0 and"),
        (spec_row(uuid="u" * 40), "uuid must have 1 to 36"),
    ],
)
def test_a_submission_over_a_limit_is_refused_in_one_line(
    tmp_path: Path, row: dict, words: str
) -> None:
    d, _, _ = make_dispatcher(tmp_path)
    with pytest.raises(commands.InvalidRequest) as e:
        result_of(
            client_session(d).submit_jobs(
                cwd="/tmp", umask=0o22, env={}, jobs=[row], sealed_env=SEALED
            )
        )
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_too_large_environment_is_refused_in_one_line(tmp_path: Path) -> None:
    d, _, _ = make_dispatcher(tmp_path)
    with pytest.raises(commands.InvalidRequest) as e:
        result_of(
            client_session(d).submit_jobs(
                cwd="/tmp", umask=0o22, env={"BIG": "x" * 50_000}, jobs=[spec_row()]
            )
        )
    assert "environment is" in str(e.value) and "unset large variables" in str(e.value)


def test_lagroups_with_huge_group_names_fits_one_answer(tmp_path: Path) -> None:
    d, _, store = make_dispatcher(tmp_path)
    add_job(d, store, 1, group="a" * 40_000)
    add_job(d, store, 2, group="a" * 39_999 + "b")
    answer = result_of(client_session(d).group_summary(scope="mine", group=None))
    encodes(commands.GroupSummary, answer)
    assert len(answer["groups"]) == 2  # cut, and still told apart


def test_lagroups_with_too_many_groups_is_refused_in_one_line(tmp_path: Path) -> None:
    d, _, store = make_dispatcher(tmp_path)
    for i in range(1, 2_001):
        add_job(d, store, i, group=f"group-{i:04d}-" + "x" * 30)
    with pytest.raises(commands.InvalidRequest) as e:
        result_of(client_session(d).group_summary(scope="mine", group=None))
    assert "lagroups:GROUP" in str(e.value)


def test_the_detail_of_a_job_stored_before_the_limits_fits_one_answer(tmp_path: Path) -> None:
    d, _, store = make_dispatcher(tmp_path)
    job = add_job(d, store, 1, command="c" * 100_000, info="i" * 30_000)
    job.reason = "r" * 30_000
    answer = result_of(client_session(d).get_job(job_id=1))
    encodes(commands.GetJob, answer)
    assert answer["job"][0]["command"].startswith("ccc") and answer["job"][0]["command"].endswith(
        "..."
    )


def test_lsthreads_and_lsusers_fit_one_answer(tmp_path: Path) -> None:
    hosts = [Host(name=f"host-{i:05d}-" + "n" * 200) for i in range(400)]
    d, _, _ = make_dispatcher(tmp_path, hosts=hosts)
    for h in hosts:
        d.executors[("alice", h.name)] = FakeSession(runs_everything)
    s = client_session(d)
    answer = s.list_sessions()
    encodes(commands.ListSessions, answer)
    assert answer["lines"][-1].startswith("scheduling passes")
    assert answer["lines"][-1].endswith("start orders: 0 in 0 messages")
    assert any(line.startswith("... and") for line in answer["lines"])
    users = s.list_users()
    encodes(commands.ListUsers, users)
    executors = s.list_executors()
    encodes(commands.ListExecutors, executors)


def test_the_limits_are_documented_in_the_readme() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for value in (records.MAX_COMMAND_BYTES, records.MAX_SLOTS, records.MAX_ENVIRONMENT_BYTES):
        assert f"{value:_}".replace("_", " ") in readme


# --- 6 and 9: ends at their own time, acknowledged once committed -----------------------------


def running_job(d: Any, store: Any, clock: Any, job_id: int = 1) -> Any:
    executor = FakeSession(runs_everything)
    d.executor_connected("alice", "h1", executor)
    job = add_job(d, store, job_id)
    d.request_pass()
    clock.advance(0)
    clock.advance(0)
    assert job.state is JobState.RUNNING
    return job


def test_an_end_is_recorded_at_the_executors_end_time_clamped(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1", number_slots=4, max_slots=4)]
    )
    clock.advance(100)
    first = running_job(d, store, clock, 1)
    second = running_job(d, store, clock, 2)
    third = running_job(d, store, clock, 3)
    clock.advance(1000)  # t = 1100: the ends are reported late
    acks = [
        d.job_finished("alice", "h1", 1, 1, 0, None, False, "", ended_at=600.0),
        d.job_finished("alice", "h1", 2, 1, 0, None, False, "", ended_at=5.0),
        d.job_finished("alice", "h1", 3, 1, 0, None, False, "", ended_at=99_999.0),
    ]
    clock.advance(0)
    for ack in acks:
        result_of(ack)
    assert store.jobs[1].ended_at == 600.0 and first.ended_at == 600.0
    assert store.jobs[2].ended_at == 100.0 == second.started_at  # not before its start
    assert store.jobs[3].ended_at == 1100.0 == third.ended_at  # not in the future
    assert (1, 1, "finished", 600.0) in store.history


@pytest_twisted.ensureDeferred
async def test_real_sqlite_records_the_end_time_and_keeps_an_unwritten_end(tmp_path: Path) -> None:
    """The same on the real store (SQLite): the ended_at column and the history entry take
    the executor's time; a write that fails (here a trigger: not "unavailable") is not
    acknowledged, and the end is written when reported again."""
    from tm.db.store import Store

    path = tmp_path / "tm.sqlite"
    store = Store.from_url(f"sqlite:///{path}", reactor_())
    d, clock, _ = make_dispatcher(tmp_path, store=store)
    try:
        await _sqlite_scenario(d, clock, store, path)
    finally:
        store.close()


async def _sqlite_scenario(d: Any, clock: Any, store: Any, path: Path) -> None:
    import sqlite3

    from tm.core.model import JobEnvironment, JobSpec

    await store.upgrade()
    clock.advance(100)
    specs = [
        JobSpec(uuid=f"00000000-0000-0000-0000-00000000000{i}", command="true") for i in (1, 2)
    ]
    ids = await store.submit_jobs("alice", JobEnvironment(cwd="/tmp"), specs, 100.0)
    executor = FakeSession(runs_everything)
    d.executor_connected("alice", "h1", executor)
    for job in await store.get_jobs(ids):
        d.jobs[job.id] = job
    d.request_pass()
    for _ in range(50):
        clock.advance(0)
        await deferLater(reactor_(), 0.01, lambda: None)
        if all(d.jobs[i].state is JobState.RUNNING for i in ids):
            break
    assert all(d.jobs[i].state is JobState.RUNNING for i in ids)
    clock.advance(1000)  # t = 1100: the ends are reported late
    first, second = ids

    async def report(job_id: int, ended_at: float) -> Any:
        ack = d.job_finished("alice", "h1", job_id, 1, 0, None, False, "", ended_at=ended_at)
        for _ in range(200):
            clock.advance(1)
            await deferLater(reactor_(), 0.01, lambda: None)
            if ack.called:
                break
        return ack

    ack = await report(first, 600.0)
    assert ack.called
    await ack
    job = await store.get_job(first)
    assert job.state is JobState.FINISHED and job.ended_at == 600.0
    assert (await store.get_history(first))[-1].at == 600.0
    # A write that fails for a reason other than unavailability: no acknowledgement.
    con = sqlite3.connect(path)
    con.execute(
        "CREATE TRIGGER no_end BEFORE UPDATE ON jobs WHEN NEW.state = 'finished' "
        "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
    )
    con.commit()
    ack = await report(second, 700.0)
    assert ack.called
    with pytest.raises(commands.DatabaseUnavailable):
        await ack
    assert (await store.get_job(second)).state is JobState.RUNNING
    con.execute("DROP TRIGGER no_end")
    con.commit()
    con.close()
    for _ in range(200):  # the job is re-read: back in the working set
        if d.jobs.get(second) is not None and d.jobs[second].state is JobState.RUNNING:
            break
        clock.advance(1)
        await deferLater(reactor_(), 0.01, lambda: None)
    ack = await report(second, 700.0)
    await ack
    job = await store.get_job(second)
    assert job.state is JobState.FINISHED and job.ended_at == 700.0


def reactor_() -> Any:
    from twisted.internet import reactor

    return reactor


def test_an_end_whose_write_fails_is_not_acknowledged_and_is_written_when_reported_again(
    tmp_path: Path,
) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    job = running_job(d, store, clock)
    store.apply_error = RuntimeError("CHECK constraint failed")  # not "unavailable"
    ack = d.job_finished("alice", "h1", 1, 1, 0, None, False, "")
    for _ in range(30):
        clock.advance(1)
    with pytest.raises(commands.DatabaseUnavailable):
        result_of(ack)  # the executor keeps the end
    # The job was re-read: running again in the working set, its slots counted.
    assert d.jobs[1] is job and job.state is JobState.RUNNING and d.occupied()["h1"] == 1
    store.apply_error = None
    again = d.job_finished("alice", "h1", 1, 1, 0, None, False, "")
    clock.advance(0)
    assert result_of(again) is None
    assert store.jobs[1].state is JobState.FINISHED and 1 not in d.jobs


def test_an_end_is_kept_while_the_database_is_unavailable(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    running_job(d, store, clock)
    store.apply_error = StoreUnavailable("database or disk is full")
    ack = d.job_finished("alice", "h1", 1, 1, 0, None, False, "")
    assert ack is not None
    fired: list = []
    ack.addBoth(fired.append)
    for _ in range(60):
        clock.advance(1)
    assert fired == [] and store.jobs[1].state is JobState.RUNNING  # kept, not acknowledged
    store.apply_error = None
    clock.advance(10)
    assert fired == [None] and store.jobs[1].state is JobState.FINISHED


def test_a_placement_whose_write_fails_does_not_stay_pending(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    d.executor_connected("alice", "h1", FakeSession(runs_everything))
    job = add_job(d, store, 1)
    store.apply_error = RuntimeError("no such column: hots")
    d.request_pass()
    for _ in range(600):
        clock.advance(1)
    # Each try re-reads the job (waiting), backs off, and gives up after the cap.
    assert job.state is not JobState.PENDING and d.occupied()["h1"] == 0
    assert store.apply_calls < 100


# --- 10: an attempt killed by an admin repair keeps its slots until it is gone ----------------


def test_setallrjobsaswaiting_requeues_only_once_the_old_tree_is_gone(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1", number_slots=1, max_slots=1)]
    )
    job = running_job(d, store, clock)
    executor = d.executors[("alice", "h1")]
    other = add_job(d, store, 2)
    assert d.set_all(JobState.RUNNING, JobState.WAITING) == 1
    for _ in range(20):
        clock.advance(1)  # the old tree lives on (it ignores TERM)
    assert executor.proto.names("SignalJob") == [{"job_id": 1, "attempt": 1, "action": "kill"}]
    assert job.state is JobState.RUNNING and d.occupied()["h1"] == 1
    assert [kw["job_id"] for kw in executor.proto.names("RunJob")] == [1]  # nothing else
    assert other.state is JobState.WAITING
    # The executor reports the old attempt's end: now it is requeued.
    ack = d.job_finished("alice", "h1", 1, 1, None, 9, True, "killed")
    clock.advance(0)
    result_of(ack)
    assert store.jobs[1].attempt == 2 and store.jobs[1].state in (
        JobState.WAITING,
        JobState.PENDING,
        JobState.RUNNING,
    )
    clock.advance(0)
    runs = [(kw["job_id"], kw["attempt"]) for kw in executor.proto.names("RunJob")]
    assert len(runs) == 2 and d.occupied()["h1"] == 1  # one of them runs next, never both


def test_rmjobs_removes_a_running_job_once_its_tree_is_gone(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    running_job(d, store, clock)
    admin = client_session(d, "root")
    answer = result_of(admin.admin_jobs(action="rmjobs", user="alice"))
    assert answer["message"] == "removed 1 job(s) of user alice."
    assert 1 in store.jobs and d.occupied()["h1"] == 1
    ack = d.job_finished("alice", "h1", 1, 1, None, 9, True, "killed")
    clock.advance(0)
    result_of(ack)
    assert 1 not in store.jobs and 1 in store.deleted and d.occupied()["h1"] == 0


def test_a_killed_attempt_whose_executor_no_longer_lists_it_is_requeued(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    job = running_job(d, store, clock)
    clock.advance(10)
    d.set_all(JobState.RUNNING, JobState.WAITING)
    executor = d.executors[("alice", "h1")]
    d.reconcile("alice", "h1", executor, {(1, 1)})
    assert job.state is JobState.RUNNING
    d.reconcile("alice", "h1", executor, set())
    assert job.attempt == 2 and job.state is not JobState.LOST
    clock.advance(1)


def test_rmjobs_of_a_placed_job_no_executor_took_ends_it_at_once(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path)
    tms = FakeSession(runs_everything)
    d.tms_connected("alice", tms)
    job = add_job(d, store, 1)
    d.request_pass()
    clock.advance(0)
    clock.advance(0)
    assert job.state is JobState.PENDING and tms.proto.names("StartExecutor")
    result_of(client_session(d, "root").admin_jobs(action="rmjobs", user="alice"))
    clock.advance(0)
    assert 1 in store.deleted and d.occupied()["h1"] == 0
    executor = FakeSession(runs_everything)
    d.executor_connected("alice", "h1", executor)  # late: it must not start the removed job
    clock.advance(0)
    assert executor.proto.names("RunJob") == []
    clock.advance(service.EXECUTOR_START_TIMEOUT + 1)


# --- a proven connection keeps its role -------------------------------------------------


def test_a_second_hello_on_a_proven_connection_is_refused(tmp_path: Path) -> None:
    d, _, _ = make_dispatcher(tmp_path)
    session = client_session(d)
    with pytest.raises(commands.InvalidRequest) as e:
        session.hello(
            protocol_version=commands.PROTOCOL_VERSION,
            role=commands.ROLE_TMMS,
            user="alice",
            host=next(iter(d.hosts)),
        )
    assert "already" in str(e.value)
    assert session.role == commands.ROLE_CLIENT and session.host is None
