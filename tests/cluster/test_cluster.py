"""TaskManager on a real (small) cluster: three hosts as network namespaces, each with its
own sshd; jobs of two users started by their TMMSs over real ssh, under their own uids, on
the hosts the dispatcher chose.  See conftest.py and netcluster.py for how it is built."""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.cluster.netcluster import SLOTS_PER_HOST, Cluster, wait_until
from tests.cluster.tmcli import (
    lajob,
    read_record,
    record_job,
    records_written,
    submit,
    submit_file,
    submit_many,
    wait_ended,
)

USERS = ("alice", "bob")


def netns_of(pid: int) -> str:
    return subprocess.run(
        ["ip", "netns", "identify", str(pid)], capture_output=True, text=True, check=True
    ).stdout.strip()


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def tmmenial_pid(c: Cluster, role: str, host_name: str) -> int | None:
    """The live TMMS of the user on the host, from the pid file twistd keeps in ~/.taskmanager."""
    pidfile = c.users[role].home / ".taskmanager" / f"tmmenial.{host_name}.pid"
    try:
        pid = int(pidfile.read_text().strip())
        Path(f"/proc/{pid}/status").stat()
    except (OSError, ValueError):
        return None
    return pid


def check_jobs_ran_where_assigned(
    c: Cluster, directory: dict[str, Path], ids: dict[str, list[int]]
) -> Counter:
    """Every job finished, under its owner's uid, on the host lajob names; hosts used."""
    used: Counter = Counter()
    for role, job_ids in ids.items():
        for job_id in job_ids:
            detail = lajob(c, role, job_id)
            assert detail.state == "finished", detail.text
            host = c.host_by_name(detail.host)
            record = read_record(c, directory[role], job_id)
            assert record.uid == c.users[role].uid, (role, job_id, record)
            assert record.addresses == {host.address}, (
                f"job {job_id} of {role} was assigned to {host.name} ({host.address}) "
                f"but ran at {record.addresses}"
            )
            used[(role, host.name)] += 1
    return used


def test_jobs_of_two_users_spread_over_hosts_under_their_own_uids(cluster: Cluster) -> None:
    c = cluster
    directory = {role: c.user_dir(role, "spread") for role in USERS}
    go = c.base / "go-spread"
    # As many jobs as the cluster has slots, each holding its slot until all have started:
    # however slow the submissions, they are spread over every host.
    per_user = SLOTS_PER_HOST * len(c.hosts) // len(USERS)
    ids = submit_many(
        c, {role: [record_job(directory[role], gate=go)] * per_user for role in USERS}, directory
    )
    wait_until(
        lambda: sum(records_written(d) for d in directory.values()) == 2 * per_user,
        120,
        "every job to start",
    )
    go.touch()
    for role in USERS:
        wait_ended(c, role, ids[role])

    used = check_jobs_ran_where_assigned(c, directory, ids)
    hosts_used = {host for _, host in used}
    assert hosts_used == {h.name for h in c.hosts.values()}, used
    for role, host_name in used:
        user, host = c.users[role], c.host_by_name(host_name)
        # The TMS started this executor through ssh to the host's address ...
        tms_log = (user.home / ".taskmanager" / "logs" / "tms.log").read_text()
        assert re.search(
            rf"starting an executor on {re.escape(host.name)}: ssh -o BatchMode=yes"
            rf".* {re.escape(host.address)} ",
            tms_log,
        ), tms_log[-2000:]
        # ... that host's sshd let the user in with the user's key ...
        assert f"Accepted publickey for {user.name} from {c.gateway}" in host.sshd_log.read_text()
        # ... and the executor runs in the host's namespace, as the user.
        pid = tmmenial_pid(c, role, host.name)
        assert pid is not None, f"no live TMMS of {user.name} on {host.name}"
        assert netns_of(pid) == host.netns
        assert uid_of(pid) == user.uid


