"""One authenticated connection to the dispatcher: its identity and its responders.

A connection's user is proven once (``Hello`` then ``Authenticate``, the
file-system challenge) and never taken from a message field afterwards.

A failed login (a refused challenge, a user not in etc/users) is logged with the peer and
the claimed user (rate-limited, :class:`~tm.logs.ProblemLog`) and counted by the
dispatcher's :class:`~tm.loginlimit.LoginLimiter`: the connection is closed after a few,
and an address or claimed user with too many is refused at ``Hello`` for a while. A
challenge handed out and never checked has its file removed when the connection ends.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.internet.protocol import connectionDone
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from tm import auth
from tm.dispatcher import challenges
from tm.dispatcher.edge import AddressGuard, EdgeLimits
from tm.protocol import commands
from tm.protocol.base import BoundedAMP

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tm.dispatcher.service import Dispatcher
from tm.dispatcher.admin import AdminResponders
from tm.dispatcher.callbacks import CallbackResponders
from tm.dispatcher.control import ControlResponders
from tm.dispatcher.responders import HEARTBEAT_INTERVAL, MAX_PAGE, JobResponders  # noqa: F401
from tm.dispatcher.watchresponders import WatchResponders
from tm.web.responders import WebResponders

ROLES = (commands.ROLE_TMS, commands.ROLE_TMMS, commands.ROLE_CLIENT)
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


class DispatcherProtocol(BoundedAMP):
    """One connection to the dispatcher, with the edge's bounds (a handshake deadline, a
    small box until authenticated, a slow reader dropped) and its place in the guard's
    count of connections per address (admitted by the listening factory)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: EdgeLimits | None = None,
        guard: AddressGuard | None = None,
    ) -> None:
        self.session = Session(dispatcher, self)
        super().__init__(locator=self.session, clock=dispatcher.reactor)
        (limits or EdgeLimits()).apply(self)
        self.guard = guard

    def authenticated(self) -> None:
        if self.gone:
            # Closed while its proof was checked (e.g. past the handshake deadline).
            raise commands.NotAuthenticated("the connection closed during authentication")
        was = self.is_authenticated
        super().authenticated()
        if self.guard is not None and not was:
            self.guard.authenticated(self.peer_host)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.session.closed()
        if self.guard is not None:
            self.guard.released(self.peer_host, self.is_authenticated)
            self.guard = None
        super().connectionLost(reason)


VERSION_MISMATCH = (
    "the dispatcher speaks protocol {ours}, you speak {theirs}: install the same TaskManager "
    "version"
)


