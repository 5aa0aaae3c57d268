"""The executor (TMMS) service without processes or sockets: its RunJob answers over an
in-memory AMP pair, and its reports of job ends through a recording link, on a fake clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.protocols import amp

from tests.helpers.amp_pair import connected_pair
from tests.unit.executor_fakes import FakeLink, FakeSpawner, ManualPool, signed_order
from tm.auth import DISPATCHER_TLS_NAME, make_self_signed
from tm.executor import service as executor_service
from tm.executor.launcher import ZygoteLauncher
from tm.executor.runner import JobEnd, JobRunner
from tm.executor.service import (
    MAX_REPORTS_IN_FLIGHT,
    REPORT_RETRY_MAX,
    Executor,
    ExecutorLocator,
)
from tm.executor.verify import SpecChecker
from tm.jobsign import JobKey
from tm.link import DispatcherInfo
from tm.protocol import commands

# The link builds its TLS endpoint up front (ClientService), so the pinned certificate is real.
DISPATCHER = DispatcherInfo(
    host="127.0.0.1",
    port=1,
    certificate=make_self_signed(DISPATCHER_TLS_NAME)[1],
    challenge_dir="",
    path="",
)


#: A start order's fields (but job_id and attempt), before its user's TMS signs it.
BASE_ORDER: dict[str, Any] = {
    "command": "true",
    "shell": "/bin/sh",
    "cwd": "/",
    "umask": 0o022,
    "env": {"PATH": "/bin"},
    "stdout": "",
    "stderr": "",
    "logfile": "",
    "slots": 1,
}


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.reactor = MemoryReactorClock()
        self.reactor.advance(1000.0)
        self.executor = Executor(
            self.reactor, DISPATCHER, host="h1", idle_timeout=300.0, log_dir=str(tmp_path / "logs")
        )
        # The user's key, as the TMS signs with it and the executor checks with it.
        self.key = JobKey(b"k" * 32)
        self.executor.checker = SpecChecker("alice", self.reactor, load=lambda: self.key)
        self.link = FakeLink()
        self.executor.link = self.link  # type: ignore[assignment]
        self.spawner = FakeSpawner()
        self.pool = ManualPool()
        self.executor.runner = JobRunner(
            self.spawner, self.reactor, log_dir=str(tmp_path / "logs"), blocking=self.pool
        )
        server = amp.AMP(locator=ExecutorLocator(self.executor))
        self.dispatcher = amp.AMP()
        self.pump = connected_pair(server, self.dispatcher)

    def run_job(self, job_id: int = 7, attempt: int = 1, sign: bool = True, **kw: Any) -> list[Any]:
        """Send RunJob as the dispatcher does (the job signed by its user's TMS, unless not
        ``sign``); the list gets its answer or its Failure."""
        fields: dict[str, Any] = {**BASE_ORDER, "cwd": str(self.tmp_path)}
        fields.update(kw)
        if sign:
            fields = signed_order(self.key, "alice", fields, self.reactor.seconds())
        results: list[Any] = []
        self.dispatcher.callRemote(
            commands.RunJob, job_id=job_id, attempt=attempt, **fields
        ).addBoth(results.append)
        self.pump.flush()
        return results

    def flush(self) -> None:
        self.pool.run_all()
        self.reactor.advance(0)  # the turn's ends reported
        self.pump.flush()

    def ended(self, *ends: JobEnd) -> None:
        """Ends in one turn, then the turn's end (where they are reported)."""
        for e in ends:
            self.executor.job_ended(e)
        self.reactor.advance(0)

    @property
    def linked(self) -> bool:
        return not self.dispatcher.transport.disconnecting  # type: ignore[union-attr]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


@pytest.fixture
def logged() -> Any:
    events: list[dict] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def job_start_failed(results: list[Any]) -> str:
    assert len(results) == 1, results
    failure = results[0]
    assert hasattr(failure, "check") and failure.check(commands.JobStartFailed), failure
    return str(failure.value)


# --- RunJob: a start that cannot succeed is the declared JobStartFailed, the link stays ----


def test_a_nul_in_the_command_is_a_declared_start_failure(setup: Setup) -> None:
    results = setup.run_job(command="echo a\0b")
    setup.flush()
    assert job_start_failed(results) == "the command contains a NUL byte"
    assert setup.linked and setup.spawner.spawns == []
    # The next job starts on the same link.
    ok = setup.run_job(job_id=8)
    setup.flush()
    assert ok == [{"pid": setup.spawner.spawns[0].transport.pid, "started_at": 1000.0}]


def test_a_nul_in_an_output_path_is_a_declared_start_failure(setup: Setup) -> None:
    results = setup.run_job(stdout="o\0ut")
    setup.flush()
    assert job_start_failed(results) == "the stdout file name (-o) contains a NUL byte"
    assert setup.linked


