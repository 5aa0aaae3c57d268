"""Throughput benchmark: a dispatcher with one local host of 64 slots, N trivial jobs in bulk.

Prints JSON: submission rate (jobs/s), time until all N ended, and the latency of one
job on an idle system (submit -> end seen by the client).  Figures, not assertions.

    python bench/throughput.py --jobs 1000 [--database mysql://root@127.0.0.1:3306/tm_bench]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers.processes import Installation  # noqa: E402


async def measure(reactor: Any, n: int, home: Path, workdir: Path) -> dict[str, Any]:
    from tm.cli.common import connect_tms
    from tm.cli.hrunjob import submit
    from tm.core.model import JobSpec
    from tm.protocol import commands

    os.environ["HOME"] = str(home)
    os.chdir(workdir)
    proto = await connect_tms(reactor)

    # Latency of one job on an idle system.
    t0 = time.monotonic()
    [job_id] = await submit(proto, [JobSpec(uuid=str(uuid.uuid4()), command="true")])
    while True:
        answer = await proto.call(commands.WaitJob, job_id=job_id, timeout=60.0)
        if answer["state"] in ("finished", "failed", "killed"):
            break
    latency = time.monotonic() - t0

    specs = [JobSpec(uuid=str(uuid.uuid4()), command="true") for _ in range(n)]
    t0 = time.monotonic()
    ids = await submit(proto, specs)
    submitted = time.monotonic() - t0
    last = max(ids)
    while True:
        status = await proto.call(commands.GetStatus)
        ended = sum(
            c["count"]
            for c in status["user_counts"]
            if c["state"] in ("finished", "failed", "killed")
        )
        if ended >= n + 1:
            break
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.05, lambda: None)
    all_ended = time.monotonic() - t0
    failed = sum(c["count"] for c in status["user_counts"] if c["state"] != "finished")
    return {
        "jobs": n,
        "submission_seconds": round(submitted, 3),
        "submission_rate_jobs_per_s": round(n / submitted, 1),
        "all_ended_seconds": round(all_ended, 3),
        "end_rate_jobs_per_s": round(n / all_ended, 1),
        "idle_latency_seconds": round(latency, 3),
        "not_finished": failed,
        "last_id": last,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--database", default=None, help="mysql://... (default: SQLite)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as tmp:
        inst = Installation(Path(tmp), database_url=args.database)
        (inst.etc / "cluster.tab").write_text(
            "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\tadditional_info\t"
            "allow_info_server\tinfo_server_port\tactive\n"
            f"local\t{socket.gethostname()}\t64\t64\t\tFalse\t0\tTrue\n"
        )
        try:
            inst.start_dispatcher()
            from twisted.internet import task

            result: dict[str, Any] = {}

            async def run(reactor: Any) -> None:
                result.update(await measure(reactor, args.jobs, inst.home, inst.work))

            try:
                task.react(run)
            except SystemExit as e:
                if e.code:
                    raise
            result["database"] = "mysql" if args.database else "sqlite"
            print(json.dumps(result, indent=2))
        finally:
            inst.cleanup()


if __name__ == "__main__":
    main()
