"""The job store, one suite run over SQLite and MariaDB."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tm.core import jobfields
from tm.core.model import JobEnvironment, JobSpec, JobState, Transition, User
from tm.db.errors import StoreRefused, StoreUnavailable
from tm.db.store import Store, parse_url

MYSQL_ENV = "TM_TEST_MYSQL_URL"
ENV = JobEnvironment(cwd="/home/alice", umask=0o027, env={"PATH": "/bin", "LANG": "C"})


def _mysql_base() -> str:
    url = os.environ.get(MYSQL_ENV)
    if not url:
        pytest.skip(f"{MYSQL_ENV} is not set: no MariaDB to test against")
    return url.rstrip("/")


def _mysql_admin(base: str):
    import pymysql

    parsed = parse_url(base + "/mysql")
    return pymysql.connect(
        host=parsed.host,
        port=parsed.port,
        user=parsed.user,
        password=parsed.password or "",
        autocommit=True,
        connect_timeout=5,
    )


@contextlib.contextmanager
def store_on(kind: str, tmp_path: Path, upgraded: bool) -> Iterator[Store]:
    """A store on a fresh database of ``kind`` ("sqlite" or "mysql"), its migrations applied
    if ``upgraded``; the MariaDB database is dropped afterwards."""
    from twisted.internet import reactor

    if kind == "sqlite":
        s = Store.from_url(f"sqlite:///{tmp_path / 'tm.sqlite'}", reactor)
        try:
            if upgraded:
                pytest_twisted.blockon(_deferred(s.upgrade()))
            yield s
        finally:
            s.close()
        return
    base = _mysql_base()
    name = "tm_test_" + secrets.token_hex(6)
    admin = _mysql_admin(base)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        s = Store.from_url(f"{base}/{name}", reactor)
        try:
            if upgraded:
                pytest_twisted.blockon(_deferred(s.upgrade()))
            yield s
        finally:
            s.close()
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


@pytest.fixture(params=["sqlite", "mysql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with store_on(request.param, tmp_path, upgraded=True) as s:
        yield s


@pytest.fixture(params=["sqlite", "mysql"])
def empty_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store on a database with no table yet: no migration applied."""
    with store_on(request.param, tmp_path, upgraded=False) as s:
        yield s


def _deferred(coro):
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(coro)


def spec(n: int, **kw: object) -> JobSpec:
    return JobSpec(uuid=f"00000000-0000-0000-0000-{n:012d}", command=f"echo {n}", **kw)  # type: ignore[arg-type]


@pytest_twisted.ensureDeferred
async def test_upgrade_is_idempotent(store: Store) -> None:
    newest = Store.migrations()[-1][0]  # the newest migration in tm/db/schema
    assert await store.schema_version() == newest
    assert await store.upgrade() == []
    assert await store.schema_version() == newest
    await store.check()


@pytest_twisted.ensureDeferred
async def test_the_jobs_table_has_the_declared_columns(store: Store) -> None:
    """The live table, as the migrations made it, is tm/core/jobfields.py's declaration."""

    def columns(txn: Any, d: Any) -> list[str]:
        txn.execute("SELECT * FROM jobs WHERE 1 = 0")
        return [str(column[0]) for column in txn.description]

    made = await store._run(columns)
    assert made == [f.sql_name.strip("`") for f in jobfields.FIELDS]


@pytest_twisted.ensureDeferred
async def test_a_sealed_environment_is_stored_as_sealed_and_once(store: Store) -> None:
    sealed = dataclasses.replace(ENV, env={}, sealed="1.0123456789abcdef.c2VhbGVk")
    first = await store.submit_jobs("alice", sealed, [spec(1, signature="1.k.s")], now=100.0)
    again = await store.submit_jobs("alice", sealed, [spec(2, signed_at=99.0)], now=100.0)
    jobs = await store.get_jobs(first + again)
    env_id = jobs[0].env_id
    assert env_id is not None and jobs[1].env_id == env_id
    assert await store.get_environment(env_id) == "1.0123456789abcdef.c2VhbGVk"
    assert jobs[0].spec.signature == "1.k.s" and jobs[1].spec.signed_at == 99.0


