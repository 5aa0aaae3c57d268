"""The job path's batched commands between the dispatcher and an executor (issue 13, point 2).
Beside :mod:`tm.protocol.commands` (the rest of the vocabulary), with the same conventions.

* dispatcher -> TMMS: ``RunJobs`` -- the start orders placed in one reactor turn for one
  executor and one submission environment (sent once per batch): each order is ``RunJob``'s
  arguments but ``env``; answered once every order has its outcome (or after
  :data:`ANSWER_WITHIN` seconds), one result per order in the orders' order: ``pid`` and
  ``started_at`` (``RunJob``'s answer), ``error`` (the reason ``RunJob`` would have failed
  with as ``JobStartFailed``), or neither: still under way (e.g. its files on a hung file
  system), the dispatcher sends that order again alone as ``RunJob`` (which waits for the
  start under way: a repeated order never starts a job twice);
* TMMS -> dispatcher: ``JobsFinished`` -- the ends ready in one reactor turn (and those that
  became ready while earlier reports were in flight), each ``JobFinished``'s arguments;
  answered once every one of them is committed or refused: ``failed`` lists the positions
  of the ends not recorded (to be reported again, as a failed ``JobFinished``), ``error``
  says why (the first such reason).

A batch of one goes as the single command (``RunJob``, ``JobFinished``), whose semantics
the batch keeps end by end: a batch is never refused as a whole for one of its elements.
Both lists are :class:`~tm.protocol.rowlist.RowList` values, so a batch holds what fits in
one AMP value (:func:`~tm.protocol.records.fit_to_value`); a longer one goes in several.
"""

from __future__ import annotations

from twisted.protocols import amp

from tm.protocol.commands import JobFinished, _Command
from tm.protocol.records import JSON, RUN_JOB_ARGUMENTS, Float64, Int64
from tm.protocol.rowlist import rows_of

#: One start order of RunJobs: RunJob's arguments but the environment (the batch's).
ORDER_FIELDS: list[tuple[bytes, amp.Argument]] = [
    (key, arg) for key, arg in RUN_JOB_ARGUMENTS if key != b"env"
]
#: One order's outcome: its process (RunJob's answer), or why it did not start.
START_RESULT_FIELDS: list[tuple[bytes, amp.Argument]] = [
    (b"pid", Int64(optional=True)),
    (b"started_at", Float64(optional=True)),
    (b"error", amp.Unicode(optional=True)),
]
#: One end of JobsFinished: JobFinished's arguments.
END_FIELDS: list[tuple[bytes, amp.Argument]] = list(JobFinished.arguments)
#: Seconds an executor waits for the starts of a RunJobs before it answers without the ones
#: still under way (one start held by a hung file system holds only its own job).
ANSWER_WITHIN = 2.0
#: The characters of one start failure's reason in a RunJobs answer (every result must fit
#: one value together): the first of them, then "...".
MAX_BATCHED_ERROR_CHARS = 2000


class RunJobs(_Command):
    """Start these attempts (of one submission environment). Answered once each has an
    outcome: one result per order."""

    commandName = b"RunJobs"
    arguments = [(b"env", JSON()), (b"orders", rows_of(ORDER_FIELDS))]
    response = [(b"results", rows_of(START_RESULT_FIELDS))]


class JobsFinished(_Command):
    """TMMS -> dispatcher: these attempts ended. Answered once each is committed or refused;
    ``failed``: the positions of the ends to report again."""

    commandName = b"JobsFinished"
    arguments = [(b"ends", rows_of(END_FIELDS))]
    response = [
        (b"failed", amp.ListOf(Int64(), optional=True)),
        (b"error", amp.Unicode(optional=True)),
    ]


def error_results(reasons: list[str | None], budget: int = 60_000) -> list[str | None]:
    """Start failures' reasons shortened so that a RunJobs answer of them fits one value."""
    failed = sum(1 for r in reasons if r is not None) or 1
    room = budget - 50 * len(reasons)  # a started order's result: its pid and time
    limit = max(60, min(MAX_BATCHED_ERROR_CHARS, room // failed - 20))
    out: list[str | None] = []
    for reason in reasons:
        if reason is not None and len(reason.encode("utf-8")) > limit:
            reason = reason.encode("utf-8")[: limit - 3].decode("utf-8", "ignore") + "..."
        out.append(reason)
    return out
