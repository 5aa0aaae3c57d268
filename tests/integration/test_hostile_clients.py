"""Hostile clients against a real ``twistd tmdispatcher`` (issue 8 points 3, 4 and 7;
reliability notes §5 scenarios 8, 10 and 17).

Every test here connects only to 127.0.0.1 and bounds its loops in count and time.
"""

from __future__ import annotations

import random
import re
import socket
import sqlite3
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from twisted.protocols import amp

from tests.helpers.processes import TWISTD, Installation, InstallationWithEnv, wait_until
from tests.helpers.rawamp import Closed, RawClient, encode
from tm.core.model import JobSpec
from tm.protocol import commands, records
from tm.protocol.base import argument_problem

SEED = 20261130
#: Read-only commands whose responders may run with hostile but well-typed arguments.
READ_ONLY = {b"GetJob", b"ListJobs", b"GroupSummary", b"ListUsers"}
#: Arguments-less commands, and those whose well-typed call changes state, are sent only
#: with at least one argument that does not decode.
COMMAND_CLASSES = [
    c
    for c in vars(commands).values()
    if isinstance(c, type)
    and issubclass(c, amp.Command)
    and c.arguments
    and c is not amp.Command
    and c.__name__ != "_Command"
]


def dispatcher_log_problems(tm: Installation) -> list[str]:
    text = tm.dispatcher_log.read_text()
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line or "Unhandled" in line or "Dropping connection" in line
    ]


def table_rows(tm: Installation) -> dict[str, list[tuple]]:
    with sqlite3.connect(tm.var / "taskmanager.sqlite") as db:
        return {
            table: db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("jobs", "job_history")
        }


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def info(tm: Installation) -> Path:
    return tm.var / "dispatcher.json"


def authenticated(tm: Installation, **kw) -> RawClient:
    client = RawClient(info(tm), **kw)
    client.authenticate()
    return client


# --- the fuzz (point 3, scenario 8) ---------------------------------------------------------


def hostile_value(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"\xff\xfe\xfd",  # invalid UTF-8
            b"1; DROP TABLE jobs",
            b"1" * 26,  # reached SQLite as OverflowError once
            b"-" + b"9" * 30,
            str(2**63).encode(),
            str(-(2**63) - 1).encode(),
            b"-1",
            b"0",
            str(2**63 - 1).encode(),  # well-typed, still hostile
            b"nan",
            b"inf",
            b"1e999",
            b"1e25",
            b"",
            b"\x00",
            b"True",
            b"False",
            b"maybe",
            b"[" * 50_000,  # RecursionError in a JSON decoder
            b'{"a": ' * 1000,
            b"\x00\x01a\x00\x01b\x00\x00",  # a box inside a value
            b"\x00\x05abc",  # a length prefix longer than its data
            bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))),
        ]
    )


def fuzz_box(rng: random.Random) -> dict[bytes, bytes] | None:
    """A request box that must be refused in one line (or a harmless read-only one)."""
    if rng.random() < 0.1:
        name = rng.choice([b"NoSuchCommand", b"StartTLS", b"", b"\xff", b"Ping" * 20, b"_command"])
        return {b"_command": name}
    command = rng.choice(COMMAND_CLASSES)
    box: dict[bytes, bytes] = {b"_command": command.commandName}
    for name, _ in command.arguments:
        if rng.random() < 0.85:
            box[name] = hostile_value(rng)
    if rng.random() < 0.1:
        box[b"unexpected"] = hostile_value(rng)
    args = {k: v for k, v in box.items() if not k.startswith(b"_")}
    if (
        argument_problem(command, amp.AmpBox(args), None) is None
        and command.commandName not in READ_ONLY
    ):
        name = command.arguments[0][0]
        box[name] = b"\xff"
        if argument_problem(command, amp.AmpBox({**args, name: b"\xff"}), None) is None:
            return None
    return box


def check_answer(answer: dict[bytes, bytes]) -> None:
    if b"_error" in answer:
        text = answer.get(b"_error_description", b"").decode("utf-8", "replace")
        assert "\n" not in text and "Traceback" not in text, text
        assert answer.get(b"_error_code") != b"UNKNOWN", answer  # an undeclared error