class Session(
    WatchResponders, AdminResponders, WebResponders, CallbackResponders, ControlResponders
):
    """One connection's identity (proven by Hello and Authenticate) and its responders."""

    @commands.Hello.responder
    def hello(
        self,
        protocol_version: int,
        role: str,
        user: str,
        host: str,
        pid: int | None = None,
        token: str | None = None,
    ) -> dict:
        commands.check_protocol_version(protocol_version, VERSION_MISMATCH)
        if self.user is not None or self.challenge is not None:
            # A proven connection keeps the role and host it proved them for: a second Hello
            # would turn a client into an executor without proving anything again.
            raise commands.InvalidRequest(
                "Hello was already sent on this connection: open a new connection for another role"
            )
        if role not in ROLES:
            raise commands.InvalidRequest(f"unknown role {role!r}")
        self.login.check(user, role)
        if user not in self.dispatcher.users:
            self.login.failed(user, "not in etc/users", role, shared=False)
            raise commands.UserNotAllowed(
                f"user {user} is not allowed to use TaskManager: ask the admin to add "
                f"the user to {self.dispatcher.settings.config_dir / 'users'}"
            )
        if role == commands.ROLE_TMMS:
            if host not in self.dispatcher.hosts:
                raise commands.UnknownHost(f"host {host!r} is not in the cluster configuration")
        self.claimed_user, self.role, self.host, self.peer_pid = user, role, host, pid
        self.executor_token = token
        self.challenge = auth.new_challenge(self.dispatcher.settings.var_dir / "challenge")
        self.dispatcher.challenges.issued(self.challenge.path)
        return {
            "protocol_version": commands.PROTOCOL_VERSION,
            "server": "tmdispatcher",
            "challenge_path": self.challenge.path,
            "nonce": self.challenge.nonce,
        }

    @commands.Authenticate.responder
    async def authenticate(self) -> dict:
        if self.challenge is None or self.claimed_user is None:
            raise commands.NotAuthenticated("send Hello first")
        challenge, self.challenge = self.challenge, None
        d = self.dispatcher
        assert d.fs_pool is not None, "the dispatcher runs without its file-system pool"
        try:
            await deferToThreadPool(
                d.reactor, d.fs_pool, auth.verify_challenge, challenge, self.claimed_user
            )
        except commands.AuthenticationFailed as e:
            self.login.failed(self.claimed_user, str(e), self.role or "-")
            raise
        finally:
            d.challenges.settled(challenge.path)
        ticket = None
        if self.role == commands.ROLE_TMMS:
            ticket = self._admit_executor(self.claimed_user, self.host or "")
        self.proto.authenticated()  # the edge lifts its handshake deadline and box bound
        self.user = self.claimed_user
        self.authenticated_at = self.last_heard = self.dispatcher.reactor.seconds()
        self.log.info(
            "{user} authenticated as {role} from {host}",
            user=self.user,
            role=self.role,
            host=self.host,
        )
        if self.role == commands.ROLE_TMS:
            d.tms_connected(self.user, self)
        elif self.role == commands.ROLE_TMMS:
            d.executor_connected(self.user, self.host or "", self)
        answer = {"user": self.user, "roles": sorted(d.users[self.user].roles)}
        if ticket is not None:
            answer["ticket"] = ticket
        return answer

    def _admit_executor(self, user: str, host: str) -> str:
        """An executor proves its host (issue 10 point 5): it shows the one-time token its
        user's TMS was given for this start, or the ticket of an earlier login; and it does
        not displace a live executor of the same user and host. The ticket it keeps."""
        d = self.dispatcher
        token, self.executor_token = self.executor_token, None
        if not token or not (
            d.executor_table.take_token(user, host, token) or d.tickets.valid(user, host, token)
        ):
            reason = (
                f"an executor of {user} for {host} must be started by {user}'s TMS when the "
                "dispatcher asks for one (no valid start token or ticket)"
            )
            self.login.failed(user, reason, commands.ROLE_TMMS, shared=False)
            raise commands.AuthenticationFailed(reason)
        live = d.executors.get((user, host))
        now = d.reactor.seconds()
        if live is not None and now - live.last_heard <= self._live_window():
            self.log.warn(
                "refused a second executor of {user} on {host} (pid {pid}): pid {live} is live",
                user=user,
                host=host,
                pid=self.peer_pid,
                live=live.peer_pid,
            )
            # Not fatal to the caller: its own earlier, half-open connection may be the
            # "live" one, which goes once silent for the window; it then gets in.
            raise commands.TooBusy(
                f"an executor of {user} on {host} is already connected (pid {live.peer_pid}) "
                "and alive: a second one does not replace it"
            )
        return d.tickets.ticket(user, host)

    def _live_window(self) -> float:
        """How recently an executor must have been heard to count as live: three of its
        heartbeat intervals."""
        lease = self.dispatcher.settings.executor_lease
        return 3 * min(HEARTBEAT_INTERVAL, lease / 6)

    def closed(self) -> None:
        challenge, self.challenge = self.challenge, None
        if challenge is not None:  # handed out, never checked: its file must not stay
            d = self.dispatcher
            d.challenges.settled(challenge.path)
            if d.fs_pool is not None:
                deferToThreadPool(d.reactor, d.fs_pool, challenges.remove, challenge.path)
        if self.user is None:
            return
        if self.role == commands.ROLE_TMS:
            self.dispatcher.tms_disconnected(self.user, self)
        elif self.role == commands.ROLE_TMMS and not self.fenced:
            self.dispatcher.executor_disconnected(self.user, self.host or "", self)

    @commands.Ping.responder
    def ping(self) -> dict:
        return {"server": "tmdispatcher", "time": self.dispatcher.reactor.seconds()}
