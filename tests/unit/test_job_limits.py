"""Time limits and resource use (issue 11 points 2 and 6), their pure parts: parsing a limit,
formatting a job's use as ``seff`` does, the job file's field, ``hRunJob``'s refusals, the
runner's limit timer on a Clock, and what an end's report carries."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import error
from twisted.python.failure import Failure

from tests.unit.test_runner_start import make_runner, outcome, request
from tm.cli.errors import CLIError
from tm.cli.hrunjob import prepare
from tm.core.jobtime import (
    TimeLimitError,
    efficiency,
    ended_usage,
    format_limit,
    format_usage,
    parse_time_limit,
)
from tm.core.model import JobState, ending_state
from tm.executor.request import JobEnd
from tm.executor.usage import end_usage
from tm.jobfile import JobFileError, parse_job_file
from tm.textformat import format_jobs, group_block

# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90", 90.0),
        ("1.5", 1.5),
        ("90s", 90.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1d", 86_400.0),
        (" 2H ", 7200.0),
        ("1:30", 90.0),  # Slurm's MM:SS
        ("01:02:03", 3723.0),  # HH:MM:SS
        ("1-12:00:00", 129_600.0),  # D-HH:MM:SS
        ("2-5", 2 * 86_400 + 5 * 3600.0),  # D-HH
        ("2-05:30", 2 * 86_400 + 5 * 3600 + 30 * 60.0),  # D-HH:MM
    ],
)
def test_a_time_limit_is_read_in_every_form(text: str, seconds: float) -> None:
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize(
    "text,says",
    [
        ("abc", "must be a duration such as 90, 90s, 15m"),
        ("", "must be a duration"),
        ("1:60", "must be a duration"),
        ("5-", "must be a duration"),
        ("nan", "must be a duration"),
        ("inf", "must be a duration"),
        ("0", "longer than 0 seconds"),
        ("0s", "longer than 0 seconds"),
        ("-5", "longer than 0 seconds"),
        ("99999d", "at most 3650 days"),
    ],
)
def test_a_bad_time_limit_is_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(TimeLimitError) as e:
        parse_time_limit(text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_limit_is_shown_as_written() -> None:
    assert [format_limit(s) for s in (2, 90, 900, 7200, 129_600, 2.5)] == [
        "2 s",
        "90 s",
        "15 min",
        "02:00:00",
        "1-12:00:00",
        "2.5 s",
    ]


@pytest.mark.parametrize("argv_limit", ["abc", "0", "-5", "1:99"])
def test_hrunjob_refuses_a_bad_time_limit_before_submitting(argv_limit: str) -> None:
    with pytest.raises(CLIError) as e:
        prepare([f"--time-limit={argv_limit}", "true"])
    assert "--time-limit" in str(e.value) and e.value.status == 2


def test_hrunjob_carries_the_limit_and_keeps_the_estimate_apart() -> None:
    _, [(_, spec)] = prepare(["--time-limit", "15m", "-t", "5", "true"])
    assert (spec.time_limit, spec.estimated_time) == (900.0, 5.0)
    _, [(_, plain)] = prepare(["true"])
    assert plain.time_limit is None


def test_the_job_file_has_a_time_limit_field() -> None:
    text = "command::a\ttimeLimit::1-00:00:00\ncommand::b\n"
    jobs = parse_job_file(text, "jobs.txt", {"time_limit": 60.0})
    assert [j.options["time_limit"] for j in jobs] == [86_400.0, 60.0]
    with pytest.raises(JobFileError) as e:
        parse_job_file("command::a\ttimeLimit::soon\n", "jobs.txt", {})
    assert str(e.value).startswith("jobs.txt:1: the time limit must be a duration")


# --- the use as seff shows it -------------------------------------------------------------------


def test_the_use_is_shown_as_seff_does() -> None:
    assert (
        format_usage(1.93, 12_595, 2.01, 1)
        == "cpu 1.93 s, efficiency 96 %, peak memory 12.3 MiB, run time 2.01 s"
    )
    # Efficiency counts every slot of the job.
    assert "efficiency 48 %" in format_usage(1.93, None, 2.01, 2)
    assert format_usage(None, None, None, 1) == ""
    assert format_usage(0.0, 100, 0.0, 1) == "cpu 0.00 s, peak memory 100 KiB, run time 0.00 s"
    assert efficiency(1.0, 0.0, 1) is None
    assert format_usage(5400.0, 3 * 1024 * 1024, 7200.0, 1) == (
        "cpu 1 h 30 min, efficiency 75 %, peak memory 3.00 GiB, run time 2 h 0 min"
    )


def test_an_ended_listing_shows_the_use_and_an_unmeasured_one_nothing() -> None:
    row = {
        "id": 3,
        "state": "timeout",
        "state_since": 0.0,
        "exit_code": None,
        "signal": 15,
        "group": "",
        "info": "",
        "command": "sleep 100",
        "slots": 1,
        "cpu_time": 0.5,
        "max_rss_kib": 2048,
        "run_time": 2.0,
    }
    listed = format_jobs([row], with_user=False)
    assert "timeout" in listed and "signal 15" in listed
    assert "(cpu 0.50 s, efficiency 25 %, peak memory 2.0 MiB, run time 2.00 s)" in listed
    old = row | {"cpu_time": None, "max_rss_kib": None, "run_time": None}
    assert "(" not in format_jobs([old], with_user=False)


def test_lagroup_sums_the_use() -> None:
    used = {"jobs": 2, "cpu_time": 3.0, "run_time": 4.0, "slot_time": 6.0, "max_rss_kib": 4096}
    block = group_block("g", {"finished": 1, "timeout": 1}, used)
    assert "  timeout: 1" in block and "progress: 100.00%" in block
    assert block.endswith(
        "resource use of 2 ended job(s): cpu 3.00 s, efficiency 50 %, "
        "largest peak memory 4.0 MiB, total run time 4.00 s"
    )
    assert "resource use" not in group_block("g", {"finished": 1}, None)


# --- the end ------------------------------------------------------------------------------------


def test_a_timed_out_end_is_timeout_whatever_its_status() -> None:
    assert ending_state(None, 15, killed=True, timed_out=True) is JobState.TIMEOUT
    assert ending_state(0, None, timed_out=True) is JobState.TIMEOUT
    assert JobState.TIMEOUT.terminal and not JobState.TIMEOUT.holds_slots


def test_an_end_report_carries_the_tree_s_use() -> None:
    end = JobEnd(7, 1, None, 15, True, 10.0, 12.5, "r", cpu_user=0.25, cpu_system=0.5)
    end = JobEnd(**{**end.__dict__, "max_rss_kib": 900, "timed_out": True})
    assert end_usage(end, lost=False) == {
        "timed_out": True,
        "cpu_time": 0.75,
        "max_rss_kib": 900,
        "run_time": 2.5,
    }
    assert end_usage(end, lost=True) == {}
    unmeasured = JobEnd(7, 1, 0, None, False, 10.0, 11.0, "r")
    assert end_usage(unmeasured, lost=False)["cpu_time"] is None


def test_the_dispatcher_keeps_only_plausible_use() -> None:
    assert ended_usage({"cpu_time": 1.5, "max_rss_kib": 10, "run_time": 2}) == {
        "cpu_time": 1.5,
        "max_rss_kib": 10,
        "run_time": 2.0,
    }
    bad: dict[str, Any] = {"cpu_time": float("nan"), "max_rss_kib": -1, "run_time": True}
    assert ended_usage(bad) == {"cpu_time": None, "max_rss_kib": None, "run_time": None}
    assert ended_usage({}) == {"cpu_time": None, "max_rss_kib": None, "run_time": None}


# --- the runner's timer ------------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The signals the runner sends (to fake pids: nobody would get them anyway)."""
    signals: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signals.append((pid, sig)))
    monkeypatch.setattr(os, "killpg", lambda pgid, sig: None)
    return signals


