"""Dependencies and holds in the dispatcher (tm/dispatcher/dependencies.py) on a task.Clock,
with the store in memory: submission checks, release and cancel cascades when a job ends,
holds out of the pass."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed

from tests.unit.dispatcher_fakes import MemoryStore, make_dispatcher
from tm.core.model import JobEnvironment, JobSpec, JobState
from tm.protocol import commands

ENV = JobEnvironment(cwd="/tmp", sealed="x")


class Store(MemoryStore):
    def set_control_fields(self, job_ids: list[int], values: dict[str, Any]) -> Deferred:
        for i in job_ids:
            job = self.jobs[i]
            job.spec = dataclasses.replace(job.spec, **values)
        return succeed(len(job_ids))

    def first_bad_in_group(self, user: str, group: str, below: int) -> Deferred:
        bad = sorted(
            (j.id, j.state.value)
            for j in self.jobs.values()
            if j.user == user and j.spec.group == group and j.id < below
            and j.state.terminal and j.state is not JobState.FINISHED
        )  # fmt: skip
        return succeed(bad[0] if bad else None)

    def group_size(self, user: str, group: str) -> Deferred:
        return succeed(sum(j.user == user and j.spec.group == group for j in self.jobs.values()))


def spec(n: int, **kw: Any) -> JobSpec:
    return JobSpec(uuid=f"u-{n}-{len(kw)}", command="true", **kw)


async def submit(d: Any, n: int, user: str = "alice", **kw: Any) -> int:
    ids, _ = await d.submit(user, ENV, [spec(n, **kw)])
    return int(ids[0])


@pytest_twisted.ensureDeferred
async def test_endings_release_and_cancel_dependants_through_the_index(tmp_path: Path) -> None:
    d, clock, store = make_dispatcher(tmp_path, store=Store())
    d.cluster_active = False
    a = await submit(d, 1)
    b = await submit(d, 2)
    after_a = await submit(d, 3, after=str(a))
    chain = [await submit(d, 4, after=f"{a},{b}")]
    for n in range(5, 205):  # a long chain: cancelled at once, without recursion
        chain.append(await submit(d, n, after=str(chain[-1])))
    any_b = await submit(d, 300, after_any=str(b))
    assert d.wait_reason(d.jobs[after_a]) == f"waits for job(s) {a} to finish"
    assert d.wait_reason(d.jobs[any_b]) == f"waits for job(s) {b} to end"
    assert [v.id for v in d.jobs.waiting_views()] == [a, b]

    d.kill(d.jobs[b])
    clock.advance(0)
    assert store.jobs[chain[0]].state is JobState.CANCELLED
    assert store.jobs[chain[0]].reason == f"dependency job {b} ended killed"
    assert all(store.jobs[i].state is JobState.CANCELLED for i in chain)
    assert store.jobs[chain[-1]].reason == f"dependency job {chain[-2]} was cancelled"
    assert [v.id for v in d.jobs.waiting_views()] == [a, any_b]
    assert after_a in d.jobs and d.deps.waits_for(after_a) == [a]
    # The dependency's end is written before its dependants' cancellation.
    order = [job_id for job_id, *_ in store.history]
    assert order.index(b) < order.index(chain[0])


@pytest_twisted.ensureDeferred
async def test_a_submission_s_dependencies_are_checked_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    d, clock, store = make_dispatcher(tmp_path, store=Store())
    d.cluster_active = False
    mine = await submit(d, 1, group="g")
    theirs = await submit(d, 2, user="root")
    stored = len(store.jobs)
    for kw, expected in (
        ({"after": str(mine + 5)}, "unknown job"),
        ({"after": str(theirs)}, "is not yours"),
        ({"after": "x"}, "not a job id"),
        ({"group": "g", "after_group": "g"}, "cycle"),
        ({"after_group": "none"}, "no jobs in group"),
        ({"hold": "admin:root"}, "hold must be"),
    ):
        with pytest.raises(commands.InvalidRequest, match=expected):
            await submit(d, 10, **kw)
    assert len(store.jobs) == stored
    # The admin may wait for another user's job.
    assert await submit(d, 11, user="root", after=str(mine))
    # A held job stays out of the queues; released, it is back in its place.
    held = await submit(d, 12, hold="user")
    assert d.jobs[held].spec.hold == "user:alice" and d.jobs.view(held) is None
    assert await d.set_hold([d.jobs[held]], "") == [held]
    assert store.jobs[held].spec.hold == "" and d.jobs.view(held) is not None
