"""Which executor start commands a user's TMS runs (issue 10 point 2).

The dispatcher names a host's start command (``tmmenial_command`` in ``etc/cluster.tab``),
but whoever edits that table (the dispatcher's account) must not choose what runs as each
user. So the TMS runs its own ``twistd tmmenial`` when the table names none, and a named
command only when a configuration the user trusts lists it: ``~/.taskmanager/tmmenial_commands``
(the user's own) or ``/etc/taskmanager/tmmenial_commands`` (root's), one command a line,
``#`` for comments, neither writable by group or others. A command is compared word by word
(as the shell would split it), so spacing and quoting do not matter.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred

from tm.link import user_dir

SYSTEM_COMMANDS = Path("/etc/taskmanager/tmmenial_commands")
FILE_NAME = "tmmenial_commands"


def user_commands_path() -> Path:
    return user_dir() / FILE_NAME


def _read(path: Path) -> tuple[list[list[str]], str | None]:
    """The commands ``path`` lists, and why it was not read (None when it was, or when it
    does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return [], None
    except OSError as e:
        return [], f"{path} cannot be read: {e.strerror}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return [], f"{path} is not a regular file"
        if st.st_uid not in (0, os.getuid()):
            return [], f"{path} is not owned by root or you: ignored"
        if st.st_mode & 0o022:
            return [], f"{path} is writable by group or others: ignored (chmod go-w {path})"
        with os.fdopen(fd, "rb", closefd=False) as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    finally:
        os.close(fd)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(shlex.split(line))
        except ValueError:
            continue  # unbalanced quotes: matches nothing
    return out, None


def start_command_refusal(command: str) -> str | None:
    """Why the TMS must not run ``command`` (a host's tmmenial_command); None if it may.

    The default (an empty command) is always allowed: it is this TMS's own twistd."""
    if not command.strip():
        return None
    try:
        words = shlex.split(command)
    except ValueError as e:
        return f"bad tmmenial_command {command!r}: {e}"
    problems = []
    for path in (user_commands_path(), SYSTEM_COMMANDS):
        allowed, problem = _read(path)
        if problem:
            problems.append(problem)
        if words in allowed:
            return None
    why = f" ({'; '.join(problems)})" if problems else ""
    return (
        f"the start command {command!r} (tmmenial_command in the cluster table) is not one "
        f"your installation allows{why}: if you trust it, add it as a line to "
        f"{user_commands_path()}"
    )


def start_failure_reason(output: bytes, code: int | None) -> str:
    """One line that says why an executor start failed, from what the command printed."""
    text = output.decode("utf-8", "replace")
    running = re.search(r"Another twistd server is running, PID (\d+)", text)
    if running:
        return (
            f"an executor of yours is already running there (pid {running.group(1)}) but "
            "is not connected; it reconnects by itself, or stop it"
        )
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else f"the start command exited with {code}")[:500]


class LauncherProtocol(protocol.ProcessProtocol):
    """Collects what a starting TMMS (or ssh) says, and how it ends."""

    def __init__(self) -> None:
        self.output = b""
        self.done: Deferred = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802
        if len(self.output) < 8192:
            self.output += data

    def processEnded(self, reason: Any) -> None:  # noqa: N802
        self.done.callback(getattr(reason.value, "exitCode", None))
