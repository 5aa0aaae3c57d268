"""What the command-line programs share on their Twisted path: finding (or starting) the
user's TMS over TLS, reaching the dispatcher, and turning every failure into one clear line.

Imported only when the fast path (the TMS's Unix socket, :mod:`tm.localsocket`) cannot
serve: no TMS runs on this host, ``-T``, or a TMS on another host sharing the home."""

from __future__ import annotations

import ast
import fcntl
import getpass
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.task import deferLater
from twisted.protocols import amp

from tm import auth
from tm.cli.errors import CLIError, reader_gone
from tm.link import DispatcherNotFound, connect_dispatcher, connect_host, find_dispatcher, user_dir
from tm.protocol import commands, webcommands
from tm.protocol.base import BoundedAMP

TMS_START_TIMEOUT = 20.0
#: Failures of reaching a TMS that say it is not usable (not running, not answering, refusing).
TMS_UNUSABLE: tuple[type[Exception], ...] = (
    ConnectError,
    ConnectionClosed,
    commands.TMError,
    OSError,
    TimeoutError,
    defer.TimeoutError,
)


def command_named(name: str) -> type[amp.Command]:
    """The command of :mod:`tm.protocol.commands` (or :mod:`tm.protocol.jobends`,
    :mod:`tm.protocol.control`, :mod:`tm.protocol.webcommands`) whose ``commandName`` is
    ``name``."""
    from tm.protocol import control, jobends

    for value in (
        *vars(commands).values(),
        *vars(jobends).values(),
        *vars(control).values(),
        webcommands.DashboardLink,
    ):
        if (
            isinstance(value, type)
            and issubclass(value, amp.Command)
            and getattr(value, "commandName", None) == name.encode("ascii")
        ):
            return value
    raise KeyError(name)


def tms_argv(dispatcher_path: str) -> list[str]:
    base = user_dir()
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "--pidfile",
        str(base / "tms.pid"),
        "--logfile",
        str(base / "logs" / "tms.log"),
        "tmserver",
        "--dispatcher",
        dispatcher_path,
    ]


def _read_tms_info() -> dict[str, Any] | None:
    try:
        return json.loads(auth.read_secret(user_dir() / "tms.json"))
    except auth.SecretFileError:
        return None
    except ValueError:
        return None


def tms_candidates(info: dict[str, Any]) -> list[str]:
    """Where to reach the TMS described by tms.json, in order: loopback when it runs on this
    host, then the addresses it reaches the dispatcher from (reachable from the other hosts
    that share the home directory), then its host name."""
    out = [connect_host(info["host"])]
    out += [a for a in info.get("addresses", []) if isinstance(a, str)]
    out.append(info["host"])
    return list(dict.fromkeys(out))


async def _connect_tms_once(reactor: Any, info: dict[str, Any]) -> BoundedAMP:
    error: Exception | None = None
    for host in tms_candidates(info):
        try:
            return await _connect_tms_at(reactor, info, host)
        except (ConnectError, ConnectionClosed, OSError, TimeoutError, defer.TimeoutError) as e:
            error = e
    assert error is not None
    raise error


async def _connect_tms_at(reactor: Any, info: dict[str, Any], host: str) -> BoundedAMP:
    endpoint = SSL4ClientEndpoint(
        reactor,
        host,
        int(info["port"]),
        auth.client_tls_options(info["certificate"].encode("ascii"), auth.TMS_TLS_NAME),
        timeout=5,
    )
    proto = BoundedAMP(clock=reactor)
    await connectProtocol(endpoint, proto)
    try:
        await proto.call(
            commands.Hello,
            reply_timeout=10,
            protocol_version=commands.PROTOCOL_VERSION,
            role=commands.ROLE_CLIENT,
            user=getpass.getuser(),
            host=socket.gethostname(),
        )
        await proto.call(commands.ProveKey, reply_timeout=10, key=info["key"])
    except BaseException:
        if proto.transport is not None:  # None once the connection is lost
            proto.transport.loseConnection()  # type: ignore[misc]
        raise
    return proto


def tms_start_failure(output: str, code: int, log: str) -> str:
    """One line that says why ``twistd tmserver`` did not start, from what it printed."""
    running = re.search(r"Another twistd server is running, PID (\d+)", output)
    if running:
        return (
            f"a TMS of yours is already running (pid {running.group(1)}) but does not "
            f"answer; see {log}, or stop it (kill {running.group(1)}) and try again"
        )
    reason = ""
    reported = re.search(r"An error has occurred: (b?(['\"]).*\2)", output)
    if reported:
        try:
            text = ast.literal_eval(reported.group(1))
            reason = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        except (ValueError, SyntaxError):
            reason = reported.group(1)
    if not reason:
        lines = [
            line.strip()
            for line in output.splitlines()
            if line.strip() and not line.startswith("Please look at log file")
        ]
        reason = lines[-1] if lines else f"twistd exited with {code}"
    reason = reason.strip().splitlines()[-1]
    # "OpenSSL.crypto.Error: ..." -> "Error: ...": the module path helps nobody.
    reason = re.sub(r"^(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*: )", r"\1", reason)
    return f"{reason[:300]} (see {log})"


