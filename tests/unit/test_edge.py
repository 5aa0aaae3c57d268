"""The dispatcher's edge, in memory: handshake deadline, box bounds, stalled boxes, slow
readers, caps per address, and bounded log files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.protocols import amp

from tm.dispatcher import edge
from tm.logs import ProblemLog
from tm.protocol import commands
from tm.protocol.base import BoundedAMP


class Locator(amp.CommandLocator):
    def __init__(self) -> None:
        self.pings = 0

    @commands.Ping.responder
    def ping(self) -> dict:
        self.pings += 1
        return {"server": "s", "time": 1.0}


def guarded(clock: Clock, limits: edge.EdgeLimits | None = None):
    """A server protocol with the dispatcher's edge bounds on a StringTransport."""
    events: list[dict] = []
    locator = Locator()
    proto = BoundedAMP(
        locator=locator,
        clock=clock,
        problems=ProblemLog(Logger(observer=cast(Any, events.append)), clock),
    )
    (limits or edge.EdgeLimits()).apply(proto)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4000))
    proto.makeConnection(transport)
    return proto, transport, locator, events


def ping_box(tag: bytes = b"1", **extra: bytes) -> bytes:
    box = {b"_command": b"Ping", b"_ask": tag}
    box.update({k.encode(): v for k, v in extra.items()})
    return amp.AmpBox(box).serialize()


