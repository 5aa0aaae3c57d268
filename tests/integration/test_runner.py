"""Tests of the executor's JobRunner and its per-job shepherd with real processes.

Every test runs with each launcher: shepherds forked by the executor's zygote, compiled
(``zygote-native``, tm/executor/_shepherd.c) and in Python (``zygote-python``), and a fresh
interpreter per shepherd (``spawn``)."""

from __future__ import annotations

import getpass
import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.helpers.native import require_native
from tests.helpers.processes import alive
from tm.executor.request import names_a_home
from tm.executor.runner import JobEnd, JobRunner, JobStartError, RunRequest, shepherd_ready

DEADLINE = 10
RUNNERS: list[JobRunner] = []
LAUNCHER = ["zygote"]


@pytest.fixture(autouse=True, params=["zygote-native", "zygote-python", "spawn"])
def launcher(request: pytest.FixtureRequest) -> Iterator[str]:
    """The launcher of every runner the test makes; the runners' zygotes are ended after it."""
    if request.param == "zygote-native":
        require_native()
    LAUNCHER[0] = request.param
    yield request.param
    while RUNNERS:
        pytest_twisted.blockon(RUNNERS.pop().stop().addTimeout(DEADLINE, reactor))


def new_runner(clock: object, tmp_path: Path, **kw: object) -> JobRunner:
    runner = JobRunner(reactor, clock, log_dir=str(tmp_path / "logs"), launcher=LAUNCHER[0], **kw)  # type: ignore[arg-type]
    RUNNERS.append(runner)
    return runner


def base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C"}


def make_runner(tmp_path: Path, kill_grace: float = 0.5) -> JobRunner:
    return new_runner(reactor, tmp_path, kill_grace=kill_grace)


def request(tmp_path: Path, command: str, **kw: object) -> RunRequest:
    fields: dict[str, object] = {
        "job_id": 7,
        "attempt": 1,
        "command": command,
        "shell": "/bin/sh",
        "cwd": str(tmp_path),
        "umask": 0o022,
        "env": base_env(),
    }
    fields.update(kw)
    return RunRequest(**fields)  # type: ignore[arg-type]


async def start(runner: JobRunner, req: RunRequest) -> tuple[int, defer.Deferred[JobEnd]]:
    ended: defer.Deferred[JobEnd] = defer.Deferred()
    pid = await runner.start(req, ended.callback)
    ended.addTimeout(DEADLINE, reactor)
    return pid, ended


async def wait_for(condition, what: str) -> None:
    """Poll a condition on the reactor until it holds, failing after the deadline."""
    deadline = reactor.seconds() + DEADLINE
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, pgrp, session, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def proc_state(pid: int) -> str:
    return stat_fields(pid)[0]


def ppid_of(pid: int) -> int:
    return int(stat_fields(pid)[1])


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the job's session, led by its shepherd)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = stat_fields(int(name))
            except (OSError, IndexError):
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(name))
    return found


def processes_in(cwd: Path) -> list[int]:
    """Live processes working in ``cwd``: every process of a job started there, wherever it went."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                here = os.readlink(f"/proc/{name}/cwd")
            except OSError:
                continue
            if here == str(cwd) and alive(int(name)):
                found.append(int(name))
    return found


@pytest.fixture(autouse=True)
def no_stray_processes(tmp_path: Path) -> Iterator[None]:
    """Safety net: a failing test must not leave its job's processes running on the host."""
    yield
    for pid in processes_in(tmp_path):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def pid_files(tmp_path: Path, *names: str) -> dict[str, int] | None:
    """The pids the job wrote to ``names``, once every file holds one."""
    pids = {}
    for name in names:
        path = tmp_path / name
        text = path.read_text().strip() if path.exists() else ""
        if not text.isdigit():
            return None
        pids[name] = int(text)
    return pids


async def wait_for_pids(tmp_path: Path, *names: str) -> dict[str, int]:
    await wait_for(lambda: pid_files(tmp_path, *names) is not None, f"the job to write {names}")
    pids = pid_files(tmp_path, *names)
    assert pids is not None
    return pids


