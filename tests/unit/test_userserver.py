"""Pure parts of the user's server (TMS)."""

from __future__ import annotations

from tm.userserver.service import start_failure_reason


def test_executor_start_failure_reasons() -> None:
    clash = (
        b"Another twistd server is running, PID 123\n\nThis could either be a previously "
        b"started instance...\nor use the --pidfile and --logfile parameters.\n"
    )
    assert start_failure_reason(clash, 1) == (
        "an executor of yours is already running there (pid 123) but is not connected; "
        "it reconnects by itself, or stop it"
    )
    assert (
        start_failure_reason(
            b"Warning: x\nssh: connect to host h port 22: Connection refused\r\n\n", 255
        )
        == "ssh: connect to host h port 22: Connection refused"
    )
    assert start_failure_reason(b"", 3) == "the start command exited with 3"


def test_executor_argv_default_and_with_a_tmmenial_command(tmp_path, monkeypatch) -> None:
    import sys
    from types import SimpleNamespace

    from tm.userserver.service import UserServer

    monkeypatch.setenv("HOME", str(tmp_path))
    server = SimpleNamespace(info=SimpleNamespace(path="/shared/var/dispatcher.json", account=None))
    default = UserServer.executor_argv(server, "node1")  # type: ignore[arg-type]
    tail = [
        "--pidfile",
        f"{tmp_path}/.taskmanager/tmmenial.node1.pid",
        "--logfile",
        f"{tmp_path}/.taskmanager/logs/tmmenial.node1.log",
        "tmmenial",
        "--host",
        "node1",
        "--dispatcher",
        "/shared/var/dispatcher.json",
    ]
    assert default[:2] == [sys.executable, "-c"] and default[3:] == tail
    custom = UserServer.executor_argv(server, "node1", "env TZ=UTC '/opt/tm 2/bin/twistd'")  # type: ignore[arg-type]
    assert custom == ["env", "TZ=UTC", "/opt/tm 2/bin/twistd", *tail]
    # The dispatcher's account the TMS trusted dispatcher.json for travels on (ssh drops env).
    server.info.account = "tmadmin"
    named = UserServer.executor_argv(server, "node1")  # type: ignore[arg-type]
    assert named[3:] == [*tail, "--dispatcher-account", "tmadmin"]


def test_a_forwarded_request_whose_link_drops_is_answered_with_a_declared_error() -> None:
    from types import SimpleNamespace
    from typing import Any

    from twisted.internet import defer
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    from tm.protocol import commands
    from tm.userserver.service import ClientSession

    class DroppingLink:
        connected = True
        info = SimpleNamespace(address="d:1")

        async def call(self, command: type, **kw: Any) -> Any:
            raise ConnectionDone()

    session = ClientSession(SimpleNamespace(link=DroppingLink()))  # type: ignore[arg-type]
    session.proven = True
    d = defer.ensureDeferred(session._forwarder(commands.KillJobs)(job_ids=[1]))
    assert isinstance(d.result, Failure)
    error = d.result.value
    d.addErrback(lambda _: None)
    assert isinstance(error, commands.DispatcherUnavailable)  # declared: one line at the client
    assert str(error) == (
        "no answer from the dispatcher at d:1: the link dropped before the answer came"
    )


def test_a_start_command_runs_only_when_the_users_configuration_lists_it(
    tmp_path, monkeypatch
) -> None:
    import os

    from tm.userserver import startcommands

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(startcommands, "SYSTEM_COMMANDS", tmp_path / "none")
    forged = "/bin/sh -c 'id > pwn.txt; exit 1' x"
    assert startcommands.start_command_refusal("") is None  # the TMS's own twistd
    refusal = startcommands.start_command_refusal(forged)
    assert refusal is not None and "is not one your installation allows" in refusal
    assert f"{tmp_path}/.taskmanager/tmmenial_commands" in refusal
    listed = tmp_path / ".taskmanager" / "tmmenial_commands"
    listed.parent.mkdir(mode=0o700)
    listed.write_text("# trusted\n/opt/tm/bin/twistd  --nodaemon\n")
    os.chmod(listed, 0o644)
    assert startcommands.start_command_refusal("/opt/tm/bin/twistd '--nodaemon'") is None
    assert startcommands.start_command_refusal(forged) is not None
    os.chmod(listed, 0o666)  # others may write it: not trusted
    refusal = startcommands.start_command_refusal("/opt/tm/bin/twistd --nodaemon")
    assert refusal is not None and "writable by group or others" in refusal
