"""Migration 0003 (dependencies and holds) on SQLite and MariaDB: an existing database at
version 2, with jobs, is upgraded in place; the statements of tm/db/controlqueries.py."""

from __future__ import annotations

import re
from typing import Any

import pytest_twisted

from tests.unit.test_store import ENV, spec, store  # noqa: F401 - the store fixture
from tm.core.model import JobState, Transition
from tm.db.store import Store

#: The columns added since version 2 (0003 and every later migration), dropped to make a
#: version-2 database.
LATE = tuple(
    column
    for version, path in Store.migrations()
    if version >= 3
    for column in re.findall(r"ADD COLUMN (\w+)", path.read_text(encoding="utf-8"))
)


def _back_to_version_2(txn: Any, d: Any) -> None:
    for column in LATE:
        txn.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    txn.execute("DELETE FROM schema_version WHERE version >= 3")


@pytest_twisted.ensureDeferred
async def test_a_version_2_database_with_jobs_is_upgraded_in_place(store: Store) -> None:  # noqa: F811
    ids = await store.submit_jobs("alice", ENV, [spec(1), spec(2)], 100.0)
    await store._run(_back_to_version_2)
    assert await store.schema_version() == 2
    assert 3 in await store.upgrade()
    jobs = await store.get_jobs(ids)
    assert [j.spec.command for j in jobs] == ["echo 1", "echo 2"]
    assert all(
        (j.spec.after, j.spec.after_any, j.spec.after_group, j.spec.hold) == ("", "", "", "")
        for j in jobs
    )
    # The new columns are written and read back.
    [new] = await store.submit_jobs(
        "alice", ENV, [spec(3, after="1,2", after_any="2", after_group="g", hold="user:alice")], 1.0
    )
    [job] = await store.get_jobs([new])
    assert (job.spec.after, job.spec.after_any, job.spec.after_group, job.spec.hold) == (
        "1,2",
        "2",
        "g",
        "user:alice",
    )


@pytest_twisted.ensureDeferred
async def test_holds_priorities_and_the_first_bad_job_of_a_group(store: Store) -> None:  # noqa: F811
    ids = await store.submit_jobs(
        "alice", ENV, [spec(n, group="g") for n in range(1, 5)] + [spec(9, group="h")], 100.0
    )
    assert await store.set_control_fields(ids[:2], {"hold": "admin:root", "priority": 7}) == 2
    jobs = await store.get_jobs(ids[:3])
    assert [(j.spec.hold, j.spec.priority) for j in jobs] == [
        ("admin:root", 7),
        ("admin:root", 7),
        ("", 0),
    ]
    assert await store.group_size("alice", "g") == 4
    assert await store.group_size("bob", "g") == 0
    assert await store.first_bad_in_group("alice", "g", 10**9) is None
    for job_id, new in ((ids[2], JobState.KILLED), (ids[3], JobState.CANCELLED)):
        assert await store.apply_transitions(
            [Transition(job_id=job_id, attempt=1, old=JobState.WAITING, new=new)], 200.0
        ) == [True]
    assert await store.first_bad_in_group("alice", "g", 10**9) == (ids[2], "killed")
    assert await store.first_bad_in_group("alice", "g", ids[2]) is None
    assert await store.first_bad_in_group("alice", "h", 10**9) is None
