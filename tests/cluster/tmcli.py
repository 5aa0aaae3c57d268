"""The real CLI as the cluster's users type it, and parsers of what it prints."""

from __future__ import annotations

import ipaddress
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.netcluster import Cluster, wait_until

SUBMITTED = re.compile(r"Job \[(\d+)\] has been submitted to TaskDispatcher\.")


def submit(c: Cluster, role: str, command: str, *options: str, cwd: Path | None = None) -> int:
    """``hRunJob [options] COMMAND`` as the user; the new job's id."""
    result = c.run_as(role, "hRunJob", *options, command, cwd=cwd)
    assert result.returncode == 0, f"hRunJob failed for {role}: {result.stderr}"
    match = SUBMITTED.search(result.stdout)
    assert match, result.stdout
    return int(match.group(1))


def submit_many(c: Cluster, commands: dict[str, list[str]], cwd: dict[str, Path],
                *options: str) -> dict[str, list[int]]:
    """Each user submits their jobs one ``hRunJob`` after another, the users at the same time."""

    def one_user(role: str) -> list[int]:
        return [submit(c, role, command, *options, cwd=cwd[role]) for command in commands[role]]

    with ThreadPoolExecutor(len(commands)) as pool:
        futures = {role: pool.submit(one_user, role) for role in commands}
        return {role: f.result() for role, f in futures.items()}


def _id_ranges(text: str) -> list[int]:
    """``3-5,9`` -> ``[3, 4, 5, 9]``."""
    ids: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        ids += range(int(first), int(last or first) + 1)
    return ids


BULK_SUBMITTED = re.compile(
    r"(\d+) job\(s\) \[([\d,-]+)\] have been submitted to TaskDispatcher\.\n")


def submit_file(c: Cluster, role: str, directory: Path, commands: list[str],
                *options: str) -> list[int]:
    """``hRunJob -f FILE``: the jobs go to the dispatcher in one bulk submission."""
    jobs_file = directory / "jobs.txt"
    jobs_file.write_text("".join(f"command::{command}\n" for command in commands))
    submitted = c.run_as(role, "hRunJob", "-f", str(jobs_file), *options, cwd=directory,
                         check=True)
    match = BULK_SUBMITTED.fullmatch(submitted.stdout)
    assert match, submitted.stdout
    ids = _id_ranges(match.group(2))
    assert len(ids) == len(commands) == int(match.group(1))
    return ids


@dataclass
class JobDetail:
    fields: dict[str, str]
    history: list[str]
    text: str

    @property
    def state(self) -> str:
        return self.fields["state"].split()[0]

    @property
    def host(self) -> str:
        return self.fields["host"]


def lajob(c: Cluster, role: str, job_id: int) -> JobDetail:
    out = c.run_as(role, "hConnect", f"lajob:{job_id}", check=True).stdout
    fields: dict[str, str] = {}
    history: list[str] = []
    in_history = False
    for line in out.splitlines():
        if line == "history:":
            in_history = True
        elif in_history:
            history.append(line.strip())
        elif ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    assert "state" in fields and "host" in fields, out
    return JobDetail(fields, history, out)


def ended_ids(c: Cluster, role: str) -> set[int]:
    out = c.run_as(role, "hConnect", "lsfjobs", check=True).stdout
    return {int(line.split()[1]) for line in out.splitlines()
            if len(line.split()) > 1 and line.split()[1].isdigit()}


def wait_ended(c: Cluster, role: str, ids: list[int], timeout: float = 120) -> None:
    wait_until(lambda: set(ids) <= ended_ids(c, role), timeout,
               f"jobs {ids} of {role} to end")


def cluster_addresses(text: str, c: Cluster) -> set[str]:
    """The cluster-subnet IPv4 addresses in ``ip -o -4 addr show`` output."""
    net = ipaddress.ip_network(f"{c.subnet}.0/24")
    found = set()
    for token in re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", text):
        if ipaddress.ip_address(token) in net:
            found.add(token)
    return found


#: A job that records who and where it ran: its uid, then the host's addresses.
WHO_AND_WHERE = 'mkdir -p {dir} && {{ id -u; ip -o -4 addr show; }} > {dir}/$TM_JOB_ID.txt{tail}'


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
