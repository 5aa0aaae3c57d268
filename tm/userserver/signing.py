"""The TMS's side of signed jobs: it seals each submission's environment and signs each job
with its user's key (tm/jobsign.py) before the submission leaves for the dispatcher, and opens
the environment in the answers about its user's own jobs.

Both doors of the TMS (its TLS port and its Unix socket) submit through :func:`submit`, which
signs each job as it cuts the submission into chunks that fit one AMP value: one HMAC per
job, no second encoding pass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.protocols import amp

from tm import jobsign
from tm.protocol import commands, jobtable, records
from tm.protocol.base import one_line

#: Sealed environments kept for reuse: submissions from one shell share one environment, which
#: is then stored once.
SEALED_CACHE = 16


class Signer:
    """The user's key as the TMS uses it: made at the TMS's start when there is none."""

    def __init__(self, key: jobsign.JobKey, user: str, clock: Any) -> None:
        self.key = key
        self.user = user
        self.clock = clock
        self._sealed: dict[str, str] = {}

    def seal(self, env: dict[str, str]) -> str:
        plain = json.dumps(env, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(plain.encode("utf-8", "surrogatepass")).hexdigest()
        sealed = self._sealed.get(digest)
        if sealed is None:
            sealed = self.key.seal(self.user, env)
            if len(self._sealed) >= SEALED_CACHE:
                self._sealed.pop(next(iter(self._sealed)))
            self._sealed[digest] = sealed
        return sealed

    def submission(self, cwd: str, umask: int, env: Any) -> tuple[str, Callable[[Any], dict]]:
        """The sealed environment of a submission, and the function that makes the signed row
        of one of its jobs (from the row a client sent)."""
        try:
            environment = records.environment_from_amp({"cwd": cwd, "umask": umask, "env": env})
        except (ValueError, TypeError, KeyError) as e:
            raise commands.InvalidRequest(str(e)) from None
        problem = records.environment_problem(environment)
        if problem:
            raise commands.InvalidRequest(problem)
        sealed = self.seal(dict(environment.env))
        signed_at = float(int(self.clock.seconds()))
        signer = self.key.submission(self.user, cwd, umask, sealed, signed_at)

        def signed_row(row: Any) -> dict:
            if not isinstance(row, dict):
                raise ValueError("a job must be an object")
            return {**row, "signature": signer.sign(row), "signed_at": signed_at}

        return sealed, signed_row

    def open_answer(self, answer: dict[str, Any]) -> dict[str, Any]:
        """GetJob's answer as the client gets it: the environment opened, when the dispatcher
        sent it sealed (only for the user's own jobs)."""
        answer = dict(answer)
        sealed = answer.pop("sealed_env", None)
        if sealed:
            try:
                answer["env"] = self.key.open(self.user, sealed)
            except ValueError:
                answer["env"] = None  # sealed with a key replaced since: not shown
        return answer


async def submit(
    signer: Signer,
    kw: dict[str, Any],
    jobs: list[Any],
    send: Callable[..., Awaitable[Any]],
    start: Callable[[Any], Awaitable[Any]] | None = None,
    pause: Callable[[], Awaitable[Any]] | None = None,
    tables: bool = True,
    tables_refused: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Sign and send a submission of any size (``kw``: its arguments but the jobs): in chunks
    that each fit one AMP value, each sent by ``send`` until acknowledged.

    With ``tables``, a chunk is one table (``jobs_table``: SubmitJobTable, about three times
    the jobs of a chunk of rows); when the dispatcher does not know that command
    (UnhandledCommand), ``tables_refused`` is called and the chunk and the rest go as rows
    (``jobs``: SubmitJobs), with the same UUIDs.

    With ``start`` (which runs a send at once, as ``ensureDeferred`` does) and ``pause``
    (which lets the chunk just sent leave), the next chunk is signed and encoded while the
    dispatcher stores this one; chunks are still sent one at a time, in order, each after
    the previous one is acknowledged."""
    sealed, signed_row = signer.submission(kw["cwd"], kw["umask"], kw["env"])
    base = {"cwd": kw["cwd"], "umask": kw["umask"], "env": {}, "sealed_env": sealed}
    ids: list[int] = []
    warnings: list[str] = []
    use_tables = tables

    def fit(rest: list[Any]) -> tuple[dict[str, Any], int]:
        first = len(jobs) - len(rest) + 1
        try:
            if use_tables:
                text, n = jobtable.fit_table(rest, signed_row, first, records.MAX_VALUE_BYTES)
                part: dict[str, Any] = {"jobs_table": text}
            else:
                rows, n = records.fit_to_value(records.JOB_SPEC_FIELDS, rest, signed_row)
                part = {"jobs": rows}
        except jobtable.TableError as e:
            raise commands.InvalidRequest(f"bad job: {e}") from None
        except Exception as e:
            raise commands.InvalidRequest(f"bad job: {one_line(e)}") from None
        if n == 0:
            raise commands.InvalidRequest(
                "a job's description is too large to send (shorten the command)"
            )
        return part, n

    rest = jobs
    ready = fit(rest) if rest else None
    while ready is not None:
        part, n = ready
        these = rest  # this chunk's jobs and those after it
        rest = rest[n:]
        ready = None
        refused: commands.InvalidRequest | None = None
        try:
            if start is None or pause is None or not rest:
                answer = await send(**base, **part)
            else:
                pending = start(send(**base, **part))
                await pause()
                try:
                    ready = fit(rest)
                except commands.InvalidRequest as e:
                    refused = e  # raised once this chunk is acknowledged, as before
                answer = await pending
        except amp.UnhandledCommand:
            if not use_tables:
                raise
            # A dispatcher without SubmitJobTable: this chunk and the rest as rows.
            use_tables = False
            if tables_refused is not None:
                tables_refused()
            rest = these
            ready = fit(rest)
            continue
        except commands.TMError as e:
            if not ids:
                raise
            raise type(e)(
                f"{e}; the first {len(ids)} job(s) of this part were submitted "
                f"as {ids[0]}..{ids[-1]}, the remaining {len(jobs) - len(ids)} "
                "were not"
            ) from None
        ids.extend(answer["job_ids"])
        for warning in answer.get("warnings") or []:
            if warning not in warnings:
                warnings.append(warning)
        if refused is not None:
            raise refused
        if ready is None and rest:
            ready = fit(rest)
    return {"job_ids": ids, "warnings": warnings}
