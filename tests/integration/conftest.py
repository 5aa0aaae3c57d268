"""Fixtures shared by the integration tests: each name means one installation, defined here once.

- ``installation``: a running dispatcher with no configuration (this host, this user as
  admin, SQLite); ``indirect`` parameters are extra arguments of the dispatcher.
- ``two_host_installation``: the same with two hosts ``hA`` and ``hB`` of 2 slots each.
- ``leased_installation``: the same with a short executor lease (3 s; ``indirect``: another).
- ``make_installation``: a factory of installations with given hosts, users and environment.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.leaks import ProcessSnapshot
from tests.helpers.processes import (
    ClusterHost,
    Installation,
    InstallationWithEnv,
    write_cluster_tab,
)


@pytest.fixture(autouse=True)
def no_process_left() -> Iterator[None]:
    """No test leaves a process behind: after the test and its finalizers, no new child of the
    test process and no process of an installation it made (its dispatcher, the daemons in its
    pid files) is alive. Those left are named in a failure, and killed."""
    before = ProcessSnapshot.take()
    yield
    left = before.leftovers()
    if left:
        pytest.fail("the test left processes behind: " + "; ".join(left), pytrace=False)


@pytest.fixture
def installation(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Installation]:
    """A running dispatcher with no configuration (this host, this user as admin, SQLite);
    parametrized indirectly, with these extra arguments of the dispatcher."""
    inst = Installation(tmp_path)
    try:
        inst.start_dispatcher(*getattr(request, "param", ()))
        yield inst
    finally:
        inst.cleanup()


#: The rows of etc/cluster.tab of :func:`two_host_installation` (the columns an older file has).
TWO_HOSTS = "hA\thA\t2\t2\t\tFalse\t0\tTrue\nhB\thB\t2\t2\t\tFalse\t0\tTrue\n"


@pytest.fixture
def two_host_installation(tmp_path: Path) -> Iterator[Installation]:
    """A running dispatcher with two hosts, ``hA`` and ``hB``, of 2 slots each (both run their
    executors on this machine)."""
    inst = Installation(tmp_path)
    (inst.etc / "cluster.tab").write_text(TWO_HOSTS)
    try:
        inst.start_dispatcher()
        yield inst
    finally:
        inst.cleanup()


#: Short leases keep the fault tests quick: executors stop their jobs after half of it without
#: the dispatcher. Tests that restart the dispatcher ask for a longer one (it must fit in half).
SHORT_LEASE = "3"


class LeasedInstallation(Installation):
    """An installation whose dispatcher gives executors a lease of ``lease`` seconds."""

    lease: str


@pytest.fixture
def leased_installation(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[LeasedInstallation]:
    """A running dispatcher with no configuration whose executors hold a short lease
    (``SHORT_LEASE`` s; parametrized indirectly, this many seconds); restart it with
    ``start_dispatcher("--executor-lease", inst.lease)``."""
    inst = LeasedInstallation(tmp_path)
    inst.lease = getattr(request, "param", SHORT_LEASE)
    try:
        inst.start_dispatcher("--executor-lease", inst.lease)
        yield inst
    finally:
        inst.cleanup()


@pytest.fixture
def make_installation(tmp_path: Path) -> Iterator[Callable[..., Installation]]:
    """Start a dispatcher with the given hosts (etc/cluster.tab), users (etc/users) and
    extra environment; ``shared=True`` puts it where a second user can reach it. Every
    installation made is cleaned up afterwards."""
    made: list[tuple[Installation, Path | None]] = []

    def make(
        *hosts: ClusterHost,
        users: list[tuple[str, str]] | None = None,
        env: dict[str, str] | None = None,
        shared: bool = False,
    ) -> Installation:
        shared_root = None
        if shared:
            shared_root = Path(tempfile.mkdtemp(prefix="tm-seed-"))
            os.chmod(shared_root, 0o755)
            root = shared_root
        else:
            root = tmp_path / f"tm{len(made)}"
        inst = InstallationWithEnv(root, extra_env=env)
        made.append((inst, shared_root))
        if hosts:
            write_cluster_tab(inst.etc, list(hosts))
        if users is not None:
            (inst.etc / "users").write_text("".join(f"{n}\t{r}\n" for n, r in users))
        inst.start_dispatcher()
        return inst

    yield make
    for inst, shared_root in reversed(made):
        inst.cleanup()
        if shared_root is not None:
            shutil.rmtree(shared_root, ignore_errors=True)


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