@pytest_twisted.ensureDeferred
async def test_submit_returns_increasing_ids_and_full_jobs(store: Store) -> None:
    specs = [spec(i, group="g", excluded_hosts=("h1", "h2"), estimated_time=1.5) for i in range(3)]
    ids = await store.submit_jobs("alice", ENV, specs, now=100.0)
    assert ids == sorted(ids) and len(set(ids)) == 3
    job = await store.get_job(ids[0])
    assert job is not None
    assert job.user == "alice" and job.state is JobState.WAITING and job.attempt == 1
    assert job.spec == specs[0]
    assert job.cwd == "/home/alice" and job.umask == 0o027
    assert job.submitted_at == 100.0 and job.state_since == 100.0
    assert job.env_id is not None
    # Not through a TMS (no sealed environment): kept as JSON, and never run (tm/jobsign.py).
    assert await store.get_environment(job.env_id) == '{"LANG":"C","PATH":"/bin"}'
    assert await store.get_job(ids[-1] + 1000) is None
    active = await store.load_active_jobs()
    assert [j.id for j in active] == ids


@pytest_twisted.ensureDeferred
async def test_retried_submission_returns_same_ids(store: Store) -> None:
    specs = [spec(i) for i in range(4)]
    first = await store.submit_jobs("alice", ENV, specs[:2], now=1.0)
    second = await store.submit_jobs("alice", ENV, specs, now=2.0)
    assert second[:2] == first
    assert len(set(second)) == 4
    assert len(await store.list_jobs([])) == 4
    # one environment row shared, one history row per job
    jobs = await store.list_jobs([])
    assert len({j.env_id for j in jobs}) == 1
    assert len(await store.get_history(first[0])) == 1
    with pytest.raises(StoreRefused):
        await store.submit_jobs("bob", ENV, [specs[0]], now=3.0)


@pytest_twisted.ensureDeferred
async def test_transition_is_compare_and_set(store: Store) -> None:
    (job_id,) = await store.submit_jobs("alice", ENV, [spec(1)], now=10.0)
    to_pending = Transition(job_id, 1, JobState.WAITING, JobState.PENDING, "scheduled", host="h1")
    assert await store.apply_transitions([to_pending], now=11.0) == [True]
    assert await store.apply_transitions([to_pending], now=12.0) == [False]
    stale = Transition(job_id, 2, JobState.PENDING, JobState.RUNNING, host="h1", pid=42)
    run = Transition(job_id, 1, JobState.PENDING, JobState.RUNNING, "started", pid=42)
    assert await store.apply_transitions([stale, run], now=13.0) == [False, True]
    job = await store.get_job(job_id)
    assert job is not None
    assert job.state is JobState.RUNNING and job.host == "h1" and job.pid == 42
    assert job.started_at == 13.0 and job.state_since == 13.0 and job.ended_at is None

    lost = Transition(job_id, 1, JobState.RUNNING, JobState.LOST, "host down")
    requeue = Transition(
        job_id, 1, JobState.LOST, JobState.WAITING, "requeued", new_attempt=2, clear_host=True
    )
    assert await store.apply_transitions([lost, requeue], now=14.0) == [True, True]
    job = await store.get_job(job_id)
    assert job is not None
    assert job.attempt == 2 and job.host is None and job.pid is None
    fin = [
        Transition(job_id, 2, JobState.WAITING, JobState.PENDING, host="h2"),
        Transition(job_id, 2, JobState.PENDING, JobState.FAILED, "exit 3", exit_code=3, signal=9),
    ]
    assert await store.apply_transitions(fin, now=15.0) == [True, True]
    job = await store.get_job(job_id)
    assert job is not None
    assert job.state is JobState.FAILED and job.exit_code == 3 and job.signal == 9
    assert job.ended_at == 15.0 and job.reason == "exit 3"
    assert await store.load_active_jobs() == []

    history = await store.get_history(job_id)
    assert [(h.state, h.attempt) for h in history] == [
        (JobState.WAITING, 1),
        (JobState.PENDING, 1),
        (JobState.RUNNING, 1),
        (JobState.LOST, 1),
        (JobState.WAITING, 2),
        (JobState.PENDING, 2),
        (JobState.FAILED, 2),
    ]
    assert [h.at for h in history] == [10.0, 11.0, 13.0, 14.0, 14.0, 15.0, 15.0]
    assert history[1].host == "h1" and history[1].reason == "scheduled"
    assert [h.state for h in await store.get_history(job_id, limit=2)] == [
        JobState.PENDING,
        JobState.FAILED,
    ]


