"""Fault scenario 1 of reliability-notes §5: kill -9 of the dispatcher during a burst of
submissions from several clients. Every acknowledged submission runs exactly once.

At each of three moments chosen by a seeded RNG the dispatcher is frozen (SIGSTOP) until a
submission waits unread on one of its connections, then killed with SIGKILL and restarted:
so each kill really catches a submission in flight, whose answer never comes."""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import Installation, wait_until
from tests.helpers.restarts import freeze_dispatcher, kill_dispatcher, largest_unread

CLIENTS = 4
JOBS_PER_CLIENT = 30
KILLS = 3
SEED = 20261130
#: A SubmitJobs box carries the submitter's environment: far more than a heartbeat.
SUBMISSION_BYTES = 1500


def _jobs(inst: Installation) -> list[tuple]:
    """(id, uuid, command, state, attempt) of every job, read from the database itself."""
    return inst.sql("SELECT id, uuid, command, state, attempt FROM jobs ORDER BY id")


@pytest.fixture(params=["sqlite", "mariadb"])
def burst(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Installation]:
    """A running dispatcher on SQLite, or on a fresh MariaDB database."""
    url = request.getfixturevalue("mysql_url") if request.param == "mariadb" else None
    inst = Installation(tmp_path, database_url=url)
    try:
        inst.start_dispatcher()
        yield inst
    finally:
        inst.cleanup()


def test_kill_9_of_the_dispatcher_during_a_submission_burst_loses_and_doubles_nothing(
    burst: Installation,
) -> None:
    tm = burst
    ledger = tm.work / "ledger"
    tm.run("hConnect", "lswjobs", check=True)  # one TMS for every client, started once
    results: dict[str, tuple[int, str, str]] = {}
    done = Counter[str]()
    lock = threading.Lock()

    def client(number: int) -> None:
        for seq in range(JOBS_PER_CLIENT):
            token = f"c{number}s{seq}"
            r = tm.run(
                "hRunJob", f"echo $TM_JOB_ID $TM_ATTEMPT >> {ledger}; : {token}", timeout=150
            )
            with lock:
                results[token] = (r.returncode, r.stdout, r.stderr)
                done["submissions"] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    total = CLIENTS * JOBS_PER_CLIENT
    rng = random.Random(SEED)
    moments = sorted(rng.sample(range(total // 10, total * 8 // 10), KILLS))
    try:
        for moment in moments:
            wait_until(
                lambda moment=moment: done["submissions"] >= moment, 120, f"{moment} submissions"
            )
            freeze_dispatcher(tm)
            wait_until(
                lambda: largest_unread(tm.port) >= SUBMISSION_BYTES,
                60,
                "a submission to reach the frozen dispatcher",
            )
            kill_dispatcher(tm)
            tm.start_dispatcher()  # waits for its readiness
    finally:
        for t in threads:
            t.join(300)
    assert not any(t.is_alive() for t in threads)

    failed = {token: r for token, r in results.items() if r[0] != 0}
    assert not failed, failed
    acknowledged: dict[str, int] = {}
    for token, (_, out, _) in results.items():
        match = re.fullmatch(r"Job \[(\d+)\] has been submitted to TaskDispatcher\.\n", out)
        assert match, (token, out)
        acknowledged[token] = int(match.group(1))
    assert len(acknowledged) == total

    jobs = _jobs(tm)
    by_token: dict[str, list[int]] = {}
    for job_id, _, command, _, _ in jobs:
        by_token.setdefault(command.rsplit(": ", 1)[-1], []).append(job_id)
    # Every acknowledged submission is exactly the one job it was told; nothing extra.
    assert {t: ids for t, ids in by_token.items() if len(ids) != 1} == {}
    assert {t: ids[0] for t, ids in by_token.items()} == acknowledged
    assert len({uuid for _, uuid, _, _, _ in jobs}) == len(jobs) == total

    def drained() -> bool:
        return all(state in ("finished", "failed", "killed") for _, _, _, state, _ in _jobs(tm))

    wait_until(drained, 180, "the queue to drain")
    states = Counter(state for _, _, _, state, _ in _jobs(tm))
    assert states == {"finished": total}, states
    lines = Path(ledger).read_text().split("\n")[:-1]
    runs = Counter(int(line.split()[0]) for line in lines)
    assert sorted(runs) == sorted(acknowledged.values())
    assert set(runs.values()) == {1}, [job for job, n in runs.items() if n > 1]
    assert {line.split()[1] for line in lines} == {"1"}
    assert {attempt for _, _, _, _, attempt in _jobs(tm)} == {1}


def test_hrunjob_sends_again_through_a_new_tms_when_its_tms_dies_before_answering(
    installation: Installation,
) -> None:
    import os
    import signal
    import subprocess

    ledger = installation.work / "ledger"
    installation.run("hConnect", "lswjobs", check=True)
    old_tms = int((installation.home / ".taskmanager" / "tms.pid").read_text())
    freeze_dispatcher(installation)
    try:
        client = subprocess.Popen(
            ["hRunJob", f"echo $TM_JOB_ID $TM_ATTEMPT >> {ledger}"],
            env=installation.env,
            cwd=installation.work,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # The TMS has passed the submission on; the dispatcher has not read it yet.
        wait_until(
            lambda: largest_unread(installation.port) >= SUBMISSION_BYTES,
            60,
            "the submission to reach the frozen dispatcher",
        )
        os.kill(old_tms, signal.SIGKILL)
    finally:
        assert installation.dispatcher is not None
        os.killpg(installation.dispatcher.pid, signal.SIGCONT)
    # The dispatcher now stores the dead TMS's copy; hRunJob's copy, sent again through a
    # new TMS with the same UUID, is answered with the same job.
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0 and err == "", err
    match = re.fullmatch(r"Job \[(\d+)\] has been submitted to TaskDispatcher\.\n", out)
    assert match, out
    jobs = _jobs(installation)
    assert [job_id for job_id, *_ in jobs] == [int(match.group(1))]
    wait_until(lambda: ledger.exists() and ledger.read_text(), 60, "the job to run")
    wait_until(lambda: _jobs(installation)[0][3] == "finished", 60, "the job to finish")
    assert ledger.read_text() == f"{match.group(1)} 1\n"
