"""The executor's file-system work runs in its own thread pool, with real processes.

An output file that blocks its opener (a FIFO with no reader, as a hung NFS server would) must
hold only its own job: the reactor keeps running, and another job starts, runs and is reported
meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, ensureDeferred

from tests.unit.executor_fakes import FakeLink, signed_order
from tm.auth import DISPATCHER_TLS_NAME, make_self_signed
from tm.executor.service import Executor
from tm.executor.verify import SpecChecker
from tm.jobsign import JobKey
from tm.link import DispatcherInfo

DEADLINE = 10
KEY = JobKey(b"k" * 32)


async def wait_for(condition: Any, what: str) -> None:
    deadline = reactor.seconds() + DEADLINE
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[tuple[Executor, FakeLink]]:
    # The link builds its TLS endpoint up front (ClientService): the pinned certificate is real.
    info = DispatcherInfo(
        host="127.0.0.1",
        port=1,
        certificate=make_self_signed(DISPATCHER_TLS_NAME)[1],
        challenge_dir="",
        path="",
    )
    executor = Executor(
        reactor, info, host="h1", idle_timeout=300.0, log_dir=str(tmp_path / "logs")
    )
    # The user's key, as the TMS signs with it and the executor checks with it.
    executor.checker = SpecChecker("alice", reactor, load=lambda: KEY)
    link = FakeLink()
    link.answer = lambda name, kw: {}
    executor.link = link  # type: ignore[assignment]
    executor.fs_pool.start()  # only the pool: no dispatcher to link to here
    try:
        yield executor, link
    finally:
        # A failed test may leave an open hanging on a FIFO: a reader releases it.
        readers = [
            os.open(p, os.O_RDONLY | os.O_NONBLOCK) for p in tmp_path.iterdir() if p.is_fifo()
        ]
        pytest_twisted.blockon(executor.runner.kill_all())
        pytest_twisted.blockon(executor.runner.stop())  # its shepherd zygote goes too
        for fd in readers:
            os.close(fd)
        executor._stop_pool(None)
        if executor._idle_call is not None and executor._idle_call.active():
            executor._idle_call.cancel()


def start(executor: Executor, tmp_path: Path, job_id: int, command: str, **kw: str) -> Deferred:
    fields = {
        "command": command,
        "shell": "/bin/sh",
        "cwd": str(tmp_path),
        "umask": 0o022,
        "env": {"PATH": os.environ.get("PATH", "/bin")},
        "stdout": "",
        "stderr": "",
        "logfile": "",
        "slots": 1,
    }
    fields.update(kw)
    order = signed_order(KEY, "alice", fields, reactor.seconds())
    return ensureDeferred(executor.start_job(job_id, 1, **order))


@pytest_twisted.ensureDeferred
async def test_a_blocking_output_file_does_not_stall_another_job(
    tmp_path: Path, executor: tuple[Executor, FakeLink]
) -> None:
    ex, link = executor
    fifo = tmp_path / "hung.out"
    os.mkfifo(fifo)
    hung = start(ex, tmp_path, 1, "echo never > hung-ran.txt", stdout=str(fifo))
    # The second job starts, runs and is reported while the first one's open still hangs.
    other = start(ex, tmp_path, 2, "echo done > other.txt", logfile="other.log")
    other.addTimeout(DEADLINE, reactor)
    answer = await other
    assert answer["pid"] > 0
    await wait_for(lambda: link.named("JobFinished"), "the second job's end to be reported")
    assert [r["job_id"] for r in link.named("JobFinished")] == [2]
    assert (tmp_path / "other.txt").read_text() == "done\n"
    assert "BEGIN stdout\n" in (tmp_path / "other.log").read_text()
    assert not hung.called and not (tmp_path / "hung-ran.txt").exists()
    assert (1, 1) in ex.runner.running()
    # A reader comes: the first job's open completes and it runs.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        hung.addTimeout(DEADLINE, reactor)
        assert (await hung)["pid"] > 0
        await wait_for(lambda: len(link.named("JobFinished")) == 2, "the first job's end")
    finally:
        os.close(reader)
    assert (tmp_path / "hung-ran.txt").read_text() == "never\n"
