"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
import uuid
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


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh database on the MariaDB of $TM_TEST_MYSQL_URL, dropped afterwards."""
    base = os.environ.get("TM_TEST_MYSQL_URL")
    if not base:
        pytest.skip("TM_TEST_MYSQL_URL is not set: no MariaDB to test against")
    import pymysql

    from tm.db.store import parse_url

    parsed = parse_url(base.rstrip("/") + "/mysql")
    name = "tm_e2e_" + uuid.uuid4().hex[:12]
    kw = {"host": parsed.host, "port": parsed.port, "user": parsed.user}
    if parsed.password is not None:
        kw["password"] = parsed.password
    conn = pymysql.connect(**kw)
    conn.cursor().execute(f"CREATE DATABASE {name}")
    try:
        yield base.rstrip("/") + "/" + name
    finally:
        conn.cursor().execute(f"DROP DATABASE {name}")
        conn.close()
