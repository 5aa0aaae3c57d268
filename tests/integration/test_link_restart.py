"""After a dispatcher outage the TMS is linked again within about a second of its return."""

from __future__ import annotations

import time

from tests.helpers.processes import Installation, wait_until
from tests.helpers.restarts import DialCounter, kill_dispatcher


def test_after_a_long_outage_the_first_command_once_the_dispatcher_is_back_works(
    installation: Installation,
) -> None:
    installation.run("hConnect", "lswjobs", check=True)  # a TMS, linked to the dispatcher
    kill_dispatcher(installation)
    counter = DialCounter(installation.port)
    try:
        # Long enough for a growing back-off to reach many seconds: the TMS's tenth try.
        # A link that backed off to 30 s gives up long before (the deadline), and then the
        # command below meets "no link to the dispatcher".
        try:
            wait_until(lambda: counter.dials >= 10, 25, "ten tries of the TMS to reconnect")
        except AssertionError:
            pass
        dials = counter.dials
    finally:
        counter.close()
    installation.start_dispatcher()  # returns once the dispatcher is ready
    started = time.monotonic()
    listed = installation.run("hConnect", "lswjobs")
    assert listed.returncode == 0, (dials, listed.stderr)
    # --wait: the job has run when the test ends, so no executor is still being started by the
    # TMS while the installation is torn down (one started just after would outlive the test).
    submitted = installation.run("hRunJob", "-q", "--wait", "true")
    assert submitted.returncode == 0 and not submitted.stderr, submitted.stderr
    assert dials >= 10, f"only {dials} tries to reconnect during the outage"
    # Recorded for the report, not asserted: the command's own wait is bounded by the TMS.
    print(f"first command after readiness answered in {time.monotonic() - started:.1f} s")


def test_a_tms_that_cannot_start_says_why_in_one_line(installation: Installation) -> None:
    # The TMS keeps its key pair in ~/.taskmanager/tms/: a file there stops its start.
    (installation.home / ".taskmanager").mkdir(mode=0o700, exist_ok=True)
    (installation.home / ".taskmanager" / "tms").write_text("not a directory")
    result = installation.run("hConnect", "lswjobs")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("hConnect: Could not start a TMS: FileExistsError: "), (
        result.stderr
    )
    assert f"(see {installation.home}/.taskmanager/logs/tms.log)" in result.stderr
