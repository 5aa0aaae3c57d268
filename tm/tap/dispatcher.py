"""``twistd tmdispatcher``: options, configuration checks, and wiring of the dispatcher."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.threadpool import ThreadPool

from tm import auth, config
from tm.core.model import User
from tm.dispatcher import edge
from tm.link import user_dir, write_info
from tm.logs import twistd_log_path, with_bounded_log
from tm.tap.versionopt import VersionOption

DEFAULT_PORT = 10101


class Options(VersionOption, usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Runs the TaskManager dispatcher: the queue, the slot accounting and the "
        "placement of jobs.  With no configuration at all it uses an SQLite database "
        "under var/, the local host with all its cores, and the account that runs it "
        "as its only user and admin."
    )
    optParameters = [
        ["port", "p", DEFAULT_PORT, "TLS port for AMP.", int],
        ["interface", None, "", "Address to listen on (default: all)."],
        [
            "database",
            "d",
            None,
            "Database URL: sqlite:///PATH or mysql://USER:PASSWORD@HOST:PORT/DB "
            "(default: sqlite under the var directory; also $TM_DATABASE_URL).",
        ],
        ["config-dir", "c", "etc", "Directory with cluster.tab / cluster.cfg and users."],
        ["var-dir", None, "var", "Directory for run-time state (database, keys, challenge)."],
        [
            "cluster-config",
            None,
            "tab",
            "Which cluster file to read: tab (cluster.tab) or cfg (cluster.cfg).",
        ],
        [
            "public-host",
            None,
            None,
            "Host name clients use to reach the dispatcher (default: this host's name).",
        ],
        [
            "fairshare-half-life",
            None,
            86400.0,
            "Seconds after which a user's recorded usage counts half in fair share (default a day).",
            float,
        ],
        [
            "executor-lease",
            None,
            300.0,
            "Seconds of silence after which an executor is dropped, and after which the jobs of a "
            "dropped executor that has not come back are requeued; executors stop their jobs after "
            "half of it without an answer from the dispatcher (default 300).",
            float,
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "Seconds a new connection has to finish TLS, Hello and Authenticate (default 10).",
            float,
        ],
        [
            "drain-timeout",
            None,
            30.0,
            "Seconds a client may leave answers unread (beyond 64 KiB) before it is dropped; "
            "also the time a started request may stay unfinished (default 30).",
            float,
        ],
        [
            "max-unauthenticated-per-address",
            None,
            32,
            "Connections from one address that have not authenticated yet (default 32).",
            int,
        ],
        [
            "max-connections-per-address",
            None,
            512,
            "Connections from one address in all (default 512).",
            int,
        ],
        [
            "manhole",
            None,
            None,
            "Serve a Python manhole (telnet framing) on the Unix socket PATH, mode 0600, for "
            "the dispatcher's own uid only (default: off).",
        ],
        [
            "http",
            None,
            None,
            "Serve the web dashboard and /metrics on this Twisted endpoint, e.g. "
            "tcp:8080:interface=127.0.0.1 or ssl:8443:privateKey=KEY:certKey=CERT "
            "(default: off; see docs/dashboard.md).",
        ],
        [
            "metrics",
            None,
            None,
            "Serve /metrics on this endpoint instead of on --http's (default: with --http).",
        ],
        [
            "http-url",
            None,
            None,
            "The dashboard's address as browsers reach it, for the links of `hConnect "
            "dashboard` (default: from the --http endpoint and the public host).",
        ],
        [
            "dashboard-link-lifetime",
            None,
            600.0,
            "Seconds a link of `hConnect dashboard` stays valid (it works once; default 600).",
            float,
        ],
    ]

    def postOptions(self) -> None:
        if self["cluster-config"] not in ("tab", "cfg"):
            raise usage.UsageError("--cluster-config must be 'tab' or 'cfg'")
        if not self["executor-lease"] >= 1:
            raise usage.UsageError("--executor-lease must be at least 1 second")
        if not self["fairshare-half-life"] > 0:
            raise usage.UsageError("--fairshare-half-life must be a positive number of seconds")
        for name in ("handshake-timeout", "drain-timeout"):
            if not self[name] > 0:
                raise usage.UsageError(f"--{name} must be a positive number of seconds")
        for name in ("max-unauthenticated-per-address", "max-connections-per-address"):
            if not self[name] >= 1:
                raise usage.UsageError(f"--{name} must be at least 1")
        self["config-dir"] = Path(self["config-dir"]).resolve()
        self["var-dir"] = Path(self["var-dir"]).resolve()
        if self["database"] is None:
            self["database"] = os.environ.get("TM_DATABASE_URL") or (
                f"sqlite:///{self['var-dir'] / 'taskmanager.sqlite'}"
            )
        # Checked here, not in makeService: twistd reports a UsageError from
        # postOptions as one line and exits non-zero, without a traceback.
        try:
            self["hosts"] = load_cluster(self["config-dir"], self["cluster-config"])
            self["users"] = load_users(self["config-dir"])
        except config.ConfigError as e:
            raise usage.UsageError(f"bad configuration: {e}") from None
        from tm.db.store import check_url_sync

        self["var-dir"].mkdir(parents=True, exist_ok=True)
        # After var/ exists, so that --manhole var/manhole.sock works on a fresh machine.
        if self["manhole"] is not None:
            from tm.dispatcher.manhole import ManholePathError, check_socket_path

            try:
                self["manhole"] = check_socket_path(self["manhole"])
            except ManholePathError as e:
                raise usage.UsageError(str(e)) from None
        if not self["dashboard-link-lifetime"] > 0:
            raise usage.UsageError("--dashboard-link-lifetime must be a positive number of seconds")
        if self["metrics"] is not None and self["http"] is None:
            raise usage.UsageError("--metrics needs --http (the dashboard's endpoint)")
        try:
            check_url_sync(self["database"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None


def load_cluster(config_dir: Path, kind: str) -> list:
    path = config_dir / ("cluster.tab" if kind == "tab" else "cluster.cfg")
    if not path.exists():
        return [config.default_local_host(socket.gethostname(), os.cpu_count() or 1)]
    text = path.read_text()
    hosts = (
        config.parse_cluster_tab(text, str(path))
        if kind == "tab"
        else config.parse_cluster_cfg(text, str(path))
    )
    if not hosts:
        raise usage.UsageError(f"{path} lists no hosts")
    return hosts


def load_users(config_dir: Path) -> list[User]:
    path = config_dir / "users"
    if not path.exists():
        return [User(name=getpass.getuser(), roles=frozenset({"user", "admin"}))]
    users = config.parse_users(path.read_text(), str(path))
    if not users:
        raise usage.UsageError(f"{path} lists no users")
    return users


class DispatcherRunner(service.MultiService):
    """Starts the store and the dispatcher, then listens and publishes where it is."""

    log = Logger()

    def __init__(
        self, reactor: Any, settings: Any, listen: service.Service, certificate: bytes
    ) -> None:
        super().__init__()
        from tm.db.store import Store
        from tm.dispatcher.service import Dispatcher

        self.reactor = reactor
        self.store = Store.from_url(settings.database_url, reactor)
        self.dispatcher = Dispatcher(reactor, settings, self.store)
        self.fs_pool = ThreadPool(1, 4, name="tm-fs-checks")
        self.dispatcher.fs_pool = self.fs_pool
        self.listen = listen
        self.certificate = certificate

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.fs_pool.start()
        self.reactor.callWhenRunning(self._start)

    def _start(self) -> None:
        from twisted.internet.defer import ensureDeferred

        d = ensureDeferred(self._start_async())
        d.addErrback(self._failed)

    async def _start_async(self) -> None:
        await self.store.check()
        await self.dispatcher.start()
        self.listen.setServiceParent(self)
        info = self.dispatcher.public_info(self.certificate)
        settings = self.dispatcher.settings
        write_info(settings.var_dir / "dispatcher.json", info)
        # The account that runs the dispatcher finds it without any variable.
        write_info(user_dir() / "dispatcher.json", info)
        self.log.info(
            "tmdispatcher ready on port {port} with {hosts} host(s), {users} user(s), database {db}",
            port=settings.port,
            hosts=len(settings.hosts),
            users=len(settings.users),
            db=self.store.safe_url(),
        )

    def _failed(self, failure: Any) -> None:
        from tm.db.errors import StoreError
        from tm.protocol.commands import TMError

        if failure.check(TMError, StoreError):  # a reason for the admin, not a bug: one line
            self.log.error(
                "tmdispatcher could not start: {reason}", reason=failure.getErrorMessage()
            )
        else:
            self.log.failure("tmdispatcher could not start", failure)
        # twistd exits 0 once the reactor stops: a failed start must not look like a stop.
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.stop()

    def stopService(self) -> Any:  # noqa: N802
        from twisted.internet.defer import DeferredList, ensureDeferred

        stopped = super().stopService()
        saved = ensureDeferred(self.dispatcher.save_usage())
        saved.addErrback(
            lambda f: self.log.warn(
                "fair-share usage not saved at stop: {e}", e=f.getErrorMessage()
            )
        )

        def close(_: Any) -> None:
            self.fs_pool.stop()
            self.store.close()

        return DeferredList([stopped, saved]).addBoth(close)


def make_dispatcher(options: Options) -> DispatcherRunner:
    from twisted.internet import reactor

    from tm.dispatcher.audit import AuditLog
    from tm.dispatcher.service import Settings
    from tm.dispatcher.session import DispatcherProtocol

    hosts, users = options["hosts"], options["users"]
    var_dir: Path = options["var-dir"]
    os.chmod(var_dir, 0o711)
    auth.ensure_challenge_dir(var_dir / "challenge")
    key_pem, cert_pem = auth.ensure_key_pair(
        var_dir / "private" / "dispatcher.key", var_dir / "dispatcher.crt", auth.DISPATCHER_TLS_NAME
    )
    settings = Settings(
        var_dir=var_dir,
        config_dir=options["config-dir"],
        database_url=options["database"],
        port=options["port"],
        interface=options["interface"],
        public_host=options["public-host"] or socket.gethostname(),
        hosts=hosts,
        users=users,
        cluster_config=options["cluster-config"],
        fairshare_half_life=options["fairshare-half-life"],
        executor_lease=options["executor-lease"],
    )
    limits = edge.EdgeLimits(
        handshake_timeout=options["handshake-timeout"],
        partial_box_timeout=options["drain-timeout"],
        drain_timeout=options["drain-timeout"],
        max_unauthenticated_per_address=options["max-unauthenticated-per-address"],
        max_connections_per_address=options["max-connections-per-address"],
    )
    # Bound now, before twistd daemonizes: a port in use stops the start on the terminal
    # with one line and a non-zero exit (bound later, the error went to the log only).
    try:
        sock = edge.bind(options["port"], options["interface"])
    except edge.CannotListen as e:
        raise SystemExit(f"tmdispatcher: {e}") from None
    guard = edge.AddressGuard(limits)
    runner: DispatcherRunner
    factory = Factory.forProtocol(lambda: DispatcherProtocol(runner.dispatcher, limits, guard))
    tls = edge.guarded_factory(reactor, auth.server_tls_options(key_pem, cert_pem), factory, guard)
    listen = edge.EdgeListener(reactor, sock, tls)
    runner = DispatcherRunner(reactor, settings, listen, cert_pem)
    # The audit log lies next to the dispatcher's log file (in var/ when it logs elsewhere).
    log_path = twistd_log_path(getattr(options, "parent", None))
    audit_dir = Path(log_path).resolve().parent if log_path else var_dir
    runner.dispatcher.audit = AuditLog(audit_dir / "audit.log", reactor)
    if options["http"] is not None:
        from tm.web.service import CannotServe, WebService

        try:
            WebService(
                reactor,
                runner.dispatcher,
                options["http"],
                options["metrics"],
                options["http-url"],
                var_dir,
                link_lifetime=options["dashboard-link-lifetime"],
            ).setServiceParent(runner)
        except CannotServe as e:
            raise SystemExit(f"tmdispatcher: {e}") from None
    if options["manhole"] is not None:
        from tm.dispatcher.manhole import ManholeService

        ManholeService(reactor, options["manhole"], runner.dispatcher).setServiceParent(runner)
    return runner


def makeService(options: Options) -> service.Service:  # noqa: N802
    """The dispatcher, with a twistd log file that rotates and keeps a bounded number."""
    return with_bounded_log(make_dispatcher(options), options)
