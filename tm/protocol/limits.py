"""The documented limits of a submission, and the checks against them.

Without Twisted, so that the command-line client can check a job before it sends it (see
:mod:`tm.cli.hrunjob`); :mod:`tm.protocol.records` re-exports every name for the rest of
the system.
"""

from __future__ import annotations

import math

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (the CLI's fast path)
if TYPE_CHECKING:  # the CLI's fast path checks its PlainSpecs without importing the model
    from typing import Any

    from tm.core.model import JobEnvironment, JobSpec
    from tm.core.plainspec import PlainSpec

#: AMP refuses values of 65 535 bytes or more; keep headroom for the encoding.
MAX_VALUE_BYTES = 60_000
# --- limits on what a submission may carry (checked by the dispatcher; README "Limits") ---
#: Command texts longer than this are refused at submission (one job must fit a value).
MAX_COMMAND_BYTES = 16_000
#: A submission's client-made uuid; the database column is VARCHAR(36).
MAX_UUID_CHARS = 36
#: The job's group name (``-g``); the database column is VARCHAR(255).
MAX_GROUP_CHARS = 255
#: The job's info text (``-i``).
MAX_INFO_BYTES = 4_000
#: Each of the ``-o``/``-O``/``-l`` paths, and the submission directory.
MAX_PATH_BYTES = 4_096
#: The shell's path (``-s``); the database column is VARCHAR(255).
MAX_SHELL_CHARS = 255
#: Excluded hosts (``-E``): how many, and each name's length.
MAX_EXCLUDED_HOSTS = 1_000
MAX_HOST_NAME_CHARS = 255
#: The submission environment, encoded as JSON (it travels as one AMP value).
MAX_ENVIRONMENT_BYTES = 48_000
#: The same sealed by the TMS (tm/jobsign.py: base64 of the encrypted JSON, 4/3 of its size):
#: still one AMP value (65 535 bytes) and one MySQL TEXT.
MAX_SEALED_ENVIRONMENT_CHARS = 65_000
#: Slots of one job (``-c``).
MAX_SLOTS = 100_000
#: Estimated run time (``-t``, seconds: 10 years) and memory (``-m``, MB: 1 EB).
MAX_ESTIMATED_TIME = 10 * 365 * 86_400.0
MAX_ESTIMATED_MEMORY = 1e12
MAX_TIME_LIMIT = MAX_ESTIMATED_TIME  # tm/core/jobtime.py's
#: Listings carry at most this much of a command.
LISTING_COMMAND_CHARS = 120


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _over(text: str, limit: int) -> bool:
    """``text`` takes more than ``limit`` bytes of UTF-8 (not encoded when it cannot: a
    character takes at most 4; a bulk submission checks five texts of each job)."""
    return len(text) * 4 > limit and _nbytes(text) > limit


def spec_problem(
    spec: JobSpec | PlainSpec, min_priority: int = 0, max_priority: int = 127
) -> str | None:
    """The first way ``spec`` breaks a documented limit, as one line, or None.

    The dispatcher refuses such a submission with this line; a client may call it
    before sending, so that it can say the same without a round trip.
    """

    if not spec.uuid or len(spec.uuid) > MAX_UUID_CHARS:
        return f"a job's uuid must have 1 to {MAX_UUID_CHARS} characters"
    if not spec.command.strip():
        return "the command is empty: say what the job should run"
    if _over(spec.command, MAX_COMMAND_BYTES):
        return (
            f"the command is {_nbytes(spec.command)} bytes, more than the limit of "
            f"{MAX_COMMAND_BYTES}: put it in a script and run the script"
        )
    if "\0" in spec.command:
        return "the command contains a NUL byte, which no shell can run"
    if isinstance(spec.slots, bool) or not isinstance(spec.slots, int):
        return f"slots must be a whole number, not {spec.slots!r}"
    if not 1 <= spec.slots <= MAX_SLOTS:
        return f"a job needs between 1 and {MAX_SLOTS} slots, not {spec.slots}"
    if not min_priority <= spec.priority <= max_priority:
        return f"priority {spec.priority} is out of range {min_priority}..{max_priority}"
    if len(spec.group) > MAX_GROUP_CHARS:
        return f"the group name is longer than {MAX_GROUP_CHARS} characters"
    if _over(spec.info, MAX_INFO_BYTES):
        return f"the info text is longer than {MAX_INFO_BYTES} bytes"
    for label, path in (
        ("-o (stdout)", spec.stdout),
        ("-O (stderr)", spec.stderr),
        ("-l (log file)", spec.logfile),
    ):
        if _over(path, MAX_PATH_BYTES):
            return f"the {label} path is longer than {MAX_PATH_BYTES} bytes"
        if "\0" in path:
            return f"the {label} path contains a NUL byte"
    if len(spec.shell) > MAX_SHELL_CHARS:
        return f"the shell's path is longer than {MAX_SHELL_CHARS} characters"
    if "\0" in spec.shell:
        return "the shell's path contains a NUL byte"
    if len(spec.excluded_hosts) > MAX_EXCLUDED_HOSTS:
        return f"more than {MAX_EXCLUDED_HOSTS} excluded hosts"
    if any(len(h) > MAX_HOST_NAME_CHARS for h in spec.excluded_hosts):
        return f"an excluded host name is longer than {MAX_HOST_NAME_CHARS} characters"
    for label, value, top, unit in (
        ("estimated time", spec.estimated_time, MAX_ESTIMATED_TIME, "s"),
        ("estimated memory", spec.estimated_memory, MAX_ESTIMATED_MEMORY, "MB"),
    ):
        if value is None:
            continue
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= top:
            return f"the {label} must be between 0 and {top:.0f} {unit}, not {value!r}"
    limit = spec.time_limit
    if limit is not None and not (
        isinstance(limit, (int, float)) and math.isfinite(limit) and 0 < limit <= MAX_TIME_LIMIT
    ):
        return f"the time limit must be more than 0 and at most {MAX_TIME_LIMIT:.0f} s"
    problem = None
    if spec.retries is not None or spec.retry_on_exit or spec.on_end:
        from tm.core import retry  # only for jobs that use them: a lighter CLI start

        problem = retry.spec_problem(spec.retries, spec.retry_on_exit, spec.on_end)
    if problem is None and (
        spec.array_index is not None or spec.array_cap is not None or spec.array_id
    ):
        from tm.core.arrays import array_problem  # only for jobs of arrays: a lighter CLI start

        problem = array_problem(spec)
    return problem


def environment_problem(environment: JobEnvironment) -> str | None:
    """The first way a submission's directory or environment breaks a limit, or None."""
    if len(environment.cwd.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"the submission directory is longer than {MAX_PATH_BYTES} bytes"
    import json  # not on the CLI's fast path, which imports this module

    size = len(json.dumps(environment.env).encode("utf-8", "surrogatepass"))
    if size > MAX_ENVIRONMENT_BYTES:
        return (
            f"the environment is {size} bytes, more than the limit of "
            f"{MAX_ENVIRONMENT_BYTES}: unset large variables before submitting"
        )
    return None


def __getattr__(name: str) -> Any:
    """``spec_to_row``: a job as one row of SubmitJobs (``tm.core.jobfields.spec_to_plain``,
    also ``tm.protocol.records.spec_to_row``), imported when asked for: the CLI's fast path,
    which imports this module, makes its rows without the model (tm/core/plainspec.py)."""
    if name == "spec_to_row":
        from tm.core import jobfields

        return jobfields.spec_to_plain
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
