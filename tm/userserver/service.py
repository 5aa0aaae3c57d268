"""The TMS: one user's server, the front door of that user's clients.

It listens on an ephemeral TLS port announced in ``~/.taskmanager/tms.json``
(0600 in a 0700 directory, with its certificate and a random key), keeps one
authenticated link to the dispatcher, forwards its clients' typed requests
over it, and starts the user's executors (TMMS) where the dispatcher asks.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import protocol
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols import amp

from tm import auth, jobsign, localsocket
from tm.dispatcher_client import DispatcherLink
from tm.link import DispatcherInfo, user_dir
from tm.loginlimit import LoginAttempts, LoginLimiter
from tm.protocol import commands, control, jobends, webcommands
from tm.protocol.base import BoundedAMP
from tm.userserver import callbacks, local, resubmit, signing, startcommands
from tm.userserver.startcommands import LauncherProtocol, start_failure_reason  # noqa: F401
from tm.userserver.submission import (  # noqa: F401 - tests import them from here
    CONNECTION_FAILURES,
    _reason,
    sends_tables,
    submit_until_acknowledged,
    tables_refused,
)

#: Requests a client may send that the TMS passes to the dispatcher as they are;
#: the dispatcher scopes them to this TMS's proven user.
FORWARDED: tuple[type[amp.Command], ...] = (
    commands.SubmitJobs,
    commands.ListJobs,
    commands.GetJob,
    commands.WaitJob,
    commands.GetStatus,
    commands.ListHosts,
    commands.GroupSummary,
    commands.KillJobs,
    commands.SuspendJob,
    commands.ListExecutors,
    commands.ControlExecutors,
    webcommands.DashboardLink,
    commands.WaitJobs,
    commands.ReadOutput,
    control.ControlJobs,
    control.SetPriority,
)
VERSION_MISMATCH = (
    "this TMS speaks protocol {ours}, the client {theirs}: restart it with `hConnect shutdown`"
)
#: A forwarded WaitJob may legitimately take long.
FORWARD_TIMEOUT = 330.0


def _loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "localhost")


def tms_info_path() -> Path:
    return user_dir() / "tms.json"


class ClientSession(amp.CommandLocator):
    """One client connection: proven by the key from tms.json, then served."""

    def __init__(self, server: UserServer) -> None:
        self.server = server
        self.proven = False
        self.claimed_user = ""
        #: Failed key proofs of a TLS client (None on the uid-checked Unix socket).
        self.login: LoginAttempts | None = None

    def locateResponder(self, name: bytes) -> Any:  # noqa: N802 - AMP's API
        for command in FORWARDED:
            if command.commandName == name:
                return self._wrapWithSerialization(self._forwarder(command), command)
        return super().locateResponder(name)

    def _forwarder(self, command: type[amp.Command]) -> Any:
        async def forward(**kw: Any) -> Any:
            self._require()
            link = self.server.link
            if command is commands.SubmitJobs:
                jobs = kw.pop("jobs")
                kw.pop("sealed_env", None)
                return await self.submit(kw, jobs)
            try:
                if command is commands.GetJob:
                    return self.server.signer.open_answer(await link.call(command, **kw))
                if command in (commands.WaitJob, commands.WaitJobs) and link.connected:
                    return await link.call(command, reply_timeout=FORWARD_TIMEOUT, **kw)
                return await link.call(command, **kw)
            except CONNECTION_FAILURES as e:
                if isinstance(e, commands.DispatcherUnavailable):
                    raise
                # Declared, so the client reads one line, not AMP's "Unknown Error".
                raise commands.DispatcherUnavailable(
                    f"no answer from the dispatcher at {link.info.address}: {_reason(e)}"
                ) from None

        return forward

    async def submit(self, kw: dict[str, Any], jobs: list[Any]) -> dict[str, Any]:
        """Sign the jobs with the user's key and send them, in chunks (tm/userserver/signing)."""
        self._require()
        server = self.server

        async def send(**chunk: Any) -> Any:
            return await submit_until_acknowledged(server.link, server.reactor, chunk)

        async def pause() -> None:
            # Two turns of the reactor: the chunk just written leaves (a write is sent when
            # the reactor next polls) before the next one is made.
            for _ in range(2):
                await deferLater(server.reactor, 0, lambda: None)

        server.callbacks.record(jobs, kw.get("cwd", ""))
        link = server.link
        return await signing.submit(
            server.signer,
            kw,
            jobs,
            send,
            ensureDeferred,
            pause,
            tables=sends_tables(link),
            tables_refused=lambda: tables_refused(link),
        )

    @jobends.ResubmitJobs.responder
    async def resubmit(
        self, job_id: int | None = None, group: str | None = None, failed_only: bool = False
    ) -> dict[str, Any]:
        """Copies of ended jobs, re-signed here (tm/userserver/resubmit.py)."""
        self._require()
        link = self.server.link
        try:
            return await resubmit.resubmit(
                self.server.signer,
                link.call,
                self.submit,
                self.server.reactor.seconds(),
                job_id,
                group,
                bool(failed_only),
            )
        except CONNECTION_FAILURES as e:
            if isinstance(e, commands.TMError):
                raise
            raise commands.DispatcherUnavailable(
                f"no answer from the dispatcher at {link.info.address}: {_reason(e)}"
            ) from None

    def _require(self) -> None:
        if not self.proven:
            raise commands.NotAuthenticated("prove the key from ~/.taskmanager/tms.json first")

    @commands.Hello.responder
    def hello(
        self,
        protocol_version: int,
        role: str,
        user: str,
        host: str,
        pid: int | None = None,
        token: str | None = None,
    ) -> dict:
        commands.check_protocol_version(protocol_version, VERSION_MISMATCH)
        self.claimed_user = user
        return {
            "protocol_version": commands.PROTOCOL_VERSION,
            "server": "tmserver",
            "challenge_path": None,
            "nonce": None,
        }

    @commands.ProveKey.responder
    def prove_key(self, key: str) -> dict:
        if self.login is not None:
            self.login.check(self.claimed_user)
        if not secrets.compare_digest(key.encode(), self.server.key.encode()):
            if self.login is not None:
                self.login.failed(self.claimed_user, "wrong TMS key")
            raise commands.AuthenticationFailed("wrong TMS key")
        self.proven = True
        return {"user": self.server.user}

    @commands.Ping.responder
    def ping(self) -> dict:
        return {"server": "tmserver", "time": self.server.reactor.seconds()}

    @commands.ServerInfo.responder
    def server_info(self) -> dict:
        self._require()
        s = self.server
        return {
            "user": s.user,
            "host": s.public_host,
            "port": s.port,
            "pid": os.getpid(),
            "started_at": s.started_at,
            "dispatcher": s.info.address,
            "dispatcher_connected": s.link.connected,
        }

    @commands.Shutdown.responder
    def shutdown(self) -> dict:
        self._require()
        self.server.reactor.callLater(0.1, self.server.reactor.stop)
        return {}


