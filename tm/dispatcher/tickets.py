"""Executor tickets: how an executor that proved its host once logs in again.

An executor proves the host it claims with the one-time token its user's TMS handed it when
the dispatcher asked for the start (issue 10 point 5). A token is good once; the executor's
later logins (after a network blip or a dispatcher restart) show the *ticket* the dispatcher
answered its first login with: an HMAC of ``(user, host)`` under a secret that only the
dispatcher's account can read (``var/executor-tickets.key``, 0600), so it survives a restart
and is never stored per executor. The user proves who they are with the file challenge as
before; the token or ticket proves that this is the executor their TMS started there.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from pathlib import Path

from tm import auth


class ExecutorTickets:
    def __init__(self, path: Path) -> None:
        self.path = path

    @functools.cached_property
    def _secret(self) -> bytes:
        try:
            return auth.read_secret(self.path)
        except auth.SecretFileError:
            if self.path.exists():
                raise
        auth.write_secret(self.path, secrets.token_hex(32).encode())
        return auth.read_secret(self.path)

    def load(self) -> None:
        """Read (or make) the secret now, so a bad key file stops the start-up."""
        self._secret  # noqa: B018 - the cached property reads the file

    def ticket(self, user: str, host: str) -> str:
        message = f"executor\0{user}\0{host}".encode("utf-8", "surrogatepass")
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def valid(self, user: str, host: str, ticket: str) -> bool:
        return hmac.compare_digest(self.ticket(user, host).encode(), ticket.encode())
