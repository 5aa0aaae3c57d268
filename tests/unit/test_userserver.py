"""Pure parts of the user's server (TMS)."""

from __future__ import annotations

from tm.userserver.service import start_failure_reason


def test_executor_start_failure_reasons() -> None:
    clash = (b"Another twistd server is running, PID 123\n\nThis could either be a previously "
             b"started instance...\nor use the --pidfile and --logfile parameters.\n")
    assert start_failure_reason(clash, 1) == (
        "an executor of yours is already running there (pid 123) but is not connected; "
        "it reconnects by itself, or stop it")
    assert start_failure_reason(b"Warning: x\nssh: connect to host h port 22: Connection refused"
                                b"\r\n\n", 255) == "ssh: connect to host h port 22: Connection refused"
    assert start_failure_reason(b"", 3) == "the start command exited with 3"
