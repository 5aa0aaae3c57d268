"""The real CLI as a user types it, and parsers of what it prints -- one copy for the
integration, seed and cluster suites.

Who types a command is a parameter: anything with ``run(*argv, cwd=None, check=False)`` that
returns a ``CompletedProcess`` (:class:`Runs`). An :class:`~tests.helpers.processes.Installation`
is one (the test's own user); :class:`As` turns any such function into one -- the cluster suite
passes ``functools.partial(cluster.run_as, role)`` to run the CLI as another Unix user over its
own runner. The functions (``submit``, ``lajob``, ``td`` ...) take it first; :class:`CLI` holds
one and offers the same functions as methods.

What is parsed, and how (the formats of tm/textcommands.py and tm/cli/hrunjob.py):

- ``hRunJob COMMAND``: exactly ``Job [ID] has been submitted to TaskDispatcher.``;
  ``hRunJob -f FILE``: exactly ``N job(s) [3-5,9] have been submitted to TaskDispatcher.``
- ``hConnect [-T] lajob:ID``: ``key: value`` lines, then ``history:`` and one row per
  state change (:class:`JobInfo`, :class:`HistoryEntry`).
- job listings (``lswjobs``, ``lsrjobs``, ``lsfjobs``, ``findjobs:...``, ``lsnextjobs:N``):
  a header line ``#  ID  [USER]  STATE  GROUP  INFO  COMMAND``, then one row per job,
  ``N  ID  [USER]  WHERE  GROUP  INFO  COMMAND`` (:class:`ListingRow`; ``-`` for an empty
  group or info).
- ``hConnect -T lscluster``: an activity line, a header line, then one row per host
  (:class:`HostRow`).
- ``--json``: one document per command (docs/json.md); :func:`json_of` runs and reads it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.helpers.processes import wait_until

SUBMITTED = re.compile(r"Job \[(\d+)\] has been submitted to TaskDispatcher\.\n")
BULK_SUBMITTED = re.compile(
    r"(\d+) job\(s\) \[([\d,-]+)\] have been submitted to TaskDispatcher\.\n"
)
#: How the header lines of a job listing and of lscluster begin.
LISTING_HEADER = ("#", "ID")
HOSTS_HEADER = ("#", "HOST")
#: The states a job no longer leaves.
ENDED = ("finished", "failed", "killed")
#: Every state a listing row or lajob can show.
STATES = ("waiting", "pending", "running", *ENDED, "lost")


class Runs(Protocol):
    """Who types the commands: runs ``argv`` and returns what it printed and its exit status."""

    def run(
        self, *argv: str, cwd: Path | None = None, check: bool = False
    ) -> subprocess.CompletedProcess: ...


class As:
    """A :class:`Runs` from a function ``run(*argv, cwd=..., check=...)``, e.g.
    ``As(functools.partial(cluster.run_as, "alice"), "alice")``."""

    def __init__(self, run: Callable[..., subprocess.CompletedProcess], name: str = "") -> None:
        self._run = run
        self.name = name

    def run(
        self, *argv: str, cwd: Path | None = None, check: bool = False
    ) -> subprocess.CompletedProcess:
        return self._run(*argv, cwd=cwd, check=check)


def _name(who: Runs) -> str:
    return str(getattr(who, "name", "") or type(who).__name__)


# --- hRunJob -------------------------------------------------------------------------------


def expand_ids(ranges: str) -> list[int]:
    """``3-5,9`` -> [3, 4, 5, 9]."""
    ids: list[int] = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def submitted_id(stdout: str) -> int:
    """The id in what ``hRunJob COMMAND`` printed (which must be exactly its one line)."""
    match = SUBMITTED.fullmatch(stdout)
    assert match, stdout
    return int(match.group(1))


def submitted_ids(stdout: str) -> list[int]:
    """The ids in what ``hRunJob -f FILE`` printed (which must be exactly its one line)."""
    match = BULK_SUBMITTED.fullmatch(stdout)
    assert match, stdout
    ids = expand_ids(match.group(2))
    assert len(ids) == int(match.group(1)), stdout
    return ids


def submit(who: Runs, *args: str, cwd: Path | None = None) -> int:
    """``hRunJob [options] COMMAND``: the new job's id."""
    result = who.run("hRunJob", *args, cwd=cwd)
    assert result.returncode == 0, f"{_name(who)}: hRunJob {args}: {result.stderr}"
    return submitted_id(result.stdout)


def submit_file(
    who: Runs,
    path: Path | str,
    *options: str,
    content: bytes | str | None = None,
    cwd: Path | None = None,
) -> list[int]:
    """``hRunJob -f PATH [options]`` (writing ``content`` to ``path`` first, if given): the ids
    of the jobs, submitted in one bulk submission."""
    if content is not None:
        target = Path(path) if cwd is None else cwd / path
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)
    result = who.run("hRunJob", "-f", str(path), *options, cwd=cwd)
    assert result.returncode == 0, f"{_name(who)}: hRunJob -f {path}: {result.stderr}"
    return submitted_ids(result.stdout)


