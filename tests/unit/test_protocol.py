"""The AMP vocabulary and its bounds, in memory (no sockets)."""

from __future__ import annotations

import uuid
from typing import Any, cast

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.protocols import amp

from tests.helpers.amp_pair import connected_pair
from tm.core.model import Host, Job, JobEnvironment, JobSpec, JobState
from tm.protocol import commands, records
from tm.protocol.base import BoundedAMP


class Locator(amp.CommandLocator):
    def __init__(self) -> None:
        self.submitted: list[dict] = []
        self.held: list = []

    @commands.SubmitJobs.responder
    def submit(self, cwd, umask, env, jobs, sealed_env=None):
        self.submitted.append({"cwd": cwd, "umask": umask, "env": env, "jobs": jobs})
        return {"job_ids": list(range(1, len(jobs) + 1))}

    @commands.GetJob.responder
    def get_job(self, job_id):
        raise commands.UnknownJob(f"unknown job {job_id}")

    @commands.Ping.responder
    def ping(self):
        from twisted.internet.defer import Deferred

        d = Deferred()
        self.held.append(d)
        return d


def pair(clock: Clock | None = None):
    locator = Locator()
    server = BoundedAMP(locator=locator)
    client = BoundedAMP(clock=cast("IReactorTime | None", clock))
    pump = connected_pair(server, client)
    return server, client, locator, pump


def test_job_specs_round_trip_as_typed_records() -> None:
    server, client, locator, pump = pair()
    spec = JobSpec(
        uuid=str(uuid.uuid4()),
        command="echo 'hi' > out.txt",
        slots=2,
        priority=7,
        excluded_hosts=("h1", "h2"),
        estimated_time=3.5,
    )
    env = JobEnvironment(cwd="/tmp", umask=0o027, env={"A": "b"})
    results: list = []
    d = client.callRemote(
        commands.SubmitJobs, **records.environment_to_amp(env), jobs=[records.spec_to_amp(spec)]
    )
    d.addCallback(results.append)
    pump.flush()
    assert results == [{"job_ids": [1], "warnings": None}]  # warnings are optional
    got = locator.submitted[0]
    assert records.spec_from_amp(got["jobs"][0]) == spec
    assert records.environment_from_amp(got) == env


def test_declared_errors_arrive_with_their_type_and_text() -> None:
    server, client, locator, pump = pair()
    failures: list = []
    client.callRemote(commands.GetJob, job_id=42).addErrback(failures.append)
    pump.flush()
    assert failures[0].check(commands.UnknownJob)
    assert "unknown job 42" in str(failures[0].value)
    assert not client.transport.disconnecting


def test_box_with_too_many_keys_closes_the_connection() -> None:
    server, client, locator, pump = pair()
    box = amp.AmpBox({f"k{i}".encode(): b"v" for i in range(server.max_box_keys + 1)})
    server_transport = server.transport
    client.transport.write(box.serialize())
    pump.flush()
    assert server_transport.disconnecting


def test_requests_beyond_the_in_flight_bound_are_refused() -> None:
    server, client, locator, pump = pair()
    server.max_in_flight = 2
    failures: list = []
    for _ in range(3):
        client.callRemote(commands.Ping).addErrback(failures.append)
    pump.flush()
    assert len(locator.held) == 2
    assert len(failures) == 1 and failures[0].check(commands.TooBusy)
    # answering one frees a place
    locator.held[0].callback({"server": "s", "time": 1.0})
    ok: list = []
    client.callRemote(commands.Ping).addCallback(ok.append)
    pump.flush()
    assert len(locator.held) == 3


def test_call_times_out_on_the_injected_clock() -> None:
    clock = Clock()
    server, client, locator, pump = pair(clock)
    failures: list = []
    client.call(commands.Ping, reply_timeout=5).addErrback(failures.append)
    pump.flush()
    assert not failures
    clock.advance(6)
    assert failures and failures[0].check(Exception)


def test_listing_pages_fit_in_one_amp_value() -> None:
    jobs = [
        Job(
            id=i,
            uuid=str(uuid.uuid4()),
            user="alice",
            spec=JobSpec(uuid="u", command="x" * 5000, info="i" * 5000),
            state=JobState.WAITING,
            attempt=1,
            submitted_at=1.0,
        )
        for i in range(1000)
    ]
    rows, n = records.fit_to_value(records.JOB_SUMMARY_FIELDS, jobs, records.job_summary_to_amp)
    assert 0 < n < 1000
    size = records.encoded_size(records.JOB_SUMMARY_FIELDS, rows)
    assert size <= records.MAX_VALUE_BYTES < 0xFFFF


