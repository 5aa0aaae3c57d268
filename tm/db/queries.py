"""Every SQL statement of TaskManager, as functions of a DB-API transaction.

Each function takes ``txn`` (a cursor inside one transaction, as
``ConnectionPool.runInteraction`` hands it out) and a :class:`Dialect`, and
returns plain data.  Statements are written with ``?`` parameters; the dialect
turns them into the driver's paramstyle.  Time is always passed in as ``now``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from tm.core.model import (
    ACTIVE_STATES,
    HistoryEntry,
    Job,
    JobEnvironment,
    JobSpec,
    JobState,
    Transition,
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
    ping,
)
from tm.db.errors import StoreRefused

# --- jobs -------------------------------------------------------------------

JOB_COLUMNS = (
    "id",
    "uuid",
    "user_name",
    "command",
    "shell",
    "cwd",
    "umask",
    "env_id",
    "slots",
    "priority",
    "group_name",
    "info_text",
    "stdout",
    "stderr",
    "logfile",
    "excluded_hosts",
    "estimated_time",
    "estimated_memory",
    "state",
    "attempt",
    "host",
    "pid",
    "exit_code",
    "`signal`",
    "reason",
    "suspended",
    "submitted_at",
    "state_since",
    "started_at",
    "ended_at",
)
_SELECT_JOBS = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs"


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _excluded(text: str) -> tuple[str, ...]:
    return () if text == "[]" else tuple(json.loads(text))


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


#: JOB_COLUMNS as the keys of a row (unquoted).
_JOB_FIELDS = tuple(c.strip("`") for c in JOB_COLUMNS)


def job_from_row(row: Sequence[Any]) -> Job:
    r = dict(zip(_JOB_FIELDS, row, strict=True))
    spec = JobSpec(
        uuid=r["uuid"],
        command=r["command"],
        shell=r["shell"],
        slots=int(r["slots"]),
        priority=int(r["priority"]),
        group=r["group_name"],
        info=r["info_text"],
        stdout=r["stdout"],
        stderr=r["stderr"],
        logfile=r["logfile"],
        excluded_hosts=_excluded(r["excluded_hosts"]),
        estimated_time=_opt_float(r["estimated_time"]),
        estimated_memory=_opt_float(r["estimated_memory"]),
    )
    return Job(
        id=int(r["id"]),
        uuid=r["uuid"],
        user=r["user_name"],
        spec=spec,
        state=JobState(r["state"]),
        attempt=int(r["attempt"]),
        submitted_at=float(r["submitted_at"]),
        host=r["host"],
        pid=_opt_int(r["pid"]),
        exit_code=_opt_int(r["exit_code"]),
        signal=_opt_int(r["signal"]),
        reason=r["reason"],
        started_at=_opt_float(r["started_at"]),
        ended_at=_opt_float(r["ended_at"]),
        state_since=_opt_float(r["state_since"]),
        suspended=bool(r["suspended"]),
        cwd=r["cwd"],
        umask=int(r["umask"]),
        env_id=_opt_int(r["env_id"]),
    )


def environment_sha256(env: dict[str, str]) -> str:
    return hashlib.sha256(_env_json(env).encode("utf-8")).hexdigest()


def _env_json(env: dict[str, str]) -> str:
    return json.dumps(env, sort_keys=True, separators=(",", ":"))


def store_environment(txn: Any, d: Dialect, env: dict[str, str]) -> int:
    """The id of ``env`` in ``environments``, inserting it if it is new."""
    digest = environment_sha256(env)
    txn.execute(
        d.insert_ignore("environments", ("sha256", "data"), "sha256"), (digest, _env_json(env))
    )
    txn.execute(d.q("SELECT id FROM environments WHERE sha256 = ?"), (digest,))
    return int(txn.fetchone()[0])


def get_environment(txn: Any, d: Dialect, env_id: int) -> dict[str, str] | None:
    txn.execute(d.q("SELECT data FROM environments WHERE id = ?"), (env_id,))
    row = txn.fetchone()
    return None if row is None else dict(json.loads(row[0]))


def ids_by_uuid(txn: Any, d: Dialect, uuids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """uuid -> (id, user) for the uuids that exist."""
    found: dict[str, tuple[int, str]] = {}
    for chunk in _chunks(list(uuids)):
        txn.execute(
            d.q(f"SELECT uuid, id, user_name FROM jobs WHERE uuid IN ({_marks(len(chunk))})"),
            tuple(chunk),
        )
        for uuid, job_id, user in txn.fetchall():
            found[uuid] = (int(job_id), user)
    return found


_INSERT_JOB_COLUMNS = (
    "uuid",
    "user_name",
    "command",
    "shell",
    "cwd",
    "umask",
    "env_id",
    "slots",
    "priority",
    "group_name",
    "info_text",
    "stdout",
    "stderr",
    "logfile",
    "excluded_hosts",
    "estimated_time",
    "estimated_memory",
    "state",
    "attempt",
    "reason",
    "suspended",
    "submitted_at",
    "state_since",
)


def insert_jobs(
    txn: Any,
    d: Dialect,
    user: str,
    environment: JobEnvironment,
    specs: Sequence[JobSpec],
    now: float,
) -> tuple[list[int], list[Job]]:
    """Insert the jobs idempotently by uuid: their ids in the order of ``specs``, and the
    jobs this transaction created as their rows hold them (built from the values written,
    not read back). A uuid that exists already (a resent chunk) keeps its job, which must
    belong to ``user``, and is not among the created."""
    if not specs:
        return [], []
    env_id = store_environment(txn, d, dict(environment.env))
    insert = d.insert_ignore("jobs", _INSERT_JOB_COLUMNS, "uuid")
    ids: list[int | None] = []
    created: list[Job] = []
    resent: list[str] = []
    waiting = JobState.WAITING.value
    cwd, umask = environment.cwd, environment.umask
    for spec in specs:
        excluded = json.dumps(list(spec.excluded_hosts)) if spec.excluded_hosts else "[]"
        values = (
            spec.uuid,
            user,
            spec.command,
            spec.shell,
            cwd,
            umask,
            env_id,
            spec.slots,
            spec.priority,
            spec.group,
            spec.info,
            spec.stdout,
            spec.stderr,
            spec.logfile,
            excluded,
            spec.estimated_time,
            spec.estimated_memory,
            waiting,
            1,
            "",
            0,
            now,
            now,
        )
        txn.execute(insert, values)
        if txn.rowcount == 1:
            job_id = int(txn.lastrowid)
            ids.append(job_id)
            row = dict(zip(_INSERT_JOB_COLUMNS, values, strict=True))
            row.update(_NEW_JOB_COLUMNS, id=job_id)
            created.append(job_from_row([row[c] for c in _JOB_FIELDS]))
        else:
            ids.append(None)
            resent.append(spec.uuid)
    if resent:
        found = ids_by_uuid(txn, d, resent)
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
            [(job.id, 1, waiting, now, None, "submitted") for job in created],
        )
    return [i for i in ids if i is not None], created


#: The columns of a new job that the INSERT leaves to their defaults.
_NEW_JOB_COLUMNS = dict.fromkeys(("host", "pid", "exit_code", "signal", "started_at", "ended_at"))


#: Job fields whose column name needs quoting (a reserved word in MySQL).
_COLUMN = {"signal": "`signal`"}


def apply_transitions(
    txn: Any, d: Dialect, transitions: Sequence[Transition], now: float
) -> list[bool]:
    """Apply each transition as a compare-and-set; which ones were applied."""
    results: list[bool] = []
    history = d.q(
        "INSERT INTO job_history (job_id, attempt, state, at, host, reason) "
        "VALUES (?, ?, ?, ?, ?, ?)"
    )
    for t in transitions:
        at = now if t.at is None else t.at
        # The same changes the dispatcher applied to the job in memory (Transition.changes).
        changes = t.changes(now)
        sets = [f"{_COLUMN.get(name, name)} = ?" for name in changes]
        params: list[Any] = [
            value.value if isinstance(value, JobState) else value for value in changes.values()
        ]
        params.extend([t.job_id, t.old.value, t.attempt])
        txn.execute(
            d.q(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state = ? AND attempt = ?"),
            tuple(params),
        )
        applied = txn.rowcount == 1
        results.append(applied)
        if applied:
            attempt = t.new_attempt if t.new_attempt is not None else t.attempt
            txn.execute(history, (t.job_id, attempt, t.new.value, at, t.host, t.reason))
    return results


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
        where.append("user_name = ?")
        params.append(user)
    if group is not None:
        where.append("group_name = ?")
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
            "(LOWER(command) LIKE ? ESCAPE '!' OR LOWER(info_text) LIKE ? ESCAPE '!' "
            "OR LOWER(group_name) LIKE ? ESCAPE '!')"
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
        d.q(f"SELECT group_name, state, COUNT(*) FROM jobs{clause} GROUP BY group_name, state"),
        tuple(params),
    )
    result: dict[str, dict[str, int]] = {}
    for group_name, state, n in txn.fetchall():
        result.setdefault(group_name, {})[state] = int(n)
    return result


def set_suspended(txn: Any, d: Dialect, job_id: int, suspended: bool) -> bool:
    txn.execute(d.q("UPDATE jobs SET suspended = ? WHERE id = ?"), (int(suspended), job_id))
    return txn.rowcount == 1


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
