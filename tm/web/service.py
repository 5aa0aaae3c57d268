"""The dashboard's service: the web application's state, the live streams, and listening.

``WebApp`` holds what the resources share (the dispatcher, the feed, the metrics, the
tokens and sessions, the streams); ``WebService`` binds the ``--http`` (and ``--metrics``)
endpoints, publishes the dashboard's address in ``var/http.json`` and keeps the streams
fed.  See docs/dashboard.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource
from twisted.web.server import Site

from tm.web import views
from tm.web.feed import DashboardFeed
from tm.web.metrics import DispatcherMetrics
from tm.web.resources import COOKIE, Message, Metrics, Root, static_file, to_json
from tm.web.tokens import TOKEN_LIFETIME, SessionBook, TokenBook, Viewer

#: Open event streams, at most (each costs a state view per update).
MAX_STREAMS = 64
#: Seconds between updates when nothing changes (they also keep proxies from closing).
REFRESH_INTERVAL = 5.0


class CannotServe(Exception):
    """An ``--http``/``--metrics`` endpoint that cannot be used; the text says why."""


class Hub:
    """The open ``/events`` streams, and the pushing of state views to them."""

    log = Logger()

    def __init__(self, app: WebApp) -> None:
        self.app = app
        self.streams: dict[Any, str] = {}  # request -> session cookie
        self._busy = False
        self._again = False

    def room(self) -> bool:
        return len(self.streams) < MAX_STREAMS

    def add(self, request: Any, cookie: str) -> None:
        request.write(b"retry: 3000\n\n")
        self.streams[request] = cookie
        request.notifyFinish().addBoth(lambda _: self.streams.pop(request, None))
        self.push()

    def push(self) -> None:
        if not self.streams:
            return
        if self._busy:
            self._again = True
            return
        self._busy = True
        ensureDeferred(self._push()).addBoth(self._pushed)

    async def _push(self) -> None:
        by_viewer: dict[Viewer, list[Any]] = {}
        for request, cookie in list(self.streams.items()):
            viewer = self.app.viewer_of(cookie)
            if viewer is None:  # the session ended (or the user left etc/users)
                self.streams.pop(request, None)
                request.write(b"event: signedout\ndata: {}\n\n")
                request.finish()
                continue
            by_viewer.setdefault(viewer, []).append(request)
        for viewer, requests in by_viewer.items():
            view = await views.state_view(self.app.dispatcher, self.app.feed, viewer)
            event = b"event: state\ndata: " + to_json(view) + b"\n\n"
            for request in requests:
                if request in self.streams:
                    request.write(event)

    def _pushed(self, result: Any) -> None:
        if isinstance(result, Failure):
            self.log.failure("dashboard: an update was not sent", result)
        self._busy = False
        if self._again:
            self._again = False
            self.push()

    def close(self) -> None:
        for request in list(self.streams):
            self.streams.pop(request, None)
            request.finish()


class WebApp:
    """What the resources share."""

    def __init__(self, dispatcher: Any, clock: Any, secure: bool = False) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.secure = secure
        self.feed = DashboardFeed(clock)
        self.metrics = DispatcherMetrics(dispatcher, clock)
        self.tokens = TokenBook(clock)
        self.sessions = SessionBook(clock)
        self.hub = Hub(self)
        self.feed.listeners.append(self.hub.push)
        self.index_html = static_file("index.html")
        #: The dashboard's address, for the links (set once it listens).
        self.base_url = ""

    def attach(self) -> None:
        """Hear the dispatcher's transitions, submissions, passes and writes."""
        self.dispatcher.observers.extend([self.feed, self.metrics])
        self.metrics.time_writes(self.dispatcher.writer)
        self.dispatcher.web = self

    def link(self, viewer: Viewer) -> str:
        return f"{self.base_url}/login?token={self.tokens.issue(viewer)}"

    def viewer_of(self, cookie: str) -> Viewer | None:
        """The session's viewer as things are now: none once the user left etc/users, and
        seeing all only while the admin role lasts."""
        viewer = self.sessions.viewer(cookie)
        if viewer is None:
            return None
        user = self.dispatcher.users.get(viewer.user)
        if user is None:
            return None
        return Viewer(viewer.user, viewer.sees_all and user.is_admin)

    def viewer(self, request: Any) -> Viewer | None:
        raw = request.getCookie(COOKIE)
        if not raw:
            return None
        try:
            return self.viewer_of(raw.decode("ascii"))
        except UnicodeDecodeError:
            return None

    def site(self, metrics: bool) -> Site:
        return _quiet_site(Root(self, metrics))

    def metrics_site(self) -> Site:
        return _quiet_site(MetricsRoot(self))


