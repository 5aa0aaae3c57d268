"""The fast AmpList (tm/protocol/rowlist.py) writes and reads AMP's own bytes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.protocols import amp

from tm.core.model import JobSpec
from tm.protocol import records
from tm.protocol.rowlist import RowList, fit_rows, parse_boxes, rows_of

text = st.text(max_size=40)
int64 = st.integers(min_value=records.INT64_MIN, max_value=records.INT64_MAX)
floats = st.floats(allow_nan=False, allow_infinity=False)
spec_row = st.fixed_dictionaries(
    {
        "uuid": text,
        "command": text,
        "shell": text,
        "slots": int64,
        "priority": int64,
        "group": text,
        "info": text,
        "stdout": text,
        "stderr": text,
        "logfile": text,
        "excluded_hosts": st.lists(text, max_size=4),
        "estimated_time": st.none() | floats,
        "estimated_memory": st.none() | floats,
        "signature": text,
        "signed_at": floats,
        "retries": st.none() | int64,
        "retry_on_exit": text,
        "on_end": text,
        "array_id": text,
        "array_index": st.none() | int64,
        "array_cap": st.none() | int64,
    }
)
summary_row = st.fixed_dictionaries(
    {
        "id": int64,
        "user": text,
        "state": st.sampled_from(["waiting", "running", "finished"]),
        "attempt": int64,
        "slots": int64,
        "priority": int64,
        "host": text,
        "group": text,
        "info": text,
        "command": text,
        "submitted_at": floats,
        "state_since": floats,
        "exit_code": st.none() | int64,
        "signal": st.none() | int64,
        "reason": text,
        "suspended": st.booleans(),
    }
)


def both(fields: list[tuple[bytes, amp.Argument]]) -> tuple[amp.AmpList, RowList]:
    return amp.AmpList(fields), RowList(fields)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(spec_row, max_size=5))
def test_job_specs_have_amps_bytes_both_ways(rows: list[dict[str, Any]]) -> None:
    old, new = both(records.JOB_SPEC_FIELDS)
    wire = old.toStringProto(rows, None)
    assert new.toStringProto(rows, None) == wire
    assert new.fromStringProto(wire, None) == old.fromStringProto(wire, None)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(summary_row, max_size=5))
def test_listing_rows_have_amps_bytes_both_ways(rows: list[dict[str, Any]]) -> None:
    old, new = both(records.JOB_SUMMARY_FIELDS)
    wire = old.toStringProto(rows, None)
    assert new.toStringProto(rows, None) == wire
    assert new.fromStringProto(wire, None) == old.fromStringProto(wire, None)


def test_what_amp_refuses_is_refused() -> None:
    old, new = both(records.JOB_SUMMARY_FIELDS)
    row = {
        "id": 1,
        "user": "u",
        "state": "waiting",
        "attempt": 1,
        "slots": 1,
        "priority": 0,
        "host": "",
        "group": "",
        "info": "",
        "command": "x",
        "submitted_at": 0.0,
        "state_since": 0.0,
        "exit_code": None,
        "signal": None,
        "reason": "",
        "suspended": False,
    }
    for codec in (old, new):
        with pytest.raises(KeyError):
            codec.toStringProto([{k: v for k, v in row.items() if k != "user"}], None)
        with pytest.raises(amp.TooLong):
            codec.toStringProto([{**row, "command": "x" * 70_000}], None)
        with pytest.raises(ValueError):
            codec.toStringProto([{**row, "id": 2**63}], None)
    wire = old.toStringProto([row], None)
    without_user = wire.replace(b"\x00\x04user\x00\x01u", b"")
    assert without_user != wire
    with pytest.raises(KeyError):
        new.fromStringProto(without_user, None)
    bad_int = wire.replace(b"\x00\x02id\x00\x011", b"\x00\x02id\x00\x01x")
    with pytest.raises(ValueError):
        new.fromStringProto(bad_int, None)
    for cut in (1, 2, 5, len(wire) - 1):  # a value that ends inside a box
        with pytest.raises(ValueError, match="inside a box"):
            new.fromStringProto(wire[:cut], None)
    assert parse_boxes(b"") == []


def test_fitted_rows_are_sent_as_encoded_while_unchanged() -> None:
    codec = rows_of(records.JOB_SPEC_FIELDS)
    assert rows_of(list(records.JOB_SPEC_FIELDS)) is codec
    row = records.spec_to_row(JobSpec(uuid="u1", command="true"))
    rows, n = fit_rows(codec, [row] * 10, dict, limit=10_000)
    assert n == 10
    assert codec.toStringProto(rows, None) == amp.AmpList(records.JOB_SPEC_FIELDS).toStringProto(
        [row] * 10, None
    )
    rows.pop()  # changed after fitting: encoded again
    assert codec.toStringProto(rows, None) == codec.toStringProto(list(rows), None)
    # The limit: as many whole rows as fit.
    one = len(codec.encode_row(row))
    _, n = fit_rows(codec, [row] * 10, dict, limit=3 * one + 1)
    assert n == 3
    # A row that alone exceeds a value ends the page there.
    huge = {**row, "command": "y" * 70_000}
    _, n = fit_rows(codec, [row, huge, row], dict, limit=10**6)
    assert n == 1


def test_keys_are_written_sorted_and_may_arrive_in_any_order() -> None:
    fields = [(b"b", amp.Unicode()), (b"a", records.Int64(optional=True))]
    codec = RowList(fields)
    assert codec.encode_row({"b": "x", "a": 5}) == b"\x00\x01a\x00\x015\x00\x01b\x00\x01x\x00\x00"
    assert codec.encode_row({"b": "x"}) == b"\x00\x01b\x00\x01x\x00\x00"
    unsorted = b"\x00\x01b\x00\x01x\x00\x01a\x00\x017\x00\x00"
    assert codec.fromStringProto(unsorted, None) == [{"b": "x", "a": 7}]


def test_a_value_decoded_for_the_argument_check_is_handed_to_the_responder_once() -> None:
    codec = RowList([(b"a", amp.Unicode())])
    wire = codec.toStringProto([{"a": "x"}], None)
    checked = codec.fromStringProto(wire, None)  # tm.protocol.base.argument_problem
    served = codec.fromStringProto(wire, None)  # AMP's dispatch: the same bytes object
    assert served is checked and served == [{"a": "x"}]
    again = codec.fromStringProto(wire, None)
    assert again == served and again is not served
    assert codec.fromStringProto(b"", None) is not codec.fromStringProto(b"", None)
