"""Typed records on the wire: the AMP field lists and their conversion to and from model objects.

Every record that crosses a link is converted here and nowhere else.  Lists
travel as :class:`amp.AmpList` values, which must stay below
``MAX_VALUE_BYTES``; :func:`fit_to_value` trims a page so that it does.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from twisted.protocols import amp

from tm.core import jobfields
from tm.core.model import HistoryEntry, Host, Job, JobEnvironment, JobState
from tm.protocol.limits import (  # noqa: F401 - re-exported: the limits live there
    LISTING_COMMAND_CHARS,
    MAX_COMMAND_BYTES,
    MAX_ENVIRONMENT_BYTES,
    MAX_ESTIMATED_MEMORY,
    MAX_ESTIMATED_TIME,
    MAX_EXCLUDED_HOSTS,
    MAX_GROUP_CHARS,
    MAX_HOST_NAME_CHARS,
    MAX_INFO_BYTES,
    MAX_PATH_BYTES,
    MAX_SEALED_ENVIRONMENT_CHARS,
    MAX_SHELL_CHARS,
    MAX_SLOTS,
    MAX_UUID_CHARS,
    MAX_VALUE_BYTES,
    environment_problem,
    spec_problem,
)
from tm.protocol.rowlist import fit_rows, rows_of

T = TypeVar("T")


#: Integers on the wire fit a signed 64-bit column (SQLite's and MySQL's BIGINT).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Int64(amp.Argument):
    """An integer that fits a signed 64-bit column, in plain decimal digits.

    AMP's ``Integer`` takes any ``int()`` text (26 digits, ``" 1_0 "``) and lets it reach
    SQL; this one refuses it while the arguments are decoded.
    """

    def fromString(self, inString: bytes) -> int:  # noqa: N802 - AMP's API
        # bytes.isdigit() is true for ASCII digits only: the check needs no decoding.
        digits = inString[1:] if inString[:1] == b"-" else inString
        if digits.isdigit() and len(digits) <= 19:
            value = int(inString)
            if INT64_MIN <= value <= INT64_MAX:
                return value
            raise ValueError(f"integer out of the 64-bit range: {inString[:30].decode()}")
        text = inString.decode("ascii")  # UnicodeDecodeError for anything else: refused
        raise ValueError(f"not a 64-bit integer: {text[:30]!r}")

    def toString(self, inObject: int) -> bytes:  # noqa: N802 - AMP's API
        if not INT64_MIN <= inObject <= INT64_MAX:
            raise ValueError(f"integer out of the 64-bit range: {inObject}")
        return b"%d" % inObject


class Float64(amp.Argument):
    """A finite float (no NaN, no infinity, which neither SQL column nor JSON can hold)."""

    def fromString(self, inString: bytes) -> float:  # noqa: N802 - AMP's API
        value = float(inString.decode("ascii"))
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a finite number: {inString[:30].decode('ascii')}")
        return value

    def toString(self, inObject: float) -> bytes:  # noqa: N802 - AMP's API
        return repr(float(inObject)).encode("ascii")


class JSON(amp.Argument):
    """A JSON document (object, list, ...) as one AMP value."""

    def toString(self, inObject: Any) -> bytes:  # noqa: N802 - AMP's API
        return json.dumps(inObject, sort_keys=True, separators=(",", ":")).encode("utf-8")

    def fromString(self, inString: bytes) -> Any:  # noqa: N802 - AMP's API
        return json.loads(inString.decode("utf-8"))


def amp_argument(f: jobfields.Field) -> amp.Argument:
    """The AMP argument that carries a job field (as :func:`jobfields.to_plain` makes it)."""
    base = f.base
    if base is int:
        return Int64(optional=f.optional)
    if base is float:
        return Float64(optional=f.optional)
    if base is bool:
        return amp.Boolean()
    if typing.get_origin(base) is tuple:
        return amp.ListOf(amp.Unicode())
    # text, a state; no host travels as ""; the fields of migration 0003 may be left out
    return amp.Unicode(optional=f.name in jobfields.LATE_DEFAULTS)


def amp_fields(fields: Iterable[jobfields.Field]) -> list[tuple[bytes, amp.Argument]]:
    """The AMP argument list of some of a job's fields."""
    return [(f.name.encode("ascii"), amp_argument(f)) for f in fields]


JOB_SPEC_FIELDS = amp_fields(jobfields.SPEC_FIELDS)
JOB_SUMMARY_FIELDS = amp_fields(jobfields.LISTED_FIELDS)
JOB_DETAIL_FIELDS = amp_fields(jobfields.DETAIL_FIELDS)

HISTORY_FIELDS: list[tuple[bytes, amp.Argument]] = [
    (b"at", Float64()),
    (b"state", amp.Unicode()),
    (b"attempt", Int64()),
    (b"host", amp.Unicode()),
    (b"reason", amp.Unicode()),
]

