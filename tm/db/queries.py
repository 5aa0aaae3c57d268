"""Every SQL statement of TaskManager, as functions of a DB-API transaction.

Each function takes ``txn`` (a cursor inside one transaction, as
``ConnectionPool.runInteraction`` hands it out) and a :class:`Dialect`, and
returns plain data.  Statements are written with ``?`` parameters; the dialect
turns them into the driver's paramstyle.  Time is always passed in as ``now``.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import Any, cast

from tm.core import jobfields
from tm.core.model import (
    ACTIVE_STATES,
    HistoryEntry,
    Job,
    JobEnvironment,
    JobSpec,
    JobState,
    User,
)
from tm.db.dialect import (  # noqa: F401 - the names callers know from here
    IN_CHUNK,
    MYSQL,
    SQLITE,
    Dialect,
    _chunks,
    _marks,
    applied_versions,
    apply_migration,
    ensure_version_table,
    insert_new_rows,
    ping,
)
from tm.db.errors import StoreRefused
from tm.db.transitions import apply_transitions  # noqa: F401 - store.py calls it from here

# --- jobs -------------------------------------------------------------------
# The column lists and the row conversions come from the one declaration of a job's fields
# (tm/core/jobfields.py); test_jobfields.py checks it against the schema.


def _json_hosts(value: tuple[str, ...]) -> str:
    return json.dumps(list(value)) if value else "[]"  # most jobs exclude none


def _hosts(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def _state_value(state: JobState) -> str:
    return state.value


def _same(value: Any) -> Any:
    return value


def _sql_converters(f: jobfields.Field) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """How a value of ``f`` is written to its column, and read from it (None stays None)."""
    base = f.base
    if typing.get_origin(base) is tuple:
        return _json_hosts, _hosts
    if base is JobState:
        return _state_value, JobState
    if base is bool:
        return int, bool
    if base in (int, float):
        return _same, cast(Callable[[Any], Any], base)
    return _same, _same


JOB_COLUMNS = tuple(f.sql_name for f in jobfields.FIELDS)
_SELECT_JOBS = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs"
#: Every column but ``id`` (the database makes it).
_INSERTED = tuple(f for f in jobfields.FIELDS if f.name != "id")
_INSERT_JOB_COLUMNS = tuple(f.sql_name for f in _INSERTED)
_READERS = tuple((f.name, f.in_spec, _sql_converters(f)[1]) for f in jobfields.FIELDS)
_WRITERS = tuple(
    (attrgetter(f"spec.{f.name}" if f.in_spec else f.name), _sql_converters(f)[0])
    for f in _INSERTED
)
_USER, _GROUP, _INFO = (jobfields.column(name) for name in ("user", "group", "info"))
# A submission's INSERT names the spec's columns first, read from each JobSpec by one
# attrgetter (only the excluded hosts are converted), then the others: the same for each job.
_SPEC_COLUMNS = tuple(f for f in _INSERTED if f.in_spec and f.name != "excluded_hosts")
_OTHER_COLUMNS = tuple(f.sql_name for f in _INSERTED if not f.in_spec)
_NEW_COLUMNS = (*(f.sql_name for f in _SPEC_COLUMNS), "excluded_hosts", *_OTHER_COLUMNS)
assert all(_sql_converters(f)[0] is _same for f in _SPEC_COLUMNS)  # written as they are
_spec_values = attrgetter(*(f.name for f in _SPEC_COLUMNS))


def job_from_row(row: Sequence[Any]) -> Job:
    """A job from a row of ``_SELECT_JOBS``."""
    spec: dict[str, Any] = {}
    job: dict[str, Any] = {}
    for (name, in_spec, convert), value in zip(_READERS, row, strict=True):
        (spec if in_spec else job)[name] = None if value is None else convert(value)
    return Job(uuid=spec["uuid"], spec=JobSpec(**spec), **job)


def _job_row(job: Job) -> tuple[Any, ...]:
    """The values of ``_INSERT_JOB_COLUMNS`` for ``job``."""
    values = []
    for get, convert in _WRITERS:
        value = get(job)
        values.append(None if value is None else convert(value))
    return tuple(values)


def environment_sha256(env: dict[str, str]) -> str:
    return _text_sha256(_env_json(env))


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _env_json(env: dict[str, str]) -> str:
    return json.dumps(env, sort_keys=True, separators=(",", ":"))


def environment_text(environment: JobEnvironment) -> str:
    """What ``environments.data`` holds for a submission: its environment sealed with the
    user's key (tm/jobsign.py); the JSON of a plain one only for a submission that was not
    made through a TMS (tests), whose jobs no executor runs."""
    return environment.sealed or _env_json(dict(environment.env))


def store_environment(txn: Any, d: Dialect, text: str) -> int:
    """The id of the environment ``text`` in ``environments``, inserting it if it is new."""
    digest = _text_sha256(text)
    txn.execute(d.insert_ignore("environments", ("sha256", "data"), "sha256"), (digest, text))
    txn.execute(d.q("SELECT id FROM environments WHERE sha256 = ?"), (digest,))
    return int(txn.fetchone()[0])


def get_environment(txn: Any, d: Dialect, env_id: int) -> str | None:
    """The stored text of an environment: sealed, or (not through a TMS) JSON."""
    txn.execute(d.q("SELECT data FROM environments WHERE id = ?"), (env_id,))
    row = txn.fetchone()
    return None if row is None else str(row[0])


def ids_by_uuid(txn: Any, d: Dialect, uuids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """uuid -> (id, user) for the uuids that exist."""
    found: dict[str, tuple[int, str]] = {}
    for chunk in _chunks(list(uuids)):
        txn.execute(
            d.q(f"SELECT uuid, id, {_USER} FROM jobs WHERE uuid IN ({_marks(len(chunk))})"),
            tuple(chunk),
        )
        for uuid, job_id, user in txn.fetchall():
            found[uuid] = (int(job_id), user)
    return found


def insert_jobs(
    txn: Any,
    d: Dialect,
    user: str,
    environment: JobEnvironment,
    specs: Sequence[JobSpec],
    now: float,
) -> tuple[list[int], list[Job]]:
    """Insert the jobs idempotently by uuid: their ids in the order of ``specs``, and the
    jobs this transaction created, as their rows hold them (the values written, not read
    back). A uuid that exists already (a resent chunk) keeps its job, which must belong to
    ``user``, and is not among the created."""
    if not specs:
        return [], []
    env_id = store_environment(txn, d, environment_text(environment))
    common: dict[str, Any] = dict(user=user, state=JobState.WAITING, attempt=1, env_id=env_id)
    common.update(submitted_at=now, state_since=now, cwd=environment.cwd, umask=environment.umask)
    created = [Job(id=0, uuid=s.uuid, spec=s, **common) for s in specs]
    # The columns that are not the spec's have the same values for each job (_job_row's).
    first = dict(zip(_INSERT_JOB_COLUMNS, _job_row(created[0]), strict=True))
    others = tuple(first[c] for c in _OTHER_COLUMNS)
    rows = [(*_spec_values(s), _json_hosts(s.excluded_hosts)) for s in specs]
    new_ids = insert_new_rows(txn, d, "jobs", _NEW_COLUMNS, rows, others)
    ids: list[int | None] = []
    if new_ids is not None:  # all created, in one statement
        for job in created:
            job.id = new_ids[job.uuid]
        ids.extend(job.id for job in created)
    else:
        insert = d.insert_ignore("jobs", _NEW_COLUMNS, "uuid")
        kept = []
        for job, row in zip(created, rows, strict=True):
            txn.execute(insert, (*row, *others))
            if txn.rowcount == 1:
                job.id = int(txn.lastrowid)
                kept.append(job)
            ids.append(job.id or None)
        created = kept
    resent = [spec.uuid for spec, job_id in zip(specs, ids, strict=True) if job_id is None]
    found = ids_by_uuid(txn, d, resent) if resent else {}
    for i, spec in enumerate(specs):
        if ids[i] is None:
            job_id, owner = found[spec.uuid]
            if owner != user:
                raise StoreRefused(
                    f"job uuid {spec.uuid} is already used by another user's job; "
                    "generate a fresh uuid for each job"
                )
            ids[i] = job_id
    if created:
        txn.executemany(
            d.q(
                "INSERT INTO job_history (job_id, attempt, state, at, host, reason) "
                "VALUES (?, ?, ?, ?, ?, ?)"
            ),
            [(job.id, 1, JobState.WAITING.value, now, None, "submitted") for job in created],
        )
    return [i for i in ids if i is not None], created


def load_active_jobs(txn: Any, d: Dialect) -> list[Job]:
    states = sorted(s.value for s in ACTIVE_STATES)
    txn.execute(
        d.q(f"{_SELECT_JOBS} WHERE state IN ({_marks(len(states))}) ORDER BY id"), tuple(states)
    )
    return [job_from_row(row) for row in txn.fetchall()]


def get_jobs(txn: Any, d: Dialect, job_ids: Sequence[int]) -> list[Job]:
    jobs: list[Job] = []
    for chunk in _chunks(list(job_ids)):
        txn.execute(d.q(f"{_SELECT_JOBS} WHERE id IN ({_marks(len(chunk))})"), tuple(chunk))
        jobs.extend(job_from_row(row) for row in txn.fetchall())
    return sorted(jobs, key=lambda j: j.id)


def get_job(txn: Any, d: Dialect, job_id: int) -> Job | None:
    txn.execute(d.q(f"{_SELECT_JOBS} WHERE id = ?"), (job_id,))
    row = txn.fetchone()
    return None if row is None else job_from_row(row)


def get_history(txn: Any, d: Dialect, job_id: int, limit: int) -> list[HistoryEntry]:
    """The last ``limit`` history rows of a job, oldest first."""
    txn.execute(
        d.q(
            "SELECT at, state, attempt, host, reason FROM job_history "
            "WHERE job_id = ? ORDER BY id DESC LIMIT ?"
        ),
        (job_id, limit),
    )
    rows = list(txn.fetchall())
    rows.reverse()
    return [
        HistoryEntry(
            at=float(at), state=JobState(state), attempt=int(attempt), host=host, reason=reason
        )
        for at, state, attempt, host, reason in rows
    ]


def escape_like(text: str, escape: str = "!") -> str:
    """``text`` with LIKE wildcards escaped by ``escape`` (use ``ESCAPE '!'``)."""
    for ch in (escape, "%", "_"):
        text = text.replace(ch, escape + ch)
    return text


def _job_filters(
    states: Sequence[JobState], user: str | None, group: str | None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if states:
        where.append(f"state IN ({_marks(len(states))})")
        params.extend(s.value for s in states)
    if user is not None:
        where.append(f"{_USER} = ?")
        params.append(user)
    if group is not None:
        where.append(f"{_GROUP} = ?")
        params.append(group)
    return where, params


def list_jobs(
    txn: Any,
    d: Dialect,
    states: Sequence[JobState],
    user: str | None,
    group: str | None,
    text: str | None,
    after_id: int,
    limit: int,
) -> list[Job]:
    """Jobs with id > ``after_id``, by id; an empty ``states`` means every state."""
    where, params = _job_filters(states, user, group)
    where.append("id > ?")
    params.append(after_id)
    if text:
        pattern = "%" + escape_like(text.lower()) + "%"
        where.append(
            f"(LOWER(command) LIKE ? ESCAPE '!' OR LOWER({_INFO}) LIKE ? ESCAPE '!' "
            f"OR LOWER({_GROUP}) LIKE ? ESCAPE '!')"
        )
        params.extend([pattern, pattern, pattern])
    params.append(limit)
    txn.execute(
        d.q(f"{_SELECT_JOBS} WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"), tuple(params)
    )
    return [job_from_row(row) for row in txn.fetchall()]


def count_by_state(txn: Any, d: Dialect, user: str | None) -> dict[JobState, int]:
    where, params = _job_filters((), user, None)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    txn.execute(d.q(f"SELECT state, COUNT(*) FROM jobs{clause} GROUP BY state"), tuple(params))
    counts = dict.fromkeys(JobState, 0)
    for state, n in txn.fetchall():
        counts[JobState(state)] = int(n)
    return counts


def group_counts(
    txn: Any, d: Dialect, user: str | None, group: str | None
) -> dict[str, dict[str, int]]:
    """group name -> state -> number of jobs."""
    where, params = _job_filters((), user, group)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    txn.execute(
        d.q(f"SELECT {_GROUP}, state, COUNT(*) FROM jobs{clause} GROUP BY {_GROUP}, state"),
        tuple(params),
    )
    result: dict[str, dict[str, int]] = {}
    for group_name, state, n in txn.fetchall():
        result.setdefault(group_name, {})[state] = int(n)
    return result


def group_usage(
    txn: Any, d: Dialect, user: str | None, group: str | None
) -> dict[str, dict[str, float | int]]:
    """group name -> the resource use of its ended jobs that have one (migration 0004): how
    many, their CPU seconds and run time summed, their slot-time (run time x slots) summed and
    their largest peak memory (KiB)."""
    where, params = _job_filters((), user, group)
    where = [*where, "cpu_time IS NOT NULL"]
    txn.execute(
        d.q(
            f"SELECT {_GROUP}, COUNT(*), SUM(cpu_time), SUM(run_time), SUM(run_time * slots), "
            f"MAX(max_rss_kib) FROM jobs WHERE {' AND '.join(where)} GROUP BY {_GROUP}"
        ),
        tuple(params),
    )
    result: dict[str, dict[str, float | int]] = {}
    for group_name, n, cpu, run, slot_time, rss in txn.fetchall():
        used: dict[str, float | int] = {"jobs": int(n), "cpu_time": float(cpu or 0.0)}
        if run is not None:
            used["run_time"] = float(run)
            used["slot_time"] = float(slot_time or 0.0)
        if rss is not None:
            used["max_rss_kib"] = int(rss)
        result[group_name] = used
    return result


def set_suspended(txn: Any, d: Dialect, job_id: int, suspended: bool) -> bool:
    txn.execute(d.q("UPDATE jobs SET suspended = ? WHERE id = ?"), (int(suspended), job_id))
    return txn.rowcount == 1


def pending_callbacks(txn: Any, d: Dialect, user: str, after_id: int, limit: int) -> list[Job]:
    """``user``'s ended jobs with id > ``after_id`` whose on-end callback has not run, by id."""
    states = sorted(s.value for s in JobState if s.terminal)
    txn.execute(
        d.q(
            f"{_SELECT_JOBS} WHERE {_USER} = ? AND state IN ({_marks(len(states))}) "
            "AND on_end <> '' AND on_end_done = 0 AND id > ? ORDER BY id LIMIT ?"
        ),
        (user, *states, after_id, limit),
    )
    return [job_from_row(row) for row in txn.fetchall()]


