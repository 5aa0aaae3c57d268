"""Scenario 18 of reliability-notes §5: the database's disk fills up (SQLite on a small tmpfs).

Submissions are refused in one line; a running job's end is kept by its executor and written
once space is freed; the dispatcher keeps running (no crash loop); then service resumes.
Needs root (to mount the tmpfs): in CI it must run, so it fails there rather than skip.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import Installation, wait_until


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("this test needs root (to mount a tmpfs), and CI runs it as root")
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "dbdisk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


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
    out = tm.run("hConnect", f"lajob:{job_id}").stdout
    match = re.search(r"^state:[ \t]*(\S+)", out, re.M)
    return match.group(1) if match else ""


def test_a_full_database_disk_refuses_submissions_keeps_ends_and_recovers(
        tmp_path: Path, small_disk: Path) -> None:
    tm = Installation(tmp_path, database_url=f"sqlite:///{small_disk / 'tm.sqlite'}")
    try:
        tm.start_dispatcher("--executor-lease", "60")
        out = tm.run("hRunJob", "while [ ! -e go ]; do sleep 0.2; done; echo done > end.txt",
                     check=True).stdout
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
        wait_until(lambda: "database is unavailable" in log.read_text(), 60,
                   "the dispatcher to notice that it cannot write")
        assert state_of(tm, job) == "running"  # not recorded yet, and not lost either
        assert tm.dispatcher is not None and tm.dispatcher.poll() is None  # still up

        filler.unlink()  # the admin frees space
        wait_until(lambda: state_of(tm, job) == "finished", 60,
                   "the kept end to be written once there is space")
        after = tm.run("hRunJob", "true", check=True).stdout
        assert re.search(r"\[(\d+)\]", after), after
        assert tm.dispatcher.poll() is None
        text = log.read_text()
        # Logged, not flooded: the outage is said once, not once per retry.
        assert text.count("database is unavailable") <= 3, text[-3000:]
    finally:
        tm.cleanup()
