"""The dashboard's HTTP resources (twisted.web): the pages, the JSON API, the live event
stream and ``/metrics``.

Every answer carries a strict Content-Security-Policy (scripts and styles from this
server only, nothing inline), ``no-store``, ``nosniff`` and ``no-referrer`` (the link's
token must not leak through a Referer); there are no CORS headers, so other sites'
scripts cannot read anything.  The data is JSON that the page puts into the document as
text only (``textContent``): a job's command is the user's text and is never markup.
A refusal is a 403 page with one sentence; an unexpected error a 500 page with one
sentence, the details in the dispatcher's log.
"""

from __future__ import annotations

import html
import json
from importlib import resources as package_files
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import NOT_DONE_YET

from tm.web import views
from tm.web.tokens import Viewer

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tm.web.service import WebApp

COOKIE = b"tm_session"
CSP = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
EXPIRED = (
    "This dashboard link has expired, was used already, or is not valid: run "
    "`hConnect dashboard` for a new one."
)
SIGNED_OUT = (
    "You are not signed in to this dashboard: run `hConnect dashboard` and open the link it prints."
)
STATIC = {
    b"app.js": "application/javascript; charset=utf-8",
    b"app.css": "text/css; charset=utf-8",
}


def harden(request: Any, content_type: str) -> None:
    request.setHeader(b"content-type", content_type.encode("ascii"))
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"content-security-policy", CSP)


def page(request: Any, code: int, sentence: str, head: str = "") -> bytes:
    """A small HTML page that says one thing."""
    request.setResponseCode(code)
    harden(request, "text/html; charset=utf-8")
    text = html.escape(sentence)
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"{head}<title>TaskManager</title></head>"
        f"<body><p>{text}</p></body></html>"
    ).encode()


def to_json(value: Any) -> bytes:
    # "<" escaped as well: the answer stays inert even where something treated it as HTML.
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").encode()


def static_file(name: str) -> bytes:
    return package_files.files("tm.web").joinpath("static", name).read_bytes()


class _Leaf(resource.Resource):
    isLeaf = True

    def __init__(self, app: WebApp) -> None:
        super().__init__()
        self.app = app


class Message(resource.Resource):
    isLeaf = True

    def __init__(self, code: int, sentence: str) -> None:
        super().__init__()
        self.code, self.sentence = code, sentence

    def render(self, request: Any) -> bytes:
        return page(request, self.code, self.sentence)


class Root(resource.Resource):
    """``/`` and its children; only GET (and HEAD) anywhere: anything else is a 405."""

    def __init__(self, app: WebApp, metrics: bool) -> None:
        super().__init__()
        self.app = app
        self.children_by_name: dict[bytes, resource.Resource] = {
            b"": Index(app),
            b"login": Login(app),
            b"static": Static(),
            b"api": Api(app),
            b"events": Events(app),
        }
        if metrics:
            self.children_by_name[b"metrics"] = Metrics(app)

    def getChild(self, path: bytes, request: Any) -> resource.Resource:  # noqa: N802
        return self.children_by_name.get(
            path, Message(404, "There is no such page on this dashboard.")
        )


class Index(_Leaf):
    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        if request.postpath not in ([], [b""]):
            return page(request, 404, "There is no such page on this dashboard.")
        if self.app.viewer(request) is None:
            return page(request, 403, SIGNED_OUT)
        harden(request, "text/html; charset=utf-8")
        return self.app.index_html


class Static(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.files = {name: (static_file(name.decode()), kind) for name, kind in STATIC.items()}

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        name = b"/".join(request.postpath)
        found = self.files.get(name)
        if found is None:
            return page(request, 404, "There is no such file on this dashboard.")
        harden(request, found[1])
        return found[0]


class Login(_Leaf):
    """``/login?token=...``: the link's token, once, for a session cookie."""

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        raw = (request.args.get(b"token") or [b""])[0]
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            token = ""
        viewer = self.app.tokens.redeem(token)
        if viewer is None or viewer.user not in self.app.dispatcher.users:
            return page(request, 403, EXPIRED)
        cookie = self.app.sessions.open(viewer)
        request.addCookie(
            COOKIE,
            cookie.encode("ascii"),
            path=b"/",
            httpOnly=True,
            secure=self.app.secure,
            sameSite="strict",
        )
        # A page of our own that moves on to "/": that navigation is same-site, so the
        # SameSite=Strict cookie goes with it (after a redirect from a link opened in
        # another site's page it would not).
        return page(
            request,
            200,
            f"Signed in as {viewer.user}; opening the dashboard.",
            head='<meta http-equiv="refresh" content="0;url=/">',
        )


class Api(_Leaf):
    """``/api/state`` (everything the page shows) and ``/api/job?id=N`` (one job)."""

    log = Logger()

    def render_GET(self, request: Any) -> Any:  # noqa: N802
        viewer = self.app.viewer(request)
        if viewer is None:
            return page(request, 403, SIGNED_OUT)
        what = b"/".join(request.postpath)
        if what == b"state":
            work = views.state_view(self.app.dispatcher, self.app.feed, viewer)
        elif what == b"job":
            try:
                job_id = int((request.args.get(b"id") or [b""])[0])
            except ValueError:
                return page(request, 400, "Give the job's number: /api/job?id=N.")
            work = self._job(viewer, job_id)
        else:
            return page(request, 404, "There is no such page on this dashboard.")
        ensureDeferred(self._answer(request, work))
        return NOT_DONE_YET

    async def _job(self, viewer: Viewer, job_id: int) -> Any:
        found = await views.job_view(self.app.dispatcher, viewer, job_id)
        return found if found is not None else _NotFound(job_id)

    async def _answer(self, request: Any, work: Any) -> None:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        try:
            value = await work
        except Exception:
            self.log.failure("dashboard: {path} failed", path=request.path)
            body = page(
                request, 500, "The dashboard could not answer; the dispatcher's log says why."
            )
        else:
            if isinstance(value, _NotFound):
                body = page(request, 404, f"There is no job {value.job_id} that you may see.")
            else:
                harden(request, "application/json")
                body = to_json(value)
        if not gone:
            request.write(body)
            request.finish()


class _NotFound:
    def __init__(self, job_id: int) -> None:
        self.job_id = job_id


class Events(_Leaf):
    """``/events``: server-sent events, one ``state`` event whenever jobs change (coalesced
    by the feed) and every few seconds; the request stays open."""

    def render_GET(self, request: Any) -> Any:  # noqa: N802
        viewer = self.app.viewer(request)
        if viewer is None:
            return page(request, 403, SIGNED_OUT)
        if not self.app.hub.room():
            return page(request, 503, "Too many dashboards are open; try again later.")
        harden(request, "text/event-stream; charset=utf-8")
        request.setHeader(b"x-accel-buffering", b"no")
        self.app.hub.add(request, request.getCookie(COOKIE).decode("ascii"))
        return NOT_DONE_YET


class Metrics(_Leaf):
    """``/metrics``, without authentication (docs/dashboard.md: bind it where only the
    monitoring system reaches it)."""

    def render_GET(self, request: Any) -> bytes:  # noqa: N802
        from prometheus_client import CONTENT_TYPE_LATEST

        body = self.app.metrics.render()
        harden(request, CONTENT_TYPE_LATEST)
        return body
