"""A telnet-style manhole on a private Unix socket, for live inspection of the dispatcher.

``twistd tmdispatcher --manhole PATH`` listens on ``PATH`` (mode 0600, created under a
umask so that it is never more open) and serves a Python prompt
(:class:`twisted.conch.manhole.Manhole`) over telnet framing.  Only a peer whose uid
(``SO_PEERCRED``) is the dispatcher's own is served; anyone else is told why and
dropped.  Each connection gets a namespace of its own, built when it connects, holding
the live :class:`~tm.dispatcher.service.Dispatcher` and read-only helpers.

The prompt runs code in the reactor thread with the dispatcher's rights: a blocking
expression freezes the dispatcher, and ``dispatcher`` is the live object, not a copy.
"""

from __future__ import annotations

import copy
import errno
import os
import re
import socket
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.conch import manhole
from twisted.conch.insults import insults
from twisted.conch.telnet import (
    ECHO,
    LINEMODE,
    NAWS,
    SGA,
    NegotiationError,
    TelnetBootstrapProtocol,
    TelnetTransport,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from tm.core.model import ACTIVE_STATES, Job, JobState

if TYPE_CHECKING:
    from tm.dispatcher.service import Dispatcher

#: Longest path an AF_UNIX socket address holds on Linux (108 bytes with the final NUL).
MAX_SOCKET_PATH = 107
SOCKET_MODE = 0o600


class ManholePathError(ValueError):
    """``--manhole PATH`` cannot be used; the message says why, in one line."""


# --- the socket path -----------------------------------------------------------------------


def _probe(path: Path) -> bool:
    """Whether a process listens on the Unix socket ``path`` (False: a stale socket)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        raise ManholePathError(
            f"--manhole: cannot tell whether {path} is in use: {e.strerror or e}"
        ) from None
    finally:
        probe.close()
    return True


def check_socket_path(path: str | os.PathLike[str]) -> Path:
    """Check ``--manhole PATH`` before start-up; return it made absolute.

    Refused: a directory that does not exist, a path too long for a Unix socket,
    anything at ``PATH`` other than a socket (a file, a directory, a symbolic link),
    and a socket that a live process listens on.  A stale socket (nobody listens) is
    accepted: :func:`remove_stale_socket` removes it just before listening.
    """
    p = Path(os.path.abspath(os.fspath(path)))
    if len(os.fsencode(p)) > MAX_SOCKET_PATH:
        raise ManholePathError(
            f"--manhole: {p} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have"
        )
    if not p.parent.is_dir():
        raise ManholePathError(f"--manhole: directory {p.parent} does not exist")
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return p
    if not stat.S_ISSOCK(st.st_mode):
        raise ManholePathError(f"--manhole: {p} exists and is not a socket; not replacing it")
    if _probe(p):
        raise ManholePathError(f"--manhole: {p} is in use by a running process")
    return p


def remove_stale_socket(path: Path) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse anything else there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ManholePathError(f"--manhole: {path} exists and is not a socket; not replacing it")
    if _probe(path):
        raise ManholePathError(f"--manhole: {path} is in use by a running process")
    os.unlink(path)


def peer_credentials(transport: Any) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end of a Unix-socket transport.

    ``SO_PEERCRED`` (Linux): recorded by the kernel at ``connect()``, not claimed by the
    peer.  None when it cannot be read; the caller then refuses the connection.
    """
    try:
        sock = transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    pid, uid, gid = struct.unpack("3i", creds)
    return pid, uid, gid


# --- the namespace --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRow:
    """One host as the dispatcher sees it now."""

    name: str
    number_slots: int
    max_slots: int
    occupied: int
    active: bool
    retired: bool
    load: float | None
    executors: tuple[str, ...]  # users with an executor connected there


@dataclass(frozen=True)
class Sessions:
    """Who is connected to the dispatcher now."""

    tms: tuple[str, ...]  # users whose TMS is connected
    executors: tuple[str, ...]  # "user@host" of every connected executor
    starting: tuple[str, ...]  # "user@host" of executors being started


BANNER = """\
TaskManager dispatcher manhole (pid {pid}).  Python runs here in the dispatcher's reactor
thread: a blocking call freezes the dispatcher.  Names in this connection:
  dispatcher          the live Dispatcher service (changes through it are real)
  jobs(state=None)    in-memory jobs, oldest first, optionally of one state
                      ({states}); copies
  hosts()             hosts with slots, occupied slots, load and executors
  sessions()          connected TMS, executors, executors being started
  help()              this text
Variables you set stay in this connection.  Ctrl-D or Ctrl-\\ closes it."""


def banner() -> str:
    states = ", ".join(s.value for s in JobState if s in ACTIVE_STATES)
    return BANNER.format(pid=os.getpid(), states=states)


class _Help:
    """``help`` in the manhole: the banner, whether called or just named."""

    def __repr__(self) -> str:
        return banner()

    def __call__(self) -> None:
        print(banner())


def make_namespace(dispatcher: Dispatcher) -> dict[str, Any]:
    """A fresh namespace for one manhole connection."""

    def jobs(state: str | JobState | None = None) -> list[Job]:
        """The dispatcher's in-memory jobs (waiting, pending, running, lost), as copies."""
        wanted: JobState | None = None
        if state is not None:
            try:
                wanted = JobState(state)
            except ValueError:
                raise ValueError(
                    f"unknown state {state!r}; one of: "
                    + ", ".join(s.value for s in JobState if s in ACTIVE_STATES)
                ) from None
            if wanted not in ACTIVE_STATES:
                raise ValueError(
                    f"{wanted.value} jobs are not kept in memory; ask the "
                    "database (hConnect) for them"
                )
        return [
            copy.copy(j)
            for j in sorted(dispatcher.jobs.values(), key=lambda j: j.id)
            if wanted is None or j.state is wanted
        ]

    def hosts() -> list[HostRow]:
        """The configured hosts with their slot use now."""
        occupied = dispatcher.occupied()
        return [
            HostRow(
                name=h.name,
                number_slots=h.number_slots,
                max_slots=h.max_slots,
                occupied=occupied.get(h.name, 0),
                active=h.active,
                retired=h.retired,
                load=dispatcher.loads.get(h.name),
                executors=tuple(sorted(u for (u, host) in dispatcher.executors if host == h.name)),
            )
            for h in dispatcher.hosts.values()
        ]

    def sessions() -> Sessions:
        """The TMS and executor sessions connected now."""
        return Sessions(
            tms=tuple(sorted(dispatcher.tms_sessions)),
            executors=tuple(f"{u}@{h}" for (u, h) in sorted(dispatcher.executors)),
            starting=tuple(f"{u}@{h}" for (u, h) in sorted(dispatcher.starting)),
        )

    return {
        "__name__": "__manhole__",
        "__doc__": None,
        "dispatcher": dispatcher,
        "jobs": jobs,
        "hosts": hosts,
        "sessions": sessions,
        "help": _Help(),
    }


# --- the protocol -------------------------------------------------------------------------------


class DispatcherManhole(manhole.Manhole):
    """Manhole that greets with the banner."""

    def initializeScreen(self) -> None:  # noqa: N802
        self.terminal.reset()
        self.terminal.write(banner().encode() + b"\n")
        super().initializeScreen()


class QuietTelnetBootstrap(TelnetBootstrapProtocol):
    """Telnet option negotiation that a plain line client may ignore.

    A client such as ``socat`` or a bare socket never answers the DO/WILL offers; the
    stock protocol then logs a critical traceback for each offer when it disconnects.
    """

    log = Logger()
    transport: Any  # the CheckedTelnetTransport
    protocol: Any

    def connectionMade(self) -> None:  # noqa: N802
        self.transport.negotiationMap[NAWS] = self.telnet_NAWS
        self.transport.negotiationMap[LINEMODE] = self.telnet_LINEMODE
        for opt in (LINEMODE, NAWS, SGA):
            self.transport.do(opt).addErrback(self._unanswered, "do", opt)
        self.transport.will(ECHO).addErrback(self._unanswered, "will", ECHO)
        self.protocol = self.protocolFactory(*self.protocolArgs, **self.protocolKwArgs)
        self.protocol.makeConnection(self)

    def _unanswered(self, failure: Failure, verb: str, opt: bytes) -> None:
        if not failure.check(ConnectionDone, ConnectionLost, NegotiationError):
            self.log.failure("manhole: telnet {verb} {opt!r} failed", failure, verb=verb, opt=opt)


_NEWLINE = re.compile(rb"\r*\n")


class CheckedTelnetTransport(TelnetTransport):
    """Telnet framing that first checks the peer's uid; a stranger is told why and dropped."""

    log = Logger()
    factory: ManholeFactory
    transport: Any  # the Unix-socket connection
    refused = False

    def connectionMade(self) -> None:  # noqa: N802
        creds = self.factory.peer_credentials(self.transport)
        pid, uid = (None, None) if creds is None else creds[:2]
        own = os.geteuid()
        if uid != own:
            self.refused = True
            who = "unknown uid" if uid is None else f"uid {uid}"
            self.log.warn(
                "manhole: refused a connection from {who} (pid {pid}): only uid {own} may connect",
                who=who,
                pid=pid,
                own=own,
            )
            self.transport.write(
                f"manhole: refused: you are {who}; only the dispatcher's own uid ({own}) "
                "may use this manhole\r\n".encode()
            )
            self.transport.loseConnection()
            self._audit(who, pid, f"refused: only uid {own} may connect")
            return
        self.log.info("manhole: connection from uid {uid} (pid {pid})", uid=uid, pid=pid)
        self._audit(f"uid {uid}", pid, "done")
        super().connectionMade()

    def _audit(self, who: str, pid: int | None, outcome: str) -> None:
        self.factory.dispatcher.audit.record(
            who, "manhole", None, "manhole session", f"pid {pid}", outcome
        )

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        if not self.refused:
            super().dataReceived(data)

    def write(self, data: bytes) -> None:
        # Terminal, bootstrap and telnet layers each turn "\n" into "\r\n"; send one
        # "\r\n" so that line clients see clean lines.
        self.transport.write(_NEWLINE.sub(b"\r\n", data.replace(b"\xff", b"\xff\xff")))


class ManholeFactory(Factory):
    """Builds, for each connection, the telnet stack and a namespace of its own."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        peer_credentials: Callable[[Any], tuple[int, int, int] | None] = peer_credentials,
    ) -> None:
        self.dispatcher = dispatcher
        self.peer_credentials = peer_credentials

    def buildProtocol(self, addr: Any) -> Any:  # noqa: N802
        proto = CheckedTelnetTransport(
            QuietTelnetBootstrap,
            insults.ServerProtocol,
            DispatcherManhole,
            make_namespace(self.dispatcher),
        )
        proto.factory = self
        return proto


# --- the service -------------------------------------------------------------------------------------


class ManholeService(service.Service):
    """Listens on the manhole socket while running; the socket is removed when it stops."""

    log = Logger()

    def __init__(self, reactor: Any, path: Path, dispatcher: Dispatcher) -> None:
        self.reactor = reactor
        self.path = path
        self.factory = ManholeFactory(dispatcher)
        self.port: Any = None
        self._inode: int | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        remove_stale_socket(self.path)
        # bind() creates the socket file with 0777 & ~umask; Twisted chmods it only
        # afterwards.  The umask keeps it 0600 from the start.  Start-up is single
        # threaded here: no pool has started yet, so no other file sees this umask.
        old = os.umask(0o177)
        try:
            self.port = self.reactor.listenUNIX(
                str(self.path), self.factory, mode=SOCKET_MODE, wantPID=False
            )
        finally:
            os.umask(old)
        st = os.lstat(self.path)
        if (
            not stat.S_ISSOCK(st.st_mode)
            or stat.S_IMODE(st.st_mode) != SOCKET_MODE
            or st.st_uid != os.geteuid()
        ):
            self.port.stopListening()
            raise ManholePathError(
                f"--manhole: {self.path} came out with mode {stat.S_IMODE(st.st_mode):o} and "
                f"owner {st.st_uid}, not {SOCKET_MODE:o} and {os.geteuid()}; not serving it"
            )
        self._inode = st.st_ino
        self.log.info(
            "manhole listening on {path} (mode 0600, uid {uid} only)",
            path=str(self.path),
            uid=os.geteuid(),
        )

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        d = port.stopListening()

        def _unlinked(result: Any) -> Any:
            # The port unlinks its socket as it closes; make sure, touching only our own.
            try:
                if os.lstat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    self.log.warn("could not remove {path}: {e}", path=str(self.path), e=str(e))
            return result

        return d.addBoth(_unlinked) if d is not None else _unlinked(None)
