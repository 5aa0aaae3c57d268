"""The opt-in trace of a job's path (tm.trace), and the AMP links' TCP settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from tm import trace
from tm.protocol.base import BoundedAMP

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tracing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "trace"
    monkeypatch.setenv("TM_TRACE", str(path))
    monkeypatch.setattr(trace, "ENABLED", True)
    monkeypatch.setattr(trace, "_fd", -1)
    yield path
    if trace._fd >= 0:
        os.close(trace._fd)


def test_each_point_appends_one_line_of_time_process_pid_stage_and_job(tracing: Path) -> None:
    trace.point("dispatcher", "placed", 17)
    trace.point("cli", "submit-sent", "u:5b1e")
    trace.point("tms", "pass")
    lines = tracing.read_text().splitlines()
    parsed = [trace.parse_line(line) for line in lines]
    assert [p[1:] for p in parsed if p] == [
        ("dispatcher", os.getpid(), "placed", "17"),
        ("cli", os.getpid(), "submit-sent", "u:5b1e"),
        ("tms", os.getpid(), "pass", "-"),
    ]
    times = [p[0] for p in parsed if p]
    assert times == sorted(times)
    assert times[-1] <= time.monotonic_ns()


def test_processes_append_to_one_file_without_losing_lines(tracing: Path) -> None:
    trace.point("bench", "spawn")
    code = "from tm import trace\nfor i in range(200): trace.point('cli', 'step', i)"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    children = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO) for _ in range(3)]
    assert [c.wait(60) for c in children] == [0, 0, 0]
    parsed = [trace.parse_line(line) for line in tracing.read_text().splitlines()]
    assert None not in parsed
    assert len(parsed) == 1 + 3 * 200
    assert {p[2] for p in parsed if p} == {os.getpid()} | {c.pid for c in children}


def test_without_tm_trace_nothing_is_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TM_TRACE"}
    env["PYTHONPATH"] = str(REPO)
    code = "from tm import trace\nassert not trace.ENABLED\ntrace.point('cli', 'main')"
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []


def test_a_malformed_line_is_told_apart() -> None:
    assert trace.parse_line("12 cli 3 main -\n") == (12, "cli", 3, "main", "-")
    assert trace.parse_line("12 cli main -") is None
    assert trace.parse_line("x cli 3 main -") is None


def test_the_job_of_a_message() -> None:
    assert trace.job_of({"job_id": 4, "timeout": 60.0}) == 4
    assert trace.job_of({"job_ids": [7, 8], "warnings": []}) == 8
    assert trace.job_of({"ends": [{"job_id": 5}, {"job_id": 6}]}) == 6  # JobsFinished
    assert trace.job_of({"env": {}, "orders": [{"job_id": 9}]}) == 9  # RunJobs
    assert trace.job_of({"cwd": "/", "jobs": [{"uuid": "ab-cd"}, {"uuid": "x"}]}) == "u:ab-cd"
    assert trace.job_of({"state": "finished"}) == "-"
    assert trace.job_of(None) == "-"


def test_a_batch_is_traced_as_its_single_command_once_for_each_job() -> None:
    # A job's path reads the same whether its end travelled alone or with others' ends.
    ends = {"ends": [{"job_id": 5}, {"job_id": 6}]}
    assert trace.named_jobs("JobsFinished", ends) == ("JobFinished", [5, 6])
    assert trace.named_jobs("RunJobs", {"env": {}, "orders": [{"job_id": 9}]}) == ("RunJob", [9])
    assert trace.named_jobs("JobFinished", {"job_id": 4}) == ("JobFinished", [4])
    assert trace.named_jobs("WaitJob", {"job_id": 4}) == ("WaitJob", [4])
    # A submission's table is traced as SubmitJobs, named by its first job's uuid.
    table = '{"fields":["uuid","command"],"same":{},"rows":[["ab-cd","true"],["x","true"]]}'
    assert trace.named_jobs("SubmitJobTable", {"jobs_table": table}) == ("SubmitJobs", ["u:ab-cd"])
    assert trace.named_jobs("SubmitJobTable", {"jobs_table": "{garbled"}) == ("SubmitJobs", ["-"])
    # Answered: a single command's own answer names its job; a batch's, the request's jobs.
    assert trace.answered_jobs([5, 6], {"failed": []}) == [5, 6]
    assert trace.answered_jobs(["u:ab"], {"job_ids": [7, 8]}) == [8]
    assert trace.answered_jobs([4], {}) == [4]


class TCPTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.no_delay: bool | None = None

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802 - Twisted's API
        self.no_delay = enabled


def test_amp_turns_nagle_off_on_tcp() -> None:
    transport = TCPTransport()
    BoundedAMP().makeConnection(transport)
    assert transport.no_delay is True


def test_amp_turns_nagle_off_through_a_wrapper_such_as_tls() -> None:
    # TLS wraps the TCP transport in a ProtocolWrapper, which passes the call down.
    transport = TCPTransport()
    wrapper = ProtocolWrapper(WrappingFactory(None), BoundedAMP())  # type: ignore[arg-type]
    wrapper.makeConnection(transport)
    assert transport.no_delay is True


def test_amp_over_a_transport_without_tcp_connects_as_before() -> None:
    proto = BoundedAMP()
    proto.makeConnection(StringTransport())
    assert proto.transport is not None
