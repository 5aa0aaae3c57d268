"""Decaying slot-second usage for fair share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tm.core.fairshare import UsageLedger


def test_charge_decays_by_half_each_half_life() -> None:
    ledger = UsageLedger(half_life=100.0)
    ledger.charge("alice", 800.0, now=0.0)
    assert ledger.settled("alice", 0.0) == 800.0
    assert ledger.settled("alice", 100.0) == pytest.approx(400.0)
    assert ledger.settled("alice", 300.0) == pytest.approx(100.0)
    ledger.charge("alice", 50.0, now=300.0)
    assert ledger.settled("alice", 300.0) == pytest.approx(150.0)
    assert ledger.settled("bob", 300.0) == 0.0


def test_running_jobs_count_what_they_used_so_far() -> None:
    ledger = UsageLedger(half_life=1000.0)
    ledger.charge("alice", 10.0, now=0.0)
    usage = ledger.usage(10.0, [("bob", 4, 5.0), ("bob", 1, 8.0), ("carol", 2, 20.0)])
    assert usage["bob"] == pytest.approx(4 * 5 + 1 * 2)
    assert usage["carol"] == 0.0  # started in the future: nothing used yet
    assert usage["alice"] == pytest.approx(10.0 * 2 ** (-10 / 1000))


def test_bad_half_life() -> None:
    with pytest.raises(ValueError, match="positive"):
        UsageLedger(0)


@given(
    st.lists(st.tuples(st.floats(0, 1e6), st.floats(0, 1e4)), min_size=1, max_size=20),
    st.floats(1, 1e6),
)
def test_usage_never_grows_without_charges_and_never_goes_negative(
    charges: list[tuple[float, float]], half_life: float
) -> None:
    ledger = UsageLedger(half_life)
    t = 0.0
    for amount, gap in charges:
        t += gap
        ledger.charge("u", amount, now=t)
    before = ledger.settled("u", t)
    later = ledger.settled("u", t + half_life)
    assert 0.0 <= later <= before
    assert later == pytest.approx(before / 2, rel=1e-6, abs=1e-9)


def test_snapshot_and_restore_keep_the_usage() -> None:
    ledger = UsageLedger(half_life=100.0)
    ledger.charge("alice", 400.0, now=10.0)
    ledger.charge("bob", 8.0, now=20.0)
    again = UsageLedger(half_life=100.0)
    again.restore(ledger.snapshot())
    assert again.settled("alice", 110.0) == pytest.approx(200.0)
    assert again.settled("bob", 20.0) == pytest.approx(8.0)
    for bad in ({"alice": [-1.0, 0.0]}, {"alice": ["x", 0]}, {"alice": [1.0]}):
        with pytest.raises(ValueError):
            UsageLedger().restore(bad)  # type: ignore[arg-type]
