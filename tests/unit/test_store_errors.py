"""``tm.db`` raises its own errors; the dispatcher's responders turn them into AMP errors
with the same one-line text, and no ``tm.db`` module imports the protocol."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.unit.dispatcher_fakes import make_dispatcher
from tests.unit.test_dispatcher_responders import Peer
from tm.core.model import JobEnvironment, JobSpec
from tm.db.errors import StoreRefused, StoreUnavailable
from tm.protocol import commands, records

DB_DIR = Path(__file__).resolve().parents[2] / "tm" / "db"
FORBIDDEN = ("tm.protocol", "twisted.protocols.amp")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code (relative ones resolved)."""
    package = "tm.db"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_db_module_imports_the_protocol() -> None:
    modules = sorted(DB_DIR.glob("*.py"))
    assert modules, DB_DIR
    offenders = {
        f"{path.name}: {name}"
        for path in modules
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not offenders, sorted(offenders)


def test_the_import_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from tm.protocol.commands import InvalidRequest\n"
        "from twisted.protocols import amp\n"
    )
    names = imported_modules(bad)
    assert "tm.protocol.commands" in names and "twisted.protocols.amp" in names


@pytest.fixture
def world(tmp_path: Path) -> Any:
    return make_dispatcher(tmp_path)


def submit(d: Any, clock: Clock) -> Any:
    spec = JobSpec(uuid="11111111-1111-1111-1111-111111111111", command="true")
    return Peer(d, clock).call(
        commands.SubmitJobs,
        **records.environment_to_amp(JobEnvironment(cwd="/tmp")),
        sealed_env="1.0123456789abcdef.c2VhbGVk",  # as the user's TMS seals it
        jobs=[records.spec_to_amp(dataclasses.replace(spec, signature="1.0123456789abcdef.s"))],
    )


def test_a_store_refusal_reaches_the_client_as_invalid_request(world: Any) -> None:
    d, clock, store = world
    text = "job uuid 1111 is already used by another user's job; generate a fresh uuid"

    async def refuse(*args: Any) -> Any:
        raise StoreRefused(text)

    store.insert_jobs = refuse
    with pytest.raises(commands.InvalidRequest) as e:
        submit(d, clock)
    assert str(e.value) == text


def test_an_unavailable_store_reaches_the_client_as_database_unavailable(world: Any) -> None:
    d, clock, store = world
    text = "database sqlite:///x failed 3 times: database is locked"

    async def away(*args: Any, **kw: Any) -> Any:
        raise StoreUnavailable(text)

    store.insert_jobs = away
    with pytest.raises(commands.DatabaseUnavailable) as e:
        submit(d, clock)
    assert str(e.value) == text
    store.list_jobs = away
    with pytest.raises(commands.DatabaseUnavailable) as e:
        Peer(d, clock).call(commands.ListJobs, states=[], scope="mine", after_id=0, limit=10)
    assert str(e.value) == text


def test_hadmindatabase_reports_an_unavailable_store_as_its_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from tm.cli import hadmindatabase
    from tm.cli.errors import CLIError
    from tm.db import store as store_module

    text = "cannot reach database sqlite:///x: disk I/O error"

    class AwayStore:
        async def schema_version(self) -> int:
            raise StoreUnavailable(text)

        def close(self) -> None:
            pass

    monkeypatch.setattr(store_module.Store, "from_url", classmethod(lambda cls, *a: AwayStore()))
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    d = Deferred.fromCoroutine(hadmindatabase.main_async(None, ["--database", url, "show"]))
    results: list[Any] = []
    d.addBoth(results.append)
    [result] = results
    assert isinstance(result, Failure) and result.check(CLIError), result
    assert str(result.value) == text
