"""The executor table: where each user's executor on each host is in its life.

Per ``(user, host)`` an executor is

- *absent*: none, nothing pending;
- *starting*: the user's TMS was asked to start one (since when), with a one-time start
  token the new executor must present: the TMS vouches for the executors it started
  (issue 10 point 5);
- *connected*: its session;
- *away*: its connection went, its jobs are kept for one lease (since when); back within
  the lease, its heartbeat tells what still runs; past it, its jobs are lost;
- *backed off*: its start failed; not started again before a time that doubles with each
  failure in a row.

Each change is a method; the table owns its timers (one per kind and key, on the injected
clock, replaced or cancelled when the state moves on) and calls back the dispatcher when a
lease or a start runs out. No other I/O.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

Key = tuple[str, str]  # (user, host)
S = TypeVar("S")


class Timer(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What the table needs of a reactor (a task.Clock in tests)."""

    def seconds(self) -> float: ...

    def callLater(
        self,
        delay: float,
        fn: Callable[..., Any],
        /,  # noqa: N802
        *args: Any,
        **kw: Any,
    ) -> Timer: ...


class ExecutorState(enum.StrEnum):
    ABSENT = "absent"
    STARTING = "starting"
    CONNECTED = "connected"
    AWAY = "away"
    BACKED_OFF = "backed off"


class ExecutorTable(Generic[S]):
    """The executors of every user on every host, with their timers.

    ``on_lease_over(user, host)``: an away executor did not come back within the lease.
    ``on_start_over(user, host)``: a start's deadline passed without an executor.
    ``on_backoff_over()``: a back-off ended (a pass may now start an executor there).
    """

    def __init__(
        self,
        clock: Clock,
        lease: float,
        on_lease_over: Callable[[str, str], Any],
        on_start_over: Callable[[str, str], Any],
        on_backoff_over: Callable[[], Any],
    ) -> None:
        self.clock = clock
        self.lease = lease
        self.on_lease_over = on_lease_over
        self.on_start_over = on_start_over
        self.on_backoff_over = on_backoff_over
        self.sessions: dict[Key, S] = {}  # connected
        self.starting: dict[Key, float] = {}  # start asked at
        self.tokens: dict[Key, str] = {}  # the one-time token of the start under way
        self.away: dict[Key, float] = {}  # gone since, its jobs kept for a lease
        self.backoff: dict[Key, float] = {}  # not started again before
        self.failures: dict[Key, int] = {}  # failed starts in a row
        self._timers: dict[tuple[str, Key], Timer] = {}

    # --- questions ----------------------------------------------------------------------

    def state(self, user: str, host: str) -> ExecutorState:
        key = (user, host)
        if key in self.sessions:
            return ExecutorState.CONNECTED
        if key in self.starting:
            return ExecutorState.STARTING
        if key in self.away:
            return ExecutorState.AWAY
        if self.backoff.get(key, 0.0) > self.clock.seconds():
            return ExecutorState.BACKED_OFF
        return ExecutorState.ABSENT

    def session(self, user: str, host: str) -> S | None:
        return self.sessions.get((user, host))

    def blocked(self, now: float) -> set[Key]:
        """The (user, host) pairs in back-off."""
        return {key for key, until in self.backoff.items() if until > now}

    # --- changes ------------------------------------------------------------------------

    def connected(self, user: str, host: str, session: S) -> S | None:
        """An executor proved itself; the session it replaces, if any."""
        key = (user, host)
        old = self.sessions.get(key)
        self.sessions[key] = session
        for table in (self.starting, self.tokens, self.away, self.backoff, self.failures):
            table.pop(key, None)
        for kind in ("start", "lease"):
            self._cancel(kind, key)
        return old if old is not session else None

    def disconnected(self, user: str, host: str, session: S) -> bool:
        """A session closed; True if it was the current one (it is then away)."""
        key = (user, host)
        if self.sessions.get(key) is not session:
            return False
        del self.sessions[key]
        self.gone(user, host)
        return True

    def gone(self, user: str, host: str) -> None:
        """The executor is away (or, at start-up, not back yet): its jobs are kept for one
        lease. Already away: the first lease runs on."""
        key = (user, host)
        if key in self.away:
            return
        self.away[key] = self.clock.seconds()
        self._after("lease", key, self.lease, self._lease_over, key)

    def start(self, user: str, host: str) -> str:
        """A start is asked of the user's TMS: the one-time token its executor must show."""
        self.starting[(user, host)] = self.clock.seconds()
        token = self.tokens[(user, host)] = secrets.token_urlsafe(24)
        return token

    def take_token(self, user: str, host: str, token: str) -> bool:
        """Whether ``token`` is the token of the start under way for ``(user, host)``; a
        token is good once."""
        key = (user, host)
        expected = self.tokens.get(key)
        if expected is None or not secrets.compare_digest(expected.encode(), token.encode()):
            return False
        del self.tokens[key]
        return True

    def start_asked(self, user: str, host: str, timeout: float) -> None:
        """The TMS took the start: it fails unless an executor connects within ``timeout``."""
        key = (user, host)
        if key in self.starting and key not in self.sessions:
            self._after("start", key, timeout, self._start_over, key)

    def start_failed(self, user: str, host: str, first: float, top: float) -> float:
        """A start failed: back off ``first`` seconds, doubled per failure in a row up to
        ``top``; the pause."""
        key = (user, host)
        self.starting.pop(key, None)
        self.tokens.pop(key, None)
        self._cancel("start", key)
        failures = self.failures[key] = self.failures.get(key, 0) + 1
        pause = min(top, first * 2 ** (failures - 1))
        self.backoff[key] = self.clock.seconds() + pause
        self._after("backoff", key, pause + 0.01, self._backoff_over, key)
        return pause

    def stop(self) -> None:
        for call in self._timers.values():
            if call.active():
                call.cancel()
        self._timers.clear()

    # --- timers -------------------------------------------------------------------------

    def _after(self, kind: str, key: Key, delay: float, fn: Callable[[Key], Any], arg: Key) -> None:
        self._cancel(kind, key)
        self._timers[(kind, key)] = self.clock.callLater(delay, self._fire, kind, key, fn, arg)

    def _fire(self, kind: str, key: Key, fn: Callable[[Key], Any], arg: Key) -> None:
        self._timers.pop((kind, key), None)
        fn(arg)

    def _cancel(self, kind: str, key: Key) -> None:
        call = self._timers.pop((kind, key), None)
        if call is not None and call.active():
            call.cancel()

    def _lease_over(self, key: Key) -> None:
        if self.away.pop(key, None) is None or key in self.sessions:
            return
        self.on_lease_over(*key)

    def _start_over(self, key: Key) -> None:
        if key in self.starting and key not in self.sessions:
            self.on_start_over(*key)

    def _backoff_over(self, key: Key) -> None:
        self.on_backoff_over()
