"""The one declaration of a job's fields (tm/core/jobfields.py), and every list that is
derived from it or written out beside it: the model, the schema (both dialects), the SQL
column lists, the AMP records and arguments, the executor's start request, hRunJob's options
and the job file's keys."""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from twisted.protocols import amp

from tm.cli import hrunjob
from tm.core import jobfields
from tm.core.jobfields import FIELDS
from tm.core.model import Job, JobEnvironment, JobSpec, JobState, Transition
from tm.db import queries
from tm.db.dialect import MYSQL, SQLITE, Dialect
from tm.executor.request import RunRequest
from tm.jobfile import FIELDS as FILE_FIELDS
from tm.protocol import commands, records

SCHEMA = Path(queries.__file__).parent / "schema" / "0001_initial.sql"
NAMES = [f.name for f in FIELDS]


def a_job(**kw: Any) -> Job:
    spec = JobSpec(
        uuid="00000000-0000-0000-0000-000000000007",
        command="echo hi",
        shell="/bin/bash",
        slots=2,
        priority=5,
        group="g",
        info="some info",
        stdout="out",
        stderr="err",
        logfile="log",
        excluded_hosts=("h1", "h2"),
        estimated_time=1.5,
        estimated_memory=None,
    )
    values: dict[str, Any] = dict(
        id=7,
        uuid=spec.uuid,
        user="alice",
        spec=spec,
        state=JobState.RUNNING,
        attempt=2,
        submitted_at=100.0,
        host="hA",
        pid=4242,
        exit_code=None,
        signal=None,
        reason="running on hA",
        started_at=101.0,
        ended_at=None,
        state_since=101.0,
        suspended=True,
        cwd="/home/alice",
        umask=0o027,
        env_id=3,
    )
    return Job(**values | kw)


# --- the model ---------------------------------------------------------------------------


def test_every_field_of_the_model_is_declared_once_with_its_type() -> None:
    assert len(NAMES) == len(set(NAMES))
    job_types = typing.get_type_hints(Job)
    spec_types = typing.get_type_hints(JobSpec)
    assert set(NAMES) == (set(job_types) - {"spec"}) | set(spec_types)
    for f in FIELDS:
        owner = spec_types if f.in_spec else job_types
        assert f.type == owner[f.name], f.name
    assert {f.name for f in jobfields.SPEC_FIELDS} == set(spec_types)


def test_a_field_s_value_is_read_where_the_model_keeps_it() -> None:
    job = a_job()
    assert jobfields.BY_NAME["info"].get(job) == "some info"
    assert jobfields.BY_NAME["user"].get(job) == "alice"
    assert jobfields.BY_NAME["cwd"].get(job) == "/home/alice"


def test_a_transition_changes_only_declared_fields() -> None:
    for new in (JobState.RUNNING, JobState.FINISHED, JobState.WAITING):
        t = Transition(1, 1, JobState.PENDING, new, host="h", pid=3, exit_code=0, signal=None)
        assert set(t.changes(5.0)) <= set(NAMES)
    requeue = Transition(1, 1, JobState.LOST, JobState.WAITING, new_attempt=2, clear_host=True)
    assert set(requeue.changes(5.0)) <= set(NAMES)


# --- the schema and the SQL column lists ---------------------------------------------------


def schema_columns(d: Dialect) -> list[tuple[str, str]]:
    """(column, definition) of the ``jobs`` table as the migrations make it in ``d``: its
    ``CREATE TABLE``, then each ``ALTER TABLE jobs ADD COLUMN`` of the later ones."""
    [create] = [s for s in d.render_schema(SCHEMA.read_text()) if s.startswith("CREATE TABLE jobs")]
    body = create[create.index("(") + 1 : create.rindex(")")]
    out = []
    for line in body.splitlines():
        line = line.strip().rstrip(",")
        if line:
            name, _, definition = line.partition(" ")
            out.append((name, definition))
    for migration in sorted(SCHEMA.parent.glob("[0-9][0-9][0-9][0-9]_*.sql"))[1:]:
        for statement in d.render_schema(migration.read_text()):
            added = statement.removeprefix("ALTER TABLE jobs ADD COLUMN ")
            if added != statement:
                name, _, definition = added.partition(" ")
                out.append((name, definition))
    return out


@pytest.mark.parametrize("dialect", [SQLITE, MYSQL], ids=["sqlite", "mysql"])
def test_the_schema_s_jobs_table_is_the_declaration(dialect: Dialect) -> None:
    expected = [(f.sql_name, dialect.render_schema(f.sql)[0]) for f in FIELDS]
    assert schema_columns(dialect) == expected


def test_a_nullable_column_is_read_into_an_optional_field() -> None:
    for f in FIELDS:
        if re.search(r"(?<!NOT) NULL\b", " " + f.sql):
            assert f.optional, f.name


def test_the_column_names_differ_from_the_field_names_only_where_declared() -> None:
    renamed = {f.name: f.sql_name for f in FIELDS if f.sql_name != f.name}
    assert renamed == {
        "user": "user_name",
        "group": "group_name",
        "info": "info_text",
        "signal": "`signal`",
        "after": "after_ok",  # migration 0003: AFTER is a keyword of SQLite and MySQL
    }


