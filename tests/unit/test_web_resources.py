"""The dashboard's HTTP resources through twisted.web's DummyRequest, on a task.Clock: the
link, the cookie, the 403 pages, what each user's JSON holds, the event stream and
/metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from tests.unit.dispatcher_fakes import add_job, make_dispatcher
from tm.core.model import Host, JobState
from tm.web.resources import COOKIE, EXPIRED, SIGNED_OUT, Root
from tm.web.service import MetricsRoot, WebApp
from tm.web.tokens import TOKEN_LIFETIME, Viewer


class Request(DummyRequest):
    """DummyRequest with the cookie methods of twisted.web's Request."""

    def __init__(self, path: bytes, cookie: str | None = None, method: bytes = b"GET") -> None:
        path, _, query = path.partition(b"?")
        super().__init__(path.lstrip(b"/").split(b"/"))
        self.method = method
        self.path = path
        self.received_cookies = {COOKIE: cookie.encode()} if cookie else {}
        self.cookies: list[tuple[bytes, bytes, dict[str, Any]]] = []
        for pair in query.split(b"&") if query else []:
            k, _, v = pair.partition(b"=")
            self.addArg(k, v)

    def getCookie(self, name: bytes) -> bytes | None:  # noqa: N802
        return self.received_cookies.get(name)

    def addCookie(self, name: bytes, value: bytes, **kw: Any) -> None:  # noqa: N802
        self.cookies.append((name, value, kw))

    @property
    def body(self) -> bytes:
        return b"".join(self.written)

    def header(self, name: bytes) -> str:
        values = self.responseHeaders.getRawHeaders(name) or [b""]
        return values[0].decode() if isinstance(values[0], bytes) else values[0]


@pytest.fixture
def web(tmp_path: Path) -> Any:
    d, clock, store = make_dispatcher(
        tmp_path, hosts=[Host(name="h1", number_slots=2, max_slots=2)]
    )
    clock.advance(1_000_000)
    app = WebApp(d, clock)
    app.attach()
    app.base_url = "http://td:8080"
    yield app, Root(app, metrics=True), clock, store
    app.feed.stop()
    app.hub.close()


def get(root: Any, path: bytes, cookie: str | None = None, method: bytes = b"GET") -> Request:
    request = Request(path, cookie, method)
    resource = getChildForRequest(root, request)
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()
    return request


def sign_in(app: WebApp, root: Any, viewer: Viewer) -> str:
    token = app.link(viewer).rsplit("=", 1)[1]
    request = get(root, b"/login?token=" + token.encode())
    assert request.responseCode in (None, 200)
    [(name, value, kw)] = request.cookies
    assert name == COOKIE
    return value.decode()


def test_the_link_opens_a_session_once(web: Any) -> None:
    app, root, clock, _ = web
    token = app.link(Viewer("alice", False)).rsplit("=", 1)[1]
    request = get(root, b"/login?token=" + token.encode())
    [(name, value, kw)] = request.cookies
    assert kw["httpOnly"] is True and kw["sameSite"] == "strict" and kw["path"] == b"/"
    assert b'http-equiv="refresh" content="0;url=/"' in request.body
    assert request.header(b"referrer-policy") == "no-referrer"
    again = get(root, b"/login?token=" + token.encode())
    assert again.responseCode == 403 and again.cookies == []
    assert EXPIRED.encode() in again.body.replace(b"&#x27;", b"'").replace(b"&quot;", b'"')


@pytest.mark.parametrize("query", [b"", b"?token=", b"?token=%3Cscript%3E", b"?token=" + b"A" * 43])
def test_a_garbled_or_unknown_token_gets_the_403_page(web: Any, query: bytes) -> None:
    _, root, _, _ = web
    request = get(root, b"/login" + query)
    assert request.responseCode == 403
    assert b"expired, was used already, or is not valid" in request.body
    assert b"Traceback" not in request.body and b"<script>" not in request.body


def test_an_expired_token_gets_the_403_page(web: Any) -> None:
    app, root, clock, _ = web
    token = app.link(Viewer("alice", False)).rsplit("=", 1)[1]
    clock.advance(TOKEN_LIFETIME + 1)
    request = get(root, b"/login?token=" + token.encode())
    assert request.responseCode == 403 and request.cookies == []


def test_pages_need_a_session(web: Any) -> None:
    app, root, _, _ = web
    for path in (b"/", b"/api/state", b"/events", b"/api/job?id=1"):
        request = get(root, path, cookie="nonsense")
        assert request.responseCode == 403, path
        assert SIGNED_OUT.encode().split(b"`")[0] in request.body
    cookie = sign_in(app, root, Viewer("alice", False))
    index = get(root, b"/", cookie)
    assert b"/static/app.js" in index.body
    assert "script-src 'self'" in index.header(b"content-security-policy")
    assert index.header(b"access-control-allow-origin") == ""
    assert get(root, b"/static/app.js").body.startswith(b"//")
    assert get(root, b"/static/../etc/passwd").responseCode == 404
    assert get(root, b"/nothing").responseCode == 404


def test_only_get_is_answered(web: Any) -> None:
    app, root, _, _ = web
    from twisted.web.error import UnsupportedMethod

    with pytest.raises(UnsupportedMethod):
        get(root, b"/metrics", method=b"POST")


