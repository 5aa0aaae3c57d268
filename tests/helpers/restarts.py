"""Dispatcher outages for integration tests: kill -9, and a stand-in that counts the dials."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

from tests.helpers.processes import Installation


def kill_dispatcher(inst: Installation) -> None:
    """SIGKILL the dispatcher's process group and reap it (no clean shutdown)."""
    proc = inst.dispatcher
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("the killed dispatcher did not go away") from e


class DialCounter:
    """Holds the dispatcher's port while it is down: accepts each connection, closes it at
    once, and counts them (each one is a client's try to reconnect)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("", port))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.dials = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()
            self.dials += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def freeze_dispatcher(inst: Installation) -> None:
    """SIGSTOP the dispatcher: its links stay open, and what is sent to it waits unread."""
    assert inst.dispatcher is not None
    os.killpg(inst.dispatcher.pid, signal.SIGSTOP)


def largest_unread(port: int) -> int:
    """The most bytes waiting unread on one TCP connection accepted on ``port`` (IPv4 and 6)."""
    largest = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                largest = max(largest, int(fields[4].split(":")[1], 16))
    return largest