def test_an_unauthenticated_connection_is_closed_at_the_handshake_deadline() -> None:
    clock = Clock()
    proto, transport, locator, events = guarded(clock, edge.EdgeLimits(handshake_timeout=3))
    proto.dataReceived(ping_box())  # commands before authenticating do not extend it
    clock.advance(2.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
    assert [e["kind"] for e in events] == ["handshake timeout"]
    proto.connectionLost(connectionDone)
    assert not clock.getDelayedCalls()


def test_an_authenticated_connection_has_no_deadline() -> None:
    clock = Clock()
    proto, transport, locator, events = guarded(clock, edge.EdgeLimits(handshake_timeout=3))
    proto.authenticated()
    clock.advance(100)
    assert not transport.disconnecting
    assert not clock.getDelayedCalls()


def test_boxes_are_bounded_to_64_kib_before_authentication_and_more_after() -> None:
    clock = Clock()
    big = ping_box(b"1", a=b"x" * 40_000, b=b"y" * 40_000)
    proto, transport, locator, events = guarded(clock)
    proto.dataReceived(big)
    assert transport.disconnecting and locator.pings == 0
    assert [e["kind"] for e in events] == ["box too big"]

    proto, transport, locator, events = guarded(clock)
    proto.authenticated()
    proto.dataReceived(big)
    assert not transport.disconnecting and locator.pings == 1


def test_a_box_left_half_sent_is_closed_after_the_deadline() -> None:
    clock = Clock()
    proto, transport, locator, events = guarded(clock, edge.EdgeLimits(partial_box_timeout=5))
    proto.authenticated()
    whole = ping_box()
    proto.dataReceived(whole)  # complete boxes do not start the clock
    clock.advance(10)
    assert not transport.disconnecting
    proto.dataReceived(whole[:7])
    clock.advance(4)
    assert not transport.disconnecting
    clock.advance(1.5)
    assert transport.disconnecting
    assert [e["kind"] for e in events] == ["stalled box"]


def test_a_box_completed_in_time_keeps_the_connection() -> None:
    clock = Clock()
    proto, transport, locator, events = guarded(clock, edge.EdgeLimits(partial_box_timeout=5))
    proto.authenticated()
    whole = ping_box()
    proto.dataReceived(whole[:7])
    clock.advance(4)
    proto.dataReceived(whole[7:])
    clock.advance(4)
    proto.dataReceived(whole[:7])  # a new box gets its own five seconds
    clock.advance(4)
    assert not transport.disconnecting and locator.pings == 1


def test_a_slow_reader_stops_being_read_then_is_dropped() -> None:
    clock = Clock()
    proto, transport, locator, events = guarded(clock, edge.EdgeLimits(drain_timeout=30))
    proto.authenticated()
    assert transport.producer is proto and transport.streaming
    # The transport's buffer passed its high-water mark.
    proto.pauseProducing()
    assert transport.producerState == "paused"  # no more requests read
    clock.advance(20)
    proto.resumeProducing()  # it drained in time
    assert transport.producerState == "producing"
    clock.advance(20)
    assert not transport.disconnecting
    proto.pauseProducing()
    clock.advance(30)
    assert transport.disconnecting
    assert [e["kind"] for e in events] == ["slow reader"]


def test_the_guard_caps_unauthenticated_and_total_connections_per_address() -> None:
    guard = edge.AddressGuard(
        edge.EdgeLimits(max_unauthenticated_per_address=2, max_connections_per_address=3)
    )
    assert guard.admit("a") is None and guard.admit("a") is None
    assert "not authenticated" in (guard.admit("a") or "")
    assert guard.admit("b") is None  # other addresses are not affected
    guard.authenticated("a")
    assert guard.admit("a") is None  # total 3
    guard.authenticated("a")
    assert "3 connections" in (guard.admit("a") or "")
    guard.released("a", was_authenticated=True)
    assert guard.admit("a") is None
    for _ in range(3):
        guard.released("a", was_authenticated=False)
    guard.released("a", was_authenticated=True)
    guard.released("b", was_authenticated=False)
    assert guard.total == {} and guard.unauthenticated == {}


def test_the_listening_factory_refuses_beyond_the_cap_before_any_tls_work() -> None:
    from tm import auth

    clock = Clock()
    key, cert = auth.make_self_signed(auth.DISPATCHER_TLS_NAME)
    limits = edge.EdgeLimits(max_unauthenticated_per_address=1)
    guard = edge.AddressGuard(limits)
    events: list[dict] = []
    factory = edge.GuardedTLSFactory(
        auth.server_tls_options(key, cert),
        Factory.forProtocol(lambda: BoundedAMP(clock=clock)),
        guard,
        ProblemLog(Logger(observer=cast(Any, events.append)), clock),
    )
    addr = IPv4Address("TCP", "10.9.9.9", 1)
    assert factory.buildProtocol(addr) is not None
    assert factory.buildProtocol(addr) is None
    assert [e["kind"] for e in events] == ["connection refused"]


def test_binding_a_port_in_use_says_which_port(tmp_path: Path) -> None:
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        edge.bind(port, "127.0.0.1")
    except edge.CannotListen as e:
        assert str(e) == f"cannot listen on 127.0.0.1:{port}: Address already in use"
    else:
        raise AssertionError("bound a port in use")
    finally:
        taken.close()


# --- twistd's log file -------------------------------------------------------------------


class Parent(dict):
    def __init__(self, **kw: object) -> None:
        super().__init__({"syslog": False, "logger": None, "logfile": None, "nodaemon": False})
        self.update(kw)


def test_the_log_path_follows_twistd_s_rules() -> None:
    from tm.logs import twistd_log_path

    assert twistd_log_path(Parent()) == "twistd.log"
    assert twistd_log_path(Parent(logfile="x.log", nodaemon=True)) == "x.log"
    assert twistd_log_path(Parent(nodaemon=True)) is None  # stdout
    assert twistd_log_path(Parent(logfile="-", nodaemon=True)) is None
    assert twistd_log_path(Parent(syslog=True)) is None
    assert twistd_log_path(Parent(logger="a.b")) is None
    assert twistd_log_path(None) is None


def test_the_application_gets_a_log_that_rotates_and_expires(tmp_path: Path) -> None:
    from twisted.application import service
    from twisted.logger import ILogObserver

    from tm.logs import LOG_KEEP_FILES, BoundedLogApplication, bounded_log_file

    inner = service.Service()
    wrapped = BoundedLogApplication(inner, str(tmp_path / "d.log"))
    application = service.Application("tmdispatcher")
    wrapped.setServiceParent(application)
    assert application.getComponent(ILogObserver, None) is not None
    assert inner.parent is wrapped

    log = bounded_log_file(str(tmp_path / "b.log"), rotate_bytes=1000, keep=3)
    for _ in range(100):
        log.write("x" * 99 + "\n")
    log.close()
    files = sorted(p.name for p in tmp_path.glob("b.log*"))
    assert files == ["b.log", "b.log.1", "b.log.2", "b.log.3"]
    assert LOG_KEEP_FILES >= 1


def test_the_dispatcher_protocol_moves_its_connection_out_of_the_unauthenticated_count() -> None:
    from types import SimpleNamespace

    import pytest

    from tm.dispatcher.session import DispatcherProtocol

    clock = Clock()
    limits = edge.EdgeLimits(handshake_timeout=5)
    guard = edge.AddressGuard(limits)
    dispatcher = SimpleNamespace(reactor=clock)
    assert guard.admit("10.1.2.3") is None  # as the listening factory does
    proto = DispatcherProtocol(cast(Any, dispatcher), limits, guard)
    assert proto.handshake_timeout == 5 and proto.pre_auth_box_bytes == 64 * 1024
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4000))
    proto.makeConnection(transport)
    proto.authenticated()  # the one call Session.authenticate makes
    assert guard.unauthenticated == {} and guard.total == {"10.1.2.3": 1}
    clock.advance(10)
    assert not transport.disconnecting
    proto.connectionLost(connectionDone)
    assert guard.total == {} and guard.unauthenticated == {}
    assert not clock.getDelayedCalls()

    # A connection that closed while its proof was checked does not become authenticated.
    assert guard.admit("10.1.2.3") is None
    late = DispatcherProtocol(cast(Any, dispatcher), limits, guard)
    late.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.1.2.3", 4001)))
    late.connectionLost(connectionDone)
    with pytest.raises(commands.NotAuthenticated):
        late.authenticated()
    assert guard.total == {} and guard.unauthenticated == {}
