"""How the runner starts a job's shepherd, and learns its end.

Two ways, one interface (:class:`Launcher`):

:class:`ZygoteLauncher` (the executor's)
    One helper process per executor, the compiled ``_zygote`` (``_zygote_main.c``) where it
    is built, else ``python -I -S zygote.py`` (:mod:`tm.executor.zygote`), started on the
    first job with ``spawnProcess`` and kept; it forks each job's shepherd and
    reports its pid, and its exit status and rusage (``wait4``) at its end, over a Unix socket.
    A job's start then costs a fork, not an interpreter. The shepherd opens the job's files
    itself, after the fork (:attr:`Launcher.opens_files`): the executor does no file-system
    work to start a job, and a file that cannot be opened fails the start
    (:class:`StartRefused`, its reason as the executor would have said it). The shepherds are the zygote's
    children, not the executor's: the runner signals them by pid (same user) and learns their
    ends from the zygote. If the zygote ends unexpectedly, a start under way is tried once on a
    new zygote, and each running job is reported lost (:attr:`ShepherdEnd.lost`): its shepherd,
    its parent gone, has been sent ``SIGTERM`` by the kernel; the runner kills what is left of
    its tree at once. The next start starts a new zygote.

    The zygote and its shepherds are compiled (``tm/executor/_shepherd.c``, built by
    ``pip install .``: no Python runs in a shepherd, a job costs the zygote a fork and the
    shepherd a vfork) or, where the extension is not built, Python (:mod:`tm.executor.shim`);
    :func:`zygote_implementation` chooses, the same protocol and contract either way.
:class:`SpawnLauncher`
    A fresh ``python -I -S shim.py`` per job with ``spawnProcess`` (the executor's direct child).
    Tens of milliseconds of CPU per job; kept for tools and tests that pass a stand-in for
    ``spawnProcess``.

Known limit of the zygote: the runner signals a shepherd by pid, and between the zygote's
``wait4`` of a shepherd and the runner reading its end there is a short window in which that pid
could in principle be reused (as between any reap and a later ``kill``); the pid space is large
and the window one message long.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import struct
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from tm import trace
from tm.executor.request import OutputFiles

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_PATH = os.path.join(HERE, "shim.py")
ZYGOTE_PATH = os.path.join(HERE, "zygote.py")
#: The compiled zygote as an executable of its own (``_zygote_main.c``), built beside the
#: extension: a fork of it costs a fraction of a fork of an interpreter.
ZYGOTE_EXECUTABLE = os.path.join(HERE, "_zygote")
HEADER = struct.Struct(">I")
#: A start under way when its zygote ends is tried again on a new one this many times.
RELAUNCHES = 1


def zygote_implementation(wanted: str = "auto") -> str:
    """The zygote's implementation: ``native`` (the compiled ``tm.executor._shepherd``, when it
    is built: ``pip install .`` builds it) or ``python`` (:mod:`tm.executor.zygote` and
    :mod:`tm.executor.shim`); ``auto`` takes the compiled one when there is one. The one place
    where the choice is made."""
    if wanted == "auto":
        return "native" if importlib.util.find_spec("tm.executor._shepherd") else "python"
    if wanted not in ("native", "python"):
        raise ValueError(f"unknown zygote implementation {wanted!r}")
    return wanted


def encode_request(job: int, args: ShepherdArgs, env: dict[str, str]) -> bytes:
    """A request for the zygote (the format is in :mod:`tm.executor.zygote`): one join and
    one encoding for the whole request, which carries the job's whole environment."""
    names = "".join(env)
    if "=" in names or not all(env):
        raise ValueError("invalid name of an environment variable (empty, or with '=')")
    files = args.files
    if files is None:
        raise ValueError("the zygote's shepherds open the job's files: their paths are needed")
    fields = [str(job), repr(float(args.grace)), str(int(args.umask)), args.cwd, args.shell]
    fields += [args.command, files.stdout, files.stderr, files.logfile or "", files.log_dir or ""]
    fields.extend(map("=".join, env.items()))
    text = "\0".join(fields)
    if text.count("\0") != len(fields) - 1:
        raise ValueError(
            "the job's command, directory, shell, files or environment holds a NUL byte"
        )
    return os.fsencode(text) + b"\0"


