"""The AMP commands of retries' and callbacks' second half: ends told to the user's TMS, and
resubmission (issue 11, points 3 and 7). Beside :mod:`tm.protocol.commands` (the rest of
the vocabulary), with the same conventions: a pinned ``commandName``, the common errors.

* dispatcher -> TMS: ``JobEnded`` -- jobs of the TMS's user that have an on-end callback
  ended (pushed once their end is committed);
* TMS -> dispatcher: ``PendingCallbacks`` (at each link: ended jobs whose callback has not
  run, e.g. because the TMS was away) and ``CallbackRan`` (done, whatever the outcome);
* client -> TMS: ``ResubmitJobs`` -- copies of ended jobs, re-signed by the TMS.

A job's end travels as a JSON object (:func:`ended_job`): ``id``, ``uuid``, ``group``,
``state``, ``exit_code``, ``signal``, ``run_time``, ``reason``, ``cwd``, ``on_end``.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols import amp

from tm.core.model import Job
from tm.protocol.commands import COMMON_ERRORS
from tm.protocol.records import JSON, Int64

#: Ended jobs in one JobEnded or PendingCallbacks answer (each at most ~10 KB: its on-end
#: command and directory are bounded by the submission's limits).
ENDS_PER_MESSAGE = 5


class _Command(amp.Command):
    errors = COMMON_ERRORS


class JobEnded(_Command):
    """Dispatcher -> TMS: these jobs of yours, with an on-end callback, have ended."""

    commandName = b"JobEnded"
    arguments = [(b"jobs", JSON())]
    response = []


class PendingCallbacks(_Command):
    """TMS -> dispatcher: a page of your ended jobs whose on-end callback has not run."""

    commandName = b"PendingCallbacks"
    arguments = [(b"after_id", Int64())]
    response = [(b"jobs", JSON()), (b"next_after_id", Int64(optional=True))]


class CallbackRan(_Command):
    """TMS -> dispatcher: the on-end callbacks of these jobs ran (or never will)."""

    commandName = b"CallbackRan"
    arguments = [(b"job_ids", amp.ListOf(Int64()))]
    response = []


class ResubmitJobs(_Command):
    """Client -> TMS: submit copies of ended jobs of yours -- one job, or a group's ended
    (``failed_only``: unsuccessful) jobs. Answers the new ids, in the order of the old."""

    commandName = b"ResubmitJobs"
    arguments = [
        (b"job_id", Int64(optional=True)),
        (b"group", amp.Unicode(optional=True)),
        (b"failed_only", amp.Boolean(optional=True)),
    ]
    response = [
        (b"job_ids", amp.ListOf(Int64())),
        (b"old_ids", amp.ListOf(Int64())),
        (b"warnings", amp.ListOf(amp.Unicode(), optional=True)),
    ]


def ended_job(job: Job) -> dict[str, Any]:
    """What the TMS is told of an ended job with an on-end callback."""
    run_time = None
    if job.started_at is not None and job.ended_at is not None:
        run_time = max(0.0, job.ended_at - job.started_at)
    return {
        "id": job.id,
        "uuid": job.uuid,
        "group": job.spec.group,
        "state": job.state.value,
        "exit_code": job.exit_code,
        "signal": job.signal,
        "run_time": run_time,
        "reason": job.reason[:500],
        "cwd": job.cwd,
        "on_end": job.spec.on_end,
    }
