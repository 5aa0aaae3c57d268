"""The dispatcher's manhole, against a real ``twistd tmdispatcher``: off by default, a 0600
socket, answers about the live dispatcher, one namespace per connection, strangers refused."""

from __future__ import annotations

import getpass
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import Installation, wait_until
from tests.helpers.requirements import require_root

_TELNET = re.compile(rb"\xff\xfa.*?\xff\xf0|\xff[\xfb-\xfe].|\xff[\xf0-\xfa]", re.S)
_ESCAPE = re.compile(rb"\x1b(\[[0-9;?]*[A-Za-z]|.)")


class ManholeClient:
    """A plain line client, as ``socat - UNIX-CONNECT:PATH`` would be: no telnet replies."""

    def __init__(self, path: Path, timeout: float = 15.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.banner = self._until_prompt()

    def _until_prompt(self) -> str:
        raw = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"manhole closed the connection; got {raw!r}")
            raw += chunk
            text = _ESCAPE.sub(b"", _TELNET.sub(b"", raw)).decode("utf-8", "replace")
            if text.endswith(">>> "):
                return text

    def ask(self, line: str) -> str:
        """Send one line; return what the manhole printed for it, without echo and prompt."""
        self.sock.sendall(line.encode() + b"\n")
        lines = self._until_prompt().split("\r\n")
        assert lines[0] == line and lines[-1] == ">>> ", lines
        return "\n".join(lines[1:-1])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket path must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tm-mh-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sockets_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if stat.S_ISSOCK(os.lstat(p).st_mode)]


