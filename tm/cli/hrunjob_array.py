"""``hRunJob --array SPEC``: one job per index, submitted in one bulk call as one group.

Split from :mod:`tm.cli.hrunjob` (the everyday path imports it: no Twisted here). The spec's
grammar, the fields each job carries and the cap: :mod:`tm.core.arrays`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from tm.cli.errors import CLIError
from tm.core.plainspec import PlainSpec
from tm.jobfile import compress_ids

if TYPE_CHECKING:  # tm.core.arrays is imported only when --array is given
    from tm.core.arrays import ArraySpec

#: The option values in which ``{idx}`` becomes the job's index (the job's field names).
SUBSTITUTED = ("command", "info", "stdout", "stderr", "logfile")


def array_option(text: str) -> ArraySpec:
    """An argparse type: the parsed ``--array`` value, refused in one line otherwise."""
    from tm.core.arrays import ArraySpecError, parse_array_spec

    try:
        return parse_array_spec(text)
    except ArraySpecError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None


def group_of(array_id: str) -> str:
    """The group of an array submitted without ``-g``: named after the array."""
    return f"array-{array_id[:8]}"


def array_jobs(
    args: argparse.Namespace, command: str, new_uuid: Any, spec_from_options: Any
) -> list[tuple[int, PlainSpec]]:
    """The jobs of ``--array``: (index, spec) each, ``{idx}`` replaced; all in one group
    (``-g``, else :func:`group_of` the array). Sets ``args.group`` to that group."""
    if args.jobsFile is not None:
        raise CLIError("--array and -f cannot be combined: give one of them", status=2)
    from tm.core.arrays import substitute

    spec: ArraySpec = args.array
    array_id = new_uuid()
    if not args.group:
        args.group = group_of(array_id)
    base = vars(args) | {"command": command}
    shells: dict[Any, str] = {}
    jobs = []
    for index in spec.indices:
        options = dict(base)
        for name in SUBSTITUTED:
            options[name] = substitute(base[name], index)
        job = spec_from_options(options, shells)
        job = job.replace(array_id=array_id, array_index=index, array_cap=spec.cap)
        jobs.append((index, job))
    return jobs


def submitted(args: argparse.Namespace, ids: list[int]) -> str:
    """What hRunJob prints once an array is submitted."""
    return (
        f"Jobs [{compress_ids(ids)}] have been submitted to TaskDispatcher as group {args.group}."
    )
