"""DispatcherLink on a Clock: how soon it dials again, and how it treats a refusal."""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

import tm.dispatcher_client as dc
from tm.link import DispatcherInfo
from tm.protocol import commands

INFO = DispatcherInfo(
    host="dispatcher.example",
    port=1,
    certificate=b"",
    challenge_dir="/x",
    path="/x/dispatcher.json",
)


class FakeEndpoint:
    """Refuses connections while ``up`` is false; else connects in memory."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.up = False
        self.dials: list[float] = []
        self.protocols: list[Any] = []

    def connect(self, factory: Any) -> defer.Deferred:
        self.dials.append(self.clock.seconds())
        if not self.up:
            return defer.fail(ConnectionRefusedError())
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        self.protocols.append(proto)
        return defer.succeed(proto)

    def drop(self) -> None:
        self.protocols[-1].connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> list[Exception | None]:
    """What each login answers: None for success, else the refusal (the last one repeats)."""
    answers: list[Exception | None] = [None]

    async def fake_prove(
        reactor: Any,
        proto: Any,
        info: Any,
        role: str,
        host: Any,
        timeout: float,
        token: str | None = None,
    ) -> dict[str, Any]:
        answer = answers[0] if len(answers) == 1 else answers.pop(0)
        if answer is not None:
            raise answer
        return {"user": "alice", "roles": []}

    monkeypatch.setattr(dc, "prove", fake_prove)
    return answers


def make_link(clock: Clock, endpoint: FakeEndpoint, **kw: Any) -> dc.DispatcherLink:
    return dc.DispatcherLink(
        clock,
        INFO,
        commands.ROLE_TMS,
        "h",
        lambda: None,
        endpoint=endpoint,
        random_fraction=random.Random(7).random,
        **kw,
    )


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_while_the_dispatcher_is_away_the_link_dials_about_every_second_with_jitter(
    logins: list,
) -> None:
    clock = Clock()
    endpoint = FakeEndpoint(clock)
    link = make_link(clock, endpoint)
    link.start()
    while clock.seconds() < 600:  # ten minutes of outage, from one timer to the next
        next_call = min(call.getTime() for call in clock.calls)
        clock.advance(next_call - clock.seconds())
    link.stop()
    delays = gaps(endpoint.dials)
    assert len(delays) > 400
    assert max(delays) <= 1.25 + 1e-9  # capped near a second, jitter included
    steady = delays[10:]
    assert min(steady) >= 0.75 - 1e-9
    assert len({round(d, 3) for d in steady}) > 50  # jittered, not all in step
    assert not link.connected and "refused" in link.last_error.lower()


def test_the_link_is_back_within_about_a_second_of_the_dispatcher_s_return(logins: list) -> None:
    clock = Clock()
    endpoint = FakeEndpoint(clock)
    connected: list[Any] = []
    link = make_link(clock, endpoint, on_connected=connected.append)
    link.start()
    assert link.connected is False
    endpoint.up = True
    clock.advance(1.25)
    assert link.connected and connected == [link.proto]
    # The dispatcher goes away for a minute, then comes back.
    endpoint.up = False
    endpoint.drop()
    assert not link.connected and link.last_error == "connection lost"
    for _ in range(1200):
        clock.advance(0.05)
    endpoint.up = True
    back = clock.seconds()
    while not link.connected:
        clock.advance(0.01)
    assert clock.seconds() - back <= 1.25 + 1e-9
    assert len(connected) == 2 and connected[-1] is link.proto
    link.stop()


def test_ready_waits_for_the_link_and_gives_up_at_its_deadline(logins: list) -> None:
    clock = Clock()
    endpoint = FakeEndpoint(clock)
    link = make_link(clock, endpoint)
    link.start()
    waiting = defer.ensureDeferred(link.ready(5.0))
    clock.advance(2.0)
    assert not waiting.called
    endpoint.up = True
    clock.advance(1.25)
    assert waiting.called and link.connected
    endpoint.up = False
    endpoint.drop()
    late = defer.ensureDeferred(link.ready(3.0))
    clock.advance(2.9)
    assert not late.called
    clock.advance(0.2)
    assert late.called and not link.connected
    # A call made while the link is down says so in one line, after its wait.
    failed = defer.ensureDeferred(link.call(commands.Ping))
    clock.advance(10.1)
    error = failed.result if isinstance(failed.result, Failure) else None
    assert error is not None and error.check(commands.DispatcherUnavailable)
    assert "no link to the dispatcher at dispatcher.example:1" in str(error.value)
    link.stop()
    assert not clock.getDelayedCalls()


def test_a_refused_login_is_retried_slowly_and_reported_once(logins: list) -> None:
    clock = Clock()
    endpoint = FakeEndpoint(clock)
    endpoint.up = True
    refusals: list[Exception] = []
    logins[0] = commands.UserNotAllowed("alice may not use this cluster")
    link = make_link(clock, endpoint, on_fatal=refusals.append)
    with capturedLogs() as events:
        link.start()
        for _ in range(600 * 20):  # ten minutes
            clock.advance(0.05)
    delays = gaps(endpoint.dials)
    assert delays[-1] >= 30.0 and max(delays) <= 31.0  # capped back-off, not a hot loop
    assert len(endpoint.dials) < 40
    assert len(refusals) == 1
    errors = [e for e in events if e.get("log_level") == LogLevel.error]
    assert len(errors) == 1 and "may not use" in errors[0]["reason"]
    assert not [e for e in events if "Scheduling retry" in str(e.get("log_format"))]
    # Callers hear the refusal at once, without waiting.
    failed = defer.ensureDeferred(link.call(commands.Ping))
    assert failed.called and isinstance(failed.result, Failure)
    assert failed.result.check(commands.UserNotAllowed)
    failed.addErrback(lambda _: None)
    # Once the user is allowed, the link comes back at the next slow try, and is fast again.
    logins[0] = None
    clock.advance(31.0)
    assert link.connected and link.fatal is None
    link.stop()


def test_while_the_dispatcher_is_away_its_unreachability_is_logged_once(logins: list) -> None:
    clock = Clock()
    endpoint = FakeEndpoint(clock)
    link = make_link(clock, endpoint)
    with capturedLogs() as events:
        link.start()
        for _ in range(200):
            clock.advance(0.1)
        link.stop()
    notes = [e for e in events if "not reachable" in str(e.get("log_format"))]
    assert len(endpoint.dials) > 15 and len(notes) == 1


def test_a_link_whose_connection_is_being_lost_no_longer_counts_as_up(logins: list) -> None:
    clock = Clock()
    endpoint = FakeEndpoint(clock)
    endpoint.up = True
    link = make_link(clock, endpoint)
    link.start()
    clock.advance(1.25)
    assert link.connected and link.proto is not None
    seen: list[bool] = []
    pending = link.proto.callRemote(commands.Ping)
    pending.addErrback(lambda _: seen.append(link.connected))
    endpoint.up = False
    endpoint.drop()  # fails the pending call first, then announces the loss
    assert seen == [False]
    link.stop()