HOST_FIELDS: list[tuple[bytes, amp.Argument]] = [
    (b"name", amp.Unicode()),
    (b"short_name", amp.Unicode()),
    (b"number_slots", Int64()),
    (b"max_slots", Int64()),
    (b"occupied_slots", Int64()),
    (b"active", amp.Boolean()),
    (b"retired", amp.Boolean()),
    (b"load_check", amp.Boolean()),
    (b"load", Float64(optional=True)),
    (b"executors", Int64()),
    (b"additional_info", amp.Unicode()),
]

USER_FIELDS: list[tuple[bytes, amp.Argument]] = [
    (b"name", amp.Unicode()),
    (b"roles", amp.ListOf(amp.Unicode())),
    (b"enabled", amp.Boolean()),
    (b"tms_connected", amp.Boolean()),
    (b"executors", amp.ListOf(amp.Unicode())),
    (b"waiting", Int64()),
    (b"pending", Int64()),
    (b"running", Int64()),
    (b"usage", Float64()),
]

STATE_COUNT_FIELDS: list[tuple[bytes, amp.Argument]] = [
    (b"state", amp.Unicode()),
    (b"count", Int64()),
]

#: The start order a TMMS receives: the job, its attempt, and where and how to run it; then
#: what the executor checks the user's signature with (``env`` is the sealed environment).
RUN_JOB_ARGUMENTS: list[tuple[bytes, amp.Argument]] = [
    (b"job_id", Int64()),
    (b"attempt", Int64()),
    (b"env", JSON()),
    *amp_fields(jobfields.RUN_FIELDS),
    *amp_fields(f for f in jobfields.CHECKED_FIELDS if f not in jobfields.RUN_FIELDS),
]
_RUN_ORDER_FIELDS = jobfields.RUN_FIELDS + tuple(
    f for f in jobfields.CHECKED_FIELDS if f not in jobfields.RUN_FIELDS
)


def run_job_to_amp(job: Job, env: Any) -> dict[str, Any]:
    """The arguments of RunJob for the job's current attempt; ``env`` as the store keeps it
    (see :func:`stored_environment`)."""
    run = {f.name: f.get(job) for f in _RUN_ORDER_FIELDS}
    return {"job_id": job.id, "attempt": job.attempt, "env": env, **run}


def stored_environment(text: str) -> Any:
    """An environment as the store keeps it, as RunJob carries it: the sealed text (a JSON
    string), or the mapping of an unsealed one (not submitted through a TMS: refused by the
    executor), {} for none."""
    if not text:
        return {}
    return json.loads(text) if text.startswith("{") else text


#: A job as one row of SubmitJobs (the fields of JOB_SPEC_FIELDS), built from the declaration
#: of a job's fields; the CLI's fast path makes the same row of its PlainSpec
#: (tm/core/plainspec.py, PlainSpec.row).
spec_to_row = spec_to_amp = jobfields.spec_to_plain


spec_from_amp = jobfields.spec_from_plain


def environment_to_amp(environment: JobEnvironment) -> dict[str, Any]:
    return {"cwd": environment.cwd, "umask": environment.umask, "env": dict(environment.env)}


def environment_from_amp(d: dict[str, Any]) -> JobEnvironment:
    env = d["env"]
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("the environment must map names to strings")
    return JobEnvironment(cwd=d["cwd"], umask=d["umask"], env=env)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_listed_row = jobfields.plain_rows(jobfields.LISTED_FIELDS)
_detail_row = jobfields.plain_rows(jobfields.DETAIL_FIELDS)


def _job_row(job: Job, make: Callable[[Job], dict[str, Any]]) -> dict[str, Any]:
    row = make(job)
    if job.state_since is None:  # not stored yet
        row["state_since"] = job.submitted_at
    return row


def job_summary_to_amp(job: Job) -> dict[str, Any]:
    """A row of ListJobs: its long texts cut for a listing."""
    row = _job_row(job, _listed_row)
    row["group"] = _shorten(job.spec.group, MAX_GROUP_CHARS)
    row["info"] = _shorten(job.spec.info, LISTING_COMMAND_CHARS)
    row["command"] = _shorten(job.spec.command, LISTING_COMMAND_CHARS)
    row["reason"] = _shorten(job.reason, 200)
    return row


def job_detail_to_amp(job: Job) -> dict[str, Any]:
    """GetJob's row: every field as it is but the group, cut as in a listing (see
    :func:`fit_job_detail`)."""
    row = _job_row(job, _detail_row)
    row["group"] = _shorten(job.spec.group, MAX_GROUP_CHARS)
    return row


def history_to_amp(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "at": entry.at,
        "state": entry.state.value,
        "attempt": entry.attempt,
        "host": entry.host or "",
        "reason": entry.reason,
    }


def history_from_amp(d: dict[str, Any]) -> HistoryEntry:
    return HistoryEntry(
        at=d["at"],
        state=JobState(d["state"]),
        attempt=d["attempt"],
        host=d["host"] or None,
        reason=d["reason"],
    )


