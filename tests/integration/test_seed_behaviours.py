"""The 25 behaviours of SEED.md, one test each (B23 and B05 have a second one), with real
processes: the dispatcher under twistd, the users' TMS and executors started on demand,
and the real hRunJob / hConnect / hConnect -T as a user types them.

Every "host" of these tests is this machine (hosts without an ssh_target run their
executors locally); tests/cluster has the real multi-host ones. The tests with a second
user make a throw-away Unix account (tests/helpers/processes.py: UnixUser) and need root.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import (
    CLI,
    ENDED,
    SUBMITTED,
    expand_ids,
    listed_ids,
    parse_hosts,
    parse_listing,
)
from tests.helpers.jobrecords import (
    most_jobs_at_once,
    occupied_now,
    peak_occupation,
    recorded,
    run_of,
    write_recorder,
)
from tests.helpers.processes import (
    ClusterHost,
    Installation,
    UnixUser,
    alive,
    wait_until,
)
from tests.helpers.requirements import second_user, skip_or_fail

ROOT_ADMIN = ("root", "user,admin")


# --- helpers ---------------------------------------------------------------------------------


def gate(path: Path) -> str:
    """Shell code that blocks until the test creates ``path``."""
    return f"while [ ! -e {path} ]; do sleep 0.05; done"


def pids_in(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()] if path.exists() else []


# --- who types the commands ----------------------------------------------------------------


class Client(CLI):
    """A user at a terminal of ``inst``: root (the test's own account) or a UnixUser."""

    def __init__(self, inst: Installation, user: UnixUser | None = None) -> None:
        super().__init__()
        self.inst = inst
        self.user = user

    @property
    def name(self) -> str:
        return self.user.name if self.user else "root"

    @property
    def work(self) -> Path:
        return self.user.work if self.user else self.inst.work

    @property
    def home(self) -> Path:
        return self.user.home if self.user else self.inst.home

    def run(self, *argv: str, cwd: Path | None = None, check: bool = False):
        if self.user is not None:
            return self.user.run(self.inst, *argv, cwd=cwd, check=check)
        return self.inst.run(*argv, cwd=cwd or self.work, check=check)

    def tms_pid(self) -> int:
        return int((self.home / ".taskmanager" / "tms.pid").read_text())


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def strays() -> Iterator[list[Path]]:
    """Files of pids that escape the installation's cleanup (own sessions): killed at the end."""
    files: list[Path] = []
    yield files
    for path in files:
        for pid in pids_in(path):
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


@pytest.fixture(scope="module")
def unix_user() -> Iterator[UnixUser]:
    # Skips without root on a developer's machine; fails in CI (tests/helpers/requirements.py).
    with second_user("tm-seed-users-") as user:
        yield user


@pytest.fixture
def other(unix_user: UnixUser) -> Iterator[UnixUser]:
    """The second user, with no TMS, executor or files left from an earlier test."""
    unix_user.reset_home()
    shutil.rmtree(unix_user.work, ignore_errors=True)
    unix_user.work = unix_user.dir("work")
    try:
        yield unix_user
    finally:
        unix_user.stop_processes()
        unix_user.reset_home()


# --- the behaviours --------------------------------------------------------------------------


def test_b01_hrunjob_returns_at_once_with_a_new_increasing_id(make_installation) -> None:
    tm = make_installation(ClusterHost("hosta", 4))
    me = Client(tm)
    go = tm.work / "go"
    ids = []
    for i in range(3):
        result = tm.run("hRunJob", f"{gate(go)}; echo {i} > out.{i}")
        assert result.returncode == 0, result.stderr
        match = SUBMITTED.fullmatch(result.stdout)
        assert match, result.stdout
        ids.append(int(match.group(1)))
        # hRunJob is back while its job cannot have ended: the gate is still closed.
        assert me.state(ids[-1]) in ("waiting", "pending", "running")
    assert len(set(ids)) == 3 and ids == sorted(ids)
    go.touch()
    for i, job_id in enumerate(ids):
        me.wait_state(job_id, "finished")
        assert (tm.work / f"out.{i}").read_text() == f"{i}\n"
    # Ended jobs do not give their ids back.
    assert me.submit("true") > ids[-1]


def test_b02_the_first_call_starts_the_tms_later_calls_reuse_it_and_strangers_are_refused(
    make_installation,
    other: UnixUser,
) -> None:
    # etc/users lists root only: the second user is a stranger.
    tm = make_installation(ClusterHost("hosta", 2), users=[ROOT_ADMIN], shared=True)
    me = Client(tm)
    state_dir = tm.home / ".taskmanager"
    assert not (state_dir / "tms.json").exists() and not (state_dir / "tms.pid").exists()

    first = me.submit("true")  # nothing else was typed to start a TMS
    pid = me.tms_pid()
    assert alive(pid)

    def tms_processes() -> list[int]:
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"tmserver" in argv and str(state_dir / "tms.pid").encode() in argv:
                if alive(int(entry)):
                    found.append(int(entry))
        return found

    assert tms_processes() == [pid]
    elsewhere = tm.work / "elsewhere"
    elsewhere.mkdir()
    assert tm.run("hConnect", "ping", cwd=elsewhere, check=True).stdout.strip() == "pong"
    second = me.submit("true", cwd=elsewhere)
    assert second > first
    assert f"(pid {pid})" in tm.run("hRunJob", "-s", cwd=elsewhere, check=True).stdout
    assert me.tms_pid() == pid and tms_processes() == [pid]

    # A TMS that went away is replaced, again without being asked.
    assert me.tms("shutdown") == "terminating TMS ..."
    wait_until(lambda: not alive(pid), 15, "the TMS to exit")
    third = me.submit("true")
    assert third > second and me.tms_pid() != pid and tms_processes() == [me.tms_pid()]

    stranger = Client(tm, other)
    refused = stranger.run("hRunJob", "echo stranger-was-here > stranger.txt")
    assert refused.returncode != 0
    assert "not allowed" in refused.stderr and other.name in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr and "submitted" not in refused.stdout
    assert me.td("findjobs:stranger-was-here") == "no jobs found"
    assert sorted(listed_ids(me.td("lsfjobs"))) == [first, second, third]
    assert me.td("lswjobs") == "no waiting jobs"


def test_b03_the_command_runs_on_a_cluster_host_under_the_users_uid_in_the_chosen_shell(
    make_installation,
    other: UnixUser,
) -> None:
    shells = {
        name: os.path.realpath(path)
        for name in ("bash", "dash", "sh")
        if (path := shutil.which(name))
    }
    chosen = ["bash", "dash" if "dash" in shells else "sh"]
    if len({shells.get(s) for s in chosen}) != 2 or None in {shells.get(s) for s in chosen}:
        skip_or_fail("needs two different shells (bash and dash or sh)")
    tm = make_installation(
        ClusterHost("hosta", 2),
        ClusterHost("hostb", 2),
        users=[ROOT_ADMIN, (other.name, "user")],
        shared=True,
    )
    probe = "readlink /proc/$$/exe > shell.txt; id -u > uid.txt; touch owned.txt"
    for client, uid in ((Client(tm), os.getuid()), (Client(tm, other), other.uid)):
        for shell in chosen:
            here = client.work / shell
            if client.user is not None:
                here = client.user.dir(shell)
            else:
                here.mkdir()
            job_id = client.submit("-S", shell, probe, cwd=here)
            job = client.wait_state(job_id, *ENDED)
            assert job.state == "finished", job.text
            assert job.host in ("hosta", "hostb")
            assert (here / "shell.txt").read_text().strip() == shells[shell]
            assert os.path.realpath(job.fields["shell"]) == shells[shell]
            assert int((here / "uid.txt").read_text()) == uid
            assert os.stat(here / "owned.txt").st_uid == uid
        # The job ran through the user's own executor on that host.
        assert job.host in client.tms("lstmms")


def test_b04_n_slots_are_held_on_one_host_never_beyond_its_max_and_a_too_large_job_waits(
    make_installation,
) -> None:
    # hosta has 4 cores but takes at most 3 slots of jobs.
    tm = make_installation(ClusterHost("hosta", 4, max_slots=3), ClusterHost("hostb", 2))
    me = Client(tm)
    records = tm.work / "records"
    recorder = write_recorder(records)
    go = {name: tm.work / f"go.{name}" for name in ("big", "two", "one", "pair")}

    def job(name: str, slots: int) -> str:
        return recorded(recorder, gate(go[name]) if name in go else "true", slots)

    # Larger than every active host: it waits, and says why.
    assert me.td("deactivatehost:hosta") == "host hosta has been deactivated"
    big = me.submit("-c", "3", job("big", 3))
    waiting = me.job(big)
    assert waiting.state == "waiting" and waiting.fields["slots"] == "3"
    assert waiting.wait_reason == "needs 3 slots, largest usable host has 2", waiting.text
    # Larger than every host at all: accepted with a warning; it waits and says why.
    huge = tm.run("hRunJob", "-c", "4", "true")
    assert huge.returncode == 0 and "largest host has 3" in huge.stderr, huge.stderr
    huge_id = int(re.search(r"\[(\d+)\]", huge.stdout).group(1))
    assert me.job(huge_id).wait_reason == "needs 4 slots, largest host has 3"
    assert listed_ids(me.td("lswjobs")) == [big, huge_id]
    me.tms(f"killjob:{huge_id}")
    assert listed_ids(me.td("lswjobs")) == [big]

    def started(*job_ids: int) -> bool:
        return all(run_of(records, j) is not None for j in job_ids)

    me.td("activatehost:hosta")
    wait_until(lambda: started(big), 30, "the 3-slot job to start")
    two = me.submit("-c", "2", job("two", 2))
    wait_until(lambda: started(two), 30, "the 2-slot job to start")
    # hosta has a core left, but its max_number_occupied_slots is reached: one waits.
    one = me.submit("-c", "1", job("one", 1))
    pair = me.submit("-c", "2", job("pair", 2))
    for job_id in (one, pair):
        held = me.job(job_id)
        assert held.state == "waiting", held.text
        assert "largest free on an active host is 0" in held.wait_reason, held.text
    # By the jobs' own records: hosta holds 3 slots (of 4 cores), hostb 2.
    assert occupied_now(records) == {"hosta": 3, "hostb": 2}
    assert (run_of(records, big).host, run_of(records, two).host) == ("hosta", "hostb")

    # The 3-slot job ends: its 3 slots take the 1-slot and the 2-slot job, side by side.
    go["big"].touch()
    wait_until(lambda: started(one, pair), 30, "the waiting jobs to start in the freed slots")
    assert occupied_now(records) == {"hosta": 3, "hostb": 2}
    assert run_of(records, one).host == run_of(records, pair).host == "hosta"
    # hosta is at its max again, with a core free: another 1-slot job waits.
    extra = me.submit("-c", "1", job("extra", 1))
    assert me.state(extra) == "waiting"
    for name in ("one", "pair", "two"):
        go[name].touch()
    for job_id in (big, two, one, pair, extra):
        assert me.wait_state(job_id, *ENDED).state == "finished"
        assert me.job(job_id).host == run_of(records, job_id).host

    # Over the whole run, from the times the jobs recorded: the most slots held at once on
    # each host is its max -- reached, never exceeded -- and hosta's 3 were held by two
    # jobs running at the same time, with its fourth core never used.
    assert peak_occupation(records) == {"hosta": 3, "hostb": 2}
    assert most_jobs_at_once(records, "hosta") == 2
    hosts = me.hosts()
    assert (hosts["hosta"].free, hosts["hostb"].free) == (3, 2)


def _loaded_host(
    make_installation, tmp_path: Path, load: str
) -> tuple[Installation, Client, Path, Path, int]:
    """One 4-slot host with load checking whose executors read their load from a file."""
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(f"{load} {load} {load} 1/100 1\n")
    tm = make_installation(
        ClusterHost("hosta", 4, load_check=True), env={"TM_LOADAVG_FILE": str(loadavg)}
    )
    me = Client(tm)
    go = tm.work / "go.first"
    # No load has been reported yet, so the first job goes; its executor reports the load.
    first = me.submit(gate(go))
    me.wait_state(first, "running")
    wait_until(lambda: me.hosts()["hosta"].load == load, 30, f"hosta to report load {load}")
    return tm, me, loadavg, go, first


def test_b05_no_host_gets_a_job_while_its_load_plus_the_slots_exceed_number_slots(
    make_installation,
    tmp_path: Path,
) -> None:
    tm, me, _, go, first = _loaded_host(make_installation, tmp_path, "3.50")
    second = me.submit("echo ran > second.txt")
    job = me.job(second)
    # 3.50 + 1 > 4, although 3 of the 4 slots are free.
    assert job.state == "waiting" and job.wait_reason == "load too high on every fitting host", (
        job.text
    )
    assert me.hosts()["hosta"].free == 3
    # The first job's end runs a scheduling pass: still too loaded.
    go.touch()
    assert me.wait_state(first, *ENDED).state == "finished"
    assert me.state(second) == "waiting"
    third = me.submit("true")  # and so does a submission
    assert me.state(second) == "waiting" and me.state(third) == "waiting"
    assert not (tm.work / "second.txt").exists()
    assert me.hosts()["hosta"].free == 4


def test_b05_a_job_held_back_by_load_starts_once_the_load_falls(
    make_installation, tmp_path: Path
) -> None:
    tm, me, loadavg, go, first = _loaded_host(make_installation, tmp_path, "3.50")
    go.touch()
    me.wait_state(first, *ENDED)
    second = me.submit("echo ran > second.txt")
    assert me.state(second) == "waiting"
    loadavg.write_text("0.50 0.50 0.50 1/100 1\n")
    # Executors report every 5 s; nothing else happens in the cluster: only a report of the
    # lower load can start it (the deadline is patience, not a bound on the report's period).
    wait_until(lambda: (tm.work / "second.txt").exists(), 60, "the held-back job to run")


def test_b06_nothing_is_dispatched_while_the_cluster_is_deactivated(make_installation) -> None:
    tm = make_installation(ClusterHost("hosta", 2))
    me = Client(tm)
    assert me.td("deactivatecluster") == "deactivated."
    ids = [me.submit(f"echo {i} > ran.{i}") for i in range(3)]  # accepted ...
    assert sorted(listed_ids(me.tms("lswjobs"))) == ids  # ... and waiting
    for job_id in ids:
        job = me.job(job_id)
        assert job.state == "waiting" and job.wait_reason == "cluster is deactivated"
    assert json.loads(me.td("gettdstatus"))["activity status"] is False
    assert me.hosts()["hosta"].free == 2 and not list(tm.work.glob("ran.*"))

    assert me.td("activatecluster") == "activated."
    for i, job_id in enumerate(ids):
        assert me.wait_state(job_id, *ENDED).state == "finished"
        assert (tm.work / f"ran.{i}").read_text() == f"{i}\n"


def test_b07_a_deactivated_host_gets_no_new_jobs_and_its_running_jobs_finish(
    make_installation,
) -> None:
    tm = make_installation(ClusterHost("hosta", 2), ClusterHost("hostb", 2))
    me = Client(tm)
    go = {n: tm.work / f"go.{n}" for n in ("j1", "j2", "j3")}
    j1 = me.submit(f"{gate(go['j1'])}; echo done > j1.txt")
    there = me.wait_state(j1, "running").host
    elsewhere = "hostb" if there == "hosta" else "hosta"
    assert me.td(f"deactivatehost:{there}") == f"host {there} has been deactivated"
    assert me.hosts()[there].status == "inactive"

    j2 = me.submit(gate(go["j2"]))
    j3 = me.submit(gate(go["j3"]))
    assert me.wait_state(j2, "running").host == elsewhere
    assert me.wait_state(j3, "running").host == elsewhere
    # The deactivated host has a free slot, the other none: the job waits.
    j4 = me.submit("echo ran > j4.txt")
    assert me.state(j4) == "waiting"
    assert me.hosts()[there].free == 1 and me.hosts()[elsewhere].free == 0
    assert me.state(j1) == "running"

    go["j1"].touch()
    done = me.wait_state(j1, *ENDED)
    assert (done.state, done.fields["exit code"], done.host) == ("finished", "0", there)
    assert (tm.work / "j1.txt").read_text() == "done\n"
    assert me.state(j4) == "waiting"  # the end ran a pass; the host stays closed
    go["j2"].touch()
    assert me.wait_state(j4, *ENDED).host == elsewhere
    go["j3"].touch()
    assert me.wait_state(j3, *ENDED).host == elsewhere


def test_b08_higher_priority_first_then_submission_order_and_job_files_keep_priorities(
    make_installation,
) -> None:
    tm = make_installation(ClusterHost("hosta", 1))
    me = Client(tm)
    order = tm.work / "order"
    me.td("deactivatecluster")

    def job(name: str) -> str:
        return f"echo {name} >> {order}"

    ids = {
        "a": me.submit("-p", "0", job("a")),
        "b": me.submit("-p", "5", job("b")),
        "c": me.submit("-p", "0", job("c")),
        "d": me.submit("-p", "10", job("d")),
    }
    (tm.work / "jobs.txt").write_text(
        f"command::{job('e')}\tpriority::7\ncommand::{job('f')}\tpriority::1\ncommand::{job('g')}\n"
    )  # takes -p 4 from the command line
    result = tm.run("hRunJob", "-p", "4", "-f", "jobs.txt", check=True)
    file_ids = expand_ids(re.search(r"\[([\d,-]+)\]", result.stdout).group(1))
    ids.update(zip("efg", file_ids, strict=True))
    assert me.job(ids["e"]).fields["priority"] == "7"
    assert me.job(ids["f"]).fields["priority"] == "1"
    assert me.job(ids["g"]).fields["priority"] == "4"

    expected = ["d", "e", "b", "g", "f", "a", "c"]
    assert listed_ids(me.td("lsnextjobs:10")) == [ids[n] for n in expected]
    me.td("activatecluster")
    wait_until(
        lambda: order.exists() and len(order.read_text().split()) == 7, 60, "all seven jobs to run"
    )
    assert order.read_text().split() == expected


def test_b09_excluded_hosts_never_get_the_job_and_an_unknown_host_is_an_error(
    make_installation,
) -> None:
    tm = make_installation(
        ClusterHost("hosta", 1), ClusterHost("hostb", 1), ClusterHost("hostc", 1)
    )
    me = Client(tm)
    go = tm.work / "go"
    first = me.submit("-E", "hosta,hostb", gate(go))
    assert me.wait_state(first, "running").host == "hostc"
    # hosta and hostb are free, hostc is busy: the job waits rather than go there.
    second = me.submit("-E", "hosta,hostb", "echo ran > second.txt")
    job = me.job(second)
    assert job.state == "waiting" and json.loads(job.fields["excluded hosts"]) == ["hosta", "hostb"]
    hosts = me.hosts()
    assert (hosts["hosta"].free, hosts["hostb"].free, hosts["hostc"].free) == (1, 1, 0)
    go.touch()
    assert me.wait_state(second, *ENDED).host == "hostc"
    assert me.job(first).host == "hostc"

    unknown = tm.run("hRunJob", "-E", "hosta,nosuchhost", "echo x > unknown.txt")
    assert unknown.returncode != 0 and "nosuchhost" in unknown.stderr, unknown.stderr
    assert "Traceback" not in unknown.stderr and "submitted" not in unknown.stdout
    assert me.td("findjobs:unknown.txt") == "no jobs found"


def test_b10_lajob_shows_the_state_history_with_timestamps_host_pid_and_exit_code(
    make_installation,
) -> None:
    tm = make_installation(ClusterHost("hosta", 1))
    me = Client(tm)
    go, pid_file = tm.work / "go", tm.work / "pid.txt"
    before = time.time()
    job_id = me.submit(
        f"echo $$ $PPID > {pid_file}.new; mv {pid_file}.new {pid_file}; {gate(go)}; exit 3"
    )
    running = me.wait_state(job_id, "running")
    wait_until(pid_file.exists, 30, "the job to write its pid")
    shell, parent = pid_file.read_text().split()
    pid = running.fields["pid"]
    # The job's shell, or the executor's per-job shepherd that runs it: started as
    # tm/executor/shim.py, or forked by the executor's zygote (tm/executor/_zygote, zygote.py).
    shepherd_cmdline = Path(f"/proc/{parent}/cmdline").read_bytes()
    assert pid == shell or (
        pid == parent and (b"shim.py" in shepherd_cmdline or b"zygote" in shepherd_cmdline)
    ), running.text
    assert running.host == "hosta"
    assert running.fields["exit code"] == "n.a."
    go.touch()
    done = me.wait_state(job_id, *ENDED)
    after = time.time()
    assert done.state == "failed", done.text
    assert (done.host, done.fields["pid"], done.fields["exit code"]) == ("hosta", pid, "3")
    assert [h.state for h in done.history] == ["waiting", "pending", "running", "failed"]
    stamps = [h.at for h in done.history]
    assert stamps == sorted(stamps)
    assert int(before) - 1 <= stamps[0] and stamps[-1] <= after + 1
    assert all(h.host == "hosta" for h in done.history[1:]), done.text


def test_b11_stdout_and_stderr_files_are_complete_relative_and_unwritable_ones_fail(
    make_installation,
) -> None:
    tm = make_installation()
    me = Client(tm)
    sub = tm.work / "sub"
    (sub / "out").mkdir(parents=True)
    n = 40000  # about 400 kB on each stream
    job_id = me.submit(
        "-o",
        "out/o.txt",
        "-O",
        "e.txt",
        f"seq 1 {n} | sed 's/^/out /'; seq 1 {n} | sed 's/^/err /' >&2",
        cwd=sub,
    )
    assert me.wait_state(job_id, *ENDED).state == "finished"
    assert (sub / "out" / "o.txt").read_text() == "".join(f"out {i}\n" for i in range(1, n + 1))
    assert (sub / "e.txt").read_text() == "".join(f"err {i}\n" for i in range(1, n + 1))
    assert not (tm.work / "e.txt").exists() and not (tm.root / "e.txt").exists()

    (sub / "afile").write_text("x")
    for option, path, why in (
        ("-o", "missing/o.txt", "No such file or directory"),
        ("-O", "afile/e.txt", "Not a directory"),
    ):
        bad = me.submit(option, path, "echo never > never.txt", cwd=sub)
        job = me.wait_state(bad, *ENDED)
        assert job.state == "failed", job.text
        assert str(sub / path) in job.fields["reason"] and why in job.fields["reason"], job.text
    assert not (sub / "never.txt").exists()


def test_b12_the_log_file_has_command_host_times_run_time_stdout_and_stderr(
    make_installation,
) -> None:
    tm = make_installation()
    me = Client(tm)
    (tm.work / "logs").mkdir()
    command = "echo out-line; echo err-line >&2; sleep 0.3"
    job_id = me.submit("-l", "logs/job.log", command)
    assert me.wait_state(job_id, *ENDED).state == "finished"
    log = (tm.work / "logs" / "job.log").read_text()
    sections = dict(re.findall(r"^BEGIN (\w+)\n(.*?)^END \1$", log, re.M | re.S))
    assert sections.keys() == {"command", "info", "stdout", "stderr"}, log
    assert sections["command"] == command + "\n"
    assert sections["stdout"] == "out-line\n" and sections["stderr"] == "err-line\n"
    info = dict(line.split(": ", 1) for line in sections["info"].splitlines())
    assert info["host"] == socket.gethostname()
    start = datetime.datetime.fromisoformat(info["start time"])
    end = datetime.datetime.fromisoformat(info["end time"])
    run_time = float(info["run time"].removesuffix(" s"))
    assert 0.3 <= run_time < 60 and start <= end
    assert abs((end - start).total_seconds() - run_time) <= 1.0


def test_b13_a_job_file_submits_one_job_per_line_and_prints_all_ids(make_installation) -> None:
    tm = make_installation(ClusterHost("hosta", 4))
    me = Client(tm)
    lines = [
        "# parameter sweep",
        "command::echo {idx} > out.{idx}",
        "",
        "command::echo {idx} > out.{idx}\tgroup::own",
        "command::echo {idx} > out.{idx}\tpriority::9",
        "command::echo {idx} > out.{idx}",
    ]
    (tm.work / "jobs.txt").write_text("\n".join(lines) + "\n")
    result = tm.run("hRunJob", "-g", "sweep", "-f", "jobs.txt")
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(
        r"(\d+) job\(s\) \[([\d,-]+)\] have been submitted to TaskDispatcher\.\n", result.stdout
    )
    assert match, result.stdout
    ids = expand_ids(match.group(2))
    assert int(match.group(1)) == len(ids) == 4 and ids == sorted(set(ids))
    indexes = [i for i, line in enumerate(lines) if line.startswith("command::")]
    for job_id, idx in zip(ids, indexes, strict=True):
        job = me.wait_state(job_id, *ENDED)
        assert job.state == "finished"
        assert job.fields["command"] == f"echo {idx} > out.{idx}"
        assert job.fields["group"] == ("own" if idx == 3 else "sweep")
        assert job.fields["priority"] == ("9" if idx == 4 else "0")
        assert (tm.work / f"out.{idx}").read_text() == f"{idx}\n"


def _group_counts(text: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(\w+): (\S+)$", text, re.M))


def test_b14_groups_report_counts_per_state_and_progress(make_installation) -> None:
    tm = make_installation(ClusterHost("hosta", 4))
    me = Client(tm)
    go = tm.work / "go"
    done = [me.submit("-g", "run7", "true") for _ in range(2)]
    broken = me.submit("-g", "run7", "exit 1")
    held = me.submit("-g", "run7", gate(go))
    me.submit("-g", "elsewhere", "true")
    me.submit("true")  # in no group: not listed by lagroups
    for job_id in (*done, broken):
        me.wait_state(job_id, *ENDED)
    me.wait_state(held, "running")

    text = me.tms("lagroup:run7")
    assert text.splitlines()[0] == "group: run7"
    counts = _group_counts(text)
    assert {
        k: counts[k]
        for k in (
            "waiting",
            "pending",
            "running",
            "finished",
            "failed",
            "killed",
            "total",
            "progress",
        )
    } == {
        "waiting": "0",
        "pending": "0",
        "running": "1",
        "finished": "2",
        "failed": "1",
        "killed": "0",
        "total": "4",
        "progress": "75.00%",
    }
    assert me.tms("hasgroupfinished:run7") == "no"
    assert re.findall(r"^group: (\S+)", me.tms("lagroups"), re.M) == ["elsewhere", "run7"]

    go.touch()
    me.wait_state(held, *ENDED)
    counts = _group_counts(me.tms("lagroup:run7"))
    assert (counts["finished"], counts["failed"], counts["running"], counts["progress"]) == (
        "3",
        "1",
        "0",
        "100.00%",
    )
    assert me.tms("hasgroupfinished:run7") == "yes"


def test_b15_through_the_tms_a_user_sees_only_their_jobs_through_the_dispatcher_everyone(
    make_installation,
    other: UnixUser,
) -> None:
    tm = make_installation(
        ClusterHost("hosta", 4), users=[ROOT_ADMIN, (other.name, "user")], shared=True
    )
    root, them = Client(tm), Client(tm, other)
    mine = root.submit("-g", "shared", "echo root-secret-marker")
    theirs = them.submit("-g", "shared", "echo other-secret-marker")
    root.wait_state(mine, *ENDED)
    them.wait_state(theirs, *ENDED)

    for client, own, foreign in ((root, mine, theirs), (them, theirs, mine)):
        assert listed_ids(client.tms("lsfjobs")) == [own]
        assert listed_ids(client.tms("findjobs:secret-marker")) == [own]
        assert _group_counts(client.tms("lagroup:shared"))["total"] == "1"
        peek = client.run("hConnect", f"lajob:{foreign}")
        assert peek.returncode != 0 and f"unknown job {foreign}" in peek.stderr, peek.stderr
        assert "secret-marker" not in peek.stdout + peek.stderr

    # The admin, through the dispatcher, sees everyone's jobs and whose they are.
    listing = root.td("lsfjobs")
    assert sorted(listed_ids(listing)) == sorted([mine, theirs])
    rows = {row.job_id: row.user for row in parse_listing(listing)}
    assert rows == {mine: "root", theirs: other.name}
    assert sorted(listed_ids(root.td("findjobs:secret-marker"))) == sorted([mine, theirs])
    assert root.job(theirs, via_dispatcher=True).fields["user"] == other.name
    # A user without the admin role sees only their own jobs through the dispatcher too.
    assert listed_ids(them.td("lsfjobs")) == [theirs]
    assert listed_ids(them.td("findjobs:secret-marker")) == [theirs]
    for admin_only in (
        "rmjobs:root",
        "deactivatehost:hosta",
        "deactivatecluster",
        "disableuser:root",
        "reload",
        "setallrjobsaswaiting",
    ):
        refused = them.run("hConnect", "-T", admin_only)
        assert refused.returncode != 0 and "does not have the admin role" in refused.stderr, (
            admin_only,
            refused.stderr,
        )
    # Anyone may look.
    assert "hosta" in them.td("lscluster")


def test_b16_hrunjob_status_reports_tms_dispatcher_hosts_slots_and_the_users_counts(
    make_installation,
) -> None:
    tm = make_installation(
        ClusterHost("hosta", 2), ClusterHost("hostb", 3), ClusterHost("hostc", 4, active=False)
    )
    me = Client(tm)
    go = tm.work / "go"
    finished = me.submit("true")
    failed = me.submit("exit 2")
    running = me.submit("-c", "2", gate(go))
    waiting = me.submit("-c", "3", "-E", "hostb", "true")  # hostc is inactive, hosta too small
    for job_id in (finished, failed):
        me.wait_state(job_id, *ENDED)
    me.wait_state(running, "running")
    assert me.state(waiting) == "waiting"

    out = tm.run("hRunJob", "-s", check=True).stdout
    tms = json.loads((tm.home / ".taskmanager" / "tms.json").read_text())
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(tms["started_at"]))
    assert f"tms running since: {since} (pid {me.tms_pid()})" in out, out
    assert f"dispatcher: {socket.gethostname()}:{tm.port} (connected)" in out, out
    assert "dispatcher activity status: active" in out
    assert "active hosts: 2" in out and "occupied slots: 2 / 5" in out, out
    counts = dict(re.findall(r"^ {4}(\w+): (\d+)$", out, re.M))
    assert counts == {
        "waiting": "1",
        "pending": "0",
        "running": "1",
        "finished": "1",
        "failed": "1",
        "killed": "0",
    }, out

    me.td("deactivatecluster")
    assert "dispatcher activity status: not active" in tm.run("hRunJob", "-s", check=True).stdout
    go.touch()


#: How soon a waiting job must start once its slot is free, or a submission once it is
#: acknowledged, measured between times the jobs record themselves. The dispatcher does
#: nothing on a timer that could start a job except by accident: its periodic work is the
#: executors' heartbeats (every 5 s) and the lease check (a quarter of the lease, 75 s by
#: default). A dispatcher that found startable jobs on such a tick, or by polling every few
#: seconds, would take up to its period; pushed, the start costs a database commit, an AMP
#: round trip and a process start: tens of milliseconds on an idle machine. 2 s keeps a loaded
#: 2-core machine from failing a correct dispatcher while still failing one driven by any
#: period of 2 s or more (it does not exclude a poll of under 2 s; a 1 s poll would need a
#: bound under 1 s, which a shared, loaded machine cannot promise).
PROMPT = 2.0


def test_b17_when_a_job_ends_a_waiting_job_that_fits_starts_without_a_nudge(
    make_installation,
) -> None:
    tm = make_installation(ClusterHost("hosta", 1))
    me = Client(tm)
    records = tm.work / "records"
    recorder = write_recorder(records)
    go = tm.work / "go"
    first = me.submit(recorded(recorder, gate(go)))
    me.wait_state(first, "running")
    # Two handoffs in a row, so that a start that merely met a timer's tick is unlikely to pass.
    chain = [me.submit(recorded(recorder, "true")) for _ in range(2)]
    assert [me.state(j) for j in chain] == ["waiting", "waiting"]
    assert me.hosts()["hosta"].free == 0

    go.touch()
    # From here on no command reaches TaskManager: only each job's end can start the next.
    wait_until(
        lambda: all(run_of(records, j) and run_of(records, j).end for j in chain),
        30,
        "the waiting jobs to run one after the other",
    )
    order = [run_of(records, j) for j in (first, *chain)]
    for previous, following in itertools.pairwise(order):
        handoff = following.start - previous.end
        assert 0 <= handoff < PROMPT, (
            f"job {following.job_id} started {handoff:.2f} s after job {previous.job_id} "
            f"ended: not pushed by the end"
        )
    for job_id in (first, *chain):
        assert me.wait_state(job_id, *ENDED).state == "finished"
    assert me.hosts()["hosta"].free == 1


def test_b18_a_submission_is_dispatched_at_once_when_capacity_exists(make_installation) -> None:
    tm = make_installation(ClusterHost("hosta", 2))
    me = Client(tm)
    records = tm.work / "records"
    recorder = write_recorder(records)
    go = tm.work / "go"
    held = me.submit(recorded(recorder, gate(go)))
    wait_until(lambda: run_of(records, held), 30, "the first job to start")
    # Nothing ends from here on: only the submission itself can start the next job.
    quick = me.submit(recorded(recorder, "true"))
    acknowledged = time.time()
    wait_until(lambda: run_of(records, quick), 30, "the new job to start")
    delay = run_of(records, quick).start - acknowledged
    assert delay < PROMPT, f"the job started {delay:.2f} s after its submission was acknowledged"
    assert run_of(records, quick).host == run_of(records, held).host == "hosta"
    assert run_of(records, held).end is None and me.state(held) == "running"
    assert me.wait_state(quick, *ENDED).state == "finished"
    go.touch()
    assert me.wait_state(held, *ENDED).state == "finished"


def test_b19_disableuser_keeps_waiting_jobs_waiting_and_enableuser_releases_them(
    make_installation,
    other: UnixUser,
) -> None:
    tm = make_installation(
        ClusterHost("hosta", 2), users=[ROOT_ADMIN, (other.name, "user")], shared=True
    )
    root, them = Client(tm), Client(tm, other)
    go = other.work / "go"
    running = them.submit(f"{gate(go)}; echo done > running.txt")
    them.wait_state(running, "running")

    assert root.td(f"disableuser:{other.name}") == "done."
    assert "disabled" in root.td(f"lsuser:{other.name}").split()
    later = them.submit("echo ran > later.txt")  # still accepted
    job = them.job(later)
    assert job.state == "waiting" and job.wait_reason == f"user {other.name} is disabled", job.text
    # The free slot goes to someone else meanwhile.
    assert root.wait_state(root.submit("true"), *ENDED).state == "finished"
    assert them.state(later) == "waiting" and them.state(running) == "running"
    go.touch()
    done = them.wait_state(running, *ENDED)
    assert (done.state, done.fields["exit code"]) == ("finished", "0")
    assert (other.work / "running.txt").read_text() == "done\n"
    assert them.state(later) == "waiting" and not (other.work / "later.txt").exists()

    assert root.td(f"enableuser:{other.name}") == "done."
    assert them.wait_state(later, *ENDED).state == "finished"
    assert (other.work / "later.txt").read_text() == "ran\n"


def test_b20_rmwjobs_removes_waiting_jobs_and_rmjobs_removes_all_killing_running_ones(
    make_installation,
    other: UnixUser,
) -> None:
    tm = make_installation(
        ClusterHost("hosta", 1), users=[ROOT_ADMIN, (other.name, "user")], shared=True
    )
    root, them = Client(tm), Client(tm, other)
    go, pid_file = other.work / "go", other.work / "pid"
    ended = them.submit("true")
    them.wait_state(ended, *ENDED)
    running = them.submit(f"echo $$ > {pid_file}; {gate(go)}")
    them.wait_state(running, "running")
    wait_until(pid_file.exists, 30, "the running job's pid")
    pid = int(pid_file.read_text())
    waiting = [them.submit(f"echo {i} > w{i}.txt") for i in range(2)]
    roots = root.submit("echo root > root.txt")
    assert [them.state(j) for j in waiting] == ["waiting", "waiting"]

    assert root.td(f"rmwjobs:{other.name}") == f"removed 2 job(s) of user {other.name}."
    assert them.tms("lswjobs") == "no waiting jobs"
    gone = them.run("hConnect", f"lajob:{waiting[0]}")
    assert gone.returncode != 0 and "unknown job" in gone.stderr
    assert them.state(running) == "running" and alive(pid)
    assert root.state(roots) == "waiting"  # another user's waiting job stays

    assert root.td(f"rmjobs:{other.name}") == f"removed 2 job(s) of user {other.name}."
    wait_until(lambda: not alive(pid), 20, "the removed running job's process to be killed")
    assert them.tms("lsfjobs") == "no finished jobs" and them.tms("lsrjobs") == "no running jobs"
    assert root.td(f"findjobs:{pid_file}") == "no jobs found"
    # Its slot is free: the other user's job runs.
    assert root.wait_state(roots, *ENDED).state == "finished"
    assert not list(other.work.glob("w*.txt"))


def _checkslots(me: Client) -> dict[str, int]:
    """``checkslots``: the occupied slots per host it recomputed."""
    out = me.td("checkslots")
    head, _, hosts = out.partition(": ")
    assert head == "number of occupied slots have been updated", out
    return {name: int(used) for name, used, _ in re.findall(r"(\S+) (\d+)/(\d+)", hosts)}


def test_b21_setallpjobsaswaiting_requeues_pending_jobs_and_checkslots_matches_the_jobs(
    make_installation,
    tmp_path: Path,
    strays: list[Path],
) -> None:
    # hosta's executors are started through "ssh", here one that never connects anything,
    # so a job placed there stays pending.
    fakebin, hung = tmp_path / "fakebin", tmp_path / "hung.pids"
    fakebin.mkdir()
    (fakebin / "ssh").write_text(f"#!/bin/sh\necho $$ >> {hung}\nexec sleep 120\n")
    (fakebin / "ssh").chmod(0o755)
    strays.append(hung)
    tm = make_installation(
        ClusterHost("hosta", 2, ssh_target="hosta.unreachable"),
        ClusterHost("hostb", 3),
        env={"PATH": f"{fakebin}:{os.environ['PATH']}"},
    )
    me = Client(tm)
    records = tm.work / "records"
    recorder = write_recorder(records)
    go = {name: tm.work / f"go.{name}" for name in ("wide", "narrow")}
    stuck = me.submit("-c", "2", "-E", "hostb", recorded(recorder, "true", 2))
    assert me.wait_state(stuck, "pending").host == "hosta"
    wide = me.submit("-c", "2", recorded(recorder, gate(go["wide"]), 2))
    narrow = me.submit("-c", "1", recorded(recorder, gate(go["narrow"]), 1))
    wait_until(
        lambda: run_of(records, wide) and run_of(records, narrow),
        30,
        "the two jobs on hostb to start",
    )
    assert listed_ids(me.tms("lspjobs")) == [stuck]

    def held_by_the_jobs() -> dict[str, int]:
        """The slots really held per host: those of the jobs running by their own records,
        and those of the jobs placed but not started yet (pending), which hold them too."""
        held = {"hosta": 0, "hostb": 0}
        for host, slots in occupied_now(records).items():
            held[host] += slots
        for job_id in listed_ids(me.tms("lspjobs")):
            job = me.job(job_id)
            assert run_of(records, job_id) is None, job.text  # pending: it has not started
            held[job.host] += int(job.fields["slots"])
        return held

    assert held_by_the_jobs() == {"hosta": 2, "hostb": 3}
    assert _checkslots(me) == held_by_the_jobs()

    me.td("deactivatecluster")  # or the re-queued job would be placed again at once
    assert me.td("setallpjobsaswaiting") == "set 1 jobs as waiting"
    job = me.job(stuck)
    assert (job.state, job.host) == ("waiting", "n.a."), job.text
    assert me.state(wide) == me.state(narrow) == "running"  # running jobs are not touched
    assert held_by_the_jobs() == {"hosta": 0, "hostb": 3}
    assert _checkslots(me) == held_by_the_jobs()
    assert me.hosts()["hosta"].free == 2

    # As the jobs end (by their records, and once the dispatcher has their ends), so do
    # the slots checkslots counts.
    for name, job_id, left in (("narrow", narrow, 2), ("wide", wide, 0)):
        go[name].touch()
        assert me.wait_state(job_id, *ENDED).state == "finished"
        assert run_of(records, job_id).end is not None
        assert held_by_the_jobs() == {"hosta": 0, "hostb": left}
        assert _checkslots(me) == held_by_the_jobs()
    assert (me.hosts()["hosta"].free, me.hosts()["hostb"].free) == (2, 3)
    assert run_of(records, stuck) is None  # the re-queued job never ran


def test_b22_lscluster_status_and_gettdstatus_report_hosts_activity_slots_and_counts(
    make_installation,
) -> None:
    tm = make_installation(
        ClusterHost("hosta", 2), ClusterHost("hostb", 3), ClusterHost("hostc", 4, active=False)
    )
    me = Client(tm)
    go = tm.work / "go"
    finished, failed = me.submit("true"), me.submit("exit 1")
    running = me.submit(gate(go))
    waiting = me.submit("-c", "3", "-E", "hostb", "true")
    for job_id in (finished, failed):
        me.wait_state(job_id, *ENDED)
    assert me.wait_state(running, "running").host == "hostb"  # the most free slots
    assert me.state(waiting) == "waiting"

    head, hosts = parse_hosts(me.td("lscluster"))
    assert head == "cluster is active"
    assert {h.name: (h.status, h.free, h.max_slots) for h in hosts.values()} == {
        "hosta": ("active", 2, 2),
        "hostb": ("active", 2, 3),
        "hostc": ("inactive", 4, 4),
    }
    assert hosts["hostb"].executors >= 1

    status = me.td("status")
    for line in (
        "cluster is active",
        "active hosts: 2",
        "occupied slots: 1 / 5",
        "waiting jobs: 1",
        "pending jobs: 0",
        "running jobs: 1",
        "finished jobs: 1",
        "failed jobs: 1",
        "killed jobs: 0",
    ):
        assert line in status.splitlines(), status
    assert f":{tm.port} running since" in status.splitlines()[0]

    doc = json.loads(me.td("gettdstatus"))
    assert {
        k: doc.get(k)
        for k in (
            "activity status",
            "active hosts",
            "total slots",
            "occupied slots",
            "waiting jobs",
            "running jobs",
            "finished jobs",
            "failed jobs",
            "killed jobs",
        )
    } == {
        "activity status": True,
        "active hosts": 2,
        "total slots": 5,
        "occupied slots": 1,
        "waiting jobs": 1,
        "running jobs": 1,
        "finished jobs": 1,
        "failed jobs": 1,
        "killed jobs": 0,
    }
    assert json.loads(me.tms("gettdstatus")) == doc

    me.td("deactivatecluster")
    assert parse_hosts(me.td("lscluster"))[0] == "cluster is not active"
    assert "cluster is not active" in me.td("status").splitlines()
    assert json.loads(me.td("gettdstatus"))["activity status"] is False
    go.touch()


def _tree(pids: Path, marker: str = "") -> str:
    """A job whose shell starts a child shell with two grandchildren, all in its session."""
    return (
        f"sh -c 'sleep 300 & echo $! >> {pids}; sleep 300 & echo $! >> {pids}; wait' & "
        f"echo $! >> {pids}; echo $$ >> {pids}; wait{' # ' + marker if marker else ''}"
    )


def test_b23_killjob_and_its_plural_regex_and_all_forms_kill_the_whole_tree_and_free_slots(
    make_installation,
    other: UnixUser,
) -> None:
    tm = make_installation(
        ClusterHost("hosta", 8), users=[ROOT_ADMIN, (other.name, "user")], shared=True
    )
    root, them = Client(tm), Client(tm, other)
    pids = {n: tm.work / f"{n}.pids" for n in ("one", "two", "three", "match", "rest")}
    jobs = {n: root.submit(_tree(p, "match-me" if n == "match" else "")) for n, p in pids.items()}
    theirs_pid = other.work / "pid"
    theirs = them.submit(f"echo $$ > {theirs_pid}; sleep 300")
    for name, job_id in jobs.items():
        root.wait_state(job_id, "running")
        wait_until(lambda p=pids[name]: len(pids_in(p)) == 4, 30, f"the processes of {name}")
    them.wait_state(theirs, "running")
    wait_until(theirs_pid.exists, 30, "the other user's job pid")
    records = tm.work / "records"
    recorder = write_recorder(records)
    blocked = root.submit("-c", "3", recorded(recorder, "sleep 300", 3))  # 2 slots are free
    assert root.state(blocked) == "waiting"

    # Nobody kills another user's job, not even an admin through their TMS.
    for client, victim in ((root, theirs), (them, jobs["one"])):
        refused = client.run("hConnect", f"killjob:{victim}")
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
        assert re.search(rf"not yours|unknown job {victim}", refused.stderr), refused.stderr
    assert root.state(jobs["one"]) == "running" and them.state(theirs) == "running"

    def all_dead(*names: str) -> bool:
        return not any(alive(p) for n in names for p in pids_in(pids[n]))

    killed_at = time.time()
    assert root.tms(f"killjob:{jobs['one']}") == f"Job(s) {jobs['one']} have been killed."
    assert root.wait_state(jobs["one"], *ENDED).state == "killed"
    wait_until(lambda: all_dead("one"), 20, "every process of the killed job to be gone")
    assert all(alive(p) for n in ("two", "three", "match", "rest") for p in pids_in(pids[n]))
    # The killed job's slot is really free: with it, the 3-slot job fits and starts there.
    wait_until(lambda: run_of(records, blocked), 30, "the waiting job to start in the freed slot")
    assert run_of(records, blocked).start >= killed_at
    assert run_of(records, blocked).host == "hosta" and root.state(blocked) == "running"

    assert root.tms(f"killjobs:{jobs['two']}:{jobs['three']}") == (
        f"Job(s) {jobs['two']}, {jobs['three']} have been killed."
    )
    assert root.tms("killmatchingjobs:match-m.") == f"Job(s) {jobs['match']} have been killed."
    for name in ("two", "three", "match"):
        assert root.wait_state(jobs[name], *ENDED).state == "killed"
    wait_until(lambda: all_dead("two", "three", "match"), 20, "the killed jobs' processes to go")
    assert root.state(jobs["rest"]) == "running"

    killed_at = time.time()
    killed = root.tms("killalljobs")
    assert sorted(map(int, re.findall(r"\d+", killed))) == sorted([jobs["rest"], blocked])
    assert root.wait_state(jobs["rest"], *ENDED).state == "killed"
    assert root.wait_state(blocked, *ENDED).state == "killed"
    wait_until(lambda: all_dead("rest"), 20, "the last killed job's processes to go")
    assert them.state(theirs) == "running" and alive(int(theirs_pid.read_text()))
    # Every killed job's slots are free again; the other user's job keeps its one: a job
    # needing the other 7 starts there.
    assert root.hosts()["hosta"].free == 7
    after = root.submit("-c", "7", recorded(recorder, "true", 7))
    assert root.wait_state(after, *ENDED).state == "finished"
    assert run_of(records, after).start >= killed_at and run_of(records, after).host == "hosta"


def test_b23_killjob_also_kills_descendants_that_left_the_session_with_setsid(
    make_installation,
    strays: list[Path],
) -> None:
    tm = make_installation(ClusterHost("hosta", 2))
    me = Client(tm)
    pids = tm.work / "tree.pids"
    strays.append(pids)
    records = tm.work / "records"
    recorder = write_recorder(records)
    job_id = me.submit(
        f"setsid sleep 300 & echo $! >> {pids}; "
        f"setsid sh -c 'sleep 300 & echo $! >> {pids}; wait' & echo $! >> {pids}; "
        f"sleep 300 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    )
    me.wait_state(job_id, "running")
    wait_until(lambda: len(pids_in(pids)) == 5, 30, "the job's five processes")
    killed_at = time.time()
    assert me.tms(f"killjob:{job_id}") == f"Job(s) {job_id} have been killed."
    assert me.wait_state(job_id, *ENDED).state == "killed"
    try:
        wait_until(
            lambda: not any(alive(p) for p in pids_in(pids)),
            20,
            "every process of the killed job, setsid'd ones included, to be gone",
        )
    except AssertionError:
        left = {p: _session(p) for p in pids_in(pids) if alive(p)}
        pytest.fail(f"still alive 20 s after killjob (pid: session id): {left}")
    assert me.hosts()["hosta"].free == 2
    # Both slots are free: a 2-slot job starts there.
    after = me.submit("-c", "2", recorded(recorder, "true", 2))
    assert me.wait_state(after, *ENDED).state == "finished"
    assert run_of(records, after).start >= killed_at and run_of(records, after).host == "hosta"


def _session(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[3])


def test_b24_neither_the_tms_exiting_nor_a_dispatcher_restart_loses_a_job(
    make_installation,
) -> None:
    tm = make_installation(ClusterHost("hosta", 2))
    me = Client(tm)
    go = tm.work / "go"
    running = me.submit(f"{gate(go)}; echo done > running.txt")
    me.wait_state(running, "running")
    me.td("deactivatecluster")
    waiting = [me.submit(f"echo {i} > waiting.{i}") for i in range(2)]

    old_tms = me.tms_pid()
    assert me.tms("shutdown") == "terminating TMS ..."
    wait_until(lambda: not alive(old_tms), 15, "the TMS to exit")
    tm.stop_dispatcher()
    tm.start_dispatcher()

    assert sorted(listed_ids(me.td("lswjobs"))) == waiting
    assert listed_ids(me.td("lsrjobs")) == [running]
    assert me.state(running) == "running" and me.tms_pid() != old_tms
    me.td("activatecluster")
    for i, job_id in enumerate(waiting):
        assert me.wait_state(job_id, *ENDED).state == "finished"
        assert (tm.work / f"waiting.{i}").read_text() == f"{i}\n"
    go.touch()
    done = me.wait_state(running, *ENDED)
    assert (done.state, done.fields["exit code"]) == ("finished", "0"), done.text
    assert (tm.work / "running.txt").read_text() == "done\n"


def _executors(me: Client) -> dict[str, list[str]]:
    text = me.tms("lstmms")
    if text == "no tmms known.":
        return {}
    rows = [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]
    assert rows[0] == ["host", "state", "pid", "since", "jobs"], text
    return {row[0]: row for row in rows[1:]}


def test_b25_an_executor_starts_with_the_first_job_on_a_host_is_listed_stopped_and_idles_out(
    make_installation,
) -> None:
    # Executors take their idle timeout from the TMS that starts them. Until shutdownalltmms
    # has run they must not exit by themselves, whatever the machine's speed: the first TMS
    # gives them 600 s; a second one, started later, 5 s.
    tm = make_installation(
        ClusterHost("hosta", 1), ClusterHost("hostb", 1), env={"TM_EXECUTOR_IDLE_TIMEOUT": "600"}
    )
    me = Client(tm)
    pidfile = {h: tm.home / ".taskmanager" / f"tmmenial.{h}.pid" for h in ("hosta", "hostb")}
    go = {h: tm.work / f"go.{h}" for h in ("hosta", "hostb")}
    assert _executors(me) == {}
    assert not any(p.exists() for p in pidfile.values())

    first = me.submit(gate(go["hosta"]))
    assert me.wait_state(first, "running").host == "hosta"
    executors = _executors(me)
    assert list(executors) == ["hosta"] and not pidfile["hostb"].exists()
    pid_a = int(pidfile["hosta"].read_text())
    assert executors["hosta"][1:3] == ["connected", str(pid_a)] and alive(pid_a)

    second = me.submit(gate(go["hostb"]))  # hosta is full
    assert me.wait_state(second, "running").host == "hostb"
    executors = _executors(me)
    pid_b = int(pidfile["hostb"].read_text())
    assert sorted(executors) == ["hosta", "hostb"] and executors["hostb"][2] == str(pid_b)

    for host in ("hosta", "hostb"):
        go[host].touch()
    for job_id in (first, second):
        me.wait_state(job_id, *ENDED)
    # Idle, within their idle timeout: shutdownalltmms stops both.
    assert me.tms("shutdownalltmms").splitlines() == ["hosta: stopped", "hostb: stopped"]
    wait_until(lambda: not alive(pid_a) and not alive(pid_b), 15, "both executors to exit")
    assert _executors(me) == {}

    # The next job brings one back; with nothing to do it exits by itself.
    idle = 5
    old_tms = me.tms_pid()
    assert me.tms("shutdown") == "terminating TMS ..."
    wait_until(lambda: not alive(old_tms), 15, "the TMS to exit")
    tm.extra_env["TM_EXECUTOR_IDLE_TIMEOUT"] = str(idle)
    go["hosta"].unlink()
    third = me.submit(gate(go["hosta"]))
    host = me.wait_state(third, "running").host
    new_pid = int(pidfile[host].read_text())  # read while its job keeps it busy
    assert new_pid not in (pid_a, pid_b) and list(_executors(me)) == [host]
    go["hosta"].touch()
    assert me.wait_state(third, *ENDED).state == "finished"
    wait_until(lambda: not alive(new_pid), idle + 20, "the idle executor to exit by itself")
    wait_until(lambda: _executors(me) == {}, 10, "lstmms to forget the idle executor")
