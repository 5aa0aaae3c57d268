"""The runner's last resort, by ``/proc``: killing what is left of a job's process tree when
its shepherd did not, and telling whether a shepherd can take the stop and continue signals
yet. Both are cheap reads of ``/proc`` and run on the reactor thread.
"""

from __future__ import annotations

import signal

from tm.executor import shim

LAST_RESORT_ROUNDS = 5


def kill_trees(roots: list[int]) -> None:
    """SIGKILL every live descendant of each of ``roots`` (not the roots themselves).

    Killed processes cannot fork, and their orphans come to the roots (subreapers), so a few
    walks of ``/proc`` reach whole trees; one walk serves every root."""
    roots = [pid for pid in roots if pid > 0]
    for _ in range(LAST_RESORT_ROUNDS):
        table = shim.process_table()
        tree = [
            pid
            for root in roots
            for pid in shim.descendants(root, table)
            if table[pid][1] not in shim.DEAD_STATES
        ]
        if not tree:
            return
        for pid in tree:
            shim.send(pid, signal.SIGKILL)


def shepherd_ready(pid: int) -> bool:
    """Whether the shepherd blocks or catches USR1 and USR2 yet; until then they would kill it.

    Both masks are read: while the shepherd waits in ``sigwaitinfo`` the kernel shows the waited
    signals as unblocked, but by then its handlers for them are installed.
    """
    masks = 0
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith((b"SigBlk:", b"SigCgt:")):
                    masks |= int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return False
    return all(masks >> (sig - 1) & 1 for sig in (signal.SIGUSR1, signal.SIGUSR2))
