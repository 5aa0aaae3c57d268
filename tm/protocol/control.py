"""AMP commands of job control beyond kill and suspend (issue 11, points 4 and 5): hold,
release and kill of ids, id ranges and groups, and a waiting job's priority.

Client -> TMS (forwarded) or ``hConnect -T`` -> dispatcher, like ``KillJobs``.
"""

from __future__ import annotations

from twisted.protocols import amp

from tm.protocol.commands import _Command
from tm.protocol.records import Int64

#: ControlJobs' actions.
ACTIONS = ("kill", "hold", "release")


class ControlJobs(_Command):
    """Kill, hold or release jobs: by id, an id range ``first..last`` and/or a group of the
    caller. A single id that cannot be changed is refused; in a range or a group, the jobs
    that cannot be changed are skipped and said in ``notes``."""

    commandName = b"ControlJobs"
    arguments = [
        (b"action", amp.Unicode()),
        (b"job_ids", amp.ListOf(Int64())),
        (b"first", Int64(optional=True)),
        (b"last", Int64(optional=True)),
        (b"group", amp.Unicode(optional=True)),
    ]
    response = [
        (b"done", amp.ListOf(Int64())),
        # How many more jobs were changed than ``done`` lists (it must fit one AMP value).
        (b"more", Int64(optional=True)),
        (b"notes", amp.ListOf(amp.Unicode(), optional=True)),
    ]


class SetPriority(_Command):
    """A waiting job's priority: its user may lower it, the admin (at the dispatcher) may
    set any."""

    commandName = b"SetPriority"
    arguments = [(b"job_id", Int64()), (b"priority", Int64())]
    response = [(b"old", Int64())]
