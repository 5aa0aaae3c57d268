"""A submission's chunk as one table (tm/protocol/jobtable.py): the same rows as SubmitJobs'
AMP boxes, the same refusals, and the dispatcher's SubmitJobTable responder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.protocols import amp

from tests.helpers.amp_pair import connected_pair
from tests.unit.dispatcher_fakes import make_dispatcher
from tests.unit.test_dispatcher_responders import Peer
from tm.core.model import Host, JobEnvironment, JobSpec, JobState
from tm.protocol import commands, jobtable, records
from tm.protocol.base import BoundedAMP
from tm.protocol.rowlist import rows_of

LIMIT = records.MAX_VALUE_BYTES


def spec(i: int, **kw: Any) -> JobSpec:
    return JobSpec(uuid=f"00000000-0000-4000-8000-{i:012d}", command=f"echo {i}", **kw)


SPECS = [
    spec(1),
    spec(
        2,
        shell="/bin/bash",
        slots=3,
        priority=9,
        group="g",
        info="ünïcödé ✓",
        excluded_hosts=("h1", "h2"),
        estimated_time=1.5,
        estimated_memory=2.0,
        signature="1.abc.s",
        signed_at=7.0,
        after="1,2",
        hold="user",
        time_limit=60.0,
        retries=2,
        retry_on_exit="3",
        on_end="true",
        array_id="a",
        array_index=4,
        array_cap=2,
    ),
]


def table_of(rows: list[dict[str, Any]], first: int = 1) -> str:
    text, n = jobtable.fit_table(rows, lambda row: row, first, LIMIT)
    assert n == len(rows)
    return text


def test_a_table_carries_the_rows_that_submitjobs_boxes_carry() -> None:
    rows = [records.spec_to_amp(s) for s in SPECS]
    codec = rows_of(records.JOB_SPEC_FIELDS)
    by_amp = codec.fromStringProto(codec.toStringProto(rows, None), None)
    by_table = jobtable.rows_of_table(table_of(rows))
    assert by_table == by_amp
    assert [records.spec_from_amp(row) for row in by_table] == SPECS


def test_a_table_may_leave_out_optional_fields_and_whole_numbers_may_be_numbers() -> None:
    row = records.spec_to_amp(spec(1))
    names = [name for name in jobtable.NAMES if name not in ("time_limit", "array_index")]
    values = [row[name] for name in names]
    values[names.index("estimated_time")] = 5  # JSON's 5, a float field
    [got] = jobtable.rows_of_table(json.dumps({"fields": names, "rows": [values]}))
    assert got["time_limit"] is None and got["array_index"] is None
    assert got["estimated_time"] == 5.0 and type(got["estimated_time"]) is float
    assert records.spec_from_amp(got) == dataclasses.replace(spec(1), estimated_time=5.0)


def bad_table(name: str, value: Any, job: int = 2) -> str:
    rows = [records.spec_to_amp(spec(i)) for i in range(1, 4)]
    values = [[row[n] for n in jobtable.NAMES] for row in rows]
    values[job - 1][jobtable.NAMES.index(name)] = value
    return json.dumps({"fields": list(jobtable.NAMES), "rows": values})


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("slots", "2", "job 2: slots must be a whole number"),
        ("slots", True, "job 2: slots must be a whole number"),
        ("slots", 2**63, "job 2: slots must be a whole number of 64 bits"),
        ("command", None, "job 2: command must be given"),
        ("command", 5, "job 2: command must be a text"),
        ("time_limit", "5", "job 2: time_limit must be a number"),
        ("excluded_hosts", "h1", "job 2: excluded_hosts must be a list of texts"),
        ("excluded_hosts", ["h1", 2], "job 2: excluded_hosts must be a list of texts"),
        ("info", "\ud800", "job 2: info is not valid Unicode"),
        ("excluded_hosts", ["\udc00"], "job 2: excluded_hosts is not valid Unicode"),
    ],
)
def test_a_bad_value_is_refused_naming_its_job_and_field(name: str, value: Any, said: str) -> None:
    with pytest.raises(jobtable.TableError) as e:
        jobtable.rows_of_table(bad_table(name, value))
    assert str(e.value).startswith(said)


ALL = json.dumps(list(jobtable.NAMES))
ROW = json.dumps([records.spec_to_amp(spec(1))[name] for name in jobtable.NAMES])
FLOAT_AT = jobtable.NAMES.index("time_limit")


def with_time_limit(text: str) -> str:
    values = [records.spec_to_amp(spec(1))[name] for name in jobtable.NAMES]
    values[FLOAT_AT] = "@"  # replaced by ``text``
    row = json.dumps(values).replace('"@"', text)
    return f'{{"fields": {ALL}, "rows": [{row}]}}'


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[1", "the job table is not JSON"),
        ("[]", "the job table has no list of fields"),
        (f'{{"fields": {ALL}}}', "the job table has no list of rows"),
        ('{"fields": ["uuid", "uuid"], "rows": []}', "the job table's fields must be distinct"),
        ('{"fields": ["uuid", "command", "x"], "rows": []}', "does not know: x"),
        (
            json.dumps({"fields": [n for n in jobtable.NAMES if n != "command"], "rows": []}),
            "lacks the field command",
        ),
        (f'{{"fields": {ALL}, "rows": [{ROW}, ["u"]]}}', "job 2: a row"),
        (f'{{"fields": {ALL}, "rows": [{ROW}, 3]}}', "job 2: a row"),
        (with_time_limit("NaN"), "NaN is not"),
        (with_time_limit("1e999"), "job 1: time_limit must be finite"),
    ],
)
def test_what_is_not_a_table_of_jobs_is_refused_in_one_line(text: str, said: str) -> None:
    with pytest.raises(jobtable.TableError, match=said.replace("(", r"\(")):
        jobtable.rows_of_table(text)


def test_the_sender_checks_a_table_and_numbers_the_job_in_the_whole_submission() -> None:
    rows = [records.spec_to_amp(spec(i)) for i in range(1, 4)]
    rows[1]["slots"] = "3"
    with pytest.raises(jobtable.TableError, match="^job 102: slots must be a whole number"):
        jobtable.fit_table(rows, lambda row: row, 101, LIMIT)
    rows[1]["slots"] = float("nan")  # JSON cannot carry it
    with pytest.raises(jobtable.TableError, match="^job 102: slots"):
        jobtable.fit_table(rows, lambda row: row, 101, LIMIT)


def test_a_table_holds_what_fits_one_amp_value() -> None:
    rows = [records.spec_to_amp(spec(i)) for i in range(5000)]
    text, n = jobtable.fit_table(rows, lambda row: row, 1, LIMIT)
    assert 0 < n < 5000 and len(text.encode()) <= LIMIT
    assert [r["uuid"] for r in jobtable.rows_of_table(text)] == [r["uuid"] for r in rows[:n]]
    # More jobs than a value of SubmitJobs' boxes holds.
    _, boxes = records.fit_to_value(records.JOB_SPEC_FIELDS, rows, lambda row: row)
    assert n > boxes
    huge = records.spec_to_amp(dataclasses.replace(spec(1), command="x" * LIMIT))
    assert jobtable.fit_table([huge], lambda row: row, 1, LIMIT)[1] == 0


def test_values_the_same_in_each_job_go_once_and_a_job_that_differs_starts_the_next_table() -> None:
    rows = [records.spec_to_amp(spec(i, group="g")) for i in range(1, 201)]
    rows[150]["group"] = "other"
    text, n = jobtable.fit_table(rows, lambda row: row, 1, LIMIT)
    doc = json.loads(text)
    assert n == 150 and doc["same"]["group"] == "g" and "group" not in doc["fields"]
    assert doc["fields"][:2] == ["uuid", "command"]  # what differs from job to job
    assert jobtable.rows_of_table(text) == rows[:150]
    text, n = jobtable.fit_table(rows[150:], lambda row: row, 151, LIMIT)
    assert n == 50 and jobtable.rows_of_table(text) == rows[150:]
    # One job: every value but its uuid is "the same".
    text, n = jobtable.fit_table(rows[:1], lambda row: row, 1, LIMIT)
    assert n == 1 and json.loads(text)["fields"] == ["uuid"]
    assert jobtable.rows_of_table(text) == rows[:1]


@pytest.mark.parametrize(
    ("same", "said"),
    [
        ({"x": 1}, "unknown or listed field: x"),
        ({"uuid": "u"}, "unknown or listed field: uuid"),
        ({"slots": "2"}, "slots must be a whole number"),
        ({"command": None}, "command must be given"),
        ([1], "same values must be an object"),
    ],
)
def test_bad_same_values_are_refused(same: Any, said: str) -> None:
    doc = {"fields": ["uuid"], "same": same, "rows": [["u"]]}
    with pytest.raises(jobtable.TableError, match=said):
        jobtable.rows_of_table(json.dumps(doc))


def test_a_whole_number_given_once_for_a_number_field_is_a_float() -> None:
    row = records.spec_to_amp(spec(1))
    same = {name: row[name] for name in jobtable.NAMES if name != "uuid"} | {"time_limit": 5}
    [got] = jobtable.rows_of_table(
        json.dumps({"fields": ["uuid"], "same": same, "rows": [[row["uuid"]]]})
    )
    assert got["time_limit"] == 5.0 and type(got["time_limit"]) is float


# --- the dispatcher's responder ------------------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> Any:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1.example", short_name="h1", number_slots=2, max_slots=2)]
    )
    return d, clock, store


def submit_table(d: Any, clock: Any, specs: list[JobSpec]) -> Any:
    rows = [
        records.spec_to_amp(dataclasses.replace(s, signature="1.0123456789abcdef.s")) for s in specs
    ]
    return Peer(d, clock).call(
        commands.SubmitJobTable,
        **records.environment_to_amp(JobEnvironment(cwd="/tmp")),
        sealed_env="1.0123456789abcdef.c2VhbGVk",  # as the user's TMS seals it
        jobs_table=table_of(rows),
    )


def test_a_table_is_stored_and_queued_as_submitjobs_would(world: Any) -> None:
    d, clock, store = world
    answer = submit_table(d, clock, [spec(1, excluded_hosts=("h1",)), spec(2)])
    first, second = answer["job_ids"]
    assert d.jobs[first].state is JobState.WAITING and store.jobs[first].user == "alice"
    assert d.jobs[first].spec.excluded_hosts == ("h1.example",)  # short names made full
    assert d.jobs[second].spec.command == "echo 2"


def test_a_bad_table_stores_nothing(world: Any) -> None:
    d, clock, store = world
    with pytest.raises(commands.InvalidRequest, match="job 2: slots must be a whole number"):
        Peer(d, clock).call(
            commands.SubmitJobTable,
            **records.environment_to_amp(JobEnvironment(cwd="/tmp")),
            sealed_env="1.0123456789abcdef.c2VhbGVk",
            jobs_table=bad_table("slots", "x"),
        )
    with pytest.raises(commands.InvalidRequest, match="job 1 of 2: .*slots"):
        submit_table(d, clock, [spec(1, slots=0), spec(2)])
    with pytest.raises(commands.UnknownHost):
        submit_table(d, clock, [spec(1), spec(2, excluded_hosts=("nowhere",))])
    assert not store.jobs and not d.jobs


def test_a_dispatcher_without_the_command_answers_unhandledcommand_and_keeps_the_link() -> None:
    """What the TMS's fallback to SubmitJobs relies on (tm/userserver/signing.py)."""

    class OldLocator(amp.CommandLocator):  # a dispatcher from before SubmitJobTable
        @commands.SubmitJobs.responder
        def submit(self, cwd: str, umask: int, env: Any, jobs: list, sealed_env: Any = None):
            return {"job_ids": list(range(1, len(jobs) + 1))}

    server = BoundedAMP(locator=OldLocator())
    client = BoundedAMP()
    pump = connected_pair(server, client)
    rows = [records.spec_to_amp(spec(1))]
    environment = records.environment_to_amp(JobEnvironment(cwd="/tmp"))
    results: list[Any] = []
    client.callRemote(commands.SubmitJobTable, **environment, jobs_table=table_of(rows)).addBoth(
        results.append
    )
    pump.flush()
    [failure] = results
    assert failure.check(amp.UnhandledCommand)
    client.callRemote(commands.SubmitJobs, **environment, jobs=rows).addBoth(results.append)
    pump.flush()
    assert results[1] == {"job_ids": [1], "warnings": None}