class DispatcherSide(amp.CommandLocator):
    """What the dispatcher may ask of this TMS."""

    def __init__(self, server: UserServer) -> None:
        self.server = server

    @commands.StartExecutor.responder
    def start_executor(
        self, host: str, ssh_target: str, command: str, token: str | None = None
    ) -> dict:
        self.server.start_executor(host, ssh_target, command, token)
        return {}

    @commands.Ping.responder
    def ping(self) -> dict:
        return {"server": "tmserver", "time": self.server.reactor.seconds()}

    @jobends.JobEnded.responder
    def job_ended(self, jobs: Any) -> dict:
        self.server.callbacks.job_ended(jobs if isinstance(jobs, list) else [])
        return {}


class UserServer(service.Service):
    log = Logger()

    def __init__(self, reactor: Any, info: DispatcherInfo, interface: str = "") -> None:
        self.reactor = reactor
        self.info = info
        self.user = getpass.getuser()
        self.public_host = socket.gethostname()
        self.interface = interface
        self.key = secrets.token_urlsafe(32)
        self.logins = LoginLimiter(reactor)
        #: The user's key as it signs jobs and opens environments: made at start.
        self.signer: signing.Signer
        self.port = 0
        self._certificate = b""
        self.started_at = 0.0
        self.link = DispatcherLink(
            reactor,
            info,
            commands.ROLE_TMS,
            self.public_host,
            lambda: DispatcherSide(self),
            on_connected=self._dispatcher_connected,
            on_fatal=lambda e: None,
        )
        #: On-end callbacks of the user's jobs (tm/userserver/callbacks.py).
        self.callbacks = callbacks.Callbacks(reactor, self.link)
        #: The local addresses this TMS reached the dispatcher from: other cluster hosts can
        #: reach it there too, which its host name may not tell them (published in tms.json).
        self.addresses: list[str] = []
        self._listening: Any = None
        self._extra: dict[str, Any] = {}  # address -> its listening port
        self._tls: Any = None
        self._factory: Any = None
        #: The Unix socket where clients on this host reach this TMS without TLS.
        self.socket_path = Path(localsocket.socket_path(self.public_host))
        self._local: Any = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.started_at = self.reactor.seconds()
        base = user_dir()
        base.mkdir(mode=0o700, exist_ok=True)
        os.chmod(base, 0o700)
        try:
            self.signer = signing.Signer(jobsign.ensure_key(), self.user, self.reactor)
        except jobsign.JobKeyError as e:
            self.log.error("tmserver cannot sign jobs: {error}", error=str(e))
            self.reactor.stop()
            return
        key_pem, cert_pem = auth.ensure_key_pair(
            base / "tms" / "tms.key", base / "tms" / "tms.crt", auth.TMS_TLS_NAME
        )
        factory = protocol.Factory.forProtocol(self._client_protocol)
        self._tls = auth.server_tls_options(key_pem, cert_pem)
        self._factory = factory
        # Loopback first (issue 10 point 8); the address this TMS reaches the dispatcher from
        # is added when the link is up (_dispatcher_connected), on the same port.
        endpoint = SSL4ServerEndpoint(
            self.reactor, 0, self._tls, interface=self.interface or "127.0.0.1"
        )
        d = endpoint.listen(factory)
        d.addCallback(self._listening_on, cert_pem)
        d.addErrback(self._failed)
        self._local = local.listen(self.reactor, self, self.socket_path)
        self.link.start()

    def _client_protocol(self) -> BoundedAMP:
        session = ClientSession(self)
        proto = BoundedAMP(locator=session, clock=self.reactor)
        session.login = LoginAttempts(self.logins, self.reactor, proto)
        return proto

    def _listening_on(self, port: Any, cert_pem: bytes) -> None:
        self._listening = port
        self.port = port.getHost().port
        for address in list(self.addresses):  # the link came up first
            if not self._listen_also(address):
                self.addresses.remove(address)
        self._certificate = cert_pem
        self._publish()
        self.log.info("tmserver of {user} ready on port {port}", user=self.user, port=self.port)

    def _publish(self) -> None:
        """Write ~/.taskmanager/tms.json: where this TMS listens, and its key (file 0600)."""
        import json

        data = {
            "host": self.public_host,
            "addresses": self.addresses,
            "port": self.port,
            "certificate": self._certificate.decode("ascii"),
            "key": self.key,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "dispatcher": self.info.path,
        }
        auth.write_secret(tms_info_path(), json.dumps(data, indent=2).encode())

    def _dispatcher_connected(self, proto: Any) -> None:
        # Callbacks of jobs that ended while no TMS was linked run now.
        ensureDeferred(self.callbacks.catch_up())
        address = proto.transport.getHost().host
        if address and address not in self.addresses and not _loopback(address):
            if self._listening is not None and not self._listen_also(address):
                return
            self.addresses.append(address)
            if self._listening is not None and self._owns_info():
                self._publish()

    def _listen_also(self, address: str) -> bool:
        """Listen on ``address`` too (the port of the loopback listener): the user's other
        hosts reach this TMS where the dispatcher does. Whether it now listens there."""
        if self.interface or address in self._extra:
            return not self.interface
        try:
            self._extra[address] = self.reactor.listenSSL(
                self.port, self._factory, self._tls, interface=address
            )
        except CannotListenError as e:
            self.log.warn(
                "cannot listen on {address} port {port} as well: {e}; clients on other "
                "hosts may not reach this TMS",
                address=address,
                port=self.port,
                e=str(e.socketError or e),
            )
            return False
        self.log.info("tmserver also listening on {address}", address=address)
        return True

    def _owns_info(self) -> bool:
        import json

        try:
            return bool(json.loads(tms_info_path().read_text()).get("pid") == os.getpid())
        except (OSError, ValueError):
            return False

    def _failed(self, failure: Any) -> None:
        self.log.failure("tmserver could not listen", failure)
        self.reactor.stop()

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        self.link.stop()
        try:
            import json

            path = tms_info_path()
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
        local_port, self._local = self._local, None
        if local_port is not None:
            local_port.stopListening()  # removes the socket file
        for extra in self._extra.values():
            extra.stopListening()
        self._extra.clear()
        if self._listening is not None:
            return self._listening.stopListening()
        return None

    # --- executors ---------------------------------------------------------------------

    def executor_argv(self, host: str, twistd: str = "", token: bool = False) -> list[str]:
        """The command that starts this user's TMMS for ``host``.

        ``twistd`` is the host's ``tmmenial_command`` from the cluster file: the twistd to run
        there (e.g. ``/opt/tm/venv/bin/twistd``, or a wrapper that sets up the environment
        first), to which the pid file, log file and ``tmmenial`` arguments are added. Without
        one, this TMS's own Python runs twistd (right where hosts share the installation).
        """
        logs = user_dir() / "logs"
        prefix = (
            shlex.split(twistd)
            if twistd.strip()
            else [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        )
        return [
            *prefix,
            "--pidfile",
            str(user_dir() / f"tmmenial.{host}.pid"),
            "--logfile",
            str(logs / f"tmmenial.{host}.log"),
            "tmmenial",
            *(["--token-from-stdin"] if token else []),
            "--host",
            host,
            "--dispatcher",
            self.info.path,
            # ssh does not carry $TM_DISPATCHER_ACCOUNT: name the account the file was trusted for.
            *(["--dispatcher-account", self.info.account] if self.info.account else []),
        ]

    def start_executor(
        self, host: str, ssh_target: str, command: str, token: str | None = None
    ) -> None:
        (user_dir() / "logs").mkdir(mode=0o700, exist_ok=True)
        # The dispatcher names the command; this user's configuration decides whether it runs.
        refusal = startcommands.start_command_refusal(command)
        if refusal is not None:
            ensureDeferred(self._report_failure(host, refusal))
            return
        local = self.executor_argv(host, command, token=bool(token))
        if ssh_target:
            remote = " ".join(shlex.quote(a) for a in local)
            argv = [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-x",
                ssh_target,
                remote,
            ]
        else:
            argv = local
        ensureDeferred(self._launch(host, argv, token))

    async def _launch(self, host: str, argv: list[str], token: str | None = None) -> None:
        self.log.info("starting an executor on {host}: {argv}", host=host, argv=" ".join(argv))
        proto = LauncherProtocol()
        try:
            self.reactor.spawnProcess(
                proto, argv[0], argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"}
            )
        except OSError as e:
            await self._report_failure(host, f"cannot run {argv[0]}: {e.strerror}")
            return
        assert proto.transport is not None  # spawnProcess connected it
        if token:
            # The executor's proof that this TMS started it (through ssh's stdin too).
            proto.transport.write(token.encode("ascii") + b"\n")  # type: ignore[call-arg,misc]
        proto.transport.closeStdin()  # type: ignore[misc]
        code = await proto.done
        if code != 0:
            await self._report_failure(host, start_failure_reason(proto.output, code))

    async def _report_failure(self, host: str, reason: str) -> None:
        self.log.warn("executor on {host} did not start: {reason}", host=host, reason=reason)
        try:
            await self.link.call(commands.ExecutorStartFailed, host=host, reason=reason)
        except Exception as e:
            self.log.info("could not tell the dispatcher: {e}", e=str(e))
