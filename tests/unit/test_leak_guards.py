"""The guards of the autouse leak checks (tests/helpers/leaks.py) name what a test left and
clear it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.protocol import Factory, Protocol

from tests.helpers.leaks import ProcessSnapshot, ReactorSnapshot, children
from tests.helpers.processes import Installation, alive, wait_until

reactor: Any = _reactor  # the global reactor, whose interfaces its module does not declare


def forgotten() -> None:
    """A callback a test forgot to cancel."""


def test_a_delayed_call_left_is_named_and_cancelled() -> None:
    before = ReactorSnapshot.take(reactor)
    call = reactor.callLater(100, forgotten)
    kept = reactor.callLater(100, forgotten)
    kept.cancel()
    left = before.leftovers()
    assert len(left) == 1 and "forgotten" in left[0], left
    assert not call.active() and call not in reactor.getDelayedCalls()
    assert before.leftovers() == []


def test_a_listening_port_left_is_named_removed_and_closed() -> None:
    before = ReactorSnapshot.take(reactor)
    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    left = before.leftovers()
    assert len(left) == 1 and left[0].startswith("reader ") and "Port" in left[0], left
    assert port not in reactor.getReaders()
    assert port.socket.fileno() == -1  # closed: the port is free again
    assert before.leftovers() == []


def test_a_child_process_left_is_named_and_killed() -> None:
    before = ProcessSnapshot.take()
    child = subprocess.Popen(["sleep", "300"])
    try:
        left = before.leftovers()
        assert len(left) == 1 and f"pid {child.pid} (sleep 300)" in left[0], left
        assert child.wait(10) == -9
        assert child.pid not in children()
        assert before.leftovers() == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_a_daemon_of_an_installation_left_is_named_and_killed(tmp_path: Path) -> None:
    before = ProcessSnapshot.take()
    inst = Installation(tmp_path)
    state = inst.home / ".taskmanager"
    state.mkdir()
    # A daemon as the TMS is one: not our child (its parent exited), its pid in a pid file.
    subprocess.run(
        ["sh", "-c", f"setsid sleep 300 >/dev/null 2>&1 & echo $! > {state}/tms.pid"], check=True
    )
    pid = int((state / "tms.pid").read_text())
    try:
        assert pid not in children()
        left = before.leftovers()
        assert len(left) == 1 and f"pid {pid}" in left[0] and "pid file" in left[0], left
        wait_until(lambda: not alive(pid), 10, "the daemon to be killed")
        assert inst not in Installation.made
    finally:
        if alive(pid):
            subprocess.run(["kill", "-9", str(pid)])