def test_fuzz_before_and_after_authentication_leaves_no_traceback_and_no_change(
    installation: Installation,
) -> None:
    rng = random.Random(SEED)
    installation.run("hRunJob", "--wait", "true", check=True)
    installation.run("hRunJob", "--wait", "echo second", check=True)
    before = table_rows(installation)
    assert before["jobs"] and before["job_history"]
    log_lines_before = len(installation.dispatcher_log.read_text().splitlines())
    legit = authenticated(installation)
    started = time.monotonic()
    answered = 0

    # Random bytes and broken framing, each on a new connection before authentication.
    for i in range(300):
        client = RawClient(info(installation))
        try:
            kind = i % 3
            if kind == 0:
                client.send(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
            elif kind == 1:
                client.send(b"\x01\x00" + b"k" * 256)  # a key of 256 bytes
            else:
                client.send(b"\x00\x01k\xff\xffshort")  # a value longer than its data
        except (Closed, OSError):
            pass
        client.close()
        if i % 50 == 0:
            assert legit.ping()
            answered += 1

    # Boxes with wrong types, invalid UTF-8, huge integers, missing keys, unknown commands:
    # first unauthenticated, then on an authenticated connection.
    for phase in ("before", "after"):
        client = authenticated(installation) if phase == "after" else RawClient(info(installation))
        sent = 0
        while sent < 1500:
            box = fuzz_box(rng)
            if box is None:
                continue
            sent += 1
            args = {k: v for k, v in box.items() if k != b"_command"}
            try:
                answer = client.ask(box[b"_command"], args)
            except (Closed, OSError):
                assert phase == "before", f"the authenticated link was closed by {box!r}"
                client.close()
                client = RawClient(info(installation))  # e.g. past the handshake deadline
                continue
            check_answer(answer)
            if phase == "before" and b"_error" in answer:
                assert answer[b"_error_code"] in (
                    b"NOT_AUTHENTICATED",
                    b"INVALID_REQUEST",
                    b"UNHANDLED",
                    b"PROTOCOL_MISMATCH",
                    b"USER_NOT_ALLOWED",
                    b"UNKNOWN_HOST",
                    b"AUTHENTICATION_FAILED",
                ), answer
            if sent % 100 == 0:
                assert legit.ping()
                answered += 1
        client.close()

    assert legit.ping()
    assert time.monotonic() - started < 120  # bounded, not a timing claim
    assert answered >= 30
    assert dispatcher_log_problems(installation) == []
    assert table_rows(installation) == before
    # One line per kind and peer, rate-limited: 3 300 hostile inputs, a few dozen lines.
    added = installation.dispatcher_log.read_text().splitlines()[log_lines_before:]
    assert len(added) < 150, "\n".join(added[-40:])
    assert installation.run("hConnect", "-T", "lscluster", check=True).returncode == 0


# --- unauthenticated connections (point 4, scenario 10) --------------------------------------


@pytest.mark.parametrize(
    "installation",
    [("--handshake-timeout", "2", "--max-unauthenticated-per-address", "5")],
    indirect=True,
)
def test_unauthenticated_connections_are_refused_closed_and_capped(
    installation: Installation,
) -> None:
    before = table_rows(installation)
    alice = authenticated(installation)

    # (a) plain TCP without TLS: the handshake fails, nothing is answered.
    plain = RawClient(info(installation), tls=False)
    plain.send(encode({b"_command": b"Ping", b"_ask": b"1"}))
    assert plain.closed_within(15)
    plain.close()

    # (b) TLS but no Hello: closed after the handshake deadline.
    idle = RawClient(info(installation))
    assert idle.closed_within(15)
    idle.close()

    # (c) commands before authentication: "not authenticated", nothing written.
    early = RawClient(info(installation))
    for command, args in [
        (
            b"SubmitJobs",
            {
                b"cwd": b"/tmp",
                b"umask": b"18",
                b"env": b"{}",
                b"jobs": amp.AmpList(records.JOB_SPEC_FIELDS).toStringProto(
                    [records.spec_to_amp(JobSpec(uuid=str(uuid.uuid4()), command="touch early"))],
                    None,
                ),
            },
        ),
        (b"KillJobs", {b"job_ids": b"", b"all": b"True"}),
        (b"ListJobs", {b"states": b"", b"scope": b"all", b"after_id": b"0", b"limit": b"10"}),
    ]:
        answer = early.ask(command, args)
        assert answer.get(b"_error_code") == b"NOT_AUTHENTICATED", answer
    early.close()

    # (d) connections beyond the per-address cap are refused; alice is still answered.
    held = [RawClient(info(installation), timeout=10) for _ in range(5)]
    try:
        with pytest.raises((Closed, OSError, ssl.SSLError)):
            extra = RawClient(info(installation), timeout=10)
            extra.ping()  # refused at accept: the handshake or the first read fails
        assert alice.ping()
    finally:
        for client in held:
            client.close()
    # The held ones closed: new connections are admitted again.
    wait_until(
        lambda: installation.run("hConnect", "-T", "lscluster").returncode == 0,
        30,
        "a new connection to be admitted once the others closed",
    )
    assert table_rows(installation) == before
    assert dispatcher_log_problems(installation) == []
    log = installation.dispatcher_log.read_text()
    assert "not authenticated within 2" in log and "refusing a connection from 127.0.0.1" in log


# --- slow and stalled clients (point 4, scenario 17) -----------------------------------------


@pytest.mark.parametrize(
    "installation", [("--handshake-timeout", "2", "--drain-timeout", "2")], indirect=True
)
def test_stalled_boxes_and_slow_readers_are_dropped_and_memory_stays_bounded(
    installation: Installation,
) -> None:
    assert installation.dispatcher is not None
    pid = installation.dispatcher.pid
    rss_before = rss_kib(pid)
    legit = authenticated(installation)

    # Half a box, then nothing: before authentication (the handshake deadline) and after
    # (the stalled-box deadline).
    half = encode({b"_command": b"Ping", b"_ask": b"1"})[:9]
    unauth = RawClient(info(installation))
    unauth.send(half)
    stalled = authenticated(installation)
    stalled.send(half)
    assert unauth.closed_within(20) and stalled.closed_within(20)

    # Boxes that grow past 64 KiB before authentication are closed at once: 20 of them
    # cost nothing (each held ~480 KiB before).
    for _ in range(20):
        big = RawClient(info(installation))
        try:
            for i in range(8):
                big.send(b"\x00\x02k" + str(i).encode() + b"\xea\x60" + b"v" * 60_000)
        except (Closed, OSError):
            pass
        assert big.closed_within(20)
        big.close()

    # A reader that never reads: its requests stop being read, then it is dropped.
    slow = authenticated(installation, rcvbuf=4096)
    slow.sock.settimeout(0.2)
    request = encode({b"_command": b"ListUsers", b"_ask": b"1"})
    sent = 0
    blocked_since = None
    while sent < 200_000:
        try:
            slow.sock.send(request * 50)
            sent += 50
            blocked_since = None
        except (TimeoutError, ssl.SSLWantWriteError):
            blocked_since = blocked_since or time.monotonic()
            if time.monotonic() - blocked_since > 5:
                break  # the dispatcher stopped reading us
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError):
            break  # already dropped
    wait_until(
        lambda: "left our answers unread" in installation.dispatcher_log.read_text(),
        30,
        "the slow reader to be dropped",
    )
    assert slow.closed_within(60)
    slow.close()

    assert legit.ping()
    rss_after = rss_kib(pid)
    assert rss_after - rss_before < 60 * 1024, (rss_before, rss_after)
    log = installation.dispatcher_log.read_text()
    assert "a box unfinished for 2" in log or "not authenticated within 2" in log
    assert "box over 65536 bytes" in log
    assert dispatcher_log_problems(installation) == []


