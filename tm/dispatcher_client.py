"""A link to the dispatcher that reconnects with back-off (used by the TMS and the TMMS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from tm.link import DispatcherInfo, connect_dispatcher
from tm.protocol import commands
from tm.protocol.base import BoundedAMP

#: Refusals that retrying cannot fix: stop instead of hammering the dispatcher.
FATAL = (
    commands.UserNotAllowed,
    commands.AuthenticationFailed,
    commands.ProtocolMismatch,
    commands.UnknownHost,
)


def _fire_unless_called(d: Deferred) -> None:
    """A wait's deadline: fire ``d`` with None unless it has fired already."""
    if not d.called:
        d.callback(None)


class DispatcherLink:
    log = Logger()

    def __init__(self, reactor: Any, info: DispatcherInfo, role: str, host: str,
                 locator_factory: Callable[[], Any],
                 on_connected: Callable[[BoundedAMP], None] | None = None,
                 on_fatal: Callable[[Exception], None] | None = None,
                 max_delay: float = 30.0) -> None:
        self.reactor = reactor
        self.info = info
        self.role = role
        self.host = host
        self.locator_factory = locator_factory
        self.on_connected = on_connected
        self.on_fatal = on_fatal
        self.max_delay = max_delay
        self.proto: BoundedAMP | None = None
        self.last_error = ""
        self.running = False
        self.fatal: Exception | None = None
        self._ready: list[Deferred] = []

    def start(self) -> None:
        self.running = True
        ensureDeferred(self._loop())

    def stop(self) -> None:
        self.running = False
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.loseConnection()  # type: ignore[misc]

    async def _loop(self) -> None:
        delay = 0.5
        while self.running:
            try:
                proto, user, roles = await connect_dispatcher(
                    self.reactor, self.info, self.role, self.host, locator=self.locator_factory()
                )
            except FATAL as e:
                self.last_error = str(e)
                self.fatal = e
                self._wake()
                self.log.error("the dispatcher refused us: {e}", e=str(e))
                if self.on_fatal:
                    self.on_fatal(e)
                return
            except Exception as e:
                self.last_error = str(e) or e.__class__.__name__
                self.log.info("dispatcher at {a} not reachable ({e}); retrying in {d:.1f} s",
                              a=self.info.address, e=self.last_error, d=delay)
                await deferLater(self.reactor, delay, lambda: None)
                delay = min(delay * 2, self.max_delay)
                continue
            delay = 0.5
            self.proto = proto
            self.last_error = ""
            self.log.info("linked to the dispatcher at {a} as {user}", a=self.info.address, user=user)
            self._wake()
            if self.on_connected:
                self.on_connected(proto)
            await proto.when_lost()
            self.proto = None
            self.last_error = "connection lost"

    def _wake(self) -> None:
        waiting, self._ready = self._ready, []
        for d in waiting:
            d.callback(None)

    async def ready(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until the link is up or was refused for good."""
        if self.proto is not None or self.fatal is not None or not self.running:
            return
        d: Deferred = Deferred()
        self._ready.append(d)
        call = self.reactor.callLater(timeout, _fire_unless_called, d)
        await d
        if call.active():
            call.cancel()

    @property
    def connected(self) -> bool:
        return self.proto is not None

    async def call(self, command: type, **kw: Any) -> Any:
        if self.proto is None:
            await self.ready(10.0)
        if self.fatal is not None:
            raise type(self.fatal)(str(self.fatal))
        if self.proto is None:
            raise commands.DispatcherUnavailable(
                f"no link to the dispatcher at {self.info.address}"
                + (f" ({self.last_error})" if self.last_error else "")
            )
        return await self.proto.call(command, **kw)
