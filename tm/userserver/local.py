"""The TMS's Unix socket: the fast door for command-line clients on its own host.

The protocol is described in :mod:`tm.localsocket`. Each request names an AMP command of
:mod:`tm.protocol.commands` that a client may send to its TMS; its JSON arguments are
encoded and decoded as AMP would (so they are checked exactly as on the TLS door), then
served by the same :class:`~tm.userserver.service.ClientSession` code: forwarded to the
dispatcher, a submission sent again with its UUIDs until acknowledged. A submission may
carry more jobs than one AMP value holds: it is cut into chunks here.

Only the TMS's own user is served: the socket is 0600 in the 0700 directory, and each
peer's uid is read with ``SO_PEERCRED``; anyone else gets one refusal line and is closed,
with a line in the log.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.protocols import amp, basic

from tm import localsocket, trace
from tm.protocol import commands, jobends
from tm.protocol.base import MAX_IN_FLIGHT, one_line

if TYPE_CHECKING:
    from tm.userserver.service import ClientSession, UserServer

#: The commands a client may send over the socket: the same as over TLS, minus the
#: handshake (the socket proves the user).
ANSWERED_HERE: tuple[type[amp.Command], ...] = (
    commands.Ping,
    commands.ServerInfo,
    commands.Shutdown,
    jobends.ResubmitJobs,
)


#: Seconds a page asked for ahead of a listing's client stays good to answer with.
PREFETCH_FRESH = 10.0


def _listing_key(kw: dict[str, Any]) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kw.items()))


def served_commands() -> dict[str, type[amp.Command]]:
    from tm.userserver.service import FORWARDED

    return {c.commandName.decode("ascii"): c for c in (*FORWARDED, *ANSWERED_HERE)}


def decode_arguments(command: type[amp.Command], arguments: Any) -> dict[str, Any]:
    """``arguments`` (JSON) as the responder would get them over AMP; InvalidRequest when
    they would not decode there."""
    if not isinstance(arguments, dict):
        raise commands.InvalidRequest("the arguments must be a JSON object")
    try:
        box = command.makeArguments(arguments, None)
        return dict(command.parseArguments(box, None))
    except Exception as e:  # whatever does not encode is the request's fault
        raise commands.InvalidRequest(
            f"bad arguments for {command.commandName.decode()}: "
            f"{one_line(e) or e.__class__.__name__}"
        ) from None


def error_code(command: type[amp.Command] | None, e: BaseException) -> str | None:
    """The AMP code ``command`` declares for ``e``, or None when it declares none."""
    errors = command.errors if command is not None else commands.COMMON_ERRORS
    for cls, code in errors.items():
        if isinstance(e, cls):
            return code.decode("ascii")
    return None


class LocalClientProtocol(basic.Int32StringReceiver):
    """One client on the socket."""

    log = Logger()
    MAX_LENGTH = localsocket.MAX_FRAME_BYTES

    def __init__(self, server: UserServer) -> None:
        self.server = server
        self.session: ClientSession | None = None
        self.in_flight = 0
        self.commands = served_commands()
        #: The page after the last one answered, asked of the dispatcher already (see _list).
        self.prefetched: tuple[tuple, float, Deferred] | None = None
        #: Pages asked as JSON (ListJobsJSON) until a dispatcher does not know it.
        self.rows_as_json = True

    def connectionMade(self) -> None:  # noqa: N802 - Twisted's API
        from tm.userserver.service import ClientSession

        try:
            pid, uid, _ = localsocket.peer_credentials(self._transport().getHandle())
        except OSError as e:
            pid, uid = 0, -1
            self.log.warn(
                "cannot read the credentials of a client on the socket: {error}", error=str(e)
            )
        if uid != os.getuid():
            self.log.warn(
                "refused a client of uid {uid} (pid {pid}) on {path}: this TMS "
                "serves uid {own} only",
                uid=uid,
                pid=pid,
                path=self.server.socket_path,
                own=os.getuid(),
            )
            self._send(
                {
                    "error": {
                        "code": localsocket.REFUSED_CODE,
                        "message": f"this TMS serves uid {os.getuid()} only, not uid {uid}",
                    }
                }
            )
            self._transport().loseConnection()
            return
        self.session = ClientSession(self.server)
        self.session.proven = True  # by the socket's owner and the peer's uid

    def lengthLimitExceeded(self, length: int) -> None:  # noqa: N802 - Twisted's API
        self._send(
            {
                "error": {
                    "code": "INVALID_REQUEST",
                    "message": f"a request of {length} bytes is over the limit of "
                    f"{self.MAX_LENGTH}",
                }
            }
        )
        self._transport().loseConnection()

    def stringReceived(self, data: bytes) -> None:  # noqa: N802 - Twisted's API
        if self.session is None:
            return
        try:
            request = json.loads(data)
        except ValueError:
            self._send({"error": {"code": "INVALID_REQUEST", "message": "not JSON"}})
            return
        request_id = request.get("id") if isinstance(request, dict) else None
        if self.in_flight >= MAX_IN_FLIGHT:
            self._send(
                {
                    "id": request_id,
                    "error": {
                        "code": "TOO_BUSY",
                        "message": f"more than {MAX_IN_FLIGHT} requests in flight",
                    },
                }
            )
            return
        self.in_flight += 1
        ensureDeferred(self._answer(request_id, request))

    async def _answer(self, request_id: Any, request: Any) -> None:
        command = None
        if trace.ENABLED and isinstance(request, dict):
            trace.point(
                "tms",
                f"client-{request.get('command')}-received",
                trace.job_of(request.get("arguments")),
            )
        try:
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise commands.InvalidRequest("a request names a command")
            command = self.commands.get(request["command"])
            if command is None:
                raise commands.InvalidRequest(
                    f"{one_line(request['command'], 60)!r} is not a command of the TMS"
                )
            answer = await self._serve(command, request.get("arguments", {}))
            message: dict[str, Any] = {"id": request_id, "answer": answer}
        except Exception as e:
            code = error_code(command, e)
            if code is None:
                self.log.failure("the TMS failed on a request from its socket")
                code, text = "SERVER_ERROR", f"the TMS failed on this request ({one_line(e)})"
            else:
                text = one_line(e, 1000)
            message = {"id": request_id, "error": {"code": code, "message": text}}
        finally:
            self.in_flight -= 1
        self._send(message)
        if trace.ENABLED and command is not None:
            job = trace.job_of(message.get("answer")) if "answer" in message else "-"
            if job == "-":
                job = trace.job_of(request.get("arguments"))
            trace.point("tms", f"client-{command.commandName.decode()}-answered", job)

    async def _serve(self, command: type[amp.Command], arguments: Any) -> dict[str, Any]:
        session = self.session
        assert session is not None
        if command is commands.SubmitJobs:
            return await self._submit(session, arguments)
        kw = decode_arguments(command, arguments)
        if command is commands.ListJobs:
            return await self._list(session, kw)
        self.prefetched = None
        if command is commands.Ping:
            return session.ping()
        if command is commands.ServerInfo:
            return session.server_info()
        if command is commands.Shutdown:
            return session.shutdown()
        if command is jobends.ResubmitJobs:
            return await session.resubmit(**kw)
        return dict(await session._forwarder(command)(**kw))

    async def _submit(self, session: ClientSession, arguments: Any) -> dict[str, Any]:
        """A submission of any size: signed and sent in chunks that each fit one AMP value
        (:func:`tm.userserver.signing.submit`)."""
        if not isinstance(arguments, dict) or not isinstance(arguments.get("jobs"), list):
            raise commands.InvalidRequest("SubmitJobs needs a list of jobs")
        kw = decode_arguments(commands.SubmitJobs, {**arguments, "jobs": []})
        kw.pop("jobs")
        kw.pop("sealed_env", None)
        return await session.submit(kw, arguments["jobs"])

    async def _list(self, session: ClientSession, kw: dict[str, Any]) -> dict[str, Any]:
        """A page of a listing. A client reads a listing page after page: while it reads
        this one, the dispatcher already makes the next one (asked for here), so that the
        dispatcher, this TMS and the client work at the same time instead of in turn."""
        as_json = session._forwarder(commands.ListJobsJSON)
        as_rows = session._forwarder(commands.ListJobs)

        async def forward(**kw: Any) -> dict[str, Any]:
            if self.rows_as_json:
                try:
                    answer = await as_json(**kw)
                except amp.UnhandledCommand:  # a dispatcher older than ListJobsJSON
                    self.rows_as_json = False
                else:
                    jobs = JobsJSON(answer["jobs_json"])
                    return {"jobs": jobs, "next_after_id": answer.get("next_after_id")}
            return dict(await as_rows(**kw))

        key = _listing_key(kw)
        now = self.server.reactor.seconds()
        ahead, self.prefetched = self.prefetched, None
        answer: dict[str, Any] | None = None
        if ahead is not None and ahead[0] == key and now - ahead[1] <= PREFETCH_FRESH:
            ok, result = await ahead[2]
            answer = result if ok else None
        if answer is None:  # not asked ahead, or that failed: ask now
            answer = dict(await forward(**kw))
        after = answer.get("next_after_id")
        if after is not None and answer.get("jobs") and self.transport is not None:
            ahead_kw = {**kw, "after_id": after}
            pending = ensureDeferred(forward(**ahead_kw))
            # (True, answer) or (False, failure): a page nobody asks for fails silently, and
            # one that failed is asked again when the client asks for it.
            pending.addCallbacks(lambda a: (True, dict(a)), lambda f: (False, f))
            self.prefetched = (_listing_key(ahead_kw), now, pending)
        return answer

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802 - Twisted's API
        self.prefetched = None
        super().connectionLost(reason)

    def _transport(self) -> Any:
        return self.transport

    def _send(self, message: dict[str, Any]) -> None:
        if self.transport is not None:
            self.sendString(message_json(message).encode("utf-8"))


class JobsJSON:
    """A page's rows as the dispatcher wrote them (ListJobsJSON), checked to be a list of
    objects: written to the client as they came, where decoding the AMP rows and encoding
    them in JSON again was most of the TMS's work in a long listing."""

    __slots__ = ("count", "text")

    def __init__(self, text: str) -> None:
        try:
            rows = json.loads(text)
        except ValueError:
            rows = None
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise ValueError("the dispatcher's page of jobs is not a JSON list of objects")
        self.text = text
        self.count = len(rows)

    def __bool__(self) -> bool:
        return self.count > 0


