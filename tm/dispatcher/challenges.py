"""The challenge directory's housekeeping: no challenge file outlives its use.

A challenge file is made by the client and removed by the dispatcher when it checks it
(:func:`tm.auth.verify_challenge`). Files it never checks stay behind otherwise: the client
made the file and then closed the connection, or let the handshake deadline pass; a
dispatcher stopped mid-check; and the directory is writable by every user (mode 1733), so
anyone can leave files of any name there. So:

- :class:`ChallengeBook` remembers the challenges handed out and not yet checked; a
  session whose connection ends with one still open removes its file (:func:`remove`);
- :func:`sweep` removes every entry that is not a challenge in use and is older than a
  minute: at start (what a previous run left) and then every minute.

The file work blocks (NFS) and runs in the dispatcher's file-system pool.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

#: Seconds between sweeps, and the age from which an entry that is no live challenge goes.
SWEEP_INTERVAL = 60.0
SWEEP_AGE = 60.0


class ChallengeBook:
    """The paths of the challenges handed out and not yet checked."""

    def __init__(self) -> None:
        self.live: set[str] = set()

    def issued(self, path: str) -> None:
        self.live.add(path)

    def settled(self, path: str) -> None:
        self.live.discard(path)


def remove(path: str) -> bool:
    """Remove one challenge file if it is there (never following a link). Blocking."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def sweep(directory: Path, live: frozenset[str], older_than: float = SWEEP_AGE) -> int:
    """Remove the entries of ``directory`` that are not in ``live`` and whose last change is
    ``older_than`` seconds ago or more; the number removed. Blocking."""
    now = time.time()
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        if entry.path in live:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if now - st.st_mtime < older_than:
            continue
        try:
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(entry.path)  # only an empty one: a user's tree is theirs to clear
            else:
                os.unlink(entry.path)
            removed += 1
        except OSError:
            pass
    return removed
