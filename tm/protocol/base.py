"""An AMP protocol with the bounds AMP itself lacks.

AMP limits a key to 255 bytes and a value to 65 535, but not the number of keys
in a box, the requests in flight on a connection, or how long a caller waits
for an answer.  :class:`BoundedAMP` caps all three.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from tm.protocol.commands import TooBusy

#: Bytes of keys and values in one box (an AmpList value is at most 64 KiB,
#: and a command has only a handful of arguments).
MAX_BOX_BYTES = 512 * 1024
MAX_BOX_KEYS = 64
MAX_IN_FLIGHT = 64
DEFAULT_REPLY_TIMEOUT = 120.0


class BoundedAMP(amp.AMP):
    log = Logger()

    max_box_bytes = MAX_BOX_BYTES
    max_box_keys = MAX_BOX_KEYS
    max_in_flight = MAX_IN_FLIGHT

    def __init__(self, locator: Any = None, clock: IReactorTime | None = None) -> None:
        super().__init__(locator=locator)
        self.clock = clock
        self._box_bytes = 0
        self._box_keys = 0
        self._in_flight = 0
        self._lost: list[Deferred] = []

    def when_lost(self) -> Deferred:
        """A Deferred that fires when this connection is gone."""
        d: Deferred = Deferred()
        if self.gone:
            d.callback(None)
        else:
            self._lost.append(d)
        return d

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802 - Twisted's API
        self.gone = True
        super().connectionLost(reason)
        waiting, self._lost = self._lost, []
        for d in waiting:
            d.callback(None)

    # --- bounded boxes -------------------------------------------------------

    def _box_too_big(self) -> None:
        self.log.warn(
            "closing {peer}: box over {limit} bytes or {keys} keys",
            # zope interface methods have no ``self``, which mypy cannot bind.
            peer=self.transport.getPeer() if self.transport else None,  # type: ignore[misc]
            limit=self.max_box_bytes,
            keys=self.max_box_keys,
        )
        self._refused = True
        assert self.transport is not None  # called from dataReceived: connected
        self.transport.loseConnection()  # type: ignore[misc]

    _refused = False
    gone = False

    def proto_init(self, string: bytes) -> str:
        self._box_bytes = 0
        self._box_keys = 0
        return super().proto_init(string)

    def proto_key(self, string: bytes) -> str:
        if self._refused:
            return "key"
        if string:
            self._box_bytes += len(string)
            self._box_keys += 1
            if self._box_keys > self.max_box_keys or self._box_bytes > self.max_box_bytes:
                self._box_too_big()
                return "key"
        return super().proto_key(string)

    def proto_value(self, string: bytes) -> str:
        if self._refused:
            return "key"
        self._box_bytes += len(string)
        if self._box_bytes > self.max_box_bytes:
            self._box_too_big()
            return "key"
        return super().proto_value(string)

    # --- bounded requests in flight ------------------------------------------------

    def _commandReceived(self, box: amp.AmpBox) -> None:  # noqa: N802 - AMP's API
        if self._in_flight >= self.max_in_flight:
            if amp.ASK in box:
                error = amp.AmpBox()
                error[amp.ERROR] = box[amp.ASK]
                error[amp.ERROR_CODE] = b"TOO_BUSY"
                error[amp.ERROR_DESCRIPTION] = (
                    f"more than {self.max_in_flight} requests in flight on this connection"
                ).encode()
                super()._safeEmit(error)  # not counted: it was never admitted
            return
        self._in_flight += 1
        super()._commandReceived(box)

    def _safeEmit(self, aBox: amp.AmpBox) -> None:  # noqa: N802, N803 - AMP's API
        if amp.ANSWER in aBox or amp.ERROR in aBox:
            self._in_flight = max(0, self._in_flight - 1)
        super()._safeEmit(aBox)

    # --- calls with a deadline -------------------------------------------------------

    def call(
        self,
        command: type[amp.Command],
        /,
        reply_timeout: float | None = DEFAULT_REPLY_TIMEOUT,
        **kw: Any,
    ) -> Deferred:
        """``callRemote`` that fails with ``TimeoutError`` after ``reply_timeout`` seconds."""
        d = self.callRemote(command, **kw)
        if reply_timeout is not None and self.clock is not None:
            d.addTimeout(reply_timeout, self.clock)
        return d


__all__ = ["BoundedAMP", "TooBusy"]
