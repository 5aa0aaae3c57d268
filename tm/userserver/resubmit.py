"""``hConnect resubmit:ID`` / ``resubmit:group:G[:failed]``: copies of ended jobs, made by the
user's TMS (issue 11, point 3).

A copy needs a fresh signature, and only the user's TMS holds the user's key: so the TMS
reads each ended job from the dispatcher (``GetJob``: its spec and its sealed environment),
checks that the job is one the user signed (the same check as the executor's: the
dispatcher and the database cannot make the TMS sign a job the user never submitted),
opens the environment, and submits the copies with new uuids, signed now -- grouped by
directory, umask and environment, one submission each. Everything is checked before
anything is submitted: one refusal, nothing submitted.

A copy keeps the job's spec (command, shell, slots, priority, group, info, outputs,
excluded hosts, estimates, retries) but not its on-end callback: that is not covered by
the job's signature, so a copy carrying it would run a command the user never signed; give
it again with ``hRunJob --on-end``. Only the user's own jobs can be copied -- an admin
included: another user's job is signed with that user's key, and its environment sealed
with it.
"""

from __future__ import annotations

import json
import math
import uuid as uuid_module
from collections.abc import Awaitable, Callable
from typing import Any

from tm.core import jobfields
from tm.core.dependencies import ids_text, parse_ids
from tm.core.model import JobState
from tm.protocol import commands

ENDED = [s.value for s in JobState if s.terminal]
#: ``:failed``: the endings that are not a success nor the user's own kill.
UNSUCCESSFUL = [s for s in ENDED if s not in (JobState.FINISHED.value, JobState.KILLED.value)]
#: The most jobs one resubmission copies.
MAX_JOBS = 10_000

Call = Callable[..., Awaitable[Any]]


async def job_ids_of_group(call: Call, group: str, failed_only: bool) -> list[int]:
    """The user's ended (``failed_only``: unsuccessful) jobs of ``group``, by id."""
    ids: list[int] = []
    after = 0
    while True:
        answer = await call(
            commands.ListJobs,
            states=UNSUCCESSFUL if failed_only else ENDED,
            scope="mine",
            group=group,
            after_id=after,
            limit=1000,
        )
        ids.extend(int(j["id"]) for j in answer["jobs"])
        if len(ids) > MAX_JOBS:
            raise commands.InvalidRequest(
                f"group {group!r} has more than {MAX_JOBS} such jobs: resubmit fewer at once"
            )
        after = answer.get("next_after_id")
        if after is None or not answer["jobs"]:
            return ids


def copy_row(job: dict[str, Any]) -> dict[str, Any]:
    """The spec of a copy of ``job`` (a GetJob row), as a client sends it: a new uuid, no
    signature yet, no on-end callback. A job of an array stays one (its index, and its
    array's cap: the copy counts against it)."""
    row = {
        f.name: job[f.name]
        for f in jobfields.SPEC_FIELDS
        if jobfields.CHECKED not in f.groups and f.name in job
    }
    row["uuid"] = str(uuid_module.uuid4())
    row["on_end"] = ""
    return row


async def resubmit(
    signer: Any,
    call: Call,
    submit: Callable[[dict[str, Any], list[dict[str, Any]]], Awaitable[dict[str, Any]]],
    now: float,
    job_id: int | None = None,
    group: str | None = None,
    failed_only: bool = False,
) -> dict[str, Any]:
    """Copy the jobs asked for; ``call`` asks the dispatcher, ``submit(kw, rows)`` signs and
    submits one submission. The answer of ResubmitJobs."""
    if (job_id is None) == (group is None):
        raise commands.InvalidRequest("name a job (resubmit:ID) or a group (resubmit:group:G)")
    if job_id is not None:
        ids = [job_id]
    else:
        assert group is not None
        ids = await job_ids_of_group(call, group, failed_only)
        if not ids:
            which = "unsuccessful (failed)" if failed_only else "ended"
            raise commands.InvalidRequest(f"group {group!r} has no {which} jobs of yours")
    submissions: dict[tuple[str, int, str], tuple[dict[str, Any], list[dict[str, Any]]]] = {}
    order: list[tuple[tuple[str, int, str], int]] = []
    for old in ids:
        answer = await call(commands.GetJob, job_id=old)
        job = answer["job"][0]
        state = job["state"]
        if state not in ENDED:
            raise commands.InvalidRequest(
                f"job {old} has not ended ({state}): resubmit it once it has ended"
            )
        sealed = answer.get("sealed_env")
        if job.get("user") != signer.user or not sealed:
            raise commands.PermissionDenied(
                f"job {old} is not yours: only its own user's TMS can sign a copy of it"
            )
        values = {f.name: job[f.name] for f in jobfields.SIGNED_FIELDS}
        problem = signer.key.check(
            values,
            job.get("signature", ""),
            float(job.get("signed_at", 0.0)),
            sealed,
            user=signer.user,
            now=now,
            max_age=math.inf,
        )
        if problem:
            raise commands.InvalidRequest(f"job {old} is not resubmitted: {problem}")
        try:
            env = signer.key.open(signer.user, sealed)
        except ValueError as e:
            raise commands.InvalidRequest(f"job {old} is not resubmitted: {e}") from None
        key = (job["cwd"], int(job["umask"]), json.dumps(env, sort_keys=True))
        if key not in submissions:
            submissions[key] = ({"cwd": job["cwd"], "umask": int(job["umask"]), "env": env}, [])
        rows = submissions[key][1]
        order.append((key, len(rows)))
        rows.append(copy_row(job))
    # Submitted in the order of the old ids, consecutive copies with the same directory,
    # umask and environment together; a copy that waited for a job copied before it now
    # waits for that job's copy (so resubmit:group:G:failed reruns a failed chain in order):
    # such a copy starts a new submission, since a job waits only for jobs submitted before.
    copies: dict[int, int] = {}
    job_ids: list[int] = []
    warnings: list[str] = []
    run: list[dict[str, Any]] = []
    run_old: list[int] = []

    async def send(kw: dict[str, Any]) -> None:
        nonlocal run, run_old
        answer = await submit(kw, run)
        copies.update(zip(run_old, answer["job_ids"], strict=True))
        job_ids.extend(answer["job_ids"])
        warnings.extend(w for w in answer.get("warnings") or [] if w not in warnings)
        run, run_old = [], []

    for n, (key, i) in enumerate(order):
        row = submissions[key][1][i]
        waits_for = {
            d for name in ("after", "after_any") if row.get(name) for d in parse_ids(row[name])
        }
        if run and waits_for & set(run_old):
            await send(submissions[key][0])
        for name in ("after", "after_any"):
            if row.get(name):
                row[name] = ids_text(copies.get(d, d) for d in parse_ids(row[name]))
        run.append(row)
        run_old.append(ids[n])
        if n + 1 == len(order) or order[n + 1][0] != key:
            await send(submissions[key][0])
    return {"job_ids": job_ids, "old_ids": ids, "warnings": warnings}