def assert_private_socket(path: Path) -> None:
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode), oct(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()


def test_the_manhole_is_off_by_default(tmp_path: Path) -> None:
    inst = Installation(tmp_path)
    try:
        inst.start_dispatcher()
        assert sockets_under(tmp_path) == []
        log = inst.dispatcher_log.read_text()
        assert "manhole listening" not in log and "ManholeFactory" not in log
    finally:
        inst.cleanup()


def test_the_manhole_answers_from_the_live_dispatcher_per_connection(
    tmp_path: Path, short_dir: Path
) -> None:
    path = short_dir / "manhole.sock"
    inst = Installation(tmp_path)
    first = second = None
    try:
        inst.start_dispatcher("--manhole", str(path))
        assert_private_socket(path)
        first = ManholeClient(path)
        assert "jobs(state=None)" in first.banner and "hosts()" in first.banner
        assert first.ask("len(jobs('waiting'))") == "0"

        assert (
            inst.run("hConnect", "-T", "deactivatecluster", check=True).stdout.strip()
            == "deactivated."
        )
        ids = []
        for n in range(3):
            out = inst.run("hRunJob", f"echo {n}", check=True).stdout
            ids.append(int(re.search(r"\[(\d+)\]", out).group(1)))
        assert first.ask("len(jobs('waiting'))") == "3"
        assert first.ask("[j.id for j in jobs('waiting')]") == repr(ids)
        assert first.ask("len(jobs('running'))") == "0"
        assert first.ask("dispatcher.cluster_active") == "False"
        assert first.ask("sessions().tms") == repr((getpass.getuser(),))
        assert first.ask("[h.name for h in hosts()] == list(dispatcher.hosts)") == "True"
        assert "sessions()" in first.ask("help()")

        assert first.ask("marker = 'only here'") == ""
        assert first.ask("marker") == "'only here'"
        second = ManholeClient(path)
        assert second.ask("marker").endswith("NameError: name 'marker' is not defined")
        assert second.ask("len(jobs('waiting'))") == "3"
        assert first.ask("marker") == "'only here'"
        assert "manhole: connection from uid" in inst.dispatcher_log.read_text()
        # Each session is an admin action: it is in the audit log, next to the log file.
        audit = (inst.root / "audit.log").read_text()
        assert audit.count(f'user="uid {os.geteuid()}" from=manhole role=- action="manhole') == 2
    finally:
        for client in (first, second):
            if client is not None:
                client.close()
        inst.cleanup()
    assert not os.path.lexists(path), "the socket outlived the dispatcher"


def _nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


def _become_nobody() -> None:
    user = _nobody()
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(15)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print(json.dumps({"connect": "EACCES"}))
    sys.exit(0)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(json.dumps({"connect": "ok", "data": data.decode("utf-8", "replace"), "eof": True}))
"""


def _interpreter_for_nobody() -> str | None:
    """A Python that ``nobody`` may run (``sys.executable`` may sit under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            ran = subprocess.run(
                [candidate, "-c", "pass"],
                preexec_fn=_become_nobody,
                cwd="/",
                capture_output=True,
                timeout=30,
            )
        except OSError:  # missing, or not executable by nobody
            continue
        if ran.returncode == 0:
            return candidate
    return None


def connect_as_nobody(python: str, path: Path) -> dict:
    result = subprocess.run(
        [python, "-c", _CLIENT, str(path)],
        preexec_fn=_become_nobody,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_connection_from_another_uid_is_refused(tmp_path: Path, short_dir: Path) -> None:
    require_root("run a client as user nobody")  # skips on a developer's machine, fails in CI
    python = _interpreter_for_nobody()
    assert python is not None, "no Python interpreter that user nobody may run"
    short_dir.chmod(0o711)  # nobody may reach the socket's directory; only for this test
    path = short_dir / "manhole.sock"
    inst = Installation(tmp_path)
    try:
        inst.start_dispatcher("--manhole", str(path))
        assert_private_socket(path)
        # Mode 0600: the kernel already turns nobody away.
        assert connect_as_nobody(python, path) == {"connect": "EACCES"}
        # With the mode loosened (say, by a careless chmod), the uid check must refuse.
        path.chmod(0o666)
        answer = connect_as_nobody(python, path)
        assert answer["connect"] == "ok" and answer["eof"] is True
        uid = _nobody().pw_uid
        assert answer["data"].startswith(f"manhole: refused: you are uid {uid};"), answer
        assert ">>>" not in answer["data"] and "jobs(" not in answer["data"]
        wait_until(
            lambda: f"refused a connection from uid {uid}" in inst.dispatcher_log.read_text(),
            10,
            "the refusal to be logged",
        )
        # The dispatcher's own uid is still served.
        me = ManholeClient(path)
        assert me.ask("6 * 7") == "42"
        me.close()
    finally:
        inst.cleanup()


def test_bad_manhole_paths_stop_the_start_with_one_line(tmp_path: Path, short_dir: Path) -> None:
    def refused(inst: Installation, path: Path) -> str:
        proc = inst.start_dispatcher("--manhole", str(path), wait=False)
        out = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode != 0, out
        assert "Traceback" not in out, out
        return out.strip().splitlines()[-1]

    inst = Installation(tmp_path / "a")
    assert refused(inst, short_dir / "missing" / "m.sock").endswith(
        f"--manhole: directory {short_dir / 'missing'} does not exist"
    )
    regular = short_dir / "notes.txt"
    regular.write_text("keep")
    assert refused(inst, regular).endswith(
        f"--manhole: {regular} exists and is not a socket; not replacing it"
    )
    assert regular.read_text() == "keep"

    # A stale socket (left by a dispatcher killed with -9) is replaced ...
    path = short_dir / "manhole.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    other = Installation(tmp_path / "b")
    try:
        inst.start_dispatcher("--manhole", str(path))
        assert_private_socket(path)
        client = ManholeClient(path)
        assert client.ask("dispatcher.settings.var_dir") == repr(inst.var)
        # ... but a live one is not taken over.
        assert refused(other, path).endswith(f"--manhole: {path} is in use by a running process")
        assert client.ask("dispatcher.settings.var_dir") == repr(inst.var)
        client.close()
    finally:
        inst.cleanup()
        other.cleanup()
