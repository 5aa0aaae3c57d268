"""The text of ``hConnect``'s answers: jobs, a job's details, the status, hosts, executors,
users and killed jobs, each formatted from the AMP answer (a dict) it comes from.

Pure and without Twisted (``hConnect``'s fast path imports it); :mod:`tm.textcommands` parses
the commands, sends them and formats their answers with these functions.
"""

from __future__ import annotations

import time

from tm.joboutput import run_time, shown_outputs

TYPE_CHECKING = False
if TYPE_CHECKING:  # hConnect's everyday commands import neither typing nor, for a listing
    from typing import Any  # of waiting or running jobs, json and tm.core.jobtime (re)

ENDED_STATES = ["finished", "failed", "killed", "timeout", "cancelled"]
TERMINAL_STATES = ("finished", "failed", "killed", "lost", "timeout", "cancelled")


def format_time(t: float | None) -> str:
    if t is None:
        return "n.a."
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _shorten(text: str, n: int = 30) -> str:
    return text[:n] + "..." if len(text) > n else text


def _align(rows: list[list[str]]) -> str:
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _job_where(job: dict[str, Any]) -> str:
    state = job["state"]
    if state == "waiting":
        return f"waiting since {format_time(job['state_since'])}"
    if state in ("pending", "running"):
        extra = " (suspended)" if job.get("suspended") else ""
        return f"{state} on {job['host']}{extra}"
    code = job.get("exit_code")
    sig = job.get("signal")
    end = f"exit {code}" if code is not None else (f"signal {sig}" if sig is not None else "exit -")
    used = _usage(job)
    return f"{state} {format_time(job['state_since'])} {end}" + (f" ({used})" if used else "")


def _usage(job: dict[str, Any]) -> str:
    """An ended job's resource use, as ``seff`` shows it ("" when it was not measured)."""
    from tm.core.jobtime import format_usage

    return format_usage(
        job.get("cpu_time"), job.get("max_rss_kib"), job.get("run_time"), job.get("slots") or 1
    )


#: The header line of a job listing (the user column only in the dispatcher's listings).
JOBS_HEADER = ("#", "ID", "USER", "STATE", "GROUP", "INFO", "COMMAND")
#: What an empty cell shows, so that every row has its columns (``awk '{print $5}'``).
EMPTY_CELL = "-"


def format_jobs(jobs: list[dict[str, Any]], with_user: bool) -> str:
    rows = [[h for h in JOBS_HEADER if with_user or h != "USER"]]
    for i, job in enumerate(jobs, 1):
        row = [str(i), str(job["id"])]
        if with_user:
            row.append(job["user"])
        row += [
            _job_where(job),
            job["group"] or EMPTY_CELL,
            job["info"] or EMPTY_CELL,
            _shorten(job["command"]),
        ]
        rows.append(row)
    return _align(rows)


def format_job_detail(response: dict[str, Any]) -> str:
    from tm.core.jobtime import format_limit

    job = response["job"][0]
    state = job["state"]
    if state == "waiting" and response.get("wait_reason"):
        state += f" ({response['wait_reason']})"
    if job.get("suspended"):
        state += " (suspended)"

    def opt(v: Any) -> str:
        return "n.a." if v is None or v == "" else str(v)

    fields = [
        ("job id", str(job["id"])),
        ("user", job["user"]),
        ("state", state),
        ("command", job["command"]),
        ("info", job["info"]),
        ("group", job["group"]),
        ("slots", str(job["slots"])),
        ("priority", str(job["priority"])),
        ("shell", job["shell"]),
        ("cwd", job["cwd"]),
        ("stdout", shown_outputs(job)[0]),
        ("stderr", shown_outputs(job)[1]),
        ("logfile", job["logfile"]),
        ("estimated time", opt(job.get("estimated_time"))),
        ("estimated memory", opt(job.get("estimated_memory"))),
        ("time limit", "n.a." if not job.get("time_limit") else format_limit(job["time_limit"])),
        ("excluded hosts", _json_text(list(job["excluded_hosts"]))),
        ("host", opt(job["host"])),
        ("pid", opt(job.get("pid"))),
        ("exit code", opt(job.get("exit_code"))),
        ("signal", opt(job.get("signal"))),
        ("reason", job["reason"]),
        ("started", format_time(job.get("started_at"))),
        ("ended", format_time(job.get("ended_at"))),
        ("run time", run_time(job, time.time())),
        ("resource use", _usage(job) or "n.a."),
    ]
    if job.get("retries") is not None:  # issue 11 point 3 (tm/core/retry.py)
        fields.append(("retries", f"{job['retries']} (on exit: {job.get('retry_on_exit') or '-'})"))
    if job.get("on_end"):
        fields.append(("on end", job["on_end"]))
    if job.get("array_index") is not None:  # a job of an array (tm/core/arrays.py)
        cap = job.get("array_cap")
        fields.insert(6, ("array index", str(job["array_index"])))
        fields.insert(
            7, ("array", f"{job['array_id']} (at most {cap} at once)" if cap else job["array_id"])
        )
    fields += _control_lines(job)
    width = max(len(k) for k, _ in fields) + 1
    lines = [f"{(k + ':').ljust(width)} {v}" for k, v in fields]
    env = response.get("env")
    if env:  # only through the user's own TMS, which opens it (tm/jobsign.py)
        lines.append("environment:")
        lines.extend(f"  {name}={_one_line(env[name])}" for name in sorted(env))
    lines.append("history:")
    for h in response["history"]:
        parts = [
            format_time(h["at"]),
            h["state"],
            f"attempt {h['attempt']}",
            h["host"],
            h["reason"],
        ]
        lines.append("  " + "  ".join(parts).rstrip())
    return "\n".join(lines)


