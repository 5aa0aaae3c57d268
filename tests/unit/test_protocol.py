"""The AMP vocabulary and its bounds, in memory (no sockets)."""

from __future__ import annotations

import uuid
from typing import cast

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
    def submit(self, cwd, umask, env, jobs):
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
