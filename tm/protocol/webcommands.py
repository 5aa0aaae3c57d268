"""The AMP commands of the web dashboard: a short-lived link for the proven user
(``DashboardLink``: client or TMS -> dispatcher) and a running job's output tail
(``OutputTail``: dispatcher -> executor).

Kept apart from :mod:`tm.protocol.commands` (near its size limit);
:func:`tm.cli.common.command_named` finds ``DashboardLink`` by name as it finds the others.
See docs/dashboard.md.
"""

from __future__ import annotations

from twisted.protocols import amp

from tm.protocol.commands import COMMON_ERRORS, TMError
from tm.protocol.records import Float64, Int64


class DashboardOff(TMError):
    """The dispatcher was started without ``--http``: there is no dashboard to link to."""


class DashboardLink(amp.Command):
    """A link to the dashboard carrying a one-time token for the connection's proven user
    (the TMS's user, or the ``hConnect -T`` client's); valid ``expires_in`` seconds."""

    commandName = b"DashboardLink"
    arguments = []
    response = [(b"url", amp.Unicode()), (b"expires_in", Float64())]
    errors = {**COMMON_ERRORS, DashboardOff: b"DASHBOARD_OFF"}


#: The most of a job's output the dashboard shows (the end of the file).
MAX_TAIL_BYTES = 16 * 1024


class OutputTail(amp.Command):
    """Dispatcher -> executor: the end of a job attempt's stdout or stderr, for the job's
    owner on the dashboard. The executor reads, as the job's user, only the file it opened
    for that attempt while it runs (never a path the message names), at most ``limit``
    bytes (up to :data:`MAX_TAIL_BYTES`), decoded as UTF-8 with replacements."""

    commandName = b"OutputTail"
    arguments = [
        (b"job_id", Int64()),
        (b"attempt", Int64()),
        (b"stream", amp.Unicode()),  # "out" | "err"
        (b"limit", Int64()),
    ]
    response = [
        (b"found", amp.Boolean()),
        (b"path", amp.Unicode()),
        (b"size", Int64()),
        (b"data", amp.Unicode()),
    ]
    errors = COMMON_ERRORS
