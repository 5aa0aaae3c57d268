"""The JobRunner's starts and ends without real processes: a fake spawner plays the process,
a manual pool stands for the executor's file-system threads, a Clock for time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.unit.executor_fakes import FakeSpawner, ManualPool
from tm.executor.runner import (
    KILLED_BEFORE_START,
    MAX_REASON,
    JobEnd,
    JobRunner,
    JobStartError,
    RunRequest,
    run_inline,
)


def request(tmp_path: Path, command: str = "true", **kw: Any) -> RunRequest:
    fields: dict[str, Any] = {
        "job_id": 7,
        "attempt": 1,
        "command": command,
        "cwd": str(tmp_path),
        "env": {"PATH": "/bin"},
    }
    fields.update(kw)
    return RunRequest(**fields)


def make_runner(tmp_path: Path, blocking: Any = run_inline) -> tuple[JobRunner, FakeSpawner, Clock]:
    spawner, clock = FakeSpawner(), Clock()
    runner = JobRunner(spawner, clock, log_dir=str(tmp_path / "logs"), blocking=blocking)
    return runner, spawner, clock


def outcome(d: defer.Deferred[Any]) -> Any:
    """What a Deferred that has fired holds (its value, or its Failure)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def start_error(d: defer.Deferred[Any]) -> str:
    result = outcome(d)
    assert isinstance(result, Failure), result
    assert result.check(JobStartError), result
    return result.value.reason


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# --- starts that cannot succeed: one JobStartError with a reason, nothing left behind --------

NUL_CASES = [
    ({"command": "echo a\0b"}, "the command contains a NUL byte"),
    ({"shell": "/bin/s\0h"}, "the shell contains a NUL byte"),
    ({"cwd": "/tm\0p"}, "the working directory contains a NUL byte"),
    ({"stdout": "o\0ut.txt"}, "the stdout file name (-o) contains a NUL byte"),
    ({"stderr": "e\0rr.txt"}, "the stderr file name (-O) contains a NUL byte"),
    ({"logfile": "l\0og.txt"}, "the log file name (-l) contains a NUL byte"),
    ({"env": {"A\0B": "x"}}, "the environment variable name 'A\\x00B' is not valid"),
    ({"env": {"A=B": "x"}}, "the environment variable name 'A=B' is not valid"),
    ({"env": {"": "x"}}, "the environment variable name '' is not valid"),
    ({"env": {"A": "x\0y"}}, "the value of the environment variable 'A' contains a NUL byte"),
    ({"env": {"A": 1}}, "the environment variable 'A' is not text"),
    ({"env": ["A", "B"]}, "the environment is not a mapping of names to values"),
    ({"umask": -1}, "the umask -1 is not between 000 and 777"),
    ({"umask": 0o1000}, "the umask 512 is not between 000 and 777"),
]


@pytest.mark.parametrize(("fields", "reason"), NUL_CASES)
def test_a_request_spawn_would_refuse_fails_with_the_reason(
    tmp_path: Path, fields: dict[str, Any], reason: str
) -> None:
    runner, spawner, _ = make_runner(tmp_path)
    ended: list[JobEnd] = []
    before = open_fds()
    d = runner.start(request(tmp_path, **fields), ended.append)
    assert reason in start_error(d)
    assert spawner.spawns == [] and ended == [] and runner.running() == []
    assert open_fds() == before
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (ValueError("embedded null byte"), "cannot start the job: embedded null byte"),
        (TypeError("expected str"), "cannot start the job: expected str"),
        (OSError(7, "Argument list too long"), "cannot start the job: Argument list too long"),
        (RuntimeError("surprise"), "cannot start the job: unexpected error (surprise)"),
    ],
)
def test_any_error_from_spawn_fails_the_start_and_closes_its_files(
    tmp_path: Path, raised: BaseException, reason: str
) -> None:
    runner, spawner, _ = make_runner(tmp_path)
    spawner.fail_with = raised
    before = open_fds()
    d = runner.start(
        request(tmp_path, stdout="o.txt", stderr="e.txt", logfile="l.txt"), lambda end: None
    )
    assert start_error(d) == reason
    assert runner.running() == []
    assert open_fds() == before
    # The job's key is free again: a later order for it is not "already running".
    spawner.fail_with = None
    assert outcome(runner.start(request(tmp_path), lambda end: None)) > 0


def test_a_missing_working_directory_fails_the_start(tmp_path: Path) -> None:
    runner, spawner, _ = make_runner(tmp_path)
    d = runner.start(request(tmp_path, cwd=str(tmp_path / "gone")), lambda end: None)
    assert start_error(d) == f"working directory {tmp_path / 'gone'} does not exist"
    assert spawner.spawns == [] and runner.running() == []


def test_an_unexpected_error_while_opening_files_fails_the_start(tmp_path: Path) -> None:
    pool = ManualPool()
    runner, spawner, _ = make_runner(tmp_path, pool)
    d = runner.start(request(tmp_path), lambda end: None)
    f, args, work = pool.queue.pop()
    work.errback(Failure(RuntimeError("disk on fire")))
    assert start_error(d) == "cannot prepare the job's files: unexpected error (disk on fire)"
    assert spawner.spawns == [] and runner.running() == []


# --- file work off the caller's thread ----------------------------------------------------


