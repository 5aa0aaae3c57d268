"""Issue 10, points 1 and 3, on the real stack: a job's spec is signed by its user's TMS and
checked by the executor, its environment stored sealed.

The attack of the issue: a waiting job's command is changed in the database (SQLite, and
MariaDB with $TM_TEST_MYSQL_URL) and the dispatcher restarted; the executor refuses the job,
which ends ``failed`` with "signature mismatch", nothing of the forged command runs, and the
executor's log has the refusal. A job left alone beside it runs. (A requeued attempt runs the
same signed spec: tests/integration/test_faults.py, the dead executor's job that runs again.)
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from twisted.protocols import amp

from tests.helpers.cli import lajob, submit, td, wait_state
from tests.helpers.processes import InstallationWithEnv, wait_until
from tests.helpers.rawamp import RawClient
from tm.core.model import JobSpec
from tm.protocol import records

FORGED = "id > pwn.txt"


def sqlite_path(inst: InstallationWithEnv) -> Path:
    return inst.var / "taskmanager.sqlite"


def database_holds(inst: InstallationWithEnv, text: str) -> bool:
    """Whether ``text`` is anywhere in the database: every table's rows, and (SQLite) the
    bytes of its files."""
    if inst.database_url is None:
        files = [p for p in inst.var.iterdir() if p.name.startswith("taskmanager.sqlite")]
        if any(text.encode() in p.read_bytes() for p in files):
            return True
    for table in ("jobs", "environments", "job_history", "settings"):
        if any(text in str(row) for row in inst.sql(f"SELECT * FROM {table}")):
            return True
    return False


@pytest.fixture(params=["sqlite", "mysql"])
def installation_with_secret(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[InstallationWithEnv, str]:
    """An installation on SQLite or MariaDB whose user's environment holds a secret."""
    url = request.getfixturevalue("mysql_url") if request.param == "mysql" else None
    secret = "tm-secret-" + uuid.uuid4().hex
    inst = InstallationWithEnv(tmp_path, database_url=url, extra_env={"MY_API_TOKEN": secret})
    request.addfinalizer(inst.cleanup)
    inst.start_dispatcher()
    return inst, secret


def test_a_command_changed_in_the_database_is_refused_and_the_environment_is_sealed(
    installation_with_secret: tuple[InstallationWithEnv, str],
) -> None:
    inst, secret = installation_with_secret
    assert td(inst, "deactivatecluster") == "deactivated."
    target = submit(inst, "echo original > target.txt")
    bystander = submit(inst, "echo ran > bystander.txt")

    # Point 3: the environment is stored sealed; the user's own lajob (through the TMS, which
    # holds the key) shows it, the dispatcher's does not.
    assert not database_holds(inst, secret)
    assert lajob(inst, target).env["MY_API_TOKEN"] == secret
    assert "MY_API_TOKEN" not in lajob(inst, target, via_dispatcher=True).text
    [(signature, signed_at)] = inst.sql(
        "SELECT signature, signed_at FROM jobs WHERE id = ?", (target,)
    )
    assert signature.startswith("1.") and signed_at > 0

    # Point 1: whoever can write the database changes the waiting job's command.
    inst.stop_dispatcher()
    inst.sql("UPDATE jobs SET command = ? WHERE id = ?", (FORGED, target))
    inst.start_dispatcher()
    assert td(inst, "activatecluster") == "activated."

    wait_state(inst, bystander, "finished", timeout=60)
    assert (inst.work / "bystander.txt").read_text() == "ran\n"
    info = wait_state(inst, target, "failed", timeout=60)
    assert "signature mismatch" in info.reason, info
    assert "not the one you signed" in info.reason, info
    assert not (inst.work / "pwn.txt").exists()
    assert not (inst.work / "target.txt").exists()
    logs = inst.home / ".taskmanager" / "logs"
    wait_until(
        lambda: any(
            f"refused job {target}.1 of" in p.read_text() and "signature mismatch" in p.read_text()
            for p in logs.glob("tmmenial.*.log")
        ),
        10,
        "the executor's log to have the refusal",
    )


def test_a_client_of_the_dispatcher_cannot_submit_an_unsigned_job(
    installation_with_secret: tuple[InstallationWithEnv, str],
) -> None:
    """The hConnect -T path (a client straight to the dispatcher) has no key: its jobs are
    refused at submission, and nothing is stored."""
    inst, _ = installation_with_secret
    client = RawClient(inst.var / "dispatcher.json")
    try:
        client.authenticate()
        spec = JobSpec(uuid=str(uuid.uuid4()), command="touch unsigned")
        answer = client.ask(
            b"SubmitJobs",
            {
                b"cwd": str(inst.work).encode(),
                b"umask": b"18",
                b"env": b"{}",
                b"jobs": amp.AmpList(records.JOB_SPEC_FIELDS).toStringProto(
                    [records.spec_to_amp(spec)], None
                ),
            },
        )
    finally:
        client.close()
    assert answer.get(b"_error_code") == b"INVALID_REQUEST", answer
    assert b"must be signed" in answer[b"_error_description"]
    assert inst.sql("SELECT COUNT(*) FROM jobs") == [(0,)]
