"""Group commit: the state changes of one reactor turn go to the database in one batch."""

from __future__ import annotations

from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock

from tm.core.model import JobState, Transition
from tm.dispatcher.writer import TransitionWriter


class FakeStore:
    def __init__(self) -> None:
        self.batches: list[list[Transition]] = []
        self.pending: list[Deferred] = []

    def apply(self, batch: list[Transition], now: float) -> Deferred:
        self.batches.append(batch)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


def t(job_id: int) -> Transition:
    return Transition(job_id=job_id, attempt=1, old=JobState.WAITING, new=JobState.PENDING)


def test_one_turn_is_one_batch_and_the_next_waits_for_the_first() -> None:
    clock, store = Clock(), FakeStore()
    writer = TransitionWriter(cast(IReactorTime, clock), store.apply)
    results: list[bool] = []
    for i in range(100):
        writer.write(t(i)).addCallback(results.append)
    assert store.batches == []  # nothing before the turn ends
    clock.advance(0)
    assert len(store.batches) == 1 and len(store.batches[0]) == 100
    # Changes made while the first batch is in flight form the next one, in order.
    writer.write(t(100))
    writer.write(t(101))
    clock.advance(0)
    assert len(store.batches) == 1
    store.pending[0].callback([True] * 100)
    assert results == [True] * 100
    clock.advance(0)
    assert [x.job_id for x in store.batches[1]] == [100, 101]


def test_a_failed_batch_is_written_one_by_one_and_only_the_bad_change_fails() -> None:
    from tm.dispatcher.writer import SOLO_TRIES

    clock, store = Clock(), FakeStore()
    writer = TransitionWriter(cast(IReactorTime, clock), store.apply)
    outcome: dict[int, object] = {}
    for i in (1, 2, 3):
        writer.write(t(i)).addBoth(lambda r, i: outcome.__setitem__(i, r), i)
    clock.advance(0)
    store.pending[0].errback(RuntimeError("constraint failed"))
    assert outcome == {}  # nothing dropped, nothing acknowledged
    clock.advance(0)
    assert [x.job_id for x in store.batches[1]] == [1]  # one change per transaction now
    store.pending[1].callback([True])
    clock.advance(0)
    assert [x.job_id for x in store.batches[2]] == [2]
    # Change 2 is the bad one: tried SOLO_TRIES times with a growing pause, then it fails.
    for n in range(SOLO_TRIES):
        store.pending[-1].errback(RuntimeError("constraint failed"))
        if n < SOLO_TRIES - 1:
            assert 2 not in outcome
            clock.advance(5)
            assert [x.job_id for x in store.batches[-1]] == [2]
    assert outcome[1] is True
    failure = outcome[2]
    assert getattr(failure, "check", lambda *_: False)(RuntimeError)
    clock.advance(0)
    assert [x.job_id for x in store.batches[-1]] == [3]
    store.pending[-1].callback([True])
    assert outcome[3] is True and writer.failed_changes == 1
    writer.write(t(4))
    clock.advance(0)
    assert [x.job_id for x in store.batches[-1]] == [4]  # batches again once through
    writer.write(t(5))
    writer.write(t(6))
    store.pending[-1].callback([True])
    clock.advance(0)
    assert [x.job_id for x in store.batches[-1]] == [5, 6]


def test_while_the_database_is_away_changes_are_kept_and_written_in_order() -> None:
    from tm.db.errors import StoreUnavailable

    clock, store = Clock(), FakeStore()
    writer = TransitionWriter(cast(IReactorTime, clock), store.apply)
    results: list[tuple[int, bool]] = []
    for i in (1, 2):
        writer.write(t(i)).addCallback(lambda ok, i: results.append((i, ok)), i)
    clock.advance(0)
    store.pending[0].errback(StoreUnavailable("gone"))
    assert writer.waiting_for_database and results == []
    writer.write(t(3)).addCallback(lambda ok: results.append((3, ok)))
    clock.advance(0.4)
    assert len(store.batches) == 1  # the retry waits
    clock.advance(0.1)
    assert [x.job_id for x in store.batches[1]] == [1, 2, 3]  # kept first, in order
    store.pending[1].errback(StoreUnavailable("still gone"))
    clock.advance(0.9)
    assert len(store.batches) == 2  # the pause grew to 1 s
    clock.advance(0.1)
    assert [x.job_id for x in store.batches[2]] == [1, 2, 3]
    store.pending[2].callback([True, True, False])
    assert results == [(1, True), (2, True), (3, False)]
    assert not writer.waiting_for_database
