"""Where each millisecond of one job's path goes: CLI, TMS, dispatcher, database, executor.

    python bench/path.py [--runs 50] [--database sqlite|mysql|URL] [--cli-runs 30] [--keep FILE]

Starts an installation (a dispatcher with one local host of 64 slots, as ``bench/peers.py``)
with ``TM_TRACE`` set, so that every process of the path writes its steps to one trace file
(:mod:`tm.trace`). After a warm-up (the TMS, the executor and its zygote started), runs one
job at a time with ``hRunJob -q --wait /usr/bin/printf x >> MARKER`` on the otherwise idle
system, ``--runs`` times, and prints, for every step of the path, the median time from the
moment the benchmark spawned the CLI, and the median time since the step before: the
breakdown of ``bench/README.md``. A step ``A -> B`` between two processes is a hand-off (the
message, the receiver's wake-up); between two steps of one process, that process's own work.

Then, unless ``--cli-runs 0``, the CLI as whole processes, alternating, each timed from spawn
to exit with the TMS running (no trace): ``python3 -S -c pass`` and ``python3 -c pass`` (the
interpreter's floor here), ``hRunJob -q true``, ``hRunJob -q --wait true``, ``hRunJob
--help``, ``hConnect lswjobs`` (a few jobs waiting: the cluster is deactivated for it).

The console scripts are run directly from the interpreter's scripts directory (not through
a pyenv shim on ``PATH``, which adds a shell and pyenv's own start to every call).
Figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import peers  # noqa: E402
from bench.peers import console_script, prepare_checkout  # noqa: E402
from tests.helpers.processes import Installation, wait_until  # noqa: E402

DEFAULT_MYSQL = "mysql://root@127.0.0.1:3306/tm_bench"
WARM_UP = 5


class Bench:
    def __init__(self, root: Path, database: str, trace_file: Path) -> None:
        url = None if database == "sqlite" else (DEFAULT_MYSQL if database == "mysql" else database)
        if url:
            from bench.peers import reset_mysql

            reset_mysql(url)
        os.environ["TM_TRACE"] = str(trace_file)  # every process of the installation inherits it
        self.trace_file = trace_file
        self.inst = Installation(root, database_url=url)
        (self.inst.etc / "cluster.tab").write_text(
            "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\tadditional_info\t"
            "allow_info_server\tinfo_server_port\tactive\n"
            f"local\t{socket.gethostname()}\t64\t64\t\tFalse\t0\tTrue\n"
        )
        self.inst.start_dispatcher()
        self.hrunjob = console_script("hRunJob")
        self.hconnect = console_script("hConnect")
        self.cpu = 0.0

    def run(self, *argv: str, trace: bool = True) -> float:
        """Run ``argv`` as the user would, in the installation's environment; seconds taken
        (and in ``self.cpu``, the CPU seconds the process used: a figure that other work on
        the machine disturbs less than the wall clock's)."""
        from tm import trace as tm_trace

        env = self.inst.env
        if not trace:
            env.pop("TM_TRACE", None)
        if trace:
            tm_trace.point("bench", "spawn")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        result = subprocess.run(
            list(argv), env=env, cwd=self.inst.work, capture_output=True, text=True, timeout=120
        )
        took = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        if trace:
            tm_trace.point("bench", "exited")
        if result.returncode != 0:
            raise SystemExit(f"{argv} failed ({result.returncode}): {result.stderr}")
        return took

    def close(self) -> None:
        self.inst.cleanup()


def job_command(marker: Path) -> str:
    return f"/usr/bin/printf x >> {marker}"


def read_trace(path: Path, since: int) -> list[tuple[int, str, int, str, str]]:
    from tm.trace import parse_line

    with open(path, encoding="utf-8", errors="replace") as f:
        f.seek(since)
        lines = [parse_line(line) for line in f]
    return sorted(p for p in lines if p is not None)


def runs_of(events: list[tuple[int, str, int, str, str]]) -> list[list[tuple[int, str]]]:
    """The events of each run (from the bench's spawn to its exited), as (ns, "process stage");
    a stage seen again in a run is numbered (#2, ...)."""
    out: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] | None = None
    seen: dict[str, int] = {}
    for ns, process, _pid, stage, _job in events:
        if process == "bench" and stage == "spawn":
            current, seen = [], {}
        if current is None:
            continue
        name = f"{process} {stage}"
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name += f" #{seen[name]}"
        current.append((ns, name))
        if process == "bench" and stage == "exited":
            out.append(current)
            current = None
    return out


