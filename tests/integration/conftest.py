"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.processes import Installation


@pytest.fixture
def tm(tmp_path: Path) -> Iterator[Installation]:
    """A running dispatcher with no configuration (this host, this user as admin, SQLite)."""
    inst = Installation(tmp_path)
    try:
        inst.start_dispatcher()
        yield inst
    finally:
        inst.cleanup()
