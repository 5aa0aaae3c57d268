"""Issue 11, points 3 and 7, through the real CLI: retries (``hRunJob --retries N
--retry-on-exit CODES``, lost jobs requeued as the dispatcher's ``--lost-retries`` says),
``hConnect resubmit:...`` and ``hRunJob --on-end CMD`` -- on SQLite and MariaDB (with
$TM_TEST_MYSQL_URL).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.helpers.cli import lajob, submit, submit_file, tms, wait_state
from tests.helpers.processes import (
    Installation,
    InstallationWithEnv,
    alive,
    executor_pid,
    wait_until,
)

#: A callback that hangs is stopped after this many seconds (the TMS reads it at its start).
CALLBACK_TIMEOUT = "30"
MARK = "tm-mark-0123"


@pytest.fixture(params=["sqlite", "mysql"])
def inst(request: pytest.FixtureRequest, tmp_path: Path) -> InstallationWithEnv:
    """An installation on SQLite or MariaDB; its user's environment holds MARK."""
    url = request.getfixturevalue("mysql_url") if request.param == "mysql" else None
    made = InstallationWithEnv(
        tmp_path,
        database_url=url,
        extra_env={"TM_ON_END_TIMEOUT": CALLBACK_TIMEOUT, "TM_TEST_MARK": MARK},
    )
    request.addfinalizer(made.cleanup)
    made.start_dispatcher()
    return made


@pytest.fixture(params=["sqlite", "mysql"])
def leased(request: pytest.FixtureRequest, tmp_path: Path) -> Installation:
    """As ``inst``, with executors on a short lease (3 s): a killed executor's jobs are lost
    soon."""
    url = request.getfixturevalue("mysql_url") if request.param == "mysql" else None
    made = Installation(tmp_path, database_url=url)
    request.addfinalizer(made.cleanup)
    made.start_dispatcher("--executor-lease", "3")
    return made


def tms_log(inst: Installation) -> str:
    path = inst.home / ".taskmanager" / "logs" / "tms.log"
    return path.read_text() if path.exists() else ""


def one_line_refusal(inst: Installation, *argv: str) -> str:
    result = inst.run(*argv)
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- retries --------------------------------------------------------------------------------


def test_a_listed_exit_code_is_retried_and_the_ending_counts_the_attempts(
    inst: InstallationWithEnv,
) -> None:
    job = submit(inst, "--retries", "2", "--retry-on-exit", "3", "echo x >> attempts; exit 3")
    info = wait_state(inst, job, "failed", timeout=120)
    assert (inst.work / "attempts").read_text() == "x\nx\nx\n"
    assert info.reason.endswith("code 3 after 3 attempts"), info.reason
    assert info.fields["exit code"] == "3"
    assert info.attempt == 3
    # Every attempt is in the history: two requeues, then the ending.
    requeues = [h for h in info.history if h.state == "waiting" and "retried" in h.reason]
    assert [h.attempt for h in requeues] == [2, 3], info.text
    assert "retries:" in info.text and "on exit: 3" in info.text


def test_an_exit_code_not_listed_and_a_success_are_not_retried(inst: InstallationWithEnv) -> None:
    other = submit(inst, "--retries", "3", "--retry-on-exit", "3-5", "echo x >> other; exit 6")
    fine = submit(inst, "--retries", "3", "echo y >> fine")
    assert wait_state(inst, other, "failed", timeout=60).reason.endswith("code 6")
    assert "attempts" not in wait_state(inst, fine, "finished", timeout=60).reason
    assert (inst.work / "other").read_text() == "x\n"
    assert (inst.work / "fine").read_text() == "y\n"


def test_bad_retry_options_are_refused_in_one_line_and_nothing_is_submitted(
    inst: InstallationWithEnv,
) -> None:
    for argv, words in (
        (["--retries", "-1"], "--retries"),
        (["--retries", "x"], "--retries"),
        (["--retries", "1", "--retry-on-exit", "x"], "--retry-on-exit"),
        (["--retries", "1", "--retry-on-exit", "7-5"], "--retry-on-exit"),
        (["--retry-on-exit", "3"], "needs --retries"),
    ):
        assert words in one_line_refusal(inst, "hRunJob", *argv, "true")
    assert inst.sql("SELECT COUNT(*) FROM jobs") == [(0,)]


