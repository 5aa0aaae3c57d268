"""The responders of a dispatcher session for watching jobs: waiting for many jobs
(``WaitJobs``, pushed: answered when one of them changes) and reading a job's output
through the executor that runs it (``ReadOutput``)."""

from __future__ import annotations

from typing import Any

from tm.core.model import ACTIVE_STATES
from tm.dispatcher.responders import JobResponders
from tm.protocol import commands, watching

#: The longest a WaitJobs may wait for a change (the client asks again after it).
MAX_WAIT = 300.0
#: Explicit ids checked for existence by one strict wait, at most.
MAX_STRICT_IDS = 10_000


def _ranges(value: Any) -> list[tuple[int, int]]:
    if not isinstance(value, list) or len(value) > watching.MAX_WAIT_RANGES:
        raise commands.InvalidRequest(
            f"ranges must be a list of at most {watching.MAX_WAIT_RANGES} [first, last] pairs"
        )
    out = []
    for pair in value:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in pair)
            or not 0 <= pair[0] <= pair[1]
        ):
            raise commands.InvalidRequest(f"bad range of job ids {pair!r}: [first, last]")
        out.append((pair[0], pair[1]))
    return out


def _done(counts: dict[str, int]) -> bool:
    return not any(counts.get(s.value) for s in ACTIVE_STATES)


class WatchResponders(JobResponders):
    @commands.WaitJobs.responder
    async def wait_jobs(
        self,
        ranges: Any,
        known: Any,
        timeout: float,
        group: str | None = None,
        strict: bool | None = None,
    ) -> dict:
        me = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        d = self.dispatcher
        selection = _ranges(ranges)
        if not selection and group is None:
            raise commands.InvalidRequest("name the jobs to wait for: ids, ranges or a group")
        if strict and selection:
            wanted = [i for a, b in selection for i in range(a, b + 1)][: MAX_STRICT_IDS + 1]
            if len(wanted) > MAX_STRICT_IDS:
                raise commands.InvalidRequest(f"more than {MAX_STRICT_IDS} job ids: give a range")
            found = await d.store.existing_ids(me, wanted)
            missing = [i for i in wanted if i not in found]
            if missing:
                raise commands.UnknownJob(f"unknown job {missing[0]}")
        # Watch first, then read: a change committed in between still wakes this wait.
        watch = d.watchers.add(me, selection, group)
        try:
            counts, failed = await d.store.summarise_jobs(me, selection, group)
            if not counts:
                if group is not None:
                    raise commands.InvalidRequest(
                        f"group {group!r} is unknown (you have no job in it): see hConnect lagroups"
                    )
                raise commands.UnknownJob("none of these jobs is yours or known")
            if counts == known and not _done(counts):
                watch.changed.addTimeout(
                    max(0.0, min(timeout, MAX_WAIT)),
                    d.reactor,
                    onTimeoutCancel=lambda _result, _timeout: None,
                )
                await watch.changed
                counts, failed = await d.store.summarise_jobs(me, selection, group)
        finally:
            d.watchers.remove(watch)
        return {"counts": counts, "failed": failed}

    @commands.ReadOutput.responder
    async def read_output(self, job_id: int, stream: str, offset: int, length: int) -> dict:
        """Relayed to the user's executor on the job's host: it reads the file there."""
        job = await self._visible_job(job_id)
        if stream not in ("out", "err"):
            raise commands.InvalidRequest(f"unknown stream {stream!r}: 'out' or 'err'")
        if not job.host:
            raise commands.InvalidRequest(f"job {job_id} has not been placed on a host yet")
        session = self.dispatcher.executors.get((job.user, job.host))
        if session is None:
            raise commands.InvalidRequest(
                f"no executor of {job.user} runs on {job.host} now: the output of job "
                f"{job_id} is there (read it on {job.host})"
            )
        length = max(0, min(length, watching.MAX_READ_BYTES))
        answer = await session.proto.call(
            commands.ReadOutput, job_id=job_id, stream=stream, offset=offset, length=length
        )
        return dict(answer)
