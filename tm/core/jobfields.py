"""A job's fields, declared once: name, type, column and where each one travels.

Every other spelling of a job field is derived from :data:`FIELDS` or checked against it by
``tests/unit/test_jobfields.py``:

* the ``jobs`` table: :mod:`tm.db.queries` builds its SELECT, INSERT and UPDATE column
  lists and its row conversions from here; the schema's ``CREATE TABLE jobs``
  (``tm/db/schema``, both dialects) is checked column for column;
* AMP: :mod:`tm.protocol.records` builds the rows of ``SubmitJobs``, ``ListJobs``,
  ``GetJob`` and the arguments of ``RunJob`` from the groups below; the executor's
  ``RunRequest`` is checked against :data:`RUN`;
* ``hRunJob``: its options' destinations and the job file's keys (``tm/jobfile.py``) are the
  field names; the spellings a user types (``-i/--info-text``, ``infoText::``) stay the seed's.

One name per field, the model's (:class:`~tm.core.model.Job` / :class:`~tm.core.model.JobSpec`
attribute). The only other spelling is the database column where it differs (``user_name``,
``group_name``, ``info_text``: kept for the existing databases and the applications that read
them; ```signal```: a reserved word in MySQL), carried by :attr:`Field.column`. A message
about one job names it ``job_id`` (a reference, like ``Transition.job_id``); its record's own
field is ``id``.

Pure: no I/O, no Twisted (the command line's fast path imports it).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import attrgetter
from typing import Any

from tm.core.model import Job, JobSpec, JobState, job_spec_of

#: Groups: where a field travels besides its column (every field is a ``jobs`` column).
#: What a submission carries per job (JobSpec; a row of SubmitJobs, a line of a job file).
SPEC = "spec"
#: A row of a listing (ListJobs).
LISTED = "listed"
#: A job's detail (GetJob) adds these to the listed ones.
DETAIL = "detail"
#: A start order (RunJob, the executor's RunRequest), besides ``job_id``, ``attempt`` and ``env``.
RUN = "run"
#: What the user's signature covers (with the sealed environment and the time of signing:
#: tm/jobsign.py).
SIGNED = "signed"
#: Made by hRunJob for the jobs of an array (``--array``): part of the spec, but neither an
#: option of their own nor a job file's key (tm/core/arrays.py).
MADE = "made"
#: A start order also carries these, for the executor to check the signature (not part of the
#: RunRequest).
CHECKED = "checked"


@dataclass(frozen=True)
class Field:
    """One field of a job.

    ``type`` is the annotation of the model's attribute (``Job.<name>``, or ``JobSpec.<name>``
    for the fields of :data:`SPEC`); ``sql`` the column's definition as the schema writes it;
    ``column`` the column's name as SQL spells it, where it is not ``name``.
    """

    name: str
    type: Any
    sql: str
    groups: frozenset[str] = frozenset()
    column: str = ""

    @property
    def sql_name(self) -> str:
        """The column as a statement names it (quoted where it is a reserved word)."""
        return self.column or self.name

    @cached_property
    def optional(self) -> bool:
        """None is one of its values."""
        return isinstance(self.type, types.UnionType) and type(None) in self.type.__args__

    @cached_property
    def base(self) -> Any:
        """Its type without None: ``int`` for ``int | None``."""
        if not self.optional:
            return self.type
        (base,) = (t for t in self.type.__args__ if t is not type(None))
        return base

    @cached_property
    def in_spec(self) -> bool:
        """It is an attribute of the job's JobSpec (``job.spec.<name>``)."""
        return SPEC in self.groups

    def get(self, job: Job) -> Any:
        """Its value in ``job``."""
        return getattr(job.spec if self.in_spec else job, self.name)


def _field(name: str, type_: Any, sql: str, *groups: str, column: str = "") -> Field:
    return Field(name, type_, sql, frozenset(groups), column)


