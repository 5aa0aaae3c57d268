"""Retries: whether an attempt that went wrong is tried again, and what its ending says.

A job's ``retries`` (``hRunJob --retries N``) is how many more attempts it may have after
an attempt that was lost (its executor vanished), whose start failed, or that ended with an
exit code listed in its ``retry_on_exit`` (``--retry-on-exit 3,5-7``). Without ``--retries``
a lost job is retried the dispatcher's ``--lost-retries`` times (default 1) and nothing else
is retried.

Attempts are counted by the job's ``attempt`` (1 for the first; each requeue adds one, an
admin's requeue too): an attempt ``k`` may be retried while ``k - 1 < retries``. Every
attempt's ending is a row of the job's history; the final ending's reason says how many
attempts ran when there was more than one ("exit code 3 after 3 attempts").

Pure: no I/O, no Twisted (hRunJob's fast path checks the options with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: Exit codes a process can have.
MAX_EXIT_CODE = 255
#: The most retries a job may ask for.
MAX_RETRIES = 100
#: The dispatcher's default number of retries of a lost job (``--lost-retries``).
DEFAULT_LOST_RETRIES = 1


class Cause(Enum):
    """What went wrong with an attempt."""

    LOST = "lost"  # its executor vanished, or stopped it after losing the dispatcher
    START = "start"  # it could not be started
    EXIT = "exit"  # it ended by itself, not with exit code 0


def parse_exit_codes(text: str) -> frozenset[int]:
    """The exit codes of ``text`` ("3", "3,5-7"; "" for none); ValueError with one line that
    says what is wrong."""
    codes: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            if text.strip():
                raise ValueError(f"--retry-on-exit: empty item in {text!r} (write e.g. 3,5-7)")
            continue
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ValueError(
                f"--retry-on-exit: {part!r} is not an exit code or a range of them "
                "(write e.g. 3,5-7)"
            ) from None
        if not 1 <= first <= last <= MAX_EXIT_CODE:
            raise ValueError(
                f"--retry-on-exit: {part!r} is not within 1-{MAX_EXIT_CODE} "
                "(low-high, low first; 0 is success)"
            )
        codes.update(range(first, last + 1))
    return frozenset(codes)


def normalize_exit_codes(text: str) -> str:
    """``text`` as it is stored: sorted ranges ("5-7,3,4" -> "3-7"); ValueError as
    :func:`parse_exit_codes`."""
    codes = sorted(parse_exit_codes(text))
    ranges: list[tuple[int, int]] = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def check_retries(value: int | None) -> int | None:
    """``value`` of ``--retries`` if it is one; ValueError with one line otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"--retries: {value!r} is not a number of retries")
    if not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"--retries must be between 0 and {MAX_RETRIES}, not {value}")
    return value


def allowed_retries(failure: Cause, retries: int | None, lost_default: int) -> int:
    """How many retries a job has for ``failure``: its own, or the dispatcher's default."""
    if retries is not None:
        return retries
    return lost_default if failure is Cause.LOST else 0


@dataclass(frozen=True)
class Decision:
    """Whether the attempt is retried, and the reason its history row (a requeue) or the
    job's ending (no retry) gives."""

    retry: bool
    reason: str


def decide(
    failure: Cause,
    attempt: int,
    reason: str,
    retries: int | None,
    retry_on_exit: str = "",
    exit_code: int | None = None,
    lost_default: int = DEFAULT_LOST_RETRIES,
) -> Decision:
    """What happens after attempt ``attempt`` went wrong with ``reason``.

    An exit is retried only if its code is one of ``retry_on_exit`` (a stored text that no
    longer parses retries nothing)."""
    allowed = allowed_retries(failure, retries, lost_default)
    if failure is Cause.EXIT:
        try:
            listed = exit_code is not None and exit_code in parse_exit_codes(retry_on_exit)
        except ValueError:
            listed = False
        if not listed:
            return Decision(False, final_reason(reason, attempt))
    if attempt - 1 < allowed:
        return Decision(True, f"{reason}; retried (retry {attempt} of {allowed})")
    return Decision(False, final_reason(reason, attempt))


def final_reason(reason: str, attempts: int) -> str:
    """A job's ending reason, naming its attempts when there was more than one."""
    return reason if attempts <= 1 else f"{reason} after {attempts} attempts"


#: The longest on-end command, in bytes (it is run through ``sh -c`` by the user's TMS).
MAX_ON_END_BYTES = 4096


def spec_problem(retries: int | None, retry_on_exit: str, on_end: str) -> str | None:
    """The first way a job's retry and on-end fields break a limit, as one line, or None
    (the dispatcher refuses the submission with it; hRunJob says it before sending)."""
    try:
        check_retries(retries)
        parse_exit_codes(retry_on_exit)
    except ValueError as e:
        return str(e)
    if retry_on_exit.strip() and retries is None:
        return "--retry-on-exit needs --retries N (how many times to retry)"
    if len(retry_on_exit) > 255:
        return "--retry-on-exit is longer than 255 characters: use ranges (e.g. 1-99)"
    if len(on_end.encode("utf-8", "surrogatepass")) > MAX_ON_END_BYTES:
        return f"--on-end is longer than {MAX_ON_END_BYTES} bytes: put it in a script"
    if "\0" in on_end:
        return "--on-end contains a NUL byte, which no shell can run"
    return None