def test_a_deactivated_host_gets_nothing_new_while_the_others_work(cluster: Cluster) -> None:
    c = cluster
    off = c.hosts["h2"]
    out = c.run_as("admin", "hConnect", "-T", f"deactivatehost:{off.short}", check=True).stdout
    assert f"host {off.name} has been deactivated" in out
    listing = c.run_as("admin", "hConnect", "-T", "lscluster", check=True).stdout
    assert re.search(rf"\b{re.escape(off.name)}\s+inactive\b", listing), listing

    directory = {role: c.user_dir(role, "deactivated") for role in USERS}
    go = c.base / "go-deactivated"
    # More jobs than the two active hosts have slots, each holding its slot until they are full.
    ids = submit_many(
        c, {role: [record_job(directory[role], gate=go)] * 5 for role in USERS}, directory
    )
    wait_until(
        lambda: sum(records_written(d) for d in directory.values()) == 2 * SLOTS_PER_HOST,
        120,
        "the active hosts to fill up",
    )
    go.touch()
    for role in USERS:
        wait_ended(c, role, ids[role])
    used = check_jobs_ran_where_assigned(c, directory, ids)
    hosts_used = {host for _, host in used}
    assert off.name not in hosts_used
    assert len(hosts_used) == 2, f"the two active hosts should share the work: {used}"


@pytest.mark.parametrize("names", ["full", "short"])
def test_excluded_hosts_are_never_used(cluster: Cluster, names: str) -> None:
    c = cluster
    h1, h2, h3 = (c.hosts[s] for s in ("h1", "h2", "h3"))
    excluded = ",".join(h.name if names == "full" else h.short for h in (h1, h2))
    directory = {"alice": c.user_dir("alice", f"excluded-{names}")}
    # More jobs than h3 has slots: with h1 and h2 free, only the exclusion keeps them away.
    count = SLOTS_PER_HOST + 2
    ids = submit_many(
        c, {"alice": [record_job(directory["alice"], sleep=1)] * count}, directory, "-E", excluded
    )
    wait_ended(c, "alice", ids["alice"])
    used = check_jobs_ran_where_assigned(c, directory, ids)
    assert {host for _, host in used} == {h3.name}, used


def _usage(c: Cluster) -> dict[str, float]:
    out = c.run_as("admin", "hConnect", "-T", "lsusers", check=True).stdout
    usage = {}
    for role in USERS:
        match = re.search(rf"\b{re.escape(c.users[role].name)}\b.*\busage (\d+(?:\.\d+)?)", out)
        assert match, out
        usage[role] = float(match.group(1))
    return usage


def test_fair_share_a_flood_does_not_hold_back_another_users_jobs(cluster: Cluster) -> None:
    c = cluster
    usage = _usage(c)
    # The user with more usage so far floods, so fair share favours the other one.
    flooder, other = sorted(USERS, key=lambda r: -usage[r])
    flood_dir, other_dir = c.user_dir(flooder, "flood"), c.user_dir(other, "fair")
    flood_size, total_slots = 200, SLOTS_PER_HOST * len(c.hosts)
    stamp = "date +%s.%N > {dir}/$TM_JOB_ID.{what}"
    flood_job = (
        f"{stamp.format(dir=flood_dir, what='start')}; sleep 0.6; "
        f"{stamp.format(dir=flood_dir, what='end')}"
    )
    flood_ids = submit_file(c, flooder, flood_dir, [flood_job] * flood_size, "-g", "flood")
    wait_until(
        lambda: len(list(flood_dir.glob("*.start"))) >= total_slots,
        60,
        "the flood to fill the cluster",
    )

    other_ids = submit_file(
        c, other, other_dir, [f"{stamp.format(dir=other_dir, what='start')}; sleep 0.2"] * 3
    )
    # From here the dispatcher has the other user's jobs (hRunJob returns once they are
    # stored); flood jobs that start while hRunJob itself runs are not overtaking anything.
    submitted_at = float(
        subprocess.run(["date", "+%s.%N"], capture_output=True, text=True, check=True).stdout
    )
    wait_ended(c, other, other_ids, timeout=120)
    wait_ended(c, flooder, flood_ids, timeout=240)

    def stamps(directory: Path, what: str) -> list[float]:
        return sorted(float(p.read_text()) for p in directory.glob(f"*.{what}"))

    flood_starts, flood_ends = stamps(flood_dir, "start"), stamps(flood_dir, "end")
    other_starts = stamps(other_dir, "start")
    assert len(flood_ends) == flood_size and len(other_starts) == 3
    last_other_start = max(other_starts)
    ended_before = sum(1 for t in flood_ends if t < last_other_start)
    assert ended_before < flood_size // 2, (
        f"{other}'s jobs waited for {ended_before} of {flood_size} flood jobs to end"
    )
    # Fair share: once the other user's jobs wait, they go first; only flood jobs already
    # placed when they were submitted (at most one per slot) may start in between.
    overtaken = sum(1 for t in flood_starts if submitted_at < t < last_other_start)
    assert overtaken <= total_slots, (
        f"{overtaken} flood jobs started after {other}'s jobs had been submitted and "
        "before they started"
    )


