"""docs/admin-guide.md's MariaDB block, run as written (with this test's names): the
dispatcher's database user can create and run the schema, the read-only account can read the
queue and change nothing."""

from __future__ import annotations

import os
import re
import uuid

import pytest

from tests.helpers import cli
from tests.helpers.processes import REPO, Installation

pytestmark = pytest.mark.mysql

GUIDE = REPO / "docs" / "admin-guide.md"


def _guide_sql() -> list[str]:
    text = GUIDE.read_text()
    block = re.search(r"<!-- admin-guide-sql -->\n```sql\n(.*?)```", text, re.S)
    assert block, "docs/admin-guide.md lost its MariaDB block"
    return [s.strip() for s in block.group(1).split(";") if s.strip()]


def _connect(user: str, password: str | None, database: str | None = None):  # noqa: ANN202
    import pymysql

    from tm.db.store import parse_url

    base = parse_url(os.environ["TM_TEST_MYSQL_URL"].rstrip("/") + "/mysql")
    kw = {"host": base.host, "port": base.port, "user": user, "autocommit": True}
    if password:
        kw["password"] = password
    if database:
        kw["database"] = database
    return pymysql.connect(**kw)


@pytest.fixture
def guide_database():  # noqa: ANN201
    if not os.environ.get("TM_TEST_MYSQL_URL"):
        if os.environ.get("TM_REQUIRE_MYSQL"):
            pytest.fail("TM_REQUIRE_MYSQL is set but TM_TEST_MYSQL_URL is not")
        pytest.skip("TM_TEST_MYSQL_URL is not set: no MariaDB to test against")
    from tm.db.store import parse_url

    admin = parse_url(os.environ["TM_TEST_MYSQL_URL"].rstrip("/") + "/mysql")
    tag = uuid.uuid4().hex[:8]
    names = {
        "taskmanager": f"tm_guide_{tag}",
        "tm_reader": f"tm_rd_{tag}",
        "CHANGE-ME-dispatcher": f"pw-d-{tag}",
        "CHANGE-ME-reader": f"pw-r-{tag}",
    }
    statements = []
    for statement in _guide_sql():
        # The database and the dispatcher's user share the name 'taskmanager' in the guide.
        statement = statement.replace("'taskmanager'@", f"'tm_d_{tag}'@")
        for old, new in names.items():
            statement = statement.replace(old, new)
        statements.append(statement)
    root = _connect(admin.user, admin.password)
    try:
        for statement in statements:
            root.cursor().execute(statement)
        yield {
            "database": names["taskmanager"],
            "dispatcher": (f"tm_d_{tag}", names["CHANGE-ME-dispatcher"]),
            "reader": (names["tm_reader"], names["CHANGE-ME-reader"]),
            "host": admin.host,
            "port": admin.port,
        }
    finally:
        cursor = root.cursor()
        cursor.execute(f"DROP DATABASE IF EXISTS {names['taskmanager']}")
        cursor.execute(f"DROP USER IF EXISTS 'tm_d_{tag}'@'127.0.0.1'")
        cursor.execute(f"DROP USER IF EXISTS '{names['tm_reader']}'@'%'")
        root.close()


def test_the_guides_accounts_run_the_dispatcher_and_read_only(tmp_path, guide_database) -> None:
    import pymysql

    g = guide_database
    user, password = g["dispatcher"]
    url = f"mysql://{user}:{password}@{g['host']}:{g['port']}/{g['database']}"
    inst = Installation(tmp_path, database_url=url)
    try:
        upgraded = inst.run("hAdminDatabase", "upgrade", "--database", url)
        assert upgraded.returncode == 0, upgraded.stderr
        inst.start_dispatcher()
        job = cli.submit(inst, "--wait", "true")
        assert cli.state(inst, job) == "finished"
    finally:
        inst.cleanup()

    reader = _connect(*g["reader"], database=g["database"])
    try:
        cursor = reader.cursor()
        cursor.execute("SELECT id, state FROM jobs")
        assert cursor.fetchall() == ((job, "finished"),)
        for change in (
            "UPDATE jobs SET state = 'waiting'",
            "DELETE FROM jobs",
            "CREATE TABLE mine (x INTEGER)",
        ):
            with pytest.raises(pymysql.err.OperationalError, match="denied"):
                cursor.execute(change)
    finally:
        reader.close()