def test_an_environment_that_is_not_sealed_is_a_declared_start_failure(setup: Setup) -> None:
    order = signed_order(setup.key, "alice", dict(BASE_ORDER), setup.reactor.seconds())
    results = setup.run_job(sign=False, **(order | {"env": ["A=1"]}))
    setup.flush()
    assert job_start_failed(results) == "signature mismatch: the job's environment is not sealed"
    assert not setup.spawner.spawns
    assert setup.linked


def test_spawn_errors_are_declared_start_failures(setup: Setup) -> None:
    setup.spawner.fail_with = ValueError("embedded null byte")
    results = setup.run_job()
    setup.flush()
    assert job_start_failed(results) == "cannot start the job: embedded null byte"
    assert setup.linked and setup.executor.runner.running() == []


def test_an_unexpected_error_is_logged_once_and_answered_as_a_start_failure(
    setup: Setup, logged: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request: Any, on_end: Any) -> Any:
        raise KeyError("bug")

    monkeypatch.setattr(setup.executor.runner, "start", broken)
    results = setup.run_job(job_id=41)
    assert "internal error" in job_start_failed(results)
    assert setup.linked
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["job_id"] == 41


def test_an_unexpected_error_on_a_signal_is_declared_and_the_link_stays(
    setup: Setup, logged: list[dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(job_id: int, attempt: int) -> bool:
        raise OSError("bug")

    monkeypatch.setattr(setup.executor.runner, "kill", broken)
    results: list[Any] = []
    setup.dispatcher.callRemote(commands.SignalJob, job_id=9, attempt=1, action="kill").addBoth(
        results.append
    )
    setup.pump.flush()
    assert results[0].check(commands.InvalidRequest)
    assert setup.linked
    assert [e["job_id"] for e in logged if e.get("log_failure") is not None] == [9]
    unknown: list[Any] = []
    setup.dispatcher.callRemote(commands.SignalJob, job_id=10, attempt=1, action="kill").addBoth(
        unknown.append
    )
    monkeypatch.undo()
    setup.pump.flush()
    assert unknown == [{"found": False}]


def test_a_start_order_repeated_while_the_first_opens_files_waits_for_it(setup: Setup) -> None:
    first = setup.run_job()
    second = setup.run_job()  # e.g. sent again after a reconnection
    assert first == second == []
    setup.flush()
    assert len(setup.spawner.spawns) == 1
    pid = setup.spawner.spawns[0].transport.pid
    assert first == second == [{"pid": pid, "started_at": 1000.0}]
    assert setup.run_job() == [{"pid": pid, "started_at": 1000.0}]  # and once it runs


def test_a_repeated_failing_start_order_gets_the_same_failure(setup: Setup) -> None:
    first = setup.run_job(cwd=str(setup.tmp_path / "gone"))
    second = setup.run_job(cwd=str(setup.tmp_path / "gone"))
    setup.flush()
    assert job_start_failed(first) == job_start_failed(second)
    assert "does not exist" in job_start_failed(first)
    assert setup.pool.queue == []  # one opening for both


def test_a_kill_while_starting_ends_the_job_killed_without_running_it(setup: Setup) -> None:
    started = setup.run_job()
    found: list[Any] = []
    setup.dispatcher.callRemote(commands.SignalJob, job_id=7, attempt=1, action="kill").addBoth(
        found.append
    )
    setup.pump.flush()
    assert found == [{"found": True}]
    setup.flush()
    assert setup.spawner.spawns == []
    assert started == [{"pid": 0, "started_at": 1000.0}]
    [report] = setup.link.named("JobFinished")
    assert report["killed"] is True and report["reason"] == "killed before it started"


def test_an_attempt_ordered_again_after_its_end_was_reported_does_not_run_twice(
    setup: Setup,
) -> None:
    first = setup.run_job()
    setup.flush()
    setup.spawner.spawns[0].exit(0)
    setup.flush()  # its empty stderr file removed (tm/executor/outputs.py), then reported
    [(name, kw, answer)] = setup.link.calls
    answer.callback({})
    assert setup.executor.unreported == []
    again = setup.run_job()
    setup.flush()
    assert again == first and len(setup.spawner.spawns) == 1
    reports = setup.link.named("JobFinished")
    assert len(reports) == 2 and reports[1] == reports[0]


# --- reports of ends ----------------------------------------------------------------------


def end(job_id: int = 7, ended_at: float = 100.0) -> JobEnd:
    return JobEnd(
        job_id=job_id,
        attempt=1,
        exit_code=0,
        signal=None,
        killed=False,
        started_at=50.0,
        ended_at=ended_at,
        reason="exited normally",
    )


def test_the_report_sends_the_process_end_time_not_the_report_time(setup: Setup) -> None:
    setup.link.connected = False  # the dispatcher is away when the job ends
    setup.executor.job_ended(end(ended_at=1000.0))
    assert setup.link.calls == []
    setup.reactor.advance(600)  # back ten minutes later
    setup.link.connected = True
    setup.executor._connected()
    [report] = setup.link.named("JobFinished")
    assert report["ended_at"] == 1000.0
    assert setup.reactor.seconds() == 1600.0


def test_a_failing_report_is_sent_again_with_a_growing_delay(setup: Setup) -> None:
    def refuse(name: str, kw: dict) -> Any:
        if name == "JobFinished":
            raise commands.DatabaseUnavailable("the database is away")
        return {"time": 0.0}

    setup.link.answer = refuse
    setup.ended(end())
    sent_at = [setup.reactor.seconds()]
    for _ in range(400):  # heartbeats every second for 400 s
        setup.reactor.advance(1.0)
        before = len(setup.link.named("JobFinished"))
        setup.executor._heartbeat()
        if len(setup.link.named("JobFinished")) > before:
            sent_at.append(setup.reactor.seconds())
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert gaps[:7] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0]
    assert max(gaps) == REPORT_RETRY_MAX
    assert len(sent_at) < 15  # not 400


def reported_ends(setup: Setup) -> list[dict[str, Any]]:
    """Every end reported so far: each JobFinished's, and each of each JobsFinished."""
    out = []
    for name, kw, _ in setup.link.calls:
        if name == "JobFinished":
            out.append(kw)
        elif name == "JobsFinished":
            out.extend(kw["ends"])
    return out


def test_reports_failing_at_once_do_not_recurse_or_spin(setup: Setup) -> None:
    def refuse(name: str, kw: dict) -> Any:
        raise commands.DatabaseUnavailable("no")

    setup.link.answer = refuse
    for i in range(1, 2001):
        setup.executor.unreported.append(end(job_id=i))
    setup.executor._flush()
    # Each end tried once (in batches that each fit one AMP value), then each waits its delay.
    assert sorted(e["job_id"] for e in reported_ends(setup)) == list(range(1, 2001))
    assert 1 < len(setup.link.named("JobsFinished")) <= MAX_REPORTS_IN_FLIGHT
    setup.executor._flush()
    assert len(reported_ends(setup)) == 2000


def test_the_ends_of_one_turn_go_in_one_report(setup: Setup) -> None:
    setup.ended(*(end(job_id=i) for i in range(1, 41)))
    [(name, kw, answer)] = setup.link.calls
    assert name == "JobsFinished" and [e["job_id"] for e in kw["ends"]] == list(range(1, 41))
    assert kw["ends"][0]["exit_code"] == 0 and kw["ends"][0]["ended_at"] == 100.0
    answer.callback({"failed": [], "error": None})
    assert setup.executor.unreported == []
    assert sorted(setup.executor._reported) == [(i, 1) for i in range(1, 41)]


def test_ends_refused_in_a_batch_are_reported_again_alone(setup: Setup) -> None:
    setup.ended(end(job_id=1), end(job_id=2), end(job_id=3))
    [(_, _, answer)] = setup.link.calls
    answer.callback({"failed": [1], "error": "the database is away"})
    assert [(e.job_id, e.attempt) for e in setup.executor.unreported] == [(2, 1)]
    assert (2, 1) not in setup.executor._reported and (1, 1) in setup.executor._reported
    setup.reactor.advance(executor_service.REPORT_RETRY_FIRST)
    setup.executor._heartbeat()
    [again] = setup.link.named("JobFinished")
    assert again["job_id"] == 2


def test_a_batch_whose_report_fails_is_retried_end_by_end(setup: Setup) -> None:
    setup.ended(end(job_id=1), end(job_id=2))
    setup.link.calls[0][2].errback(ConnectionError("link lost"))
    assert len(setup.executor.unreported) == 2 and setup.executor._reporting == set()
    assert set(setup.executor._report_retry) == {(1, 1), (2, 1)}
    setup.executor._connected()  # a new link: sent again at once, together
    [_, (name, kw, answer)] = [c for c in setup.link.calls if c[0] != "Heartbeat"]
    assert name == "JobsFinished" and [e["job_id"] for e in kw["ends"]] == [1, 2]
    answer.callback({})
    assert setup.executor.unreported == [] and setup.executor._report_retry == {}


def test_reports_in_flight_are_bounded(setup: Setup) -> None:
    for i in range(1, 41):  # one end per turn: one report each, while places are free
        setup.ended(end(job_id=i))
    assert len(setup.link.calls) == MAX_REPORTS_IN_FLIGHT
    assert {name for name, _, _ in setup.link.calls} == {"JobFinished"}
    # A place frees: the ends that waited meanwhile go together.
    setup.link.calls[0][2].callback({})
    assert len(setup.link.calls) == MAX_REPORTS_IN_FLIGHT + 1
    name, kw, _ = setup.link.calls[-1]
    assert name == "JobsFinished" and len(kw["ends"]) == 40 - MAX_REPORTS_IN_FLIGHT
    assert len(setup.executor.unreported) == 39


def test_a_huge_start_failure_reason_still_reaches_the_dispatcher(setup: Setup) -> None:
    # The name fits in the order; the reason naming it would not fit in the answer.
    results = setup.run_job(stdout="a" * 65_500)
    setup.flush()
    assert "File name too long" in job_start_failed(results)
    assert setup.linked


def test_the_heartbeat_answer_cannot_make_a_busy_loop(setup: Setup) -> None:
    executor = setup.executor
    executor.heartbeat.start(5.0, now=False)
    try:
        executor._heartbeat_answered({"time": 0.0, "lease": 1e-9, "interval": 1e-9})
        assert executor.heartbeat.interval == executor_service.MIN_HEARTBEAT_INTERVAL
        assert executor.lease == executor_service.MIN_LEASE
        executor._heartbeat_answered({"time": 0.0, "lease": 30.0, "interval": 1e9})
        assert executor.heartbeat.interval == executor_service.MAX_HEARTBEAT_INTERVAL
        assert executor.lease == 30.0
    finally:
        executor.heartbeat.stop()


def test_a_new_link_sends_every_waiting_report_at_once(setup: Setup) -> None:
    setup.ended(end())
    setup.link.calls[0][2].errback(ConnectionError("link lost"))
    setup.executor._connected()
    assert len(setup.link.named("JobFinished")) == 2


def test_only_one_report_of_an_end_is_in_flight(setup: Setup) -> None:
    setup.ended(end())
    for _ in range(5):
        setup.executor._heartbeat()
        setup.executor._connected()
    assert len(setup.link.named("JobFinished")) == 1


def test_a_lease_kill_does_not_make_an_ended_job_lost(setup: Setup) -> None:
    # A job that ended on its own while its log file is written is still listed as running;
    # the lease running out then must not report it as lost.
    setup.run_job(logfile="job.log")
    setup.flush()
    setup.spawner.spawns[0].exit(0)
    assert setup.pool.names() == ["finish_files"]  # the log file, then the stderr file tidied
    setup.link.connected = False
    setup.executor.lease = 10.0
    setup.reactor.advance(60)
    setup.executor._check_lease()
    setup.pool.run()
    setup.link.connected = True
    setup.executor._connected()
    [report] = setup.link.named("JobFinished")
    assert report["lost"] is False and report["reason"] == "exited normally"


def test_an_end_the_runner_could_not_know_is_reported_lost_with_its_reason(setup: Setup) -> None:
    # The zygote that reaped the job's shepherd ended first: the dispatcher must run it again.
    reason = "lost: the executor's shepherd zygote ended unexpectedly"
    setup.ended(
        JobEnd(
            job_id=7,
            attempt=1,
            exit_code=None,
            signal=None,
            killed=False,
            started_at=50.0,
            ended_at=60.0,
            reason=reason,
            lost=True,
        )
    )
    [report] = setup.link.named("JobFinished")
    assert report["lost"] is True and report["reason"] == reason


def test_the_executor_forks_shepherds_from_a_zygote_and_ends_it_when_it_stops(setup: Setup) -> None:
    executor = Executor(
        setup.reactor, DISPATCHER, host="h1", idle_timeout=300.0, log_dir=str(setup.tmp_path)
    )
    assert isinstance(executor.runner.launcher, ZygoteLauncher)
    stopped: list[Any] = []
    executor.runner.stop = lambda: stopped.append(True) or succeed(None)  # type: ignore
    executor.startService()
    executor.link = FakeLink()  # type: ignore[assignment]
    executor.stopService()
    assert stopped == [True]


def test_the_executor_runs_file_work_in_a_bounded_pool_of_its_own(setup: Setup) -> None:
    executor = Executor(
        setup.reactor, DISPATCHER, host="h1", idle_timeout=300.0, log_dir=str(setup.tmp_path)
    )
    assert executor.runner._blocking == executor._in_pool
    assert executor.fs_pool.max == executor_service.FS_THREADS


def test_ensure_deferred_of_start_job_never_fails_with_an_undeclared_error(setup: Setup) -> None:
    results: list[Any] = []
    ensureDeferred(
        setup.executor.start_job(
            5,
            1,
            command="x",
            shell="/bin/sh",
            cwd="/",
            umask=18,
            env=None,
            stdout="",
            stderr="",
            logfile="",
            slots=1,
        )
    ).addBoth(results.append)
    assert job_start_failed(results) == "signature mismatch: the job's environment is not sealed"
