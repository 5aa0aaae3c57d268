"""Waiting for jobs and reading their output (issue 12, points 2 and 3), the pure parts and
the protocol in memory: the CLI's side (tm/cli/jobwatch.py) over a scripted ``call``, the
dispatcher's WaitJobs over AMP in memory on a task.Clock, and the executor's ReadOutput and
its tidying of an empty stderr file."""

from __future__ import annotations

import base64
import io
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.python.failure import Failure

from tests.unit.dispatcher_fakes import add_job
from tests.unit.test_dispatcher_responders import Peer, world  # noqa: F401  (a fixture)
from tm.cli import jobwatch
from tm.cli.errors import CLIError, blocking_call, run_now
from tm.dispatcher import watching
from tm.executor import outputs
from tm.executor.request import RunRequest, open_outputs
from tm.joboutput import output_path, run_time, shown_outputs
from tm.protocol import commands

# --- what to wait for, and the exit status ---------------------------------------------------


@pytest.mark.parametrize(
    "text, ranges, group, strict",
    [
        ("7", [[7, 7]], None, True),
        ("9:7:8", [[7, 9]], None, True),
        ("3-500", [[3, 500]], None, False),
        ("3-5:9:6-7:20", [[3, 7], [9, 9], [20, 20]], None, False),
        ("group:g:1", [], "g:1", False),
    ],
)
def test_a_selection_is_parsed_into_ranges(
    text: str, ranges: list, group: str | None, strict: bool
) -> None:
    assert jobwatch.parse_selection(text) == (ranges, group, strict)


@pytest.mark.parametrize("text", ["x", "5-3", "1-", "-1", "group:", "1::2"])
def test_a_bad_selection_is_one_line_with_status_2(text: str) -> None:
    with pytest.raises(CLIError) as e:
        jobwatch.parse_selection(text)
    assert e.value.status == 2 and "\n" not in str(e.value)


def test_the_exit_status_of_a_job_that_did_not_finish() -> None:
    assert jobwatch.ending_code({"state": "failed", "exit_code": 3, "signal": None}) == 3
    assert jobwatch.ending_code({"state": "killed", "exit_code": None, "signal": 9}) == 137
    assert jobwatch.ending_code({"state": "failed", "exit_code": 300, "signal": None}) == 1
    for state in ("killed", "lost", "cancelled", "timeout"):
        assert jobwatch.ending_code({"state": state, "exit_code": None, "signal": None}) == 1
        assert jobwatch.ending_code({"state": state, "exit_code": 0, "signal": None}) == 1


# --- the display ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_in_a_pipe_each_change_is_one_plain_line_with_rate_and_time_left() -> None:
    out, clock = io.StringIO(), FakeClock()
    progress = jobwatch.Progress(out, terminal=False, clock=clock)
    progress.show({"running": 2, "waiting": 2})
    clock.now += 10
    progress.show({"finished": 1, "running": 2, "waiting": 1})
    clock.now += 10
    progress.show({"finished": 2, "failed": 1, "running": 1})
    progress.close()
    assert out.getvalue().splitlines() == [
        "0 done, 2 running, 2 waiting, 0 failed of 4",
        "1 done, 2 running, 1 waiting, 0 failed of 4, 6.0 jobs/min, about 30 s left",
        "2 done, 1 running, 0 waiting, 1 failed of 4, 9.0 jobs/min, about 7 s left",
    ]


def test_on_a_terminal_the_bar_is_redrawn_in_place() -> None:
    out = io.StringIO()
    progress = jobwatch.Progress(out, terminal=True, clock=FakeClock())
    progress.show({"running": 1, "waiting": 1})
    progress.show({"finished": 2})
    progress.close()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.startswith("\r[" + "." * 24 + "] 0 done, 1 running, 1 waiting")
    assert "\r[" + "#" * 24 + "] 2 done" in text and "\x1b[K" in text


def scripted(answers: dict[str, list[Any]]) -> tuple[Any, list[tuple[str, dict]]]:
    """A blocking ``call`` answering from ``answers`` in order, and what it was asked."""
    asked: list[tuple[str, dict]] = []

    def call(name: str, **kw: Any) -> dict:
        asked.append((name, kw))
        answer = answers[name].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer(kw) if callable(answer) else answer

    return blocking_call(call), asked


