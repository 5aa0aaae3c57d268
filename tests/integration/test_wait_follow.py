"""Issue 12, points 2 and 3, through the real CLI: ``hConnect wait:…`` (exit status, a line per
change in a pipe, a progress bar on a terminal, Ctrl-C), ``hasgroupfinished`` of an unknown
group, ``cat:ID[:err]``, ``follow:ID``, output read through the executor of another host, and
no empty stderr file left behind."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import job_file, lajob, submit, tms, wait_state
from tests.helpers.processes import Installation

#: A job that waits until the test creates the file NAME in the work directory.
GATE = "while [ ! -e {name} ]; do sleep 0.05; done"
PROGRESS_LINE = re.compile(r"^\d+ done, \d+ running, \d+ waiting, \d+ failed of \d+(, .*)?$", re.M)


def gated(name: str, then: str = "true") -> str:
    return GATE.format(name=name) + "; " + then


def fast_path(inst: Installation) -> None:
    """Start the user's TMS, so that the commands below take the Unix socket (no Twisted)."""
    inst.run("hRunJob", "-q", "true", check=True, timeout=120)
    out = inst.run("hConnect", "-v", "ping", check=True)
    assert "using the TMS on" in out.stderr


def popen(inst: Installation, *argv: str, **kw: object) -> subprocess.Popen:
    return subprocess.Popen(
        list(argv),
        env=inst.env,
        cwd=inst.work,
        **kw,  # type: ignore[call-overload]
    )


