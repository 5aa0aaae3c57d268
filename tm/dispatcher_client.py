"""A link to the dispatcher that reconnects by itself (used by the TMS and the TMMS).

Twisted's :class:`ClientService` keeps the connection: it dials the dispatcher's
endpoint, runs Hello, the file challenge and Authenticate as its
``prepareConnection`` step, and dials again after a failure or a lost link on a
retry policy:

- while the dispatcher is away, every ``initial_delay``·2ⁿ s capped at ``max_delay``
  (0.75 s), plus a random jitter of up to ``jitter`` (0.5 s): a link is back within
  about a second of the dispatcher's return, and the links of a large cluster do not
  all dial at the same instant;
- after a refusal that retrying alone cannot fix (user not allowed, protocol mismatch,
  authentication failed, unknown host), every 1·2ⁿ s capped at ``refused_max_delay``
  (30 s), so a refused link never dials in a hot loop. The reason is logged once per
  change, and ``on_fatal`` is told once per change.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.python.failure import Failure

from tm import trace
from tm.link import DispatcherInfo, dispatcher_endpoint, prove
from tm.protocol import commands
from tm.protocol.base import BoundedAMP

#: Refusals that retrying soon cannot fix: retried slowly, and callers hear them at once.
FATAL = (
    commands.UserNotAllowed,
    commands.AuthenticationFailed,
    commands.ProtocolMismatch,
    commands.UnknownHost,
)

#: How long a handshake step (TCP+TLS, Hello, the challenge, Authenticate) may take.
HANDSHAKE_TIMEOUT = 10.0


def _without_retry_notes(event: dict) -> None:
    """ClientService notes every retry at info level: once a second while the dispatcher is
    away. The link logs each change of reason itself, so drop those notes."""
    if str(event.get("log_format", "")).startswith("Scheduling retry"):
        return
    globalLogPublisher(event)


class _QuietClientService(ClientService):
    _log = Logger(observer=cast(ILogObserver, _without_retry_notes))


class _ReportingEndpoint:
    """An endpoint that tells the link why a connection attempt failed."""

    def __init__(self, endpoint: Any, failed: Callable[[Failure], None]) -> None:
        self.endpoint = endpoint
        self.failed = failed

    def connect(self, factory: Any) -> defer.Deferred:
        d = self.endpoint.connect(factory)

        def report(failure: Failure) -> Failure:
            self.failed(failure)
            return failure

        d.addErrback(report)
        return d


class _LinkFactory(Factory):
    """Builds the link's protocols and remembers the one being set up."""

    noisy = False  # no "Starting factory" line for each try while the dispatcher is away

    def __init__(self, link: DispatcherLink) -> None:
        self.link = link

    def buildProtocol(self, addr: Any) -> BoundedAMP:  # noqa: N802 - Twisted's API
        proto = BoundedAMP(locator=self.link.locator_factory(), clock=self.link.reactor)
        proto.factory = self
        self.link._setting_up = proto
        return proto


def _describe(failure: Failure) -> str:
    e = failure.value
    if isinstance(e, defer.CancelledError | defer.TimeoutError):
        return "no answer in time"
    return str(e) or e.__class__.__name__


