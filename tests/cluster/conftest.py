"""Fixtures of the cluster suite: one real cluster (namespaces, sshds, Unix users, the
dispatcher run by the admin account) for the whole session, and per-test isolation.

Without root or ``ip netns`` the suite skips and says why; with ``TM_REQUIRE_CLUSTER=1``
(CI) it fails instead, so a machine that cannot build the cluster is never mistaken for
a passing one.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Generator, Iterator

import pytest

from tests.cluster import netcluster
from tests.cluster.netcluster import Cluster, wait_until

REQUIRED = os.environ.get("TM_REQUIRE_CLUSTER") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.root)


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reason = netcluster.unavailable_reason()
    if reason:
        if REQUIRED:
            pytest.fail(
                f"TM_REQUIRE_CLUSTER=1, but no cluster can be built: {reason}", pytrace=False
            )
        pytest.skip(f"no cluster can be built: {reason}")
    c = Cluster(venv=netcluster.shared_venv())
    try:
        c.start()
        yield c
    finally:
        errors = c.close()
        assert not errors, "the cluster was not cleaned up completely: " + "; ".join(errors)


def _busy_jobs(c: Cluster) -> int:
    out = c.run_as("admin", "hConnect", "-T", "gettdstatus", check=True).stdout
    status = json.loads(out)
    return sum(status.get(f"{s} jobs", 0) for s in ("waiting", "pending", "running"))


@pytest.fixture(autouse=True)
def isolated(request: pytest.FixtureRequest, cluster: Cluster) -> Iterator[None]:
    """Each test starts on an idle cluster with every host active and every sshd up,
    and leaves it so even when it fails; a failing test shows the cluster's logs."""
    wait_until(lambda: _busy_jobs(cluster) == 0, 120, "the jobs of earlier tests to end")
    yield
    for host in cluster.hosts.values():
        if cluster.partitioned(host):
            cluster.heal(host)
        if not cluster.link_up(host):
            cluster.restore_link(host)
            wait_until(functools.partial(cluster.sshd_answers, host), 30, f"{host.name} to be back")
        cluster.resume_sshd(host)
        if not cluster.sshd_running(host):
            cluster.start_sshd(host)
        cluster.run_as("admin", "hConnect", "-T", f"activatehost:{host.name}", check=True)
    if request.node.stash.get(_FAILED, False):
        print(cluster.diagnostics())
        for role in ("alice", "bob", "carol", "dave"):
            cluster.run_as("admin", "hConnect", "-T", f"rmjobs:{cluster.users[role].name}")
