"""Issue 11, points 1 and 5 (and the ranges and groups of point 4), through the real CLI:
dependencies (``hRunJob --after/--after-any/--after-group``), the ``cancelled`` ending and its
cascade, holds and priority (``hConnect holdjob/releasejob/holdgroup/releasegroup/setpriority``),
kill of ranges and groups, on SQLite and MariaDB ($TM_TEST_MYSQL_URL) where the store is
touched, and across a dispatcher restart.

The installation's user is its admin: through their TMS (``hConnect``) they act as a user,
at the dispatcher (``hConnect -T``) as the admin.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import lajob, listed_ids, submit, submit_file, td, tms, wait_state
from tests.helpers.processes import Installation

ENDINGS = ("finished", "failed", "killed", "cancelled")


@pytest.fixture(params=["sqlite", "mysql"])
def inst(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Installation]:
    url = request.getfixturevalue("mysql_url") if request.param == "mysql" else None
    installation = Installation(tmp_path, database_url=url)
    try:
        installation.start_dispatcher()
        yield installation
    finally:
        installation.cleanup()


def refused(who: Installation, *argv: str) -> str:
    """Run a command that must be refused: its one line of error."""
    result = who.run(*argv)
    assert result.returncode != 0, f"{argv} was accepted: {result.stdout}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def job_count(who: Installation) -> int:
    return int(who.sql("SELECT COUNT(*) FROM jobs")[0][0])


def ended(who: Installation, job_id: int) -> Callable[[], bool]:
    return lambda: lajob(who, job_id).state in ENDINGS


def test_after_waits_and_a_failed_dependency_cancels_its_dependants_at_once(
    inst: Installation,
) -> None:
    assert td(inst, "deactivatecluster") == "deactivated."
    ok = submit(inst, "true")
    bad = submit(inst, "false")
    after_ok = submit(inst, "--after", str(ok), "true")
    after_bad = submit(inst, "--after", f"{ok},{bad}", "true")
    chained = submit(inst, "--after", str(after_bad), "true")
    after_any = submit(inst, "--after-any", str(bad), "true")

    # A waiting job says what it waits for.
    assert lajob(inst, after_ok).status == f"waiting (waits for job(s) {ok} to finish)"
    assert f"waits for job(s) {bad} to end" in lajob(inst, after_any).status
    assert lajob(inst, chained).fields["after (finished)"] == str(after_bad)
    # Blocked jobs are not in the scheduler's queue.
    assert listed_ids(td(inst, "lsnextjobs:10")) == [ok, bad]

    assert td(inst, "activatecluster") == "activated."
    assert wait_state(inst, after_ok, "finished").exit_code == "0"
    assert wait_state(inst, after_any, "finished").exit_code == "0"
    cancelled = wait_state(inst, after_bad, "cancelled")
    assert cancelled.reason == f"dependency job {bad} ended failed"
    # ... and its own dependant, at once, naming it.
    assert wait_state(inst, chained, "cancelled").reason == (
        f"dependency job {after_bad} was cancelled"
    )
    assert lajob(inst, bad).state == "failed"
    # The ending is stored as such.
    [(stored,)] = inst.sql("SELECT state FROM jobs WHERE id = ?", (chained,))
    assert stored == "cancelled"
    assert "cancelled" in tms(inst, "lsfjobs")

    # A dependency that has already failed cancels the new job at once.
    late = submit(inst, "--after", str(bad), "true")
    assert wait_state(inst, late, "cancelled").reason == f"dependency job {bad} ended failed"
    # hRunJob --wait on a cancelled job ends, with a failure status.
    result = inst.run("hRunJob", "--wait", "--after", str(bad), "true")
    assert result.returncode == 1, result.stderr


def test_after_group_waits_for_the_jobs_of_the_group_submitted_before(inst: Installation) -> None:
    assert td(inst, "deactivatecluster") == "deactivated."
    prep = [submit(inst, "-g", "prep", "true") for _ in range(2)]
    merge = submit(inst, "--after-group", "prep", "-g", "merge", "true")
    assert lajob(inst, merge).status == (
        f"waiting (waits for job(s) {prep[0]}-{prep[1]} to finish)"
    )
    assert lajob(inst, merge).fields["after group"] == "prep"
    broken = [submit(inst, "-g", "broken", cmd) for cmd in ("true", "false")]
    after_broken = submit(inst, "--after-group", "broken", "true")
    assert td(inst, "activatecluster") == "activated."
    assert wait_state(inst, merge, "finished").exit_code == "0"
    reason = wait_state(inst, after_broken, "cancelled").reason
    assert f"job {broken[1]}" in reason, reason


def test_dependencies_holds_and_priorities_survive_a_restart(inst: Installation) -> None:
    assert td(inst, "deactivatecluster") == "deactivated."
    first = submit(inst, "true")
    second = submit(inst, "--after", str(first), "true")
    bad = submit(inst, "false")
    doomed = submit(inst, "--after", str(bad), "true")
    held = submit(inst, "--hold", "true")
    admin_held = submit(inst, "true")
    assert td(inst, f"holdjob:{admin_held}") == f"job(s) {admin_held} has been held"
    lowered = submit(inst, "-p", "5", "true")
    assert tms(inst, f"setpriority:{lowered}:2") == f"job {lowered}: priority 5 -> 2"
    me = getpass.getuser()

    inst.stop_dispatcher()
    [(hold,)] = inst.sql("SELECT hold FROM jobs WHERE id = ?", (admin_held,))
    assert hold == f"admin:{me}"
    inst.start_dispatcher()

    assert lajob(inst, second).status == f"waiting (waits for job(s) {first} to finish)"
    assert lajob(inst, held).status == f"waiting (held by {me})"
    assert lajob(inst, held).fields["held"] == f"by {me}"
    assert lajob(inst, admin_held).fields["held"] == f"by the admin {me}"
    assert lajob(inst, lowered).fields["priority"] == "2"
    # The user cannot release the admin's hold, even after the restart.
    line = refused(inst, "hConnect", f"releasejob:{admin_held}")
    assert "held by the admin" in line and "-T" in line, line

    assert td(inst, "activatecluster") == "activated."
    assert wait_state(inst, second, "finished").exit_code == "0"
    assert wait_state(inst, doomed, "cancelled").reason == f"dependency job {bad} ended failed"
    wait_state(inst, lowered, "finished")
    # The held jobs have not started meanwhile.
    assert lajob(inst, held).state == "waiting"
    assert lajob(inst, admin_held).state == "waiting"
    assert tms(inst, f"releasejob:{held}") == f"job(s) {held} has been released"
    assert td(inst, f"releasejob:{admin_held}") == f"job(s) {admin_held} has been released"
    wait_state(inst, held, "finished")
    wait_state(inst, admin_held, "finished")


def test_a_dependency_on_a_job_that_ended_while_the_dispatcher_was_down(
    inst: Installation,
) -> None:
    """The dispatcher starts with a dependant whose dependency's failure it never saw
    settle (written by hand here): the dependant is cancelled at start-up."""
    assert td(inst, "deactivatecluster") == "deactivated."
    dep = submit(inst, "true")
    dependant = submit(inst, "--after", str(dep), "true")
    inst.stop_dispatcher()
    inst.sql("UPDATE jobs SET state = 'killed' WHERE id = ?", (dep,))
    inst.start_dispatcher()
    assert wait_state(inst, dependant, "cancelled").reason == f"dependency job {dep} ended killed"


def test_a_held_job_keeps_its_place_and_ranges_and_groups_are_accepted(
    installation: Installation,
) -> None:
    inst = installation
    assert td(inst, "deactivatecluster") == "deactivated."
    ids = [submit(inst, "-g", "sweep", "true") for _ in range(4)]
    assert tms(inst, f"holdjob:{ids[0]}") == f"job(s) {ids[0]} has been held"
    assert listed_ids(td(inst, "lsnextjobs:10")) == ids[1:]
    assert lajob(inst, ids[0]).status == f"waiting (held by {getpass.getuser()})"
    assert tms(inst, f"releasejob:{ids[0]}") == f"job(s) {ids[0]} has been released"
    assert listed_ids(td(inst, "lsnextjobs:10")) == ids  # back in its place

    # Ranges and groups.
    assert tms(inst, f"holdjob:{ids[1]}-{ids[3]}") == (f"job(s) {ids[1]}-{ids[3]} have been held")
    assert listed_ids(td(inst, "lsnextjobs:10")) == ids[:1]
    assert tms(inst, "releasegroup:sweep") == f"job(s) {ids[1]}-{ids[3]} have been released"
    assert tms(inst, "holdgroup:sweep") == f"job(s) {ids[0]}-{ids[3]} have been held"
    assert td(inst, "lsnextjobs:10") == "no jobs found to send"
    assert tms(inst, f"releasejob:{ids[0]}:{ids[2]}") == (
        f"job(s) {ids[0]},{ids[2]} have been released"
    )
    # A range changes what it can: here the jobs still held.
    out = tms(inst, f"releasejob:{ids[0]}-{ids[3]}")
    assert out == f"job(s) {ids[1]},{ids[3]} have been released", out
    # ... and says what it may not change: the admin's hold.
    assert td(inst, f"holdjob:{ids[0]}") == f"job(s) {ids[0]} has been held"
    out = tms(inst, f"releasejob:{ids[0]}-{ids[3]}")
    assert out.startswith("no job released") and f"job {ids[0]} is held by the admin" in out
    assert td(inst, f"releasejob:{ids[0]}") == f"job(s) {ids[0]} has been released"

    assert tms(inst, f"killjobs:{ids[0]}-{ids[1]}") == f"job(s) {ids[0]}-{ids[1]} have been killed"
    assert tms(inst, "killgroup:sweep") == f"job(s) {ids[2]}-{ids[3]} have been killed"
    for job_id in ids:
        assert lajob(inst, job_id).state == "killed"


def test_priority_may_be_lowered_by_the_user_and_raised_by_the_admin(
    installation: Installation,
) -> None:
    inst = installation
    assert td(inst, "deactivatecluster") == "deactivated."
    job = submit(inst, "-p", "10", "true")
    assert tms(inst, f"setpriority:{job}:3") == f"job {job}: priority 10 -> 3"
    line = refused(inst, "hConnect", f"setpriority:{job}:50")
    assert "only the admin" in line, line
    assert lajob(inst, job).fields["priority"] == "3"
    assert td(inst, f"setpriority:{job}:50") == f"job {job}: priority 3 -> 50"
    assert "priority" in refused(inst, "hConnect", f"setpriority:{job}:500")
    assert td(inst, "activatecluster") == "activated."
    wait_state(inst, job, "finished")
    line = refused(inst, "hConnect", f"setpriority:{job}:1")
    assert "only a waiting job" in line, line
    assert "already ended" in refused(inst, "hConnect", f"holdjob:{job}")


def test_bad_dependencies_are_refused_in_one_line_with_nothing_submitted(
    installation: Installation,
) -> None:
    inst = installation
    assert td(inst, "deactivatecluster") == "deactivated."
    known = submit(inst, "-g", "mine", "true")
    before = job_count(inst)
    # On itself: the id the job would get.
    line = refused(inst, "hRunJob", "--after", str(known + 1), "true")
    assert f"unknown job {known + 1}" in line and "itself" in line, line
    # Within one bulk submission: the ids its own jobs would get.
    (inst.work / "bulk.txt").write_text(
        f"command::true\tafter::{known}\ncommand::true\tafter::{known + 1}\n"
    )
    line = refused(inst, "hRunJob", "-f", "bulk.txt")
    assert f"unknown job {known + 1}" in line, line
    assert "unknown job 987654" in refused(inst, "hRunJob", "--after", "987654", "true")
    assert "not a job id" in refused(inst, "hRunJob", "--after", "abc", "true")
    line = refused(inst, "hRunJob", "-g", "mine", "--after-group", "mine", "true")
    assert "cycle" in line, line
    assert "no jobs in group" in refused(inst, "hRunJob", "--after-group", "nosuch", "true")
    assert "not a job id" in refused(inst, "hConnect", "holdjob:x")
    assert "goes down" in refused(inst, "hConnect", "holdjob:9-3")
    assert job_count(inst) == before
    # A job file may carry the fields.
    ids = submit_file(
        inst,
        inst.work / "ok.txt",
        content=f"command::true\tafter::{known}\thold::yes\tafterGroup::mine\n",
    )
    shown = lajob(inst, ids[0])
    assert shown.fields["after (finished)"] == str(known)
    assert shown.fields["after group"] == "mine" and shown.fields["held"]


def test_a_user_cannot_wait_for_or_hold_another_user_s_job(
    make_installation: Callable[..., Installation],
) -> None:
    """A user that is not an admin: another user's job (written by hand) is refused."""
    inst = make_installation(users=[(getpass.getuser(), "user")])
    theirs = submit(inst, "true")
    wait_state(inst, theirs, "finished")
    inst.sql("UPDATE jobs SET user_name = 'someoneelse' WHERE id = ?", (theirs,))
    before = job_count(inst)
    line = refused(inst, "hRunJob", "--after", str(theirs), "true")
    assert f"job {theirs} is not yours" in line, line
    assert job_count(inst) == before
