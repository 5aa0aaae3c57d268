"""Recent usage per user for fair share: slot-seconds with exponential decay.

A user's usage is what their finished runs consumed (slots x seconds), halved every
``half_life`` seconds, plus what their running jobs have consumed so far. The scheduler
serves, among jobs of equal priority, the user with the least usage first, so one user's
10 000 jobs cannot lock out another user's 10: each freed slot goes to whoever has used
least lately, and old usage fades so yesterday's heavy user is not punished forever.

Pure: times are passed in, nothing reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

#: Default half-life of recorded usage: one day.
DEFAULT_HALF_LIFE = 86400.0


class UsageLedger:
    def __init__(self, half_life: float = DEFAULT_HALF_LIFE) -> None:
        if half_life <= 0:
            raise ValueError(f"the half-life must be positive, not {half_life}")
        self.half_life = half_life
        self._settled: dict[str, tuple[float, float]] = {}  # user -> (value, as of time)

    def _decayed(self, value: float, since: float, now: float) -> float:
        if now <= since:
            return value
        return value * math.exp(-math.log(2) * (now - since) / self.half_life)

    def charge(self, user: str, slot_seconds: float, now: float) -> None:
        """Record a finished run (or the finished part of one)."""
        if slot_seconds <= 0:
            return
        value, since = self._settled.get(user, (0.0, now))
        self._settled[user] = (self._decayed(value, since, now) + slot_seconds, now)

    def settled(self, user: str, now: float) -> float:
        value, since = self._settled.get(user, (0.0, now))
        return self._decayed(value, since, now)

    def snapshot(self) -> dict[str, list[float]]:
        """The recorded usage as plain data (user -> [value, as of time]), to be stored."""
        return {user: [value, since] for user, (value, since) in self._settled.items()}

    def restore(self, data: dict[str, list[float]]) -> None:
        """Take back what :meth:`snapshot` gave; malformed entries raise ValueError."""
        settled = {}
        for user, entry in data.items():
            value, since = (float(x) for x in entry)
            if value < 0:
                raise ValueError(f"negative usage {value} for {user}")
            settled[str(user)] = (value, since)
        self._settled = settled

    def usage(self, now: float, running: Iterable[tuple[str, int, float]]) -> dict[str, float]:
        """Every user's usage at ``now``; ``running`` holds (user, slots, started_at)."""
        out = {user: self.settled(user, now) for user in self._settled}
        for user, slots, started_at in running:
            out[user] = out.get(user, 0.0) + slots * max(0.0, now - started_at)
        return out