class DispatcherLink:
    """One role's authenticated link to the dispatcher, kept up by a :class:`ClientService`.

    ``start``/``stop`` run it; ``connected`` and ``proto`` tell its state; ``call`` sends a
    command (waiting a short while for the link when it is down); ``ready`` waits for it;
    ``on_connected(proto)`` runs on each new link, ``on_fatal(error)`` on each new refusal.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        info: DispatcherInfo,
        role: str,
        host: str,
        locator_factory: Callable[[], Any],
        on_connected: Callable[[BoundedAMP], None] | None = None,
        on_fatal: Callable[[Exception], None] | None = None,
        max_delay: float = 0.75,
        initial_delay: float = 0.1,
        jitter: float = 0.5,
        refused_max_delay: float = 30.0,
        random_fraction: Callable[[], float] = random.random,
        endpoint: Any = None,
    ) -> None:
        self.reactor = reactor
        self.info = info
        self.role = role
        self.host = host
        self.locator_factory = locator_factory
        self.on_connected = on_connected
        self.on_fatal = on_fatal
        self.refused_max_delay = refused_max_delay
        self.proto: BoundedAMP | None = None
        self.user = ""
        #: An executor's start token, then the ticket its first login was answered with.
        self.credential: str | None = None
        self.last_error = ""
        self.running = False
        #: The refusal of the last login, until a login succeeds.
        self.fatal: Exception | None = None
        self._setting_up: BoundedAMP | None = None
        self._waiting: list[defer.Deferred] = []
        self._logged_reason = ""
        self._fast = backoffPolicy(
            initialDelay=initial_delay,
            maxDelay=max_delay,
            factor=2.0,
            jitter=lambda: jitter * random_fraction(),
        )
        self._slow = backoffPolicy(
            initialDelay=1.0,
            maxDelay=refused_max_delay,
            factor=2.0,
            jitter=lambda: random_fraction(),
        )
        if endpoint is None:
            endpoint = dispatcher_endpoint(reactor, info, HANDSHAKE_TIMEOUT)
        self.service = _QuietClientService(
            cast(IStreamClientEndpoint, _ReportingEndpoint(endpoint, self._connect_failed)),
            cast(IProtocolFactory, _LinkFactory(self)),
            retryPolicy=self.retry_delay,
            clock=reactor,
            prepareConnection=self._prepare,
        )

    # --- running ------------------------------------------------------------------------

    def start(self) -> None:
        self.running = True
        self.service.startService()

    def stop(self) -> defer.Deferred:
        self.running = False
        return self.service.stopService()

    def retry_delay(self, failed_attempts: int) -> float:
        """Seconds before the next dial, after ``failed_attempts`` failures in a row."""
        policy = self._slow if self.fatal is not None else self._fast
        return policy(failed_attempts)

    # --- each connection -------------------------------------------------------------

    def _prepare(self, _proxy: Any) -> defer.Deferred:
        proto = self._setting_up
        self._setting_up = None
        assert proto is not None  # built by _LinkFactory for this very connection
        return defer.ensureDeferred(self._log_in(proto))

    async def _log_in(self, proto: BoundedAMP) -> None:
        try:
            proven = await prove(
                self.reactor,
                proto,
                self.info,
                self.role,
                self.host,
                HANDSHAKE_TIMEOUT,
                self.credential,
            )
        except FATAL as e:
            self._refused(e)
            raise
        except Exception as e:
            self._unreachable(_describe(Failure(e)))
            raise
        self.user = proven["user"]
        if proven.get("ticket"):
            self.credential = proven["ticket"]  # an executor's next logins show it
        self.fatal = None
        self.last_error = ""
        self._logged_reason = ""
        self.proto = proto
        proto.when_lost().addCallback(self._lost, proto)
        self.log.info(
            "linked to the dispatcher at {address} as {user}",
            address=self.info.address,
            user=self.user,
        )
        if self.on_connected is not None:
            try:
                self.on_connected(proto)
            except Exception:  # the link is up all the same; its user's bug is logged once
                self.log.failure("the link's on_connected callback failed")

    def _lost(self, _: Any, proto: BoundedAMP) -> None:
        if self.proto is proto:
            self.proto = None
            self.last_error = "connection lost"
            if self.running:
                self.log.info(
                    "link to the dispatcher at {address} lost; reconnecting",
                    address=self.info.address,
                )

    def _connect_failed(self, failure: Failure) -> None:
        if self.running and not failure.check(defer.CancelledError):
            self._unreachable(_describe(failure))

    def _unreachable(self, reason: str) -> None:
        self.last_error = reason
        if reason != self._logged_reason:
            self._logged_reason = reason
            self.log.info(
                "dispatcher at {address} not reachable ({reason}); retrying about every second",
                address=self.info.address,
                reason=reason,
            )

    def _refused(self, e: Exception) -> None:
        reason = str(e) or e.__class__.__name__
        self.last_error = reason
        self.fatal = e
        if reason != self._logged_reason:
            self._logged_reason = reason
            self.log.error(
                "the dispatcher at {address} refused us: {reason}; trying again "
                "at most every {cap:.0f} s",
                address=self.info.address,
                reason=reason,
                cap=self.refused_max_delay,
            )
            if self.on_fatal is not None:
                self.on_fatal(e)
        # Whoever waits for the link hears the refusal now rather than at their deadline.
        for waiting in list(self._waiting):
            waiting.cancel()

    # --- callers ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._live() is not None

    def _live(self) -> BoundedAMP | None:
        """The link's protocol, unless its connection is lost or being lost: the calls it
        fails on losing it run before its loss is announced, and must not use it again."""
        proto = self.proto
        if proto is not None and getattr(proto, "gone", False):
            return None
        return proto

    async def ready(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until the link is up or a login was refused."""
        if self._live() is not None or self.fatal is not None or not self.running:
            return
        connected = self.service.whenConnected()
        connected.addTimeout(timeout, self.reactor)
        self._waiting.append(connected)
        try:
            await connected
        except (defer.TimeoutError, defer.CancelledError):
            pass  # out of time, refused (see self.fatal), or stopped
        finally:
            self._waiting.remove(connected)

    async def call(self, command: type, **kw: Any) -> Any:
        if self._live() is None:
            await self.ready(10.0)
        proto = self._live()
        if proto is None:
            if self.fatal is not None:
                raise type(self.fatal)(str(self.fatal))
            raise commands.DispatcherUnavailable(
                f"no link to the dispatcher at {self.info.address}"
                + (f" ({self.last_error})" if self.last_error else "")
            )
        if trace.ENABLED:
            return await self._traced(proto, command, kw)
        return await proto.call(command, **kw)

    async def _traced(self, proto: BoundedAMP, command: Any, kw: dict[str, Any]) -> Any:
        """A call with the trace's lines when it is sent and answered (see :mod:`tm.trace`)."""
        process = {commands.ROLE_TMS: "tms", commands.ROLE_TMMS: "executor"}.get(self.role, "?")
        name, jobs = trace.named_jobs(command.commandName.decode(), kw)
        for job in jobs:
            trace.point(process, f"{name}-sent", job)
        answer = await proto.call(command, **kw)
        for job in trace.answered_jobs(jobs, answer):
            trace.point(process, f"{name}-answered", job)
        return answer
