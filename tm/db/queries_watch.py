"""The SQL of waiting for many jobs (``WaitJobs``): counts per state of a selection of a
user's jobs, and the ones that did not finish. Functions of a transaction like those of
:mod:`tm.db.queries` (split from it for its size)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tm.core.model import ACTIVE_STATES, JobState
from tm.db.dialect import Dialect, _marks
from tm.db.queries import _GROUP, _USER

#: The jobs that did not finish that one answer lists, at most.
FAILED_LISTED = 20


def _selection(
    user: str, ranges: Sequence[tuple[int, int]], group: str | None
) -> tuple[str, list[Any]]:
    where = [f"{_USER} = ?"]
    params: list[Any] = [user]
    if ranges:
        where.append("(" + " OR ".join("id BETWEEN ? AND ?" for _ in ranges) + ")")
        for first, last in ranges:
            params += [first, last]
    if group is not None:
        where.append(f"{_GROUP} = ?")
        params.append(group)
    return " AND ".join(where), params


def summarise_jobs(
    txn: Any, d: Dialect, user: str, ranges: Sequence[tuple[int, int]], group: str | None
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(state -> number of jobs, the first jobs by id that ended otherwise than finished)."""
    where, params = _selection(user, ranges, group)
    txn.execute(
        d.q(f"SELECT state, COUNT(*) FROM jobs WHERE {where} GROUP BY state"), tuple(params)
    )
    counts = {str(state): int(n) for state, n in txn.fetchall()}
    not_failed = [s.value for s in ACTIVE_STATES] + [JobState.FINISHED.value]
    txn.execute(
        d.q(
            "SELECT id, state, exit_code, `signal`, reason FROM jobs "
            f"WHERE {where} AND state NOT IN ({_marks(len(not_failed))}) ORDER BY id LIMIT ?"
        ),
        (*params, *not_failed, FAILED_LISTED),
    )
    failed = [
        {"id": int(i), "state": str(s), "exit_code": e, "signal": g, "reason": str(r or "")}
        for i, s, e, g, r in txn.fetchall()
    ]
    return counts, failed


def existing_ids(txn: Any, d: Dialect, user: str, job_ids: Sequence[int]) -> set[int]:
    """Which of ``job_ids`` are jobs of ``user``."""
    found: set[int] = set()
    ids = list(job_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        txn.execute(
            d.q(f"SELECT id FROM jobs WHERE {_USER} = ? AND id IN ({_marks(len(chunk))})"),
            (user, *chunk),
        )
        found.update(int(row[0]) for row in txn.fetchall())
    return found
