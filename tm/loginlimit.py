"""How many failed logins a peer address, and a claimed user, may cost: a pure limiter.

Failed proofs (the dispatcher's file challenge, the key a client shows its TMS) cannot be
guessed into success, but each one costs a file-system check, a log line and a challenge
file, and a flood of them hides a real attack in the log. The limits, over a sliding
``window`` of seconds:

- **per connection**: a connection is closed after ``per_connection`` failures (the
  session counts them; :attr:`LoginLimiter.per_connection` says how many);
- **per peer address**: after ``per_peer`` failures from one address, new logins from it
  are refused until the oldest of them is ``window`` seconds old;
- **per claimed user**: after ``per_user`` failures claiming one user (from any number of
  addresses), that user is *under attack*: an address that failed for that user in the
  window is refused at once, while an address with no failure for it is still let in.
  So an attacker spread over many addresses gets one try per address for that user, and
  the real user, whose logins do not fail, is not locked out by someone else's failures
  (a plain per-user block would hand any user a way to lock out any other).

Pure: no I/O, the clock injected (``clock.seconds()``); tested on
:class:`twisted.internet.task.Clock`. Memory is bounded: at most ``max_keys`` addresses and
users are tracked, the least recently failed forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

PER_CONNECTION = 3
PER_PEER = 10
PER_USER = 30
WINDOW = 60.0
MAX_KEYS = 10_000


class LoginLimiter:
    """Failed logins per peer address and per claimed user, in a sliding window."""

    def __init__(
        self,
        clock: Any,
        per_connection: int = PER_CONNECTION,
        per_peer: int = PER_PEER,
        per_user: int = PER_USER,
        window: float = WINDOW,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.clock = clock
        self.per_connection = per_connection
        self.per_peer = per_peer
        self.per_user = per_user
        self.window = window
        self.max_keys = max_keys
        #: peer -> times of its last ``per_peer`` failures
        self._peers: OrderedDict[str, deque[float]] = OrderedDict()
        #: claimed user -> (time, peer) of its last ``per_user`` failures
        self._users: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        #: Every failure recorded and every login refused (for tests and the manhole).
        self.failures = 0
        self.refusals = 0

    def refusal(self, peer: str, user: str | None) -> str | None:
        """Why a login from ``peer`` claiming ``user`` is refused now; None if it may try."""
        now = self.clock.seconds()
        times = self._peers.get(peer)
        if times is not None and len(times) >= self.per_peer and now - times[0] < self.window:
            self.refusals += 1
            return (
                f"too many failed logins from {peer} ({len(times)} in {self.window:.0f} s); "
                f"try again in {times[0] + self.window - now:.0f} s"
            )
        failed = self._users.get(user) if user is not None else None
        if failed is not None and len(failed) >= self.per_user and now - failed[0][0] < self.window:
            mine = [t for t, p in failed if p == peer and now - t < self.window]
            if mine:
                self.refusals += 1
                return (
                    f"too many failed logins as {user} ({len(failed)} in {self.window:.0f} s), "
                    f"one of them from {peer}; try again in {mine[0] + self.window - now:.0f} s"
                )
        return None

    def failed(self, peer: str, user: str | None) -> None:
        """Count one failed login from ``peer`` claiming ``user``."""
        now = self.clock.seconds()
        self.failures += 1
        _note(self._peers, peer, now, self.per_peer, self.max_keys)
        if user is not None:
            _note(self._users, user, (now, peer), self.per_user, self.max_keys)


def _note(table: OrderedDict[str, deque[Any]], key: str, item: Any, keep: int, limit: int) -> None:
    entries = table.get(key)
    if entries is None:
        entries = table[key] = deque(maxlen=max(1, keep))
    else:
        table.move_to_end(key)
    entries.append(item)
    while len(table) > limit:
        table.popitem(last=False)


class LoginAttempts:
    """One connection's logins, for the server that answers them (dispatcher or TMS).

    Each failure is logged with the peer and the claimed user (through the protocol's
    rate-limited problem log) and counted by the shared :class:`LoginLimiter`; the
    connection is closed once its answer is sent, after ``per_connection`` failures or at
    once when the limiter refuses the login. ``proto`` is a
    :class:`~tm.protocol.base.BoundedAMP` (set once it exists).
    """

    def __init__(self, limiter: LoginLimiter, clock: Any, proto: Any = None) -> None:
        self.limiter = limiter
        self.clock = clock
        self.proto = proto
        self.failures = 0

    @property
    def peer(self) -> str:
        return str(getattr(self.proto, "peer_host", "?"))

    def check(self, user: str | None, role: str = "-") -> None:
        """Raise AuthenticationFailed, and close, if the limiter refuses this login now."""
        from tm.protocol.commands import AuthenticationFailed

        refused = self.limiter.refusal(self.peer, user)
        if refused is not None:
            self._log(user, role, refused)
            self._close_soon()
            raise AuthenticationFailed(refused)

    def failed(self, user: str | None, reason: str, role: str = "-", shared: bool = True) -> None:
        """Log one failed login and count it; close the connection after a few. ``shared``:
        also count it against the peer and the claimed user (not for a user name that is
        merely not allowed, which proves nothing wrong about the peer)."""
        self._log(user, role, reason)
        self.failures += 1
        if shared:
            self.limiter.failed(self.peer, user)
        if self.failures >= self.limiter.per_connection:
            self._close_soon()

    def _log(self, user: str | None, role: str, reason: str) -> None:
        if self.proto is not None:
            self.proto.problem(
                "login failed",
                "failed login from {peer} as {user} ({role}): {reason}",
                user=user or "-",
                role=role,
                reason=reason,
            )

    def _close_soon(self) -> None:
        # Once the refusal has been sent: closing first could lose it.
        self.clock.callLater(0, self._close)

    def _close(self) -> None:
        transport = getattr(self.proto, "transport", None)
        if transport is not None and not self.proto.is_authenticated:
            transport.loseConnection()
