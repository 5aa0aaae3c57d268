"""hConnect's text commands of issue 11 (tm/textcontrol.py): ids, ranges and groups for
kill, hold and release; setpriority; what they send and print."""

from __future__ import annotations

import pytest

from tests.unit.test_textcommands import go
from tm.protocol import commands, control
from tm.textcommands import TextCommandError, parse


def test_ids_and_ranges_are_parsed() -> None:
    assert parse("holdjob:3-500", "tms").args == ((3, 500),)
    assert parse("releasejob:3:7-9", "dispatcher").args == (3, (7, 9))
    assert parse("killjobs:4:5", "tms").args == (4, 5)
    assert parse("setpriority:12:3", "tms").args == (12, 3)
    assert parse("killgroup:sweep:a", "tms").args == ("sweep:a",)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("holdjob:9-3", "goes down"),
        ("holdjob:x", "not a job id"),
        ("holdjob", "needs job ids"),
        ("setpriority:3", "needs a job id and a priority"),
        ("setpriority:3:x", "not a priority"),
        ("killgroup:x", "not a command of the dispatcher"),
    ],
)
def test_bad_lines_are_refused_in_one_line(line: str, expected: str) -> None:
    with pytest.raises(TextCommandError, match=expected) as e:
        parse(line, "dispatcher" if line.startswith("killgroup") else "tms")
    assert "\n" not in str(e.value)


def test_a_range_and_ids_are_sent_as_control_jobs() -> None:
    answers = [
        {"done": [], "more": None, "notes": ["job 2 is held by the admin root"]},
        {"done": [3, 4, 5], "more": None, "notes": []},
    ]
    out, call = go("holdjob:2:3-6", "tms", {control.ControlJobs: answers})
    assert call.calls == [
        (control.ControlJobs, {"action": "hold", "job_ids": [2]}),
        (control.ControlJobs, {"action": "hold", "job_ids": [], "first": 3, "last": 6}),
    ]
    assert out == "job(s) 3-5 have been held\njob 2 is held by the admin root"


def test_single_kills_keep_their_command_and_groups_use_control_jobs() -> None:
    _, call = go("killjobs:4:5", "tms", {commands.KillJobs: {"killed": [4, 5]}})
    assert call.calls == [(commands.KillJobs, {"job_ids": [4, 5], "regex": None, "all": False})]
    out, call = go("killgroup:g", "tms", {control.ControlJobs: {"done": []}})
    assert call.calls == [(control.ControlJobs, {"action": "kill", "job_ids": [], "group": "g"})]
    assert out == "no job killed"


def test_setpriority() -> None:
    out, call = go("setpriority:7:2", "tms", {control.SetPriority: {"old": 5}})
    assert call.calls == [(control.SetPriority, {"job_id": 7, "priority": 2})]
    assert out == "job 7: priority 5 -> 2"
