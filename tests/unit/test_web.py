"""The dashboard's pure parts on a task.Clock: link tokens and sessions, the feed (charts and
coalesced updates), who sees what, the metrics, and the ``dashboard`` command and responder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.unit.dispatcher_fakes import add_job, client_session, make_dispatcher
from tm.core.model import Host, JobState
from tm.protocol.webcommands import DashboardOff
from tm.textcommands import parse
from tm.web import views
from tm.web.feed import DashboardFeed
from tm.web.metrics import DispatcherMetrics
from tm.web.service import WebApp
from tm.web.tokens import TOKEN_LIFETIME, SessionBook, TokenBook, Viewer, well_formed

ALICE = Viewer("alice", False)
ROOT = Viewer("root", True)


# --- tokens and sessions ------------------------------------------------------------------


def test_a_token_works_once_and_names_its_user() -> None:
    clock = Clock()
    book = TokenBook(clock)
    token = book.issue(ALICE)
    assert well_formed(token)
    assert book.redeem(token) == ALICE
    assert book.redeem(token) is None  # used


def test_a_token_expires() -> None:
    clock = Clock()
    book = TokenBook(clock)
    token = book.issue(ALICE)
    clock.advance(TOKEN_LIFETIME + 1)
    assert book.redeem(token) is None


@pytest.mark.parametrize(
    "garbled", ["", "x", "<script>alert(1)</script>", "a" * 42 + "!", "a" * 44, "é" * 43]
)
def test_a_garbled_token_is_refused(garbled: str) -> None:
    book = TokenBook(Clock())
    book.issue(ALICE)
    assert book.redeem(garbled) is None


def test_sessions_expire_and_the_books_are_bounded() -> None:
    clock = Clock()
    sessions = SessionBook(clock, lifetime=100)
    cookie = sessions.open(ROOT)
    assert sessions.viewer(cookie) == ROOT
    clock.advance(101)
    assert sessions.viewer(cookie) is None
    sessions.limit = 3
    cookies = [sessions.open(ALICE) for _ in range(5)]
    assert len(sessions) == 3
    assert sessions.viewer(cookies[0]) is None and sessions.viewer(cookies[-1]) == ALICE


# --- the feed ---------------------------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Any:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1", number_slots=2, max_slots=2)]
    )
    clock.advance(1_000_000)
    return d, clock, store


def run_and_end(d: Any, job: Any, state: JobState = JobState.FINISHED) -> None:
    d._transition(job, JobState.PENDING, "placed", host="h1")
    d._transition(job, JobState.RUNNING, "started")
    d._transition(job, state, "ended")


def test_the_feed_counts_ends_and_waiting_times_per_minute(world: Any) -> None:
    d, clock, store = world
    feed = DashboardFeed(clock)
    d.observers.append(feed)
    a = add_job(d, store, 1)
    b = add_job(d, store, 2)
    clock.advance(30)  # both waited 30 s
    run_and_end(d, a)
    clock.advance(10)  # this one 40 s
    run_and_end(d, b, JobState.FAILED)
    minutes = feed.charts(clock.seconds())["minutes"]
    assert len(minutes) == 60
    assert sum(m["ends"] for m in minutes) == 2 and sum(m["failed"] for m in minutes) == 1
    started = [m for m in minutes if m["started"]]
    assert sum(m["started"] for m in started) == 2
    assert max(m["wait_max"] for m in started) == pytest.approx(40)
    assert [j.id for j in feed.recent] == [1, 2]
    clock.advance(3600)  # an hour later the charts are empty again
    assert sum(m["ends"] for m in feed.charts(clock.seconds())["minutes"]) == 0


def test_the_feed_coalesces_updates(world: Any) -> None:
    d, clock, store = world
    feed = DashboardFeed(clock, min_interval=0.25)
    d.observers.append(feed)
    told: list[float] = []
    feed.listeners.append(lambda: told.append(clock.seconds()))
    jobs = [add_job(d, store, i) for i in range(1, 51)]
    for job in jobs:
        d._transition(job, JobState.KILLED, "killed")
    clock.advance(0)
    assert len(told) == 1  # fifty changes, one update
    d._transition(add_job(d, store, 99), JobState.KILLED, "killed")
    clock.advance(0.1)
    assert len(told) == 1  # not sooner than min_interval after the last
    clock.advance(0.2)
    assert len(told) == 2
    feed.stop()


def test_a_failing_listener_does_not_break_transitions(world: Any) -> None:
    d, clock, store = world
    feed = DashboardFeed(clock)
    d.observers.append(feed)
    told: list[bool] = []

    def broken() -> None:
        raise ZeroDivisionError

    feed.listeners.extend([broken, lambda: told.append(True)])
    job = add_job(d, store, 1)
    d._transition(job, JobState.KILLED, "killed")
    clock.advance(1)
    assert job.state is JobState.KILLED and told == [True]


# --- who sees what ----------------------------------------------------------------------------


def test_a_user_sees_their_own_jobs_an_admin_all(world: Any) -> None:
    d, clock, store = world
    feed = DashboardFeed(clock)
    d.observers.append(feed)
    add_job(d, store, 1, user="alice", command="echo <b>mine</b>")
    add_job(d, store, 2, user="root")
    run_and_end(d, add_job(d, store, 3, user="root"))
    mine = views.jobs_view(d, feed, ALICE)
    assert [r["id"] for r in mine] == [1]
    assert mine[0]["command"] == "echo <b>mine</b>"  # data; the page shows it as text
    assert [r["id"] for r in views.jobs_view(d, feed, ROOT)] == [3, 2, 1]
    queue = {r["user"]: r for r in views.queue_view(d, ALICE)}
    assert queue["alice"]["waiting"] == 1 and queue[views.OTHERS]["waiting"] == 1
    assert "root" not in queue
    assert {r["user"] for r in views.queue_view(d, ROOT)} == {"alice", "root"}


def test_a_job_detail_is_refused_to_another_user(world: Any) -> None:
    d, clock, store = world
    add_job(d, store, 1, user="root", stdout="out.txt")
    assert _result(views.job_view(d, ALICE, 1)) is None
    assert _result(views.job_view(d, ALICE, 99)) is None
    detail = _result(views.job_view(d, ROOT, 1))
    assert detail["output"]["stdout"] == "/tmp/out.txt"
    assert detail["output"]["stderr"] == "~/.taskmanager/logs/1.err"


def test_group_progress() -> None:
    rows = views.groups_view(
        {"": {"waiting": 3}, "sweep": {"finished": 3, "running": 1}, "done": {"failed": 2}}
    )
    assert [r["group"] for r in rows] == ["sweep", "done"]
    assert rows[0]["done"] == 3 and rows[0]["total"] == 4


def _result(coroutine: Any) -> Any:
    results: list[Any] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "the view did not finish at once"
    return results[0]


# --- metrics ---------------------------------------------------------------------------------


def samples(metrics: DispatcherMetrics) -> dict[tuple[str, tuple], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_jobs_slots_and_ends(world: Any) -> None:
    d, clock, store = world
    metrics = DispatcherMetrics(d, clock)
    d.observers.append(metrics)
    jobs = [add_job(d, store, i) for i in (1, 2, 3)]
    metrics.submitted(jobs)
    run_and_end(d, jobs[0])
    d._transition(jobs[1], JobState.PENDING, "placed", host="h1")
    s = samples(metrics)
    assert s[("tm_jobs_submitted_total", (("user", "alice"),))] == 3
    assert s[("tm_jobs_ended_total", (("state", "finished"), ("user", "alice")))] == 1
    assert s[("tm_jobs", (("state", "waiting"), ("user", "alice")))] == 1
    assert s[("tm_jobs", (("state", "pending"), ("user", "alice")))] == 1
    assert s[("tm_jobs", (("state", "running"), ("user", "root")))] == 0
    assert s[("tm_host_slots", (("host", "h1"),))] == 2
    assert s[("tm_host_slots_used", (("host", "h1"),))] == 1
    assert s[("tm_executors", (("host", "h1"),))] == 0


def test_metrics_time_passes_writes_and_the_reactor_lag(world: Any) -> None:
    d, clock, store = world
    metrics = DispatcherMetrics(d, clock)
    d.observers.append(metrics)
    metrics.time_writes(d.writer)
    metrics.start()
    d._transition(add_job(d, store, 1), JobState.KILLED, "killed")  # one write
    d.request_pass()
    clock.advance(0)
    clock.advance(3)  # the timer due after 1 s runs 2 s late
    s = samples(metrics)
    assert s[("tm_scheduling_pass_seconds_count", ())] >= 1
    assert s[("tm_database_write_seconds_count", ())] >= 1
    assert s[("tm_reactor_lag_seconds_count", ())] == 1
    assert s[("tm_reactor_lag_last_seconds", ())] == pytest.approx(2)
    n = len(clock.getDelayedCalls())
    metrics.stop()
    assert len(clock.getDelayedCalls()) == n - 1  # its timer is gone


# --- the command and the responder ----------------------------------------------------------


def test_the_dashboard_command_prints_the_link_alone() -> None:
    asked: list[str] = []

    async def call(name: str, **kw: Any) -> dict[str, Any]:
        asked.append(name)
        return {"url": "http://h:1/login?token=T", "expires_in": 600.0}

    out = _result(parse("dashboard", "tms").run(call))
    assert out == "http://h:1/login?token=T" and asked == ["DashboardLink"]


def test_the_responder_issues_a_link_for_the_proven_user(world: Any) -> None:
    d, clock, store = world
    with pytest.raises(DashboardOff, match="--http"):
        client_session(d, "alice").dashboard_link()
    app = WebApp(d, clock)
    app.attach()
    app.base_url = "http://td:8080"
    answer = client_session(d, "alice").dashboard_link()
    assert answer["url"].startswith("http://td:8080/login?token=")
    assert answer["expires_in"] == TOKEN_LIFETIME
    token = answer["url"].rsplit("=", 1)[1]
    assert app.tokens.redeem(token) == ALICE
    admin = client_session(d, "root").dashboard_link()["url"].rsplit("=", 1)[1]
    assert app.tokens.redeem(admin) == ROOT


def test_the_newest_jobs_are_listed_first(world: Any) -> None:
    d, clock, store = world
    for i in range(1, 11):
        add_job(d, store, i, user="alice" if i % 2 else "root")
    d._transition(d.jobs[10], JobState.PENDING, "placed", host="h1")
    waiting = [JobState.WAITING]
    assert [j.id for j in d.jobs.newest(waiting, None, 3)] == [9, 8, 7]
    assert [j.id for j in d.jobs.newest(waiting, "alice", 3)] == [9, 7, 5]
    assert [j.id for j in d.jobs.newest([JobState.PENDING, JobState.WAITING], None, 2)] == [10, 9]
    assert d.jobs.newest([JobState.RUNNING], None, 3) == []
