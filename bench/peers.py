"""TaskManager side by side with HyperQueue and task-spooler, on the same workloads.

    python bench/peers.py --jobs 1000 [--jobs 10000] [--database sqlite --database mysql]
                          [--repeat 3] [--systems tm,hq,tsp]

Every job is the same small real program: ``/bin/sh -c '/usr/bin/printf x >> MARKER'`` (a
shell and an exec, no builtin-only job), so each job's end is seen in its own marker file, to
the millisecond, without asking the system under test. Workloads, per system:

(a) N jobs submitted in one call (TaskManager: one ``hRunJob -f``; HyperQueue: one job of N
    tasks through its Python API; task-spooler has no bulk call: N ``tsp`` in one shell loop),
    timed until the marker holds N bytes;
(b) N/10 jobs submitted one command each (``hRunJob -q CMD``; HyperQueue: one API submit each;
    ``tsp CMD``), timed until all ran; reported per job;
(c) one job on an idle system: submit -> the job ran (its marker), and the whole
    ``hRunJob --wait`` (HyperQueue: submit + ``wait_for_jobs``; ``tsp -f``);
(d) the CLI's start: ``hRunJob --help`` as a whole process (``tsp -h``; HyperQueue: none here,
    its API lives in the benchmark's process).

Systems and repetitions alternate (tm, hq, tsp, tm, hq, tsp, ...), so a machine that slows
down over the run hurts all of them alike. Prints every figure, then medians and the ratios
TaskManager/peer (for rates, >1 means TaskManager is faster; for times, <1 does). Figures, not
assertions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.helpers.processes import Installation  # noqa: E402

DEFAULT_MYSQL = "mysql://root@127.0.0.1:3306/tm_bench"
#: The interpreter whose console scripts are measured: this one, or a venv's (``--venv``).
PYTHON = sys.executable
POLL = 0.001  # how often the marker file is looked at (a stat, not a query of the system)


def job_command(marker: Path) -> str:
    return f"/usr/bin/printf x >> {marker}"


def wait_marker(marker: Path, size: int, timeout: float) -> float:
    """Seconds until ``marker`` holds ``size`` bytes (monotonic clock), or raise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if marker.stat().st_size >= size:
                return time.monotonic()
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            got = marker.stat().st_size if marker.exists() else 0
            raise RuntimeError(f"only {got} of {size} jobs ran within {timeout:.0f} s")
        time.sleep(POLL)


def console_script(name: str) -> str:
    """The console script ``name`` that pip wrote beside :data:`PYTHON`, else the one on PATH.

    Not a pyenv shim found first on ``PATH``: that is a bash script which starts pyenv before
    the interpreter and adds 80-130 ms to every call on this machine; a venv, ``pipx`` or a
    system install runs the console script directly."""
    direct = Path(PYTHON).parent / name
    if direct.exists():
        return str(direct)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"no {name} installed: pip install . first")
    return found


def prepare_checkout() -> None:
    """This checkout as ``pip install .`` leaves an install (the processes run the checkout's
    code): byte-compiled, even where the environment says PYTHONDONTWRITEBYTECODE (without,
    every start of the CLI compiles its modules again), and the compiled shepherd built
    (without it, the executor falls back to the Python shepherd)."""
    import compileall

    from tests.helpers import native

    compileall.compile_dir(str(REPO / "tm"), quiet=1)

    native.build_in_tree()
    if native.build_error:
        print(f"# WARNING: the compiled shepherd could not be built: {native.build_error}")


def make_venv(where: Path) -> None:
    """A fresh venv with this checkout installed, the way a user installs it: its interpreter
    does not read the base installation's site-packages and their ``.pth`` files."""
    global PYTHON
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    python = where / "bin" / "python"
    # A current pip first, as `pip install --upgrade pip` leaves a user: pip >= 25 writes
    # console scripts without the `import re` of older ones (about 4 ms of every command).
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], capture_output=True
    )
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(REPO)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"pip install {REPO} into {where} failed:\n{done.stderr}")
    PYTHON = str(python)


