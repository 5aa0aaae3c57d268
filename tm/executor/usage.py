"""What a job's end report says of its time limit and resource use (issue 11, points 2, 6).

The arguments of ``JobFinished`` the executor adds for an end: whether the job was stopped at
its time limit, and its tree's CPU seconds (user + system), largest resident set (KiB) and
run time on the host, as its shepherd reaped them (``wait4`` of the shepherd, the subreaper
of the whole tree). A lost end says none of them.
"""

from __future__ import annotations

from typing import Any

from tm.executor.request import JobEnd


def end_usage(end: JobEnd, lost: bool) -> dict[str, Any]:
    """The optional arguments of ``JobFinished`` for ``end``."""
    if lost:
        return {}
    cpu = None
    if end.cpu_user is not None or end.cpu_system is not None:
        cpu = (end.cpu_user or 0.0) + (end.cpu_system or 0.0)
    return {
        "timed_out": end.timed_out,
        "cpu_time": cpu,
        "max_rss_kib": end.max_rss_kib,
        "run_time": max(0.0, end.ended_at - end.started_at),
    }
