"""Time limits as users write them, and a job's resource use as ``seff`` shows it.

Issue 11 points 2 and 6. Pure: no I/O, no Twisted (the command line's fast path imports it).

A time limit is written as plain seconds (``90``, ``1.5``), with a unit (``90s``, ``15m``,
``2h``, ``1d``), or in Slurm's forms (``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
``D-HH:MM:SS``). Unlike Slurm's ``--time``, a bare number means seconds, as everywhere else in
TaskManager (``-t``).
"""

from __future__ import annotations

import math

#: The longest time limit: ten years, as the estimated time (tm/protocol/limits.py).
MAX_TIME_LIMIT = 10 * 365 * 86_400.0

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
# Patterns, compiled (and re imported) when a time limit is read: a listing formats durations
# without them, and hConnect's start pays for every import.
_WITH_UNIT = r"(\d+(?:\.\d*)?|\.\d+)([smhd])"
_CLOCK = r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?"
_FORMS = "90, 90s, 15m, 2h, 1d, MM:SS, HH:MM:SS or D-HH:MM:SS"


class TimeLimitError(ValueError):
    """A time limit that cannot be understood or is out of range; the text says why."""


def parse_time_limit(text: str) -> float:
    """Seconds of the time limit ``text``; :class:`TimeLimitError` in one line otherwise."""
    t = str(text).strip().lower()
    seconds = _seconds(t)
    if seconds is None:
        raise TimeLimitError(f"the time limit must be a duration such as {_FORMS}, not {text!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise TimeLimitError(f"the time limit must be longer than 0 seconds, not {text!r}")
    if seconds > MAX_TIME_LIMIT:
        raise TimeLimitError(
            f"the time limit must be at most {MAX_TIME_LIMIT / 86_400:.0f} days, not {text!r}"
        )
    return seconds


def _seconds(t: str) -> float | None:
    try:
        return float(t) if t and t.lstrip("+-").replace(".", "", 1).isdigit() else _forms(t)
    except ValueError:
        return None


def _forms(t: str) -> float | None:
    import re  # re's own cache keeps the patterns compiled

    m = re.fullmatch(_WITH_UNIT, t)
    if m:
        return float(m.group(1)) * _UNITS[m.group(2)]
    m = re.fullmatch(_CLOCK, t)
    if not m or (m.group(1) is None and m.group(3) is None):
        return None  # a bare number is handled before; "5-" or "" is not a duration
    days = int(m.group(1)) if m.group(1) is not None else None
    first = int(m.group(2))
    second = int(m.group(3) or 0)
    third = int(m.group(4)) if m.group(4) is not None else None
    if second >= 60 or (third or 0) >= 60:
        return None
    if days is not None:  # D-HH[:MM[:SS]]
        total = days * 86_400 + first * 3600 + second * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        total = first * 3600 + second * 60 + third
    else:  # MM:SS
        total = first * 60 + second
    return float(total)


def format_duration(seconds: float) -> str:
    """``2.01 s``, ``1 min 30 s``, ``2 h 0 min``, ``1 d 12 h``: short and exact enough."""
    if seconds < 60:
        return f"{seconds:.2f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86_400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86_400} d {whole % 86_400 // 3600} h"


def format_limit(seconds: float) -> str:
    """A time limit as a user reads it: ``90 s``, ``15 min``, ``1-12:00:00``."""
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60} min" if whole % 60 == 0 else f"{whole} s"
    days, rest = divmod(whole, 86_400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def format_memory(kib: int) -> str:
    """``12.3 MiB`` from KiB (as ``ru_maxrss`` gives it)."""
    if kib < 1024:
        return f"{kib} KiB"
    if kib < 1024 * 1024:
        return f"{kib / 1024:.1f} MiB"
    return f"{kib / (1024 * 1024):.2f} GiB"


def efficiency(cpu_time: float, run_time: float, slots: int) -> float | None:
    """CPU efficiency in percent, ``cpu / (run time × slots)`` as ``seff`` has it; None when
    the job ran no measurable time."""
    wall = run_time * max(1, slots)
    if wall <= 0:
        return None
    return cpu_time / wall * 100.0


def format_usage(
    cpu_time: float | None, max_rss_kib: int | None, run_time: float | None, slots: int
) -> str:
    """``cpu 1.93 s, efficiency 96 %, peak memory 12.3 MiB, run time 2.01 s``; the parts not
    known are left out ("" when none is)."""
    parts = []
    if cpu_time is not None:
        parts.append(f"cpu {format_duration(cpu_time)}")
        if run_time is not None:
            eff = efficiency(cpu_time, run_time, slots)
            if eff is not None:
                parts.append(f"efficiency {eff:.0f} %")
    if max_rss_kib is not None:
        parts.append(f"peak memory {format_memory(max_rss_kib)}")
    if run_time is not None:
        parts.append(f"run time {format_duration(run_time)}")
    return ", ".join(parts)


#: The resource use an end may carry (``JobFinished``, the ``jobs`` columns of migration 0004).
USAGE_FIELDS = ("cpu_time", "max_rss_kib", "run_time")
_MAX_SECONDS = 1e12
_MAX_KIB = 1 << 50


def ended_usage(reported: dict[str, object]) -> dict[str, float | int | None]:
    """The resource use of an end as an executor reported it, each value kept only when it is
    plausible (a finite number of seconds or KiB, not negative): the rest is None."""
    out: dict[str, float | int | None] = dict.fromkeys(USAGE_FIELDS)
    for name in USAGE_FIELDS:
        value = reported.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if name == "max_rss_kib":
            if 0 <= value <= _MAX_KIB:
                out[name] = int(value)
        elif math.isfinite(value) and 0 <= value <= _MAX_SECONDS:
            out[name] = float(value)
    return out
