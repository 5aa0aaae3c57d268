"""A small real cluster on one machine, for the cluster tests.

Hosts are network namespaces joined by veth pairs to a bridge in the root
namespace (the login host, ``.1`` of the subnet); each namespace runs its own
sshd (own config, host key, pid and log files, pubkey only).  The Unix accounts
are made for the run (an admin who runs the dispatcher, two users), with
ssh keys, ``authorized_keys`` and ``known_hosts`` filled by ``ssh-keyscan``, as an
admin would set up a real cluster.  File systems are shared between namespaces,
so the homes are shared as on a real cluster.

TaskManager runs from a shared virtual environment built from Debian's
``/usr/bin/python3`` and this repository (cached under ``/var/cache/tm-cluster``,
keyed on a digest of the sources, so it is never stale): the current
interpreter may live where other users cannot read it.

Every name carries a run id, so two runs on one machine do not collide; every
run is recorded under ``/run/tmc-cluster/`` and a later run removes what a run
killed before its clean-up left behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.processes import wait_until as _wait_until

REPO = Path(__file__).resolve().parents[2]
VENV_CACHE = Path("/var/cache/tm-cluster")
REGISTRY = Path("/run/tmc-cluster")
SYSTEM_PYTHON = "/usr/bin/python3"
SSHD = "/usr/sbin/sshd"
#: Source parts of the installation; the digest over them names the cached venv.
SOURCE_PARTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "tm", "twisted/plugins")
HOST_NAMES = ("h1", "h2", "h3")
#: Short, so that a host cut off the network loses its jobs within a test's patience: its
#: executors stop them after half of it, the dispatcher requeues them after it.
EXECUTOR_LEASE = 10
SLOTS_PER_HOST = 4
#: Accounts of the run and their roles in etc/users (eve is not listed there).
USER_ROLES = {
    "admin": "admin",
    "alice": "user",
    "bob": "user",
    "carol": "user",
    "dave": "user",
    "eve": None,
}


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 60.0,
    what: str = "condition",
    interval: float = 0.1,
) -> Any:
    """:func:`tests.helpers.processes.wait_until` with the cluster's longer defaults."""
    return _wait_until(predicate, timeout, what, interval)


def sh(
    *argv: str, check: bool = True, timeout: float = 60, **kw: Any
) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result


# --- can this machine build a cluster? ---------------------------------------------------


def unavailable_reason() -> str | None:
    """Why no cluster can be built here, or None."""
    if os.geteuid() != 0:
        return "the cluster tests need root (network namespaces, Unix users, sshd)"
    for tool in ("ip", "useradd", "userdel", "ssh", "ssh-keygen", "ssh-keyscan", "pkill"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is missing: apt-get install openssh-server"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing: apt-get install python3 python3-venv"
    if sh(SYSTEM_PYTHON, "-c", "import venv, ensurepip", check=False).returncode != 0:
        return f"{SYSTEM_PYTHON} cannot make a venv: apt-get install python3-venv"
    probe = f"tmcprobe{os.getpid()}"
    made = sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns is not available: {made.stderr.strip()}"
    sh("ip", "netns", "del", probe, check=False)
    return None


# --- the shared installation ---------------------------------------------------------------


def _source_files(repo: Path) -> list[Path]:
    files: list[Path] = []
    for part in SOURCE_PARTS:
        p = repo / part
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [
                f
                for f in p.rglob("*")
                if f.is_file()
                and "__pycache__" not in f.parts
                and f.suffix not in (".pyc", ".pyo", ".so")  # the extension is built anew
                and f.name != "_zygote"  # and so is the standalone zygote
                and f.name != "dropin.cache"
            ]
    return sorted(files)


def source_digest(repo: Path = REPO) -> str:
    h = hashlib.sha256(SYSTEM_PYTHON.encode())
    for f in _source_files(repo):
        h.update(str(f.relative_to(repo)).encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def shared_venv(repo: Path = REPO, cache: Path = VENV_CACHE) -> Path:
    """A venv from Debian's python3 with this repository installed, readable by everyone."""
    digest = source_digest(repo)
    venv = cache / f"venv-{digest}"
    with _locked(cache / ".lock"):
        os.chmod(cache, 0o755)
        done = venv / ".complete"
        if done.exists():
            done.touch()
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="src-", dir=cache) as src:
            for f in _source_files(repo):  # a clean copy: no stale build/ of the work tree
                target = Path(src) / f.relative_to(repo)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, target)
            sh(SYSTEM_PYTHON, "-m", "venv", str(venv), timeout=300)
            pip = [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ]
            sh(*pip, "setuptools>=77", timeout=600)
            sh(*pip, "--no-build-isolation", src, timeout=600)
        # The plugin cache, written now: other users cannot write it later.
        sh(
            str(venv / "bin" / "python"),
            "-c",
            "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))",
        )
        sh("chmod", "-R", "a+rX,go-w", str(venv))
        done.touch()
        _prune(cache, keep=venv)
    return venv


