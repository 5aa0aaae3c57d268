"""Finding the dispatcher and opening an authenticated link to it.

Clients (TMS, TMMS, ``hConnect -T``) learn the dispatcher's address, its pinned
certificate and its challenge directory from one published file,
``dispatcher.json``.  Where that file is looked for, in order:

1. the ``--dispatcher FILE`` option of a command, or ``$TM_DISPATCHER``;
2. ``~/.taskmanager/dispatcher.json`` (the dispatcher writes it for its own account,
   which is all a single-user installation needs);
3. ``/etc/taskmanager/dispatcher.json`` (a multi-user installation: the admin
   copies or links ``var/dispatcher.json`` there).

Whoever can write that file chooses the server a client trusts (and answers the file
challenge for): a client reads it only when root, the client's own user or the dispatcher's
account owns it and no one else may write it (:func:`tm.auth.read_trusted`). The dispatcher's
account is the one named by ``$TM_DISPATCHER_ACCOUNT`` (user name or uid; a TMS passes it on
to the executors it starts, whose environment ssh does not carry).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.endpoints import SSL4ClientEndpoint, connectProtocol
from twisted.internet.ssl import Certificate
from twisted.internet.threads import deferToThread

from tm import auth, localsocket
from tm.protocol import commands
from tm.protocol.base import BoundedAMP

SYSTEM_INFO = Path("/etc/taskmanager/dispatcher.json")


def user_dir() -> Path:
    """``~/.taskmanager``: the user's TaskManager state (0700); where every part finds it."""
    return Path(localsocket.user_dir())


class DispatcherNotFound(Exception):
    """No usable dispatcher.json; the text says where we looked."""


@dataclass(frozen=True)
class DispatcherInfo:
    host: str
    port: int
    certificate: bytes
    challenge_dir: str
    path: str
    #: The dispatcher's account the file was trusted for (a user name or uid), if any.
    account: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def candidate_paths(explicit: str | None = None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    env = os.environ.get("TM_DISPATCHER")
    if env:
        return [Path(env)]
    return [user_dir() / "dispatcher.json", SYSTEM_INFO]


def find_dispatcher(explicit: str | None = None, account: str | None = None) -> DispatcherInfo:
    """The dispatcher described by the first file of :func:`candidate_paths` that exists;
    ``account`` (default ``$TM_DISPATCHER_ACCOUNT``) names the dispatcher's account."""
    paths = candidate_paths(explicit)
    for path in paths:
        if path.exists():
            return load_info(path, account)
    looked = ", ".join(str(p) for p in paths)
    raise DispatcherNotFound(
        f"no dispatcher found: looked for {looked}; start one with `twistd tmdispatcher` "
        "or point TM_DISPATCHER at its var/dispatcher.json"
    )


def load_info(path: Path, account: str | None = None) -> DispatcherInfo:
    if account is None:
        account = os.environ.get(auth.ACCOUNT_VARIABLE, "").strip() or None
    try:
        text = auth.read_trusted(path, account=auth.dispatcher_account(account or ""))
    except auth.SecretFileError as e:
        raise DispatcherNotFound(str(e)) from None
    try:
        data = json.loads(text)
        info = DispatcherInfo(
            host=str(data["host"]),
            port=int(data["port"]),
            certificate=str(data["certificate"]).encode("ascii"),
            challenge_dir=str(data["challenge_dir"]),
            path=str(path),
            account=account,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        what = f"no {e} field" if isinstance(e, KeyError) else str(e)
        raise DispatcherNotFound(
            f"cannot read dispatcher information from {path}: {what}; "
            "copy it again from the dispatcher's var/dispatcher.json"
        ) from None
    if not 0 < info.port < 65536:
        raise DispatcherNotFound(
            f"{path}: the port {info.port} is not a TCP port; copy it "
            "again from the dispatcher's var/dispatcher.json"
        )
    try:
        Certificate.loadPEM(info.certificate)
    except Exception:  # OpenSSL says only "no start line" or the like
        raise DispatcherNotFound(
            f"{path}: its certificate is not a PEM certificate; copy it "
            "again from the dispatcher's var/dispatcher.json"
        ) from None
    return info


def write_info(path: Path, info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(json.dumps(info, indent=2))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def connect_host(host: str) -> str:
    """Connect to the loopback address when the dispatcher runs on this host."""
    if host in (socket.gethostname(), socket.getfqdn()):
        return "127.0.0.1"
    return host


def dispatcher_endpoint(reactor: Any, info: DispatcherInfo, timeout: float = 10.0) -> Any:
    """The TLS endpoint of the pinned dispatcher."""
    return SSL4ClientEndpoint(
        reactor,
        connect_host(info.host),
        info.port,
        auth.client_tls_options(info.certificate, auth.DISPATCHER_TLS_NAME),
        timeout=timeout,
    )


async def log_in(
    reactor: Any,
    proto: Any,
    info: DispatcherInfo,
    role: str,
    host: str | None = None,
    timeout: float = 10.0,
) -> tuple[str, list[str]]:
    """Hello, the file challenge and Authenticate on a fresh link: the proven user and roles.

    Closes the link when any step fails (the error is raised as it came).
    """
    proven = await prove(reactor, proto, info, role, host, timeout)
    return proven["user"], proven["roles"]


async def prove(
    reactor: Any,
    proto: Any,
    info: DispatcherInfo,
    role: str,
    host: str | None = None,
    timeout: float = 10.0,
    token: str | None = None,
) -> dict[str, Any]:
    """As :func:`log_in`, with an executor's start token or ticket; Authenticate's answer."""
    try:
        hello = await proto.call(
            commands.Hello,
            reply_timeout=timeout,
            protocol_version=commands.PROTOCOL_VERSION,
            role=role,
            user=getpass.getuser(),
            host=host or socket.gethostname(),
            pid=os.getpid(),
            **({"token": token} if token else {}),
        )
        # Creating the file may block on NFS: keep it off the reactor thread.
        answering = deferToThread(
            auth.answer_challenge, hello["challenge_path"], hello["nonce"], info.challenge_dir
        )
        await answering.addTimeout(timeout, reactor)
        proven = await proto.call(commands.Authenticate, reply_timeout=timeout)
    except BaseException:
        if proto.transport is not None:  # None once the connection is lost
            proto.transport.loseConnection()
        raise
    return dict(proven)


async def connect_dispatcher(
    reactor: Any,
    info: DispatcherInfo,
    role: str,
    host: str | None = None,
    locator: Any = None,
    timeout: float = 10.0,
) -> tuple[BoundedAMP, str, list[str]]:
    """Open a TLS link to the pinned dispatcher and prove our user (one try, no retry).

    Returns the protocol, the proven user and their roles.
    """
    proto = BoundedAMP(locator=locator, clock=reactor)
    await connectProtocol(dispatcher_endpoint(reactor, info, timeout), proto)
    user, roles = await log_in(reactor, proto, info, role, host, timeout)
    return proto, user, roles