def job_file(commands: list[str]) -> str:
    """A job file (``hRunJob -f``) with one ``command::`` line per command."""
    return "".join(f"command::{command}\n" for command in commands)


# --- hConnect ------------------------------------------------------------------------------


def tms(who: Runs, line: str) -> str:
    """``hConnect LINE`` (to the user's TMS): what it printed, stripped."""
    return who.run("hConnect", line, check=True).stdout.strip()


def td(who: Runs, line: str) -> str:
    """``hConnect -T LINE`` (to the dispatcher): what it printed, stripped."""
    return who.run("hConnect", "-T", line, check=True).stdout.strip()


def json_of(who: Runs, *argv: str) -> dict[str, Any]:
    """``hConnect --json ARGV...`` (``"-T", "lscluster"`` ...): its one document, read. The
    output must be exactly one line of JSON."""
    result = who.run("hConnect", "--json", *argv)
    assert result.returncode == 0, f"{_name(who)}: hConnect --json {argv}: {result.stderr}"
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("\n"), result.stdout
    doc = json.loads(result.stdout)
    assert isinstance(doc, dict) and doc.get("schema") == 1, result.stdout
    assert_json_keys(doc)
    return doc


def assert_json_keys(value: Any, where: str = "") -> None:
    """Every key of every object of a ``--json`` document is a name without spaces (but a
    job's environment's, which are the variables' names)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            assert isinstance(key, str) and key and " " not in key, f"{where}{key!r}"
            if key != "env":
                assert_json_keys(inner, f"{where}{key}.")
    elif isinstance(value, list):
        for inner in value:
            assert_json_keys(inner, where)


class HistoryEntry(str):
    """One row of lajob's history: the row's text (so ``"lost" in row`` and ``row.split()`` work
    on it as printed), with its cells parsed."""

    at: float
    state: str
    attempt: int
    host: str
    reason: str

    @classmethod
    def parse(cls, line: str) -> HistoryEntry:
        row = cls(line.strip())
        parts = row.split("  ")
        stamp, state, attempt = parts[0], parts[1], parts[2]
        rest = [p.strip() for p in parts[3:]]
        row.at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
        row.state = state
        row.attempt = int(attempt.split()[1])
        row.host = rest[0] if len(rest) > 1 else ""
        row.reason = rest[-1] if rest else ""
        return row


@dataclass
class JobInfo:
    """``hConnect [-T] lajob:ID``, parsed: ``fields`` by their printed names ("exit code" ...)."""

    fields: dict[str, str]
    history: list[HistoryEntry]
    text: str
    #: The job's environment (shown through the user's own TMS only), by name.
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return self.text

    @property
    def state(self) -> str:
        """The state alone: ``running``, not ``running (suspended)``."""
        return self.fields["state"].split()[0]

    @property
    def status(self) -> str:
        """The state as printed, with what qualifies it: ``running (suspended)``."""
        return self.fields["state"]

    @property
    def wait_reason(self) -> str:
        match = re.match(r"\w+ \((.*)\)$", self.fields["state"])
        return match.group(1) if match else ""

    @property
    def host(self) -> str:
        return self.fields["host"]

    @property
    def exit_code(self) -> str:
        return self.fields["exit code"]

    @property
    def reason(self) -> str:
        return self.fields["reason"]

    @property
    def attempt(self) -> int:
        """The attempt of the latest history row (0 before any)."""
        return self.history[-1].attempt if self.history else 0


def parse_job(text: str) -> JobInfo:
    fields: dict[str, str] = {}
    history: list[HistoryEntry] = []
    env: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if line in ("history:", "environment:"):
            section = line[:-1]
        elif section == "history" and line.strip():
            history.append(HistoryEntry.parse(line))
        elif section == "environment" and line.startswith("  "):
            name, _, value = line[2:].partition("=")
            env[name] = value
        elif not section and ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    assert "state" in fields and "host" in fields, text
    return JobInfo(fields, history, text, env)


def lajob(who: Runs, job_id: int, via_dispatcher: bool = False) -> JobInfo:
    """``hConnect lajob:ID`` (``-T``: asked of the dispatcher), parsed."""
    argv = ["hConnect", "-T"] if via_dispatcher else ["hConnect"]
    return parse_job(who.run(*argv, f"lajob:{job_id}", check=True).stdout)


def state(who: Runs, job_id: int) -> str:
    """The job's state alone (``running``)."""
    return lajob(who, job_id).state


def status(who: Runs, job_id: int) -> str:
    """The job's state as printed (``running (suspended)``, ``waiting (cluster is ...)``)."""
    return lajob(who, job_id).status


def field(who: Runs, job_id: int, name: str) -> str:
    """One field of the job's lajob, as printed (``field(tm, 3, "exit code") == "0"``)."""
    return lajob(who, job_id).fields.get(name, "")


