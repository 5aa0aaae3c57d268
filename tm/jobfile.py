"""Job files for ``hRunJob -f``: one job per line, ``field::value`` tokens separated by tabs.

The format is the original TaskManager's::

    # comment lines and empty lines are skipped
    command::./simulate --seed {idx}\tslots::2\tgroup::sweep\tstdout::out.{idx}

A field missing from a line takes the value of the matching command-line option. ``{idx}``
in any value becomes the line's 0-based index in the file, as in the original. Unlike the
original (which ran every value through ``str.format`` and silently dropped lines with other
braces), only ``{idx}`` is replaced, so shell braces such as ``${HOME}`` or ``{a,b}`` pass
through untouched.

Pure: text in, field dictionaries out. Any malformed line raises :class:`JobFileError` with
its line number, so the caller can refuse the whole file before anything is submitted.
Light to import (no dataclasses, no model): ``hRunJob -f`` and ``hConnect`` load it on their
fast paths.
"""

from __future__ import annotations

from tm.core.plainspec import GIVEN

TYPE_CHECKING = False
if TYPE_CHECKING:  # hRunJob -f imports neither typing nor re at run time
    from typing import Any

#: File field name (the seed's spelling, as users write it) -> the job's field
#: (tm/core/jobfields.py; its type: tm/core/plainspec.py's GIVEN), which is also the key of
#: the matching hRunJob option; :data:`ALIASES` maps the command-line option names onto the
#: file's names.
FIELDS: dict[str, str] = {
    "command": "command",
    "slots": "slots",
    "group": "group",
    "infoText": "info",
    "logfile": "logfile",
    "stdout": "stdout",
    "stderr": "stderr",
    "shell": "shell",
    "priority": "priority",
    "estimatedTime": "estimated_time",
    "estimatedMemory": "estimated_memory",
    "excludedHosts": "excluded_hosts",
    # Dependencies and hold (issue 11): after::3,4  afterAny::5  afterGroup::prep  hold::yes
    "after": "after",
    "afterAny": "after_any",
    "afterGroup": "after_group",
    "hold": "hold",
    "timeLimit": "time_limit",
    # Added with migration 0005 (issue 11 points 3 and 7).
    "retries": "retries",
    "retryOnExit": "retry_on_exit",
    "onEnd": "on_end",
}
ALIASES: dict[str, str] = {
    "excludeHosts": "excludedHosts",
    "info": "infoText",
    "info_text": "infoText",
    "stdout_file": "stdout",
    "stderr_file": "stderr",
    "after_any": "afterAny",
    "after_group": "afterGroup",
    "time_limit": "timeLimit",
    "retry_on_exit": "retryOnExit",
    "on_end": "onEnd",
}


class JobFileError(ValueError):
    def __init__(self, path: str, line_no: int, message: str) -> None:
        super().__init__(f"{path}:{line_no}: {message}")
        self.path = path
        self.line_no = line_no
        self.message = message


class JobLine:
    """One job of a job file: its 1-based line number and its option values."""

    __slots__ = ("line_no", "options")

    def __init__(self, line_no: int, options: dict[str, Any]) -> None:
        self.line_no = line_no
        self.options = options

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobLine):
            return NotImplemented
        return (self.line_no, self.options) == (other.line_no, other.options)

    __hash__ = None  # type: ignore[assignment]  # holds a dict

    def __repr__(self) -> str:
        return f"JobLine(line_no={self.line_no!r}, options={self.options!r})"


def parse_job_file(text: str, path: str, defaults: dict[str, Any]) -> list[JobLine]:
    """Parse a job file; ``defaults`` maps option keys (see :data:`FIELDS`) to their values."""
    jobs: list[JobLine] = []
    for index, raw in enumerate(text.splitlines()):
        line_no = index + 1
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        options = dict(defaults)
        seen: set[str] = set()
        for token in raw.split("\t"):
            if not token.strip():
                continue
            name, sep, value = token.partition("::")
            name = name.strip()
            if not sep:
                raise JobFileError(
                    path,
                    line_no,
                    f"{token.strip()!r} is not field::value "
                    "(separate the fields of a line with tabs)",
                )
            name = ALIASES.get(name, name)
            if name not in FIELDS:
                raise JobFileError(
                    path, line_no, f"unknown field {name!r}; the fields are " + ", ".join(FIELDS)
                )
            if name in seen:
                raise JobFileError(path, line_no, f"the field {name!r} is given twice")
            seen.add(name)
            value = value.replace("{idx}", str(index))
            options[FIELDS[name]] = _convert(name, value, path, line_no)
        if "command" not in seen or not str(options["command"]).strip():
            raise JobFileError(path, line_no, "the line has no command (add command::...)")
        jobs.append(JobLine(line_no, options))
    return jobs


def _convert(name: str, value: str, path: str, line_no: int) -> Any:
    """The value of the file's field ``name``, of its job field's type."""
    kind = GIVEN[FIELDS[name]]
    if name == "timeLimit":
        from tm.core.jobtime import TimeLimitError, parse_time_limit  # only when given

        try:
            return parse_time_limit(value)
        except TimeLimitError as e:
            raise JobFileError(path, line_no, str(e)) from None
    if kind is int:
        try:
            return int(value.strip())
        except ValueError:
            raise JobFileError(
                path, line_no, f"{name} must be a whole number, not {value!r}"
            ) from None
    if kind is float:
        try:
            return float(value.strip())
        except ValueError:
            raise JobFileError(path, line_no, f"{name} must be a number, not {value!r}") from None
    if name == "command":
        return value
    if name == "hold":
        word = value.strip().lower()
        if word not in ("yes", "no", "1", "0", "true", "false", ""):
            raise JobFileError(path, line_no, f"hold must be yes or no, not {value!r}")
        return "user" if word in ("yes", "1", "true") else ""
    return value.strip()


def compress_ids(ids: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5,9"``: job ids as readable ranges."""
    parts: list[str] = []
    start: int | None = None
    prev = 0  # read only once start is set
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)
