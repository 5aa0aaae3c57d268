"""Who may look at the dashboard: one-time link tokens and the browser sessions they open.

Pure, on an injected clock.  ``hConnect dashboard`` asks the dispatcher (over a connection
whose user the usual challenge proved) for a link; its token is random, names that user,
works once and only for :data:`TOKEN_LIFETIME` seconds.  Opening the link trades the token
for a session cookie (HttpOnly, SameSite=Strict) that lasts :data:`SESSION_LIFETIME`.
Nothing here is written to disk: a restarted dispatcher forgets every token and session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

TOKEN_LIFETIME = 600.0
SESSION_LIFETIME = 12 * 3600.0
#: Bounds on what a flood of link requests or logins can make the dispatcher keep.
MAX_TOKENS = 10_000
MAX_SESSIONS = 10_000


class Clock(Protocol):
    def seconds(self) -> float: ...


@dataclass(frozen=True)
class Viewer:
    """Who looks: a user, and whether they see every user's jobs (the admin role)."""

    user: str
    sees_all: bool


def _secret() -> str:
    return secrets.token_urlsafe(32)


def well_formed(token: str) -> bool:
    """Whether ``token`` could be one of ours (43 URL-safe characters): anything else is
    refused before it is looked up."""
    return len(token) == 43 and all(c.isalnum() or c in "-_" for c in token)


class _Book:
    def __init__(self, clock: Clock, lifetime: float, limit: int) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.limit = limit
        self._entries: dict[str, tuple[Viewer, float]] = {}

    def _add(self, viewer: Viewer) -> str:
        self.sweep()
        if len(self._entries) >= self.limit:  # the oldest goes (dicts keep insertion order)
            del self._entries[next(iter(self._entries))]
        key = _secret()
        self._entries[key] = (viewer, self.clock.seconds() + self.lifetime)
        return key

    def _find(self, key: str) -> str | None:
        """``key`` if it is stored (a 256-bit random value: a lookup's timing tells nothing
        useful), else None."""
        return key if well_formed(key) and key in self._entries else None

    def sweep(self) -> None:
        now = self.clock.seconds()
        for key in [k for k, (_, until) in self._entries.items() if until <= now]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class TokenBook(_Book):
    """The links handed out and not used yet."""

    def __init__(self, clock: Clock, lifetime: float = TOKEN_LIFETIME) -> None:
        super().__init__(clock, lifetime, MAX_TOKENS)

    def issue(self, viewer: Viewer) -> str:
        return self._add(viewer)

    def redeem(self, token: str) -> Viewer | None:
        """The viewer ``token`` was issued to, once; None when it is unknown, used, expired
        or garbled."""
        key = self._find(token)
        if key is None:
            return None
        viewer, until = self._entries.pop(key)
        return viewer if until > self.clock.seconds() else None


class SessionBook(_Book):
    """The browsers that opened a link: cookie value -> viewer."""

    def __init__(self, clock: Clock, lifetime: float = SESSION_LIFETIME) -> None:
        super().__init__(clock, lifetime, MAX_SESSIONS)

    def open(self, viewer: Viewer) -> str:
        return self._add(viewer)

    def viewer(self, cookie: str) -> Viewer | None:
        key = self._find(cookie)
        if key is None:
            return None
        viewer, until = self._entries[key]
        if until <= self.clock.seconds():
            del self._entries[key]
            return None
        return viewer

    def close(self, cookie: str) -> None:
        self._entries.pop(cookie, None)
