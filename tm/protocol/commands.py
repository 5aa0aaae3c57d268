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

from tm.protocol.errors import (  # noqa: F401  (re-exported: the vocabulary is here)
    COMMON_ERRORS,
    AuthenticationFailed,
    DatabaseUnavailable,
    DispatcherUnavailable,
    InvalidRequest,
    JobStartFailed,
    NotAuthenticated,
    PermissionDenied,
    ProtocolMismatch,
    ServerError,
    TMError,
    TooBusy,
    UnknownHost,
    UnknownJob,
    UnknownUser,
    UserNotAllowed,
)
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
    Float64,
    Int64,
)
from tm.protocol.rowlist import rows_of

#: Raised by both ends when they do not speak the same version.
PROTOCOL_VERSION = 1

ROLE_TMS = "tms"
ROLE_TMMS = "tmms"
ROLE_CLIENT = "client"


def check_protocol_version(theirs: int, mismatch: str) -> None:
    """Refuse a peer that speaks another protocol version (in Hello); ``mismatch`` is the
    refusal's text, with ``{ours}`` and ``{theirs}`` standing for the two versions."""
    if theirs != PROTOCOL_VERSION:
        raise ProtocolMismatch(mismatch.format(ours=PROTOCOL_VERSION, theirs=theirs))


class _Command(amp.Command):
    errors = COMMON_ERRORS


# --- handshake ------------------------------------------------------------------


class Hello(_Command):
    """First command on every link.  To the dispatcher it also starts the
    file-system challenge: the answer names the file to create and its content."""

    commandName = b"Hello"
    arguments = [
        (b"protocol_version", Int64()),
        (b"role", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"host", amp.Unicode()),
        (b"pid", Int64(optional=True)),  # the caller's process, shown by lstmms/lsthreads
        # An executor's proof that its user's TMS started it for this host: the one-time
        # start token (StartExecutor), or the ticket of an earlier login (Authenticate).
        (b"token", amp.Unicode(optional=True)),
    ]
    response = [
        (b"protocol_version", Int64()),
        (b"server", amp.Unicode()),
        (b"challenge_path", amp.Unicode(optional=True)),
        (b"nonce", amp.Unicode(optional=True)),
    ]


class Authenticate(_Command):
    """The challenge file exists now: check it.  Answers the proven user."""

    commandName = b"Authenticate"
    arguments = []
    response = [
        (b"user", amp.Unicode()),
        (b"roles", amp.ListOf(amp.Unicode())),
        # To an executor: what it shows (as Hello's token) when it logs in again.
        (b"ticket", amp.Unicode(optional=True)),
    ]


class ProveKey(_Command):
    """Client -> own TMS: the key from ~/.taskmanager/tms.json."""

    commandName = b"ProveKey"
    arguments = [(b"key", amp.Unicode())]
    response = [(b"user", amp.Unicode())]


class Ping(_Command):
    commandName = b"Ping"
    arguments = []
    response = [(b"server", amp.Unicode()), (b"time", Float64())]


# --- jobs -------------------------------------------------------------------------


class SubmitJobs(_Command):
    """One chunk of a submission: one transaction, acknowledged after commit.

    Retrying a chunk with the same UUIDs returns the same ids (no duplicates).
    """

    commandName = b"SubmitJobs"
    arguments = [
        (b"cwd", amp.Unicode()),
        (b"umask", Int64()),
        (b"env", JSON()),
        (b"jobs", rows_of(JOB_SPEC_FIELDS)),
        # TMS -> dispatcher: the environment sealed with the user's key (``env`` is then {});
        # the jobs carry their signatures (tm/jobsign.py).
        (b"sealed_env", amp.Unicode(optional=True)),
    ]
    response = [
        (b"job_ids", amp.ListOf(Int64())),
        # Accepted, but worth saying (e.g. a job larger than every host: it waits).
        (b"warnings", amp.ListOf(amp.Unicode(), optional=True)),
    ]


class SubmitJobTable(_Command):
    """SubmitJobs with its jobs as one table (tm/protocol/jobtable.py): the same checks, the
    same answer and errors, about three times the jobs per chunk. TMS -> dispatcher; a
    dispatcher that does not know it answers UnhandledCommand, and the TMS sends SubmitJobs."""

    commandName = b"SubmitJobTable"
    arguments = [
        (b"cwd", amp.Unicode()),
        (b"umask", Int64()),
        (b"env", JSON()),
        (b"jobs_table", amp.Unicode()),
        (b"sealed_env", amp.Unicode(optional=True)),
    ]
    response = SubmitJobs.response


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
        (b"after_id", Int64()),
        (b"limit", Int64()),
        (b"order", amp.Unicode(optional=True)),  # "id" (default) or "schedule"
    ]
    response = [
        (b"jobs", rows_of(JOB_SUMMARY_FIELDS)),
        (b"next_after_id", Int64(optional=True)),
    ]


class ListJobsJSON(_Command):
    """ListJobs whose page comes as the JSON text of its rows (a list of objects with the
    rows' fields and values, as a ListJobs row decodes): what a TMS passes on to its local
    client (tm/userserver/local.py) without decoding and encoding each row again."""

    commandName = b"ListJobsJSON"
    arguments = ListJobs.arguments
    response = [
        (b"jobs_json", amp.Unicode()),
        (b"next_after_id", Int64(optional=True)),
    ]


