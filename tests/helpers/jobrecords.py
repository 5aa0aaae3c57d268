"""What jobs record about themselves: when they started and ended, on which host, with how
many slots -- the ground truth the tests compare TaskManager's own answers with.

A job calls the recorder script (:func:`write_recorder`) at its start and end; it appends
``start <ns> <host> <slots>`` and ``end <ns> <host> <slots>`` (times from ``date +%s%N``, the
host as the job's executor names it) to ``<dir>/<TM_JOB_ID>.times``. In the integration tests
every host is this machine, so the host is found the way a job can: by walking up its process
tree to the executor (``twistd ... tmmenial --host NAME``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

_RECORDER = r"""#!/bin/sh
# record PHASE SLOTS: append "PHASE <ns> <host> <slots>" to DIR/$TM_JOB_ID.times
host=
p=$$
while [ -z "$host" ] && [ "$p" -gt 1 ] 2>/dev/null; do
    host=$(tr '\0' '\n' < /proc/$p/cmdline 2>/dev/null | sed -n '/^--host$/{n;p;q;}')
    p=$(sed 's/.*) //' /proc/$p/stat 2>/dev/null | cut -d' ' -f2)
done
echo "$1 $(date +%s%N) ${host:-unknown} $2" >> "__DIR__/$TM_JOB_ID.times"
"""


def write_recorder(directory: Path) -> Path:
    """Write the recorder script into ``directory`` (where the records go too)."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "record.sh"
    script.write_text(_RECORDER.replace("__DIR__", str(directory)))
    script.chmod(0o755)
    return script


def recorded(recorder: Path, command: str, slots: int = 1) -> str:
    """``command`` wrapped so that the job records its start before and its end after it."""
    return f"{recorder} start {slots}; {command}; {recorder} end {slots}"


@dataclass(frozen=True)
class Run:
    """One job's run as the job recorded it (times in seconds since the epoch)."""

    job_id: int
    host: str
    slots: int
    start: float
    end: float | None  # None: still running (or killed before it could record its end)


def runs(directory: Path) -> dict[int, Run]:
    """Every run recorded in ``directory``, by job id."""
    found = {}
    for path in directory.glob("*.times"):
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            continue  # the shell has opened the file (>>) and not written its line yet
        starts = [line for line in lines if line[0] == "start"]
        ends = [line for line in lines if line[0] == "end"]
        assert len(starts) == 1 and len(ends) <= 1, f"{path}: {lines}"
        _, at, host, slots = starts[0]
        found[int(path.stem)] = Run(
            int(path.stem), host, int(slots), int(at) / 1e9, int(ends[0][1]) / 1e9 if ends else None
        )
    return found


def run_of(directory: Path, job_id: int) -> Run | None:
    """The job's run, once it has recorded its start."""
    return runs(directory).get(job_id)


def occupied_now(directory: Path) -> dict[str, int]:
    """Slots per host of the jobs that, by their own records, have started and not ended."""
    occupied: dict[str, int] = defaultdict(int)
    for run in runs(directory).values():
        if run.end is None:
            occupied[run.host] += run.slots
    return dict(occupied)


def peak_occupation(directory: Path) -> dict[str, int]:
    """The most slots held at one moment on each host, from the recorded starts and ends.

    A job records its end before it exits and its successor starts only after the dispatcher
    learnt of that exit, so at equal times an end is counted before a start.
    """
    events: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for run in runs(directory).values():
        events[run.host].append((run.start, run.slots))
        if run.end is not None:
            events[run.host].append((run.end, -run.slots))
    peaks = {}
    for host, host_events in events.items():
        level = peak = 0
        for _, delta in sorted(host_events):  # at equal times, negative (end) first
            level += delta
            peak = max(peak, level)
        peaks[host] = peak
    return peaks


def most_jobs_at_once(directory: Path, host: str) -> int:
    """The most jobs (not slots) running at one moment on ``host``."""
    events = []
    for run in runs(directory).values():
        if run.host == host:
            events.append((run.start, 1))
            if run.end is not None:
                events.append((run.end, -1))
    level = peak = 0
    for _, delta in sorted(events):
        level += delta
        peak = max(peak, level)
    return peak
