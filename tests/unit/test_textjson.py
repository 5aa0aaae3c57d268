"""``--json`` (tm/textjson.py, docs/json.md): the documents made from the AMP answers, the
times, the job objects made from the declared fields; and ``hRunJob``'s output options and
``-- CMD ARG...``."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from tests.unit.test_jobfields import a_job
from tests.unit.test_textcommands import T0, FakeCall, job
from tm import VERSION_LINE, __version__, textjson
from tm.cli import hrunjob
from tm.cli.errors import CLIError, run_now
from tm.core import jobfields
from tm.protocol import commands
from tm.textcommands import SPECS, TextCommandError, parse

ISO_T0 = "2023-11-14T22:13:20Z"  # T0 = 1_700_000_000


def document(line: str, target: str, responses: dict[type, Any] | None = None) -> dict:
    out = run_now(textjson.run(parse(line, target), FakeCall(responses)))
    assert "\n" not in out
    doc = json.loads(out)
    assert doc["schema"] == textjson.SCHEMA_VERSION and doc["command"] == line.split(":")[0]
    assert_keys_without_spaces(doc)
    return doc


def assert_keys_without_spaces(value: Any, where: str = "") -> None:
    """Every key of every object (but a job's environment, whose keys are variables)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            assert isinstance(key, str) and key == key.strip() and " " not in key, where + key
            if key != "env":
                assert_keys_without_spaces(inner, f"{where}{key}.")
    elif isinstance(value, list):
        for inner in value:
            assert_keys_without_spaces(inner, where)


def detail(**kw: Any) -> dict[str, Any]:
    row = job(7, "running", host="node1", command="x" * 200) | {
        "uuid": "u-7",
        "shell": "/bin/sh",
        "cwd": "/w",
        "stdout": "o",
        "stderr": "e",
        "logfile": "",
        "excluded_hosts": ["hB"],
        "estimated_time": None,
        "estimated_memory": 5.0,
        "pid": 42,
        "started_at": T0 + 1.5,
        "ended_at": None,
    }
    return row | kw


def test_times_are_iso_8601_in_utc_and_seconds() -> None:
    assert textjson.iso(T0) == ISO_T0 and textjson.iso(None) is None
    out = textjson.with_times({"at": T0, "since": None, "done_at": T0 + 0.5, "attempt": 3})
    assert out == {
        "at": ISO_T0,
        "at_s": T0,
        "since": None,
        "since_s": None,
        "done_at": ISO_T0,
        "done_at_s": T0 + 0.5,
        "attempt": 3,
    }
    # a key that is no time is left as it is, even when it holds a number
    assert textjson.with_times({"estimated_time": 5.0}) == {"estimated_time": 5.0}


def test_a_job_s_object_follows_the_declared_fields() -> None:
    row = dict(reversed(list(job(3, "waiting").items())))  # any order in
    row["host"] = ""
    out = textjson.job(row)
    names = [f.name for f in jobfields.FIELDS if f.name in row]
    assert [k for k in out if not k.endswith("_s")] == names  # the declaration's order out
    assert out["host"] is None  # "no host" travels as "" over AMP
    assert out["submitted_at"] == ISO_T0 and out["submitted_at_s"] == T0
    assert out["state_since"] == ISO_T0 and out["state_since_s"] == T0


def test_a_field_the_job_s_record_gains_appears_without_edits() -> None:
    out = textjson.job(job(3) | {"time_limit": 60.0, "depends_on": [1, 2], "deadline_at": T0})
    assert out["time_limit"] == 60.0 and out["depends_on"] == [1, 2]
    assert out["deadline_at"] == ISO_T0 and out["deadline_at_s"] == T0
    # a job's detail record, as the dispatcher makes it from a Job: every declared field of
    # it (a field added to tm/core/jobfields.py with the detail group included) has its key
    record = jobfields.plain_rows(jobfields.DETAIL_FIELDS)(a_job(host=None))
    out = textjson.job(json.loads(json.dumps(record)))  # as it comes over the socket
    for f in jobfields.DETAIL_FIELDS:
        assert f.name in out, f.name
        if textjson.is_time_key(f.name):
            assert f.name + "_s" in out
    assert out["host"] is None and out["state"] == "running" and out["ended_at"] is None


def test_listings_are_their_jobs_in_full_over_every_page() -> None:
    long = "python3 -c 'print(1)' " + "y" * 100
    page1 = {"jobs": [job(1, command=long), job(2)], "next_after_id": 2}
    page2 = {"jobs": [job(3, "running", host="n1")], "next_after_id": None}
    doc = document("lswjobs", "tms", {commands.ListJobs: [page1, page2]})
    assert [j["id"] for j in doc["jobs"]] == [1, 2, 3]
    assert doc["jobs"][0]["command"] == long  # never shortened
    assert doc["jobs"][2]["host"] == "n1" and doc["jobs"][0]["host"] is None
    assert "message" not in doc
    empty = document("lsfjobs", "dispatcher", {commands.ListJobs: {"jobs": []}})
    assert empty["jobs"] == []
    found = document("findjobs:echo", "tms", {commands.ListJobs: {"jobs": [job(9)]}})
    assert [j["id"] for j in found["jobs"]] == [9]


def test_lajob_is_the_job_with_its_history_and_wait_reason() -> None:
    history = [
        {"at": T0, "state": "waiting", "attempt": 1, "host": "", "reason": "submitted"},
        {"at": T0 + 1.5, "state": "running", "attempt": 1, "host": "node1", "reason": ""},
    ]
    answer = {"job": [detail()], "history": history, "wait_reason": "", "sealed_env": "s"}
    doc = document("lajob:7", "tms", {commands.GetJob: answer | {"env": {"A B": "1"}}})
    got = doc["job"]
    assert got["id"] == 7 and got["command"] == "x" * 200 and got["pid"] == 42
    assert got["started_at"] == "2023-11-14T22:13:21Z" and got["started_at_s"] == T0 + 1.5
    assert got["ended_at"] is None and got["ended_at_s"] is None
    assert got["excluded_hosts"] == ["hB"] and got["wait_reason"] is None
    assert got["env"] == {"A B": "1"} and "sealed_env" not in got
    assert [(h["state"], h["at_s"], h["at"]) for h in got["history"]] == [
        ("waiting", T0, ISO_T0),
        ("running", T0 + 1.5, "2023-11-14T22:13:21Z"),
    ]
    waiting = document(
        "lajob:7",
        "dispatcher",
        {commands.GetJob: answer | {"wait_reason": "cluster is deactivated", "env": None}},
    )
    assert waiting["job"]["wait_reason"] == "cluster is deactivated"
    assert "env" not in waiting["job"]


def test_groups_and_an_unknown_group() -> None:
    counts = {"g": {"finished": 3, "running": 1}, "": {"waiting": 2}, "a": {"failed": 1}}
    one = document("lagroup:g", "tms", {commands.GroupSummary: {"groups": counts}})
    assert one["group"] == {
        "group": "g",
        "counts": {"finished": 3, "running": 1},
        "total": 4,
        "ended": 3,
        "progress": 75.0,
        "finished": False,
    }
    every = document("lagroups", "tms", {commands.GroupSummary: {"groups": counts}})
    assert [g["group"] for g in every["groups"]] == ["a", "g"]  # no "" (jobs without a group)
    assert every["groups"][0]["finished"] is True
    done = document("hasgroupfinished:a", "tms", {commands.GroupSummary: {"groups": counts}})
    assert done["group"]["finished"] is True
    with pytest.raises(TextCommandError, match="group 'zz' is unknown"):
        document("lagroup:zz", "tms", {commands.GroupSummary: {"groups": counts}})


def status_answer() -> dict[str, Any]:
    return {
        "cluster_active": True,
        "active_hosts": 2,
        "total_slots": 8,
        "occupied_slots": 3,
        "counts": [{"state": "waiting", "count": 4}, {"state": "running", "count": 3}],
        "user_counts": [{"state": "running", "count": 1}],
        "address": "td:1",
        "started_at": T0,
        "user": "alice",
    }


@pytest.mark.parametrize("line,target", [("status", "dispatcher"), ("gettdstatus", "tms")])
def test_status_has_keys_without_spaces_and_its_start_as_a_time(line: str, target: str) -> None:
    doc = document(line, target, {commands.GetStatus: status_answer()})
    assert doc["status"]["counts"] == {"waiting": 4, "running": 3}
    assert doc["status"]["user_counts"] == {"running": 1}
    assert doc["status"]["started_at"] == ISO_T0 and doc["status"]["total_slots"] == 8


def test_lscluster_users_executors_kills_and_actions() -> None:
    host = {
        "name": "n1.example",
        "short_name": "n1",
        "number_slots": 8,
        "max_slots": 8,
        "occupied_slots": 2,
        "active": False,
        "retired": False,
        "load_check": True,
        "load": None,
        "executors": 1,
        "additional_info": "",
    }
    doc = document(
        "lscluster", "dispatcher", {commands.ListHosts: {"cluster_active": True, "hosts": [host]}}
    )
    assert doc["cluster_active"] is True
    assert doc["hosts"][0] | {} == host | {"status": "inactive", "free_slots": 6}
    with pytest.raises(TextCommandError, match="user 'zed' is unknown"):
        document("lsuser:zed", "dispatcher", {commands.ListUsers: {"users": []}})
    executors = [{"host": "n1", "pid": 3, "since": T0, "running": 2, "state": "connected"}]
    tmms = document("lstmms", "tms", {commands.ListExecutors: {"executors": executors}})
    assert tmms["executors"][0]["since"] == ISO_T0 and tmms["executors"][0]["since_s"] == T0
    killed = document("killjobs:3:4", "tms", {commands.KillJobs: {"killed": [3, 4], "more": None}})
    assert (killed["killed"], killed["more"]) == ([3, 4], 0)
    action = document("activatecluster", "dispatcher")
    assert action == {"schema": 1, "command": "activatecluster", "message": "activated."}
    assert document("ping", "tms", {commands.Ping: {"server": "x", "time": T0}})["pong"] is True


def test_help_lists_every_command_of_the_target() -> None:
    doc = document("help", "dispatcher")
    names = [c["name"] for c in doc["commands"]]
    assert names == [n for n, s in SPECS.items() if "dispatcher" in s.targets]
    assert {"name": "lajob", "usage": "lajob:ID", "description": SPECS["lajob"].description} in (
        doc["commands"]
    )


def test_the_text_answer_is_unchanged_without_json() -> None:
    call = FakeCall({commands.ListJobs: {"jobs": []}})
    assert run_now(textjson.answer(parse("lswjobs", "tms"), call, False)) == "no waiting jobs"


# --- hRunJob -----------------------------------------------------------------------------------


def prepared(*argv: str) -> tuple[Any, list]:
    return hrunjob.prepare(list(argv))


def test_hrunjob_json_is_the_ids_and_the_jobs_as_given() -> None:
    args, jobs = prepared("--json", "-g", "sweep", "-t", "5", "-E", "h1,h2", "echo", "a")
    out = json.loads(hrunjob.submitted_text(args, jobs, [12]) or "")
    assert out["schema"] == 1 and out["ids"] == [12] and out["group"] == "sweep"
    (one,) = out["jobs"]
    assert one["id"] == 12 and one["uuid"] == jobs[0][1].uuid and one["command"] == "echo a"
    assert one["estimated_time"] == 5.0 and one["excluded_hosts"] == ["h1", "h2"]
    assert {f.name for f in jobfields.GIVEN_FIELDS} <= set(one)
    assert "signature" not in one
    assert_keys_without_spaces(out)
    two = json.loads(hrunjob.submitted_text(args, jobs + jobs, [1, 2]) or "")
    assert two["ids"] == [1, 2] and two["group"] == "sweep"


def test_hrunjob_parsable_prints_the_ids_alone() -> None:
    args, jobs = prepared("--parsable", "true")
    assert hrunjob.submitted_text(args, jobs * 3, [4, 5, 6]) == "4\n5\n6"
    args, jobs = prepared("-q", "true")
    assert hrunjob.submitted_text(args, jobs, [4]) is None
    args, jobs = prepared("true")
    assert (
        hrunjob.submitted_text(args, jobs, [4]) == "Job [4] has been submitted to TaskDispatcher."
    )


@pytest.mark.parametrize("argv", [["-q", "--json"], ["--json", "--parsable"], ["-q", "--parsable"]])
def test_hrunjob_output_options_exclude_each_other(argv: list[str]) -> None:
    with pytest.raises(CLIError, match="exclude each other") as e:
        prepared(*argv, "true")
    assert e.value.status == 2


@pytest.mark.parametrize(
    "argv,command",
    [
        # after `--`: each argument kept as given, quoted for the shell
        (["--", "python3", "-c", "print(1)"], "python3 -c 'print(1)'"),
        (["-g", "g", "--", "echo", "a  b", "$HOME"], "echo 'a  b' '$HOME'"),
        (["--", "-q"], "-q"),
        (["--", "echo", "--", "x"], "echo -- x"),
        # without: the seed's words joined with spaces, a `--` among them kept
        (["python3", "-c", "print(1)"], "python3 -c print(1)"),
        (["echo", "a  b"], "echo a  b"),
        (["echo", "--", "x"], "echo -- x"),
        (["echo x && echo y"], "echo x && echo y"),
    ],
)
def test_the_command_after_a_double_dash_keeps_its_quoting(argv: list[str], command: str) -> None:
    _, jobs = prepared(*argv)
    assert jobs[0][1].command == command
    if argv[0] == "--":
        assert shlex.split(command) == argv[1:]


def test_a_double_dash_with_nothing_after_it_is_no_command() -> None:
    with pytest.raises(CLIError, match="no command given"):
        prepared("-g", "x", "--")


def test_one_version_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    from tm.cli import hadmindatabase, hconnect
    from tm.tap import dispatcher, executor, userserver

    assert VERSION_LINE == f"TaskManager {__version__}" and __version__ == "0.1.0"
    for parser in (hrunjob.build_parser(), hconnect.build_parser(), hadmindatabase.build_parser()):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(["--version"])
        assert e.value.code == 0
        assert capsys.readouterr().out == VERSION_LINE + "\n"
    for options in (dispatcher.Options, executor.Options, userserver.Options):
        with pytest.raises(SystemExit) as e:
            options().parseOptions(["--version"])
        assert e.value.code == 0
        assert capsys.readouterr().out == VERSION_LINE + "\n"
