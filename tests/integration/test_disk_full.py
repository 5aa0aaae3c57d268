"""Scenario 18 of reliability-notes §5: the database's disk fills up (SQLite on a small tmpfs).

Submissions are refused in one line; a running job's end is kept by its executor and written
once space is freed; the dispatcher keeps running (no crash loop); then service resumes.
Needs root (to mount the tmpfs): in CI it must run, so it fails there rather than skip.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import parse_job
from tests.helpers.processes import Installation, free_port, wait_until


def _need_root() -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test needs root (to mount a tmpfs), and CI runs it as root")
        pytest.skip("needs root to mount a tmpfs")


def _tmpfs(mount: Path, size: str) -> None:
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount)], check=True
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    _need_root()
    mount = tmp_path / "dbdisk"
    _tmpfs(mount, "3m")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


#: A small InnoDB: the defaults would need over 100 MB of tmpfs.
INNODB_SMALL = [
    "--innodb-log-file-size=4M",
    "--innodb-data-file-path=ibdata1:4M:autoextend",
    "--innodb-buffer-pool-size=16M",
    "--innodb-undo-tablespaces=0",
]


class PrivateMariaDB:
    """A mariadbd of its own, its datadir on a tmpfs, on a free port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"mysql://root@127.0.0.1:{self.port}/tm"
        self.server: subprocess.Popen | None = None

    def start(self) -> None:
        import pymysql

        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.server = subprocess.Popen(
            [
                mariadbd,
                "--no-defaults",
                f"--datadir={self.data}",
                "--user=root",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.root / 'sock'}",
                f"--pid-file={self.root / 'pid'}",
                f"--log-error={self.root / 'error.log'}",
                "--skip-grant-tables",
                *INNODB_SMALL,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

        def up() -> bool:
            assert self.alive(), "mariadbd exited"
            try:
                pymysql.connect(host="127.0.0.1", port=self.port, user="root").close()
            except pymysql.err.MySQLError:
                return False
            return True

        wait_until(up, 120, "the private mariadbd to accept connections")

    def alive(self) -> bool:
        return self.server is not None and self.server.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.server is not None
            os.killpg(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, signal.SIGKILL)
                self.server.wait()


@pytest.fixture
def mariadb_on_small_disk(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A private mariadbd whose datadir is on its own tmpfs, with an empty database tm."""
    _need_root()
    for tool in ("mariadb-install-db", "mariadbd"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            if os.environ.get("CI"):
                pytest.fail(f"{tool} is not installed")
            pytest.skip(f"{tool} is not installed")
    root = Path(tempfile.mkdtemp(prefix="tm-mdb-", dir="/tmp"))  # a short socket path
    db = PrivateMariaDB(root)
    _tmpfs(db.data, "110m")
    try:
        subprocess.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={db.data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                *INNODB_SMALL,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        db.start()
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=db.port, user="root", autocommit=True)
        conn.cursor().execute("CREATE DATABASE tm")
        conn.close()
        yield db
    finally:
        db.stop()
        subprocess.run(["umount", "-l", str(db.data)], check=False)
        if (root / "error.log").exists():  # kept for a failing test's report
            shutil.copy(root / "error.log", tmp_path / "mariadb-error.log")
        shutil.rmtree(root, ignore_errors=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` with one file until the file system says it is full."""
    filler = disk / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
        # The last bytes too: what is left is less than a block.
        for size in (4096, 512, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError:
                    break
    return filler


def state_of(tm: Installation, job_id: int) -> str:
    """The job's state, or "" while lajob cannot answer."""
    result = tm.run("hConnect", f"lajob:{job_id}")
    return parse_job(result.stdout).state if result.returncode == 0 else ""


def test_a_full_database_disk_refuses_submissions_keeps_ends_and_recovers(
    tmp_path: Path, small_disk: Path
) -> None:
    tm = Installation(tmp_path, database_url=f"sqlite:///{small_disk / 'tm.sqlite'}")
    try:
        tm.start_dispatcher("--executor-lease", "60")
        out = tm.run(
            "hRunJob", "while [ ! -e go ]; do sleep 0.2; done; echo done > end.txt", check=True
        ).stdout
        job = int(re.search(r"\[(\d+)\]", out).group(1))
        wait_until(lambda: state_of(tm, job) == "running", 60, "the job to run")

        filler = fill(small_disk)
        refused = tm.run("hRunJob", "true", timeout=120)
        assert refused.returncode != 0, refused.stdout
        message = refused.stderr.strip()
        assert len(message.splitlines()) == 1, message
        assert "full" in message and "Traceback" not in message, message

        # The job ends while the disk is full: its end cannot be written, the executor keeps it.
        (tm.work / "go").write_text("")
        wait_until(lambda: (tm.work / "end.txt").exists(), 30, "the job to end")
        log = tm.dispatcher_log
        wait_until(
            lambda: "database is unavailable" in log.read_text(),
            60,
            "the dispatcher to notice that it cannot write",
        )
        assert state_of(tm, job) == "running"  # not recorded yet, and not lost either
        assert tm.dispatcher is not None and tm.dispatcher.poll() is None  # still up

        filler.unlink()  # the admin frees space
        wait_until(
            lambda: state_of(tm, job) == "finished",
            60,
            "the kept end to be written once there is space",
        )
        after = tm.run("hRunJob", "true", check=True).stdout
        assert re.search(r"\[(\d+)\]", after), after
        assert tm.dispatcher.poll() is None
        text = log.read_text()
        # Logged, not flooded: the outage is said once, not once per retry.
        assert text.count("database is unavailable") <= 3, text[-3000:]
    finally:
        tm.cleanup()


def test_a_full_mariadb_disk_refuses_large_submissions_and_recovers(
    tmp_path: Path, mariadb_on_small_disk: PrivateMariaDB
) -> None:
    """On InnoDB a write fails only when a file must grow (small updates fit the pages it
    has), and MariaDB 10.11 may even abort ("[FATAL] InnoDB: Error (Out of disk space) in
    rollback") when a large insert fails on a full disk. Either way: a large submission is
    refused in one line, the dispatcher stays up, a job's end is written once the database
    is back (space freed, and the server restarted if it died), and service resumes."""
    db = mariadb_on_small_disk
    tm = Installation(tmp_path, database_url=db.url)
    try:
        tm.start_dispatcher("--executor-lease", "120")
        out = tm.run(
            "hRunJob", "while [ ! -e go ]; do sleep 0.2; done; echo done > end.txt", check=True
        ).stdout
        job = int(re.search(r"\[(\d+)\]", out).group(1))
        wait_until(lambda: state_of(tm, job) == "running", 60, "the job to run")
        filler = fill(db.data)
        jobs = tm.work / "jobs.txt"
        jobs.write_text("".join(f"command::echo {'x' * 8000} {i}\n" for i in range(2000)))
        refused = tm.run("hRunJob", "-f", str(jobs), timeout=300)
        assert refused.returncode != 0, refused.stdout
        message = refused.stderr.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in message, message
        assert "database" in message, message
        (tm.work / "go").write_text("")
        wait_until(lambda: (tm.work / "end.txt").exists(), 30, "the job to end")
        assert tm.dispatcher is not None and tm.dispatcher.poll() is None
        filler.unlink()
        if not db.alive():
            db.start()  # the admin restarts the database after freeing space
        wait_until(lambda: state_of(tm, job) == "finished", 90, "the end to be written")
        after = tm.run("hRunJob", "true", check=True).stdout
        assert re.search(r"\[(\d+)\]", after), after
        assert tm.dispatcher.poll() is None
    finally:
        tm.cleanup()
