"""Test-session guards shared by every suite."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.helpers.leaks import ReactorSnapshot
from tests.helpers.native import build_in_tree


def pytest_configure(config: pytest.Config) -> None:
    # The compiled zygote and shepherd, built next to the sources as pip would install it.
    build_in_tree()
    # CI sets TM_REQUIRE_MYSQL: there the MariaDB tests must run, never skip silently.
    if os.environ.get("TM_REQUIRE_MYSQL") and not os.environ.get("TM_TEST_MYSQL_URL"):
        raise pytest.UsageError("TM_REQUIRE_MYSQL is set but TM_TEST_MYSQL_URL is not")
    # CI sets TM_REQUIRE_ROOT: there the tests needing root or a second Unix user must run
    # (tests/helpers/requirements.py fails each one that cannot); say so once, up front.
    if os.environ.get("TM_REQUIRE_ROOT", "") not in ("", "0") and os.geteuid() != 0:
        raise pytest.UsageError("TM_REQUIRE_ROOT is set but the tests do not run as root")


@pytest.fixture(autouse=True)
def clean_reactor() -> Iterator[None]:
    """No test leaves a delayed call, a reader or a writer (a port, a connection, a process's
    pipe) in the global reactor: after the test and its finalizers, what it added and left is
    named in a failure, and removed so that the next test starts clean."""
    from twisted.internet import reactor

    before = ReactorSnapshot.take(reactor)
    yield
    left = before.leftovers()
    if left:
        pytest.fail("the test left in the reactor: " + "; ".join(left), pytrace=False)