def breakdown(runs: list[list[tuple[int, str]]]) -> list[tuple[str, float, float, str]]:
    """Per step (in the order of its median time): name, median ms since the spawn, median
    ms since the step before it in the same run, and where that time went."""
    offsets: dict[str, list[float]] = {}
    for run in runs:
        start = run[0][0]
        for ns, name in run:
            offsets.setdefault(name, []).append((ns - start) / 1e6)
    # Steps seen in most runs only: a rare one (a heartbeat's pass) would blur the order.
    common = {n for n, v in offsets.items() if len(v) >= len(runs) * 0.8}
    order = sorted(common, key=lambda n: statistics.median(offsets[n]))
    rank = {n: i for i, n in enumerate(order)}
    gaps: dict[str, list[float]] = {}
    for run in runs:
        steps = sorted(((rank[n], ns, n) for ns, n in run if n in rank))
        for (_, ns0, _), (_, ns1, n1) in zip(steps, steps[1:], strict=False):
            gaps.setdefault(n1, []).append((ns1 - ns0) / 1e6)
    table = []
    previous = ""
    for name in order:
        process = name.split()[0]
        before = previous.split()[0] if previous else ""
        where = process if before in ("", process) else f"{before} -> {process}"
        gap = statistics.median(gaps[name]) if name in gaps else 0.0
        table.append((name, statistics.median(offsets[name]), gap, where))
        previous = name
    return table


#: Issue 13, point 4: (name, from step, to step) inside the system, without the CLI's start.
SPANS = (
    (
        "submit -> running (the CLI sent it -> the executor has the job's shepherd)",
        "cli submit-sent",
        "executor forked",
    ),
    (
        "end -> --wait returned (the executor reaped the job -> the CLI has the answer)",
        "executor reaped",
        "cli wait-answered",
    ),
    ("the CLI's start (spawned -> its main runs)", "bench spawn", "cli main"),
    ("the CLI's end (its answer -> the process has exited)", "cli wait-answered", "bench exited"),
)


#: The path in segments, each ending at a step (old names of a step after "|"), for a table
#: that stays comparable when steps are added: (segment, its last step).
SEGMENTS = (
    ("spawn -> main() runs (interpreter, imports)", "cli main"),
    ("parse, build the job, connect, send", "cli submit-sent"),
    ("cli -> TMS -> dispatcher (socket, JSON -> AMP, TLS)", "dispatcher SubmitJobs-received"),
    ("the submission committed", "dispatcher submit-committed"),
    ("read back, pass, placed, the placement committed", "dispatcher written-pending"),
    ("RunJob to the executor", "executor start|executor RunJob-received"),
    # Before the shepherds opened the job's files, the executor did, in its thread pool, between
    # "start" and "zygote-sent" (step "files-opened"); the shepherd now does, after the fork.
    ("the start prepared (the files opened, before: thread pool)", "executor zygote-sent"),
    ("zygote: request, fork, files opened by the shepherd, answer", "executor forked"),
    ("the job runs; its end reaped", "executor reaped"),
    ("the end reported to the dispatcher", "dispatcher JobFinished-received"),
    ("the end committed; WaitJob answered; -> TMS -> CLI", "cli wait-answered"),
    ("the CLI exits", "bench exited"),
)


