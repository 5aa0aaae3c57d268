"""Cluster configuration on a live dispatcher: reload (command and SIGHUP), retired hosts,
and a user's executors (lstmms, invokealltmms, shutdownalltmms, idle exit).

All hosts here run their executors on this machine (no ssh_target); tests/cluster covers
real hosts over ssh.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.helpers.cli import field, hosts, lajob, submit
from tests.helpers.processes import Installation, alive, wait_until


def row(name: str, slots: int) -> str:
    return f"{name}\t{name}\t{slots}\t{slots}\t\tFalse\t0\tTrue\n"


def test_reload_adds_updates_and_retires_hosts_and_a_retired_host_finishes_its_job(
    two_host_installation: Installation,
) -> None:
    # The job runs until the test lets it go: it is surely running at the reload.
    go = two_host_installation.work / "go"
    long = submit(
        two_host_installation,
        "-E",
        "hB",
        f"while [ ! -e {go} ]; do sleep 0.05; done; echo done > long.out",
    )
    wait_until(
        lambda: field(two_host_installation, long, "state") == "running", 30, "the long job to run"
    )
    assert field(two_host_installation, long, "host") == "hA"

    (two_host_installation.etc / "cluster.tab").write_text(row("hB", 4) + row("hC", 2))
    result = two_host_installation.run("hConnect", "-T", "reload", check=True)
    assert result.stdout.strip() == (
        "configuration reloaded: 3 host(s), 1 user(s); added: hC; updated: hB; retired: hA"
    )
    now = hosts(two_host_installation)
    assert now["hA"].status == "retired"
    assert (now["hB"].status, now["hB"].free, now["hB"].max_slots) == ("active", 4, 4)
    assert (now["hC"].status, now["hC"].free, now["hC"].max_slots) == ("active", 2, 2)

    # The retired host's job finishes normally; new jobs go to the remaining hosts only.
    new = [submit(two_host_installation, "true") for _ in range(4)]
    assert field(two_host_installation, long, "state") == "running"
    go.touch()
    wait_until(
        lambda: (two_host_installation.work / "long.out").exists(),
        30,
        "the job on the retired host to end",
    )
    wait_until(
        lambda: all(field(two_host_installation, j, "state") == "finished" for j in new + [long]),
        30,
        "all jobs to finish",
    )
    for j in new:
        assert field(two_host_installation, j, "host") in ("hB", "hC"), lajob(
            two_host_installation, j
        )
    # With nothing left on it, the next reload forgets the retired host.
    two_host_installation.run("hConnect", "-T", "reload", check=True)
    assert set(hosts(two_host_installation)) == {"hB", "hC"}


def test_sighup_reloads_and_a_malformed_file_changes_nothing(
    two_host_installation: Installation,
) -> None:
    (two_host_installation.etc / "cluster.tab").write_text(row("hA", 2) + "hB\thB\tmany\n")
    bad = two_host_installation.run("hConnect", "-T", "reload")
    assert bad.returncode != 0
    assert "reload refused, nothing changed" in bad.stderr
    assert "cluster.tab:2" in bad.stderr and "Traceback" not in bad.stderr
    assert set(hosts(two_host_installation)) == {"hA", "hB"}

    (two_host_installation.etc / "cluster.tab").write_text(
        row("hA", 2) + row("hB", 2) + row("hD", 3)
    )
    os.kill(two_host_installation.dispatcher.pid, signal.SIGHUP)
    wait_until(lambda: "hD" in hosts(two_host_installation), 15, "SIGHUP to add hD")
    added = hosts(two_host_installation)["hD"]
    assert (added.status, added.free, added.max_slots) == ("active", 3, 3)
    assert "SIGHUP: configuration reloaded" in two_host_installation.dispatcher_log.read_text()


def test_invoke_list_and_shut_down_executors_and_idle_exit(
    two_host_installation: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The executors inherit their idle timeout from the TMS that starts them. While this test
    # lists and stops them it must not race their idle exit: the first TMS gives them 600 s.
    monkeypatch.setenv("TM_EXECUTOR_IDLE_TIMEOUT", "600")
    out = two_host_installation.run("hConnect", "invokealltmms", check=True).stdout
    assert out.strip().splitlines() == ["hA: starting", "hB: starting"]

    def connected() -> list[list[str]]:
        lines = two_host_installation.run("hConnect", "lstmms", check=True).stdout.splitlines()[1:]
        return [line.split() for line in lines if "connected" in line]

    rows = wait_until(lambda: len(connected()) == 2 and connected(), 30, "two executors")
    pids = {r[0]: int(r[2]) for r in rows}
    assert set(pids) == {"hA", "hB"} and all(alive(p) for p in pids.values())
    again = two_host_installation.run("hConnect", "invokealltmms", check=True).stdout
    assert again.strip().splitlines() == ["hA: already running", "hB: already running"]

    go = two_host_installation.work / "go"
    busy = submit(two_host_installation, "-E", "hB", f"while [ ! -e {go} ]; do sleep 0.05; done")
    wait_until(
        lambda: field(two_host_installation, busy, "state") == "running", 30, "the job to run"
    )
    stop = (
        two_host_installation.run("hConnect", "shutdownalltmms", check=True)
        .stdout.strip()
        .splitlines()
    )
    assert len(stop) == 2 and stop[0].startswith("hA: kept, 1 job(s) run there"), stop
    assert stop[1] == "hB: stopped"
    wait_until(lambda: not alive(pids["hB"]), 15, "hB's executor to exit")
    assert alive(pids["hA"])
    go.touch()
    wait_until(
        lambda: field(two_host_installation, busy, "state") == "finished", 30, "the job to end"
    )
    # Idle now: it stops too.
    assert (
        two_host_installation.run("hConnect", "shutdownalltmms", check=True).stdout.strip()
        == "hA: stopped"
    )
    wait_until(lambda: not alive(pids["hA"]), 15, "hA's executor to exit")
    wait_until(
        lambda: two_host_installation.run("hConnect", "lstmms").stdout.strip() == "no tmms known.",
        15,
        "the dispatcher to forget the executors",
    )

    # A TMS started with TM_EXECUTOR_IDLE_TIMEOUT=3 starts executors that exit by themselves
    # 3 s after their last job: seen from a job running there (so the executor is surely up
    # when its pid is read), then without one.
    tms_pid = json.loads((two_host_installation.home / ".taskmanager" / "tms.json").read_text())[
        "pid"
    ]
    assert (
        two_host_installation.run("hConnect", "shutdown", check=True).stdout.strip()
        == "terminating TMS ..."
    )
    wait_until(lambda: not alive(tms_pid), 15, "the TMS to exit")
    monkeypatch.setenv("TM_EXECUTOR_IDLE_TIMEOUT", "3")
    go.unlink()
    last = submit(two_host_installation, "-E", "hB", f"while [ ! -e {go} ]; do sleep 0.05; done")
    wait_until(
        lambda: field(two_host_installation, last, "state") == "running", 30, "the last job to run"
    )
    executor = int((two_host_installation.home / ".taskmanager" / "tmmenial.hA.pid").read_text())
    assert alive(executor) and executor != pids["hA"]
    go.touch()
    wait_until(lambda: not alive(executor), 30, "hA's idle executor to exit by itself")
    assert field(two_host_installation, last, "state") == "finished"
    wait_until(
        lambda: two_host_installation.run("hConnect", "lstmms").stdout.strip() == "no tmms known.",
        15,
        "the dispatcher to forget the executor",
    )


def test_lstmms_pid_is_the_executor_process(two_host_installation: Installation) -> None:
    go = two_host_installation.work / "go"
    job = submit(two_host_installation, f"while [ ! -e {go} ]; do sleep 0.05; done")
    wait_until(
        lambda: field(two_host_installation, job, "state") == "running", 30, "the job to run"
    )
    lines = two_host_installation.run("hConnect", "lstmms", check=True).stdout.splitlines()
    pid = int(lines[1].split()[2])
    pidfiles = {
        p.name: int(p.read_text())
        for p in (two_host_installation.home / ".taskmanager").glob("tmmenial.*.pid")
    }
    assert pid in pidfiles.values(), (lines, pidfiles)
    info = json.loads((two_host_installation.home / ".taskmanager" / "tms.json").read_text())
    assert info["pid"] != pid
    go.touch()


def test_a_host_s_tmmenial_command_starts_its_executors(tmp_path: Path) -> None:
    import sys

    inst = Installation(tmp_path)
    wrapper = tmp_path / "tm-twistd"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {tmp_path}/wrapper.calls\n'
        f"exec {sys.executable} -c "
        "'from twisted.scripts.twistd import run; run()' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    (inst.etc / "cluster.tab").write_text(f"hW\thW\t1\t1\t\tFalse\t0\tTrue\t\t{wrapper}\n")
    # The user's TMS runs a named start command only when the user's configuration lists it
    # (issue 10 point 2; tests/integration/test_trust.py shows one that is not listed).
    (inst.home / ".taskmanager").mkdir(mode=0o700)
    (inst.home / ".taskmanager" / "tmmenial_commands").write_text(f"# mine\n{wrapper}\n")
    try:
        inst.start_dispatcher()
        result = inst.run("hRunJob", "--wait", "echo ran > out.txt", check=True)
        assert result.returncode == 0
        assert (inst.work / "out.txt").read_text() == "ran\n"
        calls = (tmp_path / "wrapper.calls").read_text().split()
        assert calls[-4:-1] == ["--host", "hW", "--dispatcher"]
        assert calls[-1].endswith("dispatcher.json")
        assert "tmmenial" in calls
    finally:
        inst.cleanup()
