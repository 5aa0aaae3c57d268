"""The text commands of ``hConnect``: parsing and formatting over typed AMP requests.

Pure: :func:`parse` turns a line like ``lajob:12`` into a :class:`TextCommand`;
:meth:`TextCommand.run` sends the matching AMP command(s) through an injected
``call(command_name, **kwargs) -> dict`` (the ``commandName`` of a command of
:mod:`tm.protocol.commands`) and formats the answer as text (:mod:`tm.textformat`). Without
Twisted: ``hConnect`` runs it over the TMS's Unix socket as well as over AMP.
"""

from __future__ import annotations

from tm.textcontrol import CONTROL_COMMANDS, run_control

# The formatting of the answers lives in tm.textformat: its names stay importable from here.
from tm.textformat import (
    ENDED_STATES,
    TERMINAL_STATES,
    format_executors,
    format_hosts,
    format_job_detail,
    format_jobs,
    format_server_info,
    format_status,
    format_td_status_json,
    format_time,
    format_users,
    group_block,
    killed_line,
)

__all__ = [
    "ENDED_STATES",
    "SPECS",
    "TERMINAL_STATES",
    "TARGETS",
    "TextCommand",
    "TextCommandError",
    "format_executors",
    "format_hosts",
    "format_job_detail",
    "format_jobs",
    "format_server_info",
    "format_status",
    "format_td_status_json",
    "format_time",
    "format_users",
    "help_text",
    "parse",
]

TYPE_CHECKING = False
if TYPE_CHECKING:  # hConnect's everyday commands import neither typing nor re
    from collections.abc import Awaitable, Callable
    from typing import Any

    Call = Callable[..., Awaitable[dict[str, Any]]]

TARGETS = ("tms", "dispatcher")
PAGE_LIMIT = 1000  # the dispatcher ends a page sooner where one AMP value is full
LIST_STATES: dict[str, tuple[list[str], str]] = {
    "lswjobs": (["waiting"], "no waiting jobs"),
    "lspjobs": (["pending"], "no pending jobs"),
    "lsrjobs": (["running"], "no running jobs"),
    "lsfjobs": (ENDED_STATES, "no finished jobs"),
}
ADMIN_ACTIONS = (
    "rmjobs",
    "rmwjobs",
    "setallpjobsaswaiting",
    "setallrjobsaswaiting",
    "setallpjobsasfinished",
    "setallrjobsasfinished",
    "checkslots",
    "updateload",
)


class TextCommandError(ValueError):
    """A text command that cannot be understood; the message says why and how to write it."""


class UnknownGroup(TextCommandError):
    """A command about a group that does not exist (hConnect exits non-zero)."""