def test_wait_sends_the_counts_it_knows_and_exits_with_the_first_failure() -> None:
    call, asked = scripted(
        {
            "WaitJobs": [
                {"counts": {"running": 2}, "failed": []},
                {"counts": {"running": 1, "failed": 1}, "failed": [{"id": 9, "state": "failed"}]},
                {
                    "counts": {"finished": 1, "failed": 1, "killed": 1},
                    "failed": [
                        {"id": 8, "state": "killed", "signal": 15, "exit_code": None},
                        {"id": 9, "state": "failed", "signal": None, "exit_code": 2},
                    ],
                },
            ]
        }
    )
    out, err = io.StringIO(), io.StringIO()
    code = run_now(jobwatch.wait_jobs(call, [[7, 9]], None, True, out, err, False))
    assert code == 128 + 15
    assert [kw["known"] for _, kw in asked] == [{}, {"running": 2}, {"running": 1, "failed": 1}]
    assert all(kw["strict"] and kw["ranges"] == [[7, 9]] for _, kw in asked)
    assert len(out.getvalue().splitlines()) == 3
    assert err.getvalue() == (
        "hConnect: 2 of 3 job(s) did not finish: job 8 killed (signal 15); also 9\n"
    )


def test_wait_for_jobs_that_all_finished_exits_0() -> None:
    call, _ = scripted({"WaitJobs": [{"counts": {"finished": 3}, "failed": []}]})
    out = io.StringIO()
    assert run_now(jobwatch.wait_jobs(call, [], "g", False, out, io.StringIO(), False)) == 0
    assert out.getvalue().splitlines()[-1] == "all 3 job(s) finished"


# --- output by job id ------------------------------------------------------------------------


def job_row(job_id: int, state: str, host: str | None, **kw: Any) -> dict:
    row = {"id": job_id, "state": state, "host": host, "cwd": "/w", "stdout": "", "stderr": ""}
    return row | kw


def test_where_the_output_goes() -> None:
    home = os.path.expanduser("~")
    job = job_row(5, "running", "h")
    assert output_path(job, "out") == f"{home}/.taskmanager/logs/5.out"
    assert output_path(job | {"stdout": "o.txt", "stderr": "~/e"}, "out") == "/w/o.txt"
    assert output_path(job | {"stderr": "~/e"}, "err") == f"{home}/e"
    assert shown_outputs(job | {"stdout": "x", "stderr": "x"})[1] == "/w/x (with stdout)"
    assert run_time({"started_at": 10.0, "ended_at": 3735.0}) == "1 h 2 min 5 s"
    assert run_time({"started_at": 10.0, "ended_at": None, "state": "running"}, 12.5) == "2.5 s"
    assert run_time({"started_at": None}) == "n.a."


def test_a_file_outside_the_home_of_a_job_on_another_host_is_read_through_its_executor(
    tmp_path: Path,
) -> None:
    data = b"x" * (jobwatch.READ_CHUNK + 10)
    job = job_row(5, "finished", "elsewhere", stdout=str(tmp_path / "o"))

    def read(kw: dict) -> dict:
        piece = data[kw["offset"] : kw["offset"] + kw["length"]]
        return {"data": base64.b64encode(piece).decode(), "size": len(data), "missing": False}

    call, asked = scripted({"GetJob": [{"job": [job]}], "ReadOutput": [read, read, read]})
    sink, said = io.BytesIO(), io.StringIO()
    assert run_now(jobwatch.cat_output(call, 5, "out", sink, said)) == 0
    assert sink.getvalue() == data
    assert [kw["offset"] for name, kw in asked if name == "ReadOutput"] == [
        0,
        len(data) - 10,
        len(data),
    ]
    assert "through your executor on elsewhere" in said.getvalue()


def test_cat_of_a_removed_empty_stderr_prints_nothing_and_of_a_waiting_job_says_so(
    tmp_path: Path,
) -> None:
    ended = job_row(5, "finished", None, stderr=str(tmp_path / "none.err"))
    call, _ = scripted({"GetJob": [{"job": [ended]}]})
    sink = io.BytesIO()
    assert run_now(jobwatch.cat_output(call, 5, "err", sink)) == 0 and sink.getvalue() == b""
    call, _ = scripted({"GetJob": [{"job": [job_row(5, "waiting", None)]}]})
    with pytest.raises(CLIError, match="job 5 has not started yet"):
        run_now(jobwatch.cat_output(call, 5, "out", sink))


def test_follow_reads_what_was_added_and_waits_with_a_growing_interval(tmp_path: Path) -> None:
    path = tmp_path / "o"
    path.write_bytes(b"one\n")
    row = job_row(5, "running", socket.gethostname(), stdout=str(path))  # read here

    def writes(text: bytes, state: str) -> Any:
        def step(kw: dict) -> dict:
            path.write_bytes(text)
            return {"state": state}

        return step

    steps: list[Any] = [
        {"state": "running"},  # nothing new: the interval grows
        writes(b"one\ntwo\n", "running"),
        writes(b"one\ntwo\nend\n", "finished"),  # written just before its end
    ]
    call, asked = scripted(
        {"GetJob": [{"job": [row]}, {"job": [row | {"state": "finished"}]}], "WaitJob": steps}
    )
    sink = io.BytesIO()
    assert run_now(jobwatch.follow_output(call, 5, "out", sink)) == 0
    assert sink.getvalue() == b"one\ntwo\nend\n"
    timeouts = [kw["timeout"] for name, kw in asked if name == "WaitJob"]
    assert timeouts == pytest.approx([0.2, 0.3, 0.2])  # longer while nothing is written


