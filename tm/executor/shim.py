"""Per-job shepherd: runs a job's shell and keeps the job's whole process tree under control.

This docstring is the shepherd's contract. The executor's shepherds are normally the compiled
twin of this module (``tm/executor/_shepherd_job.c``, forked by the compiled zygote of ``_shepherd.c``); this one runs
where that is not built, under the Python zygote (:mod:`tm.executor.zygote`) or alone.

Run as: python -I -S shim.py GRACE UMASK_OCTAL CWD SHELL COMMAND

The runner starts every job through this file. The shepherd marks itself a child subreaper
(``prctl(PR_SET_CHILD_SUBREAPER)``), calls ``setsid()``, sets the umask, changes to CWD and forks;
the child execs ``SHELL -c COMMAND`` and the shepherd stays. As a subreaper it inherits every
descendant whose parent dies (a double-forked daemon, the background child of a shell that has
exited), so the job is always exactly the set of processes whose parent chain leads to the
shepherd, including those that called ``setsid()`` and so left the job's group and session.
No cgroups and no privileges are needed.

Signals to the shepherd are its control protocol:

``SIGTERM``, ``SIGINT``, ``SIGHUP``
    Kill the tree. Freeze it first (``SIGSTOP`` to every descendant, walking ``/proc`` again until
    a walk finds every descendant stopped, so a forking loop cannot outrun the walk), then send
    ``SIGTERM`` and ``SIGCONT`` to all. After GRACE seconds, ``SIGKILL`` whatever is left, walking
    again until nothing is left. INT and HUP are handled like TERM: each asks a process to end,
    and the shepherd must never go away leaving the job's tree behind.
``SIGUSR1``
    Stop the tree: ``SIGSTOP`` every descendant, frozen as above. The shepherd keeps running.
``SIGUSR2``
    Continue the tree: ``SIGCONT`` every descendant.

If the executor that started the shepherd dies, the shepherd gets ``SIGTERM``
(``PR_SET_PDEATHSIG``) and kills the tree: nobody would report the job's end any more, and the
dispatcher requeues the job once the executor's lease runs out, so the old copy must not run on.

The shepherd reaps every process it inherits. When the shell exits, the job is over: anything
still running (background processes) is killed as on TERM, since a job's slots are freed at its
end and nothing of it may linger. The shepherd then exits with the shell's status: the same exit
code or, if the shell died by a signal, by the same signal (with core dumps of its own disabled),
so the runner sees what it would have seen from the shell itself.

Exit codes of its own: 125 bad usage, 126 cannot change to CWD, 127 cannot execute SHELL, each with
a message on stderr, which is the job's stderr file.

Under the zygote the shepherd also opens the job's files, after its ``setsid`` and before its
umask and ``chdir`` (``open_files`` of :mod:`tm.executor.zygote`, which describes it; a failure
is reported by the zygote as a failed start, not an end). A stderr file made for the job and
still empty at its end is then removed by the shepherd itself when no log file is asked for.

Control signals stay blocked in the shepherd and are taken with ``sigwaitinfo``. They are blocked
(then caught) before anything else happens, so the runner can tell from ``SigBlk``/``SigCgt`` in
``/proc/PID/status`` when ``SIGUSR1`` and ``SIGUSR2`` stop being fatal to a starting shepherd.

The shell starts with an empty signal mask and with SIGPIPE and SIGXFSZ at their default action
(Python ignores both at start-up, and a shell exec'd from Python used to inherit that), and with
``PR_SET_PDEATHSIG`` set to SIGKILL, so that it does not outlive a shepherd killed outright.

Known limits: a process that is sent ``SIGKILL`` while in uninterruptible sleep dies only when the
sleep ends; if the shepherd itself is killed with ``SIGKILL``, its descendants other than the shell
are reparented above it and only those left in its process group are still found (by the
runner's ``killpg`` at the end; its last resort walks ``/proc`` *before* killing the shepherd); pids read from ``/proc`` may in
principle be reused between the walk and the signal by a process that the job's own (not yet
stopped) processes reaped, which the freeze keeps to a tiny window.

The module imports only os, sys, signal, time and ctypes so that it starts fast and cannot be
affected by the job's environment; the runner imports its ``/proc`` helpers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36

KILL_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
CONTROL_SIGNALS = KILL_SIGNALS | {signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD}

# Per /proc/PID/stat: Z zombie, X/x dead; T stopped by a signal, t stopped by a tracer.
DEAD_STATES = frozenset("ZXx")
STOPPED_STATES = frozenset("Tt")

FREEZE_BUDGET = 1.0  # seconds to wait for every descendant to show as stopped
KILL_BUDGET = 2.0  # seconds to wait, after SIGKILL, for descendants to be gone
POLL = 0.02


# -- the process table ---------------------------------------------------------------------------


def parse_stat(data: bytes) -> tuple[int, str] | None:
    """``(ppid, state)`` from the text of ``/proc/PID/stat``, or None if it cannot be parsed.

    The second field is the command name in parentheses, which may itself contain spaces and
    parentheses, so the fields that follow are taken after the *last* ``)``.
    """
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 1 :].split()
    if len(fields) < 2:
        return None
    try:
        return int(fields[1]), fields[0].decode("ascii", "replace")
    except ValueError:
        return None


def process_table() -> dict[int, tuple[int, str]]:
    """``{pid: (ppid, state)}`` for every process visible in ``/proc``."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open("/proc/" + name + "/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue  # gone since the listing
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        parsed = parse_stat(data)
        if parsed is not None:
            table[int(name)] = parsed
    return table


def descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    """Every pid whose parent chain in ``table`` leads to ``root``, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = []
    frontier = [root]
    seen = {root}
    while frontier:
        parent = frontier.pop()
        for child in children.get(parent, ()):
            if child not in seen:  # guards against a cycle in a torn read of /proc
                seen.add(child)
                found.append(child)
                frontier.append(child)
    return found


def live_descendants(root: int) -> list[int]:
    """Descendants of ``root`` that are not zombies."""
    table = process_table()
    return [pid for pid in descendants(root, table) if table[pid][1] not in DEAD_STATES]


def send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass  # gone, or not ours: nothing more to do about it


def freeze(root: int, budget: float = FREEZE_BUDGET) -> list[int]:
    """Stop every live descendant of ``root``; return them as of the last walk.

    ``SIGSTOP`` takes effect asynchronously and a process may fork before it does, so walk again
    until a walk finds every descendant stopped (or dead). A stopped process cannot fork, so this
    ends even with a forking loop. ``budget`` bounds the wait for processes that cannot stop yet
    (uninterruptible sleep, e.g. a vfork parent whose child is stopped before exec).
    """
    deadline = time.monotonic() + budget
    while True:
        table = process_table()
        live = [pid for pid in descendants(root, table) if table[pid][1] not in DEAD_STATES]
        running = [pid for pid in live if table[pid][1] not in STOPPED_STATES]
        if not running or time.monotonic() >= deadline:
            return live
        for pid in running:
            send(pid, signal.SIGSTOP)
        time.sleep(0.001)


# -- the shepherd --------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        libc = _libc
        return (
            libc.prctl(
                option,
                ctypes.c_ulong(value),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            )
            == 0
        )
    except (OSError, AttributeError):
        return False


def _ignore(signum: int, frame: object) -> None:
    """Installed for the control signals so that none of them is ignored while blocked."""


class Shepherd:
    def __init__(self, child: int, grace: float) -> None:
        self.me = os.getpid()
        self.child = child
        self.grace = grace
        self.status: int | None = None  # the shell's wait status, once reaped

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.status = status

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for a control signal, reaping on SIGCHLD; return the signal."""
        info = signal.sigtimedwait(CONTROL_SIGNALS, max(timeout, 0.0))
        self.reap()
        return None if info is None else info.si_signo

    def run(self) -> int:
        """Serve control signals until the shell has exited; return its wait status."""
        while self.status is None:
            signum = signal.sigwaitinfo(CONTROL_SIGNALS).si_signo
            self.reap()
            if signum in KILL_SIGNALS:
                self.kill_tree()
            elif signum == signal.SIGUSR1:
                freeze(self.me)
            elif signum == signal.SIGUSR2:
                for pid in live_descendants(self.me):
                    send(pid, signal.SIGCONT)
        # The shell has exited: the job is over, whatever it left running goes with it. As a
        # subreaper, the shepherd has been given the shell's orphans before the shell's own
        # exit was reported: with no child left at all, nothing of the job is left anywhere
        # below it, and no walk of /proc is needed (the common case, and the cheap one).
        status = self.status
        if self.has_children() and live_descendants(self.me):
            self.kill_tree()
        self.reap()
        return status

    def has_children(self) -> bool:
        """Whether any child (running, or a zombie not yet reaped) is left below the shepherd."""
        self.reap()
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return True

    def kill_tree(self) -> None:
        # Frozen first, so that every process that exists gets TERM, even in a forking loop.
        tree = freeze(self.me)
        for pid in tree:
            send(pid, signal.SIGTERM)
        for pid in tree:
            send(pid, signal.SIGCONT)
        deadline = time.monotonic() + self.grace
        while live_descendants(self.me) and time.monotonic() < deadline:
            # Kill signals that arrive meanwhile are taken and dropped: this is already on it.
            self.wait(min(POLL, deadline - time.monotonic()))
        # KILL cannot be caught, and a process with KILL pending cannot fork, so each round kills
        # the whole frontier; orphans of killed processes come to us and show in the next walk.
        deadline = time.monotonic() + KILL_BUDGET
        while True:
            left = live_descendants(self.me)
            if not left or time.monotonic() >= deadline:
                break
            for pid in left:
                send(pid, signal.SIGKILL)
            self.wait(0.005)
        self.reap()


