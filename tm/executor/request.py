"""A job as the runner is asked to run it and as it ended, the checks of a request, and the
job's files.

:class:`RunRequest` is a start order, :class:`JobEnd` an end, :class:`JobStartError` a start
that cannot succeed (its reason in words a user understands). :func:`check_request` refuses what
the shepherd would choke on; :func:`output_files` says where the job's output goes, for a
shepherd that opens its files itself (the zygote's: no file-system work in the executor);
:func:`open_outputs` (at a start, for the other launchers) and :func:`write_logfile` (at an
end) do file-system work that may block (a slow or NFS file system), so the runner runs them
off the reactor thread. Nothing here touches the runner's state.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tm.core import jobfields

DEFAULT_LOG_DIR = os.path.join(os.path.expanduser("~"), ".taskmanager", "logs")
LOGFILE_SECTION_CAP = 10 * 1024 * 1024
T = TypeVar("T")

#: A start failure's reason travels in one AMP value (64 KiB at most) and into the job's
#: history: a path of any length in it is shortened in the middle.
MAX_REASON = 1000


class JobStartError(Exception):
    """The job could not be started; ``reason`` says why in words a user understands."""

    def __init__(self, reason: str) -> None:
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON * 2 // 3] + " ... " + reason[-(MAX_REASON // 3 - 5) :]
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RunRequest:
    """A start order: ``job_id``, ``attempt``, ``env`` and the job's fields of
    ``tm.core.jobfields.RUN`` (``test_jobfields.py`` checks the two agree); an output path
    not given is None."""

    job_id: int
    attempt: int
    command: str
    shell: str = "/bin/sh"
    cwd: str = "/"
    umask: int = 0o022
    env: dict[str, str] = field(default_factory=dict)
    stdout: str | None = None
    stderr: str | None = None
    logfile: str | None = None
    slots: int = 1
    #: Seconds from the start after which the runner stops the job (it ends ``timed_out``).
    time_limit: float | None = None
    array_index: int | None = None  # a job of an array: its signed index (TM_ARRAY_INDEX)

    @classmethod
    def from_order(cls, job_id: int, attempt: int, order: dict[str, Any]) -> RunRequest:
        """The request of a RunJob's arguments (``order``: all but ``job_id`` and ``attempt``)."""
        env = order["env"]
        if not isinstance(env, dict):
            raise JobStartError("the environment is not a mapping of names to values")
        # An optional field (added later: the time limit, an array's index) may be absent.
        values: dict[str, Any] = {
            f.name: order.get(f.name) if f.optional else order[f.name] for f in jobfields.RUN_FIELDS
        }
        for name in _PATHS:
            values[name] = values[name] or None
        return cls(job_id=job_id, attempt=attempt, env=dict(env), **values)


#: The output paths of a start order: "" says "not given", the default place.
_PATHS = ("stdout", "stderr", "logfile")


@dataclass(frozen=True)
class JobEnd:
    job_id: int
    attempt: int
    exit_code: int | None
    signal: int | None
    killed: bool
    started_at: float
    ended_at: float
    reason: str
    #: The end is not known (the process that reaped the shepherd ended first): the job's tree
    #: has been killed, and the dispatcher should run the job again.
    lost: bool = False
    #: CPU seconds (user, system) and largest resident set (KiB) of the job's whole tree, when
    #: the launcher knows them (the zygote does, from wait4).
    cpu_user: float | None = None
    cpu_system: float | None = None
    max_rss_kib: int | None = None
    #: Stopped by the runner at the request's time limit.
    timed_out: bool = False


@dataclass(frozen=True)
class OutputFiles:
    """Where a job's output goes, for a shepherd that opens the files itself after its fork
    (the zygote's), with the rules of :func:`open_outputs`; the paths as it resolved them."""

    stdout: str
    stderr: str  # the same path as stdout: one file for both
    logfile: str | None  # opened (created, truncated) at the start: unwritable fails it
    log_dir: str | None  # a default path is in it: created first (0700) if missing