def test_a_user_not_in_etc_users_is_refused_with_a_clear_message(cluster: Cluster) -> None:
    c = cluster
    eve = c.users["eve"]
    marker = f"eve-was-here-{c.run_id}"
    refused = c.run_as("eve", "hRunJob", f"echo {marker}")
    assert refused.returncode != 0
    assert f"user {eve.name} is not allowed to use TaskManager" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    direct = c.run_as("eve", "hConnect", "-T", "lsrjobs")
    assert direct.returncode != 0 and "not allowed" in direct.stderr, direct.stderr
    assert "Traceback" not in direct.stderr
    found = c.run_as("admin", "hConnect", "-T", f"findjobs:{marker}", check=True).stdout
    assert found.strip() == "no jobs found"


@pytest.mark.parametrize(
    ("fault", "role", "expected"),
    [
        ("stopped", "bob", "Connection refused"),  # nothing listens: ssh fails at once
        (
            "hung",
            "carol",
            "timed out",
        ),  # kill -STOP: connects, then no banner within ConnectTimeout
        # The host's link is down: no answer to ARP, or (neighbour still cached) to the SYN.
        ("unreachable", "dave", "No route to host|Connection timed out"),
    ],
)
def test_a_host_whose_sshd_is_down_makes_jobs_go_elsewhere_with_the_reason(
    cluster: Cluster, fault: str, role: str, expected: str
) -> None:
    # A different user per fault: a failed start keeps that user off the host for 30 s.  The
    # slow faults use users who never had an executor there: the 60 s check of an earlier start
    # (Dispatcher._check_started, keyed on (user, host) only) would fire during this one and
    # fail it early as "no executor connected within 60 s" -- a dispatcher bug, reported.
    c = cluster
    down = c.hosts["h3"]
    user = c.users[role]
    # An executor already running there would still take jobs: stop it first.
    pid = tmmenial_pid(c, role, down.name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: tmmenial_pid(c, role, down.name) is None, 30, "the TMMS to exit")
    wait_until(
        lambda: down.name not in _executors(c, user.name), 30, "the dispatcher to forget the TMMS"
    )
    # The isolation fixture (conftest.py) undoes each fault after the test.
    if fault == "stopped":
        c.stop_sshd(down)
    elif fault == "hung":
        c.pause_sshd(down)
    else:
        c.cut_link(down)

    directory = {role: c.user_dir(role, f"sshd-{fault}")}
    go = c.base / f"go-sshd-{fault}"
    log_start = c.dispatcher_log.stat().st_size
    # One job per slot of the cluster, each holding its slot until the test lets it go: some
    # must be placed on the broken host. Once its start has failed they are let go.
    count = SLOTS_PER_HOST * len(c.hosts)
    ids = submit_many(c, {role: [record_job(directory[role], gate=go)] * count}, directory)
    wait_until(
        lambda: (
            f"starting an executor of {user.name} on {down.name} failed"
            in c.dispatcher_log.read_bytes()[log_start:].decode(errors="replace")
        ),
        180,
        f"the executor start on {down.name} to fail",
    )
    go.touch()
    wait_ended(c, role, ids[role], timeout=180)
    used = check_jobs_ran_where_assigned(c, directory, ids)
    assert down.name not in {host for _, host in used}

    reason = f"executor start on {down.name} failed"
    affected = [
        d
        for d in (lajob(c, role, i) for i in ids[role])
        if any(reason in line for line in d.history)
    ]
    assert affected, f"no job was placed on {down.name} first"
    for detail in affected:
        line = next(line for line in detail.history if reason in line)
        assert re.search(expected, line) and down.address in line, line
        # Placed on the dead host, sent back to waiting, then run elsewhere.
        states = [h.split()[2] for h in detail.history]
        assert states[-3:] == ["pending", "running", "finished"], detail.text
    assert f"starting an executor of {user.name} on {down.name} failed" in (
        c.dispatcher_log.read_text()
    )