# --- a failed start says why (point 7) ----------------------------------------------------------


@pytest.mark.parametrize("daemonize", [False, True])
def test_a_port_in_use_stops_the_start_with_one_line_and_a_non_zero_exit(
    tmp_path: Path, daemonize: bool
) -> None:
    inst = Installation(tmp_path)
    taken = socket.socket()
    taken.bind(("", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        argv = [
            *TWISTD,
            *([] if daemonize else ["-n"]),
            "--pidfile",
            str(tmp_path / "d.pid"),
            "--logfile",
            str(tmp_path / "d.log"),
            "tmdispatcher",
            "--port",
            str(port),
            "--config-dir",
            str(inst.etc),
            "--var-dir",
            str(inst.var),
        ]
        result = subprocess.run(
            argv, env=inst.env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
    finally:
        taken.close()
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        rf"tmdispatcher: cannot listen on port {port}: Address already in use", lines[0]
    ), lines
    assert not (tmp_path / "d.pid").exists()


def test_the_dispatcher_s_log_file_rotates_and_keeps_a_bounded_number(tmp_path: Path) -> None:
    inst = InstallationWithEnv(
        tmp_path, extra_env={"TM_LOG_ROTATE_BYTES": "3000", "TM_LOG_KEEP_FILES": "2"}
    )
    try:
        inst.start_dispatcher()

        def authenticate_once() -> None:
            client = RawClient(info(inst))
            client.authenticate()  # one "authenticated" line each, about 100 bytes
            client.close()

        for _ in range(300):
            authenticate_once()
            if (tmp_path / "dispatcher.log.2").exists():
                break
        for _ in range(80):  # more than two files' worth: the oldest must go
            authenticate_once()
    finally:
        inst.cleanup()
    names = sorted(p.name for p in tmp_path.glob("dispatcher.log*"))
    assert names == ["dispatcher.log", "dispatcher.log.1", "dispatcher.log.2"], names


def test_a_start_that_fails_after_the_checks_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    inst = Installation(tmp_path)
    (inst.var / "taskmanager.sqlite").write_bytes(b"not a database" * 100)
    proc = inst.start_dispatcher(wait=False)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    log = inst.dispatcher_log.read_text()
    [line] = [x for x in log.splitlines() if "could not start" in x]
    assert "database" in line and "Traceback" not in log
