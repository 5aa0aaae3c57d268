"""``hAdminDatabase``: create or upgrade the dispatcher's database, and show its configuration
(never its password)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tm import VERSION_LINE
from tm.cli.errors import CLIError, leave, report

PROG = "hAdminDatabase"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise CLIError(f"{message} (see {PROG} -h)", status=2)


def default_url(var_dir: str) -> str:
    return (
        os.environ.get("TM_DATABASE_URL")
        or f"sqlite:///{Path(var_dir).resolve() / 'taskmanager.sqlite'}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Administer the TaskManager database.")
    p.add_argument(
        "--database",
        "-d",
        default=None,
        help="database URL (default: $TM_DATABASE_URL or sqlite under --var-dir)",
    )
    p.add_argument("--var-dir", default="var", help="the dispatcher's var directory (default var)")
    p.add_argument(
        "action",
        choices=["upgrade", "create", "show"],
        help="upgrade/create: apply the schema migrations; show: URL and schema version",
    )
    p.add_argument("--version", action="version", version=VERSION_LINE)
    return p


async def main_async(reactor: Any, argv: list[str]) -> int:
    from tm.db.errors import StoreError
    from tm.db.store import Store, check_url_sync

    args = build_parser().parse_args(argv)
    url = args.database or default_url(args.var_dir)
    if url.startswith("sqlite:///") and args.database is None:
        Path(args.var_dir).mkdir(parents=True, exist_ok=True)
    try:
        check_url_sync(url)
        store = Store.from_url(url, reactor)
    except ValueError as e:
        raise CLIError(str(e)) from None
    try:
        if args.action in ("upgrade", "create"):
            applied = await store.upgrade()
            version = await store.schema_version()
            if applied:
                print(
                    f"applied migrations {', '.join(map(str, applied))}; schema version {version}"
                )
            else:
                print(f"schema is up to date (version {version})")
        else:
            version = await store.schema_version()
            print(f"database: {store.safe_url()}")
            print(f"schema version: {version}")
    except StoreError as e:
        raise CLIError(str(e)) from None
    finally:
        store.close()
    return 0


OPTIONS_OK = -1


def _options_ok(argv: list[str]) -> int:
    build_parser().parse_args(argv)
    return OPTIONS_OK


def main() -> None:
    argv = sys.argv[1:]
    # The options first, without Twisted: --version, -h and a mistake answer at once.
    status = report(PROG, lambda: _options_ok(argv))
    if status != OPTIONS_OK:
        leave(status)
    from tm.cli.common import run_main

    run_main(PROG, lambda reactor: main_async(reactor, argv))
