"""One machine, end to end, with real processes: the dispatcher under twistd, the user's
TMS and TMMS started on demand, and the real hRunJob / hConnect."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.helpers.cli import state, submit, wait_ended
from tests.helpers.processes import Installation, alive, wait_until
from tm.db.store import Store


def test_hello_world_lands_in_the_submission_directory(installation: Installation) -> None:
    here = installation.work / "project"
    here.mkdir()
    result = installation.run("hRunJob", "--wait", "echo hello > out.txt", cwd=here)
    assert result.returncode == 0, result.stderr
    assert (here / "out.txt").read_text() == "hello\n"


def test_ids_are_unique_and_increasing_and_the_tms_is_reused(installation: Installation) -> None:
    first = submit(installation, "true")
    pid_before = (installation.home / ".taskmanager" / "tms.pid").read_text()
    second = submit(installation, "true")
    assert second > first
    assert (installation.home / ".taskmanager" / "tms.pid").read_text() == pid_before


def test_a_failing_command_ends_failed_with_its_exit_code(installation: Installation) -> None:
    result = installation.run("hRunJob", "--wait", "exit 3")
    assert result.returncode == 3, result.stderr
    job_id = int(re.search(r"\[(\d+)\]", result.stdout).group(1))
    out = installation.run("hConnect", f"lajob:{job_id}", check=True).stdout
    assert "failed" in out and "3" in out


def test_stdout_and_stderr_files_hold_exactly_what_the_job_wrote(
    installation: Installation,
) -> None:
    result = installation.run(
        "hRunJob",
        "--wait",
        "-o",
        "o.txt",
        "-O",
        "e.txt",
        "printf 'to out\\n'; printf 'to err\\n' >&2",
    )
    assert result.returncode == 0, result.stderr
    assert (installation.work / "o.txt").read_text() == "to out\n"
    assert (installation.work / "e.txt").read_text() == "to err\n"


def test_unwritable_output_fails_the_job_with_the_reason(installation: Installation) -> None:
    (installation.work / "afile").write_text("x")
    result = installation.run("hRunJob", "--wait", "-o", "afile/out.txt", "echo x")
    assert result.returncode != 0
    job_id = int(re.search(r"\[(\d+)\]", result.stdout).group(1))
    out = installation.run("hConnect", f"lajob:{job_id}", check=True).stdout
    assert "afile/out.txt" in out and "failed" in out


def test_lajob_shows_the_history_with_timestamps(installation: Installation) -> None:
    result = installation.run("hRunJob", "--wait", "true")
    job_id = int(re.search(r"\[(\d+)\]", result.stdout).group(1))
    out = installation.run("hConnect", f"lajob:{job_id}", check=True).stdout
    stamps = re.findall(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\S*\s+(waiting|pending|running|finished)", out
    )
    assert stamps[:4] == ["waiting", "pending", "running", "finished"], out


def test_twenty_jobs_on_a_two_slot_host_never_run_more_than_two_at_once(tmp_path: Path) -> None:
    inst = Installation(tmp_path)
    import socket

    (inst.etc / "cluster.tab").write_text(
        "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\tadditional_info\t"
        "allow_info_server\tinfo_server_port\tactive\n"
        f"local\t{socket.gethostname()}\t2\t2\t\tFalse\t0\tTrue\n"
    )
    try:
        inst.start_dispatcher()
        log = inst.work / "times.log"
        ids = [
            submit(
                inst,
                "-c",
                "1",
                f"echo start $(date +%s.%N) >> {log}; sleep 0.2; echo end $(date +%s.%N) >> {log}",
            )
            for _ in range(20)
        ]
        wait_until(
            lambda: log.exists() and log.read_text().count("end") == 20, 120, "20 jobs to end"
        )
        events = sorted(
            (float(t), +1 if kind == "start" else -1)
            for kind, t in (line.split() for line in log.read_text().splitlines())
        )
        running = peak = 0
        for _, delta in events:
            running += delta
            peak = max(peak, running)
        assert peak <= 2
        assert all(state(inst, i) == "finished" for i in ids[-3:])
    finally:
        inst.cleanup()


def test_bad_input_gets_one_clear_line(installation: Installation) -> None:
    empty = installation.run("hRunJob")
    assert (
        empty.returncode != 0 and "no command" in empty.stderr and "Traceback" not in empty.stderr
    )
    zero = installation.run("hRunJob", "-c", "0", "true")
    assert zero.returncode != 0 and "slot" in zero.stderr
    huge = installation.run("hRunJob", "-c", "100000", "true")  # accepted: it waits, with a warning
    assert huge.returncode == 0 and "Traceback" not in huge.stderr
    assert re.fullmatch(
        r"hRunJob: warning: a job needs 100000 slots but the largest host has \d+: "
        r"it waits until a host that large is configured\n",
        huge.stderr,
    )
    unknown = installation.run("hRunJob", "--no-such-option", "true")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr


def test_no_dispatcher_says_where_it_looked(tmp_path: Path) -> None:
    inst = Installation(tmp_path)
    result = inst.run("hRunJob", "true")
    assert result.returncode != 0
    assert "dispatcher.json" in result.stderr and "Traceback" not in result.stderr


def test_hconnect_shutdown_stops_the_tms(installation: Installation) -> None:
    # Once the job has ended its executor is up: a shutdown does not race the TMS's start of it
    # (an executor started just after would outlive the test; the leak guard found that).
    wait_ended(installation, submit(installation, "true"))
    pid = int((installation.home / ".taskmanager" / "tms.pid").read_text())
    installation.run("hConnect", "shutdown", check=True)
    wait_until(
        lambda: (
            not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        ),
        15,
        "the TMS to exit",
    )


def test_end_to_end_on_mariadb(tmp_path: Path, mysql_url: str) -> None:
    inst = Installation(tmp_path, database_url=mysql_url)
    try:
        inst.start_dispatcher()
        ok = inst.run("hRunJob", "--wait", "echo hello > out.txt")
        assert ok.returncode == 0, ok.stderr
        assert (inst.work / "out.txt").read_text() == "hello\n"
        bad = inst.run("hRunJob", "--wait", "exit 4")
        assert bad.returncode == 4
        job_id = int(re.search(r"\[(\d+)\]", bad.stdout).group(1))
        assert state(inst, job_id) == "failed"
        # A restarted dispatcher keeps its jobs (same database).
        inst.stop_dispatcher()
        inst.start_dispatcher()
        assert state(inst, job_id) == "failed"
    finally:
        inst.cleanup()


def test_wrong_database_url_stops_the_dispatcher_with_one_line(tmp_path: Path) -> None:
    inst = Installation(tmp_path, database_url="mysql://nobody:secret@127.0.0.1:1/tm")
    proc = inst.start_dispatcher(wait=False)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0
    assert "cannot reach database" in out and "secret" not in out and "Traceback" not in out


def test_malformed_cluster_tab_is_reported_by_file_and_line(tmp_path: Path) -> None:
    inst = Installation(tmp_path)
    (inst.etc / "cluster.tab").write_text(
        "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\tadditional_info\t"
        "allow_info_server\tinfo_server_port\tactive\n"
        "a\thost-a\tmany\t2\t\tFalse\t0\tTrue\n"
    )
    proc = inst.start_dispatcher(wait=False)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode != 0
    assert "cluster.tab:2" in out and "number_slots" in out and "Traceback" not in out


def test_a_user_not_in_etc_users_is_refused_and_nothing_is_queued(tmp_path: Path) -> None:
    inst = Installation(tmp_path)
    (inst.etc / "users").write_text("nobody\tuser,admin\n")
    try:
        inst.start_dispatcher()
        result = inst.run("hRunJob", "true")
        assert result.returncode != 0
        assert "not allowed" in result.stderr and "Traceback" not in result.stderr
    finally:
        inst.cleanup()


def test_killjob_kills_the_whole_tree_and_frees_the_slot(installation: Installation) -> None:
    pids = installation.work / "pids"
    job_id = submit(
        installation,
        f"sleep 100 & echo $! >> {pids}; sleep 100 & echo $! >> {pids}; echo $$ >> {pids}; wait",
    )
    wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 3, 30, "the job's pids")
    killed = installation.run("hConnect", f"killjob:{job_id}", check=True)
    assert f"{job_id}" in killed.stdout
    wait_until(lambda: state(installation, job_id) == "killed", 30, "the job to end killed")
    wait_until(
        lambda: not any(alive(int(p)) for p in pids.read_text().split()),
        15,
        "every process of the job to be gone",
    )
    # The slot is free again: the next job runs.
    assert installation.run("hRunJob", "--wait", "true").returncode == 0


def test_groups_report_counts_and_progress(installation: Installation) -> None:
    for _ in range(2):
        assert installation.run("hRunJob", "--wait", "-g", "run7", "true").returncode == 0
    out = installation.run("hConnect", "lagroup:run7", check=True).stdout
    assert "finished: 2" in out and "100.00%" in out


def test_hadmindatabase_upgrade_and_show_without_secrets(tmp_path: Path) -> None:
    inst = Installation(tmp_path)
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = inst.run("hAdminDatabase", "--database", url, "upgrade", check=True)
    versions = [v for v, _ in Store.migrations()]  # 0003: dependencies and holds, and later
    applied = ", ".join(str(v) for v in versions)
    assert f"applied migrations {applied}; schema version {versions[-1]}" in first.stdout
    again = inst.run("hAdminDatabase", "--database", url, "upgrade", check=True)
    assert "up to date" in again.stdout
    shown = inst.run("hAdminDatabase", "--database", url, "show", check=True)
    assert f"schema version: {versions[-1]}" in shown.stdout
    bad = inst.run("hAdminDatabase", "--database", "mysql://u:hunter2@127.0.0.1:1/x", "show")
    assert bad.returncode != 0 and "hunter2" not in bad.stderr and "Traceback" not in bad.stderr


def test_logfile_has_command_info_stdout_and_stderr_sections(installation: Installation) -> None:
    result = installation.run("hRunJob", "--wait", "-l", "job.log", "echo out; echo err >&2")
    assert result.returncode == 0, result.stderr
    log = (installation.work / "job.log").read_text()
    for section in ("command", "info", "stdout", "stderr"):
        assert f"BEGIN {section}" in log and f"END {section}" in log
    assert "echo out; echo err >&2" in log and "\nout\n" in log and "\nerr\n" in log
    assert "run time:" in log and "host:" in log


def test_deactivated_cluster_accepts_but_does_not_dispatch_and_rmwjobs_removes(
    installation: Installation,
) -> None:
    assert (
        installation.run("hConnect", "-T", "deactivatecluster", check=True).stdout.strip()
        == "deactivated."
    )
    first, second = submit(installation, "true"), submit(installation, "true")
    listing = installation.run("hConnect", "lswjobs", check=True).stdout
    assert str(first) in listing and str(second) in listing
    assert (
        "cluster is deactivated"
        in installation.run("hConnect", f"lajob:{first}", check=True).stdout
    )
    removed = installation.run(
        "hConnect", "-T", f"rmwjobs:{__import__('getpass').getuser()}", check=True
    )
    assert "removed 2" in removed.stdout
    assert installation.run("hConnect", "lswjobs", check=True).stdout.strip() == "no waiting jobs"
    installation.run("hConnect", "-T", "activatecluster", check=True)
    assert installation.run("hRunJob", "--wait", "true").returncode == 0


def test_job_file_submits_every_line_and_a_bad_line_submits_nothing(
    installation: Installation,
) -> None:
    (installation.work / "bad.txt").write_text(
        "command::echo one\n# fine so far\ncommand::echo two\tslots::many\n"
    )
    bad = installation.run("hRunJob", "-f", "bad.txt")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "hRunJob: bad.txt:3: slots must be a whole number, not 'many'; nothing was submitted"
    )
    assert (
        installation.run("hConnect", "-T", "lswjobs", check=True).stdout.strip()
        == "no waiting jobs"
    )
    assert (
        installation.run("hConnect", "-T", "lsfjobs", check=True).stdout.strip()
        == "no finished jobs"
    )

    (installation.work / "jobs.txt").write_text(
        "command::echo line {idx} > out.{idx}\tgroup::sweep\n"
        "\n"
        "command::echo line {idx} > out.{idx}\tgroup::sweep\tinfoText::third\n"
    )
    good = installation.run("hRunJob", "-f", "jobs.txt")
    assert good.returncode == 0, good.stderr
    match = re.fullmatch(
        r"2 job\(s\) \[(\d+)-(\d+)\] have been submitted to TaskDispatcher\.\n", good.stdout
    )
    assert match, good.stdout
    assert int(match.group(2)) == int(match.group(1)) + 1
    wait_until(
        lambda: (installation.work / "out.0").exists() and (installation.work / "out.2").exists(),
        30,
        "both job-file jobs to write their output",
    )
    assert (installation.work / "out.0").read_text() == "line 0\n"
    assert (installation.work / "out.2").read_text() == "line 2\n"
    assert "total: 2" in installation.run("hConnect", "lagroup:sweep", check=True).stdout