@pytest_twisted.ensureDeferred
async def test_runs_in_cwd_and_exits_zero(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    pid, ended = await start(runner, request(tmp_path, "echo hello > out.txt"))
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
    _, ended = await start(
        runner,
        request(
            tmp_path,
            "echo to-out; echo to-err >&2; printf partial",
            stdout="o.txt",
            stderr="sub/../e.txt",
        ),
    )
    await ended
    assert (tmp_path / "o.txt").read_text() == "to-out\npartial"
    assert (tmp_path / "e.txt").read_text() == "to-err\n"


@pytest_twisted.ensureDeferred
async def test_a_path_in_a_users_home_is_looked_up_off_the_reactor(tmp_path: Path) -> None:
    # ~name is a passwd lookup (NSS: maybe a network service): worked out in the pool.
    home = Path(os.path.expanduser(f"~{getpass.getuser()}"))
    given = f"~{getpass.getuser()}/{os.path.relpath(tmp_path / 'home.txt', home)}"
    job = request(tmp_path, "echo in-home", stdout=given)
    assert names_a_home(job) and not names_a_home(request(tmp_path, "true", stdout="~/x"))
    runner = make_runner(tmp_path)
    _, ended = await start(runner, job)
    assert (await ended).exit_code == 0
    assert (tmp_path / "home.txt").read_text() == "in-home\n"


@pytest_twisted.ensureDeferred
async def test_default_output_goes_to_log_dir(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = await start(runner, request(tmp_path, "echo out; echo err >&2", job_id=42))
    await ended
    logs = tmp_path / "logs"
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert (logs / "42.out").read_text() == "out\n"
    assert (logs / "42.err").read_text() == "err\n"


@pytest_twisted.ensureDeferred
async def test_failing_command_exit_code(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = await start(runner, request(tmp_path, "exit 3"))
    end = await ended
    assert end.exit_code == 3
    assert not end.killed
    assert "3" in end.reason


@pytest_twisted.ensureDeferred
async def test_job_sees_its_environment(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    env = base_env() | {"MY_VAR": "mine"}
    _, ended = await start(
        runner,
        request(
            tmp_path,
            'echo "$TM_JOB_ID $TM_ATTEMPT $MY_VAR"',
            job_id=99,
            attempt=4,
            env=env,
            stdout="env.txt",
        ),
    )
    await ended
    assert (tmp_path / "env.txt").read_text() == "99 4 mine\n"


@pytest_twisted.ensureDeferred
async def test_values_of_every_kind_reach_the_job_unchanged(tmp_path: Path) -> None:
    # The zygote's request carries them as NUL-separated bytes: '=', newlines, non-ASCII text
    # and bytes that are not UTF-8 (surrogate-escaped, as os.environ holds them) survive.
    runner = make_runner(tmp_path)
    (tmp_path / "d é").mkdir()
    odd = {"EQ": "a=b=c", "NL": "one\ntwo", "TEXT": "été ✓", "RAW": os.fsdecode(b"\xff\xfe")}
    command = 'printf \'%s|\' "$EQ" "$NL" "$TEXT" "$RAW"; printf \'%s\' "$0"'
    _, ended = await start(
        runner,
        request(tmp_path / "d é", command, env=base_env() | odd, stdout=str(tmp_path / "o")),
    )
    end = await ended
    assert end.exit_code == 0, (tmp_path / "o").read_bytes()
    expected = b"a=b=c|one\ntwo|" + "été ✓".encode() + b"|\xff\xfe|/bin/sh"
    assert (tmp_path / "o").read_bytes() == expected


@pytest_twisted.ensureDeferred
async def test_umask_applies_to_job_and_output_files(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = await start(
        runner,
        request(
            tmp_path,
            "umask; touch made.txt",
            umask=0o027,
            stdout="u.txt",
        ),
    )
    await ended
    assert (tmp_path / "u.txt").read_text().strip() == "0027"
    assert stat.S_IMODE((tmp_path / "made.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "u.txt").stat().st_mode) == 0o640


#: Tries to start a job whose stdout file cannot be written (with the launcher argv[2]); prints
#: what happened as JSON.
_START_UNWRITABLE = """
import json, os, sys
from twisted.internet import defer, reactor
from tm.executor.runner import JobRunner, JobStartError, RunRequest
work = sys.argv[1]
runner = JobRunner(reactor, reactor, log_dir=os.path.join(work, "logs"), kill_grace=0.5,
                   launcher=sys.argv[2])
req = RunRequest(job_id=7, attempt=1, command="echo no > ran.txt", shell="/bin/sh", cwd=work,
                 umask=0o022, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                 stdout="locked/out.txt")
failures = []

async def attempt(reactor):
    d = runner.start(req, lambda end: None).addErrback(failures.append)
    await d.addTimeout(30, reactor)
    await runner.stop()

reactor.callWhenRunning(
    lambda: defer.ensureDeferred(attempt(reactor)).addBoth(lambda _: reactor.stop())
)
reactor.run()
result = {"raised": None}
if failures and isinstance(failures[0].value, JobStartError):
    result["raised"] = failures[0].value.reason
elif failures:
    result["raised"] = "unexpected " + repr(failures[0].value)
result["running"] = runner.running()
print(json.dumps(result))
"""


def test_unwritable_output_raises_before_spawn(tmp_path: Path) -> None:
    # Root writes anywhere: as root, the runner is tried as a throw-away unprivileged user
    # (skipped without root on a developer's machine, so never; failed in CI if it cannot be).
    import json
    import subprocess
    import sys
    from contextlib import nullcontext

    from tests.helpers.processes import REPO
    from tests.helpers.requirements import second_user

    with second_user("tm-runner-") if os.geteuid() == 0 else nullcontext() as user:
        work = user.dir("runner") if user is not None else tmp_path
        locked = work / "locked"
        locked.mkdir(mode=0o500)
        if user is not None:
            os.chown(locked, user.uid, user.gid)
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        )
        argv = [sys.executable, "-c", _START_UNWRITABLE, str(work), LAUNCHER[0]]
        ran = subprocess.run(
            user.argv(*argv) if user is not None else argv,
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        result = json.loads(ran.stdout)
        assert result["raised"] is not None, "the runner started a job it cannot write for"
        assert str(locked / "out.txt") in result["raised"]
        assert "stdout" in result["raised"]
        assert not (work / "ran.txt").exists()
        assert result["running"] == []


@pytest_twisted.ensureDeferred
async def test_output_path_under_a_file_raises(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    runner = make_runner(tmp_path)
    with pytest.raises(JobStartError) as info:
        await runner.start(
            request(tmp_path, "echo no > ran.txt", stderr="afile/e.txt"), lambda e: None
        )
    assert info.value.reason == (
        f"cannot write stderr file {tmp_path / 'afile' / 'e.txt'}: Not a directory"
    )
    assert not (tmp_path / "ran.txt").exists()
    assert runner.running() == []


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"cwd": "afile"}, "working directory {t}/afile is not a directory"),
        ({"stdout": "adir"}, "cannot write stdout file {t}/adir: Is a directory"),
        ({"stderr": "adir"}, "cannot write stderr file {t}/adir: Is a directory"),
        (
            {"stdout": "no/o.txt"},
            "cannot write stdout file {t}/no/o.txt: No such file or directory",
        ),
        ({"logfile": "afile/job.log"}, "cannot write log file {t}/afile/job.log: Not a directory"),
        ({"log_dir": "afile/logs"}, "cannot create log directory {t}/afile/logs: Not a directory"),
        ({"log_dir": "afile"}, "cannot create log directory {t}/afile: File exists"),
    ],
    ids=[
        "cwd-is-a-file",
        "stdout-is-a-dir",
        "stderr-is-a-dir",
        "no-such-dir",
        "log",
        "logdir",
        "logdir-file",
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_file_that_cannot_be_opened_fails_the_start_with_its_reason(
    tmp_path: Path, fields: dict[str, str], reason: str
) -> None:
    # With the zygote, the job's shepherd opens them after its fork and the zygote reports why
    # it could not; the reason is the same one line as when the executor opened them itself.
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    fields = dict(fields)  # the parameters are shared by every launcher's run
    log_dir = fields.pop("log_dir", "logs")
    runner = new_runner(reactor, tmp_path, kill_grace=0.5)
    runner._log_dir = str(tmp_path / log_dir)
    if "cwd" in fields:
        fields["cwd"] = str(tmp_path / fields["cwd"])
    with pytest.raises(JobStartError) as info:
        await runner.start(request(tmp_path, "echo no > ran.txt", **fields), lambda e: None)
    assert info.value.reason == reason.format(t=tmp_path)
    assert not (tmp_path / "ran.txt").exists() and runner.running() == []
    # The runner (and its zygote) carry on: the next job runs.
    runner._log_dir = str(tmp_path / "logs")
    _, ended = await start(runner, request(tmp_path, "echo yes > ran.txt", job_id=8))
    assert (await ended).exit_code == 0
    assert (tmp_path / "ran.txt").read_text() == "yes\n"


@pytest_twisted.ensureDeferred
async def test_an_empty_stderr_file_made_for_the_job_is_removed_at_its_end(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    (tmp_path / "old.err").write_text("")
    jobs = [
        request(tmp_path, "true", job_id=1),  # logs/1.err: made, empty: removed
        request(tmp_path, "echo x >&2", job_id=2),  # logs/2.err: kept
        request(tmp_path, "true", job_id=3, stderr="old.err"),  # there before: kept
        request(tmp_path, "true", job_id=4, logfile="4.log"),  # removed after the log is written
        request(tmp_path, "true", job_id=5, stdout="5.txt", stderr="5.txt"),  # one file: kept
    ]
    for job in jobs:
        _, ended = await start(runner, job)
        await ended
    logs = tmp_path / "logs"
    assert not (logs / "1.err").exists()
    assert (logs / "2.err").read_text() == "x\n"
    assert (tmp_path / "old.err").exists()
    assert not (logs / "4.err").exists()
    assert "BEGIN stderr\nEND stderr\n" in (tmp_path / "4.log").read_text()
    assert (tmp_path / "5.txt").exists()
    assert sorted(p.name for p in logs.iterdir()) == ["1.out", "2.err", "2.out", "3.out", "4.out"]


@pytest_twisted.ensureDeferred
async def test_missing_cwd_raises(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    missing = tmp_path / "nope"
    with pytest.raises(JobStartError) as info:
        await runner.start(request(tmp_path, "true", cwd=str(missing)), lambda end: None)
    assert str(missing) in info.value.reason
    assert "does not exist" in info.value.reason


@pytest_twisted.ensureDeferred
async def test_kill_leaves_no_process_of_the_group(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    pids_file = tmp_path / "pids"
    pid, ended = await start(
        runner,
        request(
            tmp_path,
            "sleep 100 & echo $! >> pids; sleep 100 & echo $! >> pids; echo $$ >> pids; wait",
        ),
    )
    await wait_for(
        lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3,
        "the job to write its pids",
    )
    pids = [int(p) for p in pids_file.read_text().split()]
    # The shell is the shepherd's child, in the shepherd's own session and process group.
    assert ppid_of(pids[2]) == pid
    assert all(alive(p) for p in pids)
    assert os.getpgid(pids[0]) == pid and os.getsid(pids[0]) == pid
    assert runner.kill(7, 1) is True
    end = await ended
    assert end.killed is True
    assert end.signal == signal.SIGTERM
    await wait_for(lambda: not any(alive(p) for p in pids), "every job process to die")
    assert runner.kill(7, 1) is False


# Every way out of the job's group and session that a shell offers: setsid'd children, a
# setsid'd shell with a child of its own, a double-forked setsid'd daemon, a plain background
# child. Each writes its pid to a file of its own.
ESCAPES = (
    "setsid sh -c 'echo $$ > s1; exec sleep 1000' & "
    "setsid sh -c 'sleep 1000 & echo $! > s2kid; echo $$ > s2; wait' & "
    "( setsid sh -c 'echo $$ > df; exec sleep 1000' & ) & "
    "sleep 1000 & echo $! > plain; "
)
ESCAPE_FILES = ("s1", "s2", "s2kid", "df", "plain")


async def start_escapes(
    tmp_path: Path, runner: JobRunner, tail: str
) -> tuple[int, defer.Deferred[JobEnd], dict[str, int]]:
    pid, ended = await start(runner, request(tmp_path, ESCAPES + "echo $$ > shell; " + tail))
    pids = await wait_for_pids(tmp_path, *ESCAPE_FILES, "shell")
    assert all(alive(p) for p in pids.values()), pids
    # They did leave: killpg on the job's group, or anything keyed on its session, misses them.
    for name in ("s1", "s2", "s2kid", "df"):
        assert os.getsid(pids[name]) != pid, name
        assert os.getpgid(pids[name]) != pid, name
    # The double-forked one lost its parent and went to the shepherd, not to init.
    await wait_for(lambda: ppid_of(pids["df"]) == pid, "the orphan to be reparented")
    return pid, ended, pids


@pytest_twisted.ensureDeferred
async def test_kill_reaches_setsid_and_double_forked_descendants(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended, pids = await start_escapes(tmp_path, runner, "wait")
    assert runner.kill(7, 1) is True
    end = await ended
    assert end.killed is True and end.signal == signal.SIGTERM
    # The shepherd exits only when nothing below it is left.
    assert {name: p for name, p in pids.items() if alive(p)} == {}
    assert processes_in(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_background_processes_end_with_the_job(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    # A shell that exits normally, once told to, while its escaped descendants still run.
    _, ended, pids = await start_escapes(
        tmp_path, runner, "while [ ! -e go ]; do sleep 0.02; done; exit 4"
    )
    assert not ended.called
    (tmp_path / "go").touch()
    end = await ended
    assert end.exit_code == 4 and end.signal is None and not end.killed
    assert {name: p for name, p in pids.items() if alive(p)} == {}
    assert processes_in(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_kill_of_a_forking_loop_is_complete(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    pids_file = tmp_path / "pids"
    pid, ended = await start(
        runner,
        request(
            tmp_path,
            "while :; do sleep 1000 & echo $! >> pids; setsid sleep 1000 & echo $! >> pids; done",
        ),
    )
    await wait_for(
        lambda: pids_file.exists() and len(pids_file.read_text().split()) >= 40,
        "the loop to start 40 sleeps",
    )
    assert len(session_members(pid)) > 20
    assert runner.kill(7, 1) is True
    end = await ended
    assert end.killed is True
    pids = [int(p) for p in pids_file.read_text().split()]
    assert [p for p in pids if alive(p)] == []
    # Also the sleeps forked after the last one recorded its pid.
    assert session_members(pid) == []
    assert processes_in(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_shepherd_escalates_to_sigkill_after_its_grace(tmp_path: Path) -> None:
    clock = task.Clock()
    runner = new_runner(clock, tmp_path, kill_grace=0.5)
    _, ended = await start(
        runner,
        request(
            tmp_path,
            "setsid sh -c \"trap '' TERM; echo \\$\\$ > gc; while :; do sleep 0.05; done\" & "
            "trap '' TERM; echo $$ > shell; while :; do sleep 0.05; done",
        ),
    )
    pids = await wait_for_pids(tmp_path, "gc", "shell")
    assert runner.kill(7, 1)
    assert len(clock.getDelayedCalls()) == 1
    # The runner's clock never moves: the shepherd's own grace ends the job.
    end = await ended
    assert end.killed is True
    assert end.signal == signal.SIGKILL
    assert {name: p for name, p in pids.items() if alive(p)} == {}
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_runner_last_resort_when_the_shepherd_is_stuck(tmp_path: Path) -> None:
    clock = task.Clock()
    runner = new_runner(clock, tmp_path, kill_grace=5, last_resort_grace=20)
    pid, ended, pids = await start_escapes(tmp_path, runner, "wait")
    os.kill(pid, signal.SIGSTOP)  # a shepherd that cannot act on TERM
    await wait_for(lambda: proc_state(pid) == "T", "the shepherd to stop")
    assert runner.kill(7, 1)
    assert len(clock.getDelayedCalls()) == 1
    await task.deferLater(reactor, 0.2, lambda: None)
    assert not ended.called
    assert all(alive(p) for p in pids.values())
    clock.advance(19)
    assert not ended.called and proc_state(pid) == "T"
    clock.advance(1)
    end = await ended
    assert end.killed is True
    assert end.signal == signal.SIGKILL
    await wait_for(lambda: not any(alive(p) for p in pids.values()), "every job process to die")
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_kill_timer_cancelled_when_job_ends(tmp_path: Path) -> None:
    clock = task.Clock()
    runner = new_runner(clock, tmp_path, kill_grace=5)
    _, ended = await start(runner, request(tmp_path, "sleep 100"))
    assert runner.kill(7, 1)
    end = await ended
    assert end.killed and end.reason == "killed on request"
    assert clock.getDelayedCalls() == []


def test_last_resort_must_outlast_the_shepherd(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        JobRunner(reactor, task.Clock(), log_dir=str(tmp_path), kill_grace=5, last_resort_grace=5)


@pytest_twisted.ensureDeferred
async def test_suspend_and_resume(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    pid, ended = await start(
        runner,
        request(
            tmp_path,
            "setsid sh -c 'echo $$ > gc; exec sleep 100' & echo $$ > shell; wait",
        ),
    )
    pids = await wait_for_pids(tmp_path, "gc", "shell")
    await wait_for(lambda: shepherd_ready(pid), "the shepherd to take signals")
    assert os.getsid(pids["gc"]) != pid
    assert runner.suspend(7, 1) is True
    await wait_for(lambda: all(proc_state(p) == "T" for p in pids.values()), "the job to stop")
    # The shepherd itself keeps running, to take the next command.
    assert proc_state(pid) != "T"
    assert runner.resume(7, 1) is True
    await wait_for(
        lambda: all(proc_state(p) in ("S", "R") for p in pids.values()), "the job to continue"
    )
    assert runner.kill(7, 1)
    end = await ended
    assert end.killed
    assert runner.suspend(7, 1) is False
    assert runner.resume(7, 1) is False


# Only a spawned shepherd has this race: a forked one takes its signals from birth.
@pytest.mark.parametrize("launcher", ["spawn"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_suspend_right_after_start_does_not_kill_the_job(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    pid, ended = await start(runner, request(tmp_path, "echo $$ > shell; exec sleep 100"))
    # The shepherd is still starting: USR1 would be fatal to it now.
    assert not shepherd_ready(pid)
    assert runner.suspend(7, 1) is True
    await wait_for(lambda: proc_state(pid) == "T", "the job to stop")
    assert runner.resume(7, 1) is True
    pids = await wait_for_pids(tmp_path, "shell")
    assert not ended.called
    assert runner.suspend(7, 1) is True
    await wait_for(lambda: proc_state(pids["shell"]) == "T", "the job to stop again")
    assert runner.kill(7, 1)
    end = await ended
    assert end.killed and end.signal == signal.SIGTERM
    assert not alive(pids["shell"])


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGUSR1, signal.SIGKILL, signal.SIGTERM])
@pytest_twisted.ensureDeferred
async def test_signal_death_of_the_shell_is_reported_unchanged(tmp_path: Path, sig: int) -> None:
    runner = make_runner(tmp_path)
    _, ended = await start(runner, request(tmp_path, f"sleep 0.1; kill -{int(sig)} $$; sleep 100"))
    end = await ended
    assert end.signal == sig and end.exit_code is None
    assert not end.killed
    assert end.reason == f"killed by signal {int(sig)}"


@pytest.mark.parametrize("code", [0, 1, 125, 126, 127, 255])
@pytest_twisted.ensureDeferred
async def test_exit_code_of_the_shell_is_reported_unchanged(tmp_path: Path, code: int) -> None:
    runner = make_runner(tmp_path)
    _, ended = await start(runner, request(tmp_path, f"exit {code}"))
    end = await ended
    assert end.exit_code == code and end.signal is None and not end.killed


@pytest_twisted.ensureDeferred
async def test_missing_shell_is_exit_127_with_a_message(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = await start(
        runner, request(tmp_path, "true", shell=str(tmp_path / "no-shell"), stderr="e.txt")
    )
    end = await ended
    assert end.exit_code == 127
    assert "cannot execute shell" in (tmp_path / "e.txt").read_text()


@pytest_twisted.ensureDeferred
async def test_a_shell_named_without_a_path_is_found_on_the_jobs_path(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shell = bin_dir / "myshell"
    shell.write_text('#!/bin/sh\necho "$@" > used\nexec /bin/sh "$@"\n')
    shell.chmod(0o755)
    env = {"PATH": f"{tmp_path / 'nowhere'}:{bin_dir}:/usr/bin:/bin", "LANG": "C"}
    _, ended = await start(runner, request(tmp_path, "exit 4", shell="myshell", env=env))
    end = await ended
    assert end.exit_code == 4
    assert (tmp_path / "used").read_text() == "-c exit 4\n"


@pytest_twisted.ensureDeferred
async def test_job_sees_default_sigpipe(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    # yes must die of SIGPIPE quietly, not report write errors: Python's ignored SIGPIPE and
    # the shepherd's blocked control signals must not leak into the job.
    _, ended = await start(
        runner,
        request(
            tmp_path,
            "yes | head -1; grep -E '^Sig(Blk|Ign)' /proc/self/status",
            stdout="o.txt",
            stderr="e.txt",
        ),
    )
    end = await ended
    assert end.exit_code == 0
    assert not (tmp_path / "e.txt").exists()  # nothing written there: removed at the end
    lines = (tmp_path / "o.txt").read_text().splitlines()
    assert lines[0] == "y"
    masks = dict(line.split(":") for line in lines[1:])
    assert int(masks["SigBlk"], 16) == 0, lines
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not int(masks["SigIgn"], 16) >> (sig - 1) & 1, lines


@pytest_twisted.ensureDeferred
async def test_kill_all(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    p1, e1 = await start(runner, request(tmp_path, "sleep 100", job_id=1))
    _, e2 = await start(runner, request(tmp_path, "sleep 100", job_id=2))
    assert sorted(runner.running()) == [(1, 1), (2, 1)]
    await wait_for(lambda: shepherd_ready(p1), "the shepherd to take signals")
    assert runner.suspend(1, 1)  # a suspended job is killed all the same
    done = runner.kill_all()
    done.addTimeout(DEADLINE, reactor)
    await done
    assert (await e1).killed and (await e2).killed
    assert runner.running() == []


@pytest_twisted.ensureDeferred
async def test_logfile_has_sections(tmp_path: Path) -> None:
    runner = make_runner(tmp_path)
    _, ended = await start(
        runner,
        request(
            tmp_path,
            "echo result; echo warning >&2",
            stdout="o",
            stderr="e",
            logfile="job.log",
        ),
    )
    await ended
    text = (tmp_path / "job.log").read_text()
    assert "BEGIN command\necho result; echo warning >&2\nEND command\n" in text
    assert "BEGIN stdout\nresult\nEND stdout\n" in text
    assert "BEGIN stderr\nwarning\nEND stderr\n" in text
    info = text.split("BEGIN info\n", 1)[1].split("END info\n", 1)[0]
    for key in ("host:", "start time:", "end time:", "run time:"):
        assert key in info
    assert text.index("END command") < text.index("BEGIN info") < text.index("BEGIN stdout")
