"""A long queue: the dispatcher's cost per job started with 1 000 and with 100 000 waiting.

Starts a dispatcher (one local host of 64 slots), deactivates the cluster, submits the
waiting jobs with one ``hRunJob -f`` per size, then activates the cluster until ``--run``
more jobs (``true``) have ended and deactivates it again. Prints JSON per queue size:

- ``cpu_ms_per_job_started``: the dispatcher's CPU time (utime + stime from
  /proc/PID/stat) while those jobs started and ended, divided by their number;
- ``rss_mb``: the dispatcher's resident memory (VmRSS) with the queue waiting;
- ``submit_seconds``: the time of the ``hRunJob -f`` of the whole file;
- ``list_seconds``: the time of ``hConnect lswjobs`` listing every waiting job;
- ``submit_cpu`` and ``list_cpu``: the CPU seconds the dispatcher, the TMS and the
  command itself used meanwhile (on a machine shared with other work, the wall-clock
  figures vary with its load; these much less);
- ``load``: the machine's load average (1 min) before each measure.

Figures, not assertions::

    python bench/queue.py [--sizes 1000,100000] [--run 2000] [--database URL]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.processes import Installation, wait_until  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def load() -> float:
    return round(os.getloadavg()[0], 2)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(inst: Installation, pids: dict[str, int], *argv: str) -> tuple[float, dict, str]:
    """Run one command; its wall-clock seconds, the CPU seconds of ``pids`` and of the
    command meanwhile, and its output."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own = children_cpu()
    t0 = time.monotonic()
    out = inst.run(*argv, check=True, timeout=1800).stdout
    wall = time.monotonic() - t0
    cpu = {name: round(cpu_seconds(pid) - before[name], 2) for name, pid in pids.items()}
    cpu["cli"] = round(children_cpu() - own, 2)
    return round(wall, 2), cpu, out


def td(inst: Installation, line: str, timeout: float = 600) -> str:
    return inst.run("hConnect", "-T", line, check=True, timeout=timeout).stdout


def status(inst: Installation) -> dict[str, Any]:
    return json.loads(td(inst, "gettdstatus"))


def lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def measure(inst: Installation, size: int, run: int) -> dict[str, Any]:
    assert inst.dispatcher is not None
    pid = inst.dispatcher.pid
    td(inst, "deactivatecluster")
    marker = inst.work / "ended"
    jobfile = inst.work / f"jobs-{size}.txt"
    # Each job appends a line to the marker file: its end is seen without asking the
    # dispatcher (whose work would count in the figure).
    jobfile.write_text(f"command::echo >> {marker}\n" * size)
    inst.run("hConnect", "ping", check=True)  # the TMS runs before the clock starts
    tms = [p for p in inst.daemon_pids() if "tmserver" in Path(f"/proc/{p}/cmdline").read_text()]
    pids = {"dispatcher": pid, **({"tms": tms[0]} if tms else {})}
    load_submit = load()
    submit, submit_cpu, _ = timed(inst, pids, "hRunJob", "-q", "-f", str(jobfile))
    waiting = status(inst)["waiting jobs"]
    rss = rss_mb(pid)
    load_list = load()
    listed, list_cpu, listing = timed(inst, pids, "hConnect", "lswjobs")
    result = {
        "waiting": waiting,
        "rss_mb": round(rss, 1),
        "submit_seconds": submit,
        "submit_cpu": submit_cpu,
        "load_at_submit": load_submit,
        "list_seconds": listed,
        "list_cpu": list_cpu,
        "load_at_list": load_list,
        "listed_lines": listing.count("\n"),
    }
    if run == 0:  # --run 0: the submission and the listing only
        return result
    cpu0 = cpu_seconds(pid)
    td(inst, "activatecluster")
    wait_until(lambda: lines(marker) >= run, 1800, f"{run} jobs to end", interval=0.05)
    td(inst, "deactivatecluster")

    def settled() -> bool:
        s = status(inst)
        return s["pending jobs"] + s["running jobs"] == 0

    wait_until(settled, 600, "the placed jobs to end", interval=0.5)
    cpu1 = cpu_seconds(pid)
    started = lines(marker)
    return result | {
        "jobs_started": started,
        "cpu_ms_per_job_started": round(1000 * (cpu1 - cpu0) / max(1, started), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000,100000")
    p.add_argument(
        "--run",
        type=int,
        default=2000,
        help="jobs started per measure (0: the submission and the listing only)",
    )
    p.add_argument("--database", default=None, help="mysql://... (default: SQLite)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        # A fresh dispatcher per size: the figures of one size do not carry the other's history.
        with tempfile.TemporaryDirectory(prefix="tm-bench-queue-") as tmp:
            if args.database:  # an empty database per size, as for SQLite
                from bench.peers import reset_mysql

                reset_mysql(args.database)
            inst = Installation(Path(tmp), database_url=args.database)
            (inst.etc / "cluster.tab").write_text(
                "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\t"
                "additional_info\tallow_info_server\tinfo_server_port\tactive\n"
                f"local\t{socket.gethostname()}\t64\t64\t\tFalse\t0\tTrue\n"
            )
            try:
                inst.start_dispatcher()
                results.append(measure(inst, size + args.run, args.run))
            finally:
                inst.cleanup()
    print(
        json.dumps(
            {"database": "mysql" if args.database else "sqlite", "results": results}, indent=2
        )
    )


if __name__ == "__main__":
    main()