@pytest_twisted.ensureDeferred
async def test_a_transition_at_its_own_time_sets_the_end_and_the_history_to_it(
    store: Store,
) -> None:
    """An end reported late (after a dispatcher outage) is recorded at the executor's time."""
    (job_id,) = await store.submit_jobs("alice", ENV, [spec(1)], now=10.0)
    steps = [
        Transition(job_id, 1, JobState.WAITING, JobState.PENDING, host="h1"),
        Transition(job_id, 1, JobState.PENDING, JobState.RUNNING, pid=7, at=12.0),
        Transition(
            job_id, 1, JobState.RUNNING, JobState.FINISHED, "exit code 0", exit_code=0, at=600.0
        ),
    ]
    assert await store.apply_transitions(steps, now=1100.0) == [True, True, True]
    job = await store.get_job(job_id)
    assert job is not None
    assert job.started_at == 12.0 and job.ended_at == 600.0 and job.state_since == 600.0
    assert [h.at for h in await store.get_history(job_id)] == [10.0, 1100.0, 12.0, 600.0]


def test_sqlite_errors_are_classified_unavailable_or_not() -> None:
    import sqlite3

    from tm.db.store import _is_retryable

    for text in (
        "database is locked",
        "disk I/O error",
        "database or disk is full",
        "unable to open database file",
    ):
        assert _is_retryable(sqlite3.OperationalError(text)), text
    for error in (
        sqlite3.OperationalError("no such table: jobz"),
        sqlite3.IntegrityError("UNIQUE constraint failed: jobs.uuid"),
        sqlite3.ProgrammingError("Incorrect number of bindings supplied"),
    ):
        assert not _is_retryable(error), error


@pytest_twisted.ensureDeferred
async def test_a_locked_sqlite_database_counts_as_unavailable(tmp_path: Path) -> None:
    import sqlite3

    from twisted.internet import reactor

    path = tmp_path / "locked.sqlite"
    s = Store.from_url(f"sqlite:///{path}", reactor)
    try:
        await s.upgrade()
        (job_id,) = await s.submit_jobs("alice", ENV, [spec(1)], now=10.0)
        holder = sqlite3.connect(path, timeout=0)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            # The pool's connection waits for the lock (sqlite3's 5 s), then says "locked".
            with pytest.raises(StoreUnavailable) as e:
                await s.apply_transitions(
                    [Transition(job_id, 1, JobState.WAITING, JobState.PENDING, host="h1")], 11.0
                )
            assert "database is locked" in str(e.value)
        finally:
            holder.rollback()
            holder.close()
        assert await s.apply_transitions(
            [Transition(job_id, 1, JobState.WAITING, JobState.PENDING, host="h1")], 12.0
        ) == [True]
    finally:
        s.close()


@pytest_twisted.ensureDeferred
async def test_list_jobs_paging_and_text_search(store: Store) -> None:
    specs = [spec(i, group="grp" if i % 2 else "other") for i in range(7)]
    specs.append(JobSpec(uuid="u-percent", command="echo 100% DONE", info="Percent"))
    specs.append(JobSpec(uuid="u-under", command="echo a_b", info=""))
    ids = await store.submit_jobs("alice", ENV, specs, now=1.0)
    await store.submit_jobs("bob", ENV, [spec(100)], now=1.0)

    seen: list[int] = []
    after = 0
    while True:
        page = await store.list_jobs([JobState.WAITING], user="alice", after_id=after, limit=3)
        if not page:
            break
        assert len(page) <= 3
        seen.extend(j.id for j in page)
        after = page[-1].id
    assert seen == ids

    assert [j.uuid for j in await store.list_jobs([], text="100%")] == ["u-percent"]
    assert [j.uuid for j in await store.list_jobs([], text="% d")] == ["u-percent"]
    assert [j.uuid for j in await store.list_jobs([], text="done")] == ["u-percent"]
    assert [j.uuid for j in await store.list_jobs([], text="a_b")] == ["u-under"]
    assert await store.list_jobs([], text="%%") == []
    assert len(await store.list_jobs([], group="grp")) == 3
    assert len(await store.list_jobs([], text="GRP")) == 3
    assert await store.list_jobs([JobState.RUNNING]) == []


