"""The executor's zygote: one small process that forks a shepherd per job.

Run as: python -I -S zygote.py EXECUTOR_PID native|python, with fd 3 a connected Unix stream
socket to the executor (:mod:`tm.executor.launcher` starts it, chooses the implementation and
speaks to it). Where it is built, the executor runs the compiled zygote as an executable of
its own instead (``_zygote EXECUTOR_PID``, ``_zygote_main.c``: the same loop and shepherds,
and a fork of a small C process costs a job a fraction of a fork of an interpreter).

Starting a job's shepherd as a fresh interpreter costs tens of milliseconds of CPU; forking it
from a process that has the shepherd's code loaded already costs a fork. The zygote is that
process: started once per executor, it imports only the standard library and :mod:`shim`, and
for each request forks a child that becomes the job's shepherd (:func:`shim.shepherd`: child
subreaper, own session, the tree killed, stopped and continued on its control signals, the
shell's exit status reproduced). The child never returns into the zygote's loop: it ends with
``os._exit``.

Two implementations of the same protocol and the same shepherd: ``native``, the compiled
extension ``_shepherd`` (``_shepherd.c``, the zygote's loop, and ``_shepherd_job.c``, the
shepherds: no Python after the fork), and ``python``, this file and :mod:`shim` (the fallback
where the extension is not built; :func:`tm.executor.launcher.zygote_implementation`
chooses).

Requests, executor -> zygote: a 4-byte big-endian length, then that many bytes: NUL-terminated
fields ID, GRACE, UMASK (decimal), CWD, SHELL, COMMAND, STDOUT, STDERR (the same path: one
file), LOGFILE and LOGDIR (each empty if none), then one ``KEY=VALUE`` per variable of the job's
environment (none of them can hold a NUL: they become ``execve``'s arguments).

The shepherd opens the job's files itself, after the fork (:func:`open_files`: the executor does
no file-system work to start a job, and none blocks the zygote), and says how it went on a pipe
of its own (fd 3 in the shepherd): ``+R`` once they are open (R below), or ``K ERRNO PATH`` when
the job cannot start (:func:`refusal` words it), after which it exits 126 unreported.

Answers, zygote -> executor, one line each:

``S ID PID R``
    the shepherd of request ID was forked and has opened the job's files; PID is its pid. R is
    ``1`` when the executor is to remove the job's stderr file at its end if it is empty (made
    for the job, and read first by the ``-l`` log file), else ``0``.
``F ID REASON``
    it could not be forked, or it ended before it said anything (REASON is text for a user).
``R ID REASON``
    the job cannot start: a file cannot be opened, the working directory is missing (REASON is
    the whole reason, as ``tm.executor.request`` words it).
``E ID PID STATUS UTIME STIME MAXRSS``
    the shepherd has exited, reaped with ``wait4``: its raw wait status, and the CPU seconds
    (user, system) and the largest resident set (KiB) of the shepherd and every descendant it
    reaped, which as the job's subreaper is the job's whole tree.

The control signals are blocked across each fork, so a shepherd takes them (never dies of
USR1) from its first instruction: the runner may signal it as soon as it knows its pid.

If the executor dies, the zygote gets ``SIGKILL`` (``PR_SET_PDEATHSIG``), and each shepherd, its
parent gone, gets ``SIGTERM`` and kills its job's tree. When the executor closes the socket, the
zygote exits (its shepherds, if any were left, go the same way).
"""

from __future__ import annotations

import importlib
import os
import select
import signal
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

if TYPE_CHECKING:
    from tm.executor import shim
else:
    # A sibling file: the zygote runs with -I -S, outside the package (and importing the
    # package would import more than the zygote needs).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import shim

CONTROL_FD = 3
#: The shepherd's end of its status pipe.
STATUS_FD = 3
MAX_FDS_PER_READ = 32
HEADER = struct.Struct(">I")
MAX_REQUEST = 64 * 1024 * 1024


class Request(NamedTuple):
    id: int
    grace: float
    umask: int
    cwd: str
    shell: str
    command: str
    files: tuple[str, str, str, str]  # stdout, stderr, log file, log directory ("": none)
    env: dict[str, str]


def parse_request(body: bytes) -> Request:
    fields = [os.fsdecode(field) for field in body.split(b"\0")[:-1]]
    env = {}
    for entry in fields[10:]:
        key, _, value = entry.partition("=")
        env[key] = value
    cwd, shell, command, stdout, stderr, logfile, log_dir = fields[3:10]
    files = (stdout, stderr, logfile, log_dir)
    return Request(
        int(fields[0]), float(fields[1]), int(fields[2]), cwd, shell, command, files, env
    )