def _start_tms(dispatcher_path: str, verbose: bool) -> None:
    """Start the TMS as a daemon; twistd returns once it has started (or failed)."""
    logs = user_dir() / "logs"
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    argv = tms_argv(dispatcher_path)
    if verbose:
        print("starting a TMS: " + " ".join(argv), file=sys.stderr)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/")
    except subprocess.TimeoutExpired:
        raise CLIError(
            f"Could not start a TMS: twistd did not return within 60 s (see {logs / 'tms.log'})"
        ) from None
    except OSError as e:
        raise CLIError(f"Could not start a TMS: cannot run {argv[0]}: {e.strerror}") from None
    if result.returncode != 0:
        raise CLIError(
            "Could not start a TMS: "
            + tms_start_failure(
                (result.stderr or "") + (result.stdout or ""),
                result.returncode,
                str(logs / "tms.log"),
            )
        )


async def _settle(reactor: Any, proto: BoundedAMP, timeout: float = 10.0) -> None:
    """Give a TMS that has just started a moment to reach the dispatcher, so that the first
    command does not meet "not connected"; if it cannot, the command says so itself."""
    deadline = reactor.seconds() + timeout
    while reactor.seconds() < deadline:
        info = await proto.call(commands.ServerInfo)
        if info["dispatcher_connected"]:
            return
        await deferLater(reactor, 0.05, lambda: None)


async def connect_tms(
    reactor: Any, dispatcher: str | None = None, verbose: bool = False
) -> BoundedAMP:
    """The user's TMS, started first when none answers."""
    info = _read_tms_info()
    if info is not None:
        try:
            return await _connect_tms_once(reactor, info)
        except TMS_UNUSABLE as e:
            if verbose:
                print(
                    f"TMS at {info.get('host')}:{info.get('port')} not usable: {e}", file=sys.stderr
                )
    try:
        dispatcher_info = find_dispatcher(dispatcher)
    except DispatcherNotFound as e:
        raise CLIError(str(e)) from None
    base = user_dir()
    base.mkdir(mode=0o700, exist_ok=True)
    with open(base / "tms.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = _read_tms_info()
        fresh = None
        if info is not None:
            try:
                fresh = await _connect_tms_once(reactor, info)
            except TMS_UNUSABLE:
                fresh = None
        if fresh is not None:
            return fresh
        try:
            os.unlink(base / "tms.json")
        except FileNotFoundError:
            pass
        _start_tms(dispatcher_info.path, verbose)
        deadline = reactor.seconds() + TMS_START_TIMEOUT
        while reactor.seconds() < deadline:
            info = _read_tms_info()
            if info is not None:
                proto = await _connect_tms_once(reactor, info)
                await _settle(reactor, proto)
                return proto
            await deferLater(reactor, 0.05, lambda: None)
    raise CLIError(
        f"Could not start a TMS: no {base / 'tms.json'} after {TMS_START_TIMEOUT:.0f} s "
        f"(see {base / 'logs' / 'tms.log'})"
    )


async def connect_dispatcher_direct(reactor: Any, dispatcher: str | None = None) -> BoundedAMP:
    try:
        info = find_dispatcher(dispatcher)
    except DispatcherNotFound as e:
        raise CLIError(str(e)) from None
    try:
        proto, _, _ = await connect_dispatcher(reactor, info, commands.ROLE_CLIENT)
    except (ConnectError, ConnectionClosed, OSError, TimeoutError, defer.TimeoutError) as e:
        raise CLIError(
            f"no dispatcher is running at {info.address} (from {info.path}): {e.__class__.__name__}"
        ) from None
    return proto


def failure_line(e: BaseException) -> str:
    """One line for a failure of the link or of the system, without a traceback."""
    if isinstance(e, ConnectionClosed):
        return (
            "the link to the server dropped before it answered; "
            "see `hConnect lswjobs` before you try again"
        )
    if isinstance(e, ConnectError):
        return f"cannot connect: {e.osError or e.__class__.__name__}"
    if isinstance(e, TimeoutError | defer.TimeoutError | defer.CancelledError):
        return "the server did not answer in time; try again, or see its log"
    if isinstance(e, amp.TooLong):
        return "a value is too long to send (over 64 KiB): shorten it"
    if isinstance(e, OSError):
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror or e.__class__.__name__}{where}"
    return f"{e.__class__.__name__}: {e}"


def run_main(prog: str, main: Callable[[Any], Awaitable[int]]) -> None:
    """Run ``main(reactor)`` under ``task.react``; every failure becomes one line on stderr."""
    from twisted.internet import task

    async def guarded(reactor: Any) -> None:
        try:
            status = await main(reactor)
        except CLIError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            status = e.status
        except commands.TMError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            status = 1
        except amp.UnknownRemoteError as e:
            print(f"{prog}: the server failed to answer ({e})", file=sys.stderr)
            status = 1
        except amp.UnhandledCommand as e:
            print(
                f"{prog}: the server does not implement this command ({e.args[-1]})",
                file=sys.stderr,
            )
            status = 1
        except amp.RemoteAmpError as e:
            print(f"{prog}: the server cannot do this: {e}", file=sys.stderr)
            status = 1
        except BrokenPipeError:
            status = reader_gone()
        except (
            ConnectError,
            ConnectionClosed,
            TimeoutError,
            defer.TimeoutError,
            defer.CancelledError,
            amp.TooLong,
            OSError,
        ) as e:
            print(f"{prog}: {failure_line(e)}", file=sys.stderr)
            status = 1
        except Exception as e:  # the last line of defence: one line, never a traceback
            print(
                f"{prog}: internal error ({e.__class__.__name__}: {e}); please report it",
                file=sys.stderr,
            )
            status = 1
        except KeyboardInterrupt:
            status = 130
        if status:
            raise SystemExit(status)

    task.react(guarded)