def message_json(message: dict[str, Any]) -> str:
    """``json.dumps(message, separators=(",", ":"))``, with the text of a :class:`JobsJSON`
    where the answer's ``jobs`` are one."""
    answer = message.get("answer")
    if not isinstance(answer, dict) or not isinstance(answer.get("jobs"), JobsJSON):
        return json.dumps(message, separators=(",", ":"))
    jobs = answer["jobs"]
    parts = []
    for key, value in message.items():
        if key == "answer":
            fields = [
                f"{json.dumps(k)}:{jobs.text if k == 'jobs' else json.dumps(v, separators=(',', ':'))}"
                for k, v in answer.items()
            ]
            parts.append('"answer":{' + ",".join(fields) + "}")
        else:
            parts.append(f"{json.dumps(key)}:{json.dumps(value, separators=(',', ':'))}")
    return "{" + ",".join(parts) + "}"


def stale(path: Path) -> bool:
    """Whether ``path`` is a socket nobody listens on (left by a TMS that died)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError as e:
        return e.errno == errno.ECONNREFUSED
    finally:
        probe.close()
    return False


def listen(reactor: Any, server: UserServer, path: Path) -> Any:
    """Listen on ``path`` (0600, made under a umask that never lets it be wider); the
    listening port, or None with a line in the log when it cannot be used."""
    from twisted.internet import protocol

    log = LocalClientProtocol.log
    if len(os.fsencode(path)) >= 108:  # sun_path
        log.warn("no local socket: its path {path} is too long; clients use TLS", path=path)
        return None
    try:
        if path.is_socket() and stale(path):
            path.unlink()
        elif path.exists() or path.is_symlink():
            log.warn("no local socket: {path} exists and is in use; clients use TLS", path=path)
            return None
    except OSError as e:
        log.warn("no local socket at {path}: {error}", path=path, error=str(e))
        return None
    factory = protocol.Factory.forProtocol(lambda: LocalClientProtocol(server))
    factory.noisy = False
    old = os.umask(0o177)
    try:
        return reactor.listenUNIX(str(path), factory, mode=0o600, backlog=128)
    except Exception as e:
        log.warn("no local socket at {path}: {error}", path=path, error=str(e))
        return None
    finally:
        os.umask(old)
