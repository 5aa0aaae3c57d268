"""The executor's side of reading a job's output from elsewhere, and tidying its files.

``ReadOutput`` (the dispatcher relays it for its user's client) reads a byte range of the
stdout or stderr file of a job **this executor started**: the paths come from the start
order it checked against the user's signature, never from the request, so neither the
dispatcher nor anyone else can make it read another file of its user. The paths of the last
:data:`REMEMBERED` jobs are kept after their end (while the executor lives).

At a job's end, a stderr file that the executor created for it and that is still empty is
removed (no empty ``ID.err`` per job), unless it is also the stdout file.
"""

from __future__ import annotations

import base64
import os
import stat
from collections import OrderedDict
from typing import Any

from twisted.protocols import amp

from tm.protocol import commands
from tm.protocol.watching import MAX_READ_BYTES

#: Jobs whose output paths an executor remembers after their end.
REMEMBERED = 4096


class OutputPaths:
    """job id -> (stdout path, stderr path), the newest :data:`REMEMBERED` jobs."""

    def __init__(self) -> None:
        self._paths: OrderedDict[int, tuple[str, str]] = OrderedDict()

    def remember(self, job_id: int, stdout_path: str, stderr_path: str) -> None:
        self._paths[job_id] = (stdout_path, stderr_path)
        self._paths.move_to_end(job_id)
        while len(self._paths) > REMEMBERED:
            self._paths.popitem(last=False)

    def get(self, job_id: int) -> tuple[str, str] | None:
        return self._paths.get(job_id)


def read_bytes(
    path: str, offset: int, length: int, follow_links: bool = True
) -> tuple[int, bytes] | None:
    """The size of ``path`` and up to ``length`` of its bytes from ``offset`` (a negative one
    counts from the end); None when it is missing or not a regular file. May block (NFS): run
    it off the reactor. ``follow_links`` False: a symbolic link raises OSError (ELOOP)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        start = max(0, info.st_size + offset) if offset < 0 else offset
        return info.st_size, os.pread(fd, length, start) if length > 0 else b""
    finally:
        os.close(fd)


def read_range(path: str, offset: int, length: int) -> dict[str, Any]:
    """Up to ``length`` bytes of ``path`` from ``offset`` (the answer of ReadOutput); may
    block (NFS): run it off the reactor. Never follows the file past a regular file."""
    read = read_bytes(path, max(0, offset), length)
    if read is None:
        return {"data": "", "size": 0, "missing": True, "path": path}
    size, data = read
    return {
        "data": base64.b64encode(data).decode("ascii"),
        "size": size,
        "missing": False,
        "path": path,
    }


def remove_if_empty(path: str) -> bool:
    """Remove ``path`` if it is an empty regular file; whether it was removed."""
    try:
        info = os.lstat(path)
        if stat.S_ISREG(info.st_mode) and info.st_size == 0:
            os.unlink(path)
            return True
    except OSError:
        pass
    return False


def finish_files(
    request: Any, stdout_path: str, stderr_path: str, end: Any, remove_empty_stderr: bool
) -> None:
    """At a job's end, off the reactor: write its ``-l`` log file if it asked for one, then
    remove its stderr file if it was made for the job and stayed empty."""
    from tm.executor.request import write_logfile

    try:
        if request.logfile is not None:
            write_logfile(request, stdout_path, stderr_path, end)
    finally:
        if remove_empty_stderr:
            remove_if_empty(stderr_path)


class OutputLocator(amp.CommandLocator):
    """The executor's ReadOutput responder (a base of its command locator)."""

    executor: Any

    @commands.ReadOutput.responder
    async def read_output(self, job_id: int, stream: str, offset: int, length: int) -> dict:
        """A byte range of the output of a job started here."""
        executor = self.executor
        executor.heard_from_dispatcher()
        paths = executor.runner.remembered_outputs.get(job_id)
        if paths is None or stream not in ("out", "err"):
            raise commands.UnknownJob(
                f"the executor on {executor.host} did not start job {job_id} (or has "
                "forgotten it): its output is not served from there"
            )
        path = paths[0] if stream == "out" else paths[1]
        length = max(0, min(length, MAX_READ_BYTES))
        try:
            return await executor._in_pool(read_range, path, offset, length)
        except OSError as e:
            raise commands.InvalidRequest(
                f"cannot read {path} on {executor.host}: {e.strerror or e}"
            ) from None