def _executors(c: Cluster, name: str) -> str:
    out = c.run_as("admin", "hConnect", "-T", f"lsuser:{name}", check=True).stdout
    match = re.search(r"executors: (\S+)", out)
    assert match, out
    return match.group(1)


def test_a_host_cut_off_while_running_a_job_stops_it_and_the_job_runs_again_elsewhere(
    cluster: Cluster,
) -> None:
    c = cluster
    cut = c.hosts["h3"]
    directory = c.user_dir("alice", "cut-off")
    for other in ("h1", "h2"):  # the job goes to h3 first
        c.run_as("admin", "hConnect", "-T", f"deactivatehost:{c.hosts[other].name}", check=True)
    # The first attempt records its shell's pid and runs long; a later one ends at once.
    command = (
        f"cd {directory} && if [ -e first.pid ]; then {record_job(directory)}; "
        "else echo $$ > first.pid; sleep 300; fi"
    )
    job = submit(c, "alice", command, cwd=directory)
    wait_until(
        lambda: (
            (directory / "first.pid").exists() and (directory / "first.pid").read_text().strip()
        ),
        120,
        "the job to start on h3",
    )
    assert lajob(c, "alice", job).host == cut.name
    first = int((directory / "first.pid").read_text())
    for other in ("h1", "h2"):
        c.run_as("admin", "hConnect", "-T", f"activatehost:{c.hosts[other].name}", check=True)

    c.cut_link(cut)
    # Without answers from the dispatcher for half the lease, h3's executor stops the job there;
    # the dispatcher requeues it after the lease, and it runs on a host still reachable.
    wait_until(
        lambda: not Path(f"/proc/{first}").exists(),
        60,
        "the executor on the cut-off host to stop its job",
    )
    assert not c.link_up(cut)
    wait_ended(c, "alice", [job], timeout=120)
    detail = lajob(c, "alice", job)
    assert detail.state == "finished", detail.text
    assert detail.host in (c.hosts["h1"].name, c.hosts["h2"].name), detail.text
    record = read_record(c, directory, job)
    assert record.addresses == {c.host_by_name(detail.host).address}
    states = [line.split()[2:5] for line in detail.history]
    assert ["lost", "attempt", "1"] in states, detail.text
    assert states[-1] == ["finished", "attempt", "2"], detail.text