# --- the dispatcher: WaitJobs, pushed ------------------------------------------------------------


def pending_call(peer: Peer, command: type[amp.Command], **kw: Any) -> list[Any]:
    results: list[Any] = []
    peer.client.callRemote(command, **kw).addBoth(results.append)
    peer.pump.flush()
    return results


def settle(peer: Peer, clock: Clock, seconds: float = 0.0) -> None:
    clock.advance(0)  # the writer's commit
    peer.pump.flush()
    clock.advance(seconds)
    peer.pump.flush()


def test_wait_jobs_answers_once_a_change_of_its_jobs_is_committed(world: Any) -> None:  # noqa: F811
    d, clock, store = world
    d.cluster_active = False  # the jobs stay waiting until the test ends them
    first, second = (add_job(d, store, i, group="g") for i in (1, 2))
    other = add_job(d, store, 3)
    peer = Peer(d, clock)
    now = peer.call(commands.WaitJobs, ranges=[[1, 2]], known={}, timeout=60.0)
    assert now == {"counts": {"waiting": 2}, "failed": []}
    waiting = pending_call(
        peer, commands.WaitJobs, ranges=[[1, 2]], known=now["counts"], timeout=60.0
    )
    d.kill(other)  # not one of its jobs
    settle(peer, clock, watching.SETTLE)
    assert waiting == []
    d.kill(first)
    settle(peer, clock)
    assert waiting == []  # a burst of changes wakes it once, a moment later
    d.kill(second)
    settle(peer, clock, watching.SETTLE)
    [answer] = waiting
    assert answer["counts"] == {"killed": 2}
    assert [f["id"] for f in answer["failed"]] == [1, 2]
    assert d.watchers.watches == []
    # By group; and with nothing changing, the counts as they are after the timeout.
    waiting = pending_call(
        peer, commands.WaitJobs, ranges=[], group="g", known={"killed": 1}, timeout=5.0
    )
    assert waiting[0]["counts"] == {"killed": 2}


def test_a_change_written_before_the_wait_began_and_committed_after_its_read_wakes_it(
    world: Any,  # noqa: F811
) -> None:
    # The end is being written while no one waits (between two of the CLI's WaitJobs); the
    # next WaitJobs reads the store before that commit, sees its known counts, and waits:
    # the commit must still wake it (it hung until its timeout on MariaDB in CI).
    d, clock, store = world
    d.cluster_active = False
    job = add_job(d, store, 1)
    assert not d.watchers
    d.kill(job)  # written at the writer's next turn: not committed yet
    waiting = pending_call(
        peer := Peer(d, clock),
        commands.WaitJobs,
        ranges=[[1, 1]],
        known={"waiting": 1},
        timeout=60.0,
    )
    assert waiting == []  # it read "waiting", as the store still says
    settle(peer, clock, watching.SETTLE)
    [answer] = waiting
    assert answer["counts"] == {"killed": 1}


def test_wait_jobs_times_out_with_the_counts_and_refuses_what_is_unknown(world: Any) -> None:  # noqa: F811
    d, clock, store = world
    d.cluster_active = False
    add_job(d, store, 1)
    add_job(d, store, 2, user="root")
    peer = Peer(d, clock)
    waiting = pending_call(
        peer, commands.WaitJobs, ranges=[[1, 1]], known={"waiting": 1}, timeout=5.0
    )
    clock.advance(4.9)
    peer.pump.flush()
    assert waiting == []
    clock.advance(0.2)
    peer.pump.flush()
    assert waiting[0]["counts"] == {"waiting": 1} and d.watchers.watches == []
    refusals: list[tuple[dict[str, Any], type[Exception]]] = [
        ({"ranges": [[1, 2]], "strict": True}, commands.UnknownJob),  # job 2 is root's
        ({"ranges": [[5, 9]]}, commands.UnknownJob),
        ({"ranges": [], "group": "nope"}, commands.InvalidRequest),
        ({"ranges": []}, commands.InvalidRequest),
        ({"ranges": [[3, 1]]}, commands.InvalidRequest),
    ]
    for kw, error in refusals:
        [result] = pending_call(peer, commands.WaitJobs, known={}, timeout=1.0, **kw)
        assert isinstance(result, Failure) and result.check(error), (kw, result)
    assert d.watchers.watches == []