def set_callbacks_ran(txn: Any, d: Dialect, user: str, job_ids: Sequence[int]) -> int:
    """Mark the on-end callbacks of ``user``'s jobs ``job_ids`` as run; how many were marked."""
    marked = 0
    for chunk in _chunks(list(job_ids)):
        txn.execute(
            d.q(
                f"UPDATE jobs SET on_end_done = 1 WHERE {_USER} = ? "
                f"AND id IN ({_marks(len(chunk))})"
            ),
            (user, *chunk),
        )
        marked += max(0, txn.rowcount)
    return marked


def delete_jobs(txn: Any, d: Dialect, job_ids: Sequence[int]) -> int:
    deleted = 0
    for chunk in _chunks(list(job_ids)):
        marks = _marks(len(chunk))
        txn.execute(d.q(f"DELETE FROM job_history WHERE job_id IN ({marks})"), tuple(chunk))
        txn.execute(d.q(f"DELETE FROM jobs WHERE id IN ({marks})"), tuple(chunk))
        deleted += txn.rowcount
    return deleted


# --- settings, hosts, users ---------------------------------------------------


def get_setting(txn: Any, d: Dialect, name: str) -> str | None:
    txn.execute(d.q("SELECT `value` FROM settings WHERE name = ?"), (name,))
    row = txn.fetchone()
    return None if row is None else str(row[0])