def _prune(cache: Path, keep: Path, newest: int = 3, idle: float = 900.0) -> None:
    """Remove installations of older sources: all but the newest few, once unused a while
    (a run that is still using one touched it at its start, at most a few minutes ago)."""

    def last_use(venv: Path) -> float:
        try:
            return (venv / ".complete").stat().st_mtime
        except OSError:
            return 0.0

    others = sorted((v for v in cache.glob("venv-*") if v != keep), key=last_use, reverse=True)
    for old in others[newest - 1 :]:
        if time.time() - last_use(old) > idle:
            shutil.rmtree(old, ignore_errors=True)


# --- records of runs, for cleaning up after a run that was killed ------------------------


@dataclass
class UserAccount:
    role: str  # admin, alice, bob, eve
    name: str
    uid: int = 0
    gid: int = 0
    home: Path = Path("/nonexistent")


@dataclass
class SimHost:
    short: str  # h1
    name: str  # the full name in cluster.tab
    netns: str
    veth: str
    address: str
    dir: Path
    sshd: subprocess.Popen | None = None

    @property
    def sshd_log(self) -> Path:
        return self.dir / "sshd.log"


@dataclass
class Cluster:
    venv: Path
    run_id: str = field(default_factory=lambda: secrets.token_hex(2))
    base: Path = Path("/nonexistent")
    subnet: str = ""
    bridge: str = ""
    hosts: dict[str, SimHost] = field(default_factory=dict)
    users: dict[str, UserAccount] = field(default_factory=dict)
    dispatcher: subprocess.Popen | None = None
    port: int = 0
    install: Path = Path("/nonexistent")

    # --- names and paths ---------------------------------------------------------------

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def etc(self) -> Path:
        return self.install / "etc"

    @property
    def var(self) -> Path:
        return self.install / "var"

    @property
    def dispatcher_json(self) -> Path:
        return self.var / "dispatcher.json"

    @property
    def dispatcher_log(self) -> Path:
        return self.install / "dispatcher.log"

    def host_by_name(self, name: str) -> SimHost:
        for h in self.hosts.values():
            if name in (h.name, h.short):
                return h
        raise KeyError(name)

    def host_by_address(self, address: str) -> SimHost:
        for h in self.hosts.values():
            if h.address == address:
                return h
        raise KeyError(address)

    # --- building ----------------------------------------------------------------------

    def start(self) -> None:
        """Build everything; on failure, :meth:`close` must still be called."""
        sweep_stale()
        self.base = Path(tempfile.mkdtemp(prefix=f"tmc-{self.run_id}-", dir="/tmp"))
        os.chmod(self.base, 0o755)
        for sub in ("home", "hosts"):
            (self.base / sub).mkdir(mode=0o755)
            os.chmod(self.base / sub, 0o755)
        self.bridge = f"tmcbr{self.run_id}"
        self._record()
        self._network()
        self._users()
        self._sshds()
        self._ssh_accounts()
        self._installation()
        self.start_dispatcher()

    def _netns_name(self, short: str) -> str:
        return f"tmc{self.run_id}-{short}"

    def _user_name(self, role: str) -> str:
        return f"tmc{self.run_id}_{role}"

    def _record(self) -> None:
        """Write down, before making them, the names of everything this run makes."""
        REGISTRY.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "pid": os.getpid(),
            "base": str(self.base),
            "bridge": self.bridge,
            "netns": [self._netns_name(short) for short in HOST_NAMES],
            "users": [self._user_name(role) for role in USER_ROLES],
        }
        (REGISTRY / f"{self.run_id}.json").write_text(json.dumps(data))

    def _network(self) -> None:
        with _locked(REGISTRY / ".net.lock"):
            used = sh("ip", "-4", "-o", "addr", "show").stdout + sh("ip", "-4", "route").stdout
            third = next((n for n in range(256) if f"10.213.{n}." not in used), None)
            if third is None:
                raise RuntimeError("no free 10.213.N.0/24 subnet for the cluster")
            self.subnet = f"10.213.{third}"
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
        for i, short in enumerate(HOST_NAMES, start=1):
            host = SimHost(
                short=short,
                name=f"tmc-{short}",
                netns=self._netns_name(short),
                veth=f"tmc{self.run_id}{short}",
                address=f"{self.subnet}.{10 + i}",
                dir=self.base / "hosts" / short,
            )
            self.hosts[short] = host
            host.dir.mkdir(mode=0o700)
            sh("ip", "netns", "add", host.netns)
            sh(
                "ip",
                "link",
                "add",
                host.veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.netns,
            )
            sh("ip", "link", "set", host.veth, "master", self.bridge, "up")
            sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            sh("ip", "-n", host.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", host.netns, "link", "set", "lo", "up")

    def _users(self) -> None:
        for role in USER_ROLES:
            name = self._user_name(role)
            home = self.base / "home" / name
            account = UserAccount(role=role, name=name, home=home)
            self.users[role] = account
            sh(
                "useradd",
                "-M",
                "-U",
                "-d",
                str(home),
                "-s",
                "/bin/bash",
                "-c",
                "TaskManager cluster test",
                "-p",
                "*",
                name,
            )
            pw = pwd.getpwnam(name)
            account.uid, account.gid = pw.pw_uid, pw.pw_gid
            home.mkdir(mode=0o700)
            os.chown(home, account.uid, account.gid)
            os.chmod(home, 0o700)

    def _sshd_config(self, host: SimHost) -> Path:
        allowed = " ".join(u.name for u in self.users.values())
        config = host.dir / "sshd_config"
        config.write_text(
            f"ListenAddress {host.address}:22\n"
            f"HostKey {host.dir / 'ssh_host_ed25519_key'}\n"
            f"PidFile {host.dir / 'sshd.pid'}\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\n"
            "AuthorizedKeysFile .ssh/authorized_keys\n"
            "PermitRootLogin no\n"
            "UsePAM no\n"
            "StrictModes yes\n"
            f"AllowUsers {allowed}\n"
            "X11Forwarding no\n"
            "PrintMotd no\n"
            "MaxStartups 50:30:100\n"
            "LogLevel VERBOSE\n"
        )
        return config

    def _sshds(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        for host in self.hosts.values():
            key = host.dir / "ssh_host_ed25519_key"
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key))
            config = self._sshd_config(host)
            sh(SSHD, "-t", "-f", str(config))
            self.start_sshd(host)

    def start_sshd(self, host: SimHost) -> None:
        host.sshd = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                host.netns,
                SSHD,
                "-D",
                "-f",
                str(host.dir / "sshd_config"),
                "-E",
                str(host.sshd_log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: self.sshd_answers(host), 30, f"sshd of {host.name} to listen")

    def sshd_answers(self, host: SimHost) -> bool:
        if host.sshd is not None and host.sshd.poll() is not None:
            raise AssertionError(
                f"sshd of {host.name} exited with {host.sshd.returncode}: "
                f"{host.sshd_log.read_text() if host.sshd_log.exists() else ''}"
            )
        try:
            with socket.create_connection((host.address, 22), timeout=1) as s:
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def stop_sshd(self, host: SimHost) -> None:
        proc, host.sshd = host.sshd, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            os.killpg(proc.pid, signal.SIGCONT)  # a paused sshd must see the TERM
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def pause_sshd(self, host: SimHost) -> None:
        """``kill -STOP``: connections are still accepted by the kernel, then nothing answers."""
        assert host.sshd is not None
        os.kill(host.sshd.pid, signal.SIGSTOP)

    def resume_sshd(self, host: SimHost) -> None:
        if self.sshd_running(host):
            assert host.sshd is not None
            os.kill(host.sshd.pid, signal.SIGCONT)

    def cut_link(self, host: SimHost) -> None:
        """The host drops off the network (its interface goes down), as if it had crashed."""
        sh("ip", "-n", host.netns, "link", "set", "eth0", "down")

    def restore_link(self, host: SimHost) -> None:
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")

    def partition(self, host: SimHost) -> None:
        """Cut the host off the dispatcher both ways with blackhole routes (its interface stays
        up, its TCP connections stay open): what a host sends to the login host, and what the
        login host sends to it, is dropped until :meth:`heal`."""
        sh("ip", "-n", host.netns, "route", "add", "blackhole", f"{self.gateway}/32")
        sh("ip", "route", "add", "blackhole", f"{host.address}/32")

    def heal(self, host: SimHost) -> None:
        """Undo :meth:`partition` (either half of it, if only one is there)."""
        sh("ip", "-n", host.netns, "route", "del", "blackhole", f"{self.gateway}/32", check=False)
        sh("ip", "route", "del", "blackhole", f"{host.address}/32", check=False)

    def partitioned(self, host: SimHost) -> bool:
        inside = sh("ip", "-n", host.netns, "route", "show", "type", "blackhole").stdout
        outside = sh("ip", "route", "show", "type", "blackhole").stdout
        return self.gateway in inside.split() or host.address in outside.split()

    def link_up(self, host: SimHost) -> bool:
        out = sh("ip", "-n", host.netns, "-o", "link", "show", "eth0").stdout
        return ",UP" in out or "<UP" in out

    def sshd_running(self, host: SimHost) -> bool:
        return host.sshd is not None and host.sshd.poll() is None

    def _ssh_accounts(self) -> None:
        scanned = sh(
            "ssh-keyscan", "-T", "10", "-t", "ed25519", *(h.address for h in self.hosts.values())
        ).stdout
        if scanned.count("ssh-ed25519") != len(self.hosts):
            raise RuntimeError(f"ssh-keyscan did not find every host's key: {scanned!r}")
        for account in self.users.values():
            ssh_dir = account.home / ".ssh"
            ssh_dir.mkdir(mode=0o700)
            key = ssh_dir / "id_ed25519"
            sh(
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"{account.name}@tmc",
                "-f",
                str(key),
            )
            (ssh_dir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
            (ssh_dir / "known_hosts").write_text(scanned)
            for f in (ssh_dir, *ssh_dir.iterdir()):
                os.chown(f, account.uid, account.gid)
            os.chmod(ssh_dir / "authorized_keys", 0o600)
            os.chmod(ssh_dir / "known_hosts", 0o644)

    def _installation(self) -> None:
        admin = self.users["admin"]
        self.install = self.base / "install"
        self.etc.mkdir(parents=True)
        header = (
            "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\t"
            "additional_info\tallow_info_server\tinfo_server_port\tactive\t"
            "ssh_target\ttmmenial_command\tload_check\n"
        )
        rows = "".join(
            f"{h.short}\t{h.name}\t{SLOTS_PER_HOST}\t{SLOTS_PER_HOST}\tnamespace {h.netns}\t"
            f"False\t0\tTrue\t{h.address}\t\tFalse\n"
            for h in self.hosts.values()
        )
        (self.etc / "cluster.tab").write_text(header + rows)
        (self.etc / "users").write_text(
            "".join(
                f"{u.name}\t{USER_ROLES[u.role]}\n"
                for u in self.users.values()
                if USER_ROLES[u.role]
            )
        )
        for path in (self.install, self.etc, *self.etc.iterdir()):
            os.chown(path, admin.uid, admin.gid)
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        with socket.socket() as s:
            s.bind((self.gateway, 0))
            self.port = s.getsockname()[1]

    # --- running things as a user ----------------------------------------------------

    def env(self, role: str) -> dict[str, str]:
        u = self.users[role]
        return {
            "HOME": str(u.home),
            "USER": u.name,
            "LOGNAME": u.name,
            "SHELL": "/bin/bash",
            "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG": "C.UTF-8",
            "TM_DISPATCHER": str(self.dispatcher_json),
            # The admin account runs the dispatcher and owns dispatcher.json: clients trust
            # that file only when they know it is the dispatcher's account (issue 10, point 6).
            "TM_DISPATCHER_ACCOUNT": self.users["admin"].name,
        }

    def run_as(
        self,
        role: str,
        *argv: str,
        cwd: Path | None = None,
        timeout: float = 120,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` as the user (uid, gid, no supplementary groups, their HOME and PATH)."""
        u = self.users[role]
        result = subprocess.run(
            list(argv),
            user=u.uid,
            group=u.gid,
            extra_groups=[],
            env=self.env(role),
            cwd=cwd or u.home,
            umask=0o022,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{u.name}: {' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def user_dir(self, role: str, name: str) -> Path:
        """A fresh directory in the user's home, owned by the user."""
        u = self.users[role]
        d = u.home / name
        d.mkdir(mode=0o755)
        os.chown(d, u.uid, u.gid)
        return d

    def start_dispatcher(self) -> None:
        admin = self.users["admin"]
        argv = [
            str(self.venv / "bin" / "twistd"),
            "-n",
            "--pidfile",
            "",
            "--logfile",
            str(self.dispatcher_log),
            "tmdispatcher",
            "--port",
            str(self.port),
            "--interface",
            self.gateway,
            "--public-host",
            self.gateway,
            "--config-dir",
            str(self.etc),
            "--var-dir",
            str(self.var),
            "--executor-lease",
            str(EXECUTOR_LEASE),
        ]
        out = open(self.install / "dispatcher.out", "ab")
        self.dispatcher = subprocess.Popen(
            argv,
            user=admin.uid,
            group=admin.gid,
            extra_groups=[],
            env=self.env("admin"),
            cwd=self.install,
            umask=0o022,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

        proc = self.dispatcher

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"the dispatcher exited with {proc.returncode}: "
                    f"{(self.install / 'dispatcher.out').read_text()}"
                    f"{self.dispatcher_log.read_text() if self.dispatcher_log.exists() else ''}"
                )
            try:
                return json.loads(self.dispatcher_json.read_text()).get("pid") == proc.pid
            except (OSError, ValueError):
                return False

        wait_until(ready, 60, "the dispatcher to publish dispatcher.json")

    def stop_dispatcher(self) -> None:
        proc, self.dispatcher = self.dispatcher, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def diagnostics(self, lines: int = 40) -> str:
        """The tails of the logs of the dispatcher, the TMSs, the TMMSs and the sshds."""
        logs = [self.dispatcher_log, self.install / "dispatcher.out"]
        for u in self.users.values():
            logs += sorted((u.home / ".taskmanager" / "logs").glob("*.log"))
        logs += [h.sshd_log for h in self.hosts.values()]
        out = []
        for log in logs:
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"==== {log} ====\n" + "\n".join(tail))
        return "\n".join(out)

    # --- tearing down ------------------------------------------------------------------

    def close(self) -> list[str]:
        """Remove everything this run made; returns what could not be removed."""
        errors: list[str] = []

        def attempt(what: str, fn: Callable[[], Any]) -> None:
            try:
                fn()
            except Exception as e:  # keep cleaning up; report at the end
                errors.append(f"{what}: {e}")

        attempt("dispatcher", self.stop_dispatcher)
        for host in self.hosts.values():
            # A blackhole route in the root namespace would outlive the host's namespace.
            attempt(f"routes of {host.name}", functools.partial(self.heal, host))
            attempt(f"sshd of {host.name}", functools.partial(self.stop_sshd, host))
        # By the names planned (and recorded) up front: also what a failed start half made.
        errors += remove_run(
            self.bridge,
            [self._netns_name(s) for s in HOST_NAMES],
            [self._user_name(r) for r in USER_ROLES],
            self.base,
        )
        with contextlib.suppress(OSError):
            (REGISTRY / f"{self.run_id}.json").unlink()
        return errors


def _kill_user_processes(name: str) -> None:
    try:
        uid = pwd.getpwnam(name).pw_uid
    except KeyError:
        return

    def none_left() -> bool:
        if sh("pgrep", "-u", str(uid), check=False).returncode != 0:
            return True
        sh("pkill", "-KILL", "-u", str(uid), check=False)
        return False

    wait_until(none_left, 20, f"the processes of {name} to die of SIGKILL")


def remove_run(bridge: str, netns: list[str], users: list[str], base: Path) -> list[str]:
    """Kill the processes of the run's users, delete them, its namespaces, bridge and files."""
    errors: list[str] = []
    for name in users:
        try:
            _kill_user_processes(name)
            if sh("id", "-u", name, check=False).returncode == 0:
                sh("userdel", "-r", name, check=False)  # the mail spool may not exist: no check
                if sh("id", "-u", name, check=False).returncode == 0:
                    errors.append(f"user {name} could not be removed")
        except Exception as e:
            errors.append(f"user {name}: {e}")
    for ns in netns:
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:  # sshd sessions left in the namespace
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if ns in sh("ip", "netns", "list", check=False).stdout.split():
            r = sh("ip", "netns", "del", ns, check=False)
            if r.returncode != 0:
                errors.append(f"netns {ns}: {r.stderr.strip()}")
    if bridge and sh("ip", "link", "show", bridge, check=False).returncode == 0:
        r = sh("ip", "link", "del", bridge, check=False)
        if r.returncode != 0:
            errors.append(f"bridge {bridge}: {r.stderr.strip()}")
    if base.name.startswith("tmc-") and base.is_dir():
        shutil.rmtree(base, ignore_errors=True)
    return errors


def sweep_stale() -> None:
    """Remove what runs that died before their clean-up left behind."""
    if not REGISTRY.is_dir():
        return
    for record in REGISTRY.glob("*.json"):
        data: Any = {}
        try:
            data = json.loads(record.read_text())
            os.kill(int(data["pid"]), 0)
            continue  # that run is still going
        except ProcessLookupError:
            pass
        except (OSError, ValueError, KeyError):
            pass
        data = data if isinstance(data, dict) else {}
        # Its sshds run as root in its namespaces: remove_run kills them via `ip netns pids`.
        remove_run(
            data.get("bridge", ""),
            data.get("netns", []),
            data.get("users", []),
            Path(data.get("base", "/nonexistent")),
        )
        with contextlib.suppress(OSError):
            record.unlink()
