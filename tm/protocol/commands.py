"""Every AMP command of TaskManager: its arguments, its response and its errors.

The system's whole vocabulary in one place.  Each command pins ``commandName``
and declares every expected failure (an undeclared exception would drop the
connection).  Who sends what:

* client (hRunJob/hConnect) -> TMS: ``Hello``, ``ProveKey``, the job and status
  commands below (the TMS answers them itself or forwards them to the dispatcher);
* TMS, TMMS, ``hConnect -T`` -> dispatcher: ``Hello``, ``Authenticate``, then by role;
* dispatcher -> TMS: ``StartExecutor``; TMS -> dispatcher: ``ExecutorStartFailed``;
* dispatcher -> TMMS: ``RunJob``, ``SignalJob``, ``Shutdown``;
  TMMS -> dispatcher: ``JobFinished``, ``Heartbeat``.
"""

from __future__ import annotations

from twisted.protocols import amp

from tm.protocol.records import (
    HISTORY_FIELDS,
    HOST_FIELDS,
    JOB_DETAIL_FIELDS,
    JOB_SPEC_FIELDS,
    JOB_SUMMARY_FIELDS,
    JSON,
    RUN_JOB_ARGUMENTS,
    STATE_COUNT_FIELDS,
    USER_FIELDS,
)

#: Raised by both ends when they do not speak the same version.
PROTOCOL_VERSION = 1

ROLE_TMS = "tms"
ROLE_TMMS = "tmms"
ROLE_CLIENT = "client"


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
}


class _Command(amp.Command):
    errors = COMMON_ERRORS


# --- handshake ------------------------------------------------------------------


class Hello(_Command):
    """First command on every link.  To the dispatcher it also starts the
    file-system challenge: the answer names the file to create and its content."""

    commandName = b"Hello"
    arguments = [
        (b"protocol_version", amp.Integer()),
        (b"role", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"host", amp.Unicode()),
        (b"pid", amp.Integer(optional=True)),  # the caller's process, shown by lstmms/lsthreads
    ]
    response = [
        (b"protocol_version", amp.Integer()),
        (b"server", amp.Unicode()),
        (b"challenge_path", amp.Unicode(optional=True)),
        (b"nonce", amp.Unicode(optional=True)),
    ]


class Authenticate(_Command):
    """The challenge file exists now: check it.  Answers the proven user."""

    commandName = b"Authenticate"
    arguments = []
    response = [(b"user", amp.Unicode()), (b"roles", amp.ListOf(amp.Unicode()))]


class ProveKey(_Command):
    """Client -> own TMS: the key from ~/.taskmanager/tms.json."""

    commandName = b"ProveKey"
    arguments = [(b"key", amp.Unicode())]
    response = [(b"user", amp.Unicode())]


class Ping(_Command):
    commandName = b"Ping"
    arguments = []
    response = [(b"server", amp.Unicode()), (b"time", amp.Float())]


# --- jobs -------------------------------------------------------------------------


class SubmitJobs(_Command):
    """One chunk of a submission: one transaction, acknowledged after commit.

    Retrying a chunk with the same UUIDs returns the same ids (no duplicates).
    """

    commandName = b"SubmitJobs"
    arguments = [
        (b"cwd", amp.Unicode()),
        (b"umask", amp.Integer()),
        (b"env", JSON()),
        (b"jobs", amp.AmpList(JOB_SPEC_FIELDS)),
    ]
    response = [
        (b"job_ids", amp.ListOf(amp.Integer())),
        # Accepted, but worth saying (e.g. a job larger than every host: it waits).
        (b"warnings", amp.ListOf(amp.Unicode(), optional=True)),
    ]


class ListJobs(_Command):
    """One page of jobs, oldest first, starting after ``after_id``.

    ``scope`` is ``"mine"`` or ``"all"``; through a TMS it is always the TMS's
    user.  ``next_after_id`` is set when more rows follow.
    """

    commandName = b"ListJobs"
    arguments = [
        (b"states", amp.ListOf(amp.Unicode())),
        (b"scope", amp.Unicode()),
        (b"user", amp.Unicode(optional=True)),
        (b"group", amp.Unicode(optional=True)),
        (b"text", amp.Unicode(optional=True)),
        (b"after_id", amp.Integer()),
        (b"limit", amp.Integer()),
        (b"order", amp.Unicode(optional=True)),  # "id" (default) or "schedule"
    ]
    response = [
        (b"jobs", amp.AmpList(JOB_SUMMARY_FIELDS)),
        (b"next_after_id", amp.Integer(optional=True)),
    ]


