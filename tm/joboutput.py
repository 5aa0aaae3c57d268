"""Where a job's stdout and stderr go, and how long it ran: for ``lajob``, ``cat`` and
``follow``. Pure and standard library only (the CLI's fast path imports it).

The executor's rule (tm/executor/request.py): ``-o``/``-O`` relative to the submission
directory, ``~`` expanded; without them ``~/.taskmanager/logs/ID.out`` and ``ID.err``.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # hConnect's everyday commands do without typing
    from typing import Any

STREAMS = ("out", "err")


def output_path(job: dict[str, Any], stream: str) -> str:
    """The path of the job's ``stream`` ("out" or "err") on its host."""
    given = job.get("stdout") if stream == "out" else job.get("stderr")
    if given:
        return os.path.normpath(os.path.join(job.get("cwd") or "/", os.path.expanduser(given)))
    logs = os.path.join(os.path.expanduser("~"), ".taskmanager", "logs")
    return os.path.join(logs, f"{job['id']}.{stream}")


def shown_outputs(job: dict[str, Any]) -> tuple[str, str]:
    """The lines ``lajob`` shows for stdout and stderr."""
    out, err = output_path(job, "out"), output_path(job, "err")
    if err == out:
        return out, f"{err} (with stdout)"
    return out, f"{err} (removed at the end when empty)"


def run_time(job: dict[str, Any], now: float | None = None) -> str:
    """``1 h 2 min 3 s``: from its start to its end (or until ``now`` while it runs)."""
    start, end = job.get("started_at"), job.get("ended_at")
    if start is None:
        return "n.a."
    if end is None:
        if now is None or job.get("state") != "running":
            return "n.a."
        end = now
    seconds = max(0.0, float(end) - float(start))
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m} min {s} s" if h else f"{m} min {s} s"
