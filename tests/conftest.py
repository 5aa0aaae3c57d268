"""Test-session guards shared by every suite."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # CI sets TM_REQUIRE_MYSQL: there the MariaDB tests must run, never skip silently.
    if os.environ.get("TM_REQUIRE_MYSQL") and not os.environ.get("TM_TEST_MYSQL_URL"):
        raise pytest.UsageError("TM_REQUIRE_MYSQL is set but TM_TEST_MYSQL_URL is not")
    # CI sets TM_REQUIRE_ROOT: there the tests needing root or a second Unix user must run
    # (tests/helpers/requirements.py fails each one that cannot); say so once, up front.
    if os.environ.get("TM_REQUIRE_ROOT", "") not in ("", "0") and os.geteuid() != 0:
        raise pytest.UsageError("TM_REQUIRE_ROOT is set but the tests do not run as root")
