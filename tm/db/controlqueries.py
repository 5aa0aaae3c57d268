"""The statements of dependencies, holds and priority (issue 11; migration 0003)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tm.core import jobfields
from tm.core.model import JobState
from tm.db.dialect import Dialect, _marks

#: The endings that break an ``after`` or ``after_group`` dependency.
BAD_ENDINGS = tuple(s.value for s in JobState if s.terminal and s is not JobState.FINISHED)


def set_control_fields(txn: Any, d: Dialect, job_ids: Sequence[int], values: dict[str, Any]) -> int:
    """Set fields of the hold or priority (``hold``, ``priority``) of jobs; rows changed."""
    sets = ", ".join(f"{jobfields.column(name)} = ?" for name in values)
    changed = 0
    ids = list(job_ids)
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        txn.execute(
            d.q(f"UPDATE jobs SET {sets} WHERE id IN ({_marks(len(chunk))})"),
            (*values.values(), *chunk),
        )
        changed += txn.rowcount
    return changed


def first_bad_in_group(
    txn: Any, d: Dialect, user: str, group: str, below: int
) -> tuple[int, str] | None:
    """The first job of ``(user, group)`` with an id below ``below`` that ended other than
    finished, with its state; None if there is none."""
    txn.execute(
        d.q(
            f"SELECT id, state FROM jobs WHERE user_name = ? AND group_name = ? AND id < ? "
            f"AND state IN ({_marks(len(BAD_ENDINGS))}) ORDER BY id LIMIT 1"
        ),
        (user, group, below, *BAD_ENDINGS),
    )
    row = txn.fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def group_size(txn: Any, d: Dialect, user: str, group: str) -> int:
    txn.execute(
        d.q("SELECT COUNT(*) FROM jobs WHERE user_name = ? AND group_name = ?"), (user, group)
    )
    return int(txn.fetchone()[0])
