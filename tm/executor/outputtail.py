"""The executor's answer to ``OutputTail``: the end of a running job's output file.

Read as the job's user (the executor runs as the user), in the executor's file-system pool
(the file may be on NFS), only from the files the runner opened for that attempt: the
dispatcher names a job, never a path (a dispatcher that could name paths could read any of
the user's files).
"""

from __future__ import annotations

import errno
from typing import Any

from twisted.protocols import amp

from tm.executor.outputs import read_bytes
from tm.protocol import commands
from tm.protocol.webcommands import MAX_TAIL_BYTES, OutputTail


def read_tail(path: str, limit: int) -> tuple[int, bytes]:
    """The file's size and its last ``limit`` bytes (a link is not followed: OSError)."""
    read = read_bytes(path, -limit, limit, follow_links=False)
    if read is None:
        raise FileNotFoundError(errno.ENOENT, "no such regular file", path)
    return read


class OutputTailResponder(amp.CommandLocator):
    """A part of the executor's locator (``self.executor``: the executor service)."""

    executor: Any

    @OutputTail.responder
    async def output_tail(self, job_id: int, attempt: int, stream: str, limit: int) -> dict:
        self.executor.heard_from_dispatcher()
        if stream not in ("out", "err"):
            raise commands.InvalidRequest(f"unknown stream {stream!r}: out or err")
        paths = self.executor.runner.output_paths(job_id, attempt)
        if paths is None:
            return {"found": False, "path": "", "size": 0, "data": ""}
        path = paths[0] if stream == "out" else paths[1]
        if not path:  # no such file for this job (e.g. stderr sent to stdout)
            return {"found": True, "path": "", "size": 0, "data": ""}
        limit = max(0, min(limit, MAX_TAIL_BYTES))
        try:
            size, data = await self.executor._in_pool(read_tail, path, limit)
        except OSError as e:
            raise commands.InvalidRequest(
                f"cannot read {path}: {e.strerror or e.__class__.__name__}"
            ) from None
        # Cut at a line start when the tail begins mid-file, so no half character shows.
        if size > len(data) and b"\n" in data[:-1]:
            data = data[data.index(b"\n") + 1 :]
        return {"found": True, "path": path, "size": size, "data": data.decode("utf-8", "replace")}
