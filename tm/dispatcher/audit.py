"""The dispatcher's audit log: one line per admin action, in a file of its own.

Who (the proven user), from where (the peer's address, or ``signal`` for a SIGHUP), in
which role, what, on what target, and how it ended (``done``, ``refused: ...``,
``failed: ...``). Admin actions are host and cluster changes, user changes, reloads, the
admin repairs (``AdminJobs``), and kills and suspensions of other users' jobs.

The file (``audit.log`` next to the dispatcher's log file, or in its var directory) is
0600, opened for each line in append mode without following a link. A refused action is
written too, but through a :class:`~tm.logs.ProblemLog` per user: a user who repeats a
refused command many times cannot fill the disk. Each line also goes to the dispatcher's
log.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any, cast

from twisted.logger import ILogObserver, Logger, formatEvent

from tm.logs import ProblemLog

_PLAIN = re.compile(r"^[A-Za-z0-9_.,:/@+=-]*$")
#: The longest value written (a target naming many jobs is cut).
MAX_VALUE_CHARS = 500


def _value(text: str) -> str:
    """A field value on one line: plain words as they are, anything else quoted (JSON)."""
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + "..."
    return text if text and _PLAIN.match(text) else json.dumps(text)


class AuditLog:
    """Appends one line per admin action to ``path``."""

    log = Logger()

    def __init__(self, path: Path, clock: Any) -> None:
        self.path = path
        self.clock = clock
        observer = cast(ILogObserver, self._write_event)
        self._refusals = ProblemLog(Logger(namespace="tm.audit", observer=observer), clock)
        #: Lines written (for tests and the manhole).
        self.lines = 0

    def record(
        self,
        who: str | None,
        peer: str,
        role: str | None,
        action: str,
        target: str,
        outcome: str = "done",
    ) -> None:
        """Write one action; a refused one (``outcome`` starts with "refused") is rate-limited
        per user."""
        line = " ".join(
            f"{key}={_value(value)}"
            for key, value in (
                ("user", who or "-"),
                ("from", peer),
                ("role", role or "-"),
                ("action", action),
                ("target", target or "-"),
                ("outcome", outcome),
            )
        )
        if outcome.startswith("refused"):
            self._refusals.emit("refused admin action", who or peer, "{line}", line=line)
        else:
            self._write(line)

    def _write_event(self, event: dict) -> None:
        self._write(formatEvent(event))

    def _write(self, line: str) -> None:
        stamp = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        text = f"{stamp.isoformat(timespec='seconds')} {line}\n"
        self.log.info("audit: {line}", line=line)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, text.encode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
        except OSError as e:
            self.log.error(
                "audit log {path} not written ({e}): {line}", path=self.path, e=e, line=line
            )
            return
        self.lines += 1

    def stop(self) -> None:
        """Write the counts of refusals not written yet; cancel the pending summary."""
        self._refusals.stop()