def test_a_lost_job_is_requeued_once_by_default_then_ends_failed(leased: Installation) -> None:
    job = submit(leased, "echo start >> runs; sleep 600")
    for attempt in (1, 2):
        wait_until(
            lambda a=attempt: (
                (leased.work / "runs").exists()
                and (leased.work / "runs").read_text().count("start") == a
                and lajob(leased, job).state == "running"
            ),
            60,
            f"attempt {attempt} to run",
        )
        pid = executor_pid(leased)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda p=pid: not alive(p), 10, "the executor to die")
    info = wait_state(leased, job, "failed", timeout=60)
    assert re.search(r"lost: .* after 2 attempts", info.reason), info.reason
    lost = [h for h in info.history if h.state == "lost"]
    assert [h.attempt for h in lost] == [1, 2], info.text
    assert (leased.work / "runs").read_text() == "start\nstart\n"


# --- resubmit -------------------------------------------------------------------------------


def test_resubmit_copies_ended_jobs_that_then_run(inst: InstallationWithEnv) -> None:
    work = inst.work
    gate = "test -e ok"
    one = submit(inst, "-g", "sweep", f"echo $TM_TEST_MARK >> seen; {gate}")
    two = submit(inst, "-g", "sweep", f"{gate}")
    good = submit(inst, "-g", "sweep", "true")
    for job in (one, two):
        wait_state(inst, job, "failed", timeout=60)
    wait_state(inst, good, "finished", timeout=60)
    (work / "ok").write_text("")

    out = tms(inst, f"resubmit:{one}")
    match = re.fullmatch(rf"job {one} resubmitted as job (\d+)", out)
    assert match, out
    copy = int(match.group(1))
    info = wait_state(inst, copy, "finished", timeout=60)
    assert info.fields["command"] == lajob(inst, one).fields["command"]
    assert info.fields["group"] == "sweep"
    # The copy ran with the submission's environment, re-signed by the TMS.
    assert (work / "seen").read_text() == f"{MARK}\n{MARK}\n"

    out = tms(inst, "resubmit:group:sweep:failed")
    lines = out.splitlines()
    assert lines[0] == "2 job(s) of group sweep resubmitted", out
    pairs = [re.fullmatch(r"job (\d+) resubmitted as job (\d+)", x) for x in lines[1:]]
    assert all(pairs), out
    assert [int(m.group(1)) for m in pairs if m] == [one, two]
    for job in [int(m.group(2)) for m in pairs if m]:
        wait_state(inst, job, "finished", timeout=60)


def test_resubmit_refuses_in_one_line(inst: InstallationWithEnv) -> None:
    waiting_job = submit(inst, "-g", "later", "sleep 600")
    line = one_line_refusal(inst, "hConnect", f"resubmit:{waiting_job}")
    assert "has not ended" in line
    assert "unknown job" in one_line_refusal(inst, "hConnect", "resubmit:999999")
    assert "has no ended jobs" in one_line_refusal(inst, "hConnect", "resubmit:group:later")
    assert "no unsuccessful" in one_line_refusal(inst, "hConnect", "resubmit:group:none:failed")
    assert "not a job id" in one_line_refusal(inst, "hConnect", "resubmit:x")
    tms(inst, f"killjob:{waiting_job}")
    assert inst.sql("SELECT COUNT(*) FROM jobs") == [(1,)]


# --- on-end callbacks ------------------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_an_on_end_callback_sees_how_the_job_ended(inst: InstallationWithEnv) -> None:
    callback = "env | grep ^TM_JOB_ > .e.$TM_JOB_ID && mv .e.$TM_JOB_ID ended.$TM_JOB_ID"
    job = submit(inst, "-g", "cb", "--on-end", callback, "sleep 0.2; exit 4")
    path = inst.work / f"ended.{job}"
    wait_until(path.exists, 90, "the callback to run")
    env = read_env_file(path)
    assert env["TM_JOB_ID"] == str(job)
    assert env["TM_JOB_GROUP"] == "cb"
    assert env["TM_JOB_STATE"] == "failed"
    assert env["TM_JOB_EXIT_CODE"] == "4"
    assert env["TM_JOB_SIGNAL"] == ""
    assert float(env["TM_JOB_RUN_TIME"]) >= 0.0
    # Run once: the flag is set in the database.
    wait_until(
        lambda: inst.sql("SELECT on_end_done FROM jobs WHERE id = ?", (job,)) == [(1,)],
        30,
        "the callback to be recorded as run",
    )
    assert "on end:" in lajob(inst, job).text