def _terminated(sig: int) -> Failure:
    return Failure(error.ProcessTerminated(signal=sig))


def test_the_job_is_stopped_at_its_limit_counted_from_its_start(
    tmp_path: Path, sent: list[tuple[int, int]]
) -> None:
    runner, spawner, clock = make_runner(tmp_path)
    clock.advance(100)
    ended: list[JobEnd] = []
    pid = outcome(runner.start(request(tmp_path, time_limit=5.0), ended.append))
    clock.advance(4.9)
    assert sent == []
    clock.advance(0.2)
    assert sent == [(pid, signal.SIGTERM)]  # the shepherd stops the whole tree
    clock.advance(1.0)
    spawner.spawns[0].proto.processExited(_terminated(signal.SIGTERM))
    [end] = ended
    assert end.timed_out and end.signal == signal.SIGTERM
    assert end.reason == "time limit of 5 s reached: stopped after 6.10 s"
    assert clock.getDelayedCalls() == []  # the last resort's timer went with the end


def test_a_job_that_ends_first_or_is_killed_is_not_timed_out(
    tmp_path: Path, sent: list[tuple[int, int]]
) -> None:
    runner, spawner, clock = make_runner(tmp_path)
    ended: list[JobEnd] = []
    runner.start(request(tmp_path, time_limit=5.0), ended.append)
    clock.advance(1)
    spawner.spawns[0].exit(0)
    assert clock.getDelayedCalls() == []  # the limit's timer is gone with the job
    runner.start(request(tmp_path, job_id=8, time_limit=5.0), ended.append)
    assert runner.kill(8, 1)
    spawner.spawns[1].proto.processExited(_terminated(signal.SIGTERM))
    clock.advance(10)
    assert [(e.timed_out, e.reason) for e in ended] == [
        (False, "exited normally"),
        (False, "killed on request"),
    ]
    assert [s for _, s in sent] == [signal.SIGTERM]
