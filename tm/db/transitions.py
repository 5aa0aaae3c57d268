"""The state changes of jobs, written as compare-and-sets: one turn's batch in few statements.

Every transition applies only if the job is still in the transition's old state and attempt
(``UPDATE … WHERE id = ? AND state = ? AND attempt = ?``), and each one applied is appended to
the job's history. Written one by one, that is two statements per transition, and with
MariaDB two round trips to the server, each a wake-up of both sides: most of the cost of a
job's start and end (three transitions a job: placed, running, ended).

:func:`apply_transitions` does the same in a handful of statements for the whole batch where
the server is a separate process (MariaDB): the jobs' rows read and locked first
(``SELECT … FOR UPDATE``, the same locking read an UPDATE makes), each compare-and-set
decided on them in order (a job may change twice in one batch: the second sees the first),
then one ``UPDATE`` per group of transitions setting the same columns (a value that differs
between the jobs by ``CASE id``), and one multi-row ``INSERT`` of the history. With SQLite
(in process: a statement is a function call) the statements stay one per transition; only the
history rows go in one ``executemany``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tm.core import jobfields
from tm.core.model import JobState, Transition
from tm.db.dialect import MYSQL, Dialect, _chunks, _marks

_HISTORY = (
    "INSERT INTO job_history (job_id, attempt, state, at, host, reason) VALUES (?, ?, ?, ?, ?, ?)"
)
#: Jobs of one UPDATE: each one's values are parameters of its CASEs.
UPDATE_CHUNK = 200


def _value(value: object) -> Any:
    return value.value if isinstance(value, JobState) else value


def apply_transitions(
    txn: Any, d: Dialect, transitions: Sequence[Transition], now: float
) -> list[bool]:
    """Apply each transition as a compare-and-set, in order; which ones were applied."""
    if d.name == MYSQL.name and len(transitions) > 1:
        return _batched(txn, d, transitions, now)
    results: list[bool] = []
    history: list[tuple[Any, ...]] = []
    for t in transitions:
        # The same changes the dispatcher applied to the job in memory (Transition.changes).
        changes = t.changes(now)
        sets = [f"{jobfields.column(name)} = ?" for name in changes]
        params = [_value(value) for value in changes.values()]
        params.extend([t.job_id, t.old.value, t.attempt])
        txn.execute(
            d.q(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state = ? AND attempt = ?"),
            tuple(params),
        )
        applied = txn.rowcount == 1
        results.append(applied)
        if applied:
            history.append(_history_row(t, now))
    if history:
        txn.executemany(d.q(_HISTORY), history)
    return results


def _history_row(t: Transition, now: float) -> tuple[Any, ...]:
    attempt = t.new_attempt if t.new_attempt is not None else t.attempt
    at = now if t.at is None else t.at
    return (t.job_id, attempt, t.new.value, at, t.host, t.reason)


def _batched(txn: Any, d: Dialect, transitions: Sequence[Transition], now: float) -> list[bool]:
    current: dict[int, tuple[str, int]] = {}
    for chunk in _chunks(sorted({t.job_id for t in transitions})):
        txn.execute(
            d.q(
                f"SELECT id, state, attempt FROM jobs WHERE id IN ({_marks(len(chunk))}) FOR UPDATE"
            ),
            tuple(chunk),
        )
        for job_id, state, attempt in txn.fetchall():
            current[int(job_id)] = (str(state), int(attempt))
    results: list[bool] = []
    history: list[tuple[Any, ...]] = []
    # Rounds: a job's second change in the batch is written after its first.
    rounds: list[dict[tuple[str, ...], list[tuple[int, dict[str, Any]]]]] = []
    changed: dict[int, int] = {}  # job id -> how many of its changes are in rounds
    for t in transitions:
        applied = current.get(t.job_id) == (t.old.value, t.attempt)
        results.append(applied)
        if not applied:
            continue
        row = _history_row(t, now)
        current[t.job_id] = (t.new.value, row[1])
        history.append(row)
        changes = {name: _value(value) for name, value in t.changes(now).items()}
        n = changed.get(t.job_id, 0)
        changed[t.job_id] = n + 1
        if n == len(rounds):
            rounds.append({})
        rounds[n].setdefault(tuple(changes), []).append((t.job_id, changes))
    for groups in rounds:
        for names, members in groups.items():
            for chunk in _chunks(members, UPDATE_CHUNK):
                _update(txn, d, names, chunk)
    if history:
        txn.executemany(d.q(_HISTORY), history)
    return results


def _update(
    txn: Any, d: Dialect, names: tuple[str, ...], jobs: Sequence[tuple[int, dict[str, Any]]]
) -> None:
    """One UPDATE of ``jobs`` (each once), each column set to each job's value."""
    sets: list[str] = []
    params: list[Any] = []
    for name in names:
        column = jobfields.column(name)
        values = [changes[name] for _, changes in jobs]
        first = values[0]
        if all(v is first or (type(v) is type(first) and v == first) for v in values):
            sets.append(f"{column} = ?")
            params.append(first)
            continue
        sets.append(f"{column} = CASE id{' WHEN ? THEN ?' * len(jobs)} END")
        for (job_id, _), value in zip(jobs, values, strict=True):
            params.extend((job_id, value))
    ids = [job_id for job_id, _ in jobs]
    params.extend(ids)
    txn.execute(d.q(f"UPDATE jobs SET {', '.join(sets)} WHERE id IN ({_marks(len(ids))})"), params)