def segments(runs: list[list[tuple[int, str]]]) -> list[tuple[str, float, float]]:
    """The median and tenth percentile of each of SEGMENTS: from the end of the one before
    to its own."""
    out = []
    previous = ["bench spawn"]
    for name, last in SEGMENTS:
        names = last.split("|")
        values = []
        for run in runs:
            seen = {step: ns for ns, step in reversed(run)}
            start = next((seen[n] for n in previous if n in seen), None)
            end = next((seen[n] for n in names if n in seen), None)
            if start is not None and end is not None:
                values.append((end - start) / 1e6)
        values.sort()
        nan = float("nan")
        out.append(
            (
                name,
                statistics.median(values) if values else nan,
                values[len(values) // 10] if values else nan,
            )
        )
        previous = names
    return out


def spans(runs: list[list[tuple[int, str]]]) -> list[tuple[str, float, float]]:
    """The median and the tenth percentile (what a machine free of other work gives, when
    it is not) of each of SPANS over the runs that have both its steps."""
    out = []
    for name, first, last in SPANS:
        values = []
        for run in runs:
            seen = {step: ns for ns, step in reversed(run)}  # the first of each name
            if first in seen and last in seen:
                values.append((seen[last] - seen[first]) / 1e6)
        if values:
            values.sort()
            out.append((name, statistics.median(values), values[len(values) // 10]))
    return out


def print_breakdown(table: list[tuple[str, float, float, str]], runs: int) -> None:
    print(f"\none job's path, {runs} runs of `hRunJob -q --wait CMD`, medians in ms")
    print(f"{'step':<44}{'since spawn':>12}{'since prev':>12}  where")
    for name, offset, gap, where in table:
        print(f"{name:<44}{offset:>12.2f}{gap:>12.2f}  {where}")
    totals: dict[str, float] = {}
    for _, _, gap, where in table:
        totals[where] = totals.get(where, 0.0) + gap
    print("\nsum of the steps' medians, by where the time went")
    for where, total in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {where:<30}{total:>8.2f}")


def script_without_re(directory: Path, name: str, module: str, python: str) -> str:
    """The console script ``name`` as pip >= 25.0 (and uv >= 0.5.19) write it: without the
    ``import re`` of distlib's template, which older pips (a Python 3.11 venv's own pip 23)
    still write. ``re`` (with ``enum``, ``functools`` and ``collections``) costs 3 to 4 ms of
    every start, spent before TaskManager's code runs, which itself does without it."""
    path = directory / name
    path.write_text(
        f"#!{python}\n# -*- coding: utf-8 -*-\nimport sys\nfrom {module} import main\n"
        "if __name__ == '__main__':\n    if sys.argv[0].endswith('.exe'):\n"
        "        sys.argv[0] = sys.argv[0][:-4]\n    sys.exit(main())\n"
    )
    path.chmod(0o755)
    return str(path)


def cli_figures(bench: Bench, runs: int) -> dict[str, tuple[float, float]]:
    python = peers.PYTHON  # this interpreter, or the venv's (--venv)
    marker = bench.inst.work / "cli-marker"
    plain = bench.inst.work / "pip25-scripts"
    plain.mkdir(exist_ok=True)
    hrunjob_plain = script_without_re(plain, "hRunJob", "tm.cli.hrunjob", python)
    hconnect_plain = script_without_re(plain, "hConnect", "tm.cli.hconnect", python)
    commands = {
        "python3 -S -c pass": [python, "-S", "-c", "pass"],
        "python3 -c pass": [python, "-c", "pass"],
        "hRunJob -q true": [bench.hrunjob, "-q", "true"],
        "hRunJob -q --wait CMD": [bench.hrunjob, "-q", "--wait", job_command(marker)],
        "hRunJob --help": [bench.hrunjob, "--help"],
        "hConnect lswjobs (3 waiting)": [bench.hconnect, "lswjobs"],
        "hRunJob -q true, pip>=25 script": [hrunjob_plain, "-q", "true"],
        "hConnect lswjobs, pip>=25 script": [hconnect_plain, "lswjobs"],
    }
    bench.run(bench.hconnect, "-T", "deactivatecluster", trace=False)
    for _ in range(3):
        bench.run(bench.hrunjob, "-q", "true", trace=False)  # waiting jobs for lswjobs
    times: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    try:
        for _ in range(runs):
            for name, argv in commands.items():
                if name.startswith("hRunJob -q --wait"):
                    bench.run(bench.hconnect, "-T", "activatecluster", trace=False)
                    times[name].append(bench.run(*argv, trace=False))
                    cpu[name].append(bench.cpu)
                    bench.run(bench.hconnect, "-T", "deactivatecluster", trace=False)
                else:
                    times[name].append(bench.run(*argv, trace=False))
                    cpu[name].append(bench.cpu)
    finally:
        bench.run(bench.hconnect, "-T", "activatecluster", trace=False)
    return {
        name: (statistics.median(times[name]) * 1000, statistics.median(cpu[name]) * 1000)
        for name in commands
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=50, help="traced single jobs (default 50)")
    p.add_argument("--cli-runs", type=int, default=30, help="runs of each CLI command")
    p.add_argument(
        "--database", default="sqlite", help=f"sqlite, mysql (= {DEFAULT_MYSQL}) or a URL"
    )
    p.add_argument("--keep", default=None, help="copy the trace file here")
    p.add_argument(
        "--venv",
        action="store_true",
        help="run the console scripts from a fresh venv with the checkout installed",
    )
    args = p.parse_args()
    prepare_checkout()
    venv = tempfile.TemporaryDirectory(prefix="path-venv-") if args.venv else None
    if venv is not None:
        peers.make_venv(Path(venv.name))
        print(f"# the console scripts of {peers.PYTHON}")
    with tempfile.TemporaryDirectory(prefix="path-") as tmp:
        root = Path(tmp)
        trace_file = root / "trace"
        bench = Bench(root / "inst", args.database, trace_file)
        try:
            marker = bench.inst.work / "marker"
            for _ in range(WARM_UP):  # the TMS, the executor, its zygote
                bench.run(bench.hrunjob, "-q", "--wait", job_command(marker))
            start = trace_file.stat().st_size
            for i in range(args.runs):
                bench.run(bench.hrunjob, "-q", "--wait", job_command(marker))
                wait_until(
                    lambda i=i: marker.stat().st_size >= WARM_UP + i + 1, 10, "the job's marker"
                )
            runs = runs_of(read_trace(trace_file, start))
            if args.keep:
                shutil.copy(trace_file, args.keep)
            print_breakdown(breakdown(runs), len(runs))
            print(f"\nsegments in ms{'median':>55}{'p10':>8}")
            for name, ms, p10 in segments(runs):
                print(f"  {name:<60}{ms:>8.2f}{p10:>8.2f}")
            print(f"\nspans in ms{'median':>83}{'p10':>8}")
            for name, ms, p10 in spans(runs):
                print(f"  {name:<84}{ms:>8.2f}{p10:>8.2f}")
            if args.cli_runs:
                figures = cli_figures(bench, args.cli_runs)
                print(f"\nwhole processes, TMS running, medians of {args.cli_runs} runs (ms)")
                print(f"  {'':<32}{'wall':>8}{'CPU':>8}")
                for name, (ms, cpu_ms) in figures.items():
                    print(f"  {name:<32}{ms:>8.1f}{cpu_ms:>8.1f}")
        finally:
            bench.close()
    print(f"\nload average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
