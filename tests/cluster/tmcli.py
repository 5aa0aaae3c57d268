"""The real CLI as the cluster's users type it (the shared tests/helpers/cli.py, run as them over
the cluster's runner), and what their jobs record about where they ran."""

from __future__ import annotations

import functools
import ipaddress
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.netcluster import Cluster, wait_until
from tests.helpers import cli


def user(c: Cluster, role: str) -> cli.As:
    """The cluster's user ``role`` at a terminal: the shared CLI helpers run as them."""
    return cli.As(functools.partial(c.run_as, role), role)


def submit(c: Cluster, role: str, command: str, *options: str, cwd: Path | None = None) -> int:
    """``hRunJob [options] COMMAND`` as the user; the new job's id."""
    return cli.submit(user(c, role), *options, command, cwd=cwd)


def submit_many(
    c: Cluster, commands: dict[str, list[str]], cwd: dict[str, Path], *options: str
) -> dict[str, list[int]]:
    """Each user submits their jobs one ``hRunJob`` after another, the users at the same time."""

    def one_user(role: str) -> list[int]:
        return [submit(c, role, command, *options, cwd=cwd[role]) for command in commands[role]]

    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {role: pool.submit(one_user, role) for role in commands}
        return {role: f.result() for role, f in futures.items()}


def submit_file(
    c: Cluster, role: str, directory: Path, commands: list[str], *options: str
) -> list[int]:
    """``hRunJob -f FILE``: the jobs go to the dispatcher in one bulk submission."""
    ids = cli.submit_file(
        user(c, role),
        directory / "jobs.txt",
        *options,
        content=cli.job_file(commands),
        cwd=directory,
    )
    assert len(ids) == len(commands)
    return ids


def lajob(c: Cluster, role: str, job_id: int) -> cli.JobInfo:
    return cli.lajob(user(c, role), job_id)


def ended_ids(c: Cluster, role: str) -> set[int]:
    return set(cli.listed_ids(cli.tms(user(c, role), "lsfjobs")))


def wait_ended(c: Cluster, role: str, ids: list[int], timeout: float = 120) -> None:
    wait_until(lambda: set(ids) <= ended_ids(c, role), timeout, f"jobs {ids} of {role} to end")


def cluster_addresses(text: str, c: Cluster) -> set[str]:
    """The cluster-subnet IPv4 addresses in ``ip -o -4 addr show`` output."""
    net = ipaddress.ip_network(f"{c.subnet}.0/24")
    found = set()
    for token in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", text):
        if ipaddress.ip_address(token) in net:
            found.add(token)
    return found


#: A job that records who and where it ran: its uid, then the host's addresses.
WHO_AND_WHERE = "mkdir -p {dir} && {{ id -u; ip -o -4 addr show; }} > {dir}/$TM_JOB_ID.txt{tail}"


def record_job(directory: Path, sleep: float = 0.0, gate: Path | None = None) -> str:
    """A job that records its uid and addresses, then sleeps ``sleep`` s and, with ``gate``,
    runs on until that file exists (so it holds its slot until the test lets it go)."""
    tail = f"; sleep {sleep}" if sleep else ""
    if gate is not None:
        tail += f"; while [ ! -e {gate} ]; do sleep 0.1; done"
    return WHO_AND_WHERE.format(dir=directory, tail=tail)


def records_written(directory: Path) -> int:
    """How many jobs of :func:`record_job` have started (written their record) in ``directory``."""
    return len(list(directory.glob("*.txt")))


@dataclass
class Record:
    uid: int
    addresses: set[str]


def read_record(c: Cluster, directory: Path, job_id: int) -> Record:
    text = (directory / f"{job_id}.txt").read_text()
    first, _, rest = text.partition("\n")
    return Record(uid=int(first), addresses=cluster_addresses(rest, c))
