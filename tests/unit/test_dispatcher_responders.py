"""The dispatcher's responders over AMP in memory: authorisation, records, and the one
dispatcher method each calls (the store kept in memory, time on a task.Clock)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure

from tests.helpers.amp_pair import connected_pair
from tests.unit.dispatcher_fakes import MemoryStore, add_job, make_dispatcher
from tm.core.model import Host, JobEnvironment, JobSpec, JobState
from tm.dispatcher.service import Dispatcher
from tm.dispatcher.session import DispatcherProtocol
from tm.protocol import commands, records


class Peer:
    """A client connected in memory to one dispatcher session."""

    def __init__(
        self,
        d: Dispatcher,
        clock: Clock,
        user: str | None = "alice",
        role: str = commands.ROLE_CLIENT,
        host: str | None = None,
    ) -> None:
        self.clock = clock
        self.server = DispatcherProtocol(d)
        self.client = amp.AMP()
        self.pump = connected_pair(self.server, self.client)
        if user is not None:  # as if Hello and Authenticate had gone through
            session = self.server.session
            session.user, session.role, session.host = user, role, host
            self.server.authenticated()

    def call(self, command: type[amp.Command], **kw: Any) -> Any:
        results: list[Any] = []
        self.client.callRemote(command, **kw).addBoth(results.append)
        self.pump.flush()
        self.clock.advance(0)  # the scheduling pass a change asked for
        self.pump.flush()
        assert results, f"{command.__name__} was not answered"
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        return result


@pytest.fixture
def world(tmp_path: Path) -> tuple[Dispatcher, Clock, MemoryStore]:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1.example", short_name="h1", number_slots=2, max_slots=2)]
    )
    return d, clock, store


def test_a_submission_is_stored_and_queued(world: Any) -> None:
    d, clock, store = world
    spec = JobSpec(
        uuid="11111111-1111-1111-1111-111111111111", command="true", excluded_hosts=("h1",)
    )
    answer = Peer(d, clock).call(
        commands.SubmitJobs,
        **records.environment_to_amp(JobEnvironment(cwd="/tmp")),
        sealed_env="1.0123456789abcdef.c2VhbGVk",  # as the user's TMS seals it
        jobs=[records.spec_to_amp(dataclasses.replace(spec, signature="1.0123456789abcdef.s"))],
    )
    [job_id] = answer["job_ids"]
    job = d.jobs[job_id]
    assert job.state is JobState.WAITING and store.jobs[job_id].user == "alice"
    assert job.spec.excluded_hosts == ("h1.example",)  # short names become full names
    assert d.jobs.counts("alice") == {JobState.WAITING: 1}


def test_a_submission_naming_an_unknown_host_stores_nothing(world: Any) -> None:
    d, clock, store = world
    spec = JobSpec(
        uuid="11111111-1111-1111-1111-111111111111", command="true", excluded_hosts=("nowhere",)
    )
    with pytest.raises(commands.UnknownHost, match="unknown host 'nowhere'"):
        Peer(d, clock).call(
            commands.SubmitJobs,
            **records.environment_to_amp(JobEnvironment(cwd="/tmp")),
            sealed_env="1.0123456789abcdef.c2VhbGVk",  # as the user's TMS seals it
            jobs=[records.spec_to_amp(dataclasses.replace(spec, signature="1.0123456789abcdef.s"))],
        )
    assert not store.jobs and not d.jobs


def test_nothing_is_answered_before_authentication(world: Any) -> None:
    d, clock, _ = world
    with pytest.raises(commands.NotAuthenticated):
        Peer(d, clock, user=None).call(
            commands.ListJobs, states=[], scope="mine", after_id=0, limit=10
        )


def test_cluster_switch_needs_the_admin_role_and_is_stored(world: Any) -> None:
    d, clock, store = world
    with pytest.raises(commands.PermissionDenied, match="admin role"):
        Peer(d, clock).call(commands.SetClusterActive, active=False)
    assert d.cluster_active
    Peer(d, clock, user="root").call(commands.SetClusterActive, active=False)
    assert not d.cluster_active and store.settings["cluster_active"] == "0"


def test_a_host_is_switched_by_its_short_name(world: Any) -> None:
    d, clock, store = world
    answer = Peer(d, clock, user="root").call(commands.SetHostActive, host="h1", active=False)
    assert answer == {"host": "h1.example"}
    assert not d.hosts["h1.example"].active and store.hosts["h1.example"] == (False, False)
    with pytest.raises(commands.UnknownHost):
        Peer(d, clock, user="root").call(commands.SetHostActive, host="h9", active=True)


def test_a_user_is_disabled_and_an_unknown_one_refused(world: Any) -> None:
    d, clock, store = world
    Peer(d, clock, user="root").call(commands.SetUserEnabled, user="alice", enabled=False)
    assert not d.users["alice"].enabled and store.users_enabled == {"alice": False}
    with pytest.raises(commands.UnknownUser):
        Peer(d, clock, user="root").call(commands.SetUserEnabled, user="bob", enabled=False)


def test_a_heartbeat_records_the_load_even_with_an_unreadable_running_list(world: Any) -> None:
    d, clock, _ = world
    executor = Peer(d, clock, role=commands.ROLE_TMMS, host="h1.example")
    answer = executor.call(commands.Heartbeat, running=[[1, 1]], load=0.5)
    assert d.loads["h1.example"] == 0.5 and answer["lease"] == d.settings.executor_lease / 2
    with pytest.raises(commands.InvalidRequest, match="running must be a list"):
        executor.call(commands.Heartbeat, running=[["x", "y"]], load=0.75)
    assert d.loads["h1.example"] == 0.75


def test_a_client_cannot_send_an_executors_reports(world: Any) -> None:
    d, clock, _ = world
    with pytest.raises(commands.PermissionDenied):
        Peer(d, clock).call(commands.Heartbeat, running=[], load=None)


def test_the_queue_order_listing_and_a_kill(world: Any) -> None:
    d, clock, store = world
    for job_id in (1, 2, 3):
        add_job(d, store, job_id, priority=5 if job_id == 3 else 0)
    peer = Peer(d, clock)
    answer = peer.call(
        commands.ListJobs, states=["waiting"], scope="mine", after_id=0, limit=10, order="schedule"
    )
    assert [row["id"] for row in answer["jobs"]] == [3, 1, 2]
    # The same pages as JSON (what a TMS passes on to its local client): the rows as decoded.
    for order in ("schedule", None):
        for after_id, limit in ((0, 10), (0, 2), (1, 1)):
            kw = dict(states=["waiting"], scope="mine", after_id=after_id, limit=limit, order=order)
            rows = peer.call(commands.ListJobs, **kw)
            as_json = peer.call(commands.ListJobsJSON, **kw)
            assert json.loads(as_json["jobs_json"]) == rows["jobs"]
            assert as_json["next_after_id"] == rows["next_after_id"]
    killed = peer.call(commands.KillJobs, job_ids=[2], all=False)
    assert killed["killed"] == [2] and 2 not in d.jobs
    assert store.jobs[2].state is JobState.KILLED


def test_someone_elses_job_is_not_killed(world: Any) -> None:
    d, clock, store = world
    add_job(d, store, 1, user="root")
    with pytest.raises(commands.PermissionDenied, match="not yours"):
        Peer(d, clock).call(commands.KillJobs, job_ids=[1], all=False)
    assert d.jobs[1].state is JobState.WAITING


# --- who sees what (issue 10 point 4; the real stack: tests/integration/test_isolation.py) ----


def test_a_user_sees_only_their_own_jobs_users_and_sessions_an_admin_at_the_dispatcher_all(
    world: Any,
) -> None:
    d, clock, store = world
    add_job(d, store, 1, user="root", command="echo secret")
    alice = Peer(d, clock)
    for command, kw in (
        (commands.GetJob, {"job_id": 1}),
        (commands.WaitJob, {"job_id": 1, "timeout": 0.0}),
    ):
        with pytest.raises(commands.UnknownJob, match="unknown job 1"):
            alice.call(command, **kw)
    listed = alice.call(commands.ListJobs, states=[], scope="all", after_id=0, limit=10)
    assert listed["jobs"] == []
    assert [u["name"] for u in alice.call(commands.ListUsers)["users"]] == ["alice"]
    with pytest.raises(commands.PermissionDenied, match="only an admin"):
        alice.call(commands.ListUsers, user="root")
    d.tms_sessions["root"] = object()
    assert not any("root" in line for line in alice.call(commands.ListSessions)["lines"])

    admin = Peer(d, clock, user="root")
    assert admin.call(commands.GetJob, job_id=1)["job"][0]["command"] == "echo secret"
    assert {u["name"] for u in admin.call(commands.ListUsers)["users"]} == {"alice", "root"}
    # Through a TMS even an admin sees only their own (SEED behaviour 15).
    add_job(d, store, 2, user="alice")
    with pytest.raises(commands.UnknownJob):
        Peer(d, clock, user="root", role=commands.ROLE_TMS).call(commands.GetJob, job_id=2)
