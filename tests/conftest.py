"""Test-session guards shared by every suite."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # CI sets TM_REQUIRE_MYSQL: there the MariaDB tests must run, never skip silently.
    if os.environ.get("TM_REQUIRE_MYSQL") and not os.environ.get("TM_TEST_MYSQL_URL"):
        raise pytest.UsageError("TM_REQUIRE_MYSQL is set but TM_TEST_MYSQL_URL is not")
