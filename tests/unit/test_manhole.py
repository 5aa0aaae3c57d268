"""The manhole without sockets: its namespace, its helpers, the peer-uid gate, path checks."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs

from tm.core.model import Host, Job, JobSpec, JobState, User
from tm.dispatcher.manhole import (
    MAX_SOCKET_PATH,
    ManholeFactory,
    ManholePathError,
    check_socket_path,
    make_namespace,
)
from tm.dispatcher.service import Dispatcher, Settings


def job(job_id: int, state: JobState, host: str | None = None, slots: int = 1) -> Job:
    return Job(
        id=job_id,
        uuid=f"u{job_id}",
        user="alice",
        spec=JobSpec(uuid=f"u{job_id}", command="true", slots=slots),
        state=state,
        attempt=1,
        submitted_at=0.0,
        host=host,
    )


@pytest.fixture
def dispatcher(tmp_path: Path) -> Dispatcher:
    settings = Settings(
        var_dir=tmp_path,
        config_dir=tmp_path,
        database_url="sqlite://",
        hosts=[
            Host(name="h1", number_slots=4, max_slots=4),
            Host(name="h2", number_slots=2, max_slots=2, active=False),
        ],
        users=[User(name="alice")],
    )
    d = Dispatcher(MemoryReactorClock(), settings, SimpleNamespace(apply_transitions=None))
    for j in (
        job(3, JobState.WAITING),
        job(1, JobState.WAITING),
        job(2, JobState.RUNNING, host="h1", slots=3),
        job(4, JobState.PENDING, host="h1"),
    ):
        d.jobs[j.id] = j
    d.tms_sessions["alice"] = cast(Any, object())
    d.executors[("alice", "h1")] = object()
    d.starting[("bob", "h2")] = 0.0
    d.loads["h1"] = 0.5
    return d


def test_each_connection_gets_a_fresh_namespace_around_the_same_dispatcher(
    dispatcher: Dispatcher,
) -> None:
    first, second = make_namespace(dispatcher), make_namespace(dispatcher)
    assert first is not second
    first["mine"] = 1
    assert "mine" not in second
    assert first["dispatcher"] is second["dispatcher"] is dispatcher
    assert {"jobs", "hosts", "sessions", "help"} <= set(first)


def test_jobs_by_state_oldest_first_and_copies(dispatcher: Dispatcher) -> None:
    jobs = make_namespace(dispatcher)["jobs"]
    assert [j.id for j in jobs()] == [1, 2, 3, 4]
    assert [j.id for j in jobs("waiting")] == [1, 3]
    assert [j.id for j in jobs(JobState.RUNNING)] == [2]
    assert jobs("lost") == []
    copy = jobs("waiting")[0]
    copy.state = JobState.KILLED
    assert dispatcher.jobs[1].state is JobState.WAITING  # a helper never changes the live job


def test_jobs_names_a_bad_state_and_says_ended_jobs_are_not_in_memory(
    dispatcher: Dispatcher,
) -> None:
    jobs = make_namespace(dispatcher)["jobs"]
    with pytest.raises(ValueError, match="unknown state 'wating'.*waiting, pending, running, lost"):
        jobs("wating")
    with pytest.raises(ValueError, match="finished jobs are not kept in memory"):
        jobs("finished")


def test_hosts_and_sessions_reflect_the_dispatcher(dispatcher: Dispatcher) -> None:
    ns = make_namespace(dispatcher)
    rows = {r.name: r for r in ns["hosts"]()}
    assert (
        rows["h1"].occupied == 4 and rows["h1"].load == 0.5 and rows["h1"].executors == ("alice",)
    )
    assert rows["h2"].occupied == 0 and rows["h2"].active is False and rows["h2"].executors == ()
    s = ns["sessions"]()
    assert s.tms == ("alice",) and s.executors == ("alice@h1",) and s.starting == ("bob@h2",)
    dispatcher.tms_sessions.clear()
    assert ns["sessions"]().tms == ()


def gate(dispatcher: Dispatcher, uid: int | None) -> ManholeFactory:
    return ManholeFactory(
        dispatcher, peer_credentials=lambda t: None if uid is None else (4242, uid, uid)
    )


def connect(
    dispatcher: Dispatcher, uid: int | None, factory: ManholeFactory | None = None
) -> tuple[Protocol, StringTransport]:
    proto = (factory or gate(dispatcher, uid)).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_the_own_uid_gets_the_banner_and_a_working_prompt(dispatcher: Dispatcher) -> None:
    proto, transport = connect(dispatcher, os.geteuid())
    greeting = transport.value().decode("utf-8", "replace")
    assert "jobs(state=None)" in greeting and "sessions()" in greeting and ">>> " in greeting
    transport.clear()
    proto.dataReceived(b"len(jobs('waiting')) * 10\n")
    out = transport.value()
    assert b"20\r\n>>> " in out
    assert b"\r\r" not in out  # one CR per line, whatever the layers below did


def test_a_variable_stays_in_its_connection(dispatcher: Dispatcher) -> None:
    factory = gate(dispatcher, os.geteuid())
    first, t1 = connect(dispatcher, os.geteuid(), factory)
    second, t2 = connect(dispatcher, os.geteuid(), factory)
    first.dataReceived(b"marker = 41\n")
    t1.clear()
    first.dataReceived(b"marker + 1\n")
    assert b"42\r\n" in t1.value()
    second.dataReceived(b"marker\n")
    assert b"NameError" in t2.value()


@pytest.mark.parametrize("uid", [os.geteuid() + 1, None])
def test_another_uid_is_told_why_dropped_and_logged(
    dispatcher: Dispatcher, uid: int | None
) -> None:
    with capturedLogs() as events:
        proto, transport = connect(dispatcher, uid)
    said = transport.value().decode()
    assert said.startswith("manhole: refused:") and f"({os.geteuid()})" in said
    assert ">>>" not in said and "jobs(" not in said
    assert transport.disconnecting
    proto.dataReceived(b"dispatcher.jobs.clear()\n")  # ignored: nothing runs for a stranger
    assert len(dispatcher.jobs) == 4 and transport.value().decode() == said
    refusals = [e for e in events if "refused a connection" in e.get("log_format", "")]
    assert len(refusals) == 1 and refusals[0]["pid"] == (None if uid is None else 4242)


def test_path_checks(tmp_path: Path) -> None:
    assert check_socket_path(tmp_path / "m.sock") == tmp_path / "m.sock"
    with pytest.raises(ManholePathError, match="directory .*nowhere does not exist"):
        check_socket_path(tmp_path / "nowhere" / "m.sock")
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(ManholePathError, match="exists and is not a socket"):
        check_socket_path(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep me"
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ManholePathError, match="exists and is not a socket"):
        check_socket_path(tmp_path / "link")
    with pytest.raises(ManholePathError, match="longer than"):
        check_socket_path(tmp_path / ("x" * MAX_SOCKET_PATH))