# -- in the shepherd: the job's files --------------------------------------------------------


def _refuse(kind: str, errno: int, path: str, status_fd: int) -> NoReturn:
    """Tell the zygote why the start failed (one write of at most PIPE_BUF bytes), and end."""
    try:
        os.write(status_fd, f"{kind} {errno} ".encode() + os.fsencode(path)[:4000])
    finally:
        os._exit(126)


def _open_output(path: str, mode: int, kind: str, status_fd: int) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    except OSError as e:
        _refuse(kind, e.errno or 0, path, status_fd)


def open_files(
    cwd: str, umask: int, files: tuple[str, str, str, str], status_fd: int = STATUS_FD
) -> tuple[str, bool]:
    """Check ``cwd`` and open the job's ``files`` (stdout, stderr, log file or "", log
    directory to make or "") by the rules of ``tm.executor.request.open_outputs``, under the
    zygote's umask as the executor did: they become 0, 1, 2. Say how it went on ``status_fd``
    (see the module's docstring; a failure ends the process). The stderr file, and whether the
    shepherd is to remove it at the end if it is empty (made now, and no log file to read it)."""
    stdout, stderr, logfile, log_dir = files
    if not os.path.exists(cwd):
        _refuse("c", 0, cwd, status_fd)
    if not os.path.isdir(cwd):
        _refuse("C", 0, cwd, status_fd)
    if log_dir:
        try:
            os.makedirs(log_dir, mode=0o700, exist_ok=True)
        except OSError as e:
            _refuse("d", e.errno or 0, log_dir, status_fd)
    mode = 0o666 & ~umask
    out = _open_output(stdout, mode, "o", status_fd)
    err, created = out, False
    if stderr != stdout:
        try:
            err = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            created = True
        except OSError:
            err = _open_output(stderr, mode, "e", status_fd)
    if logfile:
        os.close(_open_output(logfile, mode, "l", status_fd))  # unwritable: fails the start
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    for target, fd in enumerate((null, out, err)):
        os.dup2(fd, target)  # dup2 clears close-on-exec on the copy
    for fd in {null, out, err}:
        os.close(fd)
    os.write(status_fd, b"+1" if created and logfile else b"+0")
    os.close(status_fd)
    return stderr, created and not logfile


def refusal(message: bytes) -> str:
    """The reason of a failed start, from the shepherd's ``K ERRNO PATH``."""
    kind, errno_text, path_bytes = message.split(b" ", 2)
    path = os.fsdecode(path_bytes)
    if kind == b"c":
        return f"working directory {path} does not exist"
    if kind == b"C":
        return f"working directory {path} is not a directory"
    error = os.strerror(int(errno_text))
    if kind == b"d":
        return f"cannot create log directory {path}: {error}"
    what = {b"o": "stdout", b"e": "stderr"}.get(kind, "log")
    return f"cannot write {what} file {path}: {error}"


# -- the zygote --------------------------------------------------------------------------------