def test_output_files_are_opened_by_the_pool_not_by_start(tmp_path: Path) -> None:
    pool = ManualPool()
    runner, spawner, _ = make_runner(tmp_path, pool)
    d = runner.start(request(tmp_path, stdout="o.txt"), lambda end: None)
    # start() only queued the work: nothing opened, nothing spawned, the job is "starting".
    assert pool.names() == ["open_outputs"]
    assert not d.called and not (tmp_path / "o.txt").exists() and spawner.spawns == []
    assert runner.running() == [(7, 1)]
    pool.run()
    assert (tmp_path / "o.txt").exists()
    assert outcome(d) == spawner.spawns[0].transport.pid


def test_a_blocked_open_does_not_hold_another_start(tmp_path: Path) -> None:
    pool = ManualPool()
    runner, spawner, _ = make_runner(tmp_path, pool)
    slow = runner.start(request(tmp_path, job_id=1, stdout="slow.txt"), lambda end: None)
    fast = runner.start(request(tmp_path, job_id=2, stdout="fast.txt"), lambda end: None)
    pool.run(1)  # the second job's files; the first's open is still hanging
    assert fast.called and outcome(fast) == spawner.spawns[0].transport.pid
    assert not slow.called
    assert sorted(runner.running()) == [(1, 1), (2, 1)]
    pool.run()
    assert outcome(slow) == spawner.spawns[1].transport.pid


def test_a_kill_while_the_files_open_ends_the_job_killed_without_running_it(tmp_path: Path) -> None:
    pool = ManualPool()
    runner, spawner, clock = make_runner(tmp_path, pool)
    ended: list[JobEnd] = []
    d = runner.start(request(tmp_path, stdout="o.txt"), ended.append)
    waiting = runner.kill_all()
    assert not waiting.called
    # Found: the dispatcher must not take it for an unknown job. No process to signal yet (a
    # signal to pid 0 would hit the executor's own group: this test would not survive it).
    assert runner.kill(7, 1) is True
    assert runner.suspend(7, 1) is False
    before = open_fds()
    clock.advance(3)
    pool.run()
    assert outcome(d) == 0
    assert spawner.spawns == []
    assert [(e.killed, e.exit_code, e.signal, e.reason) for e in ended] == [
        (True, None, None, KILLED_BEFORE_START)
    ]
    assert ended[0].ended_at == 3
    assert runner.running() == [] and waiting.called
    assert open_fds() == before  # the files it had opened are closed again
    assert clock.getDelayedCalls() == []


def test_an_exit_reaped_inside_spawn_uses_the_real_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twisted reaps a child that exited before it was registered right inside spawnProcess; the
    # end then kills what is left of the job's group, which must be the job's, never group 0.
    groups: list[int] = []
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: groups.append(pgid))
    runner, spawner, _ = make_runner(tmp_path)
    spawner.exit_at_once = True
    ended: list[JobEnd] = []
    d = runner.start(request(tmp_path), ended.append)
    pid = outcome(d)
    assert pid == spawner.spawns[0].transport.pid
    assert groups == [pid]
    assert [e.exit_code for e in ended] == [0] and runner.running() == []


def test_the_log_file_is_assembled_by_the_pool_before_the_end_is_handed_over(
    tmp_path: Path,
) -> None:
    pool = ManualPool()
    runner, spawner, clock = make_runner(tmp_path, pool)
    ended: list[JobEnd] = []
    d = runner.start(request(tmp_path, stdout="o", stderr="e", logfile="job.log"), ended.append)
    pool.run()
    assert outcome(d) > 0
    (tmp_path / "o").write_text("result\n")
    clock.advance(2)
    spawner.spawns[0].exit(3)
    # Ended, but its log file is still being written: not handed over, still listed.
    assert pool.names() == ["finish_files"]
    assert ended == [] and runner.running() == [(7, 1)]
    assert runner.kill(7, 1) is False
    assert (tmp_path / "job.log").read_text() == ""  # opened (checked) at the start only
    pool.run()
    assert [(e.exit_code, e.ended_at) for e in ended] == [(3, 2.0)]
    assert runner.running() == []
    text = (tmp_path / "job.log").read_text()
    assert "BEGIN stdout\nresult\nEND stdout\n" in text
    assert "end: exited with code 3\n" in text


def test_an_error_while_assembling_the_log_file_does_not_lose_the_end(tmp_path: Path) -> None:
    pool = ManualPool()
    runner, spawner, _ = make_runner(tmp_path, pool)
    ended: list[JobEnd] = []
    runner.start(request(tmp_path, logfile="job.log"), ended.append)
    pool.run()
    (tmp_path / "job.log").unlink()
    (tmp_path / "job.log").mkdir()  # now it cannot be written
    spawner.spawns[0].exit(0)
    pool.run()
    assert [e.exit_code for e in ended] == [0]
    assert runner.running() == []


def test_a_reason_with_a_huge_path_stays_small_enough_for_one_amp_value(tmp_path: Path) -> None:
    runner, spawner, _ = make_runner(tmp_path)
    d = runner.start(request(tmp_path, stdout="a" * 100_000), lambda end: None)
    reason = start_error(d)
    assert reason.startswith(f"cannot write stdout file {tmp_path}/aaaa")
    assert reason.endswith("aaa: File name too long")
    assert len(reason) <= MAX_REASON
    assert spawner.spawns == []