def state_of(root: Any, cookie: str, clock: Any) -> dict[str, Any]:
    request = get(root, b"/api/state", cookie)
    clock.advance(0)
    assert request.finished, request.body
    assert request.header(b"content-type") == "application/json"
    return json.loads(request.body)


def test_each_user_gets_their_own_jobs_as_inert_json(web: Any) -> None:
    app, root, clock, store = web
    d = app.dispatcher
    add_job(d, store, 1, user="alice", command="echo '<script>alert(1)</script>'")
    add_job(d, store, 2, user="root")
    alice = sign_in(app, root, Viewer("alice", False))
    admin = sign_in(app, root, Viewer("root", True))
    request = get(root, b"/api/state", alice)
    assert b"<script>" not in request.body and b"\\u003cscript>" in request.body
    mine = state_of(root, alice, clock)
    assert [j["id"] for j in mine["jobs"]] == [1] and mine["sees_all"] is False
    assert mine["jobs"][0]["command"] == "echo '<script>alert(1)</script>'"
    assert mine["hosts"][0]["name"] == "h1" and len(mine["charts"]["minutes"]) == 60
    everyone = state_of(root, admin, clock)
    assert [j["id"] for j in everyone["jobs"]] == [2, 1] and everyone["sees_all"] is True


def test_a_job_detail_only_for_its_owner_or_an_admin(web: Any) -> None:
    app, root, clock, store = web
    add_job(app.dispatcher, store, 7, user="root")
    alice = sign_in(app, root, Viewer("alice", False))
    admin = sign_in(app, root, Viewer("root", True))
    refused = get(root, b"/api/job?id=7", alice)
    clock.advance(0)
    assert refused.responseCode == 404 and b"no job 7 that you may see" in refused.body
    assert get(root, b"/api/job?id=x", alice).responseCode == 400
    shown = get(root, b"/api/job?id=7", admin)
    clock.advance(0)
    detail = json.loads(shown.body)
    assert detail["id"] == 7 and detail["output"]["stdout"] == "~/.taskmanager/logs/7.out"


def events(request: Request) -> list[dict[str, Any]]:
    found = []
    for block in request.body.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") == "state":
            found.append(json.loads(lines["data"]))
    return found


def test_the_event_stream_pushes_changes_coalesced(web: Any) -> None:
    app, root, clock, store = web
    d = app.dispatcher
    alice = sign_in(app, root, Viewer("alice", False))
    stream = get(root, b"/events", alice)
    clock.advance(0)
    assert stream.header(b"content-type").startswith("text/event-stream")
    assert not stream.finished
    assert len(events(stream)) == 1 and events(stream)[0]["jobs"] == []
    jobs = [add_job(d, store, i, user="alice") for i in range(1, 21)]
    add_job(d, store, 50, user="root")
    for job in jobs:
        d._transition(job, JobState.KILLED, "killed")
    clock.advance(1)
    pushed = events(stream)
    assert len(pushed) == 2  # twenty changes, one update
    assert sorted(j["id"] for j in pushed[-1]["jobs"]) == list(range(1, 21))
    app.sessions.close(alice)  # the session ends: the stream says so and closes
    app.hub.push()
    clock.advance(0)
    assert stream.finished and b"event: signedout" in stream.body


def test_metrics_are_prometheus_text(web: Any) -> None:
    app, root, clock, store = web
    job = add_job(app.dispatcher, store, 1)
    app.metrics.submitted([job])
    for path, resource in ((b"/metrics", root), (b"/metrics", MetricsRoot(app))):
        request = get(resource, path)
        assert request.header(b"content-type").startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(request.body.decode())}
        assert families["tm_jobs_submitted"].samples[0].value == 1
        assert "tm_reactor_lag_seconds" in families
    assert get(MetricsRoot(app), b"/").responseCode == 404


def test_an_unexpected_error_is_one_sentence(web: Any) -> None:
    app, root, clock, _ = web
    alice = sign_in(app, root, Viewer("alice", False))

    def broken(*a: Any, **kw: Any) -> Deferred:
        raise RuntimeError("database on fire")

    app.dispatcher.store.group_counts = broken
    request = get(root, b"/api/state", alice)
    clock.advance(0)
    assert request.responseCode == 500
    assert b"could not answer" in request.body and b"fire" not in request.body


class _Port:
    def __init__(self, address: Any) -> None:
        self.address = address

    def getHost(self) -> Any:  # noqa: N802
        return self.address


def test_the_links_address_comes_from_the_bound_endpoint() -> None:
    from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

    from tm.web.service import CannotServe, base_url

    def url(description: str, address: Any) -> str:
        return base_url(description, _Port(address), "td.example")

    assert url("tcp:0:interface=127.0.0.1", IPv4Address("TCP", "127.0.0.1", 4321)) == (
        "http://127.0.0.1:4321"
    )
    assert url("tcp:8080", IPv4Address("TCP", "0.0.0.0", 8080)) == "http://td.example:8080"
    assert url("ssl:8443:privateKey=k", IPv6Address("TCP", "::1", 8443)) == "https://[::1]:8443"
    with pytest.raises(CannotServe, match="--http-url"):
        url("unix:/tmp/web.sock", UNIXAddress(b"/tmp/web.sock"))