class GetJob(_Command):
    commandName = b"GetJob"
    arguments = [(b"job_id", Int64())]
    response = [
        (b"job", amp.AmpList(JOB_DETAIL_FIELDS)),  # exactly one row
        (b"history", amp.AmpList(HISTORY_FIELDS)),
        (b"wait_reason", amp.Unicode()),
        # Dispatcher -> the job's own user: its environment, sealed; the user's TMS opens it
        # and answers its client with ``env``.
        (b"sealed_env", amp.Unicode(optional=True)),
        (b"env", JSON(optional=True)),
    ]


class WaitJob(_Command):
    """Answers when the job has ended, or after ``timeout`` seconds with its state."""

    commandName = b"WaitJob"
    arguments = [(b"job_id", Int64()), (b"timeout", Float64())]
    response = [
        (b"state", amp.Unicode()),
        (b"exit_code", Int64(optional=True)),
        (b"signal", Int64(optional=True)),
        (b"reason", amp.Unicode()),
    ]


class GroupSummary(_Command):
    """Counts per state of one group (or of every group of the scope when ``group`` is None)."""

    commandName = b"GroupSummary"
    arguments = [(b"group", amp.Unicode(optional=True)), (b"scope", amp.Unicode())]
    response = [
        (b"groups", JSON()),  # {group: {state: count}}
        (b"usage", JSON(optional=True)),  # {group: its ended jobs' use}: queries.group_usage
    ]


class KillJobs(_Command):
    """Kill jobs by id, by regular expression on the command, or all of the scope's."""

    commandName = b"KillJobs"
    arguments = [
        (b"job_ids", amp.ListOf(Int64())),
        (b"regex", amp.Unicode(optional=True)),
        (b"all", amp.Boolean()),
    ]
    response = [
        (b"killed", amp.ListOf(Int64())),
        # How many more jobs were killed than ``killed`` lists (it must fit one AMP value).
        (b"more", Int64(optional=True)),
    ]


class SuspendJob(_Command):
    commandName = b"SuspendJob"
    arguments = [(b"job_id", Int64()), (b"resume", amp.Boolean())]
    response = []


# --- status, cluster and users ---------------------------------------------------


class GetStatus(_Command):
    """Cluster activity, hosts, slots, and counts per state (all users and the caller)."""

    commandName = b"GetStatus"
    arguments = []
    response = [
        (b"cluster_active", amp.Boolean()),
        (b"active_hosts", Int64()),
        (b"total_slots", Int64()),
        (b"occupied_slots", Int64()),
        (b"counts", amp.AmpList(STATE_COUNT_FIELDS)),
        (b"user_counts", amp.AmpList(STATE_COUNT_FIELDS)),
        (b"address", amp.Unicode()),
        (b"started_at", Float64()),
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
    response = [(b"count", Int64()), (b"message", amp.Unicode())]


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
        (b"port", Int64()),
        (b"pid", Int64()),
        (b"started_at", Float64()),
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
        # The one-time token the started executor shows at its login (given on its stdin).
        (b"token", amp.Unicode(optional=True)),
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
    response = [(b"pid", Int64()), (b"started_at", Float64())]
    errors = {**COMMON_ERRORS, JobStartFailed: b"JOB_START_FAILED"}


class SignalJob(_Command):
    """Kill (TERM then KILL), stop or continue the whole process tree of a job attempt."""

    commandName = b"SignalJob"
    arguments = [
        (b"job_id", Int64()),
        (b"attempt", Int64()),
        (b"action", amp.Unicode()),  # "kill" | "stop" | "cont"
    ]
    response = [(b"found", amp.Boolean())]


class JobFinished(_Command):
    """TMMS -> dispatcher: an attempt ended.  ``killed`` when we killed it."""

    commandName = b"JobFinished"
    arguments = [
        (b"job_id", Int64()),
        (b"attempt", Int64()),
        (b"exit_code", Int64(optional=True)),
        (b"signal", Int64(optional=True)),
        (b"killed", amp.Boolean()),
        (b"ended_at", Float64()),
        (b"reason", amp.Unicode()),
        # The executor stopped it because it lost contact with the dispatcher for longer than
        # its lease: not the job's doing, so it is requeued.
        (b"lost", amp.Boolean(optional=True)),
        (b"timed_out", amp.Boolean(optional=True)),  # stopped at its time limit
        (b"cpu_time", Float64(optional=True)),  # its tree's, as its shepherd reaped it
        (b"max_rss_kib", Int64(optional=True)),
        (b"run_time", Float64(optional=True)),
    ]
    response = []


class Heartbeat(_Command):
    """TMMS -> dispatcher every few seconds: load average and the attempts it runs."""

    commandName = b"Heartbeat"
    arguments = [
        (b"load", Float64(optional=True)),  # None when it cannot be read
        (b"running", JSON()),  # [[job_id, attempt], ...]
    ]
    response = [
        (b"time", Float64()),
        # The executor's lease: stop every job after this many seconds without an answer
        # from the dispatcher (which declares them lost only after twice as long).
        (b"lease", Float64(optional=True)),
        (b"interval", Float64(optional=True)),  # how often to send heartbeats
    ]


from tm.protocol.watching import ReadOutput, WaitJobs  # noqa: E402,F401  (the same vocabulary)
