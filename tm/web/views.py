"""What one viewer of the dashboard sees, as plain JSON-ready data.

The one place that decides who sees what on the web, by the rule of the AMP sessions: a
user sees their own jobs, executors and groups; an admin (the ``admin`` role of
etc/users) sees everyone's.  Hosts and slots are for everyone (``lscluster``); other
users' queues appear to a user as one "others" row, without their names.
"""

from __future__ import annotations

import os
from typing import Any

from tm.core.model import ACTIVE_STATES, TERMINAL_STATES, Job, JobState
from tm.protocol.base import one_line
from tm.protocol.webcommands import MAX_TAIL_BYTES, OutputTail
from tm.web.feed import DashboardFeed
from tm.web.tokens import Viewer

#: Rows of the job table, at most: the newest active jobs, then the newest ended ones.
MAX_ACTIVE_ROWS = 300
MAX_ENDED_ROWS = 100
MAX_GROUPS = 50
COMMAND_CHARS = 500
OTHERS = "(other users)"
#: Seconds the executor has to send a job's output tail.
TAIL_TIMEOUT = 5.0


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def job_row(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "user": job.user,
        "state": job.state.value,
        "command": _short(job.spec.command, COMMAND_CHARS),
        "group": job.spec.group,
        "info": _short(job.spec.info, 200),
        "host": job.host,
        "slots": job.spec.slots,
        "attempt": job.attempt,
        "submitted_at": job.submitted_at,
        "started_at": job.started_at,
        "ended_at": job.ended_at,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "suspended": job.suspended,
        "reason": _short(job.reason, 300),
    }


def may_see(viewer: Viewer, user: str) -> bool:
    return viewer.sees_all or viewer.user == user


def hosts_view(d: Any, viewer: Viewer) -> list[dict[str, Any]]:
    occupied = d.occupied()
    executors: dict[str, list[str]] = {}
    for user, host in d.executors:
        executors.setdefault(host, []).append(user)
    rows = []
    for name, h in d.hosts.items():
        users = sorted(executors.get(name, []))
        rows.append(
            {
                "name": name,
                "slots": h.max_slots,
                "used": occupied.get(name, 0),
                "active": bool(h.active and not h.retired),
                "load": d.loads.get(name),
                "executors": len(users),
                # Whose executors run there: all of them for an admin, one's own otherwise.
                "executor_users": [u for u in users if may_see(viewer, u)],
            }
        )
    return rows


def queue_view(d: Any, viewer: Viewer) -> list[dict[str, Any]]:
    users = sorted(set(d.users) | set(d.jobs.waiting_users()))
    rows: dict[str, dict[str, Any]] = {}
    for user in users:
        counts = d.jobs.counts(user)
        if not counts and user != viewer.user:
            continue
        name = user if may_see(viewer, user) else OTHERS
        row = rows.setdefault(name, {"user": name, **{s.value: 0 for s in ACTIVE_STATES}})
        for state, n in counts.items():
            row[state.value] += n
    return sorted(rows.values(), key=lambda r: (r["user"] == OTHERS, r["user"]))


def jobs_view(d: Any, feed: DashboardFeed, viewer: Viewer) -> list[dict[str, Any]]:
    owner = None if viewer.sees_all else viewer.user
    active = d.jobs.newest(ACTIVE_STATES, owner, MAX_ACTIVE_ROWS)
    ended: list[Job] = []
    for job in reversed(feed.recent):
        if may_see(viewer, job.user):
            ended.append(job)
            if len(ended) >= MAX_ENDED_ROWS:
                break
    rows = [job_row(j) for j in active] + [job_row(j) for j in ended]
    rows.sort(key=lambda r: r["id"], reverse=True)
    return rows


_ENDED = frozenset(s.value for s in TERMINAL_STATES)


def groups_view(counts: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Group progress from the store's counts per group and state (jobs without a group
    are left out); the groups with the most jobs still to run first."""
    rows: list[dict[str, Any]] = []
    for group, by_state in counts.items():
        if not group:
            continue
        total = sum(by_state.values())
        done = sum(n for s, n in by_state.items() if s in _ENDED)
        rows.append({"group": group, "total": total, "done": done, "counts": dict(by_state)})
    rows.sort(key=lambda r: (-(r["total"] - r["done"]), r["group"]))
    return rows[:MAX_GROUPS]


async def state_view(d: Any, feed: DashboardFeed, viewer: Viewer) -> dict[str, Any]:
    """Everything the page shows, for ``viewer``."""
    now = d.reactor.seconds()
    counts = await d.store.group_counts(None if viewer.sees_all else viewer.user)
    return {
        "now": now,
        "user": viewer.user,
        "sees_all": viewer.sees_all,
        "cluster_active": d.cluster_active,
        "hosts": hosts_view(d, viewer),
        "queue": queue_view(d, viewer),
        "jobs": jobs_view(d, feed, viewer),
        "groups": groups_view(counts),
        "charts": feed.charts(now),
    }


def output_place(job: Job, which: str) -> str:
    """Where a job's stdout or stderr goes, as its executor resolves it (tm.executor.request):
    the dispatcher does not read users' files (docs/dashboard.md)."""
    given = job.spec.stdout if which == "out" else job.spec.stderr
    if not given:
        return f"~/.taskmanager/logs/{job.id}.{which}"
    if given.startswith("~") or os.path.isabs(given) or not job.cwd:
        return os.path.normpath(given)
    return os.path.normpath(os.path.join(job.cwd, given))


async def job_view(d: Any, viewer: Viewer, job_id: int) -> dict[str, Any] | None:
    """One job with its history and where its output is; None when there is no such job
    that ``viewer`` may see (the two are not told apart)."""
    job = d.jobs.get(job_id) or await d.store.get_job(job_id)
    if job is None or not may_see(viewer, job.user):
        return None
    history = await d.store.get_history(job_id, 100)
    row = job_row(job)
    row["command"] = _short(job.spec.command, 20_000)
    row["cwd"] = job.cwd
    row["history"] = [
        {
            "at": h.at,
            "state": h.state.value,
            "attempt": h.attempt,
            "host": h.host,
            "reason": _short(h.reason, 500),
        }
        for h in history
    ]
    row["output"] = {
        "host": job.host,
        "stdout": output_place(job, "out"),
        "stderr": output_place(job, "err"),
        # Only to the job's owner: an admin sees where the output is, not what it says.
        "tail": await output_tail(d, job) if viewer.user == job.user else None,
    }
    return row


async def output_tail(d: Any, job: Job) -> dict[str, Any] | None:
    """The end of a running job's stdout and stderr, read by its executor (the dispatcher
    reads no user's files); None when the job is not running on a connected executor."""
    if job.state is not JobState.RUNNING or not job.host:
        return None
    session = d.executors.get((job.user, job.host))
    if session is None:
        return None
    tail: dict[str, Any] = {}
    for stream in ("out", "err"):
        try:
            answer = await session.proto.call(
                OutputTail,
                reply_timeout=TAIL_TIMEOUT,
                job_id=job.id,
                attempt=job.attempt,
                stream=stream,
                limit=MAX_TAIL_BYTES,
            )
        except Exception as e:  # an old executor, a slow file system, a dropped link
            reason = one_line(e) or type(e).__name__
            return {"error": f"the executor on {job.host} did not send the output: {reason}"}
        if not answer["found"]:
            return None
        tail[stream] = answer["data"]
        tail[stream + "_size"] = answer["size"]
    return tail