def test_a_host_without_tmmenial_reports_why_after_a_reload_and_jobs_go_elsewhere(
    cluster: Cluster,
) -> None:
    c = cluster
    broken = c.hosts["h3"]
    role = "bob"
    tab = c.etc / "cluster.tab"
    original = tab.read_text()
    lines = original.splitlines(keepends=True)
    # Column 10 (tmmenial_command) of h3: a twistd that is not installed there.
    for i, line in enumerate(lines):
        cols = line.rstrip("\n").split("\t")
        if cols[1] == broken.name:
            cols[9] = "/nonexistent/bin/twistd"
            lines[i] = "\t".join(cols) + "\n"
    try:
        tab.write_text("".join(lines))
        out = c.run_as("admin", "hConnect", "-T", "reload", check=True).stdout
        assert f"updated: {broken.name}" in out, out
        pid = tmmenial_pid(c, role, broken.name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: tmmenial_pid(c, role, broken.name) is None, 30, "the TMMS to exit")
        wait_until(
            lambda: broken.name not in _executors(c, c.users[role].name),
            30,
            "the dispatcher to forget the TMMS",
        )

        directory = {role: c.user_dir(role, "no-tmmenial")}
        go = c.base / "go-no-tmmenial"
        log_start = c.dispatcher_log.stat().st_size
        name = c.users[role].name
        # As in the sshd tests: the jobs hold their slots until the start on h3 has failed.
        count = SLOTS_PER_HOST * len(c.hosts)
        ids = submit_many(c, {role: [record_job(directory[role], gate=go)] * count}, directory)
        wait_until(
            lambda: (
                f"starting an executor of {name} on {broken.name} failed"
                in c.dispatcher_log.read_bytes()[log_start:].decode(errors="replace")
            ),
            180,
            f"the executor start on {broken.name} to fail",
        )
        go.touch()
        wait_ended(c, role, ids[role], timeout=180)
        used = check_jobs_ran_where_assigned(c, directory, ids)
        assert broken.name not in {host for _, host in used}
        reason = f"executor start on {broken.name} failed"
        lines_seen = [
            line
            for d in (lajob(c, role, i) for i in ids[role])
            for line in d.history
            if reason in line
        ]
        assert lines_seen, f"no job was placed on {broken.name} first"
        assert all("/nonexistent/bin/twistd" in line for line in lines_seen), lines_seen
    finally:
        tab.write_text(original)
        c.run_as("admin", "hConnect", "-T", "reload", check=True)


def run_on_host(c: Cluster, host_key: str, role: str, *argv: str) -> subprocess.CompletedProcess:
    """Run ``argv`` as the user, from inside the host's network namespace (a login there)."""
    u = c.users[role]
    return subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            c.hosts[host_key].netns,
            "setpriv",
            f"--reuid={u.uid}",
            f"--regid={u.gid}",
            "--clear-groups",
            "--",
            *argv,
        ],
        env=c.env(role),
        cwd=u.home,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_user_s_tms_is_reused_from_another_host_sharing_the_home(cluster: Cluster) -> None:
    c = cluster
    first = c.run_as("carol", "hConnect", "printserverinfo", check=True).stdout
    pid = re.search(r"\(pid (\d+)\)", first).group(1)
    # From h1, whose loopback is not the login host's: the TMS is found at the address it
    # reaches the dispatcher from, not started a second time.
    there = run_on_host(c, "h1", "carol", "hConnect", "printserverinfo")
    assert there.returncode == 0, there.stderr
    assert f"(pid {pid})" in there.stdout, there.stdout
    directory = c.user_dir("carol", "from-h1")
    submitted = run_on_host(
        c, "h1", "carol", "hRunJob", "--wait", f"cd {directory} && echo ok > out"
    )
    assert submitted.returncode == 0, submitted.stderr
    assert (directory / "out").read_text() == "ok\n"
    assert f"(pid {pid})" in c.run_as("carol", "hConnect", "printserverinfo", check=True).stdout


