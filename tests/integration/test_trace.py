"""TM_TRACE through the real processes: one job's path, step by step, in one file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.processes import Installation
from tm import trace

SUBMITTED = re.compile(r"Job \[(\d+)\] has been submitted to TaskDispatcher\.\n")

#: Steps of one job's path that each process writes, in the order they must happen.
PATH = [
    ("cli", "submit-sent"),
    ("tms", "client-SubmitJobs-received"),
    ("dispatcher", "SubmitJobs-received"),
    ("dispatcher", "submit-committed"),
    ("dispatcher", "placed"),
    ("dispatcher", "written-pending"),
    ("dispatcher", "RunJob-sent"),
    ("executor", "start"),
    ("executor", "forked"),
    ("executor", "reaped"),
    ("executor", "JobFinished-sent"),
    ("dispatcher", "JobFinished-received"),
    ("dispatcher", "WaitJob-answered"),
    ("cli", "wait-answered"),
]


def test_every_process_traces_its_steps_of_a_jobs_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trace_file = tmp_path / "trace"
    monkeypatch.setenv("TM_TRACE", str(trace_file))  # the installation's processes inherit it
    inst = Installation(tmp_path / "inst")
    try:
        inst.start_dispatcher()
        inst.run("hRunJob", "-q", "true", check=True, timeout=120)  # starts the TMS
        waited = inst.run("hRunJob", "--wait", "exit 3", timeout=120)
        assert waited.returncode == 3, waited.stderr
        match = SUBMITTED.fullmatch(waited.stdout)
        assert match, waited.stdout
        job = match.group(1)
    finally:
        inst.cleanup()
    lines = [trace.parse_line(line) for line in trace_file.read_text().splitlines()]
    assert None not in lines
    # Before it has an id, the submission is named by its uuid: the last one sent.
    uuid = [p[4] for p in lines if p and p[1:4:2] == ("cli", "submit-sent")][-1]
    assert uuid.startswith("u:")
    steps: dict[tuple[str, str], int] = {}
    for ns, process, _pid, stage, named in (p for p in lines if p):
        if named in (job, uuid) and (process, stage) not in steps:
            steps[(process, stage)] = ns
    missing = [step for step in PATH if step not in steps]
    assert not missing, f"steps not traced for job {job}: {missing}"
    times = [steps[step] for step in PATH]
    assert times == sorted(times), [step for step, _ in sorted(steps.items(), key=lambda kv: kv[1])]
