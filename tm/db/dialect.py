"""What differs between SQLite and MySQL/MariaDB, and the statements of schema upkeep.

Every function takes ``txn`` (a cursor inside one transaction) and a :class:`Dialect`;
:mod:`tm.db.queries` holds the statements about jobs, hosts, users and settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Largest number of values in one ``IN (...)`` list.
IN_CHUNK = 500


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and MySQL/MariaDB."""

    name: str  # "sqlite" or "mysql"
    paramstyle: str  # "?" or "%s"
    autoinc_pk: str
    table_options: str

    def q(self, sql: str) -> str:
        """``sql`` written with ``?`` parameters, in this driver's paramstyle."""
        if self.paramstyle == "?":
            return sql
        return sql.replace("?", self.paramstyle)

    def render_schema(self, text: str) -> list[str]:
        """The statements of a migration file, placeholders substituted."""
        text = text.replace("{AUTOINC_PK}", self.autoinc_pk)
        text = text.replace("{TABLE_OPTIONS}", self.table_options)
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
        return [stmt.strip() for stmt in "\n".join(lines).split(";") if stmt.strip()]

    def insert_ignore(self, table: str, columns: Sequence[str], conflict: str) -> str:
        cols = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        if self.name == "mysql":
            return self.q(f"INSERT IGNORE INTO {table} ({cols}) VALUES ({marks})")
        return self.q(
            f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT({conflict}) DO NOTHING"
        )

    def upsert(self, table: str, columns: Sequence[str], key: str, update: Sequence[str]) -> str:
        cols = ", ".join(columns)
        marks = ", ".join("?" for _ in columns)
        if self.name == "mysql":
            sets = ", ".join(f"{c} = VALUES({c})" for c in update)
            return self.q(
                f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON DUPLICATE KEY UPDATE {sets}"
            )
        sets = ", ".join(f"{c} = excluded.{c}" for c in update)
        return self.q(
            f"INSERT INTO {table} ({cols}) VALUES ({marks}) ON CONFLICT({key}) DO UPDATE SET {sets}"
        )


SQLITE = Dialect(
    name="sqlite",
    paramstyle="?",
    autoinc_pk="INTEGER PRIMARY KEY AUTOINCREMENT",
    table_options="",
)
MYSQL = Dialect(
    name="mysql",
    paramstyle="%s",
    autoinc_pk="BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY",
    table_options="ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci",
)


def _chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ", ".join("?" for _ in range(n))


#: MySQL's error number of a duplicate key (ER_DUP_ENTRY).
_DUPLICATE_KEY = 1062


#: The longest multi-row INSERT made by insert_new_rows (MySQL's packet limit is larger).
MAX_STATEMENT_CHARS = 1_000_000


def insert_new_rows(
    txn: Any,
    d: Dialect,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    common: Sequence[Any] = (),
) -> dict[Any, int] | None:
    """MySQL/MariaDB: ``rows``, each followed by the values ``common`` to them all (``columns``
    name both; the first one is a unique key), inserted by multi-row INSERTs instead of a
    round trip each; their ids by key. None, with nothing written, when one of the keys
    exists already (a resent submission: the caller inserts row by row) or on SQLite (whose
    row by row INSERT costs no round trip). The driver escapes the common values once."""
    if d.name != "mysql" or len(rows) < 2:
        return None
    mogrify = txn.mogrify  # the driver's escaping (pymysql), the same as execute's
    tail = "".join(", " + mogrify("%s", (value,)).replace("%", "%%") for value in common)
    template = "(" + ", ".join(["%s"] * len(rows[0])) + tail + ")"
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    statements: list[list[str]] = [[]]
    size = 0
    for row in rows:
        text = mogrify(template, tuple(row))
        if statements[-1] and size + len(text) > MAX_STATEMENT_CHARS:
            statements.append([])
            size = 0
        statements[-1].append(text)
        size += len(text) + 1
    txn.execute("SAVEPOINT tm_insert_new_rows")
    try:
        for values in statements:
            txn.execute(head + ",".join(values))
    except Exception as e:
        if getattr(e, "args", (None,))[:1] != (_DUPLICATE_KEY,):
            raise
        # All or nothing, however many statements it took.
        txn.execute("ROLLBACK TO SAVEPOINT tm_insert_new_rows")
        return None
    txn.execute("RELEASE SAVEPOINT tm_insert_new_rows")
    ids: dict[Any, int] = {}
    keys = [row[0] for row in rows]
    for chunk in _chunks(keys):
        txn.execute(
            d.q(
                f"SELECT {columns[0]}, id FROM {table} WHERE {columns[0]} IN ({_marks(len(chunk))})"
            ),
            tuple(chunk),
        )
        ids.update((key, int(row_id)) for key, row_id in txn.fetchall())
    return ids


# --- schema -----------------------------------------------------------------


def ensure_version_table(txn: Any, d: Dialect) -> None:
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        f"(version INTEGER NOT NULL PRIMARY KEY) {d.table_options}"
    )


def applied_versions(txn: Any, d: Dialect) -> set[int]:
    ensure_version_table(txn, d)
    txn.execute("SELECT version FROM schema_version")
    return {int(row[0]) for row in txn.fetchall()}


def apply_migration(txn: Any, d: Dialect, version: int, statements: list[str]) -> None:
    for stmt in statements:
        txn.execute(stmt)
    txn.execute(d.q("INSERT INTO schema_version (version) VALUES (?)"), (version,))


def ping(txn: Any, d: Dialect) -> None:
    txn.execute("SELECT 1")
    txn.fetchall()
