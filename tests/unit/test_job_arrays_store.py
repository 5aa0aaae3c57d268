"""Migration 0006 (job arrays) on SQLite and MariaDB: a database made before it is upgraded in
place, its jobs kept (no array's), and the jobs of an array stored and read back."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.unit.test_store import ENV, empty_store  # noqa: F401 - the fixture
from tm.core.model import Job, JobSpec, JobState
from tm.db import queries
from tm.db.store import Store

ARRAY_FIELDS = ("array_id", "array_index", "array_cap")
ARRAYS = 6


def _insert_old_job(txn: Any, d: Any, job: Job) -> int:
    """Insert ``job`` as a TaskManager before migration 0006 did: without the array columns."""
    kept = [
        (column, value)
        for f, column, value in zip(
            queries._INSERTED, queries._INSERT_JOB_COLUMNS, queries._job_row(job), strict=True
        )
        if f.name not in ARRAY_FIELDS
    ]
    columns = ", ".join(c for c, _ in kept)
    marks = ", ".join("?" for _ in kept)
    txn.execute(d.q(f"INSERT INTO jobs ({columns}) VALUES ({marks})"), tuple(v for _, v in kept))
    txn.execute(d.q("SELECT id FROM jobs WHERE uuid = ?"), (job.uuid,))
    return int(txn.fetchone()[0])


async def _upgrade_to_before_arrays(store: Store) -> None:
    await store._run(queries.applied_versions)  # makes the version table
    for version, path in Store.migrations():
        if version < ARRAYS:
            statements = store._dialect.render_schema(path.read_text(encoding="utf-8"))
            await store._run(queries.apply_migration, version, statements)


@pytest_twisted.ensureDeferred
async def test_a_database_from_before_arrays_is_upgraded_in_place(empty_store: Store) -> None:  # noqa: F811 - the fixture
    store = empty_store
    await _upgrade_to_before_arrays(store)
    spec = JobSpec(uuid="00000000-0000-0000-0000-000000000001", command="echo old")
    old = Job(
        id=0,
        uuid=spec.uuid,
        user="alice",
        spec=spec,
        state=JobState.WAITING,
        attempt=1,
        submitted_at=10.0,
        state_since=10.0,
        cwd="/",
    )
    old_id = await store._run(_insert_old_job, old)

    assert ARRAYS in await store.upgrade()
    assert await store.schema_version() >= ARRAYS
    assert await store.upgrade() == []
    await store.check()
    [kept] = await store.load_active_jobs()
    assert kept.id == old_id and kept.spec.command == "echo old"
    assert (kept.spec.array_id, kept.spec.array_index, kept.spec.array_cap) == ("", None, None)

    specs = [
        JobSpec(
            uuid=f"00000000-0000-0000-0000-00000000010{i}",
            command=f"echo {i}",
            group="sweep",
            array_id="a" * 36,
            array_index=i * 10,
            array_cap=2 if i else None,
        )
        for i in range(2)
    ]
    ids = await store.submit_jobs("alice", ENV, specs, 20.0)
    got = {j.id: j for j in await store.get_jobs(ids)}
    for job_id, spec in zip(ids, specs, strict=True):
        job = got[job_id]
        assert (job.spec.array_id, job.spec.array_index, job.spec.array_cap) == (
            spec.array_id,
            spec.array_index,
            spec.array_cap,
        )
