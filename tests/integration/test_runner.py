"""Tests of the executor's JobRunner with real processes on the real reactor."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tm.executor.runner import JobEnd, JobRunner, JobStartError, RunRequest

DEADLINE = 10


def base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}


def make_runner(tmp_path: Path, kill_grace: float = 0.5) -> JobRunner:
    return JobRunner(reactor, reactor, log_dir=str(tmp_path / "logs"), kill_grace=kill_grace)


def request(tmp_path: Path, command: str, **kw: object) -> RunRequest:
    fields: dict[str, object] = {
        "job_id": 7, "attempt": 1, "command": command, "shell": "/bin/sh",
        "cwd": str(tmp_path), "umask": 0o022, "env": base_env(),
    }
    fields.update(kw)
    return RunRequest(**fields)  # type: ignore[arg-type]


def start(runner: JobRunner, req: RunRequest) -> tuple[int, defer.Deferred[JobEnd]]:
    ended: defer.Deferred[JobEnd] = defer.Deferred()
    pid = runner.start(req, ended.callback)
    ended.addTimeout(DEADLINE, reactor)
    return pid, ended


async def wait_for(condition, what: str) -> None:
    """Poll a condition on the reactor until it holds, failing after the deadline."""
    deadline = reactor.seconds() + DEADLINE
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest_twisted.ensureDeferred
async def test_runs_in_cwd_and_exits_zero(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    pid, ended = start(runner, request(tmp_path, "echo hello > out.txt"))
    assert pid > 0
    assert runner.running() == [(7, 1)]
    end = await ended
    assert (tmp_path / "out.txt").read_text() == "hello\n"
    assert end.exit_code == 0 and end.signal is None and not end.killed
    assert end.ended_at >= end.started_at
    assert runner.running() == []


@pytest_twisted.ensureDeferred
async def test_stdout_and_stderr_files_relative_to_cwd(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = start(runner, request(
        tmp_path, "echo to-out; echo to-err >&2; printf partial",
        stdout="o.txt", stderr="sub/../e.txt",
    ))
    await ended
    assert (tmp_path / "o.txt").read_text() == "to-out\npartial"
    assert (tmp_path / "e.txt").read_text() == "to-err\n"


@pytest_twisted.ensureDeferred
async def test_default_output_goes_to_log_dir(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = start(runner, request(tmp_path, "echo out; echo err >&2", job_id=42))
    await ended
    logs = tmp_path / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert (logs / "42.out").read_text() == "out\n"
    assert (logs / "42.err").read_text() == "err\n"


@pytest_twisted.ensureDeferred
async def test_failing_command_exit_code(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = start(runner, request(tmp_path, "exit 3"))
    end = await ended
    assert end.exit_code == 3
    assert not end.killed
    assert "3" in end.reason


@pytest_twisted.ensureDeferred
async def test_job_sees_its_environment(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    env = base_env() | {"MY_VAR": "mine"}
    _, ended = start(runner, request(
        tmp_path, 'echo "$TM_JOB_ID $TM_ATTEMPT $MY_VAR"', job_id=99, attempt=4,
        env=env, stdout="env.txt",
    ))
    await ended
    assert (tmp_path / "env.txt").read_text() == "99 4 mine\n"


@pytest_twisted.ensureDeferred
async def test_umask_applies_to_job_and_output_files(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = start(runner, request(
        tmp_path, "umask; touch made.txt", umask=0o027, stdout="u.txt",
    ))
    await ended
    assert (tmp_path / "u.txt").read_text().strip() == "0027"
    assert stat.S_IMODE((tmp_path / "made.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "u.txt").stat().st_mode) == 0o640


def test_unwritable_output_raises_before_spawn(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    runner = make_runner(tmp_path)
    with pytest.raises(JobStartError) as info:
        runner.start(request(tmp_path, "echo no > ran.txt", stdout="locked/out.txt"),
                     lambda end: None)
    assert str(locked / "out.txt") in info.value.reason
    assert "stdout" in info.value.reason
    assert not (tmp_path / "ran.txt").exists()
    assert runner.running() == []


def test_output_path_under_a_file_raises(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    runner = make_runner(tmp_path)
    with pytest.raises(JobStartError) as info:
        runner.start(request(tmp_path, "echo no > ran.txt", stderr="afile/e.txt"),
                     lambda e: None)
    assert info.value.reason == (
        f"cannot write stderr file {tmp_path / 'afile' / 'e.txt'}: Not a directory"
    )
    assert not (tmp_path / "ran.txt").exists()
    assert runner.running() == []


def test_missing_cwd_raises(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(JobStartError) as info:
        runner.start(request(tmp_path, "true", cwd=str(missing)), lambda end: None)
    assert str(missing) in info.value.reason
    assert "does not exist" in info.value.reason


@pytest_twisted.ensureDeferred
async def test_kill_leaves_no_process_of_the_group(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    pids_file = tmp_path / "pids"
    pid, ended = start(runner, request(
        tmp_path,
        "sleep 100 & echo $! >> pids; sleep 100 & echo $! >> pids; echo $$ >> pids; wait",
    ))
    await wait_for(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3,
                   "the job to write its pids")
    pids = [int(p) for p in pids_file.read_text().split()]
    assert pid in pids
    assert all(alive(p) for p in pids)
    assert os.getpgid(pids[0]) == pid
    assert runner.kill(7, 1) is True
    end = await ended
    assert end.killed is True
    await wait_for(lambda: not any(alive(p) for p in pids), "every job process to die")
    assert runner.kill(7, 1) is False


@pytest_twisted.ensureDeferred
async def test_kill_escalates_to_sigkill_after_grace_on_injected_clock(tmp_path: Path) -> None:
    clock = task.Clock()
    runner = JobRunner(reactor, clock, log_dir=str(tmp_path / "logs"), kill_grace=5)
    ready = tmp_path / "ready"
    _, ended = start(runner, request(
        tmp_path, "trap '' TERM; touch ready; while :; do sleep 0.05; done",
    ))
    await wait_for(ready.exists, "the job to ignore TERM")
    assert runner.kill(7, 1)
    assert len(clock.getDelayedCalls()) == 1
    # TERM is ignored: the job is still running until the grace period passes on the clock.
    await task.deferLater(reactor, 0.2, lambda: None)
    assert not ended.called
    clock.advance(5)
    end = await ended
    assert end.killed is True
    assert end.signal == 9
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_kill_timer_cancelled_when_job_ends(tmp_path: Path) -> None:
    clock = task.Clock()
    runner = JobRunner(reactor, clock, log_dir=str(tmp_path / "logs"), kill_grace=5)
    _, ended = start(runner, request(tmp_path, "sleep 100"))
    assert runner.kill(7, 1)
    end = await ended
    assert end.killed and end.reason == "killed on request"
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_suspend_and_resume(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    pid, ended = start(runner, request(tmp_path, "exec sleep 100"))
    await wait_for(lambda: os.getpgid(pid) == pid, "the shim to call setsid")
    assert runner.suspend(7, 1) is True
    await wait_for(lambda: proc_state(pid) == "T", "the job to stop")
    assert runner.resume(7, 1) is True
    await wait_for(lambda: proc_state(pid) in ("S", "R"), "the job to continue")
    assert runner.kill(7, 1)
    end = await ended
    assert end.killed
    assert runner.suspend(7, 1) is False
    assert runner.resume(7, 1) is False


@pytest_twisted.ensureDeferred
async def test_kill_all(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, e1 = start(runner, request(tmp_path, "sleep 100", job_id=1))
    _, e2 = start(runner, request(tmp_path, "sleep 100", job_id=2))
    assert sorted(runner.running()) == [(1, 1), (2, 1)]
    done = runner.kill_all()
    done.addTimeout(DEADLINE, reactor)
    await done
    assert (await e1).killed and (await e2).killed
    assert runner.running() == []


@pytest_twisted.ensureDeferred
async def test_logfile_has_sections(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = start(runner, request(
        tmp_path, "echo result; echo warning >&2", stdout="o", stderr="e", logfile="job.log",
    ))
    await ended
    text = (tmp_path / "job.log").read_text()
    assert "BEGIN command\necho result; echo warning >&2\nEND command\n" in text
    assert "BEGIN stdout\nresult\nEND stdout\n" in text
    assert "BEGIN stderr\nwarning\nEND stderr\n" in text
    info = text.split("BEGIN info\n", 1)[1].split("END info\n", 1)[0]
    for key in ("host:", "start time:", "end time:", "run time:"):
        assert key in info
    assert text.index("END command") < text.index("BEGIN info") < text.index("BEGIN stdout")
