"""The failed-login limiter (tm/loginlimit.py), on a task.Clock: per connection, per peer
address, per claimed user; and what one connection's failures do to it."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from tm.loginlimit import LoginAttempts, LoginLimiter
from tm.protocol.commands import PROTOCOL_VERSION, AuthenticationFailed


def limiter(clock: Clock, **kw: Any) -> LoginLimiter:
    defaults: dict[str, Any] = dict(per_connection=3, per_peer=4, per_user=6, window=60.0)
    defaults.update(kw)
    return LoginLimiter(clock, **defaults)


def test_an_address_is_refused_after_its_failures_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    lim = limiter(clock)
    for _ in range(3):
        lim.failed("10.0.0.9", "alice")
        clock.advance(1)
    assert lim.refusal("10.0.0.9", "alice") is None  # three of four
    lim.failed("10.0.0.9", "bob")
    refused = lim.refusal("10.0.0.9", "carol")
    assert refused is not None and "10.0.0.9" in refused and "try again in 57 s" in refused
    assert lim.refusal("10.0.0.10", "carol") is None  # another address is not concerned
    clock.advance(56.5)
    assert lim.refusal("10.0.0.9", "carol") is not None
    clock.advance(0.6)  # the first failure is 60 s old: three in the window
    assert lim.refusal("10.0.0.9", "carol") is None
    assert lim.refusals == 2


def test_a_user_under_attack_refuses_the_addresses_that_failed_for_it_not_the_others() -> None:
    clock = Clock()
    lim = limiter(clock)
    # Six addresses, one failure each, all claiming alice: below every per-address limit.
    attackers = [f"10.0.1.{i}" for i in range(6)]
    for peer in attackers:
        lim.failed(peer, "alice")
    for peer in attackers:
        refused = lim.refusal(peer, "alice")
        assert refused is not None and "as alice" in refused
    # They may still try as someone else (below their own limit), and alice's own host,
    # which never failed, is not locked out by someone else's failures.
    assert lim.refusal(attackers[0], "bob") is None
    assert lim.refusal("10.0.2.1", "alice") is None
    # A seventh address gets one try for alice.
    lim.failed("10.0.1.99", "alice")
    assert lim.refusal("10.0.1.99", "alice") is not None
    clock.advance(61)
    assert all(lim.refusal(p, "alice") is None for p in [*attackers, "10.0.1.99"])


def test_memory_stays_bounded_by_max_keys() -> None:
    clock = Clock()
    lim = limiter(clock, max_keys=100)
    for i in range(10_000):
        lim.failed(f"peer{i}", f"user{i}")
    assert len(lim._peers) == 100 and len(lim._users) == 100
    assert lim.failures == 10_000
    assert lim.refusal("peer9999", "user9999") is None  # one failure each: not refused


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def loseConnection(self) -> None:  # noqa: N802 - Twisted's API
        self.closed = True


class FakeProto:
    peer_host = "192.0.2.7"
    is_authenticated = False

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.lines: list[dict] = []

    def problem(self, kind: str, text: str, **fields: Any) -> None:
        self.lines.append({"kind": kind, **fields})


def test_a_connection_is_closed_after_its_third_failure_once_the_answer_is_sent() -> None:
    clock = Clock()
    lim = limiter(clock)
    proto = FakeProto()
    attempts = LoginAttempts(lim, clock, proto)
    for n in range(2):
        attempts.failed("alice", "the challenge file does not hold the nonce", "tms")
        clock.advance(0)
        assert not proto.transport.closed, n
    attempts.failed("alice", "the challenge file does not hold the nonce", "tms")
    assert not proto.transport.closed  # not before the refusal is written
    clock.advance(0)
    assert proto.transport.closed
    assert proto.lines[0] == {
        "kind": "login failed",
        "user": "alice",
        "role": "tms",
        "reason": "the challenge file does not hold the nonce",
    }
    assert lim.failures == 3


def test_a_login_the_limiter_refuses_is_answered_logged_and_closed() -> None:
    clock = Clock()
    lim = limiter(clock, per_peer=1)
    lim.failed("192.0.2.7", "bob")
    proto = FakeProto()
    attempts = LoginAttempts(lim, clock, proto)
    with pytest.raises(AuthenticationFailed, match="too many failed logins from 192.0.2.7"):
        attempts.check("alice")
    clock.advance(0)
    assert proto.transport.closed
    assert proto.lines[0]["user"] == "alice" and "too many" in proto.lines[0]["reason"]


def test_a_name_that_is_merely_not_allowed_counts_for_the_connection_only() -> None:
    clock = Clock()
    lim = limiter(clock, per_peer=1)
    attempts = LoginAttempts(lim, clock, FakeProto())
    attempts.failed("mallory", "not in etc/users", shared=False)
    assert lim.refusal("192.0.2.7", "alice") is None and attempts.failures == 1


def test_the_tms_limits_wrong_keys_the_same_way() -> None:
    from types import SimpleNamespace

    from tm.userserver.service import ClientSession

    clock = Clock()
    server = SimpleNamespace(key="right", logins=limiter(clock, per_peer=4), reactor=clock)
    proto = FakeProto()
    session = ClientSession(server)  # type: ignore[arg-type]
    session.login = LoginAttempts(server.logins, clock, proto)
    session.hello(protocol_version=PROTOCOL_VERSION, role="client", user="bob", host="h")
    for _ in range(3):
        with pytest.raises(AuthenticationFailed, match="wrong TMS key"):
            session.prove_key(key="guess")
    clock.advance(0)
    assert proto.transport.closed and not session.proven
    assert proto.lines[0]["user"] == "bob" and proto.lines[0]["reason"] == "wrong TMS key"
    # A fourth try from that address, on a new connection, is the last before it is refused.
    again = ClientSession(server)  # type: ignore[arg-type]
    again.login = LoginAttempts(server.logins, clock, FakeProto())
    with pytest.raises(AuthenticationFailed):
        again.prove_key(key="guess")
    with pytest.raises(AuthenticationFailed, match="too many failed logins from 192.0.2.7"):
        again.prove_key(key="right")