@pytest_twisted.ensureDeferred
async def test_counts(store: Store) -> None:
    ids = await store.submit_jobs("alice", ENV, [spec(i, group="g1") for i in range(3)], now=1.0)
    await store.submit_jobs("bob", ENV, [spec(10, group="g2")], now=1.0)
    t = Transition(ids[0], 1, JobState.WAITING, JobState.KILLED, "killed by user")
    assert await store.apply_transitions([t], now=2.0) == [True]

    counts = await store.count_by_state()
    assert counts[JobState.WAITING] == 3 and counts[JobState.KILLED] == 1
    assert counts[JobState.RUNNING] == 0
    alice = await store.count_by_state(user="alice")
    assert alice[JobState.WAITING] == 2 and alice[JobState.KILLED] == 1

    assert await store.group_counts(None, None) == {
        "g1": {"waiting": 2, "killed": 1},
        "g2": {"waiting": 1},
    }
    assert await store.group_counts("bob", None) == {"g2": {"waiting": 1}}
    assert await store.group_counts(None, "g1") == {"g1": {"waiting": 2, "killed": 1}}

    await store.set_suspended(ids[1], True)
    job = await store.get_job(ids[1])
    assert job is not None and job.suspended
    assert await store.delete_jobs(ids[:2]) == 2
    assert await store.get_job(ids[0]) is None
    assert await store.get_history(ids[0]) == []
    assert (await store.count_by_state())[JobState.WAITING] == 2


@pytest_twisted.ensureDeferred
async def test_settings_hosts_users(store: Store) -> None:
    assert await store.get_setting("paused") is None
    await store.set_setting("paused", "1")
    await store.set_setting("paused", "0")
    assert await store.get_setting("paused") == "0"

    await store.save_host("h1", True, False)
    await store.save_host("h2", False, True)
    await store.save_host("h1", False, False)
    assert await store.load_hosts() == {"h1": (False, False), "h2": (False, True)}

    await store.sync_users([User("alice"), User("bob", frozenset({"admin", "user"}))])
    assert await store.load_users() == {"alice": True, "bob": True}
    assert await store.set_user_enabled("alice", False)
    assert not await store.set_user_enabled("nobody", False)
    await store.sync_users([User("alice", enabled=True), User("carol", enabled=False)])
    assert await store.load_users() == {"alice": False, "bob": True, "carol": False}


@pytest_twisted.ensureDeferred
async def test_unreachable_mysql_raises_database_unavailable() -> None:
    from twisted.internet import reactor

    s = Store.from_url("mysql://root:sekrit@127.0.0.1:1/tm", reactor)
    try:
        assert s.safe_url() == "mysql://root:***@127.0.0.1:1/tm"
        with pytest.raises(StoreUnavailable) as info:
            await s.check()
        message = str(info.value)
        assert "mysql://root:***@127.0.0.1:1/tm" in message
        assert "sekrit" not in message
        assert "\n" not in message
    finally:
        s.close()


