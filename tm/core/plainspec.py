"""A job's spec as plain values: what ``hRunJob`` builds and sends, without the model.

The command line's fast path (hRunJob over the TMS's Unix socket) makes its jobs with
:class:`PlainSpec` instead of :class:`tm.core.model.JobSpec`: importing the model (its
dataclasses, and ``dataclasses`` itself, which imports ``inspect``, ``ast``, ``dis`` and
``tokenize``) would cost every submission several milliseconds of start. A PlainSpec has the
JobSpec's attributes, in its order and with its defaults, so that whatever reads a JobSpec
by attribute (``tm.protocol.limits.spec_problem``, the records' row functions) reads it too;
:meth:`PlainSpec.row` is the row of ``SubmitJobs`` that ``tm.core.jobfields.spec_to_plain``
makes of the same JobSpec. ``tests/unit/test_plainspec.py`` checks the names, order,
defaults and kinds against :mod:`tm.core.jobfields` and the model.

Pure: no I/O, and nothing imported.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # not even typing at run time: the CLI's start pays for each import
    from typing import Any


class PlainSpec:
    """One job of a submission, as :class:`~tm.core.model.JobSpec` has it."""

    uuid: str
    command: str
    shell: str
    slots: int
    priority: int
    group: str
    info: str
    stdout: str
    stderr: str
    logfile: str
    excluded_hosts: tuple[str, ...]
    estimated_time: float | None
    estimated_memory: float | None
    signature: str
    signed_at: float
    after: str
    after_any: str
    after_group: str
    hold: str
    time_limit: float | None
    retries: int | None
    retry_on_exit: str
    on_end: str
    array_id: str
    array_index: int | None
    array_cap: int | None

    def __init__(self, **values: Any) -> None:
        for name in REQUIRED:
            if name not in values:
                raise TypeError(f"PlainSpec needs {name}")
        unknown = values.keys() - DEFAULTS.keys()
        if unknown:
            raise TypeError(f"PlainSpec has no field {sorted(unknown)[0]!r}")
        # Two dict updates, not a setattr per field: hRunJob -f makes one per line.
        attributes = self.__dict__
        attributes.update(DEFAULTS)
        attributes.update(values)

    def values(self) -> dict[str, Any]:
        """Every field's value, by name, in the fields' order."""
        return dict(zip(SPEC_NAMES, map(self.__dict__.__getitem__, SPEC_NAMES), strict=True))

    def replace(self, **changes: Any) -> PlainSpec:
        """A copy with ``changes`` (as ``dataclasses.replace`` makes of a JobSpec)."""
        return PlainSpec(**(self.values() | changes))

    def row(self) -> dict[str, Any]:
        """The job as one row of SubmitJobs (excluded hosts as a list)."""
        out = self.values()
        out["excluded_hosts"] = list(self.excluded_hosts)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PlainSpec):
            return NotImplemented
        return self.values() == other.values()

    __hash__ = None  # type: ignore[assignment]  # mutable, as a dict: not hashable

    def __repr__(self) -> str:
        return "PlainSpec(" + ", ".join(f"{k}={v!r}" for k, v in self.values().items()) + ")"


#: The fields of jobfields.SPEC_FIELDS (JobSpec's attributes), in their order.
SPEC_NAMES: tuple[str, ...] = tuple(PlainSpec.__annotations__)
#: The fields a spec must be given (JobSpec's fields without a default).
REQUIRED = ("uuid", "command")
#: Every field's value when not given: JobSpec's defaults (None for the required ones).
DEFAULTS: dict[str, Any] = {
    "uuid": None,
    "command": None,
    "shell": "/bin/sh",
    "slots": 1,
    "priority": 0,
    "group": "",
    "info": "",
    "stdout": "",
    "stderr": "",
    "logfile": "",
    "excluded_hosts": (),
    "estimated_time": None,
    "estimated_memory": None,
    "signature": "",
    "signed_at": 0.0,
    "after": "",
    "after_any": "",
    "after_group": "",
    "hold": "",
    "time_limit": None,
    "retries": None,
    "retry_on_exit": "",
    "on_end": "",
    "array_id": "",
    "array_index": None,
    "array_cap": None,
}
#: What a user gives for a job (jobfields.GIVEN_FIELDS: hRunJob's options, a job file's keys),
#: each with the type of its values without None (``Field.base``; ``tuple`` for the hosts).
GIVEN: dict[str, type] = {
    "command": str,
    "shell": str,
    "slots": int,
    "priority": int,
    "group": str,
    "info": str,
    "stdout": str,
    "stderr": str,
    "logfile": str,
    "excluded_hosts": tuple,
    "estimated_time": float,
    "estimated_memory": float,
    "after": str,
    "after_any": str,
    "after_group": str,
    "hold": str,
    "time_limit": float,
    "retries": int,
    "retry_on_exit": str,
    "on_end": str,
}