def test_host_record_conversion() -> None:
    host = Host(name="node1.example", short_name="node1", number_slots=8, max_slots=8)
    d = records.host_to_amp(host, occupied_slots=3, load=0.5, executors=2)
    assert d["occupied_slots"] == 3 and d["max_slots"] == 8 and d["load"] == 0.5


# --- bad requests: one line each, no traceback, the connection kept -----------------------


class BadGetJob(amp.Command):
    """GetJob as a hostile client sends it: any text as the id."""

    commandName = b"GetJob"
    arguments = [(b"job_id", amp.Unicode())]
    response = []
    errors = commands.COMMON_ERRORS


class RawGetJob(amp.Command):
    commandName = b"GetJob"
    arguments = [(b"job_id", amp.String())]
    response = []
    errors = commands.COMMON_ERRORS


class NoArgsGetJob(amp.Command):
    commandName = b"GetJob"
    arguments = []
    response = []
    errors = commands.COMMON_ERRORS


class Unknown(amp.Command):
    commandName = b"NoSuchCommand"
    arguments = []
    response = []
    errors = commands.COMMON_ERRORS


class Failing(amp.CommandLocator):
    def __init__(self) -> None:
        self.calls: list[int] = []

    @commands.GetJob.responder
    def get_job(self, job_id):
        self.calls.append(job_id)
        return {"oops": 1}[job_id]  # a bug: KeyError

    @commands.Ping.responder
    def ping(self):
        return {"server": "x" * 70_000, "time": 1.0}  # over one AMP value