def test_the_sql_column_lists_are_the_declaration_s() -> None:
    assert queries.JOB_COLUMNS == tuple(f.sql_name for f in FIELDS)
    assert queries._SELECT_JOBS == "SELECT " + ", ".join(queries.JOB_COLUMNS) + " FROM jobs"
    assert queries._INSERT_JOB_COLUMNS == queries.JOB_COLUMNS[1:]  # all but the id


def test_a_job_row_reads_back_as_the_same_job() -> None:
    job = a_job()
    row = (job.id, *queries._job_row(job))
    assert dict(zip(NAMES, row, strict=True))["excluded_hosts"] == '["h1", "h2"]'
    assert dict(zip(NAMES, row, strict=True))["suspended"] == 1
    assert queries.job_from_row(row) == job


@pytest.mark.parametrize("dialect, duplicate", [(SQLITE, False), (MYSQL, False), (MYSQL, True)])
def test_a_submission_writes_each_job_as_its_row(dialect: Dialect, duplicate: bool) -> None:
    """insert_jobs names the columns in its own order: the values are _job_row's. On MySQL
    all in one multi-row INSERT; row by row when a uuid exists (nothing of that one kept)."""

    class Txn:
        rowcount = 1
        lastrowid = 0

        def __init__(self) -> None:
            self.inserted: list[dict[str, Any]] = []
            self.statements: list[str] = []
            self.rows: list[tuple] = []

        def mogrify(self, query: str, args: tuple) -> str:  # pymysql's, with Python literals
            return query % tuple(repr(a) for a in args)

        def execute(self, sql: str, params: tuple = ()) -> None:
            self.statements.append(sql.split(" (")[0])
            if sql.startswith("INSERT INTO jobs") and " VALUES (" in sql and not params:
                for row in ast.literal_eval("[" + sql.split(" VALUES ", 1)[1] + "]"):
                    self.add(sql, row)
                if duplicate:
                    raise RuntimeError(1062, "Duplicate entry")
            elif sql.startswith("INSERT IGNORE INTO jobs") or sql.startswith("INSERT INTO jobs"):
                self.add(sql, params)
            elif sql.startswith("ROLLBACK TO"):
                self.inserted.clear()
            self.rows = [(row["uuid"], i + 1) for i, row in enumerate(self.inserted)]

        def add(self, sql: str, params: tuple) -> None:
            columns = sql.split("(", 1)[1].split(")", 1)[0].split(", ")
            self.inserted.append(dict(zip(columns, params, strict=True)))
            self.lastrowid = len(self.inserted)

        def executemany(self, sql: str, params: list) -> None:
            pass

        def fetchone(self) -> tuple:
            return (3,)

        def fetchall(self) -> list[tuple]:
            return self.rows

    spec = a_job().spec
    specs = [spec, dataclasses.replace(spec, uuid="u2", excluded_hosts=(), time_limit=9.0)]
    environment = JobEnvironment(cwd="/w%s%%", umask=0o27, env={}, sealed="1.k.sealed")
    txn = Txn()
    ids, created = queries.insert_jobs(txn, dialect, "alice", environment, specs, 50.0)
    assert ids == [1, 2] and [job.spec for job in created] == specs
    for job, inserted in zip(created, txn.inserted, strict=True):
        assert inserted == dict(
            zip(queries._INSERT_JOB_COLUMNS, queries._job_row(job), strict=True)
        )
        assert (job.user, job.cwd, job.umask, job.env_id, job.state) == (
            "alice",
            "/w%s%%",
            0o27,
            3,
            JobState.WAITING,
        )
    one_by_one = txn.statements.count(dialect.insert_ignore("jobs", ["x"], "uuid").split(" (")[0])
    assert one_by_one == (0 if dialect is MYSQL and not duplicate else 2)


# --- AMP ------------------------------------------------------------------------------------


def names(arguments: list[tuple[bytes, amp.Argument]]) -> list[str]:
    return [name.decode() for name, _ in arguments]


def sub_arguments(command: type[amp.Command], which: str, name: bytes) -> list:
    [argument] = [a for n, a in getattr(command, which) if n == name]
    assert isinstance(argument, amp.AmpList)
    return list(argument.subargs)


def test_the_job_records_of_the_commands_are_the_declaration_s() -> None:
    spec_names = [f.name for f in jobfields.SPEC_FIELDS]
    listed = [f.name for f in jobfields.LISTED_FIELDS]
    detail = [f.name for f in jobfields.DETAIL_FIELDS]
    assert names(sub_arguments(commands.SubmitJobs, "arguments", b"jobs")) == spec_names
    assert names(sub_arguments(commands.ListJobs, "response", b"jobs")) == listed
    assert names(sub_arguments(commands.GetJob, "response", b"job")) == detail
    run = ["job_id", "attempt", "env", *(f.name for f in jobfields.RUN_FIELDS)]
    checked = [f.name for f in jobfields.CHECKED_FIELDS if f not in jobfields.RUN_FIELDS]
    assert names(commands.RunJob.arguments) == run + checked