def _control_lines(job: dict[str, Any]) -> list[tuple[str, str]]:
    """A job's dependencies and hold (tm/core/dependencies.py), where it has some."""
    lines = []
    for key, label in (
        ("after", "after (finished)"),
        ("after_any", "after (any end)"),
        ("after_group", "after group"),
    ):
        if job.get(key):
            lines.append((label, str(job[key])))
    hold = job.get("hold") or ""
    if hold:
        who, _, name = hold.partition(":")
        lines.append(("held", f"by {'the admin ' if who == 'admin' else ''}{name}"))
    return lines


def _one_line(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def group_block(group: str, counts: dict[str, int], used: dict[str, Any] | None = None) -> str:
    total = sum(counts.values())
    ended = sum(counts.get(s, 0) for s in TERMINAL_STATES)
    progress = ended / total * 100 if total else 0.0
    states = ["waiting", "pending", "running", "finished", "failed", "killed"]
    states += sorted(s for s in counts if s not in states)
    lines = [f"group: {group}"]
    lines += [f"  {s}: {counts.get(s, 0)}" for s in states]
    lines.append(f"  total: {total}")
    lines.append(f"  progress: {progress:.2f}%")
    if used and used.get("jobs"):  # the ended jobs whose use was measured (issue 11)
        lines.append(f"  resource use of {used['jobs']} ended job(s): " + _group_usage(used))
    return "\n".join(lines)


def _group_usage(used: dict[str, Any]) -> str:
    """Their CPU time summed, its efficiency over their slot-time, their largest peak memory,
    and their run time summed."""
    from tm.core.jobtime import format_duration, format_memory

    parts = []
    cpu, slot_time = used.get("cpu_time"), used.get("slot_time")
    if cpu is not None:
        parts.append(f"cpu {format_duration(cpu)}")
        if slot_time:
            parts.append(f"efficiency {cpu / slot_time * 100:.0f} %")
    if used.get("max_rss_kib") is not None:
        parts.append(f"largest peak memory {format_memory(used['max_rss_kib'])}")
    if used.get("run_time") is not None:
        parts.append(f"total run time {format_duration(used['run_time'])}")
    return ", ".join(parts)


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {r["state"]: r["count"] for r in rows}


def format_td_status_json(status: dict[str, Any]) -> str:
    doc: dict[str, Any] = {
        "activity status": bool(status["cluster_active"]),
        "active hosts": status["active_hosts"],
        "total slots": status["total_slots"],
        "occupied slots": status["occupied_slots"],
    }
    for state, count in _counts(status["counts"]).items():
        doc[f"{state} jobs"] = count
    return _json_text(doc)


def _json_text(value: object) -> str:
    """``json.dumps(value)``: the same text, without importing json (and re) for lajob."""
    from tm.localsocket import dumps

    return dumps(value, (", ", ": "))


def format_status(status: dict[str, Any]) -> str:
    counts = _counts(status["counts"])
    lines = [
        f"dispatcher on {status['address']} running since {format_time(status['started_at'])}",
        "cluster is active" if status["cluster_active"] else "cluster is not active",
        f"active hosts: {status['active_hosts']}",
        f"occupied slots: {status['occupied_slots']} / {status['total_slots']}",
    ]
    for state in ["waiting", "pending", "running", *ENDED_STATES]:
        lines.append(f"{state} jobs: {counts.get(state, 0)}")
    return "\n".join(lines)


def format_server_info(info: dict[str, Any], status: dict[str, Any]) -> str:
    """The ``printserverinfo`` / ``hRunJob -s`` block from ServerInfo and GetStatus."""
    counts = _counts(status["user_counts"])
    connected = "connected" if info["dispatcher_connected"] else "not connected"
    lines = [
        f"Status of TaskManagerServer on {info['host']}:{info['port']} of user {info['user']}",
        f"  tms running since: {format_time(info['started_at'])} (pid {info['pid']})",
        f"  dispatcher: {info['dispatcher']} ({connected})",
        f"  dispatcher activity status: {'active' if status['cluster_active'] else 'not active'}",
        f"  active hosts: {status['active_hosts']}",
        f"  occupied slots: {status['occupied_slots']} / {status['total_slots']}",
        "  your jobs:",
    ]
    for state in ["waiting", "pending", "running", "finished", "failed", "killed"]:
        lines.append(f"    {state}: {counts.get(state, 0)}")
    for state in ["timeout", "cancelled"]:  # the endings of issue 11, where there are any
        if counts.get(state):
            lines.append(f"    {state}: {counts[state]}")
    return "\n".join(lines)


#: The header line of lscluster's hosts.
HOSTS_HEADER = ("#", "HOST", "STATUS", "SLOTS", "LOAD", "EXECUTORS")


def format_hosts(response: dict[str, Any]) -> str:
    head = "cluster is active" if response["cluster_active"] else "cluster is not active"
    rows = [list(HOSTS_HEADER)]
    for i, h in enumerate(response["hosts"], 1):
        status = "retired" if h["retired"] else ("active" if h["active"] else "inactive")
        free = h["max_slots"] - h["occupied_slots"]
        load = "n.a." if h.get("load") is None else f"{h['load']:.2f}"
        rows.append(
            [
                str(i),
                h["name"],
                status,
                f"{free}/{h['max_slots']} free",
                f"load {load}",
                f"executors {h['executors']}",
            ]
        )
    return head + ("\n" + _align(rows) if len(rows) > 1 else "\nno hosts")


def format_executors(executors: list[dict[str, Any]]) -> str:
    """lstmms: one aligned row per executor (TMMS) of the user."""
    if not executors:
        return "no tmms known."
    rows = [["host", "state", "pid", "since", "jobs"]]
    for e in executors:
        since = "-" if e.get("since") is None else format_time(e["since"])
        pid = "-" if e.get("pid") is None else str(e["pid"])
        rows.append([e["host"], e.get("state", "connected"), pid, since, str(e.get("running", 0))])
    return _align(rows)


#: The header line of lsusers.
USERS_HEADER = (
    "#",
    "USER",
    "ROLES",
    "ENABLED",
    "TMS",
    "WAITING",
    "PENDING",
    "RUNNING",
    "USAGE",
    "EXECUTORS",
)


def format_users(users: list[dict[str, Any]]) -> str:
    if not users:
        return "no users"
    rows = [list(USERS_HEADER)]
    for i, u in enumerate(users, 1):
        rows.append(
            [
                str(i),
                u["name"],
                ",".join(u["roles"]),
                "enabled" if u["enabled"] else "disabled",
                "TMS connected" if u["tms_connected"] else "no TMS",
                f"waiting {u['waiting']}",
                f"pending {u['pending']}",
                f"running {u['running']}",
                f"usage {u['usage']:.0f} slot-s",
                "executors: " + (",".join(u["executors"]) or "-"),
            ]
        )
    return _align(rows)


def killed_line(killed: list[int], more: int | None = None) -> str:
    if not killed:
        return "no job killed"
    if more:
        return f"Job(s) {', '.join(str(k) for k in killed)} and {more} more have been killed."
    return f"Job(s) {', '.join(str(k) for k in killed)} have been killed."
