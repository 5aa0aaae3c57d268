"""Issue 11, point 4, through the real CLI: ``hRunJob --array`` submits one job per index as
one group, each with ``{idx}`` replaced and ``TM_ARRAY_INDEX`` set; ``%MAX`` caps how many of
the array are pending or running at once, also across a dispatcher restart; bad input is
refused in one line with nothing submitted. On SQLite, and MariaDB with $TM_TEST_MYSQL_URL.

The cap is observed from the jobs themselves, without timing: each job marks itself running
(``run.N``), records how many marks it sees once its own is made (``seen.N``: at least as many
as are running at that moment), then blocks until the test releases it (``go.N``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.cli import expand_ids, jobs, lajob, submit, tms, wait_state
from tests.helpers.processes import ClusterHost, InstallationWithEnv, wait_until, write_cluster_tab

SUBMITTED = re.compile(
    r"Jobs \[([0-9,-]+)\] have been submitted to TaskDispatcher as group (\S+)\.\n"
)
#: Marks itself running, counts the marks, waits for its release, unmarks itself.
BLOCKING = (
    "touch run.{idx}; ls run.* | wc -l > seen.{idx}.tmp; mv seen.{idx}.tmp seen.{idx}; "
    "while [ ! -e go.{idx} ]; do sleep 0.05; done; rm -f run.{idx}; touch done.{idx}"
)


@pytest.fixture(params=["sqlite", "mysql"])
def inst(request: pytest.FixtureRequest, tmp_path: Path) -> InstallationWithEnv:
    """A dispatcher on SQLite or MariaDB with one host of 8 slots: more than any cap here."""
    url = request.getfixturevalue("mysql_url") if request.param == "mysql" else None
    installation = InstallationWithEnv(tmp_path, database_url=url)
    request.addfinalizer(installation.cleanup)
    write_cluster_tab(installation.etc, [ClusterHost("hA", 8)])
    installation.start_dispatcher()
    return installation


def submit_array(inst: InstallationWithEnv, *args: str) -> tuple[list[int], str]:
    result = inst.run("hRunJob", *args)
    assert result.returncode == 0, result.stderr
    match = SUBMITTED.fullmatch(result.stdout)
    assert match, result.stdout
    return expand_ids(match.group(1)), match.group(2)


def marks(work: Path, prefix: str) -> set[int]:
    return {int(p.name.split(".")[1]) for p in work.glob(f"{prefix}.*") if p.suffix != ".tmp"}


def running(inst: InstallationWithEnv) -> set[int]:
    return {row.job_id for row in jobs(inst, "lsrjobs") + jobs(inst, "lspjobs")}


def test_an_array_runs_each_index_once_with_idx_and_its_environment(
    inst: InstallationWithEnv,
) -> None:
    ids, group = submit_array(
        inst, "--array", "0-9", "-o", "out.{idx}", 'echo "{idx} $TM_ARRAY_INDEX" > mark.{idx}'
    )
    assert len(ids) == 10 and group.startswith("array-")
    wait_until(lambda: "finished: 10" in tms(inst, f"lagroup:{group}"), 60, "the group to end")
    assert sorted(p.name for p in inst.work.glob("mark.*")) == sorted(
        f"mark.{i}" for i in range(10)
    )
    for i in range(10):
        assert (inst.work / f"mark.{i}").read_text() == f"{i} {i}\n"
        assert (inst.work / f"out.{i}").exists()
    info = lajob(inst, ids[3])
    assert info.fields["array index"] == "3" and info.fields["group"] == group
    assert lajob(inst, ids[3], via_dispatcher=True).fields["array index"] == "3"


def test_a_capped_array_never_runs_more_than_its_cap(inst: InstallationWithEnv) -> None:
    ids, group = submit_array(inst, "--array", "0-7%2", "-g", "capped", BLOCKING)
    assert group == "capped" and len(ids) == 8
    # The user's other job is not held back behind the capped array.
    other = submit(inst, "true")
    wait_state(inst, other, "finished", timeout=60)
    released: set[int] = set()
    while len(released) < len(ids):
        # Two running (the cap), or fewer once the array runs out of jobs; the rest wait,
        # and say why.
        expected = min(2, len(ids) - len(released))
        wait_until(
            lambda expected=expected: (
                len(marks(inst.work, "run")) == expected
                and len(marks(inst.work, "seen") - released) == expected
            ),
            60,
            f"{expected} jobs of the array running",
        )
        assert len(running(inst) & set(ids)) <= 2
        waiting = [ids[i] for i in range(len(ids)) if i not in marks(inst.work, "seen")]
        if waiting:
            assert "cap (%2)" in lajob(inst, waiting[0]).wait_reason
        index = min(marks(inst.work, "run"))
        (inst.work / f"go.{index}").touch()
        released.add(index)
        wait_until(lambda index=index: index in marks(inst.work, "done"), 60, "its end")
    assert marks(inst.work, "done") == set(range(8))
    seen = {i: int((inst.work / f"seen.{i}").read_text()) for i in range(8)}
    assert max(seen.values()) <= 2, seen


def test_the_cap_survives_a_dispatcher_restart(inst: InstallationWithEnv) -> None:
    ids, _ = submit_array(inst, "--array", "0-5%2", BLOCKING)
    wait_until(lambda: len(marks(inst.work, "seen")) == 2, 60, "two jobs of the array running")
    first = marks(inst.work, "run")
    inst.stop_dispatcher()
    inst.start_dispatcher()
    # The restarted dispatcher knows the array's cap and its two running jobs from the store:
    # nothing more of the array starts; the waiting ones say why.
    wait_until(lambda: len(running(inst) & set(ids)) == 2, 60, "the running jobs known again")
    waiting = [ids[i] for i in range(len(ids)) if i not in first]
    assert "cap (%2)" in lajob(inst, waiting[0]).wait_reason
    assert "cap (%2)" in lajob(inst, waiting[0], via_dispatcher=True).wait_reason
    released: set[int] = set()

    def release_the_running() -> bool:
        for index in marks(inst.work, "run") - released:
            (inst.work / f"go.{index}").touch()
            released.add(index)
        return len(marks(inst.work, "done")) == len(ids)

    wait_until(release_the_running, 120, "every job of the array to end")
    seen = {i: int((inst.work / f"seen.{i}").read_text()) for i in range(len(ids))}
    assert max(seen.values()) <= 2, seen


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("5-1", "the range 5-1 goes down"),
        ("0-10:0", "the step of 0-10:0 must be at least 1"),
        ("a", "'a' is not an index or a range"),
        ("0-9%0", "the cap after % must be at least 1"),
        ("0-1000000", "more than 1000000 indices"),
    ],
)
def test_a_bad_array_is_refused_in_one_line_and_nothing_is_submitted(
    inst: InstallationWithEnv, spec: str, words: str
) -> None:
    result = inst.run("hRunJob", "--array", spec, "touch x.{idx}")
    assert result.returncode == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert inst.sql("SELECT COUNT(*) FROM jobs") == [(0,)]
    assert jobs(inst, "lswjobs", via_dispatcher=True) == []
