"""The dispatcher's responder for ``hConnect dashboard``: a one-time link for the session's
proven user (a mixin of :class:`tm.dispatcher.session.Session`)."""

from __future__ import annotations

from tm.dispatcher.sessionbase import SessionBase
from tm.protocol import commands
from tm.protocol.webcommands import DashboardLink, DashboardOff
from tm.web.tokens import Viewer


class WebResponders(SessionBase):
    @DashboardLink.responder
    def dashboard_link(self) -> dict:
        # The user proven at connect time (a TMS's or an ``hConnect -T`` client's), never a
        # field of the message; the dashboard is read-only, so an admin sees everyone's jobs
        # whichever way they asked.
        user = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        web = getattr(self.dispatcher, "web", None)
        if web is None:
            raise DashboardOff(
                "this dispatcher serves no dashboard: the admin starts it with --http ENDPOINT"
            )
        url = web.link(Viewer(user, self._is_admin()))
        return {"url": url, "expires_in": web.tokens.lifetime}