def wait_state(who: Runs, job_id: int, *states: str, timeout: float = 30) -> JobInfo:
    """Wait until the job is in one of ``states``; its lajob then."""

    def reached() -> JobInfo | None:
        job = lajob(who, job_id)
        return job if job.state in states else None

    return wait_until(reached, timeout, f"job {job_id} of {_name(who)} to be {'/'.join(states)}")


def wait_ended(who: Runs, job_id: int, timeout: float = 60) -> JobInfo:
    """Wait until the job has ended (finished, failed or killed); its lajob then."""
    return wait_state(who, job_id, *ENDED, timeout=timeout)


# --- listings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListingRow:
    """One row of a job listing: its number, the job's id, its owner (in the dispatcher's
    listings of every user), its state and, while pending or running, its host."""

    number: int
    job_id: int
    user: str
    state: str
    host: str
    text: str


def parse_listing(text: str) -> list[ListingRow]:
    """The rows of a job listing (lswjobs, lsrjobs, lsfjobs, findjobs, lsnextjobs ...);
    none for "no waiting jobs" and the like."""
    rows = []
    for line in text.splitlines():
        cells = line.split()
        if cells[:2] == list(LISTING_HEADER):
            continue
        if len(cells) < 3 or not (cells[0].isdigit() and cells[1].isdigit()):
            continue
        at = next((i for i in (2, 3) if i < len(cells) and cells[i] in STATES), None)
        assert at is not None, line
        user = cells[2] if at == 3 else ""
        host = cells[at + 2] if cells[at] in ("pending", "running") and len(cells) > at + 2 else ""
        rows.append(ListingRow(int(cells[0]), int(cells[1]), user, cells[at], host, line))
    return rows


def listed_ids(text: str) -> list[int]:
    """The job ids of a job listing, in its order."""
    ids = []
    for line in text.splitlines():
        cells = line.split()
        if len(cells) > 1 and cells[0].isdigit() and cells[1].isdigit():
            ids.append(int(cells[1]))
    return ids


def jobs(who: Runs, listing: str, via_dispatcher: bool = False) -> list[ListingRow]:
    """``hConnect [-T] LISTING`` (``lswjobs``, ``findjobs:TEXT`` ...), parsed."""
    return parse_listing(td(who, listing) if via_dispatcher else tms(who, listing))


@dataclass
class HostRow:
    name: str
    status: str
    free: int
    max_slots: int
    load: str
    executors: int


def parse_hosts(text: str) -> tuple[str, dict[str, HostRow]]:
    """``hConnect -T lscluster``: the activity line and one row per host."""
    lines = text.splitlines()
    rows = {}
    for line in lines[1:]:
        if line == "no hosts" or line.split()[:2] == list(HOSTS_HEADER):
            continue
        cells = re.split(r"\s{2,}", line.strip())
        found = re.fullmatch(r"(\d+)/(\d+) free", cells[3])
        assert found, line
        free, max_slots = found.groups()
        rows[cells[1]] = HostRow(
            cells[1],
            cells[2],
            int(free),
            int(max_slots),
            cells[4].removeprefix("load "),
            int(cells[5].removeprefix("executors ")),
        )
    return lines[0], rows


def hosts(who: Runs) -> dict[str, HostRow]:
    """``hConnect -T lscluster``, by host name."""
    return parse_hosts(td(who, "lscluster"))[1]


class CLI:
    """One user at a terminal: the functions above as methods of whoever ``who`` is (without
    ``who``, a subclass provides ``run`` and ``name``)."""

    def __init__(self, who: Runs | None = None) -> None:
        self.who = who

    def run(
        self, *argv: str, cwd: Path | None = None, check: bool = False
    ) -> subprocess.CompletedProcess:
        assert self.who is not None, "a CLI without who must define run"
        return self.who.run(*argv, cwd=cwd, check=check)

    @property
    def name(self) -> str:
        return _name(self.who) if self.who is not None else type(self).__name__

    def submit(self, *args: str, cwd: Path | None = None) -> int:
        return submit(self, *args, cwd=cwd)

    def submit_file(self, path: Path | str, *options: str, **kw: Any) -> list[int]:
        return submit_file(self, path, *options, **kw)

    def tms(self, line: str) -> str:
        return tms(self, line)

    def td(self, line: str) -> str:
        return td(self, line)

    def job(self, job_id: int, via_dispatcher: bool = False) -> JobInfo:
        return lajob(self, job_id, via_dispatcher)

    def state(self, job_id: int) -> str:
        return state(self, job_id)

    def wait_state(self, job_id: int, *states: str, timeout: float = 30) -> JobInfo:
        return wait_state(self, job_id, *states, timeout=timeout)

    def jobs(self, listing: str, via_dispatcher: bool = False) -> list[ListingRow]:
        return jobs(self, listing, via_dispatcher)

    def hosts(self) -> dict[str, HostRow]:
        return hosts(self)
