"""docs/database.md describes every table and column the migrations create, and nothing else:
the schema other applications read is documented where they look."""

from __future__ import annotations

import re
import sqlite3

from tests.helpers.processes import REPO
from tm.db.dialect import SQLITE
from tm.db.store import Store

DOC = REPO / "docs" / "database.md"


def _migrated_schema() -> dict[str, set[str]]:
    conn = sqlite3.connect(":memory:")
    try:
        for _version, path in Store.migrations():
            for statement in SQLITE.render_schema(path.read_text(encoding="utf-8")):
                conn.execute(statement)
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        return {t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
    finally:
        conn.close()


def _documented() -> dict[str, set[str]]:
    documented: dict[str, set[str]] = {}
    table = None
    for line in DOC.read_text().splitlines():
        heading = re.fullmatch(r"### `(\w+)`", line)
        if heading:
            table = heading.group(1)
            documented[table] = set()
            continue
        if line.startswith("## "):
            table = None
        row = re.match(r"\| `(\w+)` \|", line)
        if table and row:
            documented[table].add(row.group(1))
    return documented


def test_every_table_and_column_is_documented_and_nothing_else() -> None:
    schema = _migrated_schema()
    documented = _documented()
    assert sorted(documented) == sorted(schema), "tables in docs/database.md vs the migrations"
    for table, columns in schema.items():
        assert documented[table] == columns, (
            f"{table}: undocumented {sorted(columns - documented[table])}, "
            f"documented but absent {sorted(documented[table] - columns)}"
        )
