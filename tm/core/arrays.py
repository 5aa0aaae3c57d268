"""Job arrays: ``hRunJob --array SPEC``, and the cap on how many of an array run at once.

An array is a bulk submission of one command, once per index. Each job carries (fields of
migration 0006, ``tm/core/jobfields.py``):

* ``array_id``: the array's name, a UUID made by hRunJob (not a job's id: those are known only
  once the dispatcher has stored the jobs, and a large array travels in several chunks);
* ``array_index``: its index; signed by the user's TMS, and given to the job as
  ``TM_ARRAY_INDEX`` by the executor, so a dispatcher cannot change it;
* ``array_cap``: how many jobs of the array may be pending or running at once (``%MAX``);
  None for no cap.

The cap enters the pure scheduler as plain data (:class:`ArrayCaps`): for each waiting job of
a capped array its array and cap, and for each capped array how many of its jobs hold slots.
The working set keeps both up to date at each change (:class:`ArrayIndex`), and keeps the
waiting jobs of each capped array in queues of their own (:func:`queue_key`): a pass that finds
an array at its cap gives up on that queue alone (one look per pass), and the user's other
jobs are placed as if the array were not there.

Pure: no I/O, no Twisted (the command line's fast path imports it).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tm.core.model import JobState

#: The most indices one array may have.
MAX_INDICES = 1_000_000
#: The largest index (a signed 32-bit column).
MAX_INDEX = 2**31 - 1

_ITEM = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
HELP = "write e.g. 0-99, 1,3,5-9, 0-999:10 or 0-999%50"


class ArraySpecError(ValueError):
    """An ``--array`` value that cannot be used; the text says what is wrong and the fix."""


@dataclass(frozen=True)
class ArraySpec:
    indices: tuple[int, ...]  # ascending, each once
    cap: int | None = None


def _number(text: str, what: str) -> int:
    value = int(text)
    if value > MAX_INDEX:
        raise ArraySpecError(f"{what} {text} is larger than {MAX_INDEX}")
    return value


def parse_array_spec(text: str) -> ArraySpec:
    """``LIST[%MAX]``; LIST is comma-separated items ``N``, ``A-B`` or ``A-B:STEP``.

    The number of indices is counted before any is made: a huge range is refused at once."""
    spec = text.strip()
    cap: int | None = None
    if "%" in spec:
        spec, _, cap_text = spec.partition("%")
        if not cap_text.isdigit():
            raise ArraySpecError(f"the cap after % must be a whole number, not {cap_text!r}")
        cap = int(cap_text)
        if cap < 1:
            raise ArraySpecError("the cap after % must be at least 1 (it is how many may run)")
    if not spec:
        raise ArraySpecError(f"no indices given: {HELP}")
    ranges: list[range] = []
    total = 0
    for item in spec.split(","):
        m = _ITEM.fullmatch(item.strip())
        if m is None:
            raise ArraySpecError(f"{item.strip()!r} is not an index or a range: {HELP}")
        first = _number(m.group(1), "index")
        last = first if m.group(2) is None else _number(m.group(2), "index")
        step = 1 if m.group(3) is None else int(m.group(3))
        if last < first:
            raise ArraySpecError(
                f"the range {first}-{last} goes down: write the smaller index first ({last}-{first})"
            )
        if step < 1:
            raise ArraySpecError(f"the step of {item.strip()} must be at least 1")
        r = range(first, last + 1, step)
        total += len(r)
        if total > MAX_INDICES:
            raise ArraySpecError(
                f"the array has more than {MAX_INDICES} indices: submit it in parts"
            )
        ranges.append(r)
    indices: set[int] = set()
    for r in ranges:
        for i in r:
            if i in indices:
                raise ArraySpecError(f"index {i} is given twice")
            indices.add(i)
    return ArraySpec(tuple(sorted(indices)), cap)


def substitute(text: str, index: int) -> str:
    """``text`` with each ``{idx}`` replaced by ``index`` (other braces stay, as in job files)."""
    return text.replace("{idx}", str(index)) if "{idx}" in text else text


def array_problem(spec: Any) -> str | None:
    """How a job spec's array fields break a limit, as one line, or None."""
    index, cap, array_id = spec.array_index, spec.array_cap, spec.array_id
    if index is None:
        if cap is not None or array_id:
            return "a job of an array must have an index"
        return None
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_INDEX:
        return f"an array index must be a whole number from 0 to {MAX_INDEX}, not {index!r}"
    if not isinstance(array_id, str) or not 1 <= len(array_id) <= 36:
        return "a job of an array must name its array (1 to 36 characters)"
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        return f"an array's cap must be a whole number of at least 1, not {cap!r}"
    return None


