"""The shared CLI helper of the integration and cluster suites (tests/helpers/cli.py) reads
what the real formatters print: if a format changes, this fails here, not as a puzzling
timeout in a suite of real processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import cli
from tm.jobfile import compress_ids
from tm.textcommands import format_hosts, format_job_detail, format_jobs

AT = time.mktime((2026, 11, 30, 12, 0, 0, 0, 0, -1))


def job(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 7,
        "user": "alice",
        "state": "running",
        "command": "echo a:b  c",
        "info": "",
        "group": "g",
        "slots": 2,
        "priority": 0,
        "shell": "/bin/sh",
        "cwd": "/w",
        "stdout": "o",
        "stderr": "e",
        "logfile": "",
        "estimated_time": None,
        "estimated_memory": None,
        "excluded_hosts": ["hB"],
        "host": "hA",
        "pid": 42,
        "exit_code": None,
        "signal": None,
        "reason": "",
        "suspended": False,
        "state_since": AT,
    }
    base.update(kw)
    return base


def history(state: str, attempt: int, host: str, reason: str, at: float = AT) -> dict[str, Any]:
    return {"at": at, "state": state, "attempt": attempt, "host": host, "reason": reason}


def test_lajob_fields_state_and_history_are_read_as_printed() -> None:
    text = format_job_detail(
        {
            "job": [job(state="failed", exit_code=3, reason="exit code 3")],
            "history": [
                history("waiting", 1, "", "submitted"),
                history("running", 1, "hA", "started", AT + 1),
                history("failed", 1, "hA", "exit code 3", AT + 2),
            ],
        }
    )
    info = cli.parse_job(text)
    assert (info.state, info.host, info.exit_code, info.reason) == (
        "failed",
        "hA",
        "3",
        "exit code 3",
    )
    assert info.fields["command"] == "echo a:b  c" and info.fields["excluded hosts"] == '["hB"]'
    assert [(h.state, h.attempt, h.host, h.reason) for h in info.history] == [
        ("waiting", 1, "", "submitted"),
        ("running", 1, "hA", "started"),
        ("failed", 1, "hA", "exit code 3"),
    ]
    assert [h.at - AT for h in info.history] == [0, 1, 2]
    assert info.attempt == 1
    # A history row is also its printed text.
    assert "exit code 3" in info.history[-1] and info.history[-1].split()[2:5] == [
        "failed",
        "attempt",
        "1",
    ]
    assert str(info) == text


def test_a_waiting_or_suspended_job_s_state_keeps_its_qualifier_apart() -> None:
    waiting = cli.parse_job(
        format_job_detail(
            {
                "job": [job(state="waiting", host=None, pid=None)],
                "wait_reason": "cluster is deactivated",
                "history": [],
            }
        )
    )
    assert (waiting.state, waiting.wait_reason, waiting.host) == (
        "waiting",
        "cluster is deactivated",
        "n.a.",
    )
    assert waiting.attempt == 0
    suspended = cli.parse_job(format_job_detail({"job": [job(suspended=True)], "history": []}))
    assert (suspended.state, suspended.status, suspended.wait_reason) == (
        "running",
        "running (suspended)",
        "suspended",
    )


def test_listings_are_read_with_and_without_the_user_column() -> None:
    jobs = [
        job(id=3, state="waiting"),
        job(id=4, state="running", host="hB"),
        job(id=5, state="finished", exit_code=0),
    ]
    mine = cli.parse_listing(format_jobs(jobs, with_user=False))
    assert [(r.number, r.job_id, r.user, r.state, r.host) for r in mine] == [
        (1, 3, "", "waiting", ""),
        (2, 4, "", "running", "hB"),
        (3, 5, "", "finished", ""),
    ]
    everyone = cli.parse_listing(format_jobs(jobs, with_user=True))
    assert [(r.job_id, r.user, r.state, r.host) for r in everyone] == [
        (3, "alice", "waiting", ""),
        (4, "alice", "running", "hB"),
        (5, "alice", "finished", ""),
    ]
    assert cli.listed_ids(format_jobs(jobs, with_user=True)) == [3, 4, 5]
    assert cli.parse_listing("no waiting jobs") == [] and cli.listed_ids("no jobs found") == []


def test_lscluster_is_read_per_host() -> None:
    text = format_hosts(
        {
            "cluster_active": True,
            "hosts": [
                {
                    "name": "hA",
                    "retired": False,
                    "active": True,
                    "max_slots": 4,
                    "occupied_slots": 1,
                    "load": 0.5,
                    "executors": 2,
                },
                {
                    "name": "hB",
                    "retired": True,
                    "active": True,
                    "max_slots": 2,
                    "occupied_slots": 0,
                    "load": None,
                    "executors": 0,
                },
            ],
        }
    )
    head, hosts = cli.parse_hosts(text)
    assert head == "cluster is active"
    assert hosts["hA"] == cli.HostRow("hA", "active", 3, 4, "0.50", 2)
    assert hosts["hB"] == cli.HostRow("hB", "retired", 2, 2, "n.a.", 0)
    assert cli.parse_hosts(format_hosts({"cluster_active": False, "hosts": []})) == (
        "cluster is not active",
        {},
    )


class Typist:
    """Who types: answers hRunJob the way the real one prints, and records what was typed."""

    def __init__(self, stdout: str, returncode: int = 0) -> None:
        self.stdout = stdout
        self.returncode = returncode
        self.typed: list[tuple[tuple[str, ...], Path | None]] = []

    def run(
        self, *argv: str, cwd: Path | None = None, check: bool = False
    ) -> subprocess.CompletedProcess:
        self.typed.append((argv, cwd))
        return subprocess.CompletedProcess(list(argv), self.returncode, self.stdout, "refused")


def test_submit_reads_the_one_line_of_hrunjob_and_nothing_else() -> None:
    typist = Typist("Job [12] has been submitted to TaskDispatcher.\n")
    assert cli.submit(typist, "-g", "x", "true", cwd=Path("/w")) == 12
    assert typist.typed == [(("hRunJob", "-g", "x", "true"), Path("/w"))]
    with pytest.raises(AssertionError):
        cli.submit(Typist("Job [12] has been submitted to TaskDispatcher.\nmore\n"), "true")
    with pytest.raises(AssertionError, match="refused"):
        cli.submit(Typist("", returncode=2), "true")


def test_submit_file_writes_the_file_and_expands_the_id_ranges(tmp_path: Path) -> None:
    ids = [3, 4, 5, 9]
    typist = Typist(f"4 job(s) [{compress_ids(ids)}] have been submitted to TaskDispatcher.\n")
    got = cli.submit_file(
        typist, "jobs.txt", "-g", "x", content=cli.job_file(["a", "b"]), cwd=tmp_path
    )
    assert got == ids
    assert (tmp_path / "jobs.txt").read_text() == "command::a\ncommand::b\n"
    assert typist.typed == [(("hRunJob", "-f", "jobs.txt", "-g", "x"), tmp_path)]


def test_the_cluster_s_runner_is_a_parameter() -> None:
    calls = []

    def run_as(
        role: str, *argv: str, cwd: Path | None = None, check: bool = False
    ) -> subprocess.CompletedProcess:
        calls.append((role, argv, cwd, check))
        return subprocess.CompletedProcess(list(argv), 0, "1  8  finished 2026  g\n", "")

    alice = cli.As(lambda *argv, **kw: run_as("alice", *argv, **kw), "alice")
    assert [r.job_id for r in cli.jobs(alice, "lsfjobs")] == [8]
    assert calls == [("alice", ("hConnect", "lsfjobs"), None, True)]


def test_the_environment_of_one_s_own_job_is_read_as_printed() -> None:
    history = [{"at": 1.0, "state": "waiting", "attempt": 1, "host": "", "reason": "submitted"}]
    env = {"PATH": "/bin:/usr/bin", "TWO": "a\nb", "EMPTY": ""}
    text = format_job_detail({"job": [job()], "history": history, "env": env})
    info = cli.parse_job(text)
    assert "environment:\n  EMPTY=\n  PATH=/bin:/usr/bin\n  TWO=a\\nb\nhistory:" in text
    assert info.env == {"PATH": "/bin:/usr/bin", "TWO": "a\\nb", "EMPTY": ""}
    assert info.fields["command"] == job()["command"] and len(info.history) == 1
    # Without the key (hConnect -T), no environment is shown.
    assert cli.parse_job(format_job_detail({"job": [job()], "history": history})).env == {}
