"""Real TaskManager processes for integration tests: a dispatcher, the CLI, cleanup."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    what: str = "condition",
    interval: float = 0.05,
) -> Any:
    """Poll ``predicate`` until it returns something true, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def daemon_pids(home: Path) -> list[int]:
    """The pids in the pid files of a user's TaskManager daemons (TMS, TMMS) under ``home``."""
    pids = []
    for pidfile in (home / ".taskmanager").glob("*.pid"):
        try:
            pids.append(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            pass
    return pids


class Installation:
    """One TaskManager installation in a temporary directory, with its own HOME."""

    #: Every installation made, in order: the leak guard (tests/helpers/leaks.py) checks that
    #: those of a test have no process left after it.
    made: list[Installation] = []

    def __init__(self, root: Path, database_url: str | None = None) -> None:
        Installation.made.append(self)
        self.root = root
        self.home = root / "home"
        self.etc = root / "etc"
        self.var = root / "var"
        self.work = root / "work"
        for d in (self.home, self.etc, self.var, self.work):
            d.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.database_url = database_url
        self.dispatcher: subprocess.Popen | None = None
        self.dispatcher_log = root / "dispatcher.log"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.home)
        env.pop("TM_DISPATCHER", None)
        env["SHELL"] = "/bin/sh"
        # The processes run this checkout's code, whatever copy of TaskManager is installed
        # (twistd finds the plugins through twisted/plugins on this path too).
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        return env

    def start_dispatcher(self, *extra: str, wait: bool = True) -> subprocess.Popen:
        argv = [
            *TWISTD,
            "-n",
            "--pidfile",
            "",
            "--logfile",
            str(self.dispatcher_log),
            "tmdispatcher",
            "--port",
            str(self.port),
            "--config-dir",
            str(self.etc),
            "--var-dir",
            str(self.var),
            *extra,
        ]
        if self.database_url:
            argv += ["--database", self.database_url]
        info = self.var / "dispatcher.json"
        if info.exists():
            info.unlink()
        self.dispatcher = subprocess.Popen(
            argv,
            env=self.env,
            cwd=self.root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            wait_until(lambda: self._ready(), 30, "the dispatcher to publish dispatcher.json")
        return self.dispatcher

    def _ready(self) -> bool:
        if self.dispatcher is not None and self.dispatcher.poll() is not None:
            out = self.dispatcher.stdout.read().decode() if self.dispatcher.stdout else ""
            raise AssertionError(
                f"dispatcher exited with {self.dispatcher.returncode}: {out}"
                f"{self.dispatcher_log.read_text() if self.dispatcher_log.exists() else ''}"
            )
        info = self.var / "dispatcher.json"
        return (
            self.dispatcher is not None
            and info.exists()
            and json.loads(info.read_text()).get("pid") == self.dispatcher.pid
        )

    def stop_dispatcher(self) -> None:
        if self.dispatcher is not None and self.dispatcher.poll() is None:
            os.killpg(self.dispatcher.pid, signal.SIGTERM)
            try:
                self.dispatcher.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.dispatcher.pid, signal.SIGKILL)
                self.dispatcher.wait()

    def run(
        self, *argv: str, cwd: Path | None = None, timeout: float = 60, check: bool = False
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            list(argv),
            env=self.env,
            cwd=cwd or self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} failed ({result.returncode}): {result.stderr}")
        return result

    def daemon_pids(self) -> list[int]:
        return daemon_pids(self.home)

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement (``?`` placeholders) on the installation's own database, SQLite or
        MariaDB, as someone who can write it, committed; its rows."""
        if self.database_url is None:
            import sqlite3

            conn = sqlite3.connect(self.var / "taskmanager.sqlite", timeout=10)
            try:
                rows = conn.execute(statement, params).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import pymysql

        from tm.db.store import parse_url

        url = parse_url(self.database_url)
        kw: dict[str, Any] = {"host": url.host, "port": url.port, "user": url.user}
        if url.password is not None:
            kw["password"] = url.password
        mysql = pymysql.connect(database=url.database, autocommit=True, **kw)
        try:
            with mysql.cursor() as cursor:
                cursor.execute(statement.replace("?", "%s"), params)
                return [tuple(row) for row in cursor.fetchall()]
        finally:
            mysql.close()

    def cleanup(self) -> None:
        for pid in self.daemon_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        self.stop_dispatcher()
        for pid in self.daemon_pids():
            _end(pid)
        # An executor the TMS was starting when it stopped is not in a pid file yet: its
        # command line names the pid file it is about to write. twistd daemonizes by forking
        # twice, so ending the process seen may leave its child, which writes the pid file
        # afterwards: look again until a look finds nothing (a few rounds at most).
        for _ in range(5):
            pids = set(processes_mentioning(str(self.home / ".taskmanager") + "/tmmenial."))
            pids.update(p for p in self.daemon_pids() if alive(p))
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            for pid in pids:
                _end(pid)


def _end(pid: int) -> None:
    """Wait up to 10 s for ``pid`` to exit after a TERM; then kill it."""
    try:
        wait_until(functools.partial(_dead, pid), 10, f"pid {pid} to exit")
    except AssertionError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def processes_mentioning(text: str) -> list[int]:
    """Live processes (other than this one) whose command line contains ``text``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if text.encode() in f.read() and alive(int(name)):
                        found.append(int(name))
            except OSError:
                pass
    return found


def executor_pid(inst: Installation) -> int:
    """The pid of the one executor (TMMS) of the installation's user, from its pid file."""
    pidfiles = list((inst.home / ".taskmanager").glob("tmmenial.*.pid"))
    assert len(pidfiles) == 1, pidfiles
    return int(pidfiles[0].read_text())


def _dead(pid: int) -> bool:
    return not alive(pid)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