def test_the_signature_covers_what_the_executor_runs_and_whose_it_is() -> None:
    signed = {f.name for f in jobfields.SIGNED_FIELDS}
    assert {f.name for f in jobfields.RUN_FIELDS} <= signed
    assert signed - {f.name for f in jobfields.RUN_FIELDS} == {"uuid", "user"}
    # The executor gets every signed field, the signature and its time with the start order.
    assert signed <= {f.name for f in jobfields.RUN_FIELDS + jobfields.CHECKED_FIELDS}
    assert {"signature", "signed_at"} <= {f.name for f in jobfields.CHECKED_FIELDS}


def test_each_field_travels_as_its_type() -> None:
    kinds = {int: records.Int64, float: records.Float64, bool: amp.Boolean, str: amp.Unicode}
    for f in FIELDS:
        argument = records.amp_argument(f)
        if f.base is JobState:
            assert isinstance(argument, amp.Unicode)
        elif typing.get_origin(f.base) is tuple:
            assert isinstance(argument, amp.ListOf)
        else:
            assert type(argument) is kinds[f.base], f.name
        if f.base in (int, float):
            assert argument.optional == f.optional, f.name


#: Written-out arguments that carry a job's field: they must travel as the field does.
FIELD_ARGUMENTS = [
    (commands.WaitJob.response, ["state", "exit_code", "signal", "reason"]),
    (commands.JobFinished.arguments, ["exit_code", "signal", "ended_at", "reason"]),
    (commands.RunJob.response, ["pid", "started_at"]),
]


@pytest.mark.parametrize(("arguments", "fields"), FIELD_ARGUMENTS)
def test_written_out_arguments_named_after_a_field_have_its_type(
    arguments: list[tuple[bytes, amp.Argument]], fields: list[str]
) -> None:
    given = dict(arguments)
    for name in fields:
        expected = records.amp_argument(jobfields.BY_NAME[name])
        assert type(given[name.encode()]) is type(expected), name


def round_trip(arguments: list[tuple[bytes, amp.Argument]], row: dict) -> dict:
    codec = amp.AmpList(arguments)
    [back] = codec.fromStringProto(codec.toStringProto([row], None), None)
    return back


def test_a_job_s_detail_carries_every_detail_field_as_the_model_has_it() -> None:
    job = a_job()
    back = round_trip(records.JOB_DETAIL_FIELDS, records.job_detail_to_amp(job))
    for f in jobfields.DETAIL_FIELDS:
        assert jobfields.from_plain(f, back[f.name]) == f.get(job), f.name


def test_a_listed_job_without_a_host_or_time_in_state() -> None:
    spec = dataclasses.replace(a_job().spec, info="i" * 500)
    job = a_job(host=None, state=JobState.WAITING, state_since=None, spec=spec)
    back = round_trip(records.JOB_SUMMARY_FIELDS, records.job_summary_to_amp(job))
    assert back["host"] == "" and back["state"] == "waiting"
    assert back["state_since"] == job.submitted_at
    assert len(back["info"]) == records.LISTING_COMMAND_CHARS


def test_a_spec_travels_as_a_row_of_submitjobs_and_back() -> None:
    spec = a_job().spec
    row = records.spec_to_amp(spec)
    assert list(row) == [f.name for f in jobfields.SPEC_FIELDS]
    assert records.spec_from_amp(round_trip(records.JOB_SPEC_FIELDS, row)) == spec


def test_a_start_order_becomes_the_executor_s_request() -> None:
    job = a_job(spec=dataclasses.replace(a_job().spec, stderr=""))
    order = records.run_job_to_amp(job, {"A": "b"})
    request = RunRequest.from_order(order.pop("job_id"), order.pop("attempt"), order)
    assert request == RunRequest(
        job_id=7,
        attempt=2,
        command="echo hi",
        shell="/bin/bash",
        cwd="/home/alice",
        umask=0o027,
        env={"A": "b"},
        stdout="out",
        stderr=None,  # not given: the default place
        logfile="log",
        slots=2,
    )


def test_the_executor_s_request_has_the_start_order_s_fields() -> None:
    hints = typing.get_type_hints(RunRequest)
    assert set(hints) == {"job_id", "attempt", "env"} | {f.name for f in jobfields.RUN_FIELDS}
    for f in jobfields.RUN_FIELDS:
        assert hints[f.name] in (f.type, f.type | None), f.name


# --- hRunJob and the job file ---------------------------------------------------------------


def test_hrunjob_s_options_and_the_job_file_s_keys_are_the_field_names() -> None:
    # uuid made by hRunJob, signature and signed_at by the TMS, the array's by hRunJob --array
    made = {"uuid", "signature", "signed_at", "array_id", "array_index", "array_cap"}
    given = {f.name for f in jobfields.SPEC_FIELDS} - made
    assert given == {f.name for f in jobfields.GIVEN_FIELDS}
    options = vars(hrunjob.build_parser().parse_args(["true"]))
    assert given <= set(options)
    assert set(FILE_FIELDS.values()) == given
