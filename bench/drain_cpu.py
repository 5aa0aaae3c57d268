"""Where the CPU of a drain goes: per-job CPU of each process of TaskManager's job path.

    python bench/drain_cpu.py [--jobs 1000] [--database sqlite|mysql|URL] [--repeat 1]
                              [--field NAME::VALUE ...]

Starts an installation as ``bench/peers.py`` does (one local host of 64 slots), submits N
jobs (``/usr/bin/printf x >> MARKER`` under ``/bin/sh -c``) with one ``hRunJob -q -f`` and
waits until the marker holds N bytes. Around that window it reads, from ``/proc/PID/stat``,
the CPU time (utime + stime) of the dispatcher, the user's TMS, the executor (TMMS) and the
executor's shepherd zygote, and the CPU of the zygote's reaped children (cutime + cstime:
the shepherds, and through them every shell and job they reaped), plus the ``hRunJob``
process itself (this process's RUSAGE_CHILDREN) and, for MariaDB, ``mariadbd``. Prints one
JSON line per run: wall time, jobs/s, and CPU ms per job of each (``dispatcher_threads`` and
``executor_threads``: the part of that process's figure spent in threads other than its main
thread, e.g. the dispatcher's database thread). ``--field`` adds a field to every job's line
(``stdout::/dev/null``: no output files). ``file_create_ms``: the CPU of creating one file
where the jobs' files go, just before (see :func:`file_create_ms`). ``mariadbd`` is the whole server's CPU: whatever
else uses the same server meanwhile counts too. Figures, not assertions.
The zygote's children are counted once they have been reaped, which every one has by the
time its job's marker byte is written and the next poll of ``/proc`` after it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# Not bench/ itself on the path: bench/queue.py would hide the standard library's queue.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import peers  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def stat_cpu(pid: int) -> tuple[float, float]:
    """(own CPU s, reaped children's CPU s) of ``pid``."""
    data = Path(f"/proc/{pid}/stat").read_bytes()
    fields = data[data.rfind(b")") + 2 :].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / TICK, (cutime + cstime) / TICK


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU s of each thread of ``pid`` other than its main thread, by thread id and name."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        if int(task.name) != pid:
            data = (task / "stat").read_bytes()
            name = data[data.find(b"(") + 1 : data.rfind(b")")].decode()
            fields = data[data.rfind(b")") + 2 :].split()
            found[f"{task.name}:{name}"] = (int(fields[11]) + int(fields[12])) / TICK
    return found


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                data = Path(f"/proc/{name}/stat").read_bytes()
            except OSError:
                continue
            if int(data[data.rfind(b")") + 2 :].split()[1]) == pid:
                found.append(int(name))
    return found


def pid_of(home: Path, pattern: str) -> int:
    (pidfile,) = (home / ".taskmanager").glob(pattern)
    return int(pidfile.read_text())


def mariadbd() -> int | None:
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if Path(f"/proc/{name}/comm").read_text().strip() == "mariadbd":
                    return int(name)
            except OSError:
                pass
    return None


def file_create_ms(where: Path, n: int = 500) -> float:
    """CPU ms to create one empty file in a new directory under ``where``, as the jobs' files
    are. It varies on this machine's ext4 (no journal): an inode allocation there skips every
    inode freed in its group in the last minutes, and other runs' deletions make it up to
    twenty times dearer. The shepherds' figure moves with it."""
    probe = where / "probe"
    probe.mkdir()
    t0 = time.process_time()
    for i in range(n):
        os.close(os.open(probe / f"{i}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    return (time.process_time() - t0) * 1000 / n


def one_run(n: int, database: str, fields: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="drain-cpu-") as tmp:
        root = Path(tmp)
        create = file_create_ms(root)
        (root / "sys").mkdir()
        tm = peers.TaskManager(root / "sys", database)
        try:
            marker = root / "warm"
            tm.single(marker)  # the executor and its zygote exist before the window
            peers.wait_marker(marker, 1, 60)
            assert tm.inst.dispatcher is not None
            procs = {
                "dispatcher": tm.inst.dispatcher.pid,
                "tms": pid_of(tm.inst.home, "tms.pid"),
                "executor": pid_of(tm.inst.home, "tmmenial.*.pid"),
            }
            zygotes = children(procs["executor"])
            if len(zygotes) == 1:
                procs["zygote"] = zygotes[0]
            if database != "sqlite":
                db = mariadbd()
                if db is not None:
                    procs["mariadbd"] = db
            before = {name: stat_cpu(pid) for name, pid in procs.items()}
            threads0 = {w: thread_cpu(procs[w]) for w in ("dispatcher", "executor")}
            cli0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            marker = root / "bulk"
            jobs = marker.with_suffix(".jobs")
            line = f"command::{peers.job_command(marker)}" + "".join(f"\t{f}" for f in fields)
            jobs.write_text(f"{line}\n" * n)
            t0 = time.monotonic()
            tm.hrunjob("-q", "-f", str(jobs), check=True)
            cli1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall = peers.wait_marker(marker, n, 3600) - t0
            time.sleep(0.2)  # the last shepherds reaped
            after = {name: stat_cpu(pid) for name, pid in procs.items()}
            threads = {
                w: {k: v - threads0[w].get(k, 0.0) for k, v in thread_cpu(procs[w]).items()}
                for w in ("dispatcher", "executor")
            }
        finally:
            tm.close()
    ms = 1000 / n
    out: dict[str, float] = {"jobs": n, "wall_s": round(wall, 3), "jobs_per_s": round(n / wall, 1)}
    out["file_create_ms"] = round(create, 3)
    cli = (cli1.ru_utime + cli1.ru_stime) - (cli0.ru_utime + cli0.ru_stime)
    out["hRunJob"] = round(cli * ms, 3)
    total = cli
    for name in procs:
        own = after[name][0] - before[name][0]
        out[name] = round(own * ms, 3)
        total += own
        if name in threads:  # included in the process's figure
            out[f"{name}_threads"] = round(sum(threads[name].values()) * ms, 3)
            print(
                json.dumps({k: round(v * ms, 3) for k, v in threads[name].items()}), file=sys.stderr
            )
        if name == "zygote":
            below = after[name][1] - before[name][1]
            out["shepherd_trees"] = round(below * ms, 3)
            total += below
    out["total"] = round(total * ms, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--database", default="sqlite")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="NAME::VALUE",
        help="a field added to every job's line, e.g. stdout::/dev/null (repeatable)",
    )
    args = p.parse_args()
    peers.prepare_checkout()
    for _ in range(args.repeat):
        print(
            json.dumps({"database": args.database, **one_run(args.jobs, args.database, args.field)})
        )


if __name__ == "__main__":
    main()