class GetJob(_Command):
    commandName = b"GetJob"
    arguments = [(b"job_id", amp.Integer())]
    response = [
        (b"job", amp.AmpList(JOB_DETAIL_FIELDS)),  # exactly one row
        (b"history", amp.AmpList(HISTORY_FIELDS)),
        (b"wait_reason", amp.Unicode()),
    ]


class WaitJob(_Command):
    """Answers when the job has ended, or after ``timeout`` seconds with its state."""

    commandName = b"WaitJob"
    arguments = [(b"job_id", amp.Integer()), (b"timeout", amp.Float())]
    response = [
        (b"state", amp.Unicode()),
        (b"exit_code", amp.Integer(optional=True)),
        (b"signal", amp.Integer(optional=True)),
        (b"reason", amp.Unicode()),
    ]


class GroupSummary(_Command):
    """Counts per state of one group (or of every group of the scope when ``group`` is None)."""

    commandName = b"GroupSummary"
    arguments = [(b"group", amp.Unicode(optional=True)), (b"scope", amp.Unicode())]
    response = [
        (b"groups", JSON()),  # {group: {state: count}}
    ]


class KillJobs(_Command):
    """Kill jobs by id, by regular expression on the command, or all of the scope's."""

    commandName = b"KillJobs"
    arguments = [
        (b"job_ids", amp.ListOf(amp.Integer())),
        (b"regex", amp.Unicode(optional=True)),
        (b"all", amp.Boolean()),
    ]
    response = [
        (b"killed", amp.ListOf(amp.Integer())),
        # How many more jobs were killed than ``killed`` lists (it must fit one AMP value).
        (b"more", amp.Integer(optional=True)),
    ]


class SuspendJob(_Command):
    commandName = b"SuspendJob"
    arguments = [(b"job_id", amp.Integer()), (b"resume", amp.Boolean())]
    response = []


# --- status, cluster and users ---------------------------------------------------


class GetStatus(_Command):
    """Cluster activity, hosts, slots, and counts per state (all users and the caller)."""

    commandName = b"GetStatus"
    arguments = []
    response = [
        (b"cluster_active", amp.Boolean()),
        (b"active_hosts", amp.Integer()),
        (b"total_slots", amp.Integer()),
        (b"occupied_slots", amp.Integer()),
        (b"counts", amp.AmpList(STATE_COUNT_FIELDS)),
        (b"user_counts", amp.AmpList(STATE_COUNT_FIELDS)),
        (b"address", amp.Unicode()),
        (b"started_at", amp.Float()),
        (b"user", amp.Unicode()),
    ]


class ListHosts(_Command):
    commandName = b"ListHosts"
    arguments = []
    response = [(b"cluster_active", amp.Boolean()), (b"hosts", amp.AmpList(HOST_FIELDS))]


class SetClusterActive(_Command):
    commandName = b"SetClusterActive"
    arguments = [(b"active", amp.Boolean())]
    response = []


class SetHostActive(_Command):
    commandName = b"SetHostActive"
    arguments = [(b"host", amp.Unicode()), (b"active", amp.Boolean())]
    response = [(b"host", amp.Unicode())]


class ReloadConfig(_Command):
    commandName = b"ReloadConfig"
    arguments = []
    response = [(b"summary", amp.Unicode())]


class ListUsers(_Command):
    commandName = b"ListUsers"
    arguments = [(b"user", amp.Unicode(optional=True))]
    response = [(b"users", amp.AmpList(USER_FIELDS))]


class SetUserEnabled(_Command):
    commandName = b"SetUserEnabled"
    arguments = [(b"user", amp.Unicode()), (b"enabled", amp.Boolean())]
    response = []


class AdminJobs(_Command):
    """The admin's repair commands: rmjobs, rmwjobs, setall[p|r]jobsas[waiting|finished],
    checkslots, updateload.  ``user`` for the two removals."""

    commandName = b"AdminJobs"
    arguments = [(b"action", amp.Unicode()), (b"user", amp.Unicode(optional=True))]
    response = [(b"count", amp.Integer()), (b"message", amp.Unicode())]