def test_resubmitting_a_failed_chain_reruns_it_in_order(inst: InstallationWithEnv) -> None:
    first = submit(inst, "-g", "chain", "test -e ok")
    second = submit(inst, "-g", "chain", "--after", str(first), "echo second > second.txt")
    wait_state(inst, second, "cancelled", timeout=60)
    assert lajob(inst, first).state == "failed"
    (inst.work / "ok").write_text("")
    out = tms(inst, "resubmit:group:chain:failed")
    copies = [int(n) for n in re.findall(r"resubmitted as job (\d+)", out)]
    assert len(copies) == 2, out
    # The copy of the second job waits for the copy of the first, not for the failed one.
    assert f"after (finished): {copies[0]}" in lajob(inst, copies[1]).text
    wait_state(inst, copies[1], "finished", timeout=60)
    assert (inst.work / "second.txt").read_text() == "second\n"


def test_the_callback_of_the_job_that_ends_its_group_is_told_so_once(
    inst: InstallationWithEnv,
) -> None:
    # Four jobs of one group in one submission (the group has its size from the start); they
    # end in any order, some together.
    callback = "env | grep ^TM_ > .e.$TM_JOB_ID && mv .e.$TM_JOB_ID ended.$TM_JOB_ID"
    lines = ["command::true"] * 3 + ["command::exit 2"]
    jobs = submit_file(
        inst,
        inst.work / "jobs.txt",
        "-g",
        "sweep",
        "--on-end",
        callback,
        content="\n".join(lines) + "\n",
    )
    paths = [inst.work / f"ended.{job}" for job in jobs]
    wait_until(lambda: all(p.exists() for p in paths), 90, "every callback to run")
    envs = [read_env_file(p) for p in paths]
    told = [env for env in envs if env["TM_GROUP_ENDED"] == "1"]
    assert len(told) == 1, [env["TM_GROUP_ENDED"] for env in envs]
    assert told[0]["TM_GROUP_COUNTS"] == "failed=1 finished=3"
    assert all(env["TM_JOB_GROUP"] == "sweep" for env in envs)
    assert all(env["TM_GROUP_ENDED"] == "0" for env in envs if env is not told[0])


def test_a_failing_or_hanging_callback_does_not_block_the_next(inst: InstallationWithEnv) -> None:
    hang = submit(inst, "--on-end", "touch hanging.$TM_JOB_ID; exec sleep 600", "true")
    wait_until((inst.work / f"hanging.{hang}").exists, 90, "the hanging callback to start")
    fail = submit(inst, "--on-end", "echo oops-$TM_JOB_ID; exit 7", "true")
    ok = submit(inst, "--on-end", "touch done.$TM_JOB_ID", "true")
    wait_until((inst.work / f"done.{ok}").exists, 90, "the next callback to run")
    wait_until(
        lambda: f"on-end callback of job {fail} failed (exit code 7): oops-{fail}" in tms_log(inst),
        30,
        "the failing callback's line in the TMS's log",
    )
    # The hanging one is stopped at its timeout, with a line in the log.
    wait_until(
        lambda: (
            f"on-end callback of job {hang} failed (stopped after {CALLBACK_TIMEOUT} s)"
            in tms_log(inst)
        ),
        90,
        "the hanging callback to be stopped",
    )


def test_a_callback_whose_job_ended_while_no_tms_ran_runs_at_the_tms_s_next_start(
    inst: InstallationWithEnv,
) -> None:
    job = submit(
        inst, "--on-end", "touch ended.$TM_JOB_ID", "while [ ! -e go ]; do sleep 0.05; done"
    )
    wait_until(lambda: lajob(inst, job).state == "running", 60, "the job to run")
    assert tms(inst, "shutdown") == "terminating TMS ..."
    wait_until(
        lambda: not (inst.home / ".taskmanager" / "tms.json").exists(), 30, "the TMS to stop"
    )
    (inst.work / "go").write_text("")
    wait_until(
        lambda: lajob(inst, job, via_dispatcher=True).state == "finished", 60, "the job to end"
    )
    assert not (inst.work / f"ended.{job}").exists()
    tms(inst, "ping")  # starts the TMS again, which asks for pending callbacks
    wait_until((inst.work / f"ended.{job}").exists, 60, "the pending callback to run")
