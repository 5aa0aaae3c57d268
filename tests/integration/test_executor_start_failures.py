"""A job that cannot start ends ``failed`` once, with the reason, and the executor carries on.

Through the real CLI: a job whose ``-o`` or ``-l`` file cannot be opened on the executor host
(its directory is a regular file) is submitted with ``hRunJob -f``. The executor must answer the
start order with the declared ``JobStartFailed`` (not drop its link), so that the dispatcher ends
the job once instead of placing it again and again. A NUL byte, which ``spawnProcess`` refuses
(the storm of issue 8), is refused at submission in one line; the executor's own check of it is
covered by tests/unit/test_executor_service.py.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import lajob, submit_file
from tests.helpers.native import require_native
from tests.helpers.processes import (
    Installation,
    alive,
    executor_pid,
    processes_mentioning,
    wait_until,
)


@pytest.fixture(autouse=True)
def no_stray_executors(tmp_path: Path) -> Iterator[None]:
    """Safety net: a failing run may leave many executors (one per dropped link) behind,
    beyond the one in the pid file that the installation's cleanup ends."""
    yield
    for pid in processes_mentioning(str(tmp_path)):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def ended_state(tm: Installation, job_id: int) -> str | None:
    state = lajob(tm, job_id).state
    return state if state not in ("waiting", "pending", "running") else None


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"command::echo a > ran.txt\tstdout::afile/out.txt\n", "afile/out.txt"),
        (b"command::echo a > ran.txt\tlogfile::afile/job.log\n", "afile/job.log"),
    ],
)
def test_a_job_that_cannot_start_fails_once_and_the_executor_carries_on(
    installation: Installation, line: bytes, reason: str
) -> None:
    # A normal job first: the executor is up, and its pid is known.
    (first,) = submit_file(
        installation, installation.work / "ok1.txt", content=b"command::echo first > first.txt\n"
    )
    wait_until(lambda: ended_state(installation, first), 60, "the first job to end")
    assert lajob(installation, first).state == "finished"
    pid = executor_pid(installation)

    (installation.work / "afile").write_text("a regular file, not a directory\n")
    (bad,) = submit_file(installation, installation.work / "bad.txt", content=line)
    assert wait_until(lambda: ended_state(installation, bad), 60, "the bad job to end") == "failed"
    job = lajob(installation, bad)
    assert reason in job.reason, job.text
    rows = job.history
    assert sum(" pending " in f" {row} " for row in rows) == 1, job.text
    assert sum(" failed " in f" {row} " for row in rows) == 1, job.text
    assert not (installation.work / "ran.txt").exists()

    # The same executor, still linked, runs the next job.
    (after,) = submit_file(
        installation, installation.work / "ok2.txt", content=b"command::echo after > after.txt\n"
    )
    assert (
        wait_until(lambda: ended_state(installation, after), 60, "the next job to end")
        == "finished"
    )
    assert (installation.work / "after.txt").read_text() == "after\n"
    assert executor_pid(installation) == pid and alive(pid)
    # Its link never dropped: the dispatcher saw one executor login.
    logins = re.findall(r"authenticated as tmms from", installation.dispatcher_log.read_text())
    assert len(logins) == 1, installation.dispatcher_log.read_text()[-4000:]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"command::echo a\0b > ran.txt\n", "the command contains a NUL byte"),
        (b"command::echo a > ran.txt\tstdout::o\0ut.txt\n", "path contains a NUL byte"),
    ],
)
def test_a_nul_byte_is_refused_at_submission_in_one_line(
    installation: Installation, line: bytes, words: str
) -> None:
    (installation.work / "bad.txt").write_bytes(line)
    result = installation.run("hRunJob", "-f", "bad.txt")
    assert result.returncode != 0
    assert words in result.stderr and "nothing was submitted" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert installation.run("hConnect", "lswjobs", check=True).stdout.count("echo a") == 0
    assert not (installation.work / "ran.txt").exists()


@pytest.mark.parametrize("shepherd", ["native", "python"])
def test_the_shepherd_opens_the_files_and_a_failure_is_the_start_s_reason(
    make_installation: Callable[..., Installation], shepherd: str
) -> None:
    # The job's shepherd opens its files after the zygote's fork (both implementations): what
    # it cannot open fails the start with the same one line as before, and the executor (its
    # zygote too) carries on; an empty stderr file made for a job is removed at its end.
    if shepherd == "native":
        require_native()
    inst = make_installation(env={"TM_EXECUTOR_SHEPHERD": shepherd})
    (inst.work / "adir").mkdir()
    (inst.work / "afile").write_text("")
    lines = {
        "dir": "command::echo a > ran.txt\tstdout::adir\n",
        "err": "command::echo a > ran.txt\tstderr::afile/e.txt\n",
        "ok": "command::echo quiet > quiet.txt\tstdout::ok.out\tstderr::ok.err\n",
    }
    reasons = {
        "dir": f"cannot write stdout file {inst.work / 'adir'}: Is a directory",
        "err": f"cannot write stderr file {inst.work / 'afile' / 'e.txt'}: Not a directory",
    }
    for name, line in lines.items():
        (job,) = submit_file(inst, inst.work / f"{name}.txt", content=line.encode())
        state = wait_until(lambda job=job: ended_state(inst, job), 60, f"the {name} job to end")
        if name == "ok":
            assert state == "finished"
        else:
            assert state == "failed" and reasons[name] in lajob(inst, job).reason
    assert not (inst.work / "ran.txt").exists()
    assert (inst.work / "quiet.txt").read_text() == "quiet\n"
    assert (inst.work / "ok.out").exists() and not (inst.work / "ok.err").exists()
