"""The TMS's submission to the dispatcher, sent again until it is acknowledged.

Split from :mod:`tm.userserver.service`.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.task import deferLater
from twisted.logger import Logger

from tm.protocol import commands

log = Logger(namespace="tm.userserver.service")

#: How long a submission is sent again (with its client-made UUIDs, so at most one copy is
#: stored) while the dispatcher does not acknowledge it.
SUBMIT_RETRY_SECONDS = 60.0
#: How long one try waits for its answer (at least; longer when more of the budget is left).
SUBMIT_REPLY_TIMEOUT = 15.0
#: How often a submission refused with DatabaseUnavailable is tried again (1, 2, 4 s apart).
SUBMIT_DATABASE_RETRIES = 3
#: Failures that say nothing about whether the dispatcher stored a submission: the link
#: dropped, or no answer came in time.
CONNECTION_FAILURES: tuple[type[Exception], ...] = (
    ConnectionClosed,
    ConnectError,
    defer.TimeoutError,
    defer.CancelledError,
    TimeoutError,
    commands.DispatcherUnavailable,
)


#: The connections whose dispatcher answered SubmitJobTable with UnhandledCommand: the
#: submissions over them send rows (SubmitJobs) from the start. Another connection (the
#: dispatcher restarted, perhaps upgraded) tries tables again.
_WITHOUT_TABLES: weakref.WeakSet[Any] = weakref.WeakSet()


def _connection(link: Any) -> Any:
    return getattr(link, "proto", None) or link


def sends_tables(link: Any) -> bool:
    """Whether a submission over ``link`` starts with tables (SubmitJobTable)."""
    return _connection(link) not in _WITHOUT_TABLES


def tables_refused(link: Any) -> None:
    """The dispatcher behind ``link`` does not know SubmitJobTable."""
    connection = _connection(link)
    if connection is not None:
        _WITHOUT_TABLES.add(connection)


def _reason(e: Exception) -> str:
    if isinstance(e, ConnectionClosed):
        return "the link dropped before the answer came"
    if isinstance(e, defer.TimeoutError | defer.CancelledError | TimeoutError):
        return "no answer in time"
    return str(e) or e.__class__.__name__


async def submit_until_acknowledged(
    link: Any, reactor: Any, kw: dict[str, Any], budget: float = SUBMIT_RETRY_SECONDS
) -> Any:
    """Send SubmitJobs (SubmitJobTable when ``kw`` has a ``jobs_table``) over ``link`` until
    the dispatcher answers it.

    The jobs carry their UUIDs, which the store keeps unique, so a submission that was
    stored but whose acknowledgement was lost is acknowledged again, with the same ids.
    Connection failures are retried for ``budget`` s; a DatabaseUnavailable refusal a few
    times with back-off; any other refusal is passed on at once (UnhandledCommand too: see
    :func:`tables_refused`).
    """
    command = commands.SubmitJobTable if "jobs_table" in kw else commands.SubmitJobs
    deadline = reactor.seconds() + budget
    database_refusals = 0
    pause = 0.1
    last_reason = ""
    while True:
        await link.ready(max(0.0, deadline - reactor.seconds()))
        try:
            if not link.connected and link.fatal is None:
                raise commands.DispatcherUnavailable(link.last_error or "no link")
            left = deadline - reactor.seconds()
            return await link.call(command, reply_timeout=max(SUBMIT_REPLY_TIMEOUT, left), **kw)
        except commands.DatabaseUnavailable:
            database_refusals += 1
            if database_refusals > SUBMIT_DATABASE_RETRIES:
                raise
            wait = 2.0 ** (database_refusals - 1)
            if reactor.seconds() + wait > deadline:
                raise
            await deferLater(reactor, wait, lambda: None)
            continue
        except CONNECTION_FAILURES as e:
            reason = _reason(e)
        if reactor.seconds() >= deadline:
            raise commands.DispatcherUnavailable(
                f"the dispatcher at {link.info.address} did not acknowledge the submission "
                f"within {budget:.0f} s ({reason})"
            )
        if reason != last_reason:
            log.info("submission not acknowledged ({reason}); sending it again", reason=reason)
            last_reason = reason
        # Never straight away: a link that is being lost fails its calls before it is
        # known to be down, and must not be tried again in a loop that starves the reactor.
        await deferLater(reactor, min(pause, max(0.0, deadline - reactor.seconds())), lambda: None)
        pause = min(2 * pause, 1.0)
