"""An AMP protocol with the bounds AMP itself lacks, and errors that stay one line.

AMP limits a key to 255 bytes and a value to 65 535, but not the number of keys
in a box, the requests in flight on a connection, or how long a caller waits
for an answer.  :class:`BoundedAMP` caps all three.

It also answers every bad request in one line instead of a traceback: arguments
that do not decode (wrong type, invalid UTF-8, a missing key, an integer beyond
64 bits) get ``InvalidRequest``, an unknown command AMP's ``UNHANDLED``, and an
exception that a responder did not declare ``ServerError``; each is logged once
per kind and peer through the rate-limited :class:`tm.logs.ProblemLog`.

A server that authenticates its peers (the dispatcher) turns on the rest with
class or instance attributes: a deadline for the whole handshake
(``handshake_timeout``), a smaller box before authentication
(``pre_auth_box_bytes``), and a bound on unsent output (``drain_timeout``): when
the transport's buffer passes its high-water mark the connection stops reading
requests, and it is dropped if the peer does not read within the deadline.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from tm.logs import ProblemLog, problem_log
from tm.protocol.commands import COMMON_ERRORS, InvalidRequest, ServerError, TooBusy

#: Bytes of keys and values in one box (an AmpList value is at most 64 KiB,
#: and a command has only a handful of arguments).
MAX_BOX_BYTES = 512 * 1024
#: Bytes of one box before the peer has authenticated (Hello and Authenticate are tiny).
PRE_AUTH_BOX_BYTES = 64 * 1024
MAX_BOX_KEYS = 64
MAX_IN_FLIGHT = 64
DEFAULT_REPLY_TIMEOUT = 120.0
#: Seconds a started box may stay unfinished before the connection is closed.
PARTIAL_BOX_TIMEOUT = 30.0
#: Seconds a peer may leave our answers unread (past the high-water mark) before it is dropped.
DRAIN_TIMEOUT = 30.0

_INVALID = COMMON_ERRORS[InvalidRequest]
_SERVER_ERROR = COMMON_ERRORS[ServerError]


def one_line(text: object, limit: int = 200) -> str:
    """``text`` as one printable line of at most ``limit`` characters."""
    s = " ".join(str(text).split())
    s = "".join(c if c.isprintable() else "?" for c in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _name(raw: object) -> str:
    if isinstance(raw, bytes):
        return one_line(raw.decode("utf-8", "replace"), 60)
    return one_line(raw, 60)


def argument_problem(command: type[amp.Command], box: amp.AmpBox, proto: Any) -> str | None:
    """What is wrong with the arguments of ``box`` for ``command``, or None if they decode."""
    objects: dict[str, Any] = {}
    strings = box.copy()
    for name, argument in command.arguments:
        if name not in box and not getattr(argument, "optional", False):
            return f"argument {_name(name)} is missing"
        try:
            argument.fromBox(name, strings, objects, proto)
        except Exception as e:  # any decoding failure is the request's fault
            return f"argument {_name(name)}: {one_line(e) or type(e).__name__}"
    return None


def no_delay(transport: Any) -> None:
    """Turn Nagle's algorithm off on a TCP connection (through TLS too: the TLS wrapper
    passes the call to the TCP transport below it).

    AMP is request and answer: with Nagle on, a small box written while the previous one is
    not yet acknowledged waits for that acknowledgement, which the peer delays by up to
    40 ms when it has nothing to send back (measured: every job's end report waited for
    it). Twisted already gathers the writes of one reactor turn into one ``send``.
    """
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is None:
        return  # not TCP (a Unix socket, a test's memory transport)
    try:
        set_no_delay(True)
    except (OSError, AttributeError):
        pass  # not a TCP socket after all, or already closed


@implementer(IPushProducer)
class BoundedAMP(amp.AMP):
    log = Logger()

    max_box_bytes = MAX_BOX_BYTES
    max_box_keys = MAX_BOX_KEYS
    max_in_flight = MAX_IN_FLIGHT
    #: The box bound until :meth:`authenticated` is called (None: no separate bound).
    pre_auth_box_bytes: int | None = None
    #: Seconds from connecting to :meth:`authenticated` (None: no deadline).
    handshake_timeout: float | None = None
    partial_box_timeout: float | None = PARTIAL_BOX_TIMEOUT
    #: Seconds to drain output past the high-water mark (None: output is not watched).
    drain_timeout: float | None = None

    def __init__(
        self,
        locator: Any = None,
        clock: IReactorTime | Clock | None = None,
        problems: ProblemLog | None = None,
    ) -> None:
        super().__init__(locator=locator)
        self.clock: Any = clock  # Any: mypy cannot bind zope interface methods
        self.problems = problems if problems is not None else problem_log(clock)
        self.is_authenticated = False
        self._box_bytes = 0
        self._box_keys = 0
        self._in_flight = 0
        self._lost: list[Deferred] = []
        self._handshake_timer: Any = None
        self._partial_since: float | None = None
        self._partial_timer: Any = None
        self._drain_timer: Any = None
        self._consumer: Any = None
        self.peer_host = "?"

    def when_lost(self) -> Deferred:
        """A Deferred that fires when this connection is gone."""
        d: Deferred = Deferred()
        if self.gone:
            d.callback(None)
        else:
            self._lost.append(d)
        return d

    # --- connection life -----------------------------------------------------------

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 - Twisted's API
        # AMP's own makeConnection logs two lines per connection; anyone who can reach the
        # port could fill the log with them.  What a peer does wrong goes to self.problems.
        self._transportPeer = transport.getPeer()
        self._transportHost = transport.getHost()
        self.peer_host = str(getattr(self._transportPeer, "host", self._transportPeer))
        if self.clock is not None and self.handshake_timeout is not None:
            self._handshake_timer = self.clock.callLater(
                self.handshake_timeout, self._handshake_expired
            )
        if self.clock is not None and self.drain_timeout is not None:
            self._watch_output(transport)
        no_delay(transport)
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.gone = True
        for timer in (self._handshake_timer, self._partial_timer, self._drain_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._handshake_timer = self._partial_timer = self._drain_timer = None
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None
        waiting, self._lost = self._lost, []
        for d in waiting:
            d.callback(None)

    def authenticated(self) -> None:
        """The peer proved who it is: no handshake deadline, the full box bound."""
        self.is_authenticated = True
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def problem(self, kind: str, text: str, **fields: Any) -> None:
        """One rate-limited log line about what the peer did (``text`` may use ``{peer}``)."""
        self.problems.emit(kind, self.peer_host, text, **fields)

    def _close(self, abort: bool = False) -> None:
        self._refused = True
        transport: Any = self.transport
        if transport is None:
            return
        if abort:
            transport.abortConnection()
        else:
            transport.loseConnection()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self.is_authenticated or self.gone:
            return
        if not self._refused:  # else already closing, and logged: only make sure it ends
            self.problem(
                "handshake timeout",
                "closing {peer}: not authenticated within {seconds} s",
                seconds=self.handshake_timeout,
            )
        self._close(abort=True)

    # --- bounded boxes -------------------------------------------------------

    def _box_limit(self) -> int:
        if self.pre_auth_box_bytes is not None and not self.is_authenticated:
            return self.pre_auth_box_bytes
        return self.max_box_bytes

    def _box_too_big(self) -> None:
        self.problem(
            "box too big",
            "closing {peer}: box over {limit} bytes or {keys} keys",
            limit=self._box_limit(),
            keys=self.max_box_keys,
        )
        self._close()

    _refused = False
    gone = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's API
        if self._refused:
            return
        super().dataReceived(data)
        # A box is under way when bytes wait in the receiver's buffer or a box has keys.
        underway = bool(self.recvd) or self._currentBox is not None
        if not underway:
            self._partial_since = None
        elif self._partial_since is None and self.clock is not None:
            self._partial_since = self.clock.seconds()
            if self.partial_box_timeout is not None and (
                self._partial_timer is None or not self._partial_timer.active()
            ):
                self._partial_timer = self.clock.callLater(
                    self.partial_box_timeout, self._partial_expired
                )

    def _partial_expired(self) -> None:
        self._partial_timer = None
        if self._partial_since is None or self.gone or self._refused or self.clock is None:
            return
        assert self.partial_box_timeout is not None
        left = self._partial_since + self.partial_box_timeout - self.clock.seconds()
        if left > 0:  # a newer box is under way: give it its own time
            self._partial_timer = self.clock.callLater(left, self._partial_expired)
            return
        self.problem(
            "stalled box",
            "closing {peer}: a box unfinished for {seconds} s",
            seconds=self.partial_box_timeout,
        )
        self._close(abort=True)

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
            if self._box_keys > self.max_box_keys or self._box_bytes > self._box_limit():
                self._box_too_big()
                return "key"
        return super().proto_key(string)

    def proto_value(self, string: bytes) -> str:
        if self._refused:
            return "key"
        self._box_bytes += len(string)
        if self._box_bytes > self._box_limit():
            self._box_too_big()
            return "key"
        return super().proto_value(string)

    def lengthLimitExceeded(self, length: int) -> None:  # noqa: N802 - AMP's API
        self.problem("key too long", "closing {peer}: a key of {length} bytes", length=length)
        super().lengthLimitExceeded(length)

    # --- one-line answers instead of tracebacks ---------------------------------------

    def ampBoxReceived(self, box: amp.AmpBox) -> None:  # noqa: N802 - AMP's API
        try:
            super().ampBoxReceived(box)
        except Exception as e:
            # Not a request nor the answer to one of ours (no _command/_answer/_error, an
            # answer to nothing we asked, an error box without its code...).
            self.problem(
                "protocol violation",
                "closing {peer}: {error}",
                error=one_line(f"{type(e).__name__}: {e}"),
            )
            self._close()

    def _command_class(self, name: bytes) -> type[amp.Command] | None:
        found = getattr(self.locator, "_commandDispatch", {}).get(name)
        return found[0] if found else None

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred:  # noqa: N802 - AMP's API
        name = box[amp.COMMAND]
        if name == amp.StartTLS.commandName and self.locator is self:
            # AMP's built-in StartTLS would re-handshake an established link.
            return self._unknown(name)
        command = self._command_class(name)
        if command is None and self.locator.locateResponder(name) is None:
            return self._unknown(name)
        problem = None if command is None else argument_problem(command, box, self.locator)
        if problem is not None:
            self.problem(
                "bad arguments",
                "{peer} sent {command} with bad arguments: {problem}",
                command=_name(name),
                problem=problem,
            )
            return fail(amp.RemoteAmpError(_INVALID, f"{_name(name)}: {problem}"))
        d = super().dispatchCommand(box)
        d.addErrback(self._undeclared, name)
        return d

    def _unknown(self, name: bytes) -> Deferred:
        self.problem(
            "unknown command", "{peer} sent an unknown command {command}", command=_name(name)
        )
        return fail(
            amp.RemoteAmpError(
                amp.UNHANDLED_ERROR_CODE,
                f"unknown command {_name(name)}",
                False,
                local=Failure(amp.UnhandledCommand()),
            )
        )

    def _undeclared(self, failure: Failure, name: bytes) -> Failure:
        if failure.check(amp.RemoteAmpError):
            return failure  # a declared error: its text is the answer
        where = ""
        frames = getattr(failure, "frames", None)
        if frames:
            _, filename, line = frames[-1][:3]
            where = f" at {filename}:{line}"
        self.problem(
            "server error",
            "{command} from {peer} failed: {error}{where}",
            command=_name(name),
            error=one_line(f"{failure.type.__name__}: {failure.value}"),
            where=where,
        )
        return Failure(
            amp.RemoteAmpError(
                _SERVER_ERROR,
                f"{_name(name)} failed in the server ({failure.type.__name__}); "
                "its log has one line about it",
                False,
            )
        )

    def unhandledError(self, failure: Failure) -> None:  # noqa: N802 - AMP's API
        # AMP logs a traceback here and drops the link; the cause is most often the
        # peer's (an answer we cannot parse), so one line, rate-limited.
        self.problem(
            "unhandled error",
            "closing {peer}: {error}",
            error=one_line(f"{failure.type.__name__}: {failure.value}"),
        )
        self._close()

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
        try:
            super()._safeEmit(aBox)
        except amp.TooLong:
            if amp.ANSWER not in aBox:
                raise
            # An answer over AMP's 64 KiB value: refuse it in one line instead of
            # dropping the link (AMP's default).
            self.problem("answer too long", "an answer to {peer} was over 64 KiB: refused")
            error = amp.AmpBox()
            error[amp.ERROR] = aBox[amp.ANSWER]
            error[amp.ERROR_CODE] = _INVALID
            error[amp.ERROR_DESCRIPTION] = (
                b"the answer is larger than one AMP value (64 KiB): ask for less"
            )
            super()._safeEmit(error)

    # --- bounded output: a slow reader is paused, then dropped -------------------------

    def _watch_output(self, transport: Any) -> None:
        # Through TLS, the bytes wait in the TCP transport below it; registering there keeps
        # TLS's loseConnection working (TLS waits for a producer registered on itself).
        self._consumer = getattr(transport, "transport", None) or transport
        if getattr(self._consumer, "registerProducer", None) is None:
            self._consumer = None
            return
        self._consumer.registerProducer(self, True)

    def pauseProducing(self) -> None:  # noqa: N802 - IPushProducer
        """The peer reads our answers slower than we write them: stop reading its
        requests, and drop it unless it drains within ``drain_timeout``."""
        if self.gone or self._consumer is None:
            return
        self._consumer.pauseProducing()
        if (
            self.clock is not None
            and self.drain_timeout is not None
            and (self._drain_timer is None or not self._drain_timer.active())
        ):
            self._drain_timer = self.clock.callLater(self.drain_timeout, self._drain_expired)

    def resumeProducing(self) -> None:  # noqa: N802 - IPushProducer
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None
        if self.gone or self._consumer is None:
            return
        if getattr(self._consumer, "disconnecting", False):
            # Closing: without us it closes once its buffer is empty.
            self._consumer.unregisterProducer()
            return
        self._consumer.resumeProducing()

    def stopProducing(self) -> None:  # noqa: N802 - IPushProducer
        if self._drain_timer is not None and self._drain_timer.active():
            self._drain_timer.cancel()
        self._drain_timer = None

    def _drain_expired(self) -> None:
        self._drain_timer = None
        if self.gone:
            return
        if not self._refused:
            self.problem(
                "slow reader",
                "dropping {peer}: it left our answers unread for {seconds} s",
                seconds=self.drain_timeout,
            )
        self._close(abort=True)

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


__all__ = ["BoundedAMP", "TooBusy", "argument_problem", "one_line"]