class MetricsRoot(resource.Resource):
    """The ``--metrics`` endpoint: ``/metrics`` and nothing else."""

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.metrics = Metrics(app)

    def getChild(self, path: bytes, request: Any) -> resource.Resource:  # noqa: N802
        if path == b"metrics":
            return self.metrics
        return Message(404, "Metrics are at /metrics.")


def _quiet_site(root: resource.Resource) -> Site:
    site = Site(root)
    site.displayTracebacks = False
    site.log = lambda request: None  # type: ignore[method-assign] # no access log
    return site


def _listen_now(reactor: Any, description: str, site: Site) -> Any:
    """Bind ``description`` now (before twistd daemonizes: an address in use stops the
    start with one line); the listening port."""
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise CannotServe(f"bad endpoint {description!r}: {e}") from None
    outcome: list[Any] = []
    endpoint.listen(site).addBoth(outcome.append)
    if not outcome:
        raise CannotServe(f"endpoint {description!r} does not listen at once; use tcp: or ssl:")
    if isinstance(outcome[0], Failure):
        raise CannotServe(f"cannot listen on {description!r}: {outcome[0].getErrorMessage()}")
    return outcome[0]


def base_url(description: str, port: Any, public_host: str) -> str:
    scheme = "https" if description.split(":", 1)[0] in ("ssl", "tls") else "http"
    address = port.getHost()
    if not hasattr(address, "port"):
        raise CannotServe(
            f"{description!r} has no TCP port: give the address browsers reach with --http-url"
        )
    host = getattr(address, "host", "")
    if host in ("", "0.0.0.0", "::"):
        host = public_host
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{address.port}"


class WebService(service.Service):
    log = Logger()

    def __init__(
        self,
        reactor: Any,
        dispatcher: Any,
        http: str,
        metrics: str | None,
        public_url: str | None,
        var_dir: Path,
        link_lifetime: float = TOKEN_LIFETIME,
    ) -> None:
        self.reactor = reactor
        self.http = http
        self.app = WebApp(dispatcher, reactor, secure=http.split(":", 1)[0] in ("ssl", "tls"))
        self.app.tokens.lifetime = link_lifetime
        self.app.attach()
        self.ports = [_listen_now(reactor, http, self.app.site(metrics=metrics is None))]
        if public_url:
            self.app.base_url = public_url.rstrip("/")
        else:
            self.app.base_url = base_url(http, self.ports[0], dispatcher.settings.public_host)
        info: dict[str, Any] = {
            "url": self.app.base_url,
            "port": getattr(self.ports[0].getHost(), "port", None),
        }
        if metrics is not None:
            self.ports.append(_listen_now(reactor, metrics, self.app.metrics_site()))
            info["metrics_port"] = getattr(self.ports[1].getHost(), "port", None)
        path = var_dir / "http.json"
        path.write_text(json.dumps(info) + "\n")
        os.chmod(path, 0o644)
        self.refresh = LoopingCall(self.app.hub.push)
        self.refresh.clock = reactor

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self.app.metrics.start()
        self.refresh.start(REFRESH_INTERVAL, now=False)
        self.log.info("dashboard on {url}", url=self.app.base_url)

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        if self.refresh.running:
            self.refresh.stop()
        self.app.metrics.stop()
        self.app.feed.stop()
        self.app.hub.close()
        return DeferredList([d for p in self.ports if (d := p.stopListening()) is not None])