class ListSessions(_Command):
    """The dispatcher's live sessions and timers (lsthreads)."""

    commandName = b"ListSessions"
    arguments = []
    response = [(b"lines", amp.ListOf(amp.Unicode()))]


class ListExecutors(_Command):
    """The caller's executors (TMMS) per host, as the dispatcher sees them."""

    commandName = b"ListExecutors"
    arguments = []
    response = [(b"executors", JSON())]  # [{host, pid, since, running}]


class ControlExecutors(_Command):
    """TMS-side ``invokealltmms`` / ``shutdownalltmms``."""

    commandName = b"ControlExecutors"
    arguments = [(b"action", amp.Unicode())]  # "invoke" | "shutdown"
    response = [(b"hosts", amp.ListOf(amp.Unicode()))]


# --- TMS only ---------------------------------------------------------------------


class ServerInfo(_Command):
    """The TMS's own facts (printserverinfo, hRunJob -s)."""

    commandName = b"ServerInfo"
    arguments = []
    response = [
        (b"user", amp.Unicode()),
        (b"host", amp.Unicode()),
        (b"port", amp.Integer()),
        (b"pid", amp.Integer()),
        (b"started_at", amp.Float()),
        (b"dispatcher", amp.Unicode()),
        (b"dispatcher_connected", amp.Boolean()),
    ]


class Shutdown(_Command):
    """Stop the receiving TMS or TMMS."""

    commandName = b"Shutdown"
    arguments = []
    response = []


# --- dispatcher <-> TMS ---------------------------------------------------------------


class StartExecutor(_Command):
    """Dispatcher -> TMS: start a TMMS of your user on ``host``.

    Answered at once; a failure comes back later as ``ExecutorStartFailed``.
    ``ssh_target`` is empty for the dispatcher's local host (spawn directly).
    """

    commandName = b"StartExecutor"
    arguments = [
        (b"host", amp.Unicode()),
        (b"ssh_target", amp.Unicode()),
        (b"command", amp.Unicode()),
    ]
    response = []


class ExecutorStartFailed(_Command):
    commandName = b"ExecutorStartFailed"
    arguments = [(b"host", amp.Unicode()), (b"reason", amp.Unicode())]
    response = []


# --- dispatcher <-> TMMS ------------------------------------------------------------


class RunJob(_Command):
    """Start one attempt of a job.  Answered once the process runs."""

    commandName = b"RunJob"
    arguments = RUN_JOB_ARGUMENTS
    response = [(b"pid", amp.Integer()), (b"started_at", amp.Float())]
    errors = {**COMMON_ERRORS, JobStartFailed: b"JOB_START_FAILED"}


class SignalJob(_Command):
    """Kill (TERM then KILL), stop or continue the whole process tree of a job attempt."""

    commandName = b"SignalJob"
    arguments = [
        (b"job_id", amp.Integer()),
        (b"attempt", amp.Integer()),
        (b"action", amp.Unicode()),  # "kill" | "stop" | "cont"
    ]
    response = [(b"found", amp.Boolean())]


class JobFinished(_Command):
    """TMMS -> dispatcher: an attempt ended.  ``killed`` when we killed it."""

    commandName = b"JobFinished"
    arguments = [
        (b"job_id", amp.Integer()),
        (b"attempt", amp.Integer()),
        (b"exit_code", amp.Integer(optional=True)),
        (b"signal", amp.Integer(optional=True)),
        (b"killed", amp.Boolean()),
        (b"ended_at", amp.Float()),
        (b"reason", amp.Unicode()),
        # The executor stopped it because it lost contact with the dispatcher for longer than
        # its lease: not the job's doing, so it is requeued.
        (b"lost", amp.Boolean(optional=True)),
    ]
    response = []


class Heartbeat(_Command):
    """TMMS -> dispatcher every few seconds: load average and the attempts it runs."""

    commandName = b"Heartbeat"
    arguments = [
        (b"load", amp.Float(optional=True)),  # None when it cannot be read
        (b"running", JSON()),  # [[job_id, attempt], ...]
    ]
    response = [
        (b"time", amp.Float()),
        # The executor's lease: stop every job after this many seconds without an answer
        # from the dispatcher (which declares them lost only after twice as long).
        (b"lease", amp.Float(optional=True)),
        (b"interval", amp.Float(optional=True)),  # how often to send heartbeats
    ]