def host_to_amp(
    host: Host, occupied_slots: int, load: float | None, executors: int
) -> dict[str, Any]:
    return {
        "name": host.name,
        "short_name": host.short_name,
        "number_slots": host.number_slots,
        "max_slots": host.max_slots,
        "occupied_slots": occupied_slots,
        "active": host.active,
        "retired": host.retired,
        "load_check": host.load_check,
        "load": load,
        "executors": executors,
        "additional_info": host.additional_info,
    }


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with "..." when cut."""
    return _shorten(text, limit)


def json_size(value: Any) -> int:
    """The size in bytes of ``value`` as a :class:`JSON` AMP value."""
    return len(JSON().toString(value))


def fit_lines(lines: Sequence[str], limit: int = MAX_VALUE_BYTES) -> list[str]:
    """As many leading ``lines`` as fit one ``ListOf(Unicode)`` value; when some are left
    out, the last line says how many."""
    out: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        size = 2 + len(line.encode("utf-8", "surrogatepass"))
        if used + size > limit - 100:
            out.append(f"... and {len(lines) - index} more")
            break
        out.append(line)
        used += size
    return out


def fit_job_detail(job: Job, limit: int = MAX_VALUE_BYTES) -> dict[str, Any]:
    """A job's detail row, its long texts cut so that it fits one AMP value (jobs stored
    before the submission limits, or a long reason)."""
    row = job_detail_to_amp(job)
    if _size_or_none(JOB_DETAIL_FIELDS, row) is not None:
        return row
    for key in (
        "reason",
        "info",
        "stdout",
        "stderr",
        "logfile",
        "cwd",
        "shell",
        "group",
        "user",
        "uuid",
        "host",
    ):
        row[key] = _shorten(row[key], 1_000)
    row["excluded_hosts"] = [_shorten(h, 255) for h in row["excluded_hosts"][:20]]
    rest = _size_or_none(JOB_DETAIL_FIELDS, row | {"command": ""}, limit) or 0
    room = max(0, limit - rest - 100)
    command = row["command"]
    cut = command.encode("utf-8", "surrogatepass")[:room].decode("utf-8", "ignore")
    if cut != command:
        row["command"] = cut[:-3] + "..."
    return row


def _size_or_none(
    fields: Sequence[tuple[bytes, amp.Argument]], row: dict, limit: int = MAX_VALUE_BYTES
) -> int | None:
    """The encoded size of one row, or None when it does not fit one value."""
    try:
        size = encoded_size(fields, [row])
    except amp.TooLong:
        return None
    return size if size <= limit else None


def encoded_size(fields: Sequence[tuple[bytes, amp.Argument]], rows: Iterable[dict]) -> int:
    """The size in bytes of ``rows`` encoded as one :class:`amp.AmpList` value."""
    return len(rows_of(fields).toStringProto(list(rows), None))


def fit_to_value(
    fields: Sequence[tuple[bytes, amp.Argument]],
    rows: Sequence[T],
    to_amp: Callable[[T], dict],
    limit: int = MAX_VALUE_BYTES,
) -> tuple[list[dict], int]:
    """Encode as many leading ``rows`` as fit in one AMP value.

    Returns the encoded dicts and how many of ``rows`` they cover.  Each row is
    sized on its own (the AmpList encoding is a concatenation), so this is linear; the
    rows keep their encoding, which the command's :class:`RowList` sends as is.
    """
    return fit_rows(rows_of(fields), rows, to_amp, limit)


def _json_coercion(argument: amp.Argument) -> Callable[[Any], Any] | None:
    """How a value becomes what ``argument`` decodes it to after the wire (None: as it is)."""
    if isinstance(argument, Int64):
        return int
    if isinstance(argument, Float64):
        return float
    if isinstance(argument, amp.Boolean):
        return bool
    return None


def fit_json(
    fields: Sequence[tuple[bytes, amp.Argument]],
    rows: Sequence[T],
    to_amp: Callable[[T], dict],
    limit: int = MAX_VALUE_BYTES,
) -> tuple[str, int]:
    """As many leading ``rows`` as fit in one AMP value, as the JSON text of their records:
    the objects ``json.dumps`` makes of the rows an AmpList of ``fields`` decodes (each
    field in order, an absent optional one null); and how many rows it holds."""
    readers = [
        (key.decode("ascii"), argument.optional, _json_coercion(argument))
        for key, argument in fields
    ]
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    texts: list[str] = []
    used = 2
    for source in rows:
        record = to_amp(source)
        row = {}
        for name, optional, coerce in readers:
            value = record.get(name) if optional else record[name]
            row[name] = value if value is None or coerce is None else coerce(value)
        text = dumps(row)
        used += len(text) + 1  # ASCII (json.dumps escapes the rest): characters are bytes
        if used > limit:
            break
        texts.append(text)
    return "[" + ",".join(texts) + "]", len(texts)
