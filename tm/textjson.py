"""``--json``: the answers of ``hConnect`` and ``hRunJob`` as JSON documents (docs/json.md).

A text command runs as it does for the text answer (:meth:`tm.textcommands.TextCommand.run`),
through a ``call`` that keeps the AMP answers it returns; the document is made from those
answers, not from the text. So every command gets its JSON form, and a command that lists jobs
(``ListJobs``) has ``"jobs"`` whatever its name. A job's object is made from its record as the
dispatcher sends it, field by field of :data:`tm.core.jobfields.FIELDS` (a field declared
there appears here without further edits).

Times are points in seconds since the epoch in the answers; a key naming one (``at``,
``since``, ``*_at``, ``*_since``) becomes its ISO 8601 text in UTC and ``<key>_s``, the
seconds. Pure and without Twisted (``hConnect``'s fast path imports it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from functools import cache
from typing import Any

from tm.textcommands import SPECS, TERMINAL_STATES, TextCommand, TextCommandError

Call = Callable[..., Awaitable[dict[str, Any]]]

#: The version of the documents' schema (docs/json.md); raised when a key changes meaning or
#: goes away, not when one is added.
SCHEMA_VERSION = 1


@cache
def _fields() -> tuple[frozenset[str], dict[str, int]]:
    """A job's fields whose "no value" travels as "" (AMP carries no None for text: null
    here), and the fields' order. From tm.core.jobfields when a document is made first: the
    text answers (hConnect without --json) do without it and the model it imports."""
    from tm.core import jobfields

    nullable = frozenset(f.name for f in jobfields.FIELDS if f.optional and f.base is str)
    return nullable, {f.name: i for i, f in enumerate(jobfields.FIELDS)}


def dumps(doc: dict[str, Any]) -> str:
    """One document on one line, UTF-8 kept as it is."""
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def iso(t: float | None) -> str | None:
    """``t`` (seconds since the epoch) as ISO 8601 in UTC, to the second: ``2026-11-30T18:00:00Z``."""
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def is_time_key(key: str) -> bool:
    """``key`` names a point in time (seconds since the epoch)."""
    return key in ("at", "since") or key.endswith(("_at", "_since"))


def with_times(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with each time as ISO 8601 under its key and as seconds under ``<key>_s``."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if is_time_key(key) and (value is None or isinstance(value, int | float)):
            out[key] = iso(value)
            out[key + "_s"] = value
        else:
            out[key] = value
    return out


def job(row: dict[str, Any]) -> dict[str, Any]:
    """A job's object from its record (a row of ListJobs or GetJob): its fields in the order
    of :data:`~tm.core.jobfields.FIELDS`, then any other key of the record, as sent."""
    nullable, order = _fields()
    keys = sorted(row, key=lambda k: order.get(k, len(order)))
    out: dict[str, Any] = {}
    for key in keys:
        value = row[key]
        if key in nullable and value == "":
            value = None
        elif isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return with_times(out)


def job_detail(answer: dict[str, Any]) -> dict[str, Any]:
    """``lajob``: the job's object with its ``wait_reason``, ``history`` and (asked of the
    user's own TMS) ``env``, and any other key GetJob's answer carries."""
    out = job(answer["job"][0])
    out["wait_reason"] = answer.get("wait_reason") or None
    for key, value in answer.items():
        if key in ("job", "history", "wait_reason", "sealed_env"):
            continue
        if key == "env" and value is None:
            continue
        out[key] = value
    out["history"] = [with_times(dict(h)) for h in answer.get("history", [])]
    return with_times(out)


def group(name: str, counts: dict[str, int]) -> dict[str, Any]:
    """A group's counts per state and its progress (ended / total, in percent)."""
    total = sum(counts.values())
    ended = sum(counts.get(s, 0) for s in TERMINAL_STATES)
    return {
        "group": name,
        "counts": dict(counts),
        "total": total,
        "ended": ended,
        "progress": round(ended / total * 100, 2) if total else 0.0,
        "finished": total > 0 and ended == total,
    }


def status(answer: dict[str, Any]) -> dict[str, Any]:
    """GetStatus: the cluster's activity, hosts and slots; counts of every user's jobs and of
    the caller's."""
    out = {k: v for k, v in answer.items() if k not in ("counts", "user_counts")}
    out["counts"] = {r["state"]: r["count"] for r in answer.get("counts", [])}
    out["user_counts"] = {r["state"]: r["count"] for r in answer.get("user_counts", [])}
    return with_times(out)


