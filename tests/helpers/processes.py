"""Real TaskManager processes for integration tests: a dispatcher, the CLI, cleanup."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Installation:
    """One TaskManager installation in a temporary directory, with its own HOME."""

    def __init__(self, root: Path, database_url: str | None = None) -> None:
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
        return env

    def start_dispatcher(self, *extra: str, wait: bool = True) -> subprocess.Popen:
        argv = [*TWISTD, "-n", "--pidfile", "", "--logfile", str(self.dispatcher_log),
                "tmdispatcher", "--port", str(self.port), "--config-dir", str(self.etc),
                "--var-dir", str(self.var), *extra]
        if self.database_url:
            argv += ["--database", self.database_url]
        info = self.var / "dispatcher.json"
        if info.exists():
            info.unlink()
        self.dispatcher = subprocess.Popen(argv, env=self.env, cwd=self.root,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           start_new_session=True)
        if wait:
            wait_until(lambda: self._ready(), 30, "the dispatcher to publish dispatcher.json")
        return self.dispatcher

    def _ready(self) -> bool:
        if self.dispatcher is not None and self.dispatcher.poll() is not None:
            out = self.dispatcher.stdout.read().decode() if self.dispatcher.stdout else ""
            raise AssertionError(f"dispatcher exited with {self.dispatcher.returncode}: {out}"
                                 f"{self.dispatcher_log.read_text() if self.dispatcher_log.exists() else ''}")
        info = self.var / "dispatcher.json"
        return info.exists() and json.loads(info.read_text()).get("pid") == self.dispatcher.pid

    def stop_dispatcher(self) -> None:
        if self.dispatcher is not None and self.dispatcher.poll() is None:
            os.killpg(self.dispatcher.pid, signal.SIGTERM)
            try:
                self.dispatcher.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.dispatcher.pid, signal.SIGKILL)
                self.dispatcher.wait()

    def run(self, *argv: str, cwd: Path | None = None, timeout: float = 60,
            check: bool = False) -> subprocess.CompletedProcess:
        result = subprocess.run(list(argv), env=self.env, cwd=cwd or self.work,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} failed ({result.returncode}): {result.stderr}")
        return result

    def daemon_pids(self) -> list[int]:
        pids = []
        for pidfile in (self.home / ".taskmanager").glob("*.pid"):
            try:
                pids.append(int(pidfile.read_text().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def cleanup(self) -> None:
        for pid in self.daemon_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        self.stop_dispatcher()
        for pid in self.daemon_pids():
            try:
                wait_until(lambda pid=pid: not alive(pid), 10, f"pid {pid} to exit")
            except AssertionError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


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
