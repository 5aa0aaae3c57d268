"""The executor's zygote with real processes: what forking shepherds from one helper process
adds to what tests/integration/test_runner.py checks under both launchers (pids known later,
signals from birth, the tree's rusage, the zygote's own death, the executor's death)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from tests.helpers.native import require_native
from tests.helpers.processes import alive, wait_until
from tests.integration.test_runner import (  # noqa: F401 - no_stray_processes is a fixture
    DEADLINE,
    no_stray_processes,
    ppid_of,
    proc_state,
    processes_in,
    request,
    start,
    wait_for,
    wait_for_pids,
)
from tm.executor import launcher as launcher_module
from tm.executor.launcher import ZygoteLauncher
from tm.executor.runner import JobEnd, JobRunner, shepherd_ready

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["zygote-native", "zygote-native-module", "zygote-python"])
def runner(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[JobRunner]:
    """A runner with the zygote of each implementation: compiled (the standalone executable,
    and the extension's loop in ``python zygote.py``, used where the executable is missing),
    and Python."""
    launcher = request.param
    if launcher.startswith("zygote-native"):
        require_native()
    if launcher == "zygote-native-module":
        monkeypatch.setattr(launcher_module, "ZYGOTE_EXECUTABLE", str(tmp_path / "not-built"))
        launcher = "zygote-native"
    made = JobRunner(
        reactor, reactor, log_dir=str(tmp_path / "logs"), kill_grace=0.5, launcher=launcher
    )
    yield made
    pytest_twisted.blockon(made.kill_all().addTimeout(DEADLINE, reactor))
    pytest_twisted.blockon(made.stop().addTimeout(DEADLINE, reactor))


def fired(d: defer.Deferred[int]) -> bool:
    """Whether the Deferred has its result (``called`` is also true while it waits on another)."""
    results: list[object] = []

    def seen(result: object) -> object:
        results.append(result)
        return result

    d.addBoth(seen)
    return bool(results)


def children_of(parent: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if ppid_of(int(name)) == parent:
                    found.append(int(name))
            except (OSError, IndexError):
                continue
    return found


def dead_or_dying(pid: int) -> bool:
    """Gone, a zombie, or with SIGKILL pending."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return True
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    if fields["State"].split()[0] in ("Z", "X"):
        return True
    pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
    return bool(pending >> (signal.SIGKILL - 1) & 1)


def zygote_pid(runner: JobRunner) -> int:
    launcher = runner.launcher
    assert isinstance(launcher, ZygoteLauncher)
    pid = launcher.zygote_pid
    assert pid is not None
    return pid


@pytest_twisted.ensureDeferred
async def test_shepherds_are_forked_by_one_zygote_and_take_signals_from_birth(
    tmp_path: Path, runner: JobRunner
) -> None:
    p1, e1 = await start(runner, request(tmp_path, "echo $$ > shell; exec sleep 100", job_id=1))
    # Ready at once: the zygote blocks the control signals across its fork.
    assert shepherd_ready(p1)
    p2, e2 = await start(runner, request(tmp_path, "sleep 100", job_id=2))
    zygote = zygote_pid(runner)
    assert ppid_of(p1) == zygote and ppid_of(p2) == zygote
    assert ppid_of(zygote) == os.getpid()
    pids = await wait_for_pids(tmp_path, "shell")
    assert ppid_of(pids["shell"]) == p1
    assert runner.suspend(1, 1)
    await wait_for(lambda: proc_state(pids["shell"]) == "T", "the job to stop")
    assert proc_state(p1) != "T"
    assert runner.kill(1, 1) and runner.kill(2, 1)
    assert (await e1).killed and (await e2).killed
    assert zygote_pid(runner) == zygote  # one zygote for all


@pytest_twisted.ensureDeferred
async def test_the_compiled_zygote_is_the_standalone_executable_where_it_is_built(
    tmp_path: Path,
) -> None:
    require_native()
    made = JobRunner(reactor, reactor, log_dir=str(tmp_path / "logs"), launcher="zygote-native")
    try:
        _, ended = await start(made, request(tmp_path, "exit 4"))
        assert (await ended).exit_code == 4
        exe = Path(f"/proc/{zygote_pid(made)}/exe").resolve()
        assert exe == Path(launcher_module.ZYGOTE_EXECUTABLE).resolve()
    finally:
        await made.stop()


@pytest_twisted.ensureDeferred
async def test_a_suspend_and_a_kill_before_the_pid_is_known_are_carried_out(
    tmp_path: Path, runner: JobRunner
) -> None:
    # The files open at once (no pool here): start() returns with the request on its way to the
    # zygote and the shepherd's pid not known yet.
    ended: defer.Deferred[JobEnd] = defer.Deferred()
    started = runner.start(request(tmp_path, "echo $$ > shell; exec sleep 100"), ended.callback)
    assert not fired(started)
    assert runner.suspend(7, 1) is True
    pid = await started
    # Stopped maybe before it could write its pid: found as the shepherd's child.
    await wait_for(lambda: children_of(pid) != [], "the shell to start")
    [shell] = children_of(pid)
    await wait_for(lambda: proc_state(shell) == "T", "the job to stop")
    assert runner.resume(7, 1) is True
    pids = await wait_for_pids(tmp_path, "shell")
    assert pids["shell"] == shell
    await wait_for(lambda: proc_state(shell) in ("S", "R"), "the job to continue")
    assert runner.kill(7, 1)
    end = await ended.addTimeout(DEADLINE, reactor)
    assert end.killed and end.signal == signal.SIGTERM
    assert not alive(pid) and not alive(pids["shell"])

    ended2: defer.Deferred[JobEnd] = defer.Deferred()
    started2 = runner.start(request(tmp_path, "touch ran; sleep 100", job_id=8), ended2.callback)
    assert not fired(started2)
    assert runner.kill(8, 1) is True
    await started2
    end2 = await ended2.addTimeout(DEADLINE, reactor)
    assert end2.killed and end2.signal == signal.SIGTERM
    assert processes_in(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_the_end_carries_the_rusage_of_the_whole_tree(
    tmp_path: Path, runner: JobRunner
) -> None:
    # The CPU is burnt by a grandchild of the shell, reaped by the shepherd.
    burn = "sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done'"
    _, ended = await start(runner, request(tmp_path, f"{burn}; exit 3"))
    end = await ended
    assert end.exit_code == 3 and not end.lost
    assert end.cpu_user is not None and end.cpu_system is not None
    assert end.cpu_user + end.cpu_system > 0.05
    assert end.max_rss_kib is not None and end.max_rss_kib > 0


@pytest_twisted.ensureDeferred
async def test_a_zygote_that_dies_loses_its_jobs_and_the_next_start_gets_a_new_one(
    tmp_path: Path, runner: JobRunner
) -> None:
    _, e1 = await start(
        runner, request(tmp_path, "sleep 300 & echo $! > bg; echo $$ > shell; wait", job_id=1)
    )
    # One that ignores TERM and left the job's group: only a walk below the shepherd finds it.
    _, e2 = await start(
        runner,
        request(
            tmp_path,
            "setsid sh -c \"trap '' TERM; echo \\$\\$ > stubborn; "
            'while :; do sleep 0.05; done" & wait',
            job_id=2,
        ),
    )
    pids = await wait_for_pids(tmp_path, "bg", "shell", "stubborn")
    zygote = zygote_pid(runner)
    os.kill(zygote, signal.SIGKILL)
    ends = [await e1, await e2]
    for end in ends:
        assert end.lost and not end.killed
        assert end.exit_code is None and end.signal is None
        assert "zygote ended unexpectedly" in end.reason
    # Nothing of either job runs on, not even what ignores TERM, once they are reported: each
    # process is gone or has SIGKILL pending (it dies on its way back to user mode).
    assert [p for p in pids.values() if not dead_or_dying(p)] == []
    await wait_for(lambda: not any(alive(p) for p in pids.values()), "the jobs to be gone")
    assert runner.running() == []
    _, e3 = await start(runner, request(tmp_path, "exit 5", job_id=3))
    assert (await e3).exit_code == 5
    assert zygote_pid(runner) != zygote


@pytest_twisted.ensureDeferred
async def test_a_start_under_way_when_the_zygote_dies_runs_on_a_new_one(
    tmp_path: Path, runner: JobRunner
) -> None:
    _, e1 = await start(runner, request(tmp_path, "true", job_id=1))
    await e1
    zygote = zygote_pid(runner)
    os.kill(zygote, signal.SIGSTOP)
    ended: defer.Deferred[JobEnd] = defer.Deferred()
    started = runner.start(request(tmp_path, "echo ran >> runs; exit 6", job_id=2), ended.callback)
    os.kill(zygote, signal.SIGKILL)
    pid = await started
    assert pid > 0 and zygote_pid(runner) != zygote
    end = await ended.addTimeout(DEADLINE, reactor)
    assert end.exit_code == 6 and not end.lost
    assert (tmp_path / "runs").read_text() == "ran\n"


@pytest_twisted.ensureDeferred
async def test_stop_ends_the_zygote(tmp_path: Path, runner: JobRunner) -> None:
    _, ended = await start(runner, request(tmp_path, "true"))
    await ended
    zygote = zygote_pid(runner)
    await runner.stop().addTimeout(DEADLINE, reactor)
    assert not alive(zygote)


EXECUTOR = textwrap.dedent("""
    import sys
    from twisted.internet import reactor
    from tm.executor.runner import JobRunner, RunRequest
    runner = JobRunner(reactor, reactor, log_dir=sys.argv[1] + "/logs", launcher=sys.argv[2])
    command = "sleep 300 & echo $! > bg; sleep 300 & echo $! > bg2; echo $$ > shell; wait"
    def go():
        for job_id in (1, 2):
            runner.start(RunRequest(job_id=job_id, attempt=1, command=command,
                                    cwd=sys.argv[1] + "/" + str(job_id),
                                    env={"PATH": "/usr/bin:/bin"}), lambda end: None)
    reactor.callWhenRunning(go)
    reactor.run()
""")


@pytest.mark.parametrize("launcher", ["zygote-native", "zygote-python"])
def test_the_jobs_die_with_the_executor(tmp_path: Path, launcher: str) -> None:
    if launcher == "zygote-native":
        require_native()
    for job_id in (1, 2):
        (tmp_path / str(job_id)).mkdir()
    executor = subprocess.Popen([sys.executable, "-c", EXECUTOR, str(tmp_path), launcher], cwd=ROOT)
    try:

        def started() -> list[int] | None:
            assert executor.poll() is None, "the executor ended"
            found = [
                int(text)
                for text in (f.read_text().strip() for f in tmp_path.glob("[12]/*"))
                if text.isdigit()
            ]
            return found if len(found) >= 6 else None

        pids: list[int] = wait_until(started, 30, "the jobs to start", interval=0.02)
        assert all(alive(p) for p in pids)
    finally:
        executor.kill()
        executor.wait()

    def left() -> list[int]:
        # The jobs' processes, and their shepherds (working in the same directories), which
        # exit a moment after the last of their trees.
        return [p for p in pids if alive(p)] + [
            p for job_id in (1, 2) for p in processes_in(tmp_path / str(job_id))
        ]

    wait_until(lambda: not left(), DEADLINE, "the jobs and their shepherds to be gone", 0.02)
