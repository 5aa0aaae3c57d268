"""A chunk of a submission as one table: the TMS's ``SubmitJobTable`` to the dispatcher.

``SubmitJobs`` carries each job as an AMP box (each of its 26 fields a key and a
length-prefixed value), which the dispatcher reads field by field in Python. A table carries
the same rows as one JSON document, ``{"fields": [NAME, ...], "same": {NAME: VALUE, ...},
"rows": [[VALUE, ...], ...]}`` (``same``: the fields whose value is that in every job, sent
once), read by ``json`` in C and checked a column at a time (again in C:
``set(map(type, column))``): three times the jobs of a bulk submission in one AMP value (561
short jobs against 160), a tenth of the decoding.

The values are those of a row of ``SubmitJobs`` (``tm.protocol.records.JOB_SPEC_FIELDS``),
checked as AMP's arguments check them: text is text (valid Unicode), an integer an integer of
64 bits (not a boolean), a number a finite number, the excluded hosts a list of texts; None
only for an optional field, which a table may also leave out. A field the receiver does not
know is refused (AMP would drop it silently: a newer sender's field must not be lost).
What is wrong is said in one line that names the job (its row, from 1) and the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from itertools import chain
from operator import itemgetter
from typing import Any

from twisted.protocols import amp

from tm.protocol.records import INT64_MAX, INT64_MIN, JOB_SPEC_FIELDS, Float64, Int64

#: Each field's kind: "text", "int", "float" or "texts" (a list of texts), and optional.
_KINDS: dict[str, tuple[str, bool]] = {}
for _key, _argument in JOB_SPEC_FIELDS:
    if isinstance(_argument, Int64):
        _kind = "int"
    elif isinstance(_argument, Float64):
        _kind = "float"
    elif isinstance(_argument, amp.ListOf):
        _kind = "texts"
    elif type(_argument) is amp.Unicode:
        _kind = "text"
    else:  # pragma: no cover - a new kind of field must be taught here
        raise TypeError(f"no table kind for the job field {_key!r}")
    _KINDS[_key.decode("ascii")] = (_kind, bool(_argument.optional))

#: The fields, in the order a table sends them.
NAMES: tuple[str, ...] = tuple(_KINDS)
_REQUIRED = frozenset(name for name, (_, optional) in _KINDS.items() if not optional)
_NONES = dict.fromkeys(NAMES)
_ALLOWED: dict[str, set[type]] = {
    "text": {str},
    "int": {int},
    "float": {float, int},
    "texts": {list},
}
_WHAT = {
    "text": "a text",
    "int": "a whole number",
    "float": "a number",
    "texts": "a list of texts",
}
_values_of = itemgetter(*NAMES)
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
#: Jobs read ahead to find the fields whose value is the same in each (sent once per table).
LOOKAHEAD = 64


class TableError(ValueError):
    """A table that is not one of jobs: the one line that says why."""


# --- sending ------------------------------------------------------------------------------


def fit_table(
    rows: Sequence[Any], to_row: Callable[[Any], dict[str, Any]], first: int, limit: int
) -> tuple[str, int]:
    """As many leading ``rows`` as fit in ``limit`` bytes, as one table: its text and how
    many. ``to_row`` makes each one's row of SubmitJobs (its fields by name; an optional one
    may be absent); the values are checked here as the receiver checks them (TableError
    naming the job, numbered from ``first``), so that a bad one is refused before the
    chunk leaves. A row that alone is over ``limit`` ends the table there.

    The fields whose value is the same in the first :data:`LOOKAHEAD` jobs go once, in
    ``same``; a later job with another value there ends the table (the next one starts
    from it)."""
    values: list[tuple[Any, ...]] = []
    for source in rows[:LOOKAHEAD]:
        values.append(_values(to_row, source, first + len(values)))
    if not values:
        return "", 0
    checked_rows(NAMES, values, first)
    # The uuid always varies (and keeps each row a list of at least one value).
    varying = [0] + [
        i for i, column in enumerate(zip(*values, strict=True)) if i and not _one_value(column)
    ]
    fixed = [i for i in range(len(NAMES)) if i not in varying]
    row_of = itemgetter(*varying, 0)  # a tuple even of one value; the extra one cut below
    fixed_of = itemgetter(*fixed) if len(fixed) > 1 else (lambda v: (v[fixed[0]],) if fixed else ())
    same_values = fixed_of(values[0])
    same_key = repr(same_values)
    head = (
        '{"fields":'
        + _encode([NAMES[i] for i in varying])
        + ',"same":'
        + _encode({NAMES[i]: value for i, value in zip(fixed, same_values, strict=True)})
        + ',"rows":['
    ).encode("utf-8")
    parts: list[bytes] = []
    later: list[tuple[Any, ...]] = []  # the values of the jobs after the lookahead
    used = len(head) + 2 - 1  # "]}"; the first row has no comma before it
    for index, source in enumerate(rows):
        if index < len(values):
            these = values[index]
        else:
            these = _values(to_row, source, first + index)
            if repr(fixed_of(these)) != same_key:
                break  # another value where the table has one for all: the next table
        try:
            data = _encode(row_of(these)[:-1]).encode("utf-8")
        except (TypeError, ValueError) as e:
            checked_rows(NAMES, [these], first + index)  # says which field, if it can
            raise TableError(f"job {first + index}: {e}") from None
        if used + 1 + len(data) > limit:
            break
        if index >= len(values):
            later.append(these)
        parts.append(data)
        used += 1 + len(data)
    checked_rows(NAMES, later, first + len(values))
    return (head + b",".join(parts) + b"]}").decode("utf-8"), len(parts)


def _values(to_row: Callable[[Any], dict[str, Any]], source: Any, number: int) -> tuple[Any, ...]:
    """The values of one job's row, in the order of :data:`NAMES` (None for one absent)."""
    try:
        row = to_row(source)
    except (TypeError, ValueError, KeyError) as e:
        raise TableError(f"job {number}: {e}") from None
    try:
        return tuple(_values_of(row))
    except KeyError:
        return tuple(row.get(name) for name in NAMES)