class Captured:
    """Every log event of the test (the problem log's and Twisted's own)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    @property
    def failures(self) -> list[dict]:
        return [e for e in self.events if "log_failure" in e]

    def lines(self, kind: str) -> list[dict]:
        return [e for e in self.events if e.get("kind") == kind]


def hostile_pair(locator=None, clock: Clock | None = None):
    from twisted.logger import Logger, globalLogPublisher

    from tm.logs import ProblemLog

    captured = Captured()
    globalLogPublisher.addObserver(cast(Any, captured))
    problems = ProblemLog(Logger(observer=cast(Any, captured)), clock, burst=3, period=60.0)
    locator = locator if locator is not None else Locator()
    server = BoundedAMP(locator=locator, clock=clock, problems=problems)
    client = BoundedAMP(clock=clock)
    pump = connected_pair(server, client)
    return server, client, locator, pump, captured


def remove(captured: Captured) -> None:
    from twisted.logger import globalLogPublisher

    globalLogPublisher.removeObserver(cast(Any, captured))


def call(client: BoundedAMP, pump, command, **kw: Any):
    results: list = []
    client.callRemote(command, **kw).addBoth(results.append)
    pump.flush()
    assert len(results) == 1
    return results[0]


def test_wrong_types_invalid_utf8_missing_keys_and_huge_integers_get_one_line_answers() -> None:
    server, client, locator, pump, captured = hostile_pair(Failing())
    try:
        cases: list[tuple[type[amp.Command], dict[str, Any], str]] = [
            (BadGetJob, {"job_id": "1; DROP TABLE jobs"}, "job_id"),
            (BadGetJob, {"job_id": "1" * 26}, "job_id"),  # reached SQLite before: OverflowError
            (BadGetJob, {"job_id": str(2**63)}, "64-bit"),
            (BadGetJob, {"job_id": " 12"}, "job_id"),
            (RawGetJob, {"job_id": b"\xff\xfe"}, "job_id"),
            (NoArgsGetJob, {}, "job_id is missing"),
        ]
        for command, kw, text in cases:
            result = call(client, pump, command, **kw)
            assert result.check(commands.InvalidRequest), (kw, result)
            message = str(result.value)
            assert text in message and "\n" not in message, message
        assert locator.calls == []  # nothing reached the responder
        assert not server.transport.disconnecting
        assert captured.failures == []  # no traceback anywhere
        assert len(captured.lines("bad arguments")) == 3  # the burst; the rest counted
    finally:
        remove(captured)


def test_int64_accepts_the_whole_range_and_nothing_else() -> None:
    arg = records.Int64()
    assert arg.fromString(str(2**63 - 1).encode()) == 2**63 - 1
    assert arg.fromString(str(-(2**63)).encode()) == -(2**63)
    assert arg.fromString(b"-0") == 0
    for bad in (str(2**63).encode(), b"1_000", b" 1", b"1.0", b"", b"-", b"\xd9\xa3", b"+1"):
        try:
            arg.fromString(bad)
        except (ValueError, UnicodeDecodeError):
            continue
        raise AssertionError(f"{bad!r} was accepted")
    assert records.Float64().fromString(b"1e25") == 1e25
    for bad in (b"nan", b"inf", b"-inf"):
        try:
            records.Float64().fromString(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


def test_an_unknown_command_is_answered_and_logged_in_one_line() -> None:
    server, client, locator, pump, captured = hostile_pair()
    try:
        result = call(client, pump, Unknown)
        assert result.check(amp.UnhandledCommand)
        assert not server.transport.disconnecting
        assert captured.failures == []
        assert len(captured.lines("unknown command")) == 1
    finally:
        remove(captured)


def test_an_undeclared_exception_of_a_responder_is_a_server_error_in_one_line() -> None:
    server, client, locator, pump, captured = hostile_pair(Failing())
    try:
        result = call(client, pump, commands.GetJob, job_id=7)
        assert result.check(commands.ServerError)
        assert "KeyError" in str(result.value)
        assert locator.calls == [7]
        assert not server.transport.disconnecting  # AMP's default: drop the link
        assert captured.failures == []
        [line] = captured.lines("server error")
        assert "KeyError" in line["error"] and "test_protocol.py" in line["where"]
        # The link still works.
        assert call(client, pump, commands.GetJob, job_id=8).check(commands.ServerError)
    finally:
        remove(captured)


def test_an_answer_over_one_amp_value_is_refused_in_one_line_not_by_dropping_the_link() -> None:
    server, client, locator, pump, captured = hostile_pair(Failing())
    try:
        result = call(client, pump, commands.Ping)
        assert result.check(commands.InvalidRequest) and "64 KiB" in str(result.value)
        assert not server.transport.disconnecting
        assert captured.failures == []
    finally:
        remove(captured)


def test_a_box_that_is_no_request_closes_the_link_with_one_line() -> None:
    server, client, locator, pump, captured = hostile_pair()
    try:
        transport = server.transport
        for box in ({b"_answer": b"99", b"x": b"1"}, {b"a": b"b"}, {b"_error": b"5"}):
            client.transport.write(amp.AmpBox(box).serialize())
        pump.flush()
        assert transport.disconnecting
        assert captured.failures == []
        assert len(captured.lines("protocol violation")) == 1  # closed after the first
    finally:
        remove(captured)


def test_the_problem_log_writes_a_burst_then_one_count_per_period() -> None:
    from twisted.logger import Logger

    from tm.logs import ProblemLog

    clock = Clock()
    events: list[dict] = []
    problems = ProblemLog(Logger(observer=cast(Any, events.append)), clock, burst=5, period=60.0)
    for _ in range(1000):
        problems.emit("bad arguments", "10.0.0.1", "{peer} did {kind}")
    problems.emit("bad arguments", "10.0.0.2", "{peer} did {kind}")
    assert len(events) == 6
    clock.advance(60)
    summary = events[-1]
    assert summary["count"] == 995 and summary["peer"] == "10.0.0.1"
    assert len(events) == 7
    assert not clock.getDelayedCalls()
    # A new period: the burst again.
    problems.emit("bad arguments", "10.0.0.1", "{peer} did {kind}")
    assert len(events) == 8
    assert problems.counts["bad arguments"] == 1002


def test_the_problem_log_tracks_a_bounded_number_of_peers() -> None:
    from twisted.logger import Logger

    from tm.logs import ProblemLog

    clock = Clock()
    events: list[dict] = []
    problems = ProblemLog(Logger(observer=cast(Any, events.append)), clock, burst=1, max_keys=10)
    for i in range(10_000):
        problems.emit("k", f"10.0.{i // 256}.{i % 256}", "{peer}")
    assert len(problems._windows) <= 11
    assert len(events) <= 11
    problems.stop()
    assert not clock.getDelayedCalls()
