"""Text commands: parsing, the AMP request each one sends, and the formatted answer."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from tm.cli.common import command_named
from tm.protocol import commands
from tm.textcommands import (
    PAGE_LIMIT,
    SPECS,
    TextCommand,
    TextCommandError,
    UnknownGroup,
    format_server_info,
    format_time,
    help_text,
    parse,
)

T0 = 1_700_000_000.0


class FakeCall:
    """Records (command_class, kwargs) and answers canned responses, in order per command.

    The text commands name their AMP command by its ``commandName`` (they run without
    Twisted too); each name must be one of tm.protocol.commands, found here by it."""

    def __init__(self, responses: dict[type, Any] | None = None) -> None:
        self.responses = {
            k: (v if isinstance(v, list) else [v]) for k, v in (responses or {}).items()
        }
        self.calls: list[tuple[type, dict[str, Any]]] = []

    async def __call__(self, name: str, **kwargs: Any) -> dict[str, Any]:
        command = command_named(name)
        self.calls.append((command, kwargs))
        queue = self.responses.get(command, [{}])
        return queue.pop(0) if len(queue) > 1 else queue[0]


def run(cmd: TextCommand, call: FakeCall) -> str:
    d = Deferred.fromCoroutine(cmd.run(call))
    results: list[Any] = []
    d.addBoth(results.append)
    assert d.called
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


def job(id: int, state: str = "waiting", **kw: Any) -> dict[str, Any]:
    d = {
        "id": id,
        "user": "alice",
        "state": state,
        "attempt": 1,
        "slots": 1,
        "priority": 0,
        "host": "",
        "group": "g1",
        "info": "inf",
        "command": f"echo {id}",
        "submitted_at": T0,
        "state_since": T0,
        "exit_code": None,
        "signal": None,
        "reason": "",
        "suspended": False,
    }
    d.update(kw)
    return d


def status(**kw: Any) -> dict[str, Any]:
    d = {
        "cluster_active": True,
        "active_hosts": 3,
        "total_slots": 24,
        "occupied_slots": 5,
        "counts": [{"state": "waiting", "count": 7}, {"state": "running", "count": 5}],
        "user_counts": [{"state": "waiting", "count": 2}, {"state": "finished", "count": 4}],
        "address": "td.example:8001",
        "started_at": T0,
        "user": "alice",
    }
    d.update(kw)
    return d


def go(line: str, target: str, responses: dict[type, Any] | None = None) -> tuple[str, FakeCall]:
    call = FakeCall(responses)
    return run(parse(line, target), call), call


# --- parsing ----------------------------------------------------------------------------

TMS_COMMANDS = [
    "ping", "help", "lswjobs", "lspjobs", "lsrjobs", "lsfjobs", "lajob", "lagroup", "lagroups",
    "hasgroupfinished", "findjobs", "killjob", "killjobs", "killmatchingjobs", "killalljobs",
    "suspendjob", "resumejob", "gettdstatus", "printserverinfo", "lstmms", "invokealltmms",
    "shutdownalltmms", "shutdown", "dashboard", "resubmit", "wait", "cat", "follow",
]  # fmt: skip
TD_COMMANDS = [
    "ping", "help", "fullhelp", "status", "gettdstatus", "lscluster", "activatecluster",
    "deactivatecluster", "activatehost", "deactivatehost", "lsusers", "lsuser", "enableuser",
    "disableuser", "lswjobs", "lspjobs", "lsrjobs", "lsfjobs", "lajob", "findjobs", "lsnextjobs",
    "rmjobs", "rmwjobs", "setallpjobsaswaiting", "setallrjobsaswaiting", "setallpjobsasfinished",
    "setallrjobsasfinished", "checkslots", "updateload", "lsthreads", "reload", "dashboard",
]  # fmt: skip
# Issue 11: holds, priority, ranges and groups (tm/textcontrol.py).
_CONTROL = ["holdjob", "releasejob", "holdgroup", "releasegroup", "setpriority"]
TMS_COMMANDS += [*_CONTROL, "killgroup"]
TD_COMMANDS += _CONTROL


def test_command_sets_match_targets() -> None:
    assert sorted(n for n, s in SPECS.items() if "tms" in s.targets) == sorted(TMS_COMMANDS)
    assert sorted(n for n, s in SPECS.items() if "dispatcher" in s.targets) == sorted(TD_COMMANDS)


@pytest.mark.parametrize("target", ["tms", "dispatcher"])
def test_help_lists_every_command_with_usage(target: str) -> None:
    text = help_text(target)
    names = TMS_COMMANDS if target == "tms" else TD_COMMANDS
    for name in names:
        assert SPECS[name].usage in text
    out, call = go("help", target)
    assert out == text and call.calls == []
    assert "lajob:ID" in text and "killjobs:ID[:ID...]" in help_text("tms")
    assert "lsnextjobs:N" in help_text("dispatcher")


def test_fullhelp_is_help() -> None:
    assert go("fullhelp", "dispatcher")[0] == help_text("dispatcher")


def test_parse_args() -> None:
    assert parse("lajob:12", "tms").args == (12,)
    assert parse(" killjobs:1:2:3 ", "tms").args == (1, 2, 3)
    assert parse("findjobs:a:b", "tms").args == ("a:b",)
    assert parse("killmatchingjobs:^echo.*$", "tms").args == ("^echo.*$",)
    c = parse("lswjobs", "dispatcher")
    assert (c.name, c.args, c.target) == ("lswjobs", (), "dispatcher")


def test_unknown_command() -> None:
    with pytest.raises(TextCommandError, match=r"unknown command 'frobnicate'.*help"):
        parse("frobnicate", "tms")
    with pytest.raises(TextCommandError, match="help"):
        parse("", "tms")


def test_missing_arg() -> None:
    with pytest.raises(TextCommandError, match=r"lajob needs a job id: usage: lajob:ID"):
        parse("lajob", "tms")
    with pytest.raises(TextCommandError, match=r"usage: activatehost:HOST"):
        parse("activatehost:", "dispatcher")
    with pytest.raises(TextCommandError, match=r"usage: lagroup:GROUP"):
        parse("lagroup", "tms")


def test_non_integer_id() -> None:
    with pytest.raises(TextCommandError, match=r"'x' is not a job id: usage: lajob:ID"):
        parse("lajob:x", "tms")
    with pytest.raises(TextCommandError, match=r"usage: killjobs:ID\[:ID...\]"):
        parse("killjobs:1:two", "tms")
    with pytest.raises(TextCommandError, match="negative"):
        parse("killjob:-1", "tms")


def test_bad_regex() -> None:
    with pytest.raises(TextCommandError, match=r"bad regular expression.*usage: killmatchingjobs"):
        parse("killmatchingjobs:(", "tms")


def test_lsnextjobs_non_number() -> None:
    with pytest.raises(TextCommandError, match=r"not a number: usage: lsnextjobs:N"):
        parse("lsnextjobs:many", "dispatcher")


def test_argument_to_command_without_one() -> None:
    with pytest.raises(TextCommandError, match="takes no argument"):
        parse("lswjobs:3", "tms")


def test_wrong_target() -> None:
    with pytest.raises(TextCommandError, match=r"'killjob' is not a command of the dispatcher"):
        parse("killjob:1", "dispatcher")
    with pytest.raises(TextCommandError, match=r"'lscluster' is not a command of your Task.*-T"):
        parse("lscluster", "tms")


def test_bad_target() -> None:
    with pytest.raises(ValueError):
        parse("ping", "moon")


# --- simple commands --------------------------------------------------------------------


@pytest.mark.parametrize("target", ["tms", "dispatcher"])
def test_ping(target: str) -> None:
    out, call = go("ping", target, {commands.Ping: {"server": "x", "time": T0}})
    assert out == "pong" and call.calls == [(commands.Ping, {})]


# --- listings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,states,empty",
    [
        ("lswjobs", ["waiting"], "no waiting jobs"),
        ("lspjobs", ["pending"], "no pending jobs"),
        ("lsrjobs", ["running"], "no running jobs"),
        ("lsfjobs", ["finished", "failed", "killed", "timeout", "cancelled"], "no finished jobs"),
    ],
)
@pytest.mark.parametrize("target,scope", [("tms", "mine"), ("dispatcher", "all")])
def test_listing_empty(name: str, states: list[str], empty: str, target: str, scope: str) -> None:
    out, call = go(name, target, {commands.ListJobs: {"jobs": [], "next_after_id": None}})
    assert out == empty
    assert call.calls == [
        (
            commands.ListJobs,
            {"states": states, "scope": scope, "after_id": 0, "limit": PAGE_LIMIT},
        )
    ]


def test_lswjobs_tms_format_aligned_without_user() -> None:
    long = "x" * 40
    jobs = [job(7, command=long), job(12, group="longgroup", info="")]
    out, _ = go("lswjobs", "tms", {commands.ListJobs: {"jobs": jobs}})
    header, *lines = out.splitlines()
    assert header.split() == ["#", "ID", "STATE", "GROUP", "INFO", "COMMAND"]
    assert len(lines) == 2
    ts = format_time(T0)
    assert lines[0].split() == [
        "1",
        "7",
        "waiting",
        "since",
        *ts.split(),
        "g1",
        "inf",
        "x" * 30 + "...",
    ]
    assert "alice" not in out
    # columns are aligned: the group column starts at the same offset on every line, under
    # its header; an empty info shows "-"
    assert lines[0].index("g1") == lines[1].index("longgroup") == header.index("GROUP")
    assert lines[1].split()[-4:] == ["longgroup", "-", "echo", "12"]
    assert lines[1][header.index("INFO")] == "-"


def test_lsrjobs_dispatcher_has_user_and_host() -> None:
    jobs = [job(3, "running", host="node1", user="bob"), job(4, "pending", host="node22")]
    out, _ = go("lsrjobs", "dispatcher", {commands.ListJobs: {"jobs": jobs}})
    header, l1, l2 = out.splitlines()
    assert header.split() == ["#", "ID", "USER", "STATE", "GROUP", "INFO", "COMMAND"]
    assert l1.index("bob") == header.index("USER")
    assert "bob" in l1 and "running on node1" in l1
    assert "alice" in l2 and "pending on node22" in l2
    assert l1.index("bob") == l2.index("alice")


def test_lsfjobs_shows_state_time_exit() -> None:
    jobs = [job(5, "finished", exit_code=0), job(6, "killed", signal=9), job(8, "failed")]
    out, _ = go("lsfjobs", "tms", {commands.ListJobs: {"jobs": jobs}})
    ts = format_time(T0)
    lines = out.splitlines()[1:]
    assert f"finished {ts} exit 0" in lines[0]
    assert f"killed {ts} signal 9" in lines[1]
    assert f"failed {ts} exit -" in lines[2]


def test_listing_pages() -> None:
    page1 = {"jobs": [job(1), job(2)], "next_after_id": 2}
    page2 = {"jobs": [job(3)], "next_after_id": None}
    out, call = go("lswjobs", "dispatcher", {commands.ListJobs: [page1, page2]})
    assert [c[1]["after_id"] for c in call.calls] == [0, 2]
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["1", "2", "3"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["1", "2", "3"]


def test_findjobs() -> None:
    out, call = go("findjobs:foo", "tms", {commands.ListJobs: {"jobs": [job(9)]}})
    assert call.calls[0][1] == {
        "states": [],
        "scope": "mine",
        "after_id": 0,
        "limit": PAGE_LIMIT,
        "text": "foo",
    }
    assert "echo 9" in out
    out, call = go("findjobs:foo", "dispatcher", {commands.ListJobs: {"jobs": []}})
    assert out == "no jobs found" and call.calls[0][1]["scope"] == "all"


def test_lsnextjobs() -> None:
    out, call = go("lsnextjobs:5", "dispatcher", {commands.ListJobs: {"jobs": [job(4)]}})
    assert call.calls == [
        (
            commands.ListJobs,
            {"states": ["waiting"], "scope": "all", "after_id": 0, "limit": 5, "order": "schedule"},
        )
    ]
    assert "alice" in out and "echo 4" in out
    out, _ = go("lsnextjobs:5", "dispatcher", {commands.ListJobs: {"jobs": []}})
    assert out == "no jobs found to send"


# --- lajob --------------------------------------------------------------------------------


def detail(**kw: Any) -> dict[str, Any]:
    d = job(42, "finished", host="node1", exit_code=3, reason="exit code 3")
    d.update(
        {
            "uuid": "u",
            "shell": "/bin/bash",
            "cwd": "/home/alice",
            "stdout": "out.txt",
            "stderr": "err.txt",
            "logfile": "log.txt",
            "excluded_hosts": ["node2"],
            "estimated_time": None,
            "estimated_memory": None,
            "pid": 999,
            "started_at": T0,
            "ended_at": T0 + 5,
        }
    )
    d.update(kw)
    return d


@pytest.mark.parametrize("target", ["tms", "dispatcher"])
def test_lajob(target: str) -> None:
    history = [
        {"at": T0, "state": "waiting", "attempt": 0, "host": "", "reason": "submitted"},
        {"at": T0 + 5, "state": "finished", "attempt": 1, "host": "node1", "reason": "exit 3"},
    ]
    resp = {"job": [detail()], "history": history, "wait_reason": ""}
    out, call = go("lajob:42", target, {commands.GetJob: resp})
    assert call.calls == [(commands.GetJob, {"job_id": 42})]
    for text in [
        "job id:", "42", "user:", "alice", "state:", "finished", "command:", "echo 42",
        "info:", "group:", "g1", "slots:", "priority:", "shell:", "/bin/bash", "cwd:",
        "/home/alice", "stdout:", "out.txt", "stderr:", "err.txt", "logfile:", "log.txt",
        '["node2"]', "host:", "node1", "pid:", "999", "exit code:", "3", "reason:", "exit code 3",
    ]:  # fmt: skip
        assert text in out
    lines = out.splitlines()
    assert f"{format_time(T0 + 5)}  finished  attempt 1  node1  exit 3" in lines[-1]
    assert f"{format_time(T0)}  waiting  attempt 0" in lines[-2]


def test_lajob_waiting_shows_reason() -> None:
    resp = {
        "job": [detail(state="waiting", host="", pid=None, exit_code=None)],
        "history": [],
        "wait_reason": "cluster is not active",
    }
    out, _ = go("lajob:42", "tms", {commands.GetJob: resp})
    assert "waiting (cluster is not active)" in out
    assert "pid:" in out and "n.a." in out


# --- groups -------------------------------------------------------------------------------


def test_lagroup() -> None:
    groups = {"g": {"waiting": 1, "running": 1, "finished": 1}}
    out, call = go("lagroup:g", "tms", {commands.GroupSummary: {"groups": groups}})
    assert call.calls == [(commands.GroupSummary, {"group": "g", "scope": "mine"})]
    assert "group: g" in out and "waiting: 1" in out and "total: 3" in out
    assert "progress: 33.33%" in out


def test_lagroup_unknown() -> None:
    out, _ = go("lagroup:g", "tms", {commands.GroupSummary: {"groups": {}}})
    assert out == "group is unknown"


def test_lagroups() -> None:
    groups = {"b": {"finished": 2, "failed": 1, "killed": 1}, "a": {"waiting": 3}}
    out, call = go("lagroups", "tms", {commands.GroupSummary: {"groups": groups}})
    assert call.calls == [(commands.GroupSummary, {"group": None, "scope": "mine"})]
    assert out.index("group: a") < out.index("group: b")
    assert "progress: 0.00%" in out and "progress: 100.00%" in out
    out, _ = go("lagroups", "tms", {commands.GroupSummary: {"groups": {}}})
    assert out == "no groups found"
    # Jobs submitted without -g are in no group: not listed as a group named "".
    out, _ = go("lagroups", "tms", {commands.GroupSummary: {"groups": {"": {"waiting": 1}}}})
    assert out == "no groups found"
    out, _ = go(
        "lagroups",
        "tms",
        {commands.GroupSummary: {"groups": {"": {"waiting": 1}, "a": {"waiting": 2}}}},
    )
    assert out.startswith("group: a") and out.count("group:") == 1


def test_hasgroupfinished() -> None:
    done = {"g": {"finished": 2, "killed": 1}}
    assert go("hasgroupfinished:g", "tms", {commands.GroupSummary: {"groups": done}})[0] == "yes"
    notdone = {"g": {"finished": 2, "running": 1}}
    assert go("hasgroupfinished:g", "tms", {commands.GroupSummary: {"groups": notdone}})[0] == "no"
    with pytest.raises(UnknownGroup, match="group 'g' is unknown"):
        go("hasgroupfinished:g", "tms", {commands.GroupSummary: {"groups": {}}})


# --- kill, suspend ------------------------------------------------------------------------


def test_killjob() -> None:
    out, call = go("killjob:5", "tms", {commands.KillJobs: {"killed": [5]}})
    assert call.calls == [(commands.KillJobs, {"job_ids": [5], "regex": None, "all": False})]
    assert out == "Job(s) 5 have been killed."


def test_killjobs() -> None:
    out, call = go("killjobs:1:2:3", "tms", {commands.KillJobs: {"killed": [1, 3]}})
    assert call.calls[0][1] == {"job_ids": [1, 2, 3], "regex": None, "all": False}
    assert out == "Job(s) 1, 3 have been killed."


def test_killmatchingjobs() -> None:
    out, call = go("killmatchingjobs:^sleep", "tms", {commands.KillJobs: {"killed": []}})
    assert call.calls[0][1] == {"job_ids": [], "regex": "^sleep", "all": False}
    assert out == "no job killed"


def test_killalljobs() -> None:
    out, call = go("killalljobs", "tms", {commands.KillJobs: {"killed": [4]}})
    assert call.calls[0] == (commands.KillJobs, {"job_ids": [], "regex": None, "all": True})
    assert out == "Job(s) 4 have been killed."


@pytest.mark.parametrize("name,resume", [("suspendjob", False), ("resumejob", True)])
def test_suspend_resume(name: str, resume: bool) -> None:
    out, call = go(f"{name}:8", "tms", {commands.SuspendJob: {}})
    assert call.calls == [(commands.SuspendJob, {"job_id": 8, "resume": resume})]
    assert "8" in out and ("resumed" if resume else "suspended") in out


# --- status ---------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["tms", "dispatcher"])
def test_gettdstatus(target: str) -> None:
    out, call = go("gettdstatus", target, {commands.GetStatus: status()})
    assert call.calls == [(commands.GetStatus, {})]
    doc = json.loads(out)
    assert doc["activity status"] is True
    assert doc["active hosts"] == 3
    assert doc["total slots"] == 24
    assert doc["occupied slots"] == 5
    assert doc["waiting jobs"] == 7


def test_status() -> None:
    out, call = go("status", "dispatcher", {commands.GetStatus: status(cluster_active=False)})
    assert call.calls == [(commands.GetStatus, {})]
    assert "cluster is not active" in out
    assert "active hosts: 3" in out and "occupied slots: 5 / 24" in out
    assert "waiting jobs: 7" in out and "running jobs: 5" in out and "pending jobs: 0" in out


INFO = {
    "user": "alice",
    "host": "front",
    "port": 4444,
    "pid": 12,
    "started_at": T0,
    "dispatcher": "td.example:8001",
    "dispatcher_connected": True,
}


def test_printserverinfo() -> None:
    out, call = go(
        "printserverinfo", "tms", {commands.ServerInfo: INFO, commands.GetStatus: status()}
    )
    assert [c[0] for c in call.calls] == [commands.ServerInfo, commands.GetStatus]
    assert out == format_server_info(INFO, status())
    assert out.splitlines()[0] == "Status of TaskManagerServer on front:4444 of user alice"
    assert f"tms running since: {format_time(T0)}" in out
    assert "dispatcher: td.example:8001" in out
    assert "dispatcher activity status: active" in out
    assert "active hosts: 3" in out and "occupied slots: 5 / 24" in out
    assert "waiting: 2" in out and "finished: 4" in out and "running: 0" in out


# --- cluster, hosts, users ----------------------------------------------------------------


def host(name: str, **kw: Any) -> dict[str, Any]:
    d = {
        "name": name,
        "short_name": name,
        "number_slots": 8,
        "max_slots": 8,
        "occupied_slots": 2,
        "active": True,
        "retired": False,
        "load_check": True,
        "load": 1.5,
        "executors": 1,
        "additional_info": "",
    }
    d.update(kw)
    return d


def test_lscluster() -> None:
    hosts = [
        host("node1"),
        host("node-long-name", active=False, load=None, executors=0),
        host("old", retired=True),
    ]
    out, call = go(
        "lscluster", "dispatcher", {commands.ListHosts: {"cluster_active": True, "hosts": hosts}}
    )
    assert call.calls == [(commands.ListHosts, {})]
    head, header, *lines = out.splitlines()
    assert head == "cluster is active"
    assert header.split() == ["#", "HOST", "STATUS", "SLOTS", "LOAD", "EXECUTORS"]
    lines.insert(0, head)
    assert lines[1].split()[:4] == ["1", "node1", "active", "6/8"]
    assert lines[1].index("node1") == header.index("HOST")
    assert "inactive" in lines[2] and "n.a." in lines[2]
    assert "retired" in lines[3]
    assert "load 1.50" in lines[1]
    assert lines[1].index("active") == lines[2].index("inactive")
    out, _ = go(
        "lscluster", "dispatcher", {commands.ListHosts: {"cluster_active": False, "hosts": []}}
    )
    assert out.splitlines()[0] == "cluster is not active"


@pytest.mark.parametrize(
    "name,active,reply",
    [("activatecluster", True, "activated."), ("deactivatecluster", False, "deactivated.")],
)
def test_set_cluster_active(name: str, active: bool, reply: str) -> None:
    out, call = go(name, "dispatcher")
    assert call.calls == [(commands.SetClusterActive, {"active": active})]
    assert out == reply


@pytest.mark.parametrize("name,active", [("activatehost", True), ("deactivatehost", False)])
def test_set_host_active(name: str, active: bool) -> None:
    out, call = go(f"{name}:n1", "dispatcher", {commands.SetHostActive: {"host": "n1.example"}})
    assert call.calls == [(commands.SetHostActive, {"host": "n1", "active": active})]
    assert out == f"host n1.example has been {'activated' if active else 'deactivated'}"


def user(name: str, **kw: Any) -> dict[str, Any]:
    d = {
        "name": name,
        "roles": ["user"],
        "enabled": True,
        "tms_connected": True,
        "executors": ["node1"],
        "waiting": 1,
        "pending": 0,
        "running": 2,
        "usage": 0.5,
    }
    d.update(kw)
    return d


def test_lsusers() -> None:
    users = [user("alice"), user("root", roles=["user", "admin"], enabled=False, executors=[])]
    out, call = go("lsusers", "dispatcher", {commands.ListUsers: {"users": users}})
    assert call.calls == [(commands.ListUsers, {"user": None})]
    header, l1, l2 = out.splitlines()
    assert header.split()[:3] == ["#", "USER", "ROLES"]
    assert "alice" in l1 and "enabled" in l1 and "running 2" in l1 and "node1" in l1
    assert "root" in l2 and "disabled" in l2 and "user,admin" in l2
    assert go("lsusers", "dispatcher", {commands.ListUsers: {"users": []}})[0] == "no users"


def test_lsuser() -> None:
    out, call = go("lsuser:alice", "dispatcher", {commands.ListUsers: {"users": [user("alice")]}})
    assert call.calls == [(commands.ListUsers, {"user": "alice"})]
    assert "alice" in out
    out, _ = go("lsuser:zed", "dispatcher", {commands.ListUsers: {"users": []}})
    assert out == "user zed is unknown"


@pytest.mark.parametrize("name,enabled", [("enableuser", True), ("disableuser", False)])
def test_set_user_enabled(name: str, enabled: bool) -> None:
    out, call = go(f"{name}:bob", "dispatcher")
    assert call.calls == [(commands.SetUserEnabled, {"user": "bob", "enabled": enabled})]
    assert out == "done."


@pytest.mark.parametrize(
    "line,action,user",
    [
        ("rmjobs:bob", "rmjobs", "bob"),
        ("rmwjobs:bob", "rmwjobs", "bob"),
        ("setallpjobsaswaiting", "setallpjobsaswaiting", None),
        ("setallrjobsaswaiting", "setallrjobsaswaiting", None),
        ("setallpjobsasfinished", "setallpjobsasfinished", None),
        ("setallrjobsasfinished", "setallrjobsasfinished", None),
        ("checkslots", "checkslots", None),
        ("updateload", "updateload", None),
    ],
)
def test_admin_jobs(line: str, action: str, user: str | None) -> None:
    resp: dict[type, Any] = {commands.AdminJobs: {"count": 3, "message": "set 3 jobs as waiting"}}
    out, call = go(line, "dispatcher", resp)
    assert call.calls == [(commands.AdminJobs, {"action": action, "user": user})]
    assert out == "set 3 jobs as waiting"


def test_lsthreads() -> None:
    out, call = go("lsthreads", "dispatcher", {commands.ListSessions: {"lines": ["a", "b"]}})
    assert call.calls == [(commands.ListSessions, {})]
    assert out == "a\nb"
    assert go("lsthreads", "dispatcher", {commands.ListSessions: {"lines": []}})[0] == "no sessions"


def test_reload() -> None:
    out, call = go("reload", "dispatcher", {commands.ReloadConfig: {"summary": "3 hosts, 2 users"}})
    assert call.calls == [(commands.ReloadConfig, {})]
    assert out == "3 hosts, 2 users"


# --- executors, shutdown --------------------------------------------------------------------


def test_lstmms() -> None:
    ex = [
        {"host": "node1", "pid": 5, "since": T0, "running": 2, "state": "connected"},
        {"host": "node22", "pid": None, "since": None, "running": 0, "state": "starting"},
    ]
    out, call = go("lstmms", "tms", {commands.ListExecutors: {"executors": ex}})
    assert call.calls == [(commands.ListExecutors, {})]
    lines = out.splitlines()
    assert lines[0].split() == ["host", "state", "pid", "since", "jobs"]
    assert lines[1].split() == ["node1", "connected", "5", *format_time(T0).split(), "2"]
    assert lines[2].split() == ["node22", "starting", "-", "-", "0"]
    assert lines[1].index("connected") == lines[2].index("starting")  # aligned columns
    assert go("lstmms", "tms", {commands.ListExecutors: {"executors": []}})[0] == "no tmms known."


@pytest.mark.parametrize(
    "name,action", [("invokealltmms", "invoke"), ("shutdownalltmms", "shutdown")]
)
def test_control_executors(name: str, action: str) -> None:
    answer = ["node1: starting", "node2: already running"]
    out, call = go(name, "tms", {commands.ControlExecutors: {"hosts": answer}})
    assert call.calls == [(commands.ControlExecutors, {"action": action})]
    assert out == "node1: starting\nnode2: already running"


def test_shutdown() -> None:
    out, call = go("shutdown", "tms")
    assert call.calls == [(commands.Shutdown, {})]
    assert out == "terminating TMS ..."


def test_error_from_call_propagates() -> None:
    async def failing(command: type, **kwargs: Any) -> dict[str, Any]:
        raise commands.UnknownJob("unknown job 3")

    d = Deferred.fromCoroutine(parse("lajob:3", "tms").run(failing))
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(commands.UnknownJob)


def test_format_time_uses_localtime() -> None:
    assert format_time(T0) == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0))


def test_lajob_shows_the_estimates() -> None:
    resp = {
        "job": [detail(estimated_time=3600.0, estimated_memory=512.0)],
        "history": [],
        "wait_reason": "",
    }
    out, _ = go("lajob:42", "tms", {commands.GetJob: resp})
    lines = out.splitlines()
    assert any(re.fullmatch(r"estimated time:\s+3600\.0", line) for line in lines), out
    assert any(re.fullmatch(r"estimated memory:\s+512\.0", line) for line in lines), out
    out, _ = go("lajob:42", "tms", {commands.GetJob: {**resp, "job": [detail()]}})
    assert any(re.fullmatch(r"estimated time:\s+n\.a\.", line) for line in out.splitlines())


def test_lsnextjobs_pages_with_an_offset_until_n_jobs() -> None:
    pages = [
        {"jobs": [job(1), job(2)], "next_after_id": 2},
        {"jobs": [job(3)], "next_after_id": 3},
        {"jobs": [job(9)], "next_after_id": None},
    ]
    out, call = go("lsnextjobs:3", "dispatcher", {commands.ListJobs: pages})
    assert [kw["after_id"] for _, kw in call.calls] == [0, 2]
    assert [kw["limit"] for _, kw in call.calls] == [3, 1]
    assert [int(line.split()[1]) for line in out.splitlines()[1:]] == [1, 2, 3]