@dataclass(frozen=True)
class ShepherdArgs:
    grace: float
    umask: int
    cwd: str
    shell: str
    command: str
    #: For a launcher that opens the job's files itself (:attr:`Launcher.opens_files`).
    files: OutputFiles | None = None


@dataclass(frozen=True)
class ShepherdEnd:
    """How a shepherd ended: the shell's exit code or signal, as the shepherd reproduces it."""

    exit_code: int | None
    signal: int | None
    #: Set when the end is unknown (the zygote that reaps the shepherd ended): why.
    lost: str | None = None
    #: CPU seconds and largest resident set (KiB) of the job's whole tree, when known.
    cpu_user: float | None = None
    cpu_system: float | None = None
    max_rss_kib: int | None = None


class LaunchError(Exception):
    """The shepherd could not be started; ``reason`` is for a user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StartRefused(LaunchError):
    """The shepherd found that the job cannot start (a file it cannot open, a missing working
    directory): ``reason`` is the whole reason, as :mod:`tm.executor.request` words it."""


#: ``started(pid, remove_empty_stderr)``: the shepherd's pid, and whether the executor is to
#: remove the job's stderr file at its end if it is empty (a shepherd that opened the files
#: made it for the job, and leaves it to the log file; else the shepherd removes it itself).
Started = Callable[[int, bool], None]
Exited = Callable[[ShepherdEnd], None]


class Launcher(Protocol):
    #: True: the shepherd opens the job's files (``args.files``; ``fds`` is None); False: the
    #: runner opens them and passes ``fds``.
    opens_files: bool

    def launch(
        self,
        args: ShepherdArgs,
        env: dict[str, str],
        fds: tuple[int, int, int] | None,
        started: Started,
        exited: Exited,
    ) -> defer.Deferred[int]:
        """Start a shepherd with ``fds`` as its stdin, stdout, stderr (or the files it opens).

        ``started(pid)`` is called once its pid is known, before anything else is said of it;
        ``exited`` once at its end. The Deferred fires with the pid, or fails with
        :class:`LaunchError`; an error from ``spawnProcess`` may also be raised at once. The
        descriptors must stay open until the Deferred has fired."""

    def stop(self) -> defer.Deferred[None]:
        """Let go of any helper process; fires once it has gone."""


def wait_status(status: int) -> tuple[int | None, int | None]:
    """``(exit_code, signal)`` from a raw wait status, as Twisted reports a process's end."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    return os.waitstatus_to_exitcode(status), None


# -- one interpreter per job -------------------------------------------------------------------


class _SpawnedShepherd(protocol.ProcessProtocol):
    def __init__(self, started: Started, exited: Exited) -> None:
        self._started = started
        self._exited = exited

    def makeConnection(self, transport: Any) -> None:  # noqa: N802 - Twisted's API
        # Before the process is registered for reaping, which may report its exit at once
        # (inside spawnProcess): the pid must be known by then.
        self._started(transport.pid, False)
        super().makeConnection(transport)

    def processExited(self, reason: Failure) -> None:  # noqa: N802
        # processEnded would also wait for every inherited pipe to close; the job is over now.
        self._exited(
            ShepherdEnd(
                exit_code=getattr(reason.value, "exitCode", None),
                signal=getattr(reason.value, "signal", None),
            )
        )