def _marks(path: Path) -> list[list[str]]:
    """The lines a job appended to its marker file, split into words."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def test_a_two_second_partition_neither_requeues_nor_kills_the_jobs_on_the_host(
    cluster: Cluster,
) -> None:
    # Scenario 6 of reliability-notes.md §5. The executor stops its jobs after half the lease
    # (EXECUTOR_LEASE / 2 = 5 s) without an answer, the dispatcher gives them up after the
    # lease: a 2 s partition is shorter than both, so it must cost nothing.
    c = cluster
    cut = c.hosts["h3"]
    directory = c.user_dir("alice", "partition")
    for other in ("h1", "h2"):  # the jobs go to h3
        c.run_as("admin", "hConnect", "-T", f"deactivatehost:{c.hosts[other].name}", check=True)
    # Each job records its own start (with its shell's pid) and end; "during" is let go while
    # the host is cut off, so its end is reported across the partition; "after" once healed.
    jobs = {}
    for name in ("during", "after"):
        marks_file, go = directory / f"{name}.marks", directory / f"{name}.go"
        jobs[name] = submit(
            c,
            "alice",
            f"echo start $$ $(date +%s.%N) >> {marks_file}; "
            f"while [ ! -e {go} ]; do sleep 0.05; done; "
            f"echo end $(date +%s.%N) >> {marks_file}",
            cwd=directory,
        )
        wait_until(functools.partial(_marks, marks_file), 120, f"the job {name} to start")
    for job in jobs.values():
        assert lajob(c, "alice", job).host == cut.name
    executor = tmmenial_pid(c, "alice", cut.name)
    assert executor is not None
    executor_log = c.users["alice"].home / ".taskmanager" / "logs" / f"tmmenial.{cut.name}.log"
    logs_before = {log: log.stat().st_size for log in (executor_log, c.dispatcher_log)}

    c.partition(cut)
    cut_at = time.time()
    started = time.monotonic()
    try:
        # The partition is real: from the host, the dispatcher's port cannot be reached.
        probe = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                cut.netns,
                "/usr/bin/python3",
                "-c",
                f"import socket; socket.create_connection(('{c.gateway}', {c.port}), 1)",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert probe.returncode != 0, "the dispatcher is still reachable from the cut-off host"
        (directory / "during.go").touch()
        wait_until(
            lambda: len(_marks(directory / "during.marks")) == 2,
            20,
            "the job let go during the partition to end",
        )
        # The fault lasts 2 s: the scenario's length, not a bound on anything.
        wait_until(lambda: time.monotonic() - started >= 2, 10, "the partition's 2 s")
    finally:
        c.heal(cut)
    healed_at = time.time()
    lasted = time.monotonic() - started
    (directory / "after.go").touch()

    wait_ended(c, "alice", list(jobs.values()), timeout=120)
    for name, job in jobs.items():
        detail = lajob(c, "alice", job)
        assert (detail.state, detail.fields["exit code"], detail.host) == (
            "finished",
            "0",
            cut.name,
        ), f"partition of {lasted:.1f} s:\n{detail.text}"
        # One attempt, never lost, requeued or killed.
        states = [line.split()[2:5] for line in detail.history]
        assert states == [
            [s, "attempt", "1"] for s in ("waiting", "pending", "running", "finished")
        ], detail.text
        # It ran once, to its end: one start, one end, in its own records.
        marks = _marks(directory / f"{name}.marks")
        assert [m[0] for m in marks] == ["start", "end"], marks
    during_end = float(_marks(directory / "during.marks")[1][1])
    assert cut_at <= during_end <= healed_at, (cut_at, during_end, healed_at)
    # The same executor ran them throughout: it was neither fenced nor replaced.
    assert tmmenial_pid(c, "alice", cut.name) == executor
    since = {
        log: log.read_bytes()[size:].decode(errors="replace") for log, size in logs_before.items()
    }
    assert "no answer from the dispatcher" not in since[executor_log], since[executor_log]
    assert "has been silent" not in since[c.dispatcher_log], since[c.dispatcher_log]
