"""The errors that travel over AMP (declared by every command of :mod:`tm.protocol.commands`,
which re-exports them): each has one wire name, and its text is shown to the user.

Pure: no Twisted.
"""

from __future__ import annotations


class TMError(Exception):
    """Base of every error that travels over AMP; its text is shown to the user."""


class NotAuthenticated(TMError):
    """A command arrived before the connection proved its user."""


class AuthenticationFailed(TMError):
    """The proof of identity was wrong (file-system challenge or key)."""


class ProtocolMismatch(TMError):
    """The peers speak different protocol versions."""


class UserNotAllowed(TMError):
    """The user is not listed in etc/users."""


class PermissionDenied(TMError):
    """The user may not do this (another user's job, an admin command)."""


class UnknownJob(TMError):
    pass


class UnknownHost(TMError):
    pass


class UnknownUser(TMError):
    pass


class InvalidRequest(TMError):
    """The request itself is malformed; the text says what is wrong and how to fix it."""


class DatabaseUnavailable(TMError):
    pass


class DispatcherUnavailable(TMError):
    """The TMS has no link to the dispatcher right now."""


class JobStartFailed(TMError):
    """The executor could not start the job (output file, directory, shell...)."""


class TooBusy(TMError):
    """Too many requests in flight on this connection."""


class ServerError(TMError):
    """The server failed on this request for a reason of its own (a bug, not the
    request's fault); the server's log has one line about it."""


COMMON_ERRORS: dict[type[Exception], bytes] = {
    NotAuthenticated: b"NOT_AUTHENTICATED",
    AuthenticationFailed: b"AUTHENTICATION_FAILED",
    ProtocolMismatch: b"PROTOCOL_MISMATCH",
    UserNotAllowed: b"USER_NOT_ALLOWED",
    PermissionDenied: b"PERMISSION_DENIED",
    UnknownJob: b"UNKNOWN_JOB",
    UnknownHost: b"UNKNOWN_HOST",
    UnknownUser: b"UNKNOWN_USER",
    InvalidRequest: b"INVALID_REQUEST",
    DatabaseUnavailable: b"DATABASE_UNAVAILABLE",
    DispatcherUnavailable: b"DISPATCHER_UNAVAILABLE",
    TooBusy: b"TOO_BUSY",
    ServerError: b"SERVER_ERROR",
}