@dataclass
class JobOutputs:
    """The files of a job, opened (off the reactor) before it is spawned."""

    stdout_path: str
    stderr_path: str
    null_fd: int
    out_fd: int
    err_fd: int
    fds: list[int]  # every descriptor above, each once: closed once the job is spawned
    #: The stderr file was made for this job (not there before): removed at the end if empty.
    stderr_created: bool = False

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def closing(self, result: T) -> T:
        """Close the files and pass ``result`` on (a callback once the job is spawned)."""
        self.close()
        return result


# -- checks and file work (the file work runs where it may block, off the reactor) ------------


def _nul(value: str) -> bool:
    return "\0" in value


def _shown(name: str, limit: int = 40) -> str:
    """A name quoted for a message, NUL bytes visible and its length bounded."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _plain_environment(env: dict[str, str]) -> bool:
    """Whether every name and value is text without NUL, every name non-empty without '='."""
    try:
        names = "".join(env)
        values = "".join(env.values())
    except TypeError:
        return False
    return "\0" not in names and "=" not in names and "\0" not in values and all(env)


def check_request(request: RunRequest) -> None:
    """Refuse, in words a user understands, what ``spawnProcess`` or the shim would choke on."""
    for value, what in (
        (request.command, "the command"),
        (request.shell, "the shell"),
        (request.cwd, "the working directory"),
        (request.stdout, "the stdout file name (-o)"),
        (request.stderr, "the stderr file name (-O)"),
        (request.logfile, "the log file name (-l)"),
    ):
        if value is not None and not isinstance(value, str):
            raise JobStartError(f"{what} is not text")
        if value is not None and _nul(value):
            raise JobStartError(f"{what} contains a NUL byte")
    if not request.cwd:
        raise JobStartError("the job has no working directory")
    if not request.shell:
        raise JobStartError("the job has no shell")
    if not isinstance(request.umask, int) or not 0 <= request.umask <= 0o777:
        raise JobStartError(f"the umask {request.umask!r} is not between 000 and 777 (octal)")
    if not isinstance(request.env, dict):
        raise JobStartError("the environment is not a mapping of names to values")
    if _plain_environment(request.env):
        return  # the common case, checked in one pass; else find what is wrong, and say it
    for name, value in request.env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise JobStartError(f"the environment variable {_shown(str(name))} is not text")
        if not name or "=" in name or _nul(name):
            raise JobStartError(
                f"the environment variable name {_shown(name)} is not valid "
                "(it is empty, or contains '=' or a NUL byte)"
            )
        if _nul(value):
            raise JobStartError(
                f"the value of the environment variable {_shown(name)} contains a NUL byte"
            )


def _resolve(request: RunRequest, path: str) -> str:
    return os.path.normpath(os.path.join(request.cwd, os.path.expanduser(path)))


def names_a_home(request: RunRequest) -> bool:
    """Whether a path of the job names a user's home (``~name/...``): :func:`output_files` then
    looks the user up (NSS: maybe a network service), which does not belong on a reactor."""
    return any(
        p and p.startswith("~") and not p.startswith("~/") and p != "~"
        for p in (request.stdout, request.stderr, request.logfile)
    )


def output_files(request: RunRequest, log_dir: str) -> OutputFiles:
    """The job's files as :func:`open_outputs` would open them, without touching them: no
    file-system work (a relative result is made absolute, as the shepherd changes directory).
    Paths that cannot be worked out raise :class:`JobStartError`."""
    try:
        return _output_files(request, log_dir)
    except (OSError, ValueError) as e:  # a relative path, and no current directory
        raise JobStartError(f"cannot prepare the job's files: {e}") from e


def _output_files(request: RunRequest, log_dir: str) -> OutputFiles:

    def where(given: str | None, suffix: str) -> str:
        path = (
            _resolve(request, given)
            if given
            else os.path.join(log_dir, f"{request.job_id}.{suffix}")
        )
        return path if os.path.isabs(path) else os.path.abspath(path)

    return OutputFiles(
        stdout=where(request.stdout, "out"),
        stderr=where(request.stderr, "err"),
        logfile=None if request.logfile is None else where(request.logfile, "log"),
        log_dir=None if request.stdout and request.stderr else log_dir,
    )


def _output_path(request: RunRequest, given: str | None, suffix: str, log_dir: str) -> str:
    if given:
        return _resolve(request, given)
    try:
        os.makedirs(log_dir, mode=0o700, exist_ok=True)
    except (OSError, ValueError) as e:
        raise JobStartError(
            f"cannot create log directory {log_dir}: {getattr(e, 'strerror', None) or e}"
        ) from e
    return os.path.join(log_dir, f"{request.job_id}.{suffix}")


def _open_output(path: str, mode: int, what: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    except (OSError, ValueError) as e:
        raise JobStartError(
            f"cannot write {what} file {path}: {getattr(e, 'strerror', None) or e}"
        ) from e


def _open_new_output(path: str, mode: int, what: str) -> tuple[int, bool]:
    """``path`` opened as _open_output does, and whether it was created now."""
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(path, flags, mode), True
    except FileExistsError:
        return _open_output(path, mode, what), False
    except (OSError, ValueError):
        return _open_output(path, mode, what), False


def open_outputs(request: RunRequest, log_dir: str) -> JobOutputs:
    """Check the working directory and open the job's files; may block (NFS).

    Pure file-system work, safe in a thread: it touches no runner state. On failure every
    descriptor it opened is closed again.
    """
    cwd = request.cwd
    stderr_created = False
    if not os.path.exists(cwd):
        raise JobStartError(f"working directory {cwd} does not exist")
    if not os.path.isdir(cwd):
        raise JobStartError(f"working directory {cwd} is not a directory")
    stdout_path = _output_path(request, request.stdout, "out", log_dir)
    stderr_path = _output_path(request, request.stderr, "err", log_dir)
    mode = 0o666 & ~request.umask
    opened: list[int] = []
    try:
        out_fd = _open_output(stdout_path, mode, "stdout")
        opened.append(out_fd)
        if stderr_path == stdout_path:
            err_fd = out_fd
        else:
            err_fd, stderr_created = _open_new_output(stderr_path, mode, "stderr")
            opened.append(err_fd)
        if request.logfile is not None:
            # Checked now so that an unwritable log file fails the start, not the end.
            opened.append(_open_output(_resolve(request, request.logfile), mode, "log"))
        null_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        opened.append(null_fd)
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    return JobOutputs(
        stdout_path=stdout_path,
        stderr_path=stderr_path,
        null_fd=null_fd,
        out_fd=out_fd,
        err_fd=err_fd,
        fds=opened,
        stderr_created=stderr_created,
    )


def write_logfile(request: RunRequest, stdout_path: str, stderr_path: str, end: JobEnd) -> None:
    """Assemble the ``-l`` log file: command, facts, stdout and stderr; may block (NFS)."""
    path = _resolve(request, request.logfile or "")

    def stamp(t: float) -> str:
        return datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")

    parts = [
        "BEGIN command\n",
        request.command,
        "\nEND command\n",
        "BEGIN info\n",
        f"host: {socket.gethostname()}\n",
        f"job: {request.job_id}\n",
        f"attempt: {request.attempt}\n",
        f"start time: {stamp(end.started_at)}\n",
        f"end time: {stamp(end.ended_at)}\n",
        f"run time: {end.ended_at - end.started_at:.3f} s\n",
        f"end: {end.reason}\n",
        "END info\n",
    ]
    for name, source in (("stdout", stdout_path), ("stderr", stderr_path)):
        parts.append(f"BEGIN {name}\n")
        parts.append(_read_capped(source))
        parts.append(f"END {name}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 & ~request.umask)
    with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
        f.write("".join(parts))


def _read_capped(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(LOGFILE_SECTION_CAP + 1)
    except OSError as e:
        return f"(cannot read {path}: {e.strerror})\n"
    truncated = len(data) > LOGFILE_SECTION_CAP
    text = data[:LOGFILE_SECTION_CAP].decode("utf-8", errors="replace")
    if text and not text.endswith("\n"):
        text += "\n"
    if truncated:
        text += f"(truncated at {LOGFILE_SECTION_CAP} bytes)\n"
    return text