def floors(rounds: int = 20) -> dict[str, float]:
    """What the machine gives anyone, in ms (medians): the interpreter's start with and without
    ``site``, one job's process tree (``/bin/sh -c printf >> file`` forked, exec'd and waited
    for from Python), and the kernel's CPU for creating one new file where the jobs' output
    files go (the installations' temporary directories). That last one varies: after many files
    were deleted, ext4 scans for a free inode, and it has been seen 20 times dearer."""
    out = {}
    for label, argv in (
        ("python -c pass", [PYTHON, "-c", "pass"]),
        ("python -S -c pass", [PYTHON, "-S", "-c", "pass"]),
    ):
        out[label] = 1000 * statistics.median(
            timed(lambda argv=argv: subprocess.run(argv, check=True)) for _ in range(rounds)
        )
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "marker"
        argv = ["/bin/sh", "-c", job_command(marker)]
        out["sh -c printf (fork+exec+wait)"] = 1000 * statistics.median(
            timed(lambda: subprocess.run(argv, check=True)) for _ in range(rounds * 5)
        )
        t0 = time.process_time()
        for i in range(500):
            os.close(os.open(f"{tmp}/{i}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        out["create one file, CPU"] = (time.process_time() - t0) * 1000 / 500
    return out


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


# --- TaskManager ------------------------------------------------------------------------


class TaskManager:
    name = "tm"

    def __init__(self, root: Path, database: str) -> None:
        url = None if database == "sqlite" else (DEFAULT_MYSQL if database == "mysql" else database)
        if url:
            reset_mysql(url)
        self.inst = Installation(root, database_url=url)
        (self.inst.etc / "cluster.tab").write_text(
            "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\tadditional_info\t"
            "allow_info_server\tinfo_server_port\tactive\n"
            f"local\t{socket.gethostname()}\t64\t64\t\tFalse\t0\tTrue\n"
        )
        self.inst.start_dispatcher()
        self.cli = {"hRunJob": [console_script("hRunJob")]}  # running this checkout's code
        # The first call starts the user's TMS: not part of any figure.
        self.hrunjob("-q", "true", check=True)

    def hrunjob(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return self.inst.run(*self.cli["hRunJob"], *args, check=check, timeout=600)

    def bulk(self, marker: Path, n: int) -> None:
        jobs = marker.with_suffix(".jobs")
        jobs.write_text(f"command::{job_command(marker)}\n" * n)
        self.hrunjob("-q", "-f", str(jobs), check=True)

    def single(self, marker: Path) -> None:
        self.hrunjob("-q", job_command(marker), check=True)

    def single_wait(self, marker: Path) -> None:
        self.hrunjob("-q", "--wait", job_command(marker), check=True)

    def cli_start(self) -> None:
        self.hrunjob("--help", check=True)

    def close(self) -> None:
        self.inst.cleanup()


def reset_mysql(url: str) -> None:
    import pymysql

    rest = url.split("://", 1)[1]
    creds, _, hostpart = rest.rpartition("@")
    user, _, password = creds.partition(":")
    hostport, _, db = hostpart.partition("/")
    host, _, port = hostport.partition(":")
    conn = pymysql.connect(host=host, port=int(port or 3306), user=user, password=password)
    with conn.cursor() as c:
        c.execute(f"DROP DATABASE IF EXISTS `{db}`")
        c.execute(f"CREATE DATABASE `{db}`")
    conn.close()


# --- HyperQueue -------------------------------------------------------------------------


class HyperQueue:
    name = "hq"

    def __init__(self, root: Path) -> None:
        from hyperqueue.cluster import LocalCluster, WorkerConfig

        self.cluster = LocalCluster(server_dir=str(root))
        self.cluster.__enter__()
        self.cluster.start_worker(WorkerConfig(cores=64))
        self.client = self.cluster.client()

    def _job(self, marker: Path, n: int) -> Any:
        from hyperqueue import Job

        job = Job()
        for _ in range(n):
            # Like TaskManager's jobs, each writes its stdout and stderr to files (here the
            # work directory, HyperQueue's default of %{CWD}).
            job.program(["/bin/sh", "-c", job_command(marker)], cwd=marker.parent)
        return job

    def bulk(self, marker: Path, n: int) -> None:
        self.client.submit(self._job(marker, n))

    def single(self, marker: Path) -> None:
        self.client.submit(self._job(marker, 1))

    def single_wait(self, marker: Path) -> None:
        submitted = self.client.submit(self._job(marker, 1))
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # its progress bar
            self.client.wait_for_jobs([submitted])

    cli_start = None

    def close(self) -> None:
        self.cluster.__exit__(None, None, None)


# --- task-spooler -----------------------------------------------------------------------


class TaskSpooler:
    name = "tsp"

    def __init__(self, root: Path) -> None:
        self.tsp = shutil.which("tsp") or shutil.which("ts")
        if self.tsp is None:
            raise RuntimeError("task-spooler is not installed (apt-get install task-spooler)")
        self.env = dict(
            os.environ,
            TS_SOCKET=str(root / "tsp.socket"),
            TS_MAXFINISHED="100000",
            TS_SAVELIST="",
            TMPDIR=str(root),
        )
        self.run("-S", "64")

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.tsp, *args], env=self.env, check=True, capture_output=True)

    def bulk(self, marker: Path, n: int) -> None:
        cmd = job_command(marker)
        script = f'i=0; while [ $i -lt {n} ]; do "$0" /bin/sh -c "$1" >/dev/null; i=$((i+1)); done'
        subprocess.run(["/bin/sh", "-c", script, self.tsp, cmd], env=self.env, check=True)

    def single(self, marker: Path) -> None:
        self.run("/bin/sh", "-c", job_command(marker))

    def single_wait(self, marker: Path) -> None:
        self.run("-f", "/bin/sh", "-c", job_command(marker))

    def cli_start(self) -> None:
        subprocess.run([self.tsp, "-h"], env=self.env, capture_output=True)

    def close(self) -> None:
        subprocess.run([self.tsp, "-K"], env=self.env, capture_output=True)


# --- the workloads ----------------------------------------------------------------------


def measure(system: Any, work: Path, n: int, idle_rounds: int = 5) -> dict[str, float]:
    figures: dict[str, float] = {}
    marker = work / f"{system.name}-bulk-{n}"
    t0 = time.monotonic()
    system.bulk(marker, n)
    figures["a_jobs_per_s"] = n / (wait_marker(marker, n, 3600) - t0)

    marker = work / f"{system.name}-single-{n}"
    m = max(1, n // 10)
    t0 = time.monotonic()
    for _ in range(m):
        system.single(marker)
    figures["b_ms_per_job"] = 1000 * (wait_marker(marker, m, 600) - t0) / m

    running, waited = [], []
    for i in range(idle_rounds):
        marker = work / f"{system.name}-idle-{n}-{i}"
        t0 = time.monotonic()
        system.single(marker)
        running.append(wait_marker(marker, 1, 60) - t0)
        marker = work / f"{system.name}-wait-{n}-{i}"
        waited.append(timed(lambda marker=marker: system.single_wait(marker)))
    figures["c_submit_to_ran_ms"] = 1000 * statistics.median(running)
    figures["c_wait_ms"] = 1000 * statistics.median(waited)
    if system.cli_start is not None:
        figures["d_cli_start_ms"] = 1000 * statistics.median(
            timed(system.cli_start) for _ in range(idle_rounds)
        )
    return figures


def make(name: str, root: Path, database: str) -> Any:
    root.mkdir(parents=True, exist_ok=True)
    if name == "tm":
        return TaskManager(root, database)
    if name == "hq":
        return HyperQueue(root)
    return TaskSpooler(root)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, action="append", help="N (repeatable; default 1000)")
    p.add_argument(
        "--database",
        action="append",
        help=f"sqlite, mysql (= {DEFAULT_MYSQL}) or a mysql:// URL; repeatable",
    )
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--systems", default="tm,hq,tsp")
    p.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    p.add_argument(
        "--venv",
        action="store_true",
        help="run TaskManager's console scripts from a fresh venv with the checkout installed",
    )
    args = p.parse_args()
    prepare_checkout()
    venv = tempfile.TemporaryDirectory(prefix="peers-venv-") if args.venv else None
    if venv is not None:
        make_venv(Path(venv.name))
    print(f"# TaskManager's CLI: {console_script('hRunJob')} (interpreter {PYTHON})")
    print(
        "# floors, ms: "
        + ", ".join(f"{k} {v:.2f}" for k, v in floors().items())
        + f"; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    sizes = args.jobs or [1000]
    databases = args.database or ["sqlite"]
    names = args.systems.split(",")
    results: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    for database in databases:
        for n in sizes:
            for rep in range(args.repeat):
                for name in names:
                    if name != "tm" and database != databases[0]:
                        continue  # the peers have no database: measure them once per size
                    with tempfile.TemporaryDirectory(prefix=f"peers-{name}-") as tmp:
                        root = Path(tmp)
                        system = make(name, root / "sys", database)
                        try:
                            work = root / "work"
                            work.mkdir()
                            figures = measure(system, work, n)
                        finally:
                            system.close()
                    key = (name if name != "tm" else f"tm/{database}", "", n)
                    results.setdefault(key, []).append(figures)
                    print(
                        f"# {key[0]} N={n} rep {rep + 1}: "
                        + ", ".join(f"{k}={v:.1f}" for k, v in figures.items()),
                        flush=True,
                    )
    report(results, sizes)
    if args.json:
        print(json.dumps({f"{k[0]} N={k[2]}": v for k, v in results.items()}, indent=2))


def report(results: dict[tuple[str, str, int], list[dict[str, float]]], sizes: list[int]) -> None:
    medians = {
        k: {f: statistics.median(r[f] for r in runs) for f in runs[0]}
        for k, runs in results.items()
    }
    fields = ["a_jobs_per_s", "b_ms_per_job", "c_submit_to_ran_ms", "c_wait_ms", "d_cli_start_ms"]
    print("\nmedians")
    print(f"{'system':<12}{'N':>7}" + "".join(f"{f:>20}" for f in fields))
    for (name, _, n), m in sorted(medians.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        print(
            f"{name:<12}{n:>7}"
            + "".join(f"{m[f]:>20.1f}" if f in m else f"{'-':>20}" for f in fields)
        )
    print("\nratios TaskManager/peer (a: rate, >1 is faster; b, c, d: time, <1 is faster)")
    for (name, _, n), m in sorted(medians.items()):
        if not name.startswith("tm/"):
            continue
        for (peer, _, pn), pm in sorted(medians.items()):
            if peer.startswith("tm/") or pn != n:
                continue
            parts = [f"{f}={m[f] / pm[f]:.3g}" for f in fields if f in m and f in pm and pm[f]]
            print(f"{name} vs {peer} N={n}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