class _Frozen:
    """A small immutable record with equality, hash and repr over its ``__slots__``, as a
    frozen dataclass has them: without ``dataclasses``, which hConnect's start does not import
    (it imports ``inspect``, ``ast``, ``dis`` and ``tokenize``)."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *values: Any) -> None:
        for name, value in zip(self.__slots__, values, strict=True):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{n}={v!r}" for n, v in zip(self.__slots__, self._values(), strict=True)
        )
        return f"{type(self).__name__}({fields})"


class _Spec(_Frozen):
    __slots__ = ("name", "targets", "arg", "description")
    name: str
    targets: tuple[str, ...]
    arg: str  # "", "int", "ints", "text", "regex", "host", "user", "count"
    description: str

    def __init__(self, name: str, targets: tuple[str, ...], arg: str, description: str) -> None:
        super().__init__(name, targets, arg, description)

    @property
    def usage(self) -> str:
        return {
            "": self.name,
            "int": f"{self.name}:ID",
            "ints": f"{self.name}:ID[:ID...]",
            "text": f"{self.name}:TEXT",
            "regex": f"{self.name}:REGEX",
            "host": f"{self.name}:HOST",
            "user": f"{self.name}:USER",
            "count": f"{self.name}:N",
            "group": f"{self.name}:GROUP",
            "resubmit": f"{self.name}:ID|group:GROUP[:failed]",
            "jobs": f"{self.name}:ID[:ID...]|A-B|group:GROUP",
            "output": f"{self.name}:ID[:err]",
            "idset": f"{self.name}:ID[:ID...] or {self.name}:FIRST-LAST",
            "idprio": f"{self.name}:ID:PRIORITY",
        }[self.arg]


_BOTH = ("tms", "dispatcher")
_TMS = ("tms",)
_TD = ("dispatcher",)

_SPECS: list[_Spec] = [
    _Spec("ping", _BOTH, "", "check that the server answers"),
    _Spec("help", _BOTH, "", "list every command"),
    _Spec("fullhelp", _TD, "", "list every command (same as help)"),
    _Spec("status", _TD, "", "cluster activity, hosts, slots and job counts"),
    _Spec("gettdstatus", _BOTH, "", "dispatcher status as JSON"),
    _Spec("printserverinfo", _TMS, "", "status of your TaskManagerServer"),
    _Spec("lscluster", _TD, "", "list the cluster's hosts"),
    _Spec("activatecluster", _TD, "", "allow dispatching"),
    _Spec("deactivatecluster", _TD, "", "stop dispatching new jobs"),
    _Spec("activatehost", _TD, "host", "let a host get new jobs"),
    _Spec("deactivatehost", _TD, "host", "give a host no new jobs"),
    _Spec("lsusers", _TD, "", "list the users"),
    _Spec("lsuser", _TD, "user", "show one user"),
    _Spec("enableuser", _TD, "user", "let a user's waiting jobs be dispatched"),
    _Spec("disableuser", _TD, "user", "keep a user's waiting jobs waiting"),
    _Spec("lswjobs", _BOTH, "", "list waiting jobs"),
    _Spec("lspjobs", _BOTH, "", "list pending jobs"),
    _Spec("lsrjobs", _BOTH, "", "list running jobs"),
    _Spec("lsfjobs", _BOTH, "", "list ended jobs (finished, failed, killed, timeout, cancelled)"),
    _Spec("lajob", _BOTH, "int", "show everything about a job"),
    _Spec("lagroup", _TMS, "group", "job counts and progress of a group"),
    _Spec("lagroups", _TMS, "", "job counts and progress of every group"),
    _Spec("hasgroupfinished", _TMS, "group", "yes if every job of the group has ended"),
    _Spec("findjobs", _BOTH, "text", "jobs whose command, info or group contains TEXT"),
    _Spec("lsnextjobs", _TD, "count", "the next N waiting jobs in scheduling order"),
    _Spec("killjob", _TMS, "int", "kill a job"),
    _Spec("killjobs", _TMS, "idset", "kill several jobs, or a range of ids"),
    _Spec("killmatchingjobs", _TMS, "regex", "kill the jobs whose command matches REGEX"),
    _Spec("killalljobs", _TMS, "", "kill all your jobs"),
    _Spec("suspendjob", _TMS, "int", "stop a running job's processes"),
    _Spec("resumejob", _TMS, "int", "continue a suspended job"),
    _Spec("rmjobs", _TD, "user", "remove all jobs of a user, killing running ones"),
    _Spec("rmwjobs", _TD, "user", "remove the waiting jobs of a user"),
    _Spec("setallpjobsaswaiting", _TD, "", "re-queue every pending job"),
    _Spec("setallrjobsaswaiting", _TD, "", "re-queue every running job"),
    _Spec("setallpjobsasfinished", _TD, "", "mark every pending job as finished"),
    _Spec("setallrjobsasfinished", _TD, "", "mark every running job as finished"),
    _Spec("checkslots", _TD, "", "recompute the occupied slots of every host"),
    _Spec("updateload", _TD, "", "poll the load of every host now"),
    _Spec("lsthreads", _TD, "", "the dispatcher's live sessions and timers"),
    _Spec("reload", _TD, "", "re-read the configuration"),
    _Spec("lstmms", _TMS, "", "list your executors (TMMS)"),
    _Spec("invokealltmms", _TMS, "", "start an executor on every active host"),
    _Spec("shutdownalltmms", _TMS, "", "stop all your executors"),
    _Spec("shutdown", _TMS, "", "stop your TaskManagerServer"),
    _Spec("dashboard", _BOTH, "", "a link to the web dashboard (one use, valid 10 minutes)"),
    _Spec("resubmit", _TMS, "resubmit", "submit copies of ended jobs (':failed': unsuccessful)"),
    # Run by hConnect itself (tm/cli/jobwatch.py): they stream, and their exit status says more.
    _Spec("wait", _TMS, "jobs", "wait until the jobs end; exit 0 if all finished"),
    _Spec("cat", _TMS, "output", "print a job's stdout (cat:ID:err: its stderr)"),
    _Spec("follow", _TMS, "output", "print a job's output as it is written, until it ends"),
    # Job control of issue 11 (tm/textcontrol.py): holds, groups, ranges, priority.
    _Spec("killgroup", _TMS, "group", "kill every active job of one of your groups"),
    _Spec("holdjob", _BOTH, "idset", "keep waiting jobs from starting (they keep their place)"),
    _Spec("releasejob", _BOTH, "idset", "let held jobs start again"),
    _Spec("holdgroup", _BOTH, "group", "hold every waiting job of one of your groups"),
    _Spec("releasegroup", _BOTH, "group", "release every held job of one of your groups"),
    _Spec("setpriority", _BOTH, "idprio", "set a waiting job's priority (users may lower it)"),
]
SPECS: dict[str, _Spec] = {s.name: s for s in _SPECS}


def help_text(target: str) -> str:
    """Every command of ``target`` with its argument syntax and a one-line description."""
    _check_target(target)
    specs = [s for s in _SPECS if target in s.targets]
    width = max(len(s.usage) for s in specs)
    title = (
        "commands of your TaskManagerServer" if target == "tms" else "commands of the dispatcher"
    )
    lines = [title + ":"]
    lines += [f"  {s.usage.ljust(width)}  {s.description}" for s in specs]
    return "\n".join(lines)


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: expected 'tms' or 'dispatcher'")


def _int(text: str, spec: _Spec, what: str = "job id") -> int:
    try:
        value = int(text)
    except ValueError:
        raise TextCommandError(
            f"{spec.name}: {text!r} is not a {what}: usage: {spec.usage}"
        ) from None
    if value < 0:
        raise TextCommandError(f"{spec.name}: {what} must not be negative: usage: {spec.usage}")
    return value


def _id_or_range(text: str, spec: _Spec) -> int | tuple[int, int]:
    """``12`` or ``3-500`` (a range of ids, both included)."""
    first, dash, last = text.partition("-")
    if not dash:
        return _int(text, spec)
    low, high = _int(first, spec), _int(last, spec)
    if high < low:
        raise TextCommandError(
            f"{spec.name}: the range {text!r} goes down: write FIRST-LAST: usage: {spec.usage}"
        )
    return (low, high)


def parse(line: str, target: str) -> TextCommand:
    """Parse ``name``, ``name:ARG`` or ``name:A:B:...`` for ``target`` ("tms" or "dispatcher")."""
    _check_target(target)
    line = line.strip()
    name, sep, rest = line.partition(":")
    name = name.strip()
    if not name:
        raise TextCommandError("empty command: try 'help'")
    spec = SPECS.get(name)
    where = "your TaskManagerServer" if target == "tms" else "the dispatcher"
    if spec is None:
        raise TextCommandError(f"unknown command {name!r}: try 'help'")
    if target not in spec.targets:
        other = "hConnect -T (the dispatcher)" if target == "tms" else "hConnect (your TMS)"
        raise TextCommandError(f"{name!r} is not a command of {where}; use {other}, or try 'help'")
    if spec.arg == "":
        if sep:
            raise TextCommandError(f"{name} takes no argument: usage: {spec.usage}")
        return TextCommand(name, (), target)
    if not sep or not rest:
        what = {
            "int": "a job id",
            "ints": "one or more job ids",
            "text": "a text",
            "regex": "a regular expression",
            "host": "a host name",
            "user": "a user name",
            "count": "a number",
            "group": "a group name",
            "resubmit": "a job id or group:GROUP",
            "jobs": "job ids, a range A-B or group:GROUP",
            "output": "a job id",
            "idset": "job ids or a range of ids",
            "idprio": "a job id and a priority",
        }[spec.arg]
        raise TextCommandError(f"{name} needs {what}: usage: {spec.usage}")
    args: tuple[Any, ...]
    if spec.arg == "int":
        args = (_int(rest, spec),)
    elif spec.arg == "ints":
        args = tuple(_int(p, spec) for p in rest.split(":"))
    elif spec.arg == "idset":
        args = tuple(_id_or_range(p, spec) for p in rest.split(":"))
    elif spec.arg == "idprio":
        parts = rest.split(":")
        if len(parts) != 2:
            raise TextCommandError(f"{name} needs a job id and a priority: usage: {spec.usage}")
        args = (_int(parts[0], spec), _int(parts[1], spec, "priority"))
    elif spec.arg == "count":
        args = (_int(rest, spec, "number"),)
    elif spec.arg == "resubmit":
        args = _resubmit_args(rest, spec)
    elif spec.arg == "regex":
        import re

        try:
            re.compile(rest)
        except re.error as e:
            raise TextCommandError(
                f"{name}: bad regular expression {rest!r} ({e}): usage: {spec.usage}"
            ) from None
        args = (rest,)
    else:  # text, host, user, group: the rest of the line, colons included
        args = (rest,)
    return TextCommand(name, args, target)


def _resubmit_args(rest: str, spec: _Spec) -> tuple[Any, ...]:
    """``ID`` -> (ID,); ``group:G`` -> (None, G, False); ``group:G:failed`` -> (None, G, True)."""
    if not rest.startswith("group:"):
        return (_int(rest, spec),)
    group = rest.removeprefix("group:")
    failed = group.endswith(":failed")
    group = group.removesuffix(":failed") if failed else group
    if not group:
        raise TextCommandError(f"{spec.name} needs a group name: usage: {spec.usage}")
    return (None, group, failed)


def resubmitted_text(answer: dict[str, Any], args: tuple[Any, ...]) -> str:
    """What ``resubmit`` prints: each old job and its copy."""
    pairs = list(zip(answer["old_ids"], answer["job_ids"], strict=False))
    lines = [f"job {old} resubmitted as job {new}" for old, new in pairs]
    if len(args) > 1:
        lines.insert(0, f"{len(pairs)} job(s) of group {args[1]} resubmitted")
    lines += [f"warning: {w}" for w in answer.get("warnings") or []]
    return "\n".join(lines)


class TextCommand(_Frozen):
    __slots__ = ("name", "args", "target")
    name: str
    args: tuple[Any, ...]
    target: str

    def __init__(self, name: str, args: tuple[Any, ...], target: str) -> None:
        super().__init__(name, args, target)

    @property
    def scope(self) -> str:
        return "mine" if self.target == "tms" else "all"

    async def _list(self, call: Call, states: list[str], text: str | None = None) -> list[dict]:
        jobs: list[dict[str, Any]] = []
        after = 0
        while True:
            kwargs: dict[str, Any] = {
                "states": states,
                "scope": self.scope,
                "after_id": after,
                "limit": PAGE_LIMIT,
            }
            if text is not None:
                kwargs["text"] = text
            r = await call("ListJobs", **kwargs)
            jobs.extend(r["jobs"])
            nxt = r.get("next_after_id")
            if nxt is None or not r["jobs"]:
                return jobs
            after = nxt

    async def run(self, call: Call) -> str:
        n, a = self.name, self.args
        with_user = self.target == "dispatcher"
        if n in ("help", "fullhelp"):
            return help_text(self.target)
        if n == "ping":
            await call("Ping")
            return "pong"
        if n in LIST_STATES:
            states, empty = LIST_STATES[n]
            jobs = await self._list(call, states)
            return format_jobs(jobs, with_user) if jobs else empty
        if n == "findjobs":
            jobs = await self._list(call, [], text=a[0])
            return format_jobs(jobs, with_user) if jobs else "no jobs found"
        if n == "lsnextjobs":
            jobs = []
            offset: int | None = 0
            while offset is not None and len(jobs) < a[0]:
                r = await call(
                    "ListJobs",
                    states=["waiting"],
                    scope="all",
                    after_id=offset,
                    limit=min(PAGE_LIMIT, a[0] - len(jobs)),
                    order="schedule",
                )
                jobs.extend(r["jobs"])
                offset = r.get("next_after_id") if r["jobs"] else None
            return format_jobs(jobs, True) if jobs else "no jobs found to send"
        if n == "lajob":
            return format_job_detail(await call("GetJob", job_id=a[0]))
        if n in ("lagroup", "hasgroupfinished"):
            r = await call("GroupSummary", group=a[0], scope=self.scope)
            counts = r["groups"].get(a[0])
            if not counts and n == "hasgroupfinished":
                raise UnknownGroup(f"group {a[0]!r} is unknown: see lagroups")
            if not counts:
                return "group is unknown"
            if n == "lagroup":
                return group_block(a[0], counts, (r.get("usage") or {}).get(a[0]))
            unfinished = sum(c for s, c in counts.items() if s not in TERMINAL_STATES)
            return "no" if unfinished else "yes"
        if n == "lagroups":
            r = await call("GroupSummary", group=None, scope=self.scope)
            # Jobs submitted without -g are in no group.
            groups = {g: counts for g, counts in r["groups"].items() if g}
            if not groups:
                return "no groups found"
            return "\n".join(group_block(g, groups[g]) for g in sorted(groups))
        if n in CONTROL_COMMANDS or (n == "killjobs" and any(isinstance(x, tuple) for x in a)):
            return await run_control(n, a, call)
        if n in ("killjob", "killjobs"):
            r = await call("KillJobs", job_ids=list(a), regex=None, all=False)
            return killed_line(r["killed"], r.get("more"))
        if n == "killmatchingjobs":
            r = await call("KillJobs", job_ids=[], regex=a[0], all=False)
            return killed_line(r["killed"], r.get("more"))
        if n == "killalljobs":
            r = await call("KillJobs", job_ids=[], regex=None, all=True)
            return killed_line(r["killed"], r.get("more"))
        if n in ("suspendjob", "resumejob"):
            await call("SuspendJob", job_id=a[0], resume=n == "resumejob")
            return f"job {a[0]} has been {'resumed' if n == 'resumejob' else 'suspended'}"
        if n == "gettdstatus":
            return format_td_status_json(await call("GetStatus"))
        if n == "status":
            return format_status(await call("GetStatus"))
        if n == "printserverinfo":
            info = await call("ServerInfo")
            status = await call("GetStatus")
            return format_server_info(info, status)
        if n == "lscluster":
            return format_hosts(await call("ListHosts"))
        if n in ("activatecluster", "deactivatecluster"):
            active = n == "activatecluster"
            await call("SetClusterActive", active=active)
            return "activated." if active else "deactivated."
        if n in ("activatehost", "deactivatehost"):
            active = n == "activatehost"
            r = await call("SetHostActive", host=a[0], active=active)
            host = r.get("host") or a[0]
            return f"host {host} has been {'activated' if active else 'deactivated'}"
        if n == "lsusers":
            return format_users((await call("ListUsers", user=None))["users"])
        if n == "lsuser":
            users = (await call("ListUsers", user=a[0]))["users"]
            return format_users(users) if users else f"user {a[0]} is unknown"
        if n in ("enableuser", "disableuser"):
            await call("SetUserEnabled", user=a[0], enabled=n == "enableuser")
            return "done."
        if n in ADMIN_ACTIONS:
            r = await call("AdminJobs", action=n, user=a[0] if a else None)
            return str(r["message"])
        if n == "lsthreads":
            lines = (await call("ListSessions"))["lines"]
            return "\n".join(lines) if lines else "no sessions"
        if n == "reload":
            return str((await call("ReloadConfig"))["summary"])
        if n == "lstmms":
            return format_executors((await call("ListExecutors"))["executors"])
        if n in ("invokealltmms", "shutdownalltmms"):
            action = "invoke" if n == "invokealltmms" else "shutdown"
            hosts = (await call("ControlExecutors", action=action))["hosts"]
            return "\n".join(hosts) if hosts else "no host"
        if n == "resubmit":
            if len(a) == 1:
                r = await call("ResubmitJobs", job_id=a[0])
            else:
                r = await call("ResubmitJobs", group=a[1], failed_only=a[2])
            return resubmitted_text(r, a)
        if n == "shutdown":
            await call("Shutdown")
            return "terminating TMS ..."
        if n == "dashboard":
            return str((await call("DashboardLink"))["url"])  # the link alone: `xdg-open $(...)`
        raise TextCommandError(f"unknown command {n!r}: try 'help'")  # pragma: no cover
