"""The dispatcher's audit log (tm/dispatcher/audit.py): one line per admin action, written
by the responders (AMP in memory, time on a task.Clock)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.unit.dispatcher_fakes import add_job
from tests.unit.test_dispatcher_responders import Peer, world  # noqa: F401 - the fixture
from tm.dispatcher.audit import AuditLog
from tm.protocol import commands


def audit_lines(d: Any) -> list[str]:
    path = d.audit.path
    return path.read_text().splitlines() if path.exists() else []


def test_admin_actions_are_written_with_who_where_what_target_and_outcome(world: Any) -> None:  # noqa: F811
    d, clock, _ = world
    with pytest.raises(commands.PermissionDenied):
        Peer(d, clock).call(commands.SetHostActive, host="h1", active=False)
    Peer(d, clock, user="root").call(commands.SetHostActive, host="h1", active=False)
    with pytest.raises(commands.UnknownHost):
        Peer(d, clock, user="root").call(commands.SetHostActive, host="h9", active=True)
    Peer(d, clock, user="root").call(commands.SetUserEnabled, user="alice", enabled=False)
    Peer(d, clock, user="root").call(commands.AdminJobs, action="rmwjobs", user="alice")
    lines = audit_lines(d)
    assert len(lines) == 5, lines
    refused, done, failed, user, repair = (line.split(" ", 1)[1] for line in lines)
    assert (
        refused.startswith("user=alice from=") and " role=client action=deactivatehost" in refused
    )
    assert 'target=h1 outcome="refused: alice does not have the admin role' in refused
    assert done.startswith("user=root ") and done.endswith(
        "action=deactivatehost target=h1 outcome=done"
    )
    assert 'action=activatehost target=h9 outcome="failed: ' in failed
    assert user.endswith("action=disableuser target=alice outcome=done")
    assert repair.endswith("action=rmwjobs target=alice outcome=done")
    assert d.audit.path.stat().st_mode & 0o777 == 0o600


def test_kills_of_other_users_jobs_are_written_and_own_kills_are_not(world: Any) -> None:  # noqa: F811
    d, clock, store = world
    add_job(d, store, 1, user="alice")
    add_job(d, store, 2, user="alice")
    add_job(d, store, 3, user="root")
    Peer(d, clock).call(commands.KillJobs, job_ids=[1], all=False)
    assert audit_lines(d) == []  # her own job
    with pytest.raises(commands.PermissionDenied):
        Peer(d, clock).call(commands.KillJobs, job_ids=[3], all=False)
    Peer(d, clock, user="root").call(commands.KillJobs, job_ids=[2, 3], all=False)
    refused, kill = (line.split(" ", 1)[1] for line in audit_lines(d))
    assert refused.startswith("user=alice ") and 'action=kill target="job 3 of root"' in refused
    assert kill.startswith("user=root ") and kill.endswith(
        'action=kill target="job 2 of alice" outcome=done'
    )


def test_refusals_are_limited_per_user_and_counted(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    log = AuditLog(tmp_path / "audit.log", clock)
    for _ in range(100):
        log.record("bob", "10.0.0.5", "client", "reload", "configuration", "refused: no")
    log.record("root", "10.0.0.1", "client", "reload", "configuration")
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == 6 and lines[-1].endswith(
        "user=root from=10.0.0.1 role=client action=reload target=configuration outcome=done"
    )
    assert lines[0].startswith("2023-11-14T22:13:20+00:00 user=bob from=10.0.0.5")
    clock.advance(60)
    last = (tmp_path / "audit.log").read_text().splitlines()[-1]
    assert "refused admin action from bob: 95 more not logged in the last 60 s" in last
    log.stop()


def test_a_value_cannot_start_a_new_line_or_field(tmp_path: Path) -> None:
    clock = Clock()
    log = AuditLog(tmp_path / "audit.log", clock)
    log.record("root", "10.0.0.1", "client", "deactivatehost", "h1\nuser=eve outcome=done")
    [line] = (tmp_path / "audit.log").read_text().splitlines()
    assert line.endswith('target="h1\\nuser=eve outcome=done" outcome=done')
