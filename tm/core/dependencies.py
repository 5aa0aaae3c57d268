"""Dependencies between jobs and the rules of holds and priority, as plain data.

Pure: no I/O, no reactor, no clock.

Dependencies (issue 11, point 1)
--------------------------------

A job may wait for other jobs of the same user (any user's, when the admin submits):

* ``after`` (``hRunJob --after 3,4``): each must end ``finished``; if one ends any other way
  (failed, killed, cancelled, removed) the job ends ``cancelled`` at once, the reason naming
  that dependency, and its own dependants likewise;
* ``after_any`` (``--after-any``): each must end, however it ends;
* ``after_group`` (``--after-group G``): every job of the user's group ``G`` submitted
  *before* this one must end ``finished``. Jobs added to ``G`` later are not waited for, so
  the dependency is settled by what existed at submission (and reads the same after a
  restart: the jobs of ``G`` with a smaller id). A job of group ``G`` cannot wait for ``G``.

A dependency names jobs that exist when the job is submitted, so it always points to smaller
ids: a job can never wait for itself, for a job of its own submission, or in a cycle (the
only cycle one can write, a job of group G after group G, is refused); :func:`find_cycle`
checks any graph all the same.

The dispatcher keeps one :class:`DependencyIndex` beside its working set: dependency ->
dependants, and the active jobs of each (user, group). When a job ends, :meth:`~DependencyIndex.ended`
says which dependants are released and which are cancelled (the whole cascade), from the
index alone: nothing walks every job. A job with unmet dependencies stays out of the
scheduler's waiting queues (``WorkingSet.blocked_ids`` is the index's ``unmet``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: hRunJob's fast path parses ids without it
    from sortedcontainers import SortedList

#: Job ids one job may name in ``after`` and ``after_any`` together.
MAX_DEPENDENCIES = 1000
#: Endings remembered for a submission checked while they were written.
RECENT_ENDINGS = 100_000


class DependencyError(ValueError):
    """A dependency that cannot be: the text says what is wrong and how to fix it."""


def parse_ids(text: str, what: str = "--after") -> tuple[int, ...]:
    """``"3,4,7-9"`` -> ``(3, 4, 7, 8, 9)`` (sorted, each once)."""
    ids: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise DependencyError(
                f"{what}: {part!r} is not a job id or a range A-B (write {what} 3,4,7-9)"
            ) from None
        if low < 1 or high < low:
            raise DependencyError(
                f"{what}: {part!r} is not a job id or a range A-B from low to high"
            )
        if high - low >= MAX_DEPENDENCIES or len(ids) + high - low >= MAX_DEPENDENCIES:
            raise DependencyError(
                f"{what}: more than {MAX_DEPENDENCIES} jobs; put them in a group and use "
                "--after-group"
            )
        ids.update(range(low, high + 1))
    return tuple(sorted(ids))


def ids_text(ids: Iterable[int]) -> str:
    """The stored form of a list of ids: ``"3,4,9"``."""
    return ",".join(str(i) for i in sorted(set(ids)))


def find_cycle(edges: Mapping[int, Iterable[int]]) -> list[int] | None:
    """A cycle of ``edges`` (job -> the jobs it waits for) as ``[a, b, ..., a]``, or None.

    Iterative (a long chain does not reach Python's recursion limit)."""
    done: set[int] = set()
    for start in edges:
        if start in done:
            continue
        path = [start]
        on_path = {start}
        stack: list[Iterator[int]] = [iter(edges.get(start, ()))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                node = path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            if nxt in on_path:
                return path[path.index(nxt) :] + [nxt]
            if nxt in done:
                continue
            path.append(nxt)
            on_path.add(nxt)
            stack.append(iter(edges.get(nxt, ())))
    return None


class DependencyIndex:
    """Who waits for whom, and the active jobs of each (user, group)."""

    def __init__(self) -> None:
        #: dependant -> {dependency: any ending will do}; the jobs kept out of the queues
        self.unmet: dict[int, dict[int, bool]] = {}
        #: dependency -> {dependant: any ending will do}
        self.dependants: dict[int, dict[int, bool]] = {}
        #: (user, group) -> the ids of its active jobs
        self.members: dict[tuple[str, str], SortedList] = {}
        #: (user, group) -> the smallest id of a job of it that ended other than finished
        #: since the dispatcher started (the store knows the earlier ones)
        self.bad_groups: dict[tuple[str, str], int] = {}
        #: recently ended jobs -> finished or not (bounded), for a submission checked meanwhile
        self.recent: OrderedDict[int, bool] = OrderedDict()

    # --- membership ---------------------------------------------------------------------

    def joined(self, job_id: int, user: str, group: str) -> None:
        """An active job is known (loaded or submitted)."""
        members = self.members.get((user, group))
        if members is None:
            from sortedcontainers import SortedList

            self.members[user, group] = SortedList((job_id,))
        elif job_id not in members:
            members.add(job_id)

    def members_below(self, user: str, group: str, below: int) -> list[int]:
        """The active jobs of ``(user, group)`` with an id smaller than ``below``."""
        members = self.members.get((user, group))
        return [] if members is None else list(members.irange(maximum=below - 1))

    # --- waiting --------------------------------------------------------------------------

    def wait(self, dependant: int, deps: Mapping[int, bool]) -> None:
        """``dependant`` waits for the active jobs ``deps`` (id -> any ending will do)."""
        if not deps:
            return
        mine = self.unmet.setdefault(dependant, {})
        for dep, any_end in deps.items():
            mine[dep] = mine.get(dep, True) and any_end
            self.dependants.setdefault(dep, {})[dependant] = mine[dep]

    def waits_for(self, job_id: int) -> list[int]:
        return sorted(self.unmet.get(job_id, ()))

    def _drop(self, dependant: int) -> None:
        for dep in self.unmet.pop(dependant, {}):
            others = self.dependants.get(dep)
            if others is not None:
                others.pop(dependant, None)
                if not others:
                    del self.dependants[dep]

    # --- endings --------------------------------------------------------------------------

    def ended(
        self, job_id: int, user: str, group: str, finished: bool, how: str
    ) -> tuple[list[int], list[tuple[int, str]]]:
        """``job_id`` ended (``how``: its state, or "removed"): the dependants released (all
        their dependencies met) and those cancelled, with the reason, the whole cascade in
        order. Ending a job twice (its cancellation applied) changes nothing more."""
        members = self.members.get((user, group))
        if members is not None and job_id in members:
            members.remove(job_id)
            if not members:
                del self.members[user, group]
        if not finished:
            key = (user, group)
            self.bad_groups[key] = min(self.bad_groups.get(key, job_id), job_id)
        self.recent[job_id] = finished
        self.recent.move_to_end(job_id)
        while len(self.recent) > RECENT_ENDINGS:
            self.recent.popitem(last=False)
        self._drop(job_id)  # a job that ends waits for nothing any more
        released: list[int] = []
        cancelled: list[tuple[int, str]] = []
        work = [(job_id, finished, how)]
        while work:
            dep, ok, ending = work.pop()
            for dependant, any_end in sorted(self.dependants.pop(dep, {}).items()):
                mine = self.unmet.get(dependant)
                if mine is None:
                    continue
                if ok or any_end:
                    mine.pop(dep, None)
                    if not mine:
                        del self.unmet[dependant]
                        released.append(dependant)
                    continue
                self._drop(dependant)
                cancelled.append((dependant, f"dependency job {dep} {ending}"))
                work.append((dependant, False, "was cancelled"))
        return released, cancelled

    def ending_of(self, job_id: int) -> bool | None:
        """Whether a job that ended recently finished (None: not remembered)."""
        return self.recent.get(job_id)


# --- holds and priority (issue 11, point 5) ------------------------------------------------


def hold_value(actor: str, as_admin: bool) -> str:
    return f"{'admin' if as_admin else 'user'}:{actor}"


def held_by(hold: str) -> str:
    """``"admin:root"`` -> ``"the admin root"``; ``"user:alice"`` -> ``"alice"``."""
    who, _, name = hold.partition(":")
    return f"the admin {name}" if who == "admin" else name


def hold_problem(hold: str, actor: str, owner: str, as_admin: bool) -> str | None:
    """Why ``actor`` may not hold a job of ``owner`` now held as ``hold``; None if they may.
    ``as_admin``: the actor uses the admin's powers (``hConnect -T`` as an admin)."""
    if owner != actor and not as_admin:
        return "is not yours: you can only hold your own jobs"
    if hold.startswith("admin:") and not as_admin:
        return f"is already held by {held_by(hold)}"
    return None


def release_problem(hold: str, actor: str, owner: str, as_admin: bool) -> str | None:
    """Why ``actor`` may not release a job of ``owner`` held as ``hold``; None if they may."""
    if owner != actor and not as_admin:
        return "is not yours: you can only release your own jobs"
    if not hold:
        return "is not held"
    if hold.startswith("admin:") and not as_admin:
        return f"is held by {held_by(hold)}: only an admin (hConnect -T) can release it"
    return None


def priority_problem(
    old: int, new: int, actor: str, owner: str, as_admin: bool, low: int, high: int
) -> str | None:
    """Why ``actor`` may not set the priority of a job of ``owner`` from ``old`` to ``new``."""
    if not low <= new <= high:
        return f"priority {new} is out of range {low}..{high}"
    if owner != actor and not as_admin:
        return "is not yours: you can only change the priority of your own jobs"
    if new > old and not as_admin:
        return f"has priority {old}: you may lower it, only the admin (hConnect -T) raises it"
    return None