# --- the cap, as the working set keeps it and the scheduler reads it --------------------------

#: A capped array as the indexes name it: (user, array id).
ArrayKey = tuple[str, str]


class ArrayQueue(NamedTuple):
    """The key of a capped array's own waiting queue (one user's jobs of one shape)."""

    shape: Any  # scheduler.Shape
    array: ArrayKey


def queue_key(job: Any, shape: Hashable) -> Hashable:
    """The key of the waiting queue ``job`` belongs to: its shape, or for a job of a capped
    array, its array's own queue of that shape."""
    if job.spec.array_cap is None:
        return shape
    return ArrayQueue(shape, (job.user, job.spec.array_id))


def queue_shape(key: Any) -> Any:
    """The shape of a waiting queue's key (:func:`queue_key`)."""
    return key.shape if isinstance(key, ArrayQueue) else key


class ArrayIndex:
    """Kept by the working set at each change of a job: the pending and running jobs of each
    capped array, and the array and cap of each waiting job of one."""

    def __init__(self) -> None:
        self.active: dict[ArrayKey, int] = {}
        self.members: dict[int, tuple[ArrayKey, int]] = {}

    def add(self, job: Any) -> None:
        cap = job.spec.array_cap
        if cap is None:
            return
        key = (job.user, job.spec.array_id)
        if job.state.holds_slots:
            self.active[key] = self.active.get(key, 0) + 1
        elif job.state is JobState.WAITING:
            self.members[job.id] = (key, cap)

    def remove(self, job: Any) -> None:
        if job.spec.array_cap is None:
            return
        key = (job.user, job.spec.array_id)
        if job.state.holds_slots:
            left = self.active[key] - 1
            if left:
                self.active[key] = left
            else:
                del self.active[key]
        else:
            self.members.pop(job.id, None)

    def caps(self) -> ArrayCaps:
        """What a scheduling pass reads (the live mappings: a pass does not change them)."""
        return ArrayCaps(members=self.members, active=self.active)

    def at_cap(self, job: Any) -> str:
        """Why the waiting ``job`` is held back by its array's cap, or ""."""
        member = self.members.get(job.id)
        if member is None:
            return ""
        key, cap = member
        if self.active.get(key, 0) < cap:
            return ""
        return f"its array has {cap} job(s) pending or running, its cap (%{cap})"


@dataclass(frozen=True)
class ArrayCaps:
    """The caps as plain data: each waiting job of a capped array -> (its array, the cap);
    each capped array -> its jobs holding slots (pending or running)."""

    members: Mapping[int, tuple[ArrayKey, int]] = field(default_factory=dict)
    active: Mapping[ArrayKey, int] = field(default_factory=dict)


class CapGate:
    """One pass's view of the caps: what it placed is counted on top of ``active``."""

    __slots__ = ("active", "members", "placed_now")

    def __init__(self, caps: ArrayCaps | None) -> None:
        self.members = caps.members if caps is not None else {}
        self.active = caps.active if caps is not None else {}
        self.placed_now: dict[ArrayKey, int] = {}

    def full(self, job_id: int) -> bool:
        """The job's array is at its cap: it may not be placed in this pass."""
        member = self.members.get(job_id)
        if member is None:
            return False
        key, cap = member
        return self.active.get(key, 0) + self.placed_now.get(key, 0) >= cap

    def placed(self, job_id: int) -> None:
        member = self.members.get(job_id)
        if member is not None:
            key = member[0]
            self.placed_now[key] = self.placed_now.get(key, 0) + 1


def split_queues(jobs: Iterable[Any], caps: ArrayCaps) -> Any:
    """The waiting queues (``scheduler.WaitingQueues``) of a list of JobViews with each capped
    array's jobs in queues of their own, as the working set keeps them (for tests and
    listings)."""
    from tm.core.scheduler import ListQueues

    class _Split(ListQueues):
        def __init__(self) -> None:
            super().__init__(jobs)
            split: dict[tuple[int, str], dict[Hashable, list[int]]] = {}
            for job_id in sorted(self.views):
                j = self.views[job_id]
                shape = (j.slots, j.excluded)
                member = caps.members.get(job_id)
                key = shape if member is None else ArrayQueue(shape, member[0])
                split.setdefault((j.priority, j.user), {}).setdefault(key, []).append(job_id)
            self._split = split

        def shapes(self, priority: int, user: str) -> Iterable[tuple[Any, Sequence[int]]]:
            queues = self._split.get((priority, user), {})
            return [(queue_shape(k), ids) for k, ids in queues.items()]

    return _Split()