def _die_by(sig: int) -> int:
    """End this process by ``sig``, as the shell did; return an exit code if that fails."""
    _prctl(PR_SET_DUMPABLE, 0)  # the job may have dumped core; the shepherd must not add its own
    try:
        signal.signal(sig, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # KILL and STOP cannot be changed, and need not be
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    return 128 + sig  # only for a signal whose default action does not terminate


def _say(text: str) -> None:
    """One line on the job's stderr (fd 2): no buffered stream, so nothing lingers at a fork."""
    try:
        os.write(2, ("tm shim: " + text + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _exec_shell(
    shepherd: int,
    shell: str,
    command: str,
    inherited: dict[int, object],
    env: dict[str, str] | None,
) -> None:
    """In the forked child: undo the shepherd's signal set-up and become the shell."""
    try:
        for sig, disposition in inherited.items():
            # A disposition ignored when the shepherd started stays ignored, as with a plain exec.
            signal.signal(sig, signal.SIG_IGN if disposition == signal.SIG_IGN else signal.SIG_DFL)
        # Python itself ignores these at start-up; a job must see them with default action
        # (``yes | head -1`` must end yes by SIGPIPE, not with "Broken pipe" errors).
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # If the shepherd is ever killed outright, the shell goes with it.
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != shepherd:
            os._exit(128 + signal.SIGKILL)
        if env is None:
            os.execvp(shell, [shell, "-c", command])
        else:
            os.execvpe(shell, [shell, "-c", command], env)
    except OSError as e:
        _say(f"cannot execute shell {shell}: {e.strerror}")
    except BaseException:
        pass
    os._exit(127)


def _tidy(path: str, remove: bool) -> None:
    """Remove ``path`` if ``remove`` and it is an empty regular file."""
    if not remove:
        return
    try:
        info = os.lstat(path)
        if info.st_mode & 0o170000 == 0o100000 and info.st_size == 0:
            os.unlink(path)
    except OSError:
        pass


def take_control_signals() -> dict[int, object]:
    """Block the control signals and catch them (they are taken with sigwaitinfo); return the
    dispositions they had, which the shell gets back."""
    signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)
    inherited: dict[int, object] = {sig: signal.getsignal(sig) for sig in CONTROL_SIGNALS}
    for sig in CONTROL_SIGNALS:
        signal.signal(sig, _ignore)
    return inherited


def shepherd(
    grace: float,
    umask: int,
    cwd: str,
    shell: str,
    command: str,
    inherited: dict[int, object],
    env: dict[str, str] | None = None,
    parent: int | None = None,
    open_files: Callable[[], tuple[str, bool]] | None = None,
) -> int:
    """Be the job's shepherd, its control signals already taken; return its exit code (or
    die by the shell's signal).

    ``parent``: the process whose death must take the job down (the executor, or the zygote
    that forked this shepherd); by default the current parent. ``env``: the shell's
    environment; by default this process's own. ``open_files()``: opens the job's files (0, 1,
    2 are them already if not given) and says which stderr file to remove at the end if empty.
    """
    if not _prctl(PR_SET_CHILD_SUBREAPER, 1):
        _say(
            "warning: cannot become a child subreaper; processes that leave the job's "
            "session may survive its end"
        )
    # If the executor that started us dies, nobody is left to report this job's end and the
    # dispatcher will run it again elsewhere: take the job down (as on TERM) rather than let
    # two copies run. The check after prctl covers an executor that died before it.
    if parent is None:
        parent = os.getppid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return 0
    # A new session makes pid == pgid, so the runner's last resort can also use killpg.
    try:
        os.setsid()
    except OSError:
        pass  # already a group leader: nothing to do
    stderr, remove_err = ("", False) if open_files is None else open_files()
    os.umask(umask)
    try:
        os.chdir(cwd)
    except OSError as e:
        _say(f"cannot change to working directory {cwd}: {e.strerror}")
        return 126
    # Killed before the shell even started: go the way the signal says, starting nothing.
    pending = KILL_SIGNALS & signal.sigpending()
    if pending:
        _tidy(stderr, remove_err)
        return _die_by(min(pending))
    me = os.getpid()
    child = os.fork()
    if child == 0:
        _exec_shell(me, shell, command, inherited, env)
    status = Shepherd(child, grace).run()
    _tidy(stderr, remove_err)
    if os.WIFSIGNALED(status):
        return _die_by(os.WTERMSIG(status))
    return os.waitstatus_to_exitcode(status)


def main(argv: list[str]) -> int:
    # First of all, so that USR1/USR2 are never fatal once the runner sees them blocked.
    inherited = take_control_signals()
    if len(argv) != 6:
        _say("usage: shim.py GRACE UMASK CWD SHELL COMMAND")
        return 125
    grace_text, umask_text, cwd, shell, command = argv[1:6]
    try:
        grace = float(grace_text)
        if not grace >= 0:
            raise ValueError(grace_text)
    except ValueError:
        _say(f"invalid grace {grace_text!r}")
        return 125
    try:
        umask = int(umask_text, 8)
    except ValueError:
        _say(f"invalid umask {umask_text!r}")
        return 125
    return shepherd(grace, umask, cwd, shell, command, inherited)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
