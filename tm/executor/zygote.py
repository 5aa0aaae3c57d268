"""The executor's zygote: one small process that forks a shepherd per job.

Run as: python -I -S zygote.py EXECUTOR_PID native|python, with fd 3 a connected Unix stream
socket to the executor (:mod:`tm.executor.launcher` starts it, chooses the implementation and
speaks to it).

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
fields ID, GRACE, UMASK (decimal), CWD, SHELL, COMMAND, then one ``KEY=VALUE`` per variable of
the job's environment (none of them can hold a NUL: they become ``execve``'s arguments). Each
request comes with three file descriptors (the job's stdin, stdout, stderr) passed with
``SCM_RIGHTS``; descriptors and requests come in the same order, so the zygote keeps the
descriptors received in a queue and gives each request the next three.

Answers, zygote -> executor, one line each:

``S ID PID``
    the shepherd of request ID was forked; PID is its pid.
``F ID REASON``
    it could not be forked (REASON is text for a user).
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
from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from tm.executor import shim
else:
    # A sibling file: the zygote runs with -I -S, outside the package (and importing the
    # package would import more than the zygote needs).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import shim

CONTROL_FD = 3
FDS_PER_JOB = 3
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
    env: dict[str, str]


def parse_request(body: bytes) -> Request:
    fields = [os.fsdecode(field) for field in body.split(b"\0")[:-1]]
    env = {}
    for entry in fields[6:]:
        key, _, value = entry.partition("=")
        env[key] = value
    cwd, shell, command = fields[3:6]
    return Request(int(fields[0]), float(fields[1]), int(fields[2]), cwd, shell, command, env)


class Zygote:
    def __init__(self, sock: socket.socket, executor: int, inherited: dict[int, object]) -> None:
        self.sock = sock
        self.executor = executor
        self.inherited = inherited
        self.me = os.getpid()
        self.buffer = b""
        self.fds: deque[int] = deque()
        self.jobs: dict[int, int] = {}  # shepherd pid -> request id
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def tell(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8", "replace") + b"\n")

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                events = []
            for fd, _ in events:
                if fd == self.wake_r:
                    self.drain_wakeups()
                elif not self.receive():
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
                usable = len(payload) - len(payload) % 4
                self.fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
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
        if len(self.fds) < FDS_PER_JOB:
            self.tell(f"F {job} the executor's zygote did not receive the job's files")
            return
        files = [self.fds.popleft() for _ in range(FDS_PER_JOB)]
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, shim.CONTROL_SIGNALS)
        try:
            pid = os.fork()
        except OSError as e:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            for fd in files:
                os.close(fd)
            self.tell(f"F {job} cannot fork the job's shepherd: {e.strerror or e}")
            return
        if pid == 0:
            code = 125
            try:
                code = self.become_shepherd(request, files)
            except BaseException as e:
                shim._say(f"the job's shepherd failed: {e!r}")
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in files:
            os.close(fd)
        self.jobs[pid] = job
        self.tell(f"S {job} {pid}")

    def become_shepherd(self, request: Request, files: list[int]) -> int:
        """In the forked child: the zygote's state goes, the job's files become 0, 1, 2."""
        signal.set_wakeup_fd(-1)
        for sig in shim.CONTROL_SIGNALS:
            signal.signal(sig, shim._ignore)
        for target, fd in enumerate(files):
            os.dup2(fd, target)  # dup2 clears close-on-exec on the copy
        # The socket, the wake-up pipe and the files of other requests received meanwhile: a
        # shepherd holding the socket would hide the zygote's death from the executor.
        os.closerange(3, 1 << 16)
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
        )

    def reap(self) -> None:
        while self.jobs:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.jobs.pop(pid, None)
            if job is not None:
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
