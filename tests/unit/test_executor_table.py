"""The executor table (tm.dispatcher.executors) alone, on a task.Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from tm.dispatcher.executors import ExecutorState, ExecutorTable


class Calls:
    def __init__(self) -> None:
        self.leases: list[tuple[str, str]] = []
        self.starts: list[tuple[str, str]] = []
        self.backoffs = 0

    def table(self, clock: Clock) -> ExecutorTable[object]:
        return ExecutorTable(
            clock,
            30.0,
            on_lease_over=lambda u, h: self.leases.append((u, h)),
            on_start_over=lambda u, h: self.starts.append((u, h)),
            on_backoff_over=self.count_backoff,
        )

    def count_backoff(self) -> None:
        self.backoffs += 1


def test_a_start_that_connects_in_time_cancels_its_deadline() -> None:
    clock, calls = Clock(), Calls()
    t = calls.table(clock)
    assert t.state("a", "h") is ExecutorState.ABSENT
    t.start("a", "h")
    t.start_asked("a", "h", 60)
    assert t.state("a", "h") is ExecutorState.STARTING
    clock.advance(59)
    t.connected("a", "h", "s1")
    assert t.state("a", "h") is ExecutorState.CONNECTED and t.session("a", "h") == "s1"
    clock.advance(10)
    assert calls.starts == [] and not clock.getDelayedCalls()


def test_a_start_past_its_deadline_is_over_and_backs_off_doubling() -> None:
    clock, calls = Clock(), Calls()
    t = calls.table(clock)
    pauses = []
    for _ in range(4):
        t.start("a", "h")
        t.start_asked("a", "h", 60)
        clock.advance(60)
        assert calls.starts[-1] == ("a", "h")
        pauses.append(t.start_failed("a", "h", 30, 100))
        assert t.state("a", "h") is ExecutorState.BACKED_OFF
        assert ("a", "h") in t.blocked(clock.seconds())
        clock.advance(pauses[-1] + 0.1)
        assert t.state("a", "h") is ExecutorState.ABSENT
    assert pauses == [30, 60, 100, 100] and calls.backoffs == 4
    t.connected("a", "h", "s")
    assert not t.failures and not t.backoff  # a start that worked resets the count


def test_a_later_start_has_its_own_deadline() -> None:
    clock, calls = Clock(), Calls()
    t = calls.table(clock)
    t.start("a", "h")
    t.start_asked("a", "h", 60)
    clock.advance(1)
    t.connected("a", "h", "s1")
    clock.advance(9)
    assert t.disconnected("a", "h", "s1")
    clock.advance(40)
    t.start("a", "h")
    t.start_asked("a", "h", 60)  # t = 50
    clock.advance(11)  # t = 61: the first start's deadline is long cancelled
    assert calls.starts == []
    clock.advance(50)  # t = 111
    assert calls.starts == [("a", "h")]


def test_away_within_the_lease_keeps_the_jobs_past_it_loses_them() -> None:
    clock, calls = Clock(), Calls()
    t = calls.table(clock)
    t.connected("a", "h", "s1")
    assert not t.disconnected("a", "h", "other")  # not the current session: nothing
    assert t.disconnected("a", "h", "s1")
    assert t.state("a", "h") is ExecutorState.AWAY
    clock.advance(29)
    t.connected("a", "h", "s2")
    clock.advance(5)
    assert calls.leases == [] and t.state("a", "h") is ExecutorState.CONNECTED
    assert t.disconnected("a", "h", "s2")
    clock.advance(10)
    t.gone("a", "h")  # already away: the first lease runs on
    clock.advance(20)
    assert calls.leases == [("a", "h")] and t.state("a", "h") is ExecutorState.ABSENT


def test_a_replaced_session_is_returned_for_fencing_and_stop_cancels_timers() -> None:
    clock, calls = Clock(), Calls()
    t = calls.table(clock)
    assert t.connected("a", "h", "s1") is None
    assert t.connected("a", "h", "s2") == "s1"
    assert t.connected("a", "h", "s2") is None
    t.gone("b", "h")
    t.start("c", "h")
    t.start_asked("c", "h", 60)
    assert clock.getDelayedCalls()
    t.stop()
    assert not clock.getDelayedCalls()
