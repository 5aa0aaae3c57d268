"""Retry decisions (tm/core/retry.py): pure."""

from __future__ import annotations

import pytest

from tm.core.retry import (
    Cause,
    check_retries,
    decide,
    final_reason,
    normalize_exit_codes,
    parse_exit_codes,
    spec_problem,
)


def test_exit_codes_are_lists_and_ranges() -> None:
    assert parse_exit_codes("") == frozenset()
    assert parse_exit_codes("3") == {3}
    assert parse_exit_codes("3, 5-7") == {3, 5, 6, 7}
    assert normalize_exit_codes("7,5-6,3,4") == "3-7"
    assert normalize_exit_codes("1,3") == "1,3"


@pytest.mark.parametrize("text", ["x", "3,", "0", "256", "7-5", "1-x", "-1"])
def test_bad_exit_codes_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(ValueError, match="--retry-on-exit") as e:
        parse_exit_codes(text)
    assert "\n" not in str(e.value)


def test_retries_are_checked() -> None:
    assert check_retries(None) is None
    assert check_retries(2) == 2
    for bad in (-1, 101, True):
        with pytest.raises(ValueError, match="--retries"):
            check_retries(bad)


def test_an_exit_code_is_retried_while_retries_remain() -> None:
    ran = []
    attempt = 1
    while True:
        d = decide(Cause.EXIT, attempt, "exit code 3", 2, "3", exit_code=3)
        ran.append(attempt)
        if not d.retry:
            break
        assert d.reason == f"exit code 3; retried (retry {attempt} of 2)"
        attempt += 1
    assert ran == [1, 2, 3]
    assert d.reason == "exit code 3 after 3 attempts"


def test_an_exit_code_not_listed_is_not_retried() -> None:
    d = decide(Cause.EXIT, 1, "exit code 4", 5, "3,5-7", exit_code=4)
    assert not d.retry and d.reason == "exit code 4"
    # A signal is not an exit code.
    assert not decide(Cause.EXIT, 1, "signal 9", 5, "3", exit_code=None).retry


def test_lost_jobs_retry_as_the_dispatcher_says_without_retries() -> None:
    assert decide(Cause.LOST, 1, "lost", None, lost_default=1).retry
    d = decide(Cause.LOST, 2, "lost", None, lost_default=1)
    assert not d.retry and d.reason == "lost after 2 attempts"
    assert not decide(Cause.LOST, 1, "lost", None, lost_default=0).retry
    # The job's own --retries wins, both ways.
    assert not decide(Cause.LOST, 1, "lost", 0, lost_default=3).retry
    assert decide(Cause.LOST, 3, "lost", 3, lost_default=0).retry


def test_a_failed_start_is_retried_only_with_retries() -> None:
    assert not decide(Cause.START, 1, "start failed: x", None).retry
    assert decide(Cause.START, 1, "start failed: x", 1).retry
    assert not decide(Cause.START, 2, "start failed: x", 1).retry


def test_the_final_reason_names_the_attempts_when_more_than_one() -> None:
    assert final_reason("exit code 0", 1) == "exit code 0"
    assert final_reason("exit code 0", 2) == "exit code 0 after 2 attempts"


def test_spec_problems() -> None:
    assert spec_problem(None, "", "") is None
    assert spec_problem(2, "3", "echo hi") is None
    assert "needs --retries" in (spec_problem(None, "3", "") or "")
    assert "--retries" in (spec_problem(-1, "", "") or "")
    assert "NUL" in (spec_problem(None, "", "a\0b") or "")