#: The ``jobs`` table's columns, in the schema's order.
FIELDS: tuple[Field, ...] = (
    _field("id", int, "{AUTOINC_PK}", LISTED),
    _field("uuid", str, "VARCHAR(36) NOT NULL UNIQUE", SPEC, DETAIL, SIGNED, CHECKED),
    _field("user", str, "VARCHAR(100) NOT NULL", LISTED, SIGNED, CHECKED, column="user_name"),
    _field("command", str, "TEXT NOT NULL", SPEC, LISTED, RUN, SIGNED),
    _field("shell", str, "VARCHAR(255) NOT NULL", SPEC, DETAIL, RUN, SIGNED),
    _field("cwd", str, "TEXT NOT NULL", DETAIL, RUN, SIGNED),
    _field("umask", int, "INTEGER NOT NULL", DETAIL, RUN, SIGNED),
    _field("env_id", int | None, "BIGINT NULL"),
    _field("slots", int, "INTEGER NOT NULL", SPEC, LISTED, RUN, SIGNED),
    _field("priority", int, "INTEGER NOT NULL", SPEC, LISTED),
    _field("group", str, "VARCHAR(255) NOT NULL", SPEC, LISTED, column="group_name"),
    _field("info", str, "TEXT NOT NULL", SPEC, LISTED, column="info_text"),
    _field("stdout", str, "TEXT NOT NULL", SPEC, DETAIL, RUN, SIGNED),
    _field("stderr", str, "TEXT NOT NULL", SPEC, DETAIL, RUN, SIGNED),
    _field("logfile", str, "TEXT NOT NULL", SPEC, DETAIL, RUN, SIGNED),
    _field("excluded_hosts", tuple[str, ...], "TEXT NOT NULL", SPEC, DETAIL),
    _field("estimated_time", float | None, "DOUBLE NULL", SPEC, DETAIL),
    _field("estimated_memory", float | None, "DOUBLE NULL", SPEC, DETAIL),
    _field("state", JobState, "VARCHAR(16) NOT NULL", LISTED),
    _field("attempt", int, "INTEGER NOT NULL", LISTED),
    _field("host", str | None, "VARCHAR(255) NULL", LISTED),
    _field("pid", int | None, "INTEGER NULL", DETAIL),
    _field("exit_code", int | None, "INTEGER NULL", LISTED),
    _field("signal", int | None, "INTEGER NULL", LISTED, column="`signal`"),
    _field("reason", str, "TEXT NOT NULL", LISTED),
    _field("suspended", bool, "SMALLINT NOT NULL", LISTED),
    _field("submitted_at", float, "DOUBLE NOT NULL", LISTED),
    # None in memory until the store has the job; the column always has a time.
    _field("state_since", float | None, "DOUBLE NOT NULL", LISTED),
    _field("started_at", float | None, "DOUBLE NULL", DETAIL),
    _field("ended_at", float | None, "DOUBLE NULL", DETAIL),
    # Added by migration 0002 (tm/db/schema/0002_signed_jobs.sql): made by the user's TMS.
    _field("signature", str, "VARCHAR(100) NOT NULL DEFAULT ''", SPEC, DETAIL, CHECKED),
    _field("signed_at", float, "DOUBLE NOT NULL DEFAULT 0", SPEC, DETAIL, CHECKED),
    # Added by migration 0003 (tm/db/schema/0003_dependencies_holds.sql): dependencies and
    # holds (tm/core/dependencies.py).
    _field("after", str, "TEXT NOT NULL DEFAULT ''", SPEC, DETAIL, column="after_ok"),
    _field("after_any", str, "TEXT NOT NULL DEFAULT ''", SPEC, DETAIL),
    _field("after_group", str, "VARCHAR(255) NOT NULL DEFAULT ''", SPEC, DETAIL),
    _field("hold", str, "VARCHAR(120) NOT NULL DEFAULT ''", SPEC, LISTED),
    # Added by migration 0004 (tm/db/schema/0004_job_limits.sql): the time limit the executor
    # enforces (signed only when set: tm/jobsign.py), and the last end's resource use.
    _field("time_limit", float | None, "DOUBLE NULL", SPEC, DETAIL, RUN, SIGNED),
    _field("cpu_time", float | None, "DOUBLE NULL", LISTED),
    _field("max_rss_kib", int | None, "BIGINT NULL", LISTED),
    _field("run_time", float | None, "DOUBLE NULL", LISTED),
    # Added by migration 0005 (tm/db/schema/0005_retries_callbacks.sql): retries
    # (tm/core/retry.py) and the on-end callback its user's TMS runs (tm/userserver/callbacks.py).
    _field("retries", int | None, "INTEGER NULL", SPEC, DETAIL),
    _field("retry_on_exit", str, "VARCHAR(255) NOT NULL DEFAULT ''", SPEC, DETAIL),
    _field("on_end", str, "TEXT NOT NULL DEFAULT ''", SPEC, DETAIL),
    _field("on_end_done", bool, "SMALLINT NOT NULL DEFAULT 0"),
    # Added by migration 0006 (tm/db/schema/0006_job_arrays.sql): job arrays (tm/core/arrays.py).
    # The index is signed and given to the job as TM_ARRAY_INDEX.
    _field("array_id", str, "VARCHAR(36) NOT NULL DEFAULT ''", SPEC, DETAIL, MADE),
    _field("array_index", int | None, "INTEGER NULL", SPEC, DETAIL, RUN, SIGNED, MADE),
    _field("array_cap", int | None, "INTEGER NULL", SPEC, DETAIL, MADE),
)

BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}


def group(name: str) -> tuple[Field, ...]:
    """The fields of one group, in the declaration's order."""
    return tuple(f for f in FIELDS if name in f.groups)


