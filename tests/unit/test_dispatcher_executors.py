"""The dispatcher's bookkeeping of executor starts and leases, on a fake clock.

The store and the sessions are stand-ins: these tests isolate the timers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.defer import ensureDeferred, succeed
from twisted.internet.task import Clock

from tm.core.model import Host, User
from tm.dispatcher.service import EXECUTOR_START_TIMEOUT, Dispatcher, Settings


class FakeStore:
    def apply_transitions(self, transitions: list) -> Any:
        return succeed([True] * len(transitions))


class FakeProto:
    def __init__(self) -> None:
        self.calls: list = []

    def call(self, cmd: Any, /, **kw: Any) -> Any:
        self.calls.append((cmd.commandName.decode(), kw))
        return succeed({})


class FakeSession:
    def __init__(self) -> None:
        self.proto = FakeProto()
        self.last_heard = 0.0
        self.peer_pid: int | None = None
        self.authenticated_at: float | None = None

    def fence(self) -> None:
        pass

    def drop(self) -> None:
        pass


@pytest.fixture
def dispatcher(tmp_path: Path) -> tuple[Dispatcher, Clock]:
    clock = Clock()
    settings = Settings(
        var_dir=tmp_path,
        config_dir=tmp_path,
        database_url="sqlite://",
        hosts=[Host(name="h1", number_slots=2, max_slots=2)],
        users=[User(name="alice", roles=frozenset({"user"}))],
        executor_lease=30.0,
    )
    return Dispatcher(clock, settings, cast(Any, FakeStore())), clock


def start(d: Dispatcher, clock: Clock, tms: FakeSession) -> None:
    d.starting[("alice", "h1")] = clock.seconds()
    ensureDeferred(d._start_executor(tms, "alice", d.hosts["h1"]))


def test_the_timer_of_an_earlier_start_does_not_fail_a_later_one(dispatcher: Any) -> None:
    d, clock = dispatcher
    tms = FakeSession()
    start(d, clock, tms)
    token = d.executor_table.tokens[("alice", "h1")]  # the start's one-time token goes along
    assert tms.proto.calls == [
        ("StartExecutor", {"host": "h1", "ssh_target": "", "command": "", "token": token})
    ]
    clock.advance(1)
    first = FakeSession()
    d.executor_connected("alice", "h1", first)
    clock.advance(9)
    d.executor_disconnected("alice", "h1", first)  # e.g. the idle exit
    clock.advance(40)
    start(d, clock, tms)  # t = 50
    clock.advance(EXECUTOR_START_TIMEOUT - 50 + 1)  # t = 61: the first start's timer fires
    assert ("alice", "h1") in d.starting and ("alice", "h1") not in d.backoff
    clock.advance(50)  # t = 111: the second start's own timer fires
    assert ("alice", "h1") not in d.starting
    assert ("alice", "h1") in d.backoff


def test_a_start_that_connects_in_time_is_not_failed(dispatcher: Any) -> None:
    d, clock = dispatcher
    start(d, clock, FakeSession())
    clock.advance(EXECUTOR_START_TIMEOUT - 1)
    d.executor_connected("alice", "h1", FakeSession())
    clock.advance(2)
    assert ("alice", "h1") not in d.backoff and ("alice", "h1") in d.executors


def test_an_executor_back_within_the_lease_keeps_its_jobs_absent_past_it_loses_them(
    dispatcher: Any,
) -> None:
    d, clock = dispatcher
    session = FakeSession()
    d.executor_connected("alice", "h1", session)
    d.executor_disconnected("alice", "h1", session)
    assert ("alice", "h1") in d.absent
    clock.advance(29)
    d.executor_connected("alice", "h1", FakeSession())
    assert ("alice", "h1") not in d.absent
    clock.advance(5)  # the old lease timer fires: it must not touch the reconnected executor
    assert ("alice", "h1") in d.executors


def test_a_start_token_is_good_once_and_only_for_its_start(dispatcher: Any) -> None:
    d, clock = dispatcher
    table = d.executor_table
    token = table.start("alice", "h1")
    assert not table.take_token("alice", "h2", token)  # another host
    assert not table.take_token("bob", "h1", token)  # another user
    assert not table.take_token("alice", "h1", "forged")
    assert table.take_token("alice", "h1", token)
    assert not table.take_token("alice", "h1", token)  # spent
    again = table.start("alice", "h1")
    table.start_failed("alice", "h1", 1.0, 2.0)  # a failed start forgets its token
    assert not table.take_token("alice", "h1", again)
