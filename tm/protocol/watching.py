"""The commands for watching jobs from outside: waiting for many jobs at once and reading a
job's output through the executor that runs it. Part of the vocabulary of
:mod:`tm.protocol.commands` (which re-exports them); kept apart for its size.

* client -> TMS -> dispatcher: ``WaitJobs``, ``ReadOutput``;
* dispatcher -> TMMS: ``ReadOutput`` (the executor serves only the files of the jobs it
  started itself, whose paths came with the user's signed start order).
"""

from __future__ import annotations

from twisted.protocols import amp

from tm.protocol.records import JSON, Float64, Int64

#: Bytes one ReadOutput answers at most: base64 in one AMP value (64 KiB at most).
MAX_READ_BYTES = 32 * 1024
#: Ranges of job ids one WaitJobs names at most.
MAX_WAIT_RANGES = 500


def _errors() -> dict[type[Exception], bytes]:
    from tm.protocol.commands import COMMON_ERRORS

    return COMMON_ERRORS


class WaitJobs(amp.Command):
    """Counts per state of the jobs named (``ranges`` of ids, inclusive, and/or a ``group``),
    answered as soon as they differ from ``known`` (the counts the caller has), or after
    ``timeout`` seconds. ``failed``: the jobs that ended otherwise than ``finished`` (the
    first ones by id, with their exit code, signal and reason). ``strict``: every id of
    ``ranges`` must be a job of the caller (else UnknownJob)."""

    commandName = b"WaitJobs"
    arguments = [
        (b"ranges", JSON()),  # [[first, last], ...]
        (b"group", amp.Unicode(optional=True)),
        (b"known", JSON()),  # {state: count}
        (b"timeout", Float64()),
        (b"strict", amp.Boolean(optional=True)),
    ]
    response = [
        (b"counts", JSON()),  # {state: count}
        (b"failed", JSON()),  # [{id, state, exit_code, signal, reason}, ...]
    ]
    errors = _errors()


class ReadOutput(amp.Command):
    """Up to ``length`` bytes of a job's stdout or stderr (``stream``: "out" | "err") from
    ``offset``; ``size``: the file's size now; ``missing``: there is no such file (an empty
    stderr file is removed at the job's end)."""

    commandName = b"ReadOutput"
    arguments = [
        (b"job_id", Int64()),
        (b"stream", amp.Unicode()),
        (b"offset", Int64()),
        (b"length", Int64()),
    ]
    response = [
        (b"data", amp.Unicode()),  # base64: JSON carries it too (the local socket)
        (b"size", Int64()),
        (b"missing", amp.Boolean()),
        (b"path", amp.Unicode()),
    ]
    errors = _errors()