@pytest.mark.parametrize(
    "url",
    [
        "postgres://x@y/z",
        "mysql://root@127.0.0.1:3306",
        "mysql://127.0.0.1/tm",
        "mysql://root@127.0.0.1:notaport/tm",
        "sqlite://host/path",
        "sqlite:///",
        "",
    ],
)
def test_malformed_url_raises_value_error(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_url_parsing() -> None:
    assert parse_url("sqlite:///rel/tm.sqlite").path == "rel/tm.sqlite"
    assert parse_url("sqlite:////abs/tm.sqlite").path == "/abs/tm.sqlite"
    assert parse_url("sqlite:///:memory:").path == ":memory:"
    u = parse_url("mysql://me:p%40ss@db.example:3307/tm")
    assert (u.user, u.password, u.host, u.port, u.database) == (
        "me",
        "p@ss",
        "db.example",
        3307,
        "tm",
    )
    assert parse_url("mysql://me@db/tm").port == 3306
    assert parse_url("mysql://me@db/tm").safe() == "mysql://me@db:3306/tm"


class FlakyPool:
    """A pool whose first ``failures`` interactions fail with ``error``."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0

    def runInteraction(self, fn, *args):  # noqa: N802
        from twisted.internet import defer

        self.calls += 1
        if self.calls <= self.failures:
            return defer.fail(self.error)
        return defer.succeed("ok")


def _run_with(pool: FlakyPool) -> tuple[list[object], int]:
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import Clock

    from tm.db import queries

    clock = Clock()
    s = Store(pool, queries.MYSQL, parse_url("mysql://root:pw@db/tm"), clock)  # type: ignore[arg-type]
    results: list[object] = []
    ensureDeferred(s.get_setting("x")).addBoth(results.append)
    for _ in range(10):
        clock.advance(1)
    return results, pool.calls


def test_mysql_retries_lost_connection() -> None:
    import pymysql

    results, calls = _run_with(FlakyPool(pymysql.err.OperationalError(2013, "Lost"), 2))
    assert results == ["ok"] and calls == 3


def test_mysql_gives_up_after_three_tries() -> None:
    import pymysql
    from twisted.python.failure import Failure

    results, calls = _run_with(FlakyPool(pymysql.err.OperationalError(2006, "gone away"), 5))
    assert calls == 3
    assert isinstance(results[0], Failure)
    assert results[0].check(StoreUnavailable)
    assert "mysql://root:***@db:3306/tm" in str(results[0].value)
    assert "pw" not in str(results[0].value).replace("***", "")


def test_other_errors_are_not_retried() -> None:
    import pymysql
    from twisted.python.failure import Failure

    results, calls = _run_with(FlakyPool(pymysql.err.ProgrammingError(1064, "syntax"), 5))
    assert calls == 1
    assert isinstance(results[0], Failure) and results[0].check(pymysql.err.ProgrammingError)


@pytest_twisted.ensureDeferred
async def test_a_batch_of_transitions_is_applied_in_order_each_a_compare_and_set(
    store: Store,
) -> None:
    """Many jobs' changes in one batch (with MariaDB a few statements for the whole batch):
    each applied only from its old state and attempt, a job's second change in the batch
    after its first, each job its own values, the history in order."""
    ids = await store.submit_jobs("alice", ENV, [spec(i) for i in range(6)], now=1.0)
    place = [
        Transition(job_id, 1, JobState.WAITING, JobState.PENDING, "placed", host=f"h{job_id % 2}")
        for job_id in ids
    ]
    assert await store.apply_transitions(place, now=2.0) == [True] * 6
    a, b, c, d, e, f = ids
    batch = [
        Transition(a, 1, JobState.PENDING, JobState.RUNNING, "started", pid=100),
        Transition(b, 1, JobState.PENDING, JobState.RUNNING, "started", pid=101, at=2.5),
        Transition(c, 2, JobState.PENDING, JobState.RUNNING, "stale attempt", pid=102),
        Transition(a, 1, JobState.RUNNING, JobState.FINISHED, "exit code 0", exit_code=0),
        Transition(d, 1, JobState.RUNNING, JobState.FINISHED, "not running yet", exit_code=0),
        Transition(e, 1, JobState.PENDING, JobState.RUNNING, "started", pid=104),
        Transition(e, 1, JobState.RUNNING, JobState.FAILED, "exit code 3", exit_code=3),
        Transition(f, 1, JobState.PENDING, JobState.FAILED, "cannot start", exit_code=None),
        Transition(b, 1, JobState.PENDING, JobState.RUNNING, "twice", pid=999),
    ]
    assert await store.apply_transitions(batch, now=3.0) == [
        True, True, False, True, False, True, True, True, False
    ]  # fmt: skip
    jobs = {j.id: j for j in await store.get_jobs(ids)}
    assert jobs[a].state is JobState.FINISHED and jobs[a].exit_code == 0 and jobs[a].pid == 100
    assert jobs[a].started_at == 3.0 and jobs[a].ended_at == 3.0 and jobs[a].host == f"h{a % 2}"
    assert jobs[b].state is JobState.RUNNING and jobs[b].pid == 101
    assert jobs[b].started_at == 2.5 and jobs[b].reason == "started"
    assert jobs[c].state is JobState.PENDING and jobs[c].pid is None
    assert jobs[d].state is JobState.PENDING
    assert jobs[e].state is JobState.FAILED and jobs[e].exit_code == 3 and jobs[e].pid == 104
    assert jobs[f].state is JobState.FAILED and jobs[f].reason == "cannot start"
    assert [(h.state, h.reason) for h in await store.get_history(a)] == [
        (JobState.WAITING, "submitted"),
        (JobState.PENDING, "placed"),
        (JobState.RUNNING, "started"),
        (JobState.FINISHED, "exit code 0"),
    ]
    assert [h.at for h in await store.get_history(b)] == [1.0, 2.0, 2.5]
    assert [h.state for h in await store.get_history(e)][-2:] == [
        JobState.RUNNING,
        JobState.FAILED,
    ]