class Lines:
    """Reads a child's output as it comes, with deadlines (never blocks past them)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""

    def until(self, pattern: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.text!r} after {timeout} s")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # a pty's master after its last writer closed
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"output ended without {pattern!r}: {self.text!r}")
                self.text += chunk.decode(errors="replace")
        return self.text

    def rest(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                return self.text
            self.text += chunk.decode(errors="replace")
        raise AssertionError(f"output did not end: {self.text!r}")


@pytest.fixture(params=["sqlite", "mysql"])
def db_installation(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Installation]:
    """A running dispatcher on SQLite, or on MariaDB with $TM_TEST_MYSQL_URL."""
    url = request.getfixturevalue("mysql_url") if request.param == "mysql" else None
    inst = Installation(tmp_path, database_url=url)
    try:
        inst.start_dispatcher()
        yield inst
    finally:
        inst.cleanup()


# --- wait -----------------------------------------------------------------------------------


def test_wait_exits_with_the_first_failing_job_s_code(db_installation: Installation) -> None:
    inst = db_installation
    fast_path(inst)
    ok = submit(inst, gated("go", "exit 0"))
    bad = submit(inst, gated("go", "exit 3"))
    sig = submit(inst, gated("go", "kill -TERM $$"))
    waiter = popen(inst, "hConnect", f"wait:{ok}", stdout=subprocess.PIPE, text=True)
    wait_state(inst, ok, "running")
    assert waiter.poll() is None  # it waits for the end
    (inst.work / "go").touch()
    assert waiter.communicate(timeout=60)[0].splitlines()[-1] == "the job finished"
    assert waiter.returncode == 0
    one = inst.run("hConnect", f"wait:{bad}")
    assert one.returncode == 3
    assert f"job {bad} failed (exit code 3)" in one.stderr and "\n" not in one.stderr.strip()
    assert inst.run("hConnect", f"wait:{sig}").returncode == 128 + signal.SIGTERM
    every = inst.run("hConnect", f"wait:{ok}:{bad}:{sig}")
    assert every.returncode == 3
    assert f"2 of 3 job(s) did not finish: job {bad} failed" in every.stderr
    assert f"also {sig}" in every.stderr
    assert inst.run("hConnect", f"wait:{ok}-{sig}").returncode == 3
    unknown = inst.run("hConnect", f"wait:{ok}:999999")
    assert unknown.returncode != 0 and unknown.stderr.strip() == "hConnect: unknown job 999999"
    bad_input = inst.run("hConnect", "wait:5-x")
    assert bad_input.returncode == 2 and "Traceback" not in bad_input.stderr
    # --json: one document at the end (no progress lines), the same exit status.
    doc = inst.run("hConnect", "--json", f"wait:{ok}:{bad}:{sig}")
    assert doc.returncode == 3 and doc.stderr == ""
    answer = json.loads(doc.stdout)
    assert answer["command"] == "wait" and answer["exit_status"] == 3
    assert answer["total"] == 3 and answer["failed_count"] == 2
    assert [(j["id"], j["state"], j["exit_code"]) for j in answer["failed"]][0] == (
        bad,
        "failed",
        3,
    )
    assert answer["counts"] == {"finished": 1, "failed": 2}
    cat = inst.run("hConnect", "--json", f"cat:{ok}")
    assert cat.returncode == 2
    assert (
        cat.stderr.strip()
        == "hConnect: --json does not apply to cat: it prints the job's own output"
    )


def test_wait_for_a_killed_job_exits_with_128_plus_its_signal(installation: Installation) -> None:
    fast_path(installation)
    job = submit(installation, gated("never"))
    wait_state(installation, job, "running")
    waiter = popen(
        installation, "hConnect", f"wait:{job}", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    tms(installation, f"killjob:{job}")
    _, err = waiter.communicate(timeout=60)
    info = lajob(installation, job)
    assert info.state == "killed"
    assert waiter.returncode == 128 + int(info.fields["signal"]), err
    assert f"job {job} killed" in err.decode()


def test_wait_for_a_group_prints_a_line_per_change_in_a_pipe(db_installation: Installation) -> None:
    inst = db_installation
    fast_path(inst)
    ids = [submit(inst, "-g", "sweep", gated(f"go{i}")) for i in range(3)]
    wait_state(inst, ids[0], "running")
    waiter = popen(inst, "hConnect", "wait:group:sweep", stdout=subprocess.PIPE)
    assert waiter.stdout is not None
    lines = Lines(waiter.stdout.fileno())
    lines.until(r"0 done, [12] running, \d waiting, 0 failed of 3\n")
    for i in range(3):  # one at a time: each end is a change of its own
        wait_state(inst, ids[i], "running")
        (inst.work / f"go{i}").touch()
        lines.until(rf"{i + 1} done, \d running, \d waiting, 0 failed of 3.*\n")
    out = lines.rest()
    assert waiter.wait(30) == 0
    assert out.splitlines()[-1] == "all 3 job(s) finished"
    assert all(PROGRESS_LINE.match(line) for line in out.splitlines()[:-1]), out
    assert "\r" not in out and "\x1b" not in out
    assert tms(inst, "hasgroupfinished:sweep") == "yes"


def test_a_terminal_gets_a_progress_bar_on_one_line(installation: Installation) -> None:
    fast_path(installation)
    jobs = installation.work / "jobs.txt"
    jobs.write_text(job_file([gated(f"go{i}") for i in range(3)]))
    master, slave = os.openpty()
    try:
        waiter = popen(
            installation,
            "hRunJob",
            "-f",
            str(jobs),
            "--wait",
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        slave = -1
        lines = Lines(master)
        lines.until(r"have been submitted")
        lines.until(r"\r\[\.+\] 0 done")
        for i in range(3):
            (installation.work / f"go{i}").touch()
        text = lines.rest()
        assert waiter.wait(30) == 0
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert "\r[" + "#" * 24 + "] 3 done, 0 running, 0 waiting, 0 failed of 3" in text
    assert "\x1b[K" in text
    assert text.rstrip().endswith("all 3 job(s) finished")
    # Redrawn in place: the bar takes no line of its own but the last.
    bar_lines = [line for line in text.split("\n") if "] " in line and " done, " in line]
    assert len(bar_lines) == 1


def test_ctrl_c_stops_waiting_and_the_jobs_keep_running(installation: Installation) -> None:
    fast_path(installation)
    job = submit(installation, gated("go"))
    wait_state(installation, job, "running")
    waiter = popen(
        installation, "hConnect", f"wait:{job}", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert waiter.stdout is not None
    Lines(waiter.stdout.fileno()).until(r"0 done, 1 running")
    waiter.send_signal(signal.SIGINT)
    _, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 130
    assert err.decode().strip() == (
        "hConnect: stopped waiting; the jobs keep running (see hConnect lsrjobs)"
    )
    assert lajob(installation, job).state == "running"
    (installation.work / "go").touch()
    wait_state(installation, job, "finished")


def test_hasgroupfinished_of_an_unknown_group_exits_non_zero(installation: Installation) -> None:
    result = installation.run("hConnect", "hasgroupfinished:nosuchgroup")
    assert result.returncode != 0
    assert result.stderr.strip() == ("hConnect: group 'nosuchgroup' is unknown: see lagroups")
    waited = installation.run("hConnect", "wait:group:nosuchgroup")
    assert waited.returncode != 0 and len(waited.stderr.strip().splitlines()) == 1


# --- output by job id -------------------------------------------------------------------------


def test_cat_prints_stdout_and_stderr_and_lajob_says_where(installation: Installation) -> None:
    fast_path(installation)
    both = submit(installation, "echo to-out; echo to-err >&2")
    quiet = submit(installation, "echo only-out")
    for job in (both, quiet):
        assert installation.run("hConnect", f"wait:{job}").returncode == 0
    assert tms(installation, f"cat:{both}") == "to-out"
    assert tms(installation, f"cat:{both}:err") == "to-err"
    logs = installation.home / ".taskmanager" / "logs"
    assert (logs / f"{both}.err").read_text() == "to-err\n"
    # Nothing written to stderr: no empty file is left behind, and cat prints nothing.
    assert (logs / f"{quiet}.out").read_text() == "only-out\n"
    assert not (logs / f"{quiet}.err").exists()
    assert tms(installation, f"cat:{quiet}:err") == ""
    info = lajob(installation, quiet)
    assert info.fields["stdout"] == str(logs / f"{quiet}.out")
    assert info.fields["stderr"].startswith(str(logs / f"{quiet}.err"))
    assert info.fields["started"] != "n.a." and info.fields["ended"] != "n.a."
    assert re.fullmatch(r"\d+\.\d s", info.fields["run time"])
    unknown = installation.run("hConnect", "cat:999999")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "hConnect: unknown job 999999"


def test_an_empty_stderr_file_that_was_there_before_is_kept(installation: Installation) -> None:
    fast_path(installation)
    (installation.work / "mine.err").write_text("")
    job = submit(installation, "-O", "mine.err", "true")
    assert installation.run("hConnect", f"wait:{job}").returncode == 0
    assert (installation.work / "mine.err").exists()


def test_follow_shows_each_line_as_it_is_written_and_ends_with_the_job(
    installation: Installation,
) -> None:
    fast_path(installation)
    job = submit(
        installation,
        "echo one; " + gated("go1", "echo two; ") + gated("go2", "echo three"),
    )
    follower = popen(installation, "hConnect", f"follow:{job}", stdout=subprocess.PIPE)
    assert follower.stdout is not None
    lines = Lines(follower.stdout.fileno())
    lines.until(r"^one\n")
    assert follower.poll() is None and lajob(installation, job).state == "running"
    (installation.work / "go1").touch()
    lines.until(r"^one\ntwo\n")
    assert follower.poll() is None and lajob(installation, job).state == "running"
    (installation.work / "go2").touch()
    assert lines.rest() == "one\ntwo\nthree\n"
    assert follower.wait(30) == 0
    assert lajob(installation, job).state == "finished"


def test_output_outside_the_home_of_a_job_on_another_host_is_read_through_its_executor(
    two_host_installation: Installation, tmp_path: Path
) -> None:
    inst = two_host_installation
    fast_path(inst)
    outside = tmp_path / "host-local"
    outside.mkdir()
    job = submit(inst, "-o", str(outside / "out.txt"), "echo first; " + gated("go", "echo last"))
    follower = popen(
        inst, "hConnect", "-v", f"follow:{job}", stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert follower.stdout is not None
    lines = Lines(follower.stdout.fileno())
    lines.until(r"^first\n")
    (inst.work / "go").touch()
    assert lines.rest() == "first\nlast\n"
    assert follower.wait(30) == 0
    assert follower.stderr is not None
    host = lajob(inst, job).host
    assert f"through your executor on {host}" in follower.stderr.read().decode()
    cat = inst.run("hConnect", "-v", f"cat:{job}", check=True)
    assert cat.stdout == "first\nlast\n"
    assert f"reading {outside / 'out.txt'} through your executor on {host}" in cat.stderr


def test_a_job_file_wait_in_a_pipe_prints_lines_and_the_failing_code(
    installation: Installation,
) -> None:
    (installation.work / "jobs.txt").write_text(job_file(["true", "exit 4", "true"]))
    # The first command starts the TMS and goes over TLS; the second takes the socket.
    for way in ("tls", "socket"):
        result = installation.run("hRunJob", "-v", "-f", "jobs.txt", "--wait")
        assert result.returncode == 4, result.stderr
        assert ("using the TMS on" in result.stderr) == (way == "socket")
        lines = result.stdout.splitlines()
        first = int(re.findall(r"\[(\d+)", lines[0])[0])
        assert lines[0].startswith("3 job(s) [") and PROGRESS_LINE.match(lines[-1])
        assert "1 failed of 3" in lines[-1]
        assert f"job {first + 1} failed (exit code 4)" in result.stderr


def test_wait_cat_and_follow_over_tls_from_a_host_without_the_tms(
    installation: Installation,
) -> None:
    """A client on another host sharing the home reaches the TMS over TLS (tm/cli/common.py):
    the same commands, the same answers."""
    fast_path(installation)
    job = submit(installation, gated("go", "echo done; exit 5"))
    wait_state(installation, job, "running")
    path = installation.home / ".taskmanager" / f"tms.{socket.gethostname()}.sock"
    aside = path.with_name("aside.sock")
    path.rename(aside)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # nobody listens: the client goes over TLS
    dead.close()
    try:
        waiter = popen(
            installation,
            "hConnect",
            "-v",
            f"wait:{job}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        follower = popen(installation, "hConnect", f"follow:{job}", stdout=subprocess.PIPE)
        assert waiter.stdout is not None
        Lines(waiter.stdout.fileno()).until(r"0 done, 1 running")
        stopped = popen(
            installation, "hConnect", f"wait:{job}", stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert stopped.stdout is not None
        Lines(stopped.stdout.fileno()).until(r"0 done, 1 running")
        stopped.send_signal(signal.SIGINT)
        assert stopped.communicate(timeout=30)[1].decode().strip() == (
            "hConnect: stopped waiting; the jobs keep running (see hConnect lsrjobs)"
        )
        assert stopped.returncode == 130 and lajob(installation, job).state == "running"
        (installation.work / "go").touch()
        _, err = waiter.communicate(timeout=60)
        assert waiter.returncode == 5 and "trying TLS" in err
        assert f"job {job} failed (exit code 5)" in err
        assert follower.communicate(timeout=60)[0] == b"done\n" and follower.returncode == 0
        cat = installation.run("hConnect", "-v", f"cat:{job}", check=True)
        assert cat.stdout == "done\n" and "trying TLS" in cat.stderr
        unknown = installation.run("hConnect", "hasgroupfinished:nosuchgroup")
        assert unknown.returncode == 1 and "is unknown" in unknown.stderr
    finally:
        path.unlink()
        aside.rename(path)
