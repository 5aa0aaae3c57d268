"""What every dispatcher session has: its identity, the checks each responder makes (role,
admin, who sees what), the audit, and the mapping of store errors at the edge.

Split from :mod:`tm.dispatcher.responders`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.protocols import amp

from tm import auth, trace
from tm.core.model import Job
from tm.dispatcher.storeerrors import map_store_failure
from tm.loginlimit import LoginAttempts
from tm.protocol import commands, records
from tm.protocol.base import BoundedAMP

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tm.dispatcher.service import Dispatcher


def traced_call(command: type[amp.Command], responder: Callable[..., Any], kw: Any) -> Any:
    """``responder(**kw)`` with the trace's lines when it is called and answers."""
    name, jobs = trace.named_jobs(command.commandName.decode(), kw)
    for job in jobs:
        trace.point("dispatcher", f"{name}-received", job)

    def answered(answer: Any) -> Any:
        for job in trace.answered_jobs(jobs, answer):
            trace.point("dispatcher", f"{name}-answered", job)
        return answer

    return maybeDeferred(responder, **kw).addErrback(map_store_failure).addCallback(answered)


class SessionBase(amp.CommandLocator):
    """A connection's identity, and the checks every responder makes."""

    log = Logger()

    def __init__(self, dispatcher: Dispatcher, proto: BoundedAMP) -> None:
        self.dispatcher = dispatcher
        self.proto = proto
        self.user: str | None = None
        self.claimed_user: str | None = None
        self.role: str | None = None
        self.host: str | None = None
        self.peer_pid: int | None = None
        self.authenticated_at: float | None = None
        self.last_heard = 0.0
        self.challenge: auth.Challenge | None = None
        self.executor_token: str | None = None  # what an executor showed in Hello
        self.fenced = False

    @functools.cached_property
    def login(self) -> LoginAttempts:
        """This connection's failed logins (it is closed after a few)."""
        return LoginAttempts(self.dispatcher.logins, self.dispatcher.reactor, self.proto)

    def _wrapWithSerialization(  # noqa: N802 - AMP's API
        self,
        aCallable: Callable[..., Any],
        command: type[amp.Command],  # noqa: N803
    ) -> Any:
        # The edge where the store's errors become AMP errors (tm.dispatcher.storeerrors):
        # each responder's failure is mapped before AMP matches it against the declared errors.
        def mapped(**kw: Any) -> Any:
            if trace.ENABLED:
                return traced_call(command, aCallable, kw)
            return maybeDeferred(aCallable, **kw).addErrback(map_store_failure)

        return super()._wrapWithSerialization(mapped, command)

    # --- identity ---------------------------------------------------------------

    def _require(self, *roles: str) -> str:
        if self.user is None:
            raise commands.NotAuthenticated("authenticate first (Hello, then Authenticate)")
        if roles and self.role not in roles:
            raise commands.PermissionDenied(f"a {self.role} connection cannot do this")
        # An executor still reports the ends of jobs that started before its user was removed.
        if self.user not in self.dispatcher.users and self.role != commands.ROLE_TMMS:
            raise commands.PermissionDenied(
                f"user {self.user} is no longer in etc/users: ask the admin to add you back"
            )
        return self.user

    def _is_admin(self) -> bool:
        u = self.dispatcher.users.get(self.user or "")
        return bool(u and u.is_admin)

    # --- the audit log ----------------------------------------------------------------

    def _audit(self, action: str, target: str, outcome: str = "done") -> None:
        """One line in the dispatcher's audit log about this connection's user."""
        peer = str(getattr(self.proto, "peer_host", "?"))
        self.dispatcher.audit.record(self.user, peer, self.role, action, target, outcome)

    @contextlib.contextmanager
    def _audited(self, action: str, target: str = "") -> Iterator[None]:
        """Audit the admin action done in the ``with`` block, and how it ended."""
        try:
            yield
        except (commands.NotAuthenticated, commands.PermissionDenied) as e:
            self._audit(action, target, f"refused: {e}")
            raise
        except Exception as e:
            self._audit(action, target, f"failed: {e or e.__class__.__name__}")
            raise
        self._audit(action, target)

    def _require_admin(self) -> str:
        user = self._require(commands.ROLE_CLIENT, commands.ROLE_TMS)
        if not self._is_admin():
            raise commands.PermissionDenied(f"{user} does not have the admin role (etc/users)")
        return user

    def drop(self) -> None:
        """Cut a connection that went silent; connectionLost does the rest."""
        # Only sessions in the executor table are dropped, and connectionLost takes a session
        # out of it before AMP forgets the transport.
        assert self.proto.transport is not None
        self.proto.transport.abortConnection()

    def fence(self) -> None:
        """A newer executor of the same user and host replaced this one."""
        self.fenced = True
        assert self.proto.transport is not None  # as in drop(): still in the executor table
        self.proto.transport.loseConnection()  # type: ignore[misc]

    # --- who sees what (issue 10 point 4, SEED behaviour 15) ------------------------------
    # The one place that decides: a user sees and changes only their own jobs, executors,
    # sessions and usage; an admin talking to the dispatcher directly sees and changes
    # everyone's. Through a TMS even an admin sees only their own.

    def _sees_all(self) -> bool:
        """Whether this connection may see (and act on) other users' jobs and usage."""
        return self.role == commands.ROLE_CLIENT and self._is_admin()

    def _may_see_user(self, user: str) -> bool:
        return user == self.user or self._sees_all()

    def _scope_user(self, scope: str, user: str | None) -> str | None:
        me = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        if scope == "mine" or not self._sees_all():
            return me  # only an admin, talking to the dispatcher, sees other users' jobs
        return user

    def _may_touch(self, job: Job) -> bool:
        return self._may_see_user(job.user)

    async def _own_job(self, job_id: int, verb: str) -> Job:
        """A job the caller may change (theirs, or any for an admin at the dispatcher)."""
        d = self.dispatcher
        job = d.jobs.get(job_id) or await d.store.get_job(job_id)
        if job is None:
            raise commands.UnknownJob(f"unknown job {job_id}")
        if not self._may_touch(job):
            refusal = f"job {job_id} is not yours: you can only {verb} your own jobs"
            self._audit(verb, f"job {job_id} of {job.user}", f"refused: {refusal}")
            raise commands.PermissionDenied(refusal)
        return job


def _fit_ids(ids: list[int]) -> list[int]:
    """As many leading ``ids`` as fit one ``ListOf(Integer)`` value."""
    used = 0
    for index, job_id in enumerate(ids):
        used += 2 + len(str(job_id))
        if used > records.MAX_VALUE_BYTES:
            return ids[:index]
    return ids


def _fit_text(text: str) -> str:
    """``text`` cut to fit one AMP value (a listing of many hosts)."""
    if len(text.encode("utf-8", "surrogatepass")) <= records.MAX_VALUE_BYTES:
        return text
    return text.encode()[: records.MAX_VALUE_BYTES - 100].decode("utf-8", "ignore") + " ..."


def _first(names: list[str], count: int) -> list[str]:
    """The first ``count`` names, and how many more there are."""
    if len(names) <= count:
        return names
    return names[:count] + [f"... and {len(names) - count} more"]