class Zygote:
    def __init__(self, sock: socket.socket, executor: int, inherited: dict[int, object]) -> None:
        self.sock = sock
        self.executor = executor
        self.inherited = inherited
        self.me = os.getpid()
        self.buffer = b""
        self.jobs: dict[int, int] = {}  # shepherd pid -> request id
        self.starting: dict[int, int] = {}  # status pipe -> shepherd pid, until settled
        self.refused: set[int] = set()  # shepherds whose start failed: their end is not told
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller = select.poll()

    def tell(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8", "replace") + b"\n")

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.poller.register(self.sock.fileno(), select.POLLIN)
        self.poller.register(self.wake_r, select.POLLIN)
        while True:
            try:
                events = self.poller.poll()
            except InterruptedError:
                events = []
            for fd, _ in events:
                if fd == self.wake_r:
                    self.drain_wakeups()
                elif fd in self.starting:
                    self.settle(fd)
                elif fd == self.sock.fileno() and not self.receive():
                    return
            self.reap()

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def receive(self) -> bool:
        """Read what the executor sent and serve every complete request; False at its end."""
        try:
            data, ancillary, _, _ = self.sock.recvmsg(
                1 << 16, socket.CMSG_SPACE(MAX_FDS_PER_READ * 4), socket.MSG_CMSG_CLOEXEC
            )
        except InterruptedError:
            return True
        except ConnectionResetError:
            return False
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                # The shepherds open the jobs' files: a descriptor sent anyway is not kept.
                usable = len(payload) - len(payload) % 4
                for fd in struct.unpack(f"{usable // 4}i", payload[:usable]):
                    os.close(fd)
        if not data:
            return False
        self.buffer += data
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if size > MAX_REQUEST:
                raise SystemExit(f"tm zygote: request of {size} bytes: out of step, exiting")
            if len(self.buffer) < HEADER.size + size:
                break
            body = self.buffer[HEADER.size : HEADER.size + size]
            self.buffer = self.buffer[HEADER.size + size :]
            self.start(parse_request(body))
        return True

    def start(self, request: Request) -> None:
        job = request.id
        try:
            status_r, status_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            self.tell(f"F {job} the executor's zygote cannot prepare the start: {e.strerror}")
            return
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, shim.CONTROL_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(status_r)
            os.close(status_w)
            self.tell(f"F {job} cannot fork the job's shepherd: {e.strerror or e}")
            return
        if pid == 0:
            code = 125
            try:
                code = self.become_shepherd(request, status_w)
            except BaseException as e:
                shim._say(f"the job's shepherd failed: {e!r}")
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(status_w)
        self.jobs[pid] = job
        self.starting[status_r] = pid  # "S" once it has opened the job's files
        self.poller.register(status_r, select.POLLIN)

    def settle(self, status: int) -> None:
        """The shepherd has said how opening the job's files went (or ended without a word)."""
        try:
            message = os.read(status, 4100)
        except BlockingIOError:
            return
        pid = self.starting.pop(status)
        self.poller.unregister(status)
        os.close(status)
        job = self.jobs[pid]
        if message.startswith(b"+"):
            self.tell(f"S {job} {pid} {message[1:2].decode() or '0'}")
            return
        self.refused.add(pid)
        try:
            self.tell(f"R {job} {refusal(message)}")
        except ValueError:
            self.tell(f"F {job} the job's shepherd ended before it opened the job's files")

    def become_shepherd(self, request: Request, status: int) -> int:
        """In the forked child: the zygote's state goes, the status pipe becomes fd 3."""
        signal.set_wakeup_fd(-1)
        for sig in shim.CONTROL_SIGNALS:
            signal.signal(sig, shim._ignore)
        os.dup2(status, STATUS_FD, inheritable=False)
        # The socket, the wake-up pipe and the status pipes of other starts: a shepherd holding
        # the socket would hide the zygote's death from the executor.
        os.closerange(STATUS_FD + 1, 1 << 16)
        if not 0 <= request.umask <= 0o777:
            shim._say(f"invalid umask {request.umask!r}")
            return 125
        return shim.shepherd(
            request.grace,
            request.umask,
            request.cwd,
            request.shell,
            request.command,
            self.inherited,
            env=request.env,
            parent=self.me,
            open_files=lambda: open_files(request.cwd, request.umask, request.files),
        )

    def reap(self) -> None:
        while self.jobs:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for pipe, starting in list(self.starting.items()):
                if starting == pid:
                    self.settle(pipe)  # it has ended: its word is there, or none will come
            job = self.jobs.pop(pid, None)
            if pid in self.refused:
                self.refused.discard(pid)
            elif job is not None:
                self.tell(
                    f"E {job} {pid} {status} {usage.ru_utime:.6f} {usage.ru_stime:.6f} "
                    f"{usage.ru_maxrss}"
                )


def main(argv: list[str]) -> int:
    if len(argv) != 3 or not argv[1].isdigit() or argv[2] not in ("native", "python"):
        shim._say("usage: zygote.py EXECUTOR_PID native|python (with fd 3 the executor's socket)")
        return 125
    executor = int(argv[1])
    native: Any = None
    if argv[2] == "native":
        try:
            native = importlib.import_module("_shepherd")  # tm/executor/_shepherd.c
        except ImportError as e:
            shim._say(f"the compiled shepherd cannot be loaded: {e}")
            return 125
    # The dispositions a job's shell gets back, as the shepherd would have found them.
    inherited: dict[int, object] = {sig: signal.getsignal(sig) for sig in shim.CONTROL_SIGNALS}
    shim._prctl(shim.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != executor:
        return 0  # the executor is gone already
    sock = socket.socket(fileno=CONTROL_FD)
    sock.set_inheritable(False)
    try:
        if native is not None:
            ignored = sum(1 << (sig - 1) for sig, d in inherited.items() if d == signal.SIG_IGN)
            native.serve(sock.fileno(), ignored)
        else:
            Zygote(sock, executor, inherited).serve()
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the executor closed its end, or the terminal's ^C reached its whole group
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
