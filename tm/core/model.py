"""Jobs, hosts and users as plain data, and the rules of the job state machine.

Pure: no I/O, no reactor, no clock.  Every state change of a job goes through
:func:`check_transition`; the database applies it as a compare-and-set.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class JobState(enum.StrEnum):
    """The states of DESIGN.md section 5."""

    WAITING = "waiting"
    PENDING = "pending"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    KILLED = "killed"
    LOST = "lost"
    TIMEOUT = "timeout"  # stopped at its time limit (issue 11 point 2)
    CANCELLED = "cancelled"  # a dependency ended badly: never started (tm/core/dependencies.py)

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def holds_slots(self) -> bool:
        """Pending and running jobs occupy slots on their host."""
        return self in (JobState.PENDING, JobState.RUNNING)


TERMINAL_STATES = frozenset(
    {JobState.FINISHED, JobState.FAILED, JobState.KILLED, JobState.TIMEOUT, JobState.CANCELLED}
)
ACTIVE_STATES = frozenset({JobState.WAITING, JobState.PENDING, JobState.RUNNING, JobState.LOST})

#: old state -> states it may move to.  ``lost`` is left again only by a requeue
#: (``waiting`` with attempt + 1) or by giving up (``failed``).  Admin repair
#: commands (setallpjobsaswaiting, setallrjobsasfinished, ...) use the same edges.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.WAITING: frozenset({JobState.PENDING, JobState.KILLED, JobState.CANCELLED}),
    JobState.PENDING: frozenset(
        {
            JobState.WAITING,
            JobState.RUNNING,
            JobState.FINISHED,
            JobState.FAILED,
            JobState.KILLED,
            JobState.LOST,
            JobState.TIMEOUT,
        }
    ),
    JobState.RUNNING: frozenset(
        {JobState.WAITING, JobState.FINISHED, JobState.FAILED, JobState.KILLED, JobState.LOST}
        | {JobState.TIMEOUT}
    ),
    JobState.LOST: frozenset({JobState.WAITING, JobState.FAILED}),
    JobState.FINISHED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.KILLED: frozenset(),
    JobState.TIMEOUT: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class TransitionError(ValueError):
    """A state change that the state machine does not allow."""


def check_transition(old: JobState, new: JobState) -> None:
    """Raise :class:`TransitionError` unless ``old -> new`` is an allowed edge."""
    if new not in ALLOWED_TRANSITIONS[old]:
        raise TransitionError(f"a job cannot go from {old.value} to {new.value}")


def is_allowed(old: JobState, new: JobState) -> bool:
    return new in ALLOWED_TRANSITIONS[old]


def ending_state(
    exit_code: int | None, signal: int | None, killed: bool = False, timed_out: bool = False
) -> JobState:
    """The state a job ends in, from how its process ended.

    ``finished`` means exit code 0; a job ended by our own kill is ``killed``, by its
    executor at its time limit ``timeout``; every other ending (non-zero exit, a signal we
    did not send) is ``failed``.
    """
    if timed_out:
        return JobState.TIMEOUT
    if killed:
        return JobState.KILLED
    if signal is None and exit_code == 0:
        return JobState.FINISHED
    return JobState.FAILED


@dataclass(frozen=True)
class Transition:
    """One compare-and-set state change of one job attempt.

    Applied only if the job is still in ``old`` with ``attempt``.  ``new_attempt``
    is set when a requeue starts the next attempt.  The other fields are written
    with the change when not None; ``at`` replaces the write's time for the new
    state's timestamps (``state_since``, ``ended_at``, the history entry).
    """

    job_id: int
    attempt: int
    old: JobState
    new: JobState
    reason: str = ""
    host: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    new_attempt: int | None = None
    clear_host: bool = False
    #: When it happened, if not when it is written: an end the executor reports late
    #: (e.g. after a dispatcher outage) carries the executor's own end time.
    at: float | None = None
    #: An end's resource use (issue 11 point 6), written with the end: CPU seconds (user +
    #: system) and largest resident set (KiB) of the job's tree, and its run time on its host.
    cpu_time: float | None = None
    max_rss_kib: int | None = None
    run_time: float | None = None

    def __post_init__(self) -> None:
        check_transition(self.old, self.new)

    def changes(self, now: float) -> dict[str, object]:
        """The job's fields this change sets, by :class:`Job` field name (their columns in
        ``tm/core/jobfields.py``): what the store writes and what the
        dispatcher applies to the job in memory, from this one function. ``now`` is used
        when ``at`` is None."""
        at = now if self.at is None else self.at
        out: dict[str, object] = {"state": self.new, "state_since": at, "reason": self.reason}
        if self.new is JobState.RUNNING:
            out["started_at"] = at
        if self.new.terminal:
            out["ended_at"] = at
            out["exit_code"] = self.exit_code
            out["signal"] = self.signal
            out["cpu_time"] = self.cpu_time
            out["max_rss_kib"] = self.max_rss_kib
            out["run_time"] = self.run_time
        if self.new_attempt is not None:
            out["attempt"] = self.new_attempt
        if self.clear_host:
            out["host"] = None
            out["pid"] = None
        if self.host is not None:
            out["host"] = self.host
        if self.pid is not None:
            out["pid"] = self.pid
        return out


MIN_PRIORITY = 0
MAX_PRIORITY = 127


@dataclass(frozen=True)
class JobSpec:
    """What a user asks to run: everything a submission carries for one job.

    ``cwd``, ``umask`` and ``env`` are the submission's, shared by a whole chunk
    on the wire but stored per job.
    """

    uuid: str
    command: str
    shell: str = "/bin/sh"
    slots: int = 1
    priority: int = 0
    group: str = ""
    info: str = ""
    stdout: str = ""
    stderr: str = ""
    logfile: str = ""
    excluded_hosts: tuple[str, ...] = ()
    estimated_time: float | None = None
    estimated_memory: float | None = None
    #: Made by the user's TMS (tm/jobsign.py): the signature of what defines the job, and
    #: when it was made (whole seconds).
    signature: str = ""
    signed_at: float = 0.0
    #: Dependencies (tm/core/dependencies.py): job ids as "3,4,9", and a group of the user.
    after: str = ""
    after_any: str = ""
    after_group: str = ""
    #: "" or who holds the waiting job: "user:NAME" or "admin:NAME" (hRunJob --hold: "user").
    hold: str = ""
    #: Seconds the job may run on its host before its executor stops it (issue 11 point 2).
    time_limit: float | None = None
    #: Retries (issue 11 point 3, tm/core/retry.py): more attempts after a lost attempt, a
    #: failed start or an exit code of ``retry_on_exit`` ("3,5-7"); None: the dispatcher's
    #: default. ``on_end``: the command the user's TMS runs when the job has ended.
    retries: int | None = None
    retry_on_exit: str = ""
    on_end: str = ""
    #: A job of an array (hRunJob --array, tm/core/arrays.py): the array's id, the job's
    #: index in it, and how many of the array may be pending or running at once.
    array_id: str = ""
    array_index: int | None = None
    array_cap: int | None = None


_JOB_SPEC_FIELDS = frozenset(JobSpec.__dataclass_fields__)
#: In the order of the generated __init__ (the shared table of keys is made in that order).
_JOB_SPEC_ORDER = tuple(JobSpec.__dataclass_fields__)


def job_spec_of(values: dict[str, Any]) -> JobSpec:
    """``JobSpec(**values)`` for ``values`` that name every field (and only the fields),
    without the generated ``__init__``'s defaults and keyword matching (a bulk submission
    makes one per job). Each field is set in the fields' order, as ``__init__`` sets them:
    the instances then share one table of keys (about 280 bytes each for their attributes,
    against 830 for a dict of their own taken whole, 58 MB per 100 000 waiting jobs)."""
    if values.keys() != _JOB_SPEC_FIELDS:
        raise TypeError(f"a JobSpec's fields are {sorted(_JOB_SPEC_FIELDS)}, not {sorted(values)}")
    spec = _new_object(JobSpec)
    for name in _JOB_SPEC_ORDER:
        _set_attribute(spec, name, values[name])
    return spec


_new_object = object.__new__
_set_attribute = object.__setattr__


@dataclass(frozen=True)
class JobEnvironment:
    """Where and how a submission's jobs run: its directory, umask and environment."""

    cwd: str
    umask: int = 0o022
    env: dict[str, str] = field(default_factory=dict)
    #: The environment sealed with the user's key (tm/jobsign.py); ``env`` is then empty.
    sealed: str = ""


