"""Issue 11, points 2 and 6, through the real CLI: time limits and resource use.

``hRunJob --time-limit`` stops the job's whole tree on its host (TERM, then KILL after the
executor's grace, made short here with ``$TM_EXECUTOR_KILL_GRACE``) and the job ends
``timeout``, even across a dispatcher restart; each ended job shows the CPU time, the peak
memory and the run time of its tree, as its shepherd reaped them. Every test runs with the
compiled shepherd and with the Python one (``$TM_EXECUTOR_SHEPHERD``), on SQLite and on
MariaDB (``$TM_TEST_MYSQL_URL``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import lajob, submit, tms, wait_state
from tests.helpers.native import require_native
from tests.helpers.processes import (
    Installation,
    InstallationWithEnv,
    processes_mentioning,
    wait_until,
)
from tests.helpers.restarts import kill_dispatcher

GRACE = "1"


def _installation(request: pytest.FixtureRequest, tmp_path: Path) -> InstallationWithEnv:
    shepherd, database = request.param.split("-")
    if shepherd == "native":
        require_native()
    url = request.getfixturevalue("mysql_url") if database == "mysql" else None
    env = {"TM_EXECUTOR_SHEPHERD": shepherd, "TM_EXECUTOR_KILL_GRACE": GRACE}
    inst = InstallationWithEnv(tmp_path, database_url=url, extra_env=env)
    request.addfinalizer(inst.cleanup)
    inst.start_dispatcher()
    return inst


@pytest.fixture(params=["native-sqlite", "python-sqlite", "native-mysql", "python-mysql"])
def every(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InstallationWithEnv]:
    """Each shepherd on each database."""
    yield _installation(request, tmp_path)


@pytest.fixture(params=["native-sqlite", "python-mysql"])
def each(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InstallationWithEnv]:
    """Each shepherd, and each database, once."""
    yield _installation(request, tmp_path)


def marker() -> str:
    """A sleep argument no other process has: ``sleep 100.<digits>`` runs 100 s and names the
    job's processes in /proc."""
    return f"100.{uuid.uuid4().int % 10**9:09d}"


def sleeps(mark: str) -> list[int]:
    """The live ``sleep MARK`` processes (not the shells whose command line names them)."""
    return [pid for pid in processes_mentioning(mark) if _argv(pid) == ["sleep", mark]]


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except OSError:
        return []


def usage_of(inst: InstallationWithEnv, job_id: int) -> tuple[float, int, float]:
    """The job's stored cpu seconds, peak memory (KiB) and run time."""
    [(cpu, rss, run)] = inst.sql(
        "SELECT cpu_time, max_rss_kib, run_time FROM jobs WHERE id = ?", (job_id,)
    )
    assert cpu is not None and rss is not None and run is not None
    return float(cpu), int(rss), float(run)


def test_the_whole_tree_is_stopped_at_the_limit(every: InstallationWithEnv) -> None:
    inst = every
    mark = marker()
    job = submit(inst, "--time-limit", "2s", f"sh -c 'sleep {mark} & sleep {mark}; wait'")
    wait_until(lambda: len(sleeps(mark)) == 2, 30, "the job's sleeps")
    ended = wait_state(inst, job, "timeout", timeout=60)
    assert re.fullmatch(r"time limit of 2 s reached: stopped after \d\.\d\d s", ended.reason)
    assert ended.fields["time limit"] == "2 s"
    # The shepherd reaped its whole tree before it exited: nothing of the job is left.
    assert processes_mentioning(mark) == []  # shells too
    cpu, rss, run = usage_of(inst, job)
    assert 2.0 <= run < 2.0 + float(GRACE) + 10 and rss > 0
    assert f"run time {run:.2f} s" in ended.fields["resource use"]
    listed = tms(inst, "lsfjobs")
    assert re.search(rf"\b{job}\s+timeout .*\(cpu .*run time {run:.2f} s\)", listed), listed


