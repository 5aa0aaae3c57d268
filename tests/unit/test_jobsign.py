"""Signed job specs and sealed environments (tm/jobsign.py, tm/executor/verify.py): what a
changed, foreign, old or differently keyed job looks like to the executor."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, globalLogPublisher

from tm import jobsign
from tm.core import jobfields
from tm.executor.request import JobStartError
from tm.executor.verify import SpecChecker
from tm.jobsign import JobKey, JobKeyError

KEY = JobKey(b"a" * 32)
OTHER = JobKey(b"b" * 32)
NOW = 1_800_000_000.0
DAY = 86400.0

JOB: dict[str, Any] = {
    "uuid": "00000000-0000-0000-0000-000000000001",
    "user": "alice",
    "command": "echo hi > out",
    "shell": "/bin/sh",
    "cwd": "/home/alice/work",
    "umask": 0o022,
    "slots": 2,
    "stdout": "o.txt",
    "stderr": "",
    "logfile": "l.txt",
}


def signed(key: JobKey = KEY, job: dict[str, Any] | None = None, at: float = NOW) -> dict:
    """A job as the TMS makes it: its fields, its sealed environment and its signature."""
    job = dict(JOB if job is None else job)
    sealed = key.seal(job["user"], {"MY_API_TOKEN": "s3cret", "PATH": "/bin"})
    signer = key.submission(job["user"], job["cwd"], job["umask"], sealed, at)
    return job | {"env": sealed, "signature": signer.sign(job), "signed_at": at}


def check(order: dict, key: JobKey = KEY, user: str = "alice", now: float = NOW) -> str | None:
    return key.check(
        order,
        order["signature"],
        order["signed_at"],
        order["env"],
        user=user,
        now=now,
        max_age=30 * DAY,
    )


def test_a_job_as_signed_passes() -> None:
    assert check(signed()) is None
    assert check(signed(), now=NOW + 30 * DAY) is None  # at the limit


def test_the_signature_covers_the_declared_fields() -> None:
    names = {f.name for f in jobsign.SUBMISSION_FIELDS + jobsign.JOB_FIELDS}
    assert names == {f.name for f in jobfields.SIGNED_FIELDS} == set(JOB) | jobsign.WHEN_SET


#: JOB's signature as it was made before the time limit was signed (pinned from that code):
#: a job stored then (no time limit) still verifies.
BEFORE_TIME_LIMITS = "1.8f0ae0f0cff49b7d.WuhZSxN-JPZTtVNteQ2whlwU2FbLoFI7oriO-PRncOk"


def test_a_job_without_a_time_limit_is_signed_as_before() -> None:
    signer = KEY.submission("alice", JOB["cwd"], JOB["umask"], "1.x.sealed", NOW)
    assert signer.sign(JOB) == BEFORE_TIME_LIMITS
    assert signer.sign(JOB | {"time_limit": None}) == BEFORE_TIME_LIMITS
    # The order carries time_limit None (RunJob's optional argument): still that job.
    order = signed()
    assert check(order | {"time_limit": None}) is None


def test_a_time_limit_is_signed() -> None:
    order = signed(job=JOB | {"time_limit": 90})
    assert check(order) is None
    assert check(order | {"time_limit": 90.0}) is None  # as RunJob's float carries it
    mismatch = "signature mismatch: the job's spec is not the one you signed"
    assert check(order | {"time_limit": 900.0}) == mismatch
    assert check(order | {"time_limit": None}) == mismatch  # the limit taken away
    assert check(signed() | {"time_limit": 5.0}) == mismatch  # a limit put on


@pytest.mark.parametrize("name", sorted(set(JOB) - {"user"}))
def test_any_changed_field_is_a_mismatch(name: str) -> None:
    order = signed()
    changed = 0o077 if name == "umask" else 3 if name == "slots" else order[name] + "x"
    problem = check(order | {name: changed})
    assert problem == "signature mismatch: the job's spec is not the one you signed"


def test_a_changed_time_or_environment_is_a_mismatch() -> None:
    order = signed()
    assert check(order | {"signed_at": NOW + 1}) is not None
    other_env = signed(job=JOB | {"uuid": "other"})["env"]  # the same user's, another seal
    assert check(order | {"env": other_env}) is not None
    assert check(order | {"signature": order["signature"][:-2] + "AA"}) is not None


def test_another_user_s_job_is_refused() -> None:
    bob = signed(job=JOB | {"user": "bob"})
    assert check(bob) == "signature mismatch: the job is 'bob''s, this executor runs alice's"
    # bob's job relabelled as alice's: signed for bob, so not alice's signature.
    assert check(bob | {"user": "alice"}) is not None


def test_a_job_signed_too_long_ago_is_refused() -> None:
    problem = check(signed(), now=NOW + 31 * DAY)
    assert problem == "signature mismatch: signed 31.0 days ago, longer than the limit of 30 days"


def test_another_key_is_named_and_a_borrowed_key_id_does_not_help() -> None:
    order = signed(OTHER)
    problem = check(order)
    assert problem is not None and "signed with another key" in problem
    assert OTHER.key_id in problem and KEY.key_id in problem
    # Whoever lacks the key cannot make a signature under its id.
    forged = order | {"signature": order["signature"].replace(OTHER.key_id, KEY.key_id)}
    assert check(forged) == "signature mismatch: the job's spec is not the one you signed"


def test_an_unsigned_or_malformed_signature_is_refused() -> None:
    order = signed()
    assert "not signed" in (check(order | {"signature": ""}) or "")
    assert "format" in (check(order | {"signature": "garbage"}) or "")
    assert "version" in (check(order | {"signature": "9.a.b"}) or "")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"command": "ab", "shell": "c"}, {"command": "a", "shell": "bc"}),  # moved across
        ({"stdout": "", "stderr": "x"}, {"stdout": "x", "stderr": ""}),
        ({"command": "a\x00\x00\x00\x01b"}, {"command": "a", "shell": "b"}),  # length bytes
        ({"slots": 12, "umask": 3}, {"slots": 1, "umask": 23}),
    ],
)
def test_the_encoding_is_unambiguous(first: dict, second: dict) -> None:
    one, two = signed(job=JOB | first), signed(job=JOB | second)
    one["env"] = two["env"]  # the same environment for both
    assert check(one | {"signature": two["signature"]} | first) is not None
    sealed = two["env"]
    a = KEY.submission("alice", JOB["cwd"], JOB["umask"], sealed, NOW).sign(JOB | first)
    b = KEY.submission("alice", JOB["cwd"], JOB["umask"], sealed, NOW).sign(JOB | second)
    assert a != b


def test_an_environment_opens_only_with_its_key_for_its_user() -> None:
    env = {"MY_API_TOKEN": "s3cret", "Ü": "ünïcode"}
    sealed = KEY.seal("alice", env)
    assert "s3cret" not in sealed and KEY.open("alice", sealed) == env
    assert KEY.seal("alice", env) != sealed  # a fresh nonce each time
    with pytest.raises(ValueError, match="does not open"):
        KEY.open("bob", sealed)
    with pytest.raises(ValueError, match="another key"):
        OTHER.open("alice", sealed)
    version, key_id, body = sealed.split(".")
    flipped = body[:20] + ("A" if body[20] != "A" else "B") + body[21:]
    with pytest.raises(ValueError, match="does not open"):
        KEY.open("alice", f"{version}.{key_id}.{flipped}")


def test_the_key_file_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "tm" / "jobkey"
    key = jobsign.ensure_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_size == 32
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert jobsign.ensure_key(path).key_id == key.key_id == jobsign.load_key(path).key_id
    assert [p.name for p in path.parent.iterdir()] == ["jobkey"]


def test_a_key_file_others_can_read_or_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobkey"
    path.write_bytes(b"x" * 32)
    os.chmod(path, 0o644)
    with pytest.raises(JobKeyError, match="chmod 600"):
        jobsign.load_key(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"x" * 31)
    with pytest.raises(JobKeyError, match="32 bytes, not 31.*remove it"):
        jobsign.load_key(path)
    with pytest.raises(JobKeyError, match="does not exist"):
        jobsign.load_key(tmp_path / "none")


def test_the_executor_refuses_and_logs_and_gives_the_runner_the_opened_environment() -> None:
    clock = Clock()
    clock.advance(NOW)
    loads: list[JobKey] = []

    def load() -> JobKey:
        loads.append(KEY)
        return KEY

    checker = SpecChecker("alice", clock, 30.0, load)
    order = checker.order(7, 1, signed())
    assert order["env"] == {"MY_API_TOKEN": "s3cret", "PATH": "/bin"}
    assert {"user", "uuid", "signature", "signed_at"}.isdisjoint(order)
    assert order["command"] == JOB["command"]
    events: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        with pytest.raises(JobStartError, match="^signature mismatch: the job's spec"):
            checker.order(7, 1, signed() | {"command": "id > pwn.txt"})
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    [refusal] = [e for e in events if e.get("log_format", "").startswith("refused job")]
    assert refusal["job_id"] == 7 and "signature mismatch" in refusal["reason"]
    assert len(loads) == 1  # the key is read once ...
    with pytest.raises(JobStartError, match="another key"):
        checker.order(8, 1, signed(OTHER))
    assert len(loads) == 2  # ... and again when an order names another one


def test_the_executor_without_a_key_refuses_in_one_line() -> None:
    def load() -> JobKey:
        raise JobKeyError("/home/alice/.taskmanager/jobkey does not exist")

    with pytest.raises(JobStartError, match="^signature mismatch: cannot check it: .* does not"):
        SpecChecker("alice", Clock(), 30.0, load).order(7, 1, signed())


def test_the_executor_opens_a_submission_s_environment_once_and_each_order_gets_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    clock.advance(NOW)
    checker = SpecChecker("alice", clock, 30.0, lambda: KEY)
    opened: list[str] = []
    real_open = JobKey.open

    def counting_open(key: JobKey, user: str, sealed: str) -> dict[str, str]:
        opened.append(sealed)
        return real_open(key, user, sealed)

    monkeypatch.setattr(JobKey, "open", counting_open)
    sealed = KEY.seal("alice", {"PATH": "/bin"})
    signer = KEY.submission("alice", JOB["cwd"], JOB["umask"], sealed, NOW)
    jobs = [JOB | {"command": f"echo {i}"} for i in range(3)]
    orders = [j | {"env": sealed, "signature": signer.sign(j), "signed_at": NOW} for j in jobs]
    first = checker.order(7, 1, orders[0])
    first["env"]["PATH"] = "changed by the runner"
    assert checker.order(8, 1, orders[1])["env"] == {"PATH": "/bin"}
    assert len(opened) == 1  # one submission, one decryption
    with pytest.raises(JobStartError, match="signature mismatch: the job's spec"):
        checker.order(9, 1, orders[2] | {"command": "id > pwn.txt"})  # each order checked
    other = signed()  # another submission: its own environment
    assert checker.order(10, 1, other)["env"] == {"MY_API_TOKEN": "s3cret", "PATH": "/bin"}
    assert opened == [sealed, other["env"]]
