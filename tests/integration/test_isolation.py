"""Trust without root (issue 10), points 2, 4, 5 and 8, on the real stack: a dispatcher under
twistd run by root (an admin), two more Unix users (needs root; fails in CI without it), the
real CLI, real TMS and executors.

- Point 4: bob cannot read alice's job, usage or sessions through any AMP command (sent raw,
  each of them) nor through hConnect; the admin still can.
- Point 5: a fake executor (a raw login in the executor role) is refused; a second executor
  for a live (user, host), even with a valid ticket, does not displace the live one.
- Point 2: a start command put in the cluster table by its editor is not run by a user's TMS
  unless the user's configuration lists it; the refusal is reported; a listed one runs.
- Point 8: the TMS does not listen on every interface.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import cli
from tests.helpers.processes import Installation, UnixUser, alive, executor_pid, wait_until
from tests.helpers.rawamp import RawClient
from tests.helpers.requirements import installation_shared_with, second_user
from tm import auth
from tm.dispatcher.tickets import ExecutorTickets

SECRET = "MY_API_TOKEN=s3cr3t-4lice"


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[Installation, UnixUser, UnixUser]]:
    """A dispatcher run by root (this process, an admin), with alice and bob, not admins."""
    with second_user("tm-see-a-") as alice, second_user("tm-see-b-") as bob:
        with installation_shared_with("tm-see-inst-", alice, bob) as inst:
            yield inst, alice, bob


@pytest.fixture
def world(
    shared: tuple[Installation, UnixUser, UnixUser],
) -> Iterator[tuple[Installation, UnixUser, UnixUser]]:
    inst, alice, bob = shared
    try:
        yield shared
    finally:
        # Free the slots for the next test: every job removed (the running ones killed).
        for name in ("root", alice.name, bob.name):
            cli.td(inst, f"rmjobs:{name}")
        wait_until(
            lambda: not cli.listed_ids(cli.td(inst, "lsrjobs") + cli.td(inst, "lspjobs")),
            60,
            "every job to be gone",
        )
        for user in (alice, bob):
            user.stop_processes()
            user.reset_home()
        for pid in inst.daemon_pids():
            os.kill(pid, 15)
        wait_until(lambda: not any(alive(p) for p in inst.daemon_pids()), 30, "root's daemons")


def as_user(inst: Installation, user: UnixUser) -> cli.As:
    return cli.As(functools.partial(user.run, inst), user.name)


# --- point 4 -----------------------------------------------------------------------------------


def test_bob_cannot_read_alices_job_through_any_command_and_the_admin_can(
    world: tuple[Installation, UnixUser, UnixUser],
) -> None:
    inst, alice, bob = world
    a, b = as_user(inst, alice), as_user(inst, bob)
    job = cli.submit(a, f"sleep 300 # {SECRET}")
    cli.wait_state(a, job, "running", timeout=60)
    cli.submit(b, "sleep 300")  # bob has a TMS, an executor and usage of his own

    # Every command, raw, aimed at alice's job and name.
    peek = bob.run(
        inst,
        sys.executable,
        "-m",
        "tests.helpers.peek",
        str(inst.var / "dispatcher.json"),
        str(job),
        alice.name,
        socket.gethostname(),
        timeout=120,
    )
    assert peek.returncode == 0, peek.stderr
    answers = json.loads(peek.stdout)
    assert {"GetJob", "WaitJob", "ListJobs", "ListUsers", "ListSessions", "KillJobs"} <= set(
        answers
    )
    for name, box in answers.items():
        text = json.dumps(box)
        for secret in (SECRET, alice.name, str(alice.work)):
            assert secret not in text, f"{name} told bob {secret!r}: {text}"
    print(f"\n{len(answers)} commands sent raw by bob; none told him of alice's job")
    assert answers["GetJob"]["_error_code"] == "UNKNOWN_JOB"
    assert answers["WaitJob"]["_error_code"] == "UNKNOWN_JOB"
    assert answers["ListUsers"]["_error_code"] == "PERMISSION_DENIED"
    assert answers["KillJobs"]["_error_code"] == "PERMISSION_DENIED"

    # The same through the CLI, to the dispatcher and through bob's own TMS.
    for argv in (["-T", f"lajob:{job}"], [f"lajob:{job}"]):
        result = bob.run(inst, "hConnect", *argv)
        assert SECRET not in result.stdout + result.stderr, argv
        assert f"unknown job {job}" in result.stderr, (argv, result.stderr)
    users = cli.td(b, "lsusers")
    assert bob.name in users and alice.name not in users, users
    sessions = cli.td(b, "lsthreads")
    assert alice.name not in sessions and bob.name in sessions, sessions
    listing = cli.td(b, "lsrjobs")
    assert job not in cli.listed_ids(listing) and SECRET not in listing, listing
    assert cli.state(a, job) == "running"  # bob's kill and suspend were refused

    # The admin, at the dispatcher, still sees everyone's (SEED behaviour 15).
    assert SECRET in cli.td(inst, f"lajob:{job}")
    admin_users = cli.td(inst, "lsusers")
    assert alice.name in admin_users and bob.name in admin_users
    assert job in cli.listed_ids(cli.td(inst, "lsrjobs"))


# --- point 5 -----------------------------------------------------------------------------------


def executor_hello(client: RawClient, token: str | None = None) -> dict[bytes, bytes]:
    """Hello and the file challenge as this process's user, in the executor role; the
    answer to Authenticate."""
    args = {
        b"protocol_version": b"1",
        b"role": b"tmms",
        b"user": b"root",
        b"host": socket.gethostname().encode(),
        b"pid": b"4242",
    }
    if token is not None:
        args[b"token"] = token.encode()
    hello = client.ask(b"Hello", args)
    assert b"_answer" in hello, hello
    auth.answer_challenge(
        hello[b"challenge_path"].decode(), hello[b"nonce"].decode(), client.challenge_dir
    )
    return client.ask(b"Authenticate", {})


def test_a_fake_executor_is_refused_and_a_second_one_does_not_displace_the_live_one(
    world: tuple[Installation, UnixUser, UnixUser],
) -> None:
    inst, _, _ = world
    info = inst.var / "dispatcher.json"
    host = socket.gethostname()
    job = cli.submit(inst, "sleep 300")
    cli.wait_state(inst, job, "running", timeout=60)
    live = executor_pid(inst)
    logins_before = inst.dispatcher_log.read_text().count("root authenticated as tmms")

    # The attack: any user logs in in the executor role for a host and reports a load.
    fake = RawClient(info)
    refused = executor_hello(fake)
    assert refused.get(b"_error_code") == b"AUTHENTICATION_FAILED", refused
    assert b"must be started by root's TMS" in refused[b"_error_description"]
    load = fake.ask(b"Heartbeat", {b"load": b"1000", b"running": b"[]"})
    assert load.get(b"_error_code") == b"NOT_AUTHENTICATED", load
    # A made-up token is no better.
    assert executor_hello(RawClient(info), "0" * 32).get(b"_error_code") == (
        b"AUTHENTICATION_FAILED"
    )

    # Even with a valid ticket (root can compute it: it reads var/), a second executor for a
    # live (user, host) is refused, and the live one stays.
    ticket = ExecutorTickets(inst.var / "executor-tickets.key").ticket("root", host)
    second = executor_hello(RawClient(info), ticket)
    assert second.get(b"_error_code") == b"TOO_BUSY", second
    assert f"is already connected (pid {live})".encode() in second[b"_error_description"]

    assert alive(live) and executor_pid(inst) == live
    assert cli.state(inst, job) == "running"
    assert f"tmms root@{host}" in cli.td(inst, "lsthreads")
    log = inst.dispatcher_log.read_text()
    assert log.count("root authenticated as tmms") == logins_before  # never displaced
    assert "refused a second executor of root" in log
    assert "1000" not in cli.td(inst, "updateload")
    cli.tms(inst, f"killjob:{job}")


# --- point 2 -----------------------------------------------------------------------------------


def set_start_command(inst: Installation, command: str) -> None:
    host = socket.gethostname()
    (inst.etc / "cluster.tab").write_text(f"{host}\t{host}\t1\t1\t\tFalse\t0\tTrue\t\t{command}\n")
    cli.td(inst, "reload")


def test_a_start_command_from_the_cluster_table_alone_is_not_run(
    world: tuple[Installation, UnixUser, UnixUser],
) -> None:
    inst, alice, _ = world
    a = as_user(inst, alice)
    trap = Path(tempfile.mkdtemp(prefix="tm-see-trap-"))
    os.chmod(trap, 0o1777)
    pwn = trap / "pwn.txt"
    forged = f"/bin/sh -c 'id > {pwn}; exit 1' x"
    tab = inst.etc / "cluster.tab"
    try:
        set_start_command(inst, forged)
        job = cli.submit(a, "echo ran > ran.out")
        reason = "is not one your installation allows"

        def refused() -> cli.JobInfo | None:
            info = cli.lajob(a, job)
            return info if any(reason in line for line in info.history) else None

        info = wait_until(refused, 60, "the start command to be refused")
        [line] = [line for line in info.history if reason in line][:1]
        assert forged in line and "~/.taskmanager/tmmenial_commands" not in line
        assert str(alice.home / ".taskmanager" / "tmmenial_commands") in line
        assert not pwn.exists()
        assert info.state == "waiting"

        # A command the user's own configuration names runs.
        wrapper = inst.root / "tm-twistd"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"exec {sys.executable} -c 'from twisted.scripts.twistd import run; run()' \"$@\"\n"
        )
        wrapper.chmod(0o755)
        mine = alice.home / ".taskmanager" / "tmmenial_commands"
        mine.write_text(f"{wrapper}\n")
        os.chown(mine, alice.uid, alice.gid)
        os.chmod(mine, 0o600)
        set_start_command(inst, str(wrapper))
        # The failed start backed the host off for this user (30 s): then it starts again.
        done = cli.wait_ended(a, job, timeout=120)
        assert done.state == "finished", done.text
        assert (alice.work / "ran.out").read_text() == "ran\n"
        assert not pwn.exists()
    finally:
        tab.unlink(missing_ok=True)
        cli.td(inst, "reload")
        shutil.rmtree(trap, ignore_errors=True)


# --- point 8 -----------------------------------------------------------------------------------


def listening(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses and ports process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for row in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = cols[1].split(":")
            raw = bytes.fromhex(address)
            if size == 4:
                text = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                text = socket.inet_ntop(socket.AF_INET6, words)
            out.append((text, int(port, 16)))
    return out


def test_the_tms_does_not_listen_on_every_interface(
    world: tuple[Installation, UnixUser, UnixUser],
) -> None:
    inst, _, _ = world
    cli.submit(inst, "true")
    info = json.loads((inst.home / ".taskmanager" / "tms.json").read_text())
    sockets = listening(info["pid"])
    print(f"\nthe TMS listens on {sockets}")
    assert ("127.0.0.1", info["port"]) in sockets
    assert not [s for s in sockets if s[0] in ("0.0.0.0", "::")], sockets