def host(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["status"] = "retired" if row["retired"] else ("active" if row["active"] else "inactive")
    out["free_slots"] = row["max_slots"] - row["occupied_slots"]
    return with_times(out)


def server_info(info: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """``printserverinfo`` / ``hRunJob -s``: the TMS and the status."""
    return {"schema": SCHEMA_VERSION, "tms": with_times(dict(info)), "status": status(answer)}


def help_doc(target: str) -> dict[str, Any]:
    specs = [s for s in SPECS.values() if target in s.targets]
    return {
        "commands": [
            {"name": s.name, "usage": s.usage, "description": s.description} for s in specs
        ]
    }


def submitted(ids: list[int], jobs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """``hRunJob --json``: the ids made, the group they share (null when they differ or have
    none), and each job as submitted."""
    objects = [{"id": i} | job(row) for i, row in zip(ids, jobs, strict=True)]
    groups = {o.get("group") or None for o in objects}
    return {
        "schema": SCHEMA_VERSION,
        "ids": list(ids),
        "group": groups.pop() if len(groups) == 1 else None,
        "jobs": objects,
    }


# --- the documents of hConnect's commands ------------------------------------------------------


class _Recorder:
    """The ``call`` of a text command that keeps each AMP command's answers."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self.answers: dict[str, list[dict[str, Any]]] = {}

    async def __call__(self, name: str, **kw: Any) -> dict[str, Any]:
        answer = await self._call(name, **kw)
        self.answers.setdefault(name, []).append(answer)
        return answer


def _document(command: TextCommand, answers: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What the answers of ``command`` say, each under its own key."""
    doc: dict[str, Any] = {}
    if "ListJobs" in answers:
        doc["jobs"] = [job(r) for a in answers["ListJobs"] for r in a["jobs"]]
    if "GetJob" in answers:
        doc["job"] = job_detail(answers["GetJob"][-1])
    if "GroupSummary" in answers:
        groups = answers["GroupSummary"][-1]["groups"]
        if command.name in ("lagroup", "hasgroupfinished"):
            name = command.args[0]
            if not groups.get(name):
                raise TextCommandError(f"group {name!r} is unknown: see `hConnect lagroups`")
            doc["group"] = group(name, groups[name])
        else:
            doc["groups"] = [group(g, groups[g]) for g in sorted(groups) if g]
    if "GetStatus" in answers:
        doc["status"] = status(answers["GetStatus"][-1])
    if "ServerInfo" in answers:
        doc["tms"] = with_times(dict(answers["ServerInfo"][-1]))
    if "ListHosts" in answers:
        answer = answers["ListHosts"][-1]
        doc["cluster_active"] = answer["cluster_active"]
        doc["hosts"] = [host(h) for h in answer["hosts"]]
    if "ListUsers" in answers:
        doc["users"] = [with_times(dict(u)) for u in answers["ListUsers"][-1]["users"]]
        if command.name == "lsuser" and not doc["users"]:
            raise TextCommandError(
                f"user {command.args[0]!r} is unknown: see `hConnect -T lsusers`"
            )
    if "ListExecutors" in answers:
        doc["executors"] = [with_times(dict(e)) for e in answers["ListExecutors"][-1]["executors"]]
    if "KillJobs" in answers:
        answer = answers["KillJobs"][-1]
        doc["killed"] = list(answer["killed"])
        doc["more"] = answer.get("more") or 0
    if "ListSessions" in answers:
        doc["lines"] = list(answers["ListSessions"][-1]["lines"])
    if "ControlExecutors" in answers:
        doc["hosts"] = list(answers["ControlExecutors"][-1]["hosts"])
    if "AdminJobs" in answers:
        doc["count"] = answers["AdminJobs"][-1]["count"]
    if "Ping" in answers:
        doc["pong"] = True
    return doc


async def run(command: TextCommand, call: Call) -> str:
    """``hConnect --json COMMAND``: the command's document (docs/json.md), one line."""
    if command.name in ("help", "fullhelp"):
        return dumps(
            {"schema": SCHEMA_VERSION, "command": command.name, **help_doc(command.target)}
        )
    recorder = _Recorder(call)
    text = await command.run(recorder)
    doc = _document(command, recorder.answers)
    if not doc or "AdminJobs" in recorder.answers:
        doc["message"] = text  # an action (or a command without data of its own): its answer
    return dumps({"schema": SCHEMA_VERSION, "command": command.name, **doc})


async def answer(command: TextCommand, call: Call, as_json: bool) -> str:
    """The text of ``command``'s answer, or with ``as_json`` its JSON document."""
    return await (run(command, call) if as_json else command.run(call))
