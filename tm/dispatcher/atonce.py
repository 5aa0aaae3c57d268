"""Placement at submission (issue 13, point 4): a job that can start at once is placed in the
transaction that stores it, so that one commit covers both, and its start order goes out
right after that commit.

A submission's jobs are placed at once only when nothing could come before them: no queued
waiting job (so no reservation and no one ahead in priority or fair share), no other
submission under way whose jobs will wait, and jobs without dependencies, hold or array cap.
The placement is then the one a pass would make right after the commit: the same pure
scheduler (:func:`tm.core.scheduler.schedule`) decides it, from the same input, with the new
jobs as the only waiting ones. Their slots are claimed (``claimed``, counted as occupied by
every pass) from that decision until the jobs are in the working set, or the submission
failed: no pass meanwhile can give the same slots to another job.

Nothing else changes: the job's history has its "submitted" and "placed on" entries, and a
job placed but not started when the dispatcher stops is ``pending`` in the database, put back
to waiting at start-up as any other placement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from tm import trace
from tm.core import scheduler
from tm.core.model import Job, JobEnvironment, JobSpec, JobState, Transition
from tm.db.queries import environment_text
from tm.dispatcher.core import DispatcherCore

#: uuid -> (host, slots) claimed by one submission.
Claims = dict[str, tuple[str, int]]


def placeable_at_once(spec: JobSpec) -> bool:
    """A job that may be placed in its submission's transaction: nothing but slots make it
    wait (no dependencies, no hold, no array cap)."""
    return not (
        spec.after or spec.after_any or spec.after_group or spec.hold or spec.array_cap is not None
    )


class PlaceAtOnce(DispatcherCore):
    """Deciding, claiming and starting the placements made at submission."""

    #: Submissions under way (their transaction not committed yet) with jobs that will wait.
    waiting_in_flight = 0

    def claim_at_once(self, user: str, specs: list[JobSpec]) -> Claims:
        """Where the jobs of ``specs`` that can start now go (uuid -> (host, slots)), their
        slots claimed; {} when anything may come before them."""
        if (
            not self.cluster_active
            or self.waiting_in_flight
            or self.reservations
            or self.jobs.priorities()
            or not any(placeable_at_once(s) for s in specs)
        ):
            return {}
        inp = self.scheduler_input()
        blocked = set(inp.blocked)
        if user not in self.tms_sessions:  # as scheduler_input does for a waiting user
            blocked |= {(user, h) for h in self.hosts if (user, h) not in self.executors}
        known = self.users.get(user)
        disabled = inp.disabled_users
        if known is None or not known.enabled:
            disabled = disabled | {user}
        # Ids of their own (1, 2, ... in submission order) for the views of the new jobs.
        views = tuple(
            scheduler.JobView(
                id=index + 1,
                user=user,
                slots=spec.slots,
                priority=spec.priority,
                excluded=frozenset(spec.excluded_hosts),
            )
            for index, spec in enumerate(specs)
            if placeable_at_once(spec)
        )
        decision = scheduler.schedule(
            dataclasses.replace(
                inp,
                jobs=views,
                queues=None,
                held=frozenset(),
                blocked=frozenset(blocked),
                disabled_users=disabled,
                reservations={},
                arrays=None,
            )
        )
        claims: Claims = {}
        for view_id, host in decision.placements:
            spec = specs[view_id - 1]
            claims[spec.uuid] = (host, spec.slots)
            self.claimed[host] = self.claimed.get(host, 0) + spec.slots
        return claims

    def release(self, claims: Claims, uuids: Iterable[str] | None = None) -> None:
        """Give back the slots of ``claims`` (of ``uuids`` only, if given)."""
        for uuid in list(claims) if uuids is None else uuids:
            claim = claims.pop(uuid, None)
            if claim is None:
                continue
            host, slots = claim
            left = self.claimed[host] - slots
            if left:
                self.claimed[host] = left
            else:
                del self.claimed[host]

    def placed_at_once(
        self, jobs: Iterable[tuple[Job, Transition]], environment: JobEnvironment
    ) -> None:
        """The jobs placed in their submission's transaction, now committed and in the
        working set as pending: their start orders, sent in this turn."""
        sent = False
        for job, t in jobs:
            trace.point("dispatcher", "placed", job.id)
            trace.point("dispatcher", "written-pending", job.id)
            for observer in self.observers:
                observer.transition(job, t)
            if self.watchers:  # as _transition tells them, once committed
                self.watchers.committed(True, job)
            if job.env_id is not None and job.env_id not in self._environments:
                # What the transaction stored: the start order need not read it back.
                self.remember_environment(job.env_id, environment_text(environment))
            if job.state is JobState.PENDING:
                self._placed(True, job, job.attempt)
                sent = True
        if sent:
            self.start_batches.send_now()
