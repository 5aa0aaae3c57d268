"""The CLI's fast path through the real programs: ``hRunJob`` and ``hConnect`` reach the user's
TMS on this host over its Unix socket (``-v`` says which way they went); a TMS they cannot
reach that way (on another host sharing the home) is still reached over TLS; the socket
serves its own user only."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import Installation, UnixUser, alive, wait_until
from tests.helpers.requirements import installation_shared_with, second_user

SUBMITTED = re.compile(r"Job \[(\d+)\] has been submitted to TaskDispatcher\.\n")
VIA_SOCKET = "using the TMS on "


def sock_path(home: Path) -> Path:
    return home / ".taskmanager" / f"tms.{socket.gethostname()}.sock"


def started(tm: Installation) -> int:
    """Start the user's TMS (the first hRunJob does, over TLS); the TMS's pid."""
    tm.run("hRunJob", "-q", "true", check=True, timeout=120)
    wait_until(lambda: sock_path(tm.home).is_socket(), 30, "the TMS's socket")
    return int((tm.home / ".taskmanager" / "tms.pid").read_text())


def test_everyday_commands_go_over_the_unix_socket(installation: Installation) -> None:
    tms_pid = started(installation)
    path = sock_path(installation.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    submitted = installation.run("hRunJob", "-v", "echo fast > fast.out", check=True)
    assert VIA_SOCKET + str(path) in submitted.stderr
    match = SUBMITTED.fullmatch(submitted.stdout)
    assert match, submitted.stdout
    job = int(match.group(1))

    waited = installation.run("hRunJob", "-v", "--wait", "exit 7")
    assert VIA_SOCKET in waited.stderr
    assert waited.returncode == 7, waited.stderr
    waited_job = int(SUBMITTED.fullmatch(waited.stdout).group(1))  # type: ignore[union-attr]

    blocker = installation.run("hRunJob", "-c", "1000", "-g", "big", "true", check=True)
    big = int(SUBMITTED.fullmatch(blocker.stdout).group(1))  # type: ignore[union-attr]
    listed = installation.run("hConnect", "-v", "lswjobs", check=True)
    assert VIA_SOCKET in listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split()[:2] == ["#", "ID"]
    assert [int(row.split()[1]) for row in rows] == [big]

    detail = installation.run("hConnect", "-v", "lajob:" + str(waited_job), check=True).stdout
    assert re.search(r"^state:\s+failed$", detail, re.M), detail
    assert re.search(r"^exit code:\s+7$", detail, re.M), detail
    wait_until(lambda: (installation.work / "fast.out").exists(), 30, f"job {job} to run")
    assert (installation.work / "fast.out").read_text() == "fast\n"

    refused = installation.run("hConnect", "-v", "lajob:999999")
    assert refused.returncode == 1
    assert VIA_SOCKET in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if not line.startswith("hConnect: using")]
    assert lines == ["hConnect: unknown job 999999"], refused.stderr

    bad = installation.run("hRunJob", "-v", "-p", "5", "-c", "1", "-E", "nosuchhost", "true")
    assert bad.returncode == 1 and VIA_SOCKET in bad.stderr
    assert len([line for line in bad.stderr.splitlines() if "using the TMS" not in line]) == 1
    killed = installation.run("hConnect", f"killjob:{big}", check=True).stdout
    assert str(big) in killed
    # Everything went to the one TMS, which is still the one that was started.
    assert int((installation.home / ".taskmanager" / "tms.pid").read_text()) == tms_pid and alive(
        tms_pid
    )


def test_a_tms_reached_over_tls_when_its_socket_does_not_answer(installation: Installation) -> None:
    """What a client on another host sharing the home sees: the socket file of the TMS's
    host, on which nobody listens on this host. It goes over TLS (tms.json), to the same
    TMS, and no second TMS is started."""
    tms_pid = started(installation)
    path = sock_path(installation.home)
    aside = path.with_name("aside.sock")
    path.rename(aside)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # a socket file nobody listens on: connect() is refused
    dead.close()
    try:
        result = installation.run("hRunJob", "-v", "--wait", "echo tls > tls.out", check=True)
        assert "trying TLS" in result.stderr and VIA_SOCKET not in result.stderr
        assert (installation.work / "tls.out").read_text() == "tls\n"
        listed = installation.run("hConnect", "-v", "lsfjobs", check=True)
        assert "trying TLS" in listed.stderr and "echo tls" in listed.stdout
        info = json.loads((installation.home / ".taskmanager" / "tms.json").read_text())
        assert info["pid"] == tms_pid and alive(tms_pid)
    finally:
        path.unlink()
        aside.rename(path)
    # Back on the socket.
    assert VIA_SOCKET in installation.run("hConnect", "-v", "ping", check=True).stderr


def test_a_tms_started_by_the_cli_answers_its_first_command_over_the_socket(
    installation: Installation,
) -> None:
    first = installation.run("hRunJob", "-v", "true", check=True, timeout=120)
    assert "trying TLS" in first.stderr  # none yet: the Twisted path started one
    assert VIA_SOCKET in installation.run("hRunJob", "-v", "true", check=True).stderr
    installation.run("hConnect", "shutdown", check=True)
    tms_pid = int((installation.home / ".taskmanager" / "tms.pid").read_text())
    wait_until(lambda: not alive(tms_pid), 30, "the TMS to stop")
    assert not sock_path(installation.home).exists()  # a stopped TMS leaves no socket behind


def refusal_frame(path: Path) -> dict:
    """Connect to ``path`` as this process and read what the TMS says."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    (size,) = struct.unpack_from("!I", data)
    return json.loads(data[4 : 4 + size])


@pytest.fixture
def shared_installation() -> Iterator[tuple[Installation, UnixUser]]:
    with (
        second_user("tm-fastcli-") as user,
        installation_shared_with("tm-fastcli-inst-", user) as inst,
    ):
        yield inst, user


def test_the_socket_refuses_another_uid(shared_installation: tuple[Installation, UnixUser]) -> None:
    inst, user = shared_installation
    user.run(inst, "hRunJob", "-q", "--wait", "true", check=True, timeout=120)
    path = sock_path(user.home)
    wait_until(path.is_socket, 30, "the second user's TMS socket")
    assert path.stat().st_uid == user.uid
    # This process is root: it can reach the file, but is not the TMS's user.
    answer = refusal_frame(path)
    assert answer["error"]["code"] == "PERMISSION_DENIED"
    assert f"not uid {os.getuid()}" in answer["error"]["message"]
    log = user.home / ".taskmanager" / "logs" / "tms.log"
    wait_until(
        lambda: f"refused a client of uid {os.getuid()}" in log.read_text(),
        15,
        "the refusal in the TMS's log",
    )
    # Its own user is still served over the socket.
    result = user.run(inst, "hConnect", "-v", "lsfjobs", check=True)
    assert VIA_SOCKET in result.stderr and "true" in result.stdout
