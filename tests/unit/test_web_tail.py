"""A running job's output on the dashboard: read by its executor from the files it opened for
that attempt (never a path the dispatcher names), shown to the job's owner only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from tests.unit.dispatcher_fakes import add_job, make_dispatcher
from tm.core.model import Host, JobState
from tm.executor.outputtail import OutputTailResponder, read_tail
from tm.protocol import commands
from tm.protocol.webcommands import MAX_TAIL_BYTES, OutputTail
from tm.web import views
from tm.web.tokens import Viewer


def result(d: Any) -> Any:
    found: list[Any] = []
    (d if isinstance(d, Deferred) else Deferred.fromCoroutine(d)).addBoth(found.append)
    assert found, "not finished at once"
    if hasattr(found[0], "raiseException"):
        found[0].raiseException()
    return found[0]


def test_read_tail_reads_the_end_and_does_not_follow_links(tmp_path: Path) -> None:
    out = tmp_path / "1.out"
    out.write_bytes(b"".join(b"line %d\n" % i for i in range(1000)))
    size, data = read_tail(str(out), 20)
    assert size == out.stat().st_size and data == out.read_bytes()[-20:]
    (tmp_path / "link").symlink_to(out)
    with pytest.raises(OSError):
        read_tail(str(tmp_path / "link"), 20)


class FakeRunner:
    def __init__(self, paths: dict[tuple[int, int], tuple[str, str]]) -> None:
        self.paths = paths

    def output_paths(self, job_id: int, attempt: int) -> tuple[str, str] | None:
        return self.paths.get((job_id, attempt))


class FakeExecutor:
    def __init__(self, runner: FakeRunner) -> None:
        self.runner = runner
        self.heard = 0

    def heard_from_dispatcher(self) -> None:
        self.heard += 1

    def _in_pool(self, f: Any, *args: Any) -> Deferred:
        return succeed(f(*args))


class Locator(OutputTailResponder):
    def __init__(self, executor: FakeExecutor) -> None:
        self.executor = executor


def test_the_executor_answers_for_the_files_of_its_own_attempts_only(tmp_path: Path) -> None:
    out = tmp_path / "7.out"
    out.write_bytes(b"x" * 100 + b"\nhello \xff world\n")
    locator = Locator(FakeExecutor(FakeRunner({(7, 2): (str(out), "")})))
    whole = result(locator.output_tail(7, 2, "out", 10**9))  # at most MAX_TAIL_BYTES
    assert whole["found"] and whole["path"] == str(out) and whole["size"] == 115
    assert whole["data"] == "x" * 100 + "\nhello \ufffd world\n"  # bad UTF-8 replaced
    # A tail that starts mid-file starts at a line.
    assert result(locator.output_tail(7, 2, "out", 20))["data"] == "hello \ufffd world\n"
    assert result(locator.output_tail(7, 2, "err", 100)) == {
        "found": True,
        "path": "",
        "size": 0,
        "data": "",
    }
    assert result(locator.output_tail(7, 1, "out", 100))["found"] is False  # another attempt
    with pytest.raises(commands.InvalidRequest, match="unknown stream"):
        result(locator.output_tail(7, 2, "/etc/passwd", 100))
    assert locator.executor.heard == 5
    assert OutputTail.commandName == b"OutputTail"


class FakeProto:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def call(self, command: Any, /, reply_timeout: float | None = None, **kw: Any) -> Deferred:
        assert command is OutputTail and reply_timeout == views.TAIL_TIMEOUT
        self.calls.append(kw)
        if isinstance(self.answer, Exception):
            return fail(self.answer)
        return succeed(dict(self.answer, data=f"{kw['stream']} text"))


class Session:
    def __init__(self, proto: FakeProto) -> None:
        self.proto = proto


@pytest.fixture
def running(tmp_path: Path) -> Any:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1", number_slots=2, max_slots=2)]
    )
    job = add_job(d, store, 3, user="alice")
    d._transition(job, JobState.PENDING, "placed", host="h1")
    d._transition(job, JobState.RUNNING, "started")
    clock.advance(0)
    return d, job


def test_the_owner_sees_the_tail_of_a_running_job_an_admin_only_where_it_is(running: Any) -> None:
    d, job = running
    proto = FakeProto({"found": True, "path": "/p", "size": 42})
    d.executor_table.sessions[("alice", "h1")] = Session(proto)
    mine = result(views.job_view(d, Viewer("alice", False), 3))
    assert mine["output"]["tail"] == {
        "out": "out text",
        "out_size": 42,
        "err": "err text",
        "err_size": 42,
    }
    assert proto.calls == [
        {"job_id": 3, "attempt": 1, "stream": s, "limit": MAX_TAIL_BYTES} for s in ("out", "err")
    ]
    admin = result(views.job_view(d, Viewer("root", True), 3))
    assert admin["output"]["tail"] is None and admin["output"]["host"] == "h1"
    assert len(proto.calls) == 2  # nothing asked for the admin


def test_no_executor_or_a_failing_one_leaves_the_place_only(running: Any) -> None:
    d, job = running
    alice = Viewer("alice", False)
    assert result(views.job_view(d, alice, 3))["output"]["tail"] is None
    d.executor_table.sessions[("alice", "h1")] = Session(FakeProto(TimeoutError("late")))
    tail = result(views.job_view(d, alice, 3))["output"]["tail"]
    assert tail["error"].startswith("the executor on h1 did not send the output")
