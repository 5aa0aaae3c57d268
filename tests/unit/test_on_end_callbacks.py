"""The TMS's on-end callbacks (tm/userserver/callbacks.py) without processes: what runs is
what the TMS recorded, each job once, and what a callback's environment says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.testing import MemoryReactorClock

from tm.protocol import jobends
from tm.userserver.callbacks import Callbacks, environment


class FakeLink:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict]] = []

    async def call(self, command: Any, **kw: Any) -> dict:
        self.calls.append((command, kw))
        return {"jobs": [], "next_after_id": None}


def ended(job_id: int, uuid: str, on_end: str = "touch x") -> dict:
    return {
        "id": job_id,
        "uuid": uuid,
        "group": "g",
        "state": "failed",
        "exit_code": 3,
        "signal": None,
        "run_time": 1.5,
        "reason": "exit code 3",
        "cwd": "/elsewhere",
        "on_end": on_end,
    }


def test_the_environment_says_how_the_job_ended() -> None:
    env = environment(ended(7, "u"), {"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert env["TM_JOB_ID"] == "7"
    assert env["TM_JOB_GROUP"] == "g"
    assert env["TM_JOB_STATE"] == "failed"
    assert env["TM_JOB_EXIT_CODE"] == "3"
    assert env["TM_JOB_SIGNAL"] == ""
    assert env["TM_JOB_RUN_TIME"] == "1.500"


@pytest_twisted.ensureDeferred
async def test_a_callback_the_tms_did_not_record_is_not_run(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    link = FakeLink()
    callbacks = Callbacks(reactor, link, tmp_path / "on-end", timeout=5)
    callbacks.record([{"uuid": "u1", "on_end": "touch x"}, {"uuid": "u2", "on_end": ""}], "/w")
    assert sorted(p.name for p in (tmp_path / "on-end").iterdir()) == ["u1"]
    # Unknown to this TMS, or changed by the dispatcher: not run, marked as done.
    callbacks.job_ended([ended(1, "u9"), ended(2, "u1", on_end="rm -rf ~")])
    assert [kw["job_ids"] for c, kw in link.calls if c is jobends.CallbackRan] == [[1], [2]]
    # The recorded one is still there, for the true end.
    assert (tmp_path / "on-end" / "u1").exists()


@pytest_twisted.ensureDeferred
async def test_a_job_told_twice_is_taken_once(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    link = FakeLink()
    callbacks = Callbacks(reactor, link, tmp_path / "on-end", timeout=5, max_running=0)
    callbacks.job_ended([ended(1, "u1"), ended(1, "u1")])
    callbacks.job_ended([ended(1, "u1")])
    assert len(callbacks.queue) == 1
