"""The dispatcher's listening edge: what a connection may cost before and after it authenticates.

* :class:`EdgeLimits`: the handshake deadline, the box bound before authentication, the
  output and stalled-box deadlines, and the caps per address (the dispatcher's options).
* :class:`AddressGuard`: counts connections per address and refuses those beyond a cap
  (a lower one for connections that have not authenticated yet).
* :func:`bind`: binds the port synchronously, before twistd daemonizes, so that a port in
  use stops the start with one line and a non-zero exit.
* :class:`EdgeListener`: serves TLS on that socket once the dispatcher is ready.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from twisted.application import service
from twisted.protocols.tls import TLSMemoryBIOFactory

from tm.logs import ProblemLog, problem_log
from tm.protocol.base import DRAIN_TIMEOUT, PARTIAL_BOX_TIMEOUT, PRE_AUTH_BOX_BYTES

HANDSHAKE_TIMEOUT = 10.0
MAX_UNAUTHENTICATED_PER_ADDRESS = 32
MAX_CONNECTIONS_PER_ADDRESS = 512
LISTEN_BACKLOG = 128


@dataclass(frozen=True)
class EdgeLimits:
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    pre_auth_box_bytes: int = PRE_AUTH_BOX_BYTES
    partial_box_timeout: float = PARTIAL_BOX_TIMEOUT
    drain_timeout: float = DRAIN_TIMEOUT
    max_unauthenticated_per_address: int = MAX_UNAUTHENTICATED_PER_ADDRESS
    max_connections_per_address: int = MAX_CONNECTIONS_PER_ADDRESS

    def apply(self, proto: Any) -> None:
        """Give a protocol instance these bounds."""
        proto.handshake_timeout = self.handshake_timeout
        proto.pre_auth_box_bytes = self.pre_auth_box_bytes
        proto.partial_box_timeout = self.partial_box_timeout
        proto.drain_timeout = self.drain_timeout


class AddressGuard:
    """Connections per peer address: all of them, and those not authenticated yet."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        self.total: dict[str, int] = {}
        self.unauthenticated: dict[str, int] = {}

    def admit(self, host: str) -> str | None:
        """Count a new connection from ``host``; or say why it is refused (not counted)."""
        if self.unauthenticated.get(host, 0) >= self.limits.max_unauthenticated_per_address:
            return (
                f"{self.limits.max_unauthenticated_per_address} connections from it "
                "are not authenticated yet"
            )
        if self.total.get(host, 0) >= self.limits.max_connections_per_address:
            return f"it has {self.limits.max_connections_per_address} connections"
        self.total[host] = self.total.get(host, 0) + 1
        self.unauthenticated[host] = self.unauthenticated.get(host, 0) + 1
        return None

    def authenticated(self, host: str) -> None:
        _decrement(self.unauthenticated, host)

    def released(self, host: str, was_authenticated: bool) -> None:
        _decrement(self.total, host)
        if not was_authenticated:
            _decrement(self.unauthenticated, host)


def _decrement(counts: dict[str, int], host: str) -> None:
    n = counts.get(host, 0) - 1
    if n > 0:
        counts[host] = n
    else:
        counts.pop(host, None)


class GuardedTLSFactory(TLSMemoryBIOFactory):
    """TLS around the dispatcher's factory, refusing connections beyond the guard's caps
    before any TLS work is done for them."""

    def __init__(
        self, tls_options: Any, factory: Any, guard: AddressGuard, problems: ProblemLog
    ) -> None:
        super().__init__(tls_options, False, factory)
        self.guard = guard
        self.problems = problems

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802 - Twisted's API
        host = str(getattr(addr, "host", addr))
        refused = self.guard.admit(host)
        if refused is not None:
            self.problems.emit(
                "connection refused",
                host,
                "refusing a connection from {peer}: {reason}",
                reason=refused,
            )
            return None  # the port closes the socket
        return super().buildProtocol(addr)


class CannotListen(Exception):
    """The port cannot be bound; the text says which and why."""


def bind(port: int, interface: str = "") -> socket.socket:
    """A listening TCP socket on ``interface``:``port``, bound now (blocking, at start-up)."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((interface, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        where = f"{interface}:{port}" if interface else f"port {port}"
        raise CannotListen(f"cannot listen on {where}: {e.strerror or e}") from None
    sock.setblocking(False)
    return sock


class EdgeListener(service.Service):
    """Serves ``factory`` on the socket :func:`bind` made, from startService on."""

    def __init__(self, reactor: Any, sock: socket.socket, factory: Any) -> None:
        self.reactor = reactor
        self.sock = sock
        self.factory = factory
        self.port: Any = None

    def startService(self) -> None:  # noqa: N802 - Twisted's API
        super().startService()
        self.port = self.reactor.adoptStreamPort(self.sock.fileno(), self.sock.family, self.factory)
        self.sock.close()  # the reactor holds its own copy

    def stopService(self) -> Any:  # noqa: N802 - Twisted's API
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def guarded_factory(
    reactor: Any, tls_options: Any, factory: Any, guard: AddressGuard
) -> GuardedTLSFactory:
    """TLS around ``factory``, behind ``guard``, logging refusals in the reactor's problem log."""
    return GuardedTLSFactory(tls_options, factory, guard, problem_log(reactor))
