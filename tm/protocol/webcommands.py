"""The AMP command of the web dashboard: a short-lived link for the proven user.

Kept apart from :mod:`tm.protocol.commands` (which re-exports it, so that it is found by
name with the others); see docs/dashboard.md.
"""

from __future__ import annotations

from twisted.protocols import amp

from tm.protocol.commands import COMMON_ERRORS, TMError
from tm.protocol.records import Float64


class DashboardOff(TMError):
    """The dispatcher was started without ``--http``: there is no dashboard to link to."""


class DashboardLink(amp.Command):
    """A link to the dashboard carrying a one-time token for the connection's proven user
    (the TMS's user, or the ``hConnect -T`` client's); valid ``expires_in`` seconds."""

    commandName = b"DashboardLink"
    arguments = []
    response = [(b"url", amp.Unicode()), (b"expires_in", Float64())]
    errors = {**COMMON_ERRORS, DashboardOff: b"DASHBOARD_OFF"}
