"""Start orders and end reports batched per reactor turn (issue 13, point 2): RunJobs and
JobsFinished, each element handled as its single command would handle it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import fail
from twisted.internet.error import ConnectionLost
from twisted.protocols import amp
from twisted.python.failure import Failure

from tests.unit.dispatcher_fakes import FakeSession, add_job, make_dispatcher, runs_everything
from tests.unit.executor_fakes import signed_order
from tests.unit.test_dispatcher_responders import Peer
from tests.unit.test_executor_service import BASE_ORDER, Setup, end
from tm.core.model import Host, JobState
from tm.protocol import batches, commands


def end_row(job_id: int, attempt: int = 1, exit_code: int = 0, **kw: Any) -> dict[str, Any]:
    row = {
        "job_id": job_id,
        "attempt": attempt,
        "exit_code": exit_code,
        "signal": None,
        "killed": False,
        "ended_at": 0.0,
        "reason": "",
        "lost": False,
    }
    row.update(kw)
    return row


def four_slots(tmp_path: Path) -> Any:
    return make_dispatcher(tmp_path, hosts=[Host(name="h1", number_slots=4, max_slots=4)])


def start(d: Any, clock: Any, store: Any, answer: Any, ids: list[int]) -> FakeSession:
    """Jobs ``ids`` placed in one pass on an executor answering with ``answer``."""
    executor = FakeSession(answer)
    d.executor_connected("alice", "h1", executor)
    for job_id in ids:
        add_job(d, store, job_id)
    d.request_pass()
    for _ in range(3):
        clock.advance(0)
    return executor


# --- dispatcher -> executor: RunJobs ----------------------------------------------------------


def test_the_starts_of_one_turn_go_in_one_run_jobs(tmp_path: Path) -> None:
    d, clock, store = four_slots(tmp_path)
    executor = start(d, clock, store, runs_everything, [1, 2, 3])
    [(name, kw)] = executor.proto.calls
    assert name == "RunJobs" and [o["job_id"] for o in kw["orders"]] == [1, 2, 3]
    assert kw["env"] == {} and all("env" not in o for o in kw["orders"])  # once per batch
    for job_id in (1, 2, 3):
        assert d.jobs[job_id].state is JobState.RUNNING and d.jobs[job_id].pid == 1000 + job_id
    assert store.jobs[2].state is JobState.RUNNING


def test_one_failing_start_in_a_batch_fails_only_its_job(tmp_path: Path) -> None:
    d, clock, store = four_slots(tmp_path)

    def answer(name: str, kw: dict) -> dict:
        if name == "RunJob" and kw["job_id"] == 2:
            raise commands.JobStartFailed("the directory /gone does not exist")
        return runs_everything(name, kw)

    executor = start(d, clock, store, answer, [1, 2, 3])
    assert [name for name, _ in executor.proto.calls] == ["RunJobs"]
    assert d.jobs[1].state is JobState.RUNNING and d.jobs[3].state is JobState.RUNNING
    assert store.jobs[2].state is JobState.FAILED
    assert "start failed: the directory /gone does not exist" in store.jobs[2].reason


def test_a_batch_that_is_not_delivered_requeues_each_of_its_jobs(tmp_path: Path) -> None:
    d, clock, store = four_slots(tmp_path)

    def answer(name: str, kw: dict) -> dict:
        raise ConnectionLost("the executor's link dropped")

    executor = start(d, clock, store, answer, [1, 2])
    assert [name for name, _ in executor.proto.calls] == ["RunJobs"]
    for job_id in (1, 2):
        assert d.jobs[job_id].state is JobState.WAITING
        assert "start order not delivered" in d.jobs[job_id].reason
        assert d.start_failures[job_id][0] == 1


# --- executor -> dispatcher: JobsFinished -----------------------------------------------------


def test_the_ends_of_a_batch_are_recorded_and_a_stale_one_does_not_fail_the_others(
    tmp_path: Path,
) -> None:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1.example", number_slots=4, max_slots=4)]
    )
    executor = FakeSession(runs_everything)
    d.executor_connected("alice", "h1.example", executor)
    for job_id in (1, 2, 3):
        add_job(d, store, job_id)
    d.request_pass()
    for _ in range(3):
        clock.advance(0)
    assert all(d.jobs[i].state is JobState.RUNNING for i in (1, 2, 3))
    commits: list[list[Any]] = []
    apply = store.apply_transitions

    def recorded(transitions: list[Any], now: float) -> Any:
        commits.append(transitions)
        return apply(transitions, now)

    store.apply_transitions = recorded
    d.writer.apply_batch = recorded
    peer = Peer(d, clock, role=commands.ROLE_TMMS, host="h1.example")
    answer = peer.call(
        batches.JobsFinished,
        ends=[
            end_row(1),
            end_row(2, attempt=7),  # stale: ignored, as JobFinished ignores it
            end_row(99),  # unknown
            end_row(3, exit_code=3),
        ],
    )
    assert answer == {"failed": [], "error": None}
    assert store.jobs[1].state is JobState.FINISHED and store.jobs[3].state is JobState.FAILED
    assert store.jobs[2].state is JobState.RUNNING
    # The batch's ends in one commit, each with its exit code, before the answer.
    [ends] = commits
    assert [(t.job_id, t.new, t.exit_code) for t in ends] == [
        (1, JobState.FINISHED, 0),
        (3, JobState.FAILED, 3),
    ]


def test_an_end_that_cannot_be_recorded_now_is_named_in_the_answer(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1.example", number_slots=4, max_slots=4)]
    )
    executor = FakeSession(runs_everything)
    d.executor_connected("alice", "h1.example", executor)
    for job_id in (1, 2):
        add_job(d, store, job_id)
    d.request_pass()
    for _ in range(3):
        clock.advance(0)
    d._resyncing.add(1)  # its state is being re-read: its end is refused for now
    peer = Peer(d, clock, role=commands.ROLE_TMMS, host="h1.example")
    answer = peer.call(batches.JobsFinished, ends=[end_row(1), end_row(2)])
    assert answer["failed"] == [0] and "report again" in answer["error"]
    assert store.jobs[2].state is JobState.FINISHED and store.jobs[1].state is JobState.RUNNING


def test_a_client_cannot_send_a_batch_of_ends(tmp_path: Path) -> None:
    d, clock, _ = make_dispatcher(tmp_path)
    try:
        Peer(d, clock).call(batches.JobsFinished, ends=[end_row(1)])
    except commands.PermissionDenied:
        return
    raise AssertionError("a client's JobsFinished was accepted")


# --- the executor's side of RunJobs -------------------------------------------------------------


def orders_of_one_submission(setup: Setup, cwds: list[str]) -> tuple[Any, list[dict[str, Any]]]:
    """Signed orders sharing one sealed environment, as RunJobs carries them."""
    first = signed_order(setup.key, "alice", {**BASE_ORDER, "cwd": cwds[0]}, 1000.0)
    env = first["env"]
    orders = []
    for i, cwd in enumerate(cwds, start=1):
        fields = {**BASE_ORDER, "cwd": cwd, "uuid": f"00000000-0000-0000-0000-00000000000{i}"}
        fields.update(user="alice", env=env, signed_at=first["signed_at"])
        signer = setup.key.submission("alice", cwd, fields["umask"], env, fields["signed_at"])
        fields["signature"] = signer.sign(fields)
        del fields["env"]
        orders.append({"job_id": i, "attempt": 1, **fields})
    return env, orders


def test_an_executor_answers_each_order_of_a_batch(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    ok = str(tmp_path)
    env, orders = orders_of_one_submission(setup, [ok, str(tmp_path / "gone"), ok])
    results: list[Any] = []
    setup.dispatcher.callRemote(batches.RunJobs, env=env, orders=orders).addBoth(results.append)
    setup.pump.flush()
    setup.flush()
    assert len(results) == 1 and not isinstance(results[0], Failure), results
    first, second, third = results[0]["results"]
    pids = [s.transport.pid for s in setup.spawner.spawns]
    assert len(pids) == 2
    assert (first["pid"], third["pid"]) == (pids[0], pids[1]) and first["error"] is None
    assert second["pid"] is None and "does not exist" in second["error"]
    assert setup.linked
    # The same orders again (a dispatcher that missed the answer): the same outcome, no new run.
    again: list[Any] = []
    setup.dispatcher.callRemote(batches.RunJobs, env=env, orders=[orders[0]]).addBoth(again.append)
    setup.pump.flush()
    setup.flush()
    assert again[0]["results"][0]["pid"] == pids[0] and len(setup.spawner.spawns) == 2


# --- a peer of the previous version, without the batch commands ---------------------------------


def test_an_executor_without_run_jobs_gets_each_order_alone(tmp_path: Path) -> None:
    d, clock, store = four_slots(tmp_path)
    executor = FakeSession(runs_everything)
    singles = executor.proto.call

    def old_executor(cmd: Any, /, **kw: Any) -> Any:
        if cmd is batches.RunJobs:
            executor.proto.calls.append(("RunJobs", kw))
            return fail(amp.UnhandledCommand(b"UNHANDLED", "Unhandled Command: 'RunJobs'"))
        return singles(cmd, **kw)

    executor.proto.call = old_executor  # type: ignore[method-assign]
    d.executor_connected("alice", "h1", executor)
    for job_id in (1, 2):
        add_job(d, store, job_id)
    d.request_pass()
    for _ in range(3):
        clock.advance(0)
    assert [n for n, _ in executor.proto.calls] == ["RunJobs", "RunJob", "RunJob"]
    assert all(d.jobs[i].state is JobState.RUNNING for i in (1, 2))
    for job_id in (3, 4):  # later orders go alone at once
        add_job(d, store, job_id)
    d.request_pass()
    for _ in range(10):
        clock.advance(0)
    assert [n for n, _ in executor.proto.calls][3:] == ["RunJob", "RunJob"]
    assert all(d.jobs[i].state is JobState.RUNNING for i in (3, 4))


def test_a_dispatcher_without_jobs_finished_gets_each_end_alone(tmp_path: Path) -> None:
    setup = Setup(tmp_path)

    def old_dispatcher(name: str, kw: dict) -> Any:
        if name == "JobsFinished":
            raise amp.UnhandledCommand(b"UNHANDLED", "Unhandled Command: 'JobsFinished'")
        return {}

    setup.link.answer = old_dispatcher
    setup.ended(end(job_id=1), end(job_id=2))
    assert [n for n, _, _ in setup.link.calls] == ["JobsFinished", "JobFinished", "JobFinished"]
    assert setup.executor.unreported == [] and setup.executor._report_retry == {}


def test_a_start_held_by_its_files_holds_only_its_own_job(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    ok = str(tmp_path)
    env, orders = orders_of_one_submission(setup, [ok, ok])
    results: list[Any] = []
    setup.dispatcher.callRemote(batches.RunJobs, env=env, orders=orders).addBoth(results.append)
    setup.pump.flush()
    setup.pool.run(0)  # the first job's files open; the second's hang (a hung NFS server)
    setup.reactor.advance(0)
    setup.pump.flush()
    assert results == []
    setup.reactor.advance(batches.ANSWER_WITHIN)
    setup.pump.flush()
    [answer] = results
    first, second = answer["results"]
    assert first["pid"] == setup.spawner.spawns[0].transport.pid
    assert second == {"pid": None, "started_at": None, "error": None}  # still under way
    # Sent again alone (as the dispatcher does): it waits for the start under way.
    again = setup.run_job(job_id=2, **{k: v for k, v in orders[1].items() if k != "job_id"})
    assert again == []
    setup.flush()
    assert again == [{"pid": setup.spawner.spawns[1].transport.pid, "started_at": 1002.0}]
    assert len(setup.spawner.spawns) == 2


def test_an_order_still_starting_is_sent_again_alone(tmp_path: Path) -> None:
    d, clock, store = four_slots(tmp_path)

    asked = {2: 0}

    def answer(name: str, kw: dict) -> dict:
        if name == "RunJob" and kw["job_id"] == 2:
            asked[2] += 1
            if asked[2] == 1:
                return {}  # still starting (in RunJobs' answer)
        return runs_everything(name, kw)

    executor = start(d, clock, store, answer, [1, 2])
    assert [n for n, _ in executor.proto.calls] == ["RunJobs", "RunJob"]
    assert executor.proto.calls[1][1]["job_id"] == 2 and executor.proto.calls[1][1]["env"] == {}
    assert all(d.jobs[i].state is JobState.RUNNING for i in (1, 2))