def test_a_job_that_ignores_term_is_killed_after_the_grace(each: InstallationWithEnv) -> None:
    inst = each
    mark = marker()
    job = submit(inst, "--time-limit", "1", f"trap '' TERM; sleep {mark} & sleep {mark}; wait")
    wait_until(lambda: len(sleeps(mark)) == 2, 30, "the job's sleeps")
    ended = wait_state(inst, job, "timeout", timeout=60)
    assert ended.fields["signal"] == "9", ended  # TERM was ignored: KILL ended it
    assert processes_mentioning(mark) == []
    _, _, run = usage_of(inst, job)
    assert run >= 1.0 + float(GRACE)  # the limit, then the whole grace


def test_the_limit_holds_while_the_dispatcher_is_away(each: InstallationWithEnv) -> None:
    inst = each
    mark = marker()
    job = submit(inst, "--time-limit", "3s", f"sleep {mark}")
    wait_state(inst, job, "running", timeout=30)
    wait_until(lambda: sleeps(mark), 30, "the job's sleep")
    kill_dispatcher(inst)
    # The executor, on its own, stops the job at its limit while the dispatcher is down...
    wait_until(lambda: not processes_mentioning(mark), 30, "the job stopped")
    inst.start_dispatcher()
    # ...and reports it once the dispatcher is back.
    ended = wait_state(inst, job, "timeout", timeout=60)
    assert "time limit of 3 s reached" in ended.reason
    _, _, run = usage_of(inst, job)
    assert 3.0 <= run < 3.0 + float(GRACE) + 10


BURN = (
    "python3 -c 'import time\n"
    "end = time.process_time() + 0.5\n"
    "while time.process_time() < end: pass'"
)


def test_a_cpu_burning_child_shows_its_cpu_time(each: InstallationWithEnv) -> None:
    inst = each
    job = submit(inst, BURN + "; true")  # the burner is a child of the job's shell
    shown = wait_state(inst, job, "finished", timeout=60)
    cpu, rss, run = usage_of(inst, job)
    assert cpu >= 0.45 and rss > 0 and run > 0
    used = shown.fields["resource use"]
    assert re.fullmatch(
        r"cpu \d+\.\d\d s, efficiency \d+ %, peak memory [\d.]+ MiB, run time \d+\.\d\d s", used
    ), used
    assert f"cpu {cpu:.2f} s" in used


def test_a_job_that_allocates_50_mb_shows_that_peak(each: InstallationWithEnv) -> None:
    inst = each
    # Filled, so every page is resident; in a child of the job's shell, as a real job would.
    job = submit(inst, "python3 -c 'b = b\"x\" * (60 << 20)'; true")
    wait_state(inst, job, "finished", timeout=60)
    _, rss, _ = usage_of(inst, job)
    assert rss * 1024 >= 50 * 1024 * 1024
    assert re.search(r"peak memory (\d+\.\d) MiB", lajob(inst, job).fields["resource use"])


def test_lagroup_sums_the_use_of_its_jobs(each: InstallationWithEnv) -> None:
    inst = each
    first = submit(inst, "-g", "sweep", BURN + "; true")
    second = submit(inst, "-g", "sweep", BURN + "; true")
    for job in (first, second):
        wait_state(inst, job, "finished", timeout=60)
    cpu = sum(usage_of(inst, job)[0] for job in (first, second))
    run = sum(usage_of(inst, job)[2] for job in (first, second))
    block = tms(inst, "lagroup:sweep")
    assert f"resource use of 2 ended job(s): cpu {cpu:.2f} s" in block, block
    assert f"total run time {run:.2f} s" in block, block


@pytest.mark.parametrize(
    "limit", ["abc", "0", "-5", "1:99"], ids=["text", "zero", "negative", "bad-clock"]
)
def test_a_bad_time_limit_is_refused_and_nothing_is_submitted(
    installation: Installation, limit: str
) -> None:
    result = installation.run("hRunJob", f"--time-limit={limit}", "true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "--time-limit" in line and "time limit" in line
    assert installation.sql("SELECT COUNT(*) FROM jobs") == [(0,)]