class SpawnLauncher:
    opens_files = False

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def launch(
        self,
        args: ShepherdArgs,
        env: dict[str, str],
        fds: tuple[int, int, int] | None,
        started: Started,
        exited: Exited,
    ) -> defer.Deferred[int]:
        if fds is None:
            raise ValueError("the spawned shepherd takes the job's files opened")
        argv = [
            sys.executable,
            "-I",
            "-S",
            SHIM_PATH,
            repr(float(args.grace)),
            format(args.umask, "o"),
            args.cwd,
            args.shell,
            args.command,
        ]
        transport = self._reactor.spawnProcess(
            _SpawnedShepherd(started, exited),
            sys.executable,
            argv,
            env=env,
            childFDs={0: fds[0], 1: fds[1], 2: fds[2]},
        )
        return defer.succeed(transport.pid)

    def stop(self) -> defer.Deferred[None]:
        return defer.succeed(None)


# -- one zygote per executor -------------------------------------------------------------------


@dataclass
class _Request:
    id: int
    body: bytes
    started: Started
    exited: Exited
    done: defer.Deferred[int]
    tries: int = 0


class _ZygoteLink(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 1 << 16

    def __init__(self, zygote: _Zygote) -> None:
        self._zygote = zygote

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        with self._zygote.batch():
            super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:  # noqa: N802
        self._zygote.answer(line.decode("utf-8", "replace"))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:  # noqa: N802
        self._zygote.link_lost()


class _ZygoteProcess(protocol.ProcessProtocol):
    def __init__(self, zygote: _Zygote) -> None:
        self._zygote = zygote

    def processEnded(self, reason: Failure) -> None:  # noqa: N802
        self._zygote.process_ended(reason)


class _Zygote:
    """One zygote process and the requests it has in hand."""

    log = Logger()

    def __init__(self, reactor: Any, owner: ZygoteLauncher, implementation: str) -> None:
        self._owner = owner
        self.pending: dict[int, _Request] = {}  # sent, not yet answered
        self.running: dict[int, Exited] = {}  # started, end not yet reported
        self.gone = False  # its socket has closed: it takes no more requests
        self.ended: defer.Deferred[None] = defer.Deferred()  # its process has been reaped
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        argv = [sys.executable, "-I", "-S", ZYGOTE_PATH, str(os.getpid()), implementation]
        if implementation == "native" and os.access(ZYGOTE_EXECUTABLE, os.X_OK):
            argv = [ZYGOTE_EXECUTABLE, str(os.getpid())]
        try:
            self.process = reactor.spawnProcess(
                _ZygoteProcess(self),
                argv[0],
                argv,
                env=dict(os.environ),
                childFDs={0: null, 1: 1, 2: 2, 3: theirs.fileno()},
            )
            self.link = _ZygoteLink(self)
            reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX, _OneProtocol(self.link))
        finally:
            os.close(null)
            theirs.close()
            ours.close()  # adoptStreamConnection keeps a copy of its own
        self.log.info(
            "shepherd zygote started ({implementation}), pid {pid}",
            implementation=implementation,
            pid=self.process.pid,
        )

    def batch(self) -> AbstractContextManager[None]:
        return self._owner.batch()

    def send(self, request: _Request) -> None:
        self.pending[request.id] = request
        transport: Any = self.link.transport
        transport.write(HEADER.pack(len(request.body)) + request.body)

    def answer(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        try:
            if kind == "S":
                job_text, pid_text, remove = rest.split()
                job, pid = int(job_text), int(pid_text)
                request = self.pending.pop(job)
                self.running[job] = request.exited
                request.started(pid, remove == "1")
                request.done.callback(pid)
            elif kind in ("F", "R"):
                job_text, _, reason = rest.partition(" ")
                request = self.pending.pop(int(job_text))
                request.done.errback((StartRefused if kind == "R" else LaunchError)(reason))
            elif kind == "E":
                job_text, _, status_text, utime, stime, maxrss = rest.split()
                exited = self.running.pop(int(job_text))
                code, sig = wait_status(int(status_text))
                exited(
                    ShepherdEnd(
                        exit_code=code,
                        signal=sig,
                        cpu_user=float(utime),
                        cpu_system=float(stime),
                        max_rss_kib=int(maxrss),
                    )
                )
            else:
                raise ValueError(kind)
        except (ValueError, KeyError):
            self.log.error(
                "shepherd zygote {pid}: unexpected answer {line!r}",
                pid=self.process.pid,
                line=line[:200],
            )

    def link_lost(self) -> None:
        """Its socket closed: it has exited (or closed it, which it does only to exit)."""
        if self.gone:
            return
        self.gone = True
        self._owner.zygote_gone(self)
        if self.pending or self.running:
            self.log.error(
                "shepherd zygote {pid} ended unexpectedly with {n} job(s) in hand",
                pid=self.process.pid,
                n=len(self.pending) + len(self.running),
            )
        pending, self.pending = self.pending, {}
        running, self.running = self.running, {}
        for request in pending.values():
            self._owner.relaunch(request)
        for exited in running.values():
            exited(
                ShepherdEnd(
                    exit_code=None,
                    signal=None,
                    lost="the executor's shepherd zygote ended unexpectedly",
                )
            )

    def process_ended(self, reason: Failure) -> None:
        if not reason.check(error.ProcessDone):
            self.log.info(
                "shepherd zygote {pid} ended: {reason}",
                pid=self.process.pid,
                reason=reason.getErrorMessage(),
            )
        self.ended.callback(None)

    def close(self) -> defer.Deferred[None]:
        """Ask it to exit (it does on the end of its input); fires once it has been reaped."""
        transport: Any = self.link.transport
        if transport is not None:
            transport.loseConnection()
        return self.ended


class _OneProtocol(protocol.Factory):
    def __init__(self, proto: protocol.Protocol) -> None:
        self._proto = proto

    def buildProtocol(self, addr: Any) -> protocol.Protocol:  # noqa: N802
        return self._proto


class ZygoteLauncher:
    log = Logger()
    opens_files = True

    def __init__(self, reactor: Any, implementation: str = "auto") -> None:
        """``implementation``: ``auto``, ``native`` or ``python`` (:func:`zygote_implementation`)."""
        self._reactor = reactor
        self.implementation = zygote_implementation(implementation)
        self._zygote: _Zygote | None = None
        self._next_id = 0
        #: A context around the handling of each read of the zygote's answers (the runner's
        #: JobLog.batch: the starts and ends of one read logged as one line each).
        self.batch: Callable[[], AbstractContextManager[None]] = nullcontext
        self._stopping = False

    @property
    def zygote_pid(self) -> int | None:
        zygote = self._zygote
        return None if zygote is None or zygote.gone else zygote.process.pid

    def _current(self) -> _Zygote:
        if self._zygote is None or self._zygote.gone:
            self._zygote = _Zygote(self._reactor, self, self.implementation)
        return self._zygote

    def launch(
        self,
        args: ShepherdArgs,
        env: dict[str, str],
        fds: tuple[int, int, int] | None,
        started: Started,
        exited: Exited,
    ) -> defer.Deferred[int]:
        """``fds`` must be None: the shepherd opens ``args.files``."""
        trace.point("executor", "zygote-sent", env.get("TM_JOB_ID", "-"))
        if fds is not None:
            raise ValueError("the zygote's shepherds open the job's files themselves")
        self._next_id += 1
        body = encode_request(self._next_id, args, env)
        request = _Request(
            id=self._next_id,
            body=body,
            started=started,
            exited=exited,
            done=defer.Deferred(),
        )
        self._current().send(request)
        return request.done

    def zygote_gone(self, zygote: _Zygote) -> None:
        if self._zygote is zygote:
            self._zygote = None

    def relaunch(self, request: _Request) -> None:
        """A start whose zygote ended before it answered: try a new zygote, once."""
        if request.tries >= RELAUNCHES or self._stopping:
            request.done.errback(
                LaunchError("the executor's shepherd zygote ended before it started the job")
            )
            return
        request.tries += 1
        try:
            self._current().send(request)
        except Exception as e:
            request.done.errback(LaunchError(f"cannot start a new shepherd zygote: {e}"))

    def stop(self) -> defer.Deferred[None]:
        self._stopping = True
        zygote, self._zygote = self._zygote, None
        if zygote is None:
            return defer.succeed(None)
        return zygote.close()