@dataclass
class Job:
    """A job as the dispatcher and the database know it."""

    id: int
    uuid: str
    user: str
    spec: JobSpec
    state: JobState
    attempt: int
    submitted_at: float
    host: str | None = None
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    state_since: float | None = None
    suspended: bool = False
    cwd: str = ""
    umask: int = 0o022
    env_id: int | None = None
    #: The last end's resource use (see Transition): CPU s, peak memory KiB, run time s.
    cpu_time: float | None = None
    max_rss_kib: int | None = None
    run_time: float | None = None
    #: Its ``on_end`` callback ran (or never will): tm/userserver/callbacks.py.
    on_end_done: bool = False


@dataclass(frozen=True)
class HistoryEntry:
    """One row of a job's history: a transition with its timestamp."""

    at: float
    state: JobState
    attempt: int
    host: str | None = None
    reason: str = ""


@dataclass
class Host:
    """A cluster host as configured (etc/cluster.tab) plus its persisted switches."""

    name: str  # full_name: the host's identity
    short_name: str = ""
    number_slots: int = 1
    max_slots: int = 1  # max_number_occupied_slots
    additional_info: str = ""
    active: bool = True
    retired: bool = False
    load_check: bool = False
    ssh_target: str = ""  # what ssh connects to; "" for the local host (spawned directly)
    tmmenial_command: str = ""  # command that starts tmmenial there; "" for the default

    @property
    def display_name(self) -> str:
        return self.short_name or self.name


@dataclass
class User:
    name: str
    roles: frozenset[str] = frozenset({"user"})
    enabled: bool = True

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles
