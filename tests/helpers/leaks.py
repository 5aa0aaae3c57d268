"""What a test leaves behind: the guards of the autouse fixtures in tests/conftest.py (the
reactor) and tests/integration/conftest.py (processes).

Each guard takes a snapshot before the test and, after the test and its finalizers, names what
is new and still there -- and removes it, so that the next test starts clean and the failure
points at the test that leaked, not at a later victim.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.processes import TWISTD, Installation, alive


@dataclass
class ReactorSnapshot:
    """The global reactor's delayed calls, readers and writers at one moment."""

    reactor: Any
    calls: set[Any] = field(default_factory=set)
    readers: set[Any] = field(default_factory=set)
    writers: set[Any] = field(default_factory=set)

    @classmethod
    def take(cls, reactor: Any) -> ReactorSnapshot:
        return cls(
            reactor,
            set(reactor.getDelayedCalls()),
            set(reactor.getReaders()),
            set(reactor.getWriters()),
        )

    def leftovers(self) -> list[str]:
        """What is new since the snapshot and still active, each named; cancelled, removed
        from the reactor (a process transport is killed, a socket closed) on the way."""
        found = []
        for call in self.reactor.getDelayedCalls():
            if call not in self.calls and call.active():
                found.append(f"delayed call {call!r}")
                call.cancel()
        # The reactor's own (its wakers, added when it first runs) are not the test's.
        internal: set[Any] = getattr(self.reactor, "_internalReaders", set())
        new_readers = [
            r for r in self.reactor.getReaders() if r not in self.readers and r not in internal
        ]
        new_writers = [w for w in self.reactor.getWriters() if w not in self.writers]
        for selectable in new_readers:
            found.append(f"reader {selectable!r}")
            self.reactor.removeReader(selectable)
        for selectable in new_writers:
            found.append(f"writer {selectable!r}")
            self.reactor.removeWriter(selectable)
        for selectable in {*new_readers, *new_writers}:
            _close(selectable)
        return found


def _close(selectable: Any) -> None:
    """Free what a selectable the test left holds: kill its process, close its socket."""
    from twisted.internet.interfaces import IProcessTransport

    process = getattr(selectable, "proc", None)
    for transport in (selectable, process):
        if transport is not None and IProcessTransport.providedBy(transport):
            try:
                transport.signalProcess("KILL")
            except Exception:  # already gone: nothing to free
                pass
    sock = getattr(selectable, "socket", None)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass


def children(parent: int | None = None) -> set[int]:
    """The live (not zombie) child processes of ``parent`` (this process by default)."""
    parent = os.getpid() if parent is None else parent
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(entry))
    return found


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return f"pid {pid}"
    words = [a.decode(errors="replace") for a in argv if a]
    if words[1:3] == ["-c", TWISTD[2]]:  # the processes of tests/helpers/processes.py
        words = ["twistd", *words[3:]]
    return f"pid {pid} ({' '.join(words)[:200]})"


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    # Not reaped here: a child's Popen (or the reactor) reaps it and learns how it ended.


@dataclass
class ProcessSnapshot:
    """This process's children and how many installations were made, at one moment."""

    children: set[int]
    installations: int

    @classmethod
    def take(cls) -> ProcessSnapshot:
        return cls(children(), len(Installation.made))

    def leftovers(self) -> list[str]:
        """The children started since the snapshot and still alive, and the live processes
        of the installations made since (dispatcher, daemons in their pid files), each named;
        killed on the way."""
        pids: dict[int, str] = {}
        for pid in sorted(children() - self.children):
            pids[pid] = "a child of the test process"
        for inst in Installation.made[self.installations :]:
            if inst.dispatcher is not None and inst.dispatcher.poll() is None:
                pids.setdefault(inst.dispatcher.pid, f"the dispatcher of {inst.root}")
            for pid in inst.daemon_pids():
                if alive(pid):
                    pids.setdefault(pid, f"a daemon of {inst.root} (its pid file)")
        found = [f"{_describe(pid)}: {what}" for pid, what in pids.items()]
        _kill(pids)
        for inst in Installation.made[self.installations :]:
            if inst.dispatcher is not None:
                try:
                    inst.dispatcher.wait(5)
                except Exception:  # killed above; a wedged wait must not hide the report
                    pass
        del Installation.made[self.installations :]
        return found
