"""The executor's cost of a job: N real jobs through JobRunner, in a reactor, no dispatcher.

Each job is ``/usr/bin/printf x >> MARKER`` run the way the executor runs it (output files
opened, a shepherd that owns the job's tree, the end reported with its exit status); at most
CONCURRENCY run at once, a new one starts as soon as one ends. Prints one JSON line per run:
wall time, jobs/s, and CPU time per job of this process and every process below it (the
runner's own work, the shepherds, the shells): ``getrusage`` of the process and of its reaped
children, taken once everything below it has exited; split into the runner's own
(``runner_cpu``, the executor's share) and everything below it (``below_cpu``: zygote,
shepherds, shells, printf). Figures, not assertions.

    python bench/shepherd.py [--jobs 500] [--concurrency 64] [--launcher spawn,zygote]
                             [--repeat 3] [--floor] [--outputs null|files] [--env small|inherit]

``--launcher``: ``zygote`` (the executor's default: shepherds forked by one helper process,
compiled where ``tm/executor/_shepherd.c`` is built), ``zygote-native`` or ``zygote-python``
(either implementation of it), or ``spawn`` (a fresh ``python -I -S shim.py`` per job, as
before); several, comma-separated, run alternately. ``--floor`` also measures the
machine's floor, a bare fork+exec+wait of the same printf per job, CONCURRENCY at once.
``--outputs files --env inherit``: the jobs' files and environment as in a drain
(``bench/drain_cpu.py``); by default /dev/null and PATH and LANG only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Not bench/ itself on the path: bench/queue.py would hide the standard library's queue.
sys.path[0] = str(Path(__file__).resolve().parent.parent)


LAUNCHERS = ("zygote", "zygote-native", "zygote-python", "spawn")


def cpu_seconds(who: int | None = None) -> float:
    """CPU seconds (user + system) of this process (RUSAGE_SELF), of its reaped children
    (RUSAGE_CHILDREN), or of both."""
    total = 0.0
    for one in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) if who is None else (who,):
        usage = resource.getrusage(one)
        total += usage.ru_utime + usage.ru_stime
    return total


def run_jobs(
    jobs: int,
    concurrency: int,
    launcher: str,
    workdir: Path,
    outputs: str = "null",
    env_of: str = "small",
) -> dict[str, Any]:
    """One run in a child process of its own, so that its reactor and rusage start afresh."""
    import inspect

    from twisted.internet import defer
    from twisted.internet import reactor as _reactor

    from tm.executor.runner import JobEnd, JobRunner, RunRequest

    reactor: Any = _reactor
    marker = workdir / "marker"
    marker.write_bytes(b"")
    kwargs: dict[str, Any] = {"log_dir": str(workdir / "logs")}
    if "launcher" in inspect.signature(JobRunner.__init__).parameters:
        kwargs["launcher"] = launcher
    elif launcher != "spawn":
        raise SystemExit("this checkout has only the spawn launcher")
    runner = JobRunner(reactor, reactor, **kwargs)
    command = f"/usr/bin/printf x >> {marker}"
    env = {"PATH": "/usr/bin:/bin", "LANG": "C"} if env_of == "small" else dict(os.environ)
    out = "/dev/null" if outputs == "null" else None  # None: ID.out and ID.err in the log dir
    result: dict[str, Any] = {}
    failures: list[str] = []

    async def drive() -> None:
        done: defer.Deferred[None] = defer.Deferred()
        state = {"next": 0, "ended": 0, "running": 0}

        def ended(end: JobEnd) -> None:
            state["running"] -= 1
            state["ended"] += 1
            if end.exit_code != 0:
                failures.append(end.reason)
            if state["ended"] == jobs:
                done.callback(None)
            else:
                launch()

        def launch() -> None:
            while state["next"] < jobs and state["running"] < concurrency:
                state["next"] += 1
                state["running"] += 1
                request = RunRequest(
                    job_id=state["next"],
                    attempt=1,
                    command=command,
                    cwd=str(workdir),
                    env=env,
                    stdout=out,
                    stderr=out,
                )
                d = runner.start(request, ended)
                d.addErrback(lambda f: failures.append(f.getErrorMessage()))

        own0 = cpu_seconds(resource.RUSAGE_SELF)
        cpu0, t0 = cpu_seconds(), time.monotonic()
        launch()
        await done
        wall = time.monotonic() - t0
        stop = getattr(runner, "stop", None)
        if stop is not None:
            await stop()  # the zygote exits: its whole tree's CPU lands in RUSAGE_CHILDREN
        cpu = cpu_seconds() - cpu0
        own = cpu_seconds(resource.RUSAGE_SELF) - own0
        result.update(
            wall_s=round(wall, 3),
            jobs_per_s=round(jobs / wall, 1),
            cpu_ms_per_job=round(cpu * 1000 / jobs, 2),
            runner_cpu_ms_per_job=round(own * 1000 / jobs, 2),
            below_cpu_ms_per_job=round((cpu - own) * 1000 / jobs, 2),
        )

    def main() -> None:
        d = defer.ensureDeferred(drive())
        d.addErrback(lambda f: failures.append(f.getTraceback()))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    reactor.run()
    written = marker.stat().st_size
    if failures or written != jobs:
        raise SystemExit(f"{len(failures)} failures, {written}/{jobs} bytes: {failures[:3]}")
    return result


def floor(jobs: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    """fork+exec+wait of the same printf, ``concurrency`` at once, no shell, no shepherd."""
    marker = workdir / "floor"
    cpu0, t0 = cpu_seconds(), time.monotonic()
    running: list[subprocess.Popen[bytes]] = []
    started = 0
    with open(marker, "ab") as out:
        while started < jobs or running:
            while started < jobs and len(running) < concurrency:
                running.append(
                    subprocess.Popen(["/usr/bin/printf", "x"], stdout=out, close_fds=False)
                )
                started += 1
            running.pop(0).wait()
    wall = time.monotonic() - t0
    cpu = cpu_seconds() - cpu0
    return {
        "wall_s": round(wall, 3),
        "jobs_per_s": round(jobs / wall, 1),
        "cpu_ms_per_job": round(cpu * 1000 / jobs, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--launcher",
        default="zygote",
        help="zygote, zygote-native, zygote-python, spawn; comma-separated (run alternately)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--floor", action="store_true")
    parser.add_argument(
        "--outputs",
        choices=("null", "files"),
        default="null",
        help="the jobs' stdout and stderr: /dev/null, or the executor's default files "
        "(ID.out, ID.err removed when empty, in one log directory), as in a drain",
    )
    parser.add_argument(
        "--env",
        choices=("small", "inherit"),
        default="small",
        help="the jobs' environment: PATH and LANG, or this process's whole environment",
    )
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tm-bench-shepherd-") as tmp:
        if args.one:
            print(
                json.dumps(
                    run_jobs(
                        args.jobs,
                        args.concurrency,
                        args.launcher,
                        Path(tmp),
                        args.outputs,
                        args.env,
                    )
                )
            )
            return
        if any(name not in LAUNCHERS for name in args.launcher.split(",")):
            parser.error("--launcher: " + ", ".join(LAUNCHERS) + ", comma-separated")
        launchers = args.launcher.split(",")
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in launchers}
        for _ in range(args.repeat):
            for name in launchers:  # alternating, so that a change of load hits both
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--one",
                        "--jobs",
                        str(args.jobs),
                        "--concurrency",
                        str(args.concurrency),
                        "--launcher",
                        name,
                        "--outputs",
                        args.outputs,
                        "--env",
                        args.env,
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                run = json.loads(out.strip().splitlines()[-1])
                print(json.dumps({"launcher": name, **run}), flush=True)
                runs[name].append(run)
        for name, done in runs.items():
            median = {key: statistics.median(r[key] for r in done) for key in done[0]}
            print(
                json.dumps(
                    {
                        "launcher": name,
                        "jobs": args.jobs,
                        "concurrency": args.concurrency,
                        "median": median,
                        "loadavg": os.getloadavg()[0],
                    }
                )
            )
        if args.floor:
            floors = [floor(args.jobs, args.concurrency, Path(tmp)) for _ in range(args.repeat)]
            print(
                json.dumps(
                    {
                        "floor_median": {
                            key: statistics.median(f[key] for f in floors) for key in floors[0]
                        }
                    }
                )
            )


if __name__ == "__main__":
    main()
