"""Time limits and resource use in the store (migration 0004), on SQLite and MariaDB: an
existing database is upgraded in place, and an end's use is written and summed per group."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.unit.test_store import ENV, _deferred, empty_store, spec  # noqa: F401 - the fixture
from tm.core.model import JobState, Transition
from tm.db import queries
from tm.db.store import Store

#: A job that ended before migration 0004, in the columns it had then.
_OLD_JOB = (
    "INSERT INTO jobs (uuid, user_name, command, shell, cwd, umask, slots, priority, "
    "group_name, info_text, stdout, stderr, logfile, excluded_hosts, state, attempt, reason, "
    "suspended, submitted_at, state_since, started_at, ended_at, exit_code) VALUES "
    "('00000000-0000-0000-0000-000000000099', 'alice', 'true', '/bin/sh', '/tmp', 18, 1, 0, "
    "'old', '', '', '', '', '[]', 'finished', 1, 'exited normally', 0, 1.0, 3.0, 2.0, 3.0, 0)"
)


def _old_database(txn: Any, d: Any) -> None:
    queries.applied_versions(txn, d)
    for version, path in Store.migrations():
        if version < 3:
            statements = d.render_schema(path.read_text(encoding="utf-8"))
            queries.apply_migration(txn, d, version, statements)
    txn.execute(_OLD_JOB)


@pytest_twisted.ensureDeferred
async def test_an_existing_database_is_upgraded_in_place(empty_store: Store) -> None:  # noqa: F811 - the fixture
    store = empty_store
    await store._run(_old_database)
    applied = await store.upgrade()
    assert 4 in applied and 1 not in applied and 2 not in applied
    [old] = await store.list_jobs([JobState.FINISHED])
    # Kept as it was; its use was not measured, and it had no time limit.
    assert (old.spec.command, old.state, old.spec.group) == ("true", JobState.FINISHED, "old")
    assert old.spec.time_limit is None
    assert (old.cpu_time, old.max_rss_kib, old.run_time) == (None, None, None)
    assert await store.group_usage(None, "old") == {}
    await store.check()


@pytest_twisted.ensureDeferred
async def test_an_end_s_use_is_stored_and_summed_per_group(empty_store: Store) -> None:  # noqa: F811 - the fixture
    store = empty_store
    await store.upgrade()
    ids = await store.submit_jobs(
        "alice",
        ENV,
        [spec(1, group="g", time_limit=90.0), spec(2, group="g", slots=2), spec(3, group="g")],
        now=10.0,
    )
    [limited] = await store.get_jobs([ids[0]])
    assert limited.spec.time_limit == 90.0
    ends = []
    for job_id, new, cpu, rss, run in (
        (ids[0], JobState.TIMEOUT, 1.5, 2048, 2.0),
        (ids[1], JobState.FINISHED, 3.0, 51_200, 2.0),
    ):
        ends += [
            Transition(job_id, 1, JobState.WAITING, JobState.PENDING, host="h1"),
            Transition(job_id, 1, JobState.PENDING, JobState.RUNNING, at=11.0),
            Transition(
                job_id, 1, JobState.RUNNING, new, cpu_time=cpu, max_rss_kib=rss, run_time=run
            ),
        ]
    assert await store.apply_transitions(ends, 13.0) == [True] * 6
    first, second, third = await store.get_jobs(ids)
    assert first.state is JobState.TIMEOUT
    assert (first.cpu_time, first.max_rss_kib, first.run_time) == (1.5, 2048, 2.0)
    assert (second.cpu_time, second.max_rss_kib, second.run_time) == (3.0, 51_200, 2.0)
    assert third.cpu_time is None
    [listed] = await store.list_jobs([JobState.TIMEOUT])
    assert listed.id == ids[0]
    used = await store.group_usage("alice", "g")
    assert used == {
        "g": {
            "jobs": 2,
            "cpu_time": 4.5,
            "run_time": 4.0,
            "slot_time": 2.0 + 2 * 2.0,
            "max_rss_kib": 51_200,
        }
    }
    assert await store.group_usage("bob", None) == {}


def test_the_fixture_helpers_are_the_store_suite_s() -> None:
    # This module builds on test_store's helpers: keep them importable.
    assert callable(_deferred)