def _one_value(column: tuple[Any, ...]) -> bool:
    """Each value of ``column`` is the same (by its ``repr``: 1 and 1.0, 0.0 and -0.0 differ)."""
    return len(set(map(repr, column))) == 1


# --- receiving ----------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise TableError(f"{name} is not a number a job may carry")


def rows_of_table(text: str) -> list[dict[str, Any]]:
    """The rows of SubmitJobs a table carries (each with every field, an absent optional one
    None); TableError for anything a SubmitJobs' rows could not have held."""
    try:
        doc = json.loads(text, parse_constant=_refuse_constant)
    except TableError:
        raise
    except ValueError as e:
        raise TableError(f"the job table is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("fields"), list):
        raise TableError("the job table has no list of fields")
    names = doc["fields"]
    rows = doc.get("rows")
    if not isinstance(rows, list):
        raise TableError("the job table has no list of rows")
    if not all(type(name) is str for name in names) or len(set(names)) != len(names):
        raise TableError("the job table's fields must be distinct names")
    unknown = [name for name in names if name not in _KINDS]
    if unknown:
        raise TableError(f"the job table has a field this dispatcher does not know: {unknown[0]}")
    same = doc.get("same", {})
    if not isinstance(same, dict):
        raise TableError("the job table's same values must be an object")
    for name, value in same.items():
        if name not in _KINDS or name in names:
            raise TableError(f"the job table's same values name an unknown or listed field: {name}")
        same[name] = _checked_column(name, (value,), 1)[0]
    missing = _REQUIRED.difference(names, same)
    if missing:
        raise TableError(f"the job table lacks the field {sorted(missing)[0]}")
    rows = checked_rows(names, rows)
    base = _NONES | same
    return [base | dict(zip(names, row, strict=True)) for row in rows]


def first_uuid(table: object) -> object:
    """The uuid of a table's first job, read without checking the rest (for a trace line);
    None if there is none to read."""
    try:
        doc = json.loads(table) if isinstance(table, str) else None
        if isinstance(doc, dict):
            uuid = doc.get("same", {}).get("uuid")
            return uuid if uuid is not None else doc["rows"][0][doc["fields"].index("uuid")]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        pass
    return None


def checked_rows(names: Sequence[str], rows: list[Any], first: int = 1) -> list[Any]:
    """``rows`` (lists or tuples of the values of ``names``, known fields) if every value is
    one its field may hold, else TableError naming the first job that breaks it (numbered
    from ``first``); a number column's whole numbers are made floats (the rows then tuples)."""
    if not rows:
        return rows
    width = len(names)
    if not set(map(type, rows)) <= {list, tuple} or set(map(len, rows)) != {width}:
        for index, row in enumerate(rows):
            if type(row) not in (list, tuple) or len(row) != width:
                raise TableError(
                    f"job {index + first}: a row of the job table must have {width} values"
                )
    columns = list(zip(*rows, strict=True))
    changed = False
    for position, name in enumerate(names):
        column = columns[position]
        fixed = _checked_column(name, column, first)
        if fixed is not column:
            columns[position] = fixed
            changed = True
    return list(zip(*columns, strict=True)) if changed else rows


def _checked_column(name: str, column: tuple[Any, ...], first: int) -> tuple[Any, ...]:
    """``column`` of the field ``name`` if each value is one the field may hold (a number
    column's whole numbers made floats: a new tuple); TableError naming the first that
    is not."""
    kind, optional = _KINDS[name]
    allowed = _ALLOWED[kind]
    types = set(map(type, column))
    given = column
    if type(None) in types:
        if not optional:
            _first_bad(first, name, column, lambda v: v is None, "must be given")
        types.discard(type(None))
        given = tuple(v for v in column if v is not None)
    if not types <= allowed:
        _first_bad(
            first, name, column, lambda v: v is not None and type(v) not in allowed, _what(kind)
        )
    if not given:
        return column
    if kind == "text":
        _check_unicode(first, name, column, given)
    elif kind == "int":
        if min(given) < INT64_MIN or max(given) > INT64_MAX:
            _first_bad(
                first,
                name,
                column,
                lambda v: v is not None and not INT64_MIN <= v <= INT64_MAX,
                "must be a whole number of 64 bits",
            )
    elif kind == "float":
        if not all(map(math.isfinite, given)):
            _first_bad(
                first,
                name,
                column,
                lambda v: v is not None and not math.isfinite(v),
                "must be finite",
            )
        if int in types:
            return tuple(v if v is None else float(v) for v in column)
    else:  # a list of texts
        items = list(chain.from_iterable(given))
        if not set(map(type, items)) <= {str}:
            _first_bad(
                first,
                name,
                column,
                lambda v: v is not None and any(type(i) is not str for i in v),
                "must be a list of texts",
            )
        _check_unicode(first, name, column, items, listed=True)
    return column


def _what(kind: str) -> str:
    return f"must be {_WHAT[kind]}"


def _check_unicode(
    first: int, name: str, column: Sequence[Any], texts: Sequence[str], listed: bool = False
) -> None:
    """AMP carries text as strict UTF-8: a lone surrogate (JSON's ``"\\ud800"``) is refused."""
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:

        def bad(value: Any) -> bool:
            try:
                for text in value if listed else (value,):
                    text.encode("utf-8")
            except (UnicodeEncodeError, AttributeError):
                return True
            return False

        _first_bad(first, name, column, lambda v: v is not None and bad(v), "is not valid Unicode")


def _first_bad(first: int, name: str, column: Sequence[Any], is_bad: Any, problem: str) -> None:
    for index, value in enumerate(column):
        if is_bad(value):
            raise TableError(f"job {index + first}: {name} {problem}")
    raise TableError(f"{name} {problem}")  # pragma: no cover - the caller saw one
