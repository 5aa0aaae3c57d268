"""Faults between the dispatcher and the executors: a dispatcher restart under running jobs,
an executor that dies, and an executor that hangs. A job is never lost and never runs twice
at once."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers.cli import field, submit
from tests.helpers.processes import Installation, alive, executor_pid, wait_until

#: The lease of the tests that restart the dispatcher: a restart must fit in half of it (the
#: others run with the short lease of the ``leased_installation`` fixture, tests/integration/conftest.py).
RESTART_LEASE = "30"
#: A job's shell waits here until the test creates ``go`` in its directory: it ends when the
#: test needs it to, not after a sleep that a loaded machine may outlast.
GATE = "while [ ! -e go ]; do sleep 0.05; done"


restart_lease = pytest.mark.parametrize("leased_installation", [RESTART_LEASE], indirect=True)


@restart_lease
def test_a_job_that_ends_while_the_dispatcher_is_down_is_reported_when_it_is_back(
    leased_installation: Installation,
) -> None:
    job = submit(leased_installation, f"echo start >> runs; {GATE}; echo done > end.txt")
    wait_until(lambda: field(leased_installation, job, "state") == "running", 30, "the job to run")
    leased_installation.stop_dispatcher()
    (
        leased_installation.work / "go"
    ).touch()  # it ends during the outage, whatever the machine's speed
    wait_until(
        lambda: (leased_installation.work / "end.txt").exists(),
        30,
        "the job to end during the outage",
    )
    leased_installation.start_dispatcher("--executor-lease", leased_installation.lease)
    back = time.time()  # the dispatcher is up again (it took seconds to start)
    wait_until(
        lambda: field(leased_installation, job, "state") == "finished",
        60,
        "the executor to reconnect and report the end",
    )
    assert field(leased_installation, job, "exit code") == "0"
    assert (leased_installation.work / "runs").read_text() == "start\n"  # ran once, not requeued
    # Recorded at the executor's own end time, not at the reconnection.
    con = sqlite3.connect(
        f"file:{leased_installation.var / 'taskmanager.sqlite'}?mode=ro", uri=True
    )
    try:
        (ended_at,) = con.execute("SELECT ended_at FROM jobs WHERE id = ?", (job,)).fetchone()
        (at,) = con.execute(
            "SELECT at FROM job_history WHERE job_id = ? AND state = 'finished'", (job,)
        ).fetchone()
    finally:
        con.close()
    wrote_end = (leased_installation.work / "end.txt").stat().st_mtime
    assert wrote_end - 1 <= ended_at < back and at == ended_at, (wrote_end, ended_at, back)


@restart_lease
def test_a_job_still_running_after_a_dispatcher_restart_keeps_running(
    leased_installation: Installation,
) -> None:
    job = submit(leased_installation, f"echo start >> runs; {GATE}; echo done > end.txt")
    wait_until(lambda: field(leased_installation, job, "state") == "running", 30, "the job to run")
    leased_installation.stop_dispatcher()
    leased_installation.start_dispatcher("--executor-lease", leased_installation.lease)
    assert not (leased_installation.work / "end.txt").exists()  # it ran through the restart
    (leased_installation.work / "go").touch()
    # Longer than the lease: the executor is back, its heartbeats show the job, nothing is lost.
    wait_until(lambda: (leased_installation.work / "end.txt").exists(), 30, "the job to end")
    wait_until(
        lambda: field(leased_installation, job, "state") == "finished", 30, "the end to be reported"
    )
    assert (leased_installation.work / "runs").read_text() == "start\n"
    assert "lost" not in leased_installation.run("hConnect", f"lajob:{job}", check=True).stdout


def test_a_dead_executor_s_job_is_requeued_after_the_lease_and_runs_again(
    leased_installation: Installation,
) -> None:
    # The first attempt runs until its executor dies, whatever the machine's speed.
    job = submit(
        leased_installation,
        "if [ -e runs ]; then echo again >> runs; else echo start >> runs; sleep 120; fi",
    )
    wait_until(lambda: field(leased_installation, job, "state") == "running", 30, "the job to run")
    pid = executor_pid(leased_installation)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, "the executor to die")
    # After the lease the job is lost and requeued; a new executor starts and runs it again.
    wait_until(
        lambda: field(leased_installation, job, "state") == "finished",
        60,
        "the job's second attempt to end",
    )
    history = leased_installation.run("hConnect", f"lajob:{job}", check=True).stdout
    assert re.search(r"lost\s+attempt 1.*did not come back within 3 s", history), history
    assert re.search(r"finished\s+attempt 2", history), history
    assert (leased_installation.work / "runs").read_text() == "start\nagain\n"


def test_the_jobs_of_an_executor_that_dies_die_with_it(leased_installation: Installation) -> None:
    job = submit(leased_installation, "sleep 300 & echo $! > bg.pid; echo $$ > shell.pid; wait")
    wait_until(
        lambda: (
            (leased_installation.work / "bg.pid").exists()
            and (leased_installation.work / "shell.pid").exists()
            and (leased_installation.work / "bg.pid").read_text().strip()
        ),
        30,
        "the job to start",
    )
    pids = [int((leased_installation.work / name).read_text()) for name in ("bg.pid", "shell.pid")]
    executor = executor_pid(leased_installation)
    os.kill(executor, signal.SIGKILL)
    wait_until(
        lambda: not any(alive(p) for p in pids), 15, "the job's processes to go with their executor"
    )
    leased_installation.run("hConnect", f"killjob:{job}", check=True)


def test_a_hung_executor_is_dropped_and_its_stale_copy_killed_when_it_wakes(
    leased_installation: Installation,
) -> None:
    # The first attempt runs long, the second briefly.
    job = submit(
        leased_installation,
        "if [ -e shells ]; then echo $$ >> shells; sleep 1; else echo $$ >> shells; sleep 120; fi",
    )
    wait_until(lambda: field(leased_installation, job, "state") == "running", 30, "the job to run")
    executor = executor_pid(leased_installation)
    os.kill(executor, signal.SIGSTOP)
    try:
        # Silent for a lease: dropped; not back within another: the job is requeued.
        wait_until(
            lambda: "attempt 2" in leased_installation.run("hConnect", f"lajob:{job}").stdout,
            60,
            "the job to be requeued",
        )
    finally:
        os.kill(executor, signal.SIGCONT)
    wait_until(
        lambda: field(leased_installation, job, "state") == "finished",
        60,
        "the second attempt to end",
    )
    history = leased_installation.run("hConnect", f"lajob:{job}", check=True).stdout
    assert re.search(r"lost\s+attempt 1", history), history
    first = int((leased_installation.work / "shells").read_text().split()[0])
    # The woken executor's heartbeat shows attempt 1, which is not expected there: killed.
    wait_until(lambda: not alive(first), 30, "the stale first copy to be killed")


def test_an_executor_cut_off_from_the_dispatcher_stops_its_jobs_which_then_run_again(
    leased_installation: Installation,
) -> None:
    job = submit(
        leased_installation,
        "if [ -e shells ]; then echo $$ >> shells; sleep 1; else echo $$ >> shells; sleep 120; fi",
    )
    wait_until(lambda: field(leased_installation, job, "state") == "running", 30, "the job to run")
    first = int((leased_installation.work / "shells").read_text().split()[0])
    os.kill(leased_installation.dispatcher.pid, signal.SIGSTOP)  # connected, but never answers
    try:
        # Half the lease (1.5 s) without an answer: the executor stops the job by itself.
        wait_until(lambda: not alive(first), 30, "the executor to stop the job")
    finally:
        os.kill(leased_installation.dispatcher.pid, signal.SIGCONT)
    wait_until(
        lambda: field(leased_installation, job, "state") == "finished",
        60,
        "the job to run again and end",
    )
    history = leased_installation.run("hConnect", f"lajob:{job}", check=True).stdout
    assert re.search(r"lost\s+attempt 1", history), history
    assert re.search(r"finished\s+attempt 2", history), history
    assert len((leased_installation.work / "shells").read_text().split()) == 2


def usage_of(tm: Installation) -> float:
    out = tm.run("hConnect", "-T", "lsusers", check=True).stdout
    return float(re.search(r"usage (\d+) slot-s", out).group(1))


@restart_lease
def test_fair_share_usage_survives_a_dispatcher_restart(leased_installation: Installation) -> None:
    leased_installation.run("hRunJob", "--wait", "-c", "2", "sleep 3", check=True)
    before = usage_of(leased_installation)
    assert before >= 5  # 2 slots for about 3 s
    leased_installation.stop_dispatcher()
    leased_installation.start_dispatcher("--executor-lease", leased_installation.lease)
    after = usage_of(leased_installation)
    assert before - 1 <= after <= before  # decays over a day, not to zero


def test_while_the_database_is_away_submissions_are_refused_and_job_ends_are_kept(
    tmp_path: Path, mysql_url: str
) -> None:
    from tests.helpers.tcpproxy import TcpProxy
    from tm.db.store import parse_url

    real = parse_url(mysql_url)
    proxy = TcpProxy((real.host, real.port))
    through_proxy = mysql_url.replace(f"@{real.host}:{real.port}/", f"@127.0.0.1:{proxy.port}/")
    assert through_proxy != mysql_url
    inst = Installation(tmp_path, database_url=through_proxy)
    try:
        inst.start_dispatcher("--executor-lease", RESTART_LEASE)
        job = submit(inst, f"echo start >> runs; {GATE}; echo done > end.txt")
        wait_until(lambda: field(inst, job, "state") == "running", 30, "the job to run")

        proxy.cut()
        (inst.work / "go").touch()  # it ends while the database is away
        refused = inst.run("hRunJob", "true")
        assert refused.returncode != 0
        assert "database" in refused.stderr and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        # The job is untouched and ends while the database is away; its end is kept.
        wait_until(lambda: (inst.work / "end.txt").exists(), 30, "the job to end")
        log = inst.dispatcher_log
        wait_until(
            lambda: "the database is unavailable" in log.read_text(), 30, "the dispatcher to notice"
        )

        proxy.restore()
        wait_until(
            lambda: field(inst, job, "state") == "finished", 60, "the kept end to be written"
        )
        # The dispatcher answers from memory, so "finished" may be seen a moment before the
        # kept change is committed and the writer says so.
        wait_until(
            lambda: "the database is back" in log.read_text(), 60, "the kept changes to be written"
        )
        # What was written is what happened: after a restart the job is still finished, once.
        inst.stop_dispatcher()
        inst.start_dispatcher("--executor-lease", RESTART_LEASE)
        assert field(inst, job, "state") == "finished"
        assert field(inst, job, "exit code") == "0"
        assert (inst.work / "runs").read_text() == "start\n"
        assert submit(inst, "true") > job  # submissions work again
    finally:
        inst.cleanup()
        proxy.close()


def test_an_end_is_acknowledged_only_once_written_so_a_crash_in_between_loses_nothing(
    tmp_path: Path, mysql_url: str
) -> None:
    from tests.helpers.tcpproxy import TcpProxy
    from tm.db.store import parse_url

    real = parse_url(mysql_url)
    proxy = TcpProxy((real.host, real.port))
    inst = Installation(
        tmp_path,
        database_url=mysql_url.replace(f"@{real.host}:{real.port}/", f"@127.0.0.1:{proxy.port}/"),
    )
    try:
        inst.start_dispatcher("--executor-lease", RESTART_LEASE)
        job = submit(inst, f"echo start >> runs; {GATE}; echo done > end.txt")
        wait_until(lambda: field(inst, job, "state") == "running", 30, "the job to run")
        proxy.cut()
        (inst.work / "go").touch()  # it ends while the database is away
        wait_until(lambda: (inst.work / "end.txt").exists(), 30, "the job to end")
        wait_until(
            lambda: "the database is unavailable" in inst.dispatcher_log.read_text(),
            30,
            "the end to be held back",
        )
        # The dispatcher dies with the end unwritten: the executor must still have it.
        assert inst.dispatcher is not None
        os.killpg(inst.dispatcher.pid, signal.SIGKILL)
        inst.dispatcher.wait()
        proxy.restore()
        inst.start_dispatcher("--executor-lease", RESTART_LEASE)
        wait_until(
            lambda: field(inst, job, "state") == "finished",
            60,
            "the executor to report the end again",
        )
        history = inst.run("hConnect", f"lajob:{job}", check=True).stdout
        assert "lost" not in history, history
        assert (inst.work / "runs").read_text() == "start\n"  # not run a second time
    finally:
        inst.cleanup()
        proxy.close()
