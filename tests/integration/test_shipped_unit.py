"""The systemd unit shipped in etc/ starts a working dispatcher: its ExecStart, run as written
(the install paths replaced by this test's), serves jobs, its ExecReload re-reads the cluster
file, and a stop by TERM ends it cleanly (docs/admin-guide.md)."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import subprocess

from tests.helpers import cli
from tests.helpers.processes import REPO, TWISTD, Installation, wait_until

UNIT = REPO / "etc" / "taskmanager-dispatcher.service"
SRV = "/srv/taskmanager"
VENV_TWISTD = "/opt/taskmanager/venv/bin/twistd"


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_the_unit_runs_as_an_account_and_reloads_with_hup() -> None:
    service = _unit()["Service"]
    assert service["User"] not in ("root", "0"), "the dispatcher must not run as root"
    assert service["Type"] == "simple"
    assert "--nodaemon" in shlex.split(service["ExecStart"]), "systemd supervises the process"
    assert shlex.split(service["ExecReload"]) == ["/bin/kill", "-HUP", "$MAINPID"]
    assert service["WorkingDirectory"] == SRV


def test_the_units_command_starts_a_dispatcher_that_runs_jobs(tmp_path) -> None:
    inst = Installation(tmp_path)
    argv = shlex.split(_unit()["Service"]["ExecStart"].replace(SRV, str(tmp_path)))
    assert argv[0] == VENV_TWISTD
    argv = [*TWISTD, *argv[1:], "--port", str(inst.port)]
    try:
        inst.dispatcher = subprocess.Popen(
            argv,
            env=inst.env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(inst._ready, 30, "the unit's dispatcher to publish dispatcher.json")
        assert (tmp_path / "var" / "dispatcher.log").exists(), "the unit names the log file"

        job = cli.submit(inst, "--wait", "echo served > out.txt")
        assert cli.state(inst, job) == "finished"
        assert (inst.work / "out.txt").read_text() == "served\n"

        # ExecReload: SIGHUP re-reads etc/cluster.tab; a host added there appears.
        (inst.etc / "cluster.tab").write_text(
            "extra\textra.example\t2\t2\t\tFalse\t0\tFalse\textra.example\n"
        )
        os.kill(inst.dispatcher.pid, signal.SIGHUP)
        wait_until(lambda: "extra.example" in cli.hosts(inst), 30, "the reloaded host")

        # systemctl stop: TERM, and the process ends by itself (systemd counts an exit by
        # SIGTERM as a clean stop).
        inst.dispatcher.send_signal(signal.SIGTERM)
        assert inst.dispatcher.wait(30) in (0, -signal.SIGTERM)
    finally:
        inst.cleanup()