def test_a_watch_fires_only_for_its_user_ids_and_group() -> None:
    clock = Clock()
    watchers = watching.Watchers(clock)
    watch = watchers.add("alice", [(1, 5)], "g")

    class J:
        def __init__(self, job_id: int, user: str = "alice", group: str = "g") -> None:
            self.id, self.user = job_id, user
            self.spec = type("S", (), {"group": group})()

    for job in (J(6), J(2, user="bob"), J(3, group="h")):
        watchers.committed(None, job)  # type: ignore[arg-type]
    clock.advance(1)
    assert not watch.changed.called
    assert watchers.committed("result", J(3)) == "result"  # type: ignore[arg-type]
    watchers.committed(None, J(4))  # type: ignore[arg-type]
    clock.advance(watching.SETTLE)
    assert watch.changed.called and watchers.watches == [] and not clock.getDelayedCalls()


# --- the executor: ReadOutput and the empty stderr file -------------------------------------------


def test_read_range_reads_from_an_offset_and_says_when_there_is_no_file(tmp_path: Path) -> None:
    path = tmp_path / "o"
    path.write_bytes(b"0123456789")
    answer = outputs.read_range(str(path), 4, 3)
    assert base64.b64decode(answer["data"]) == b"456" and answer["size"] == 10
    assert outputs.read_range(str(tmp_path / "none"), 0, 3)["missing"] is True
    assert outputs.read_range(str(tmp_path), 0, 3)["missing"] is True  # not a regular file


class FakeExecutor:
    host = "h1"

    def __init__(self) -> None:
        self.runner = type("R", (), {"remembered_outputs": outputs.OutputPaths()})()

    def heard_from_dispatcher(self) -> None:
        pass

    async def _in_pool(self, f: Any, *args: Any) -> Any:
        return f(*args)


def test_the_executor_serves_only_the_output_of_jobs_it_started(tmp_path: Path) -> None:
    (tmp_path / "o").write_bytes(b"out")
    executor = FakeExecutor()
    executor.runner.remembered_outputs.remember(7, str(tmp_path / "o"), str(tmp_path / "e"))
    locator = outputs.OutputLocator()
    locator.executor = executor
    answer = run_now(locator.read_output(7, "out", 0, 100))
    assert base64.b64decode(answer["data"]) == b"out"
    assert run_now(locator.read_output(7, "err", 0, 100))["missing"] is True
    with pytest.raises(commands.UnknownJob, match="did not start job 8"):
        run_now(locator.read_output(8, "out", 0, 100))
    with pytest.raises(commands.UnknownJob):
        run_now(locator.read_output(7, "../../etc/passwd", 0, 100))


def test_only_a_stderr_file_made_for_the_job_is_removed_when_empty(tmp_path: Path) -> None:
    def request(stderr: str) -> RunRequest:
        return RunRequest(
            job_id=7, attempt=1, command="true", shell="/bin/sh", cwd=str(tmp_path),
            umask=0o022, env={}, stdout="o", stderr=stderr,
        )  # fmt: skip

    made = open_outputs(request("new.err"), str(tmp_path / "logs"))
    made.close()
    assert made.stderr_created is True
    (tmp_path / "old.err").write_text("")
    kept = open_outputs(request("old.err"), str(tmp_path / "logs"))
    kept.close()
    assert kept.stderr_created is False
    assert outputs.remove_if_empty(str(tmp_path / "new.err"))
    (tmp_path / "full.err").write_text("x")
    assert not outputs.remove_if_empty(str(tmp_path / "full.err"))
    assert (tmp_path / "full.err").exists() and not (tmp_path / "new.err").exists()
    paths = outputs.OutputPaths()
    for i in range(outputs.REMEMBERED + 1):
        paths.remember(i, "o", "e")
    assert paths.get(0) is None and paths.get(outputs.REMEMBERED) == ("o", "e")


def test_the_runner_removes_the_empty_stderr_file_before_it_hands_the_end_over(
    tmp_path: Path,
) -> None:
    from tests.unit.test_runner_start import make_runner, request

    runner, spawner, _ = make_runner(tmp_path)
    ended: list[Any] = []
    runner.start(request(tmp_path, job_id=7), ended.append)
    runner.start(request(tmp_path, job_id=8), ended.append)
    logs = tmp_path / "logs"
    assert (logs / "7.err").exists() and (logs / "8.err").exists()
    (logs / "8.err").write_text("said something\n")
    for spawn in spawner.spawns:
        spawn.exit(0)
    assert len(ended) == 2
    assert not (logs / "7.err").exists() and (logs / "8.err").read_text() == "said something\n"
    assert (logs / "7.out").exists()  # stdout stays, empty or not
    assert runner.remembered_outputs.get(7) == (str(logs / "7.out"), str(logs / "7.err"))
