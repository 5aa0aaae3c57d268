"""PlainSpec (tm/core/plainspec.py), the job hRunJob's fast path builds without the model: its
names, order, defaults and kinds are the JobSpec's and tm/core/jobfields.py's, and it travels
as the same row."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from tm.core import jobfields
from tm.core.model import JobSpec
from tm.core.plainspec import DEFAULTS, GIVEN, REQUIRED, SPEC_NAMES, PlainSpec
from tm.protocol import records


def test_its_fields_are_the_spec_fields_in_their_order() -> None:
    assert SPEC_NAMES == tuple(f.name for f in jobfields.SPEC_FIELDS)
    assert SPEC_NAMES == tuple(f.name for f in dataclasses.fields(JobSpec))
    assert tuple(DEFAULTS) == SPEC_NAMES


def test_its_defaults_are_the_job_spec_s() -> None:
    for f in dataclasses.fields(JobSpec):
        if f.default is dataclasses.MISSING:
            assert f.name in REQUIRED
        else:
            assert DEFAULTS[f.name] == f.default and type(DEFAULTS[f.name]) is type(f.default)
    assert PlainSpec(uuid="u", command="c").values() == dataclasses.asdict(
        JobSpec(uuid="u", command="c")
    )


def test_the_given_fields_and_their_kinds_are_jobfields() -> None:
    assert tuple(GIVEN) == tuple(f.name for f in jobfields.GIVEN_FIELDS)
    for f in jobfields.GIVEN_FIELDS:
        base = typing.get_origin(f.base) or f.base
        assert GIVEN[f.name] is base, f.name


def test_it_travels_as_the_row_of_the_same_job_spec() -> None:
    values: dict[str, typing.Any] = dict(
        uuid="u1",
        command="echo x",
        shell="/bin/bash",
        slots=3,
        priority=9,
        group="g",
        info="i",
        stdout="o",
        stderr="e",
        logfile="l",
        excluded_hosts=("a", "b"),
        estimated_time=5.0,
        estimated_memory=6.0,
        after="3,4",
        after_any="5",
        after_group="prep",
        hold="user",
        time_limit=60.0,
        retries=2,
        retry_on_exit="3",
        on_end="true",
        array_id="arr",
        array_index=4,
        array_cap=2,
    )
    plain, spec = PlainSpec(**values), JobSpec(**values)
    assert plain.row() == records.spec_to_amp(spec)
    # What reads a JobSpec by attribute reads a PlainSpec alike.
    assert records.spec_to_amp(plain) == plain.row()  # type: ignore[arg-type]
    assert list(plain.row()) == list(records.spec_to_amp(spec))  # the same order on the wire
    assert records.spec_problem(plain) == records.spec_problem(spec)
    assert records.spec_problem(plain.replace(retry_on_exit="x")) == records.spec_problem(
        dataclasses.replace(spec, retry_on_exit="x")
    )


def test_replace_copies_and_the_required_fields_are_required() -> None:
    plain = PlainSpec(uuid="u", command="c")
    other = plain.replace(array_id="a", array_index=1)
    assert (other.array_id, other.array_index, other.command) == ("a", 1, "c")
    assert plain.array_id == "" and plain == PlainSpec(uuid="u", command="c") and plain != other
    with pytest.raises(TypeError):
        PlainSpec(uuid="u")
    with pytest.raises(TypeError):
        PlainSpec(uuid="u", command="c", colour="red")