def set_setting(txn: Any, d: Dialect, name: str, value: str) -> None:
    txn.execute(d.upsert("settings", ("name", "`value`"), "name", ("`value`",)), (name, value))


def load_hosts(txn: Any, d: Dialect) -> dict[str, tuple[bool, bool]]:
    txn.execute("SELECT name, active, retired FROM hosts ORDER BY name")
    return {name: (bool(active), bool(retired)) for name, active, retired in txn.fetchall()}


def save_host(txn: Any, d: Dialect, name: str, active: bool, retired: bool) -> None:
    txn.execute(
        d.upsert("hosts", ("name", "active", "retired"), "name", ("active", "retired")),
        (name, int(active), int(retired)),
    )


def _roles_text(roles: Iterable[str]) -> str:
    return ",".join(sorted(roles))


def sync_users(txn: Any, d: Dialect, users: Sequence[User]) -> None:
    """Insert missing users, update everyone's roles; ``enabled`` stays as stored."""
    insert = d.insert_ignore("users", ("name", "enabled", "roles"), "name")
    update = d.q("UPDATE users SET roles = ? WHERE name = ?")
    for user in users:
        roles = _roles_text(user.roles)
        txn.execute(insert, (user.name, int(user.enabled), roles))
        txn.execute(update, (roles, user.name))


def load_users(txn: Any, d: Dialect) -> dict[str, bool]:
    txn.execute("SELECT name, enabled FROM users ORDER BY name")
    return {name: bool(enabled) for name, enabled in txn.fetchall()}


def set_user_enabled(txn: Any, d: Dialect, name: str, enabled: bool) -> bool:
    txn.execute(d.q("SELECT name FROM users WHERE name = ?"), (name,))
    if txn.fetchone() is None:
        return False
    txn.execute(d.q("UPDATE users SET enabled = ? WHERE name = ?"), (int(enabled), name))
    return True
