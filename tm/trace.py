"""An opt-in trace of one job's path through every process, to the microsecond.

``TM_TRACE=FILE`` in a process's environment when it starts (the CLI, the TMS, the
dispatcher, the executor; the TMS and the executor inherit it from whoever starts them)
makes :func:`point` append one line per step of a job's path to FILE::

    MONOTONIC_NS PROCESS PID STAGE JOB

``MONOTONIC_NS`` is ``time.monotonic_ns()``: the system-wide ``CLOCK_MONOTONIC``, so lines
of different processes on one host compare. ``JOB`` names the job: its id once it has one,
``u:UUID`` before (the submission's stages), ``-`` for none. Each line is written with one
``write`` on a descriptor opened with ``O_APPEND``, so lines of concurrent processes never
interleave. ``bench/path.py`` reads the file and prints where the time goes.

Without ``TM_TRACE`` a call costs one test of a module-level bool: :func:`point` returns at
once. Standard library only (the CLI's fast path imports it).
"""

from __future__ import annotations

import os
import time

#: Whether this process traces (read once, at import).
ENABLED = bool(os.environ.get("TM_TRACE"))
_fd = -1


def _open() -> int:
    global _fd
    if _fd < 0:
        _fd = os.open(
            os.environ["TM_TRACE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
    return _fd


def point(process: str, stage: str, job: object = "-") -> None:
    """Record that ``process`` reached ``stage`` of ``job``'s path, now (when tracing)."""
    if not ENABLED:
        return
    line = f"{time.monotonic_ns()} {process} {os.getpid()} {stage} {job}\n"
    try:
        os.write(_open(), line.encode("utf-8", "replace"))
    except OSError:
        pass  # a trace must never disturb what it watches


def parse_line(line: str) -> tuple[int, str, int, str, str] | None:
    """One line of a trace file as (ns, process, pid, stage, job); None if malformed."""
    parts = line.split()
    if len(parts) != 5:
        return None
    try:
        return int(parts[0]), parts[1], int(parts[2]), parts[3], parts[4]
    except ValueError:
        return None


#: A batch's trace lines are those of its single command, one for each job it carries: a job's
#: path reads the same whether its start or its end travelled alone or with others.
_SINGLE = {"JobsFinished": "JobFinished", "RunJobs": "RunJob"}


def named_jobs(command: str, message: object) -> tuple[str, list[object]]:
    """The stage name (without ``-sent``/``-received``) and the jobs of the trace lines of
    ``command`` carrying ``message``: every element's job for a batch, else :func:`job_of`'s."""
    if command == "SubmitJobTable" and isinstance(message, dict):
        # SubmitJobs with its jobs as one table (tm/protocol/jobtable.py): traced as it.
        return "SubmitJobs", [_first_uuid_of_table(message.get("jobs_table"))]
    single = _SINGLE.get(command)
    if single is not None and isinstance(message, dict):
        for key in ("ends", "orders"):
            rows = message.get(key)
            if isinstance(rows, list) and rows:
                return single, [r.get("job_id", "-") if isinstance(r, dict) else "-" for r in rows]
    return command, [job_of(message)]


def _first_uuid_of_table(table: object) -> str:
    """``u:UUID`` of a submission table's first job (as :func:`job_of` names a submission)."""
    from tm.protocol import jobtable  # Twisted: not on the CLI's path, which never sends one

    uuid = jobtable.first_uuid(table)
    return "-" if uuid is None else f"u:{uuid}"


def answered_jobs(jobs: list[object], answer: object) -> list[object]:
    """The jobs of the ``-answered`` lines: the answer's own job for a single command, else
    those of the request."""
    job = job_of(answer)
    return jobs if job == "-" or len(jobs) > 1 else [job]


def job_of(message: object) -> object:
    """The job a request's arguments or an answer name, for a trace line: ``job_id``, the
    last of ``job_ids`` or of a batch's ``ends`` / ``orders``, or ``u:UUID`` of the first job
    of a submission; ``-`` for none."""
    if not isinstance(message, dict):
        return "-"
    if message.get("job_id") is not None:
        return message["job_id"]
    ids = message.get("job_ids")
    if isinstance(ids, list) and ids:
        return ids[-1]
    for key in ("ends", "orders"):
        rows = message.get(key)
        if isinstance(rows, list) and rows and isinstance(rows[-1], dict):
            return rows[-1].get("job_id", "-")
    jobs = message.get("jobs")
    if isinstance(jobs, list) and jobs and isinstance(jobs[0], dict):
        return f"u:{jobs[0].get('uuid')}"
    return "-"
