"""The CLI refuses bad input in one line before sending anything, and says why a start failed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.protocols import amp
from twisted.python.failure import Failure

from tm.cli.common import CLIError, failure_line, tms_start_failure
from tm.cli.hrunjob import main_async
from tm.link import DispatcherNotFound, load_info
from tm.protocol import records


def refusal(argv: list[str]) -> CLIError:
    """Run hRunJob's main up to the point where it would connect; it must refuse first."""
    d = defer.ensureDeferred(main_async(None, argv))
    assert isinstance(d.result, Failure), d.result
    error = d.result.value
    d.addErrback(lambda _: None)
    assert isinstance(error, CLIError), repr(error)
    assert "\n" not in str(error)
    return error


@pytest.fixture(autouse=True)
def shell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/bin/sh")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["-c", "1e25", "true"], "argument -c/--slots: must be a whole number from 1 to"),
        (["-c", "1" + "0" * 25, "true"], "argument -c/--slots: must be from 1 to"),
        (["-c", "0", "true"], "must be from 1 to"),
        (["-p", "128", "true"], "argument -p/--priority: must be from 0 to 127, not 128"),
        (["-t", "nan", "true"], "argument -t/--estimatedTime: must be a number from 0 to"),
        (["-m", "1e400", "true"], "argument -m/--estimatedMemory: must be a number from 0 to"),
        (["-t", "-1", "true"], "must be a number from 0 to"),
    ],
)
def test_numeric_options_out_of_range_are_refused_in_one_line(argv: list[str], says: str) -> None:
    error = refusal(argv)
    assert says in str(error) and error.status == 2


def test_a_command_over_the_limit_is_refused_before_sending() -> None:
    error = refusal(["x" * 100_000])
    assert error.status == 2
    assert f"more than the limit of {records.MAX_COMMAND_BYTES}" in str(error)
    assert "script" in str(error)


def test_a_nul_byte_in_a_path_is_refused() -> None:
    assert "NUL" in str(refusal(["-o", "out\0put", "true"]))


def test_a_job_file_line_over_a_limit_is_refused_with_its_place(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.write_text("command::true\nslots::100000000000\tcommand::true\n")
    error = refusal(["-f", str(jobs)])
    assert str(error).startswith(f"{jobs}:2: -c must be from 1 to ")
    assert str(error).endswith("nothing was submitted")


def test_why_a_tms_did_not_start_is_one_line() -> None:
    log = "/h/.taskmanager/logs/tms.log"
    failed = (
        'An error has occurred: b"FileExistsError: [Errno 17] File exists: '
        "'/h/.taskmanager/tms'\"\nPlease look at log file for more information.\n"
    )
    assert tms_start_failure(failed, 1, log) == (
        f"FileExistsError: [Errno 17] File exists: '/h/.taskmanager/tms' (see {log})"
    )
    traceback = (
        "Traceback (most recent call last):\n  File x\n"
        "OpenSSL.crypto.Error: [('PEM routines', '', 'no start line')]\n"
    )
    assert tms_start_failure(traceback, 1, log) == (
        f"Error: [('PEM routines', '', 'no start line')] (see {log})"
    )
    assert tms_start_failure(
        "Another twistd server is running, PID 4242\n\nThis could", 1, log
    ).startswith("a TMS of yours is already running (pid 4242)")
    assert tms_start_failure("", 3, log) == f"twistd exited with 3 (see {log})"


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (ConnectionDone(), "the link to the server dropped before it answered"),
        (ConnectionRefusedError(), "cannot connect"),
        (defer.TimeoutError(), "the server did not answer in time"),
        (amp.TooLong(True, False, b"k", None), "too long to send"),
        (PermissionError(13, "Permission denied", "/w"), "Permission denied (/w)"),
    ],
)
def test_failures_of_the_link_or_the_system_are_one_sensible_line(
    error: Exception, says: str
) -> None:
    line = failure_line(error)
    assert says in line and "\n" not in line


def _info(tmp_path: Path, **change: Any) -> Path:
    from tm import auth

    _, cert = auth.ensure_key_pair(tmp_path / "k.key", tmp_path / "k.crt", auth.TMS_TLS_NAME)
    data = {
        "host": "h",
        "port": 1234,
        "certificate": cert.decode("ascii"),
        "challenge_dir": "/c",
    } | change
    path = tmp_path / "dispatcher.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}))
    path.chmod(0o644)
    return path


def test_a_broken_dispatcher_json_is_named_in_one_line(tmp_path: Path) -> None:
    assert load_info(_info(tmp_path)).port == 1234
    for change, says in (
        ({"certificate": "garbage"}, "not a PEM certificate"),
        ({"port": 70000}, "is not a TCP port"),
        ({"challenge_dir": None}, "no 'challenge_dir' field"),
    ):
        with pytest.raises(DispatcherNotFound) as caught:
            load_info(_info(tmp_path, **change))
        assert says in str(caught.value) and "dispatcher.json" in str(caught.value)
