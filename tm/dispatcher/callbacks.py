"""The dispatcher's half of on-end callbacks (issue 11, point 7): it tells the user's TMS
when a job with an ``on_end`` has ended, and keeps, per job, whether its callback ran.

The TMS runs the callback (tm/userserver/callbacks.py). The dispatcher pushes ``JobEnded``
once the end is committed, if the user's TMS is linked; a TMS that was away (or a push that
failed) asks for ``PendingCallbacks`` each time its link comes up: the ended jobs whose
``on_end_done`` is still 0. The TMS says ``CallbackRan`` once it ran one (whatever its
outcome), which sets the flag: a callback runs once, unless the TMS dies while it runs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from tm.core.model import Job
from tm.dispatcher.sessionbase import SessionBase
from tm.protocol import commands, jobends

log = Logger()


def tell_end(written: Any, dispatcher: Any, job: Job) -> Any:
    """After ``job``'s end was committed (``written`` true): push it to its user's TMS."""
    if written and job.spec.on_end:
        session = dispatcher.tms_sessions.get(job.user)
        if session is not None:
            ensureDeferred(_push(session, job))
    return written


async def _push(session: Any, job: Job) -> None:
    try:
        await session.proto.call(jobends.JobEnded, jobs=[jobends.ended_job(job)])
    except Exception as e:
        # Not lost: the TMS asks for pending callbacks when its link comes up again.
        log.info(
            "could not tell {user}'s TMS that job {id} ended: {e}",
            user=job.user,
            id=job.id,
            e=str(e),
        )


class CallbackResponders(SessionBase):
    """What a TMS asks about its user's callbacks."""

    @jobends.PendingCallbacks.responder
    async def pending_callbacks(self, after_id: int) -> dict:
        user = self._require(commands.ROLE_TMS)
        jobs = await self.dispatcher.store.pending_callbacks(
            user, after_id, jobends.ENDS_PER_MESSAGE + 1
        )
        more = len(jobs) > jobends.ENDS_PER_MESSAGE
        jobs = jobs[: jobends.ENDS_PER_MESSAGE]
        return {
            "jobs": [jobends.ended_job(j) for j in jobs],
            "next_after_id": jobs[-1].id if more else None,
        }

    @jobends.CallbackRan.responder
    async def callback_ran(self, job_ids: list[int]) -> dict:
        user = self._require(commands.ROLE_TMS)
        await self.dispatcher.store.set_callbacks_ran(user, job_ids[:1000])
        return {}