SPEC_FIELDS = group(SPEC)
LISTED_FIELDS = group(LISTED)
#: GetJob's row: the listed fields and the detail ones.
DETAIL_FIELDS = LISTED_FIELDS + group(DETAIL)
RUN_FIELDS = group(RUN)
SIGNED_FIELDS = group(SIGNED)
CHECKED_FIELDS = group(CHECKED)
#: What a user gives for a job (hRunJob's options, a job file's keys): the spec but what the
#: client (uuid) and the user's TMS (signature) make.
GIVEN_FIELDS = tuple(f for f in SPEC_FIELDS if not {CHECKED, MADE} & f.groups)


def column(name: str) -> str:
    """The SQL spelling of the column of the field ``name``."""
    return BY_NAME[name].sql_name


# --- plain records (AMP rows, JSON) -----------------------------------------------------------
# Converters are chosen once per field, not per value: listings and submissions convert
# thousands of rows.


def _state_text(state: JobState) -> str:
    return state.value


def _text_or_empty(text: str | None) -> str:
    return "" if text is None else text


def _text_or_none(text: str) -> str | None:
    return text or None


def _plain_converters(f: Field) -> tuple[Callable[[Any], Any] | None, Callable[[Any], Any] | None]:
    """How a value of ``f`` goes into a record and comes back; None: as it is."""
    if f.base is JobState:
        return _state_text, JobState
    if typing.get_origin(f.base) is tuple:
        return list, tuple
    if f.base is str and f.optional:
        return _text_or_empty, _text_or_none  # AMP rows carry no None for text
    return None, None


def to_plain(f: Field, value: Any) -> Any:
    """``value`` of ``f`` as a record (AMP or JSON) carries it: a state as its text, excluded
    hosts as a list, no host as ""."""
    convert = _plain_converters(f)[0]
    return value if convert is None else convert(value)


def from_plain(f: Field, value: Any) -> Any:
    """The model's value of ``f`` from a record's (the inverse of :func:`to_plain`)."""
    convert = _plain_converters(f)[1]
    return value if convert is None or value is None else convert(value)


def plain_rows(fields: Sequence[Field], of_spec: bool = False) -> Callable[[Any], dict[str, Any]]:
    """The function that makes the record of ``fields`` from a Job (or, ``of_spec``, from a
    JobSpec)."""
    parts = tuple(
        (
            f.name,
            attrgetter(f.name if of_spec or not f.in_spec else "spec." + f.name),
            _plain_converters(f)[0],
        )
        for f in fields
    )

    def row(source: Any) -> dict[str, Any]:
        out = {}
        for name, get, convert in parts:
            value = get(source)
            out[name] = value if convert is None else convert(value)
        return out

    return row


#: A JobSpec as one row of SubmitJobs.
spec_to_plain: Callable[[JobSpec], dict[str, Any]] = plain_rows(SPEC_FIELDS, of_spec=True)

#: Fields a row may leave out (rows made before migration 0003 added them): their default.
LATE_DEFAULTS = {"after": "", "after_any": "", "after_group": "", "hold": ""}
_SPEC_READERS = tuple((f.name, f.optional, _plain_converters(f)[1]) for f in SPEC_FIELDS)


_SPEC_NAMES = frozenset(f.name for f in SPEC_FIELDS)
#: The spec's fields whose record value is converted (excluded hosts: a list, a tuple here).
_SPEC_CONVERTED = tuple((f.name, c) for f in SPEC_FIELDS if (c := _plain_converters(f)[1]))


def spec_from_plain(row: dict[str, Any]) -> JobSpec:
    """A JobSpec from one row of SubmitJobs (an optional field, or one of an array, may be
    absent)."""
    if row.keys() == _SPEC_NAMES:
        # Every field given, as a RowList decodes a row of SubmitJobs (an absent optional
        # one: None): the same values as the general path below, without its walk of the
        # fields (this runs once per job of a bulk submission).
        values = dict(row)
        for name in LATE_DEFAULTS:
            if values[name] is None:
                values[name] = LATE_DEFAULTS[name]
        for name, converter in _SPEC_CONVERTED:
            value = values[name]
            if value is not None:
                values[name] = converter(value)
        return job_spec_of(values)
    values = {}
    for name, optional, convert in _SPEC_READERS:
        if name in _MADE_NAMES and name not in row:
            continue  # a job of no array, from a client that does not know arrays
        if optional:
            value = row.get(name)
        elif name in LATE_DEFAULTS:
            value = row.get(name)
            value = LATE_DEFAULTS[name] if value is None else value
        else:
            value = row[name]
        values[name] = value if convert is None or value is None else convert(value)
    return JobSpec(**values)


_MADE_NAMES = frozenset(f.name for f in FIELDS if MADE in f.groups)