# --- Helpers for multi-host and multi-user integration tests (additive) -------------------

CLUSTER_TAB_HEADER = (
    "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\tadditional_info\t"
    "allow_info_server\tinfo_server_port\tactive\tssh_target\ttmmenial_command\tload_check\n"
)


@dataclass(frozen=True)
class ClusterHost:
    """One line of etc/cluster.tab. Without an ssh_target the host's executors run here."""

    name: str
    slots: int
    max_slots: int | None = None
    active: bool = True
    load_check: bool = False
    ssh_target: str = ""
    tmmenial_command: str = ""

    def line(self) -> str:
        max_slots = self.slots if self.max_slots is None else self.max_slots
        return (
            "\t".join(
                [
                    self.name,
                    self.name,
                    str(self.slots),
                    str(max_slots),
                    "",
                    "False",
                    "0",
                    str(self.active),
                    self.ssh_target,
                    self.tmmenial_command,
                    str(self.load_check),
                ]
            )
            + "\n"
        )


def write_cluster_tab(etc: Path, hosts: list[ClusterHost]) -> Path:
    """Write ``etc/cluster.tab`` (with the header line) listing ``hosts``."""
    path = etc / "cluster.tab"
    path.write_text(CLUSTER_TAB_HEADER + "".join(h.line() for h in hosts))
    return path


class InstallationWithEnv(Installation):
    """An Installation whose dispatcher and CLI -- and so the TMS, executors and jobs they
    start -- get ``extra_env`` on top of the usual environment."""

    def __init__(
        self, root: Path, database_url: str | None = None, extra_env: dict[str, str] | None = None
    ) -> None:
        super().__init__(root, database_url)
        self.extra_env = dict(extra_env or {})

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        env.update(self.extra_env)
        return env


def world_traversable(path: Path) -> bool:
    """Whether every directory above ``path`` lets any user through (o+x)."""
    for parent in Path(os.path.realpath(path)).parents:
        if not os.stat(parent).st_mode & 0o001:
            return False
    return True


def processes_of_uid(uid: int) -> list[int]:
    """Pids of the live processes whose real uid is ``uid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid and alive(int(entry)):
                            pids.append(int(entry))
                        break
        except OSError:
            pass
    return pids


class UnixUser:
    """A throw-away Unix account for tests that need a second user (needs root).

    ``run`` starts a program as the user (uid, gid, no other groups, their HOME,
    USER and LOGNAME) with ``setpriv``. When this interpreter lives where the user
    cannot reach it (pyenv under a 0700 /root), the user's processes get the
    ambient capability CAP_DAC_READ_SEARCH, only so that they can read and run it;
    writing still obeys the file modes, and the dispatcher still proves the user
    by the ownership of the challenge file.
    """

    def __init__(self, name: str, base: Path) -> None:
        import pwd

        self.name = name
        self.base = base
        self.home = base / name
        subprocess.run(
            [
                "useradd",
                "-M",
                "-U",
                "-d",
                str(self.home),
                "-s",
                "/bin/sh",
                "-c",
                "TaskManager integration test",
                "-p",
                "*",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        pw = pwd.getpwnam(name)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.home.mkdir(mode=0o755)
        os.chown(self.home, self.uid, self.gid)
        self.work = self.dir("work")
        self.needs_cap = not world_traversable(Path(sys.executable))

    @classmethod
    def create(cls, base: Path) -> UnixUser:
        import secrets

        return cls(f"tmseed{secrets.token_hex(3)}", base)

    def dir(self, name: str) -> Path:
        """A fresh directory in the user's home, owned by the user."""
        d = self.home / name
        d.mkdir(mode=0o755, exist_ok=True)
        os.chown(d, self.uid, self.gid)
        return d

    def env(self, inst: Installation) -> dict[str, str]:
        env = dict(inst.env)
        env.update(
            HOME=str(self.home),
            USER=self.name,
            LOGNAME=self.name,
            TM_DISPATCHER=str(inst.var / "dispatcher.json"),
        )
        return env

    def argv(self, *argv: str) -> list[str]:
        program = argv[0]
        if "/" not in program:
            # The console script next to this interpreter, not a pyenv shim.
            beside = Path(sys.executable).parent / program
            program = str(beside) if beside.exists() else program
        prefix = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        if self.needs_cap:
            prefix += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
        return [*prefix, "--", program, *argv[1:]]

    def run(
        self,
        inst: Installation,
        *argv: str,
        cwd: Path | None = None,
        timeout: float = 60,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        result = subprocess.run(
            self.argv(*argv),
            env=self.env(inst),
            cwd=cwd or self.work,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{self.name}: {argv} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def daemon_pids(self) -> list[int]:
        return daemon_pids(self.home)

    def stop_processes(self) -> None:
        """End the user's daemons (TERM, so executors kill their jobs), then anything left."""
        for pid in self.daemon_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        try:
            wait_until(
                lambda: not any(alive(p) for p in self.daemon_pids()),
                15,
                f"the daemons of {self.name} to exit",
            )
        except AssertionError:
            pass
        for pid in processes_of_uid(self.uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        wait_until(
            lambda: not processes_of_uid(self.uid), 10, f"every process of {self.name} to end"
        )

    def reset_home(self) -> None:
        """Forget the TMS and executors of an earlier installation."""
        import shutil

        shutil.rmtree(self.home / ".taskmanager", ignore_errors=True)

    def remove(self) -> None:
        self.stop_processes()
        subprocess.run(["userdel", "-r", self.name], capture_output=True, text=True)
        result = subprocess.run(["id", self.name], capture_output=True)
        if result.returncode == 0:
            subprocess.run(["userdel", "-f", "-r", self.name], capture_output=True, text=True)
