"""The TMS's local door: a Unix socket in ``~/.taskmanager/`` and the tiny protocol on it.

A command-line client on the TMS's own host talks to it here, with the standard library
alone (no Twisted, no TLS: ``hRunJob -q CMD`` starts in tens of milliseconds). The socket
is 0600 in the 0700 directory, and the TMS checks each peer's uid with ``SO_PEERCRED``
against its own; a TMS on another host sharing the home is still reached over TLS
(:mod:`tm.cli.common`).

One vocabulary: a request names an AMP command of :mod:`tm.protocol.commands` by its
``commandName`` and carries its arguments as JSON; the TMS decodes them as AMP would and
forwards them as it does for its AMP clients. Frames are a 4-byte big-endian length, then
UTF-8 JSON:

- request ``{"id": N, "command": "ListJobs", "arguments": {...}}``;
- answer ``{"id": N, "answer": {...}}``, or ``{"id": N, "error": {"code": "UNKNOWN_JOB",
  "message": "..."}}`` with the code the command declares for the error and its one line.

This module is imported on the CLI's everyday path: standard library only, and of it only
what costs next to nothing to import. ``socket`` (which imports ``enum`` and ``selectors``,
and makes its IntEnums) and ``json`` (which imports ``re``) cost a command's start more than
its whole exchange with the TMS: the client uses ``_socket``, whose ``socket`` class is the
base of ``socket.socket``, and ``json``'s own C accelerators in :func:`dumps` and
:func:`loads`; their bytes and values are ``json``'s, which they fall back to (on an
interpreter without the accelerators, or for what the fast one does not read).
"""

from __future__ import annotations

import _socket
import errno
import os
import struct

try:
    from _json import encode_basestring_ascii as _c_encode_string
    from _json import make_encoder as _c_make_encoder
    from _json import make_scanner as _c_make_scanner
except ImportError:  # pragma: no cover - an interpreter without json's C accelerators
    ACCELERATED = False
else:
    ACCELERATED = True

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: The largest frame either side accepts (a submission of many jobs is sent in parts).
MAX_FRAME_BYTES = 64 * 1024 * 1024
#: The error code of a peer refused by its uid (it is also the AMP code of PermissionDenied).
REFUSED_CODE = "PERMISSION_DENIED"
_LENGTH = struct.Struct("!I")
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def user_dir() -> str:
    """``~/.taskmanager``: the user's TaskManager state (0700). A string, not a Path:
    pathlib alone would add milliseconds to the start of every command."""
    return os.path.join(os.path.expanduser("~"), ".taskmanager")


def socket_path(host: str | None = None) -> str:
    """The TMS's socket for this host. Named by the host: in a home shared between hosts,
    a socket works only on the host of the TMS that made it, and each host's TMS keeps its
    own."""
    return os.path.join(user_dir(), f"tms.{host or _socket.gethostname()}.sock")


def peer_credentials(sock: _socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of the Unix socket ``sock``."""
    raw = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _CREDENTIALS.size)
    pid, uid, gid = _CREDENTIALS.unpack(raw)
    return pid, uid, gid


def _not_serializable(value: object) -> object:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: object, separators: tuple[str, str] = (",", ":")) -> str:
    """``json.dumps(value, separators=separators)``, the same text, without importing json
    (json.JSONEncoder.iterencode's one-shot path: its C encoder)."""
    if ACCELERATED and not isinstance(value, str):
        item_separator, key_separator = separators
        try:  # json.JSONEncoder's arguments: circular check, default, ensure_ascii, no indent
            encode = _c_make_encoder(
                {},
                _not_serializable,
                _c_encode_string,
                None,
                key_separator,
                item_separator,
                False,
                False,
                True,
            )
        except TypeError:  # pragma: no cover - a Python whose encoder takes other arguments
            pass
        else:
            return "".join(encode(value, 0))
    import json

    return json.dumps(value, separators=separators)


class _DecoderContext:
    """What json's C scanner reads of its decoder: json.JSONDecoder()'s defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"),
        "Infinity": float("inf"),
        "NaN": float("nan"),
    }.__getitem__


_context: Any = _DecoderContext()
_scan = None
if ACCELERATED:
    try:
        _scan = _c_make_scanner(_context)
    except (TypeError, AttributeError):  # pragma: no cover - a scanner that reads other names
        pass


def loads(data: bytes) -> Any:
    """``json.loads(data)``: the same value, or its ValueError. A JSON object in UTF-8 (what
    the TMS sends) is read by json's C scanner without importing json; anything else by json."""
    if _scan is not None and data[:1] == b"{":
        try:
            text = data.decode("utf-8", "surrogatepass")
            value, end = _scan(text, 0)
        except (ValueError, StopIteration):
            pass  # json says what is wrong
        else:
            if not text[end:].strip(" \t\n\r"):
                return value
    import json

    return json.loads(data)


def frame(message: dict[str, Any]) -> bytes:
    data = dumps(message).encode("utf-8")
    return _LENGTH.pack(len(data)) + data


class Unavailable(Exception):
    """No TMS answers on this host's socket: reach one the other way (TLS, or start one)."""


class LinkLost(Exception):
    """The connection to the TMS ended before its answer came."""


class RemoteError(Exception):
    """The TMS (or the dispatcher behind it) refused a request: ``code`` is the declared
    error's AMP code, the text its one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class LocalClient:
    """A blocking client of the TMS's Unix socket: one request at a time."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self._next_id = 0
        self._buffer = b""

    @classmethod
    def connect(
        cls, path: str | os.PathLike[str] | None = None, timeout: float = 5.0
    ) -> LocalClient:
        """Connect to this host's TMS, or raise :class:`Unavailable` saying why not."""
        path = path or socket_path()
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
            _, uid, _ = peer_credentials(sock)
        except OSError as e:
            sock.close()
            if e.errno in (
                errno.ENOENT,
                errno.ECONNREFUSED,
                errno.ENOTSOCK,
                errno.ENAMETOOLONG,
                errno.EACCES,
                errno.ENOTDIR,
            ) or isinstance(e, TimeoutError):
                raise Unavailable(f"no TMS on {path}: {e.strerror or e}") from None
            raise Unavailable(f"cannot reach the TMS on {path}: {e}") from None
        if uid != os.getuid():  # a socket there that is not ours: never talk to it
            sock.close()
            raise Unavailable(f"{path} belongs to uid {uid}, not to you")
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def call(self, command: str, reply_timeout: float | None = 120.0, **arguments: Any) -> dict:
        """Send ``command`` with ``arguments``; its answer, or :class:`RemoteError`.

        Raises :class:`LinkLost` when the connection ends (or ``reply_timeout`` s pass) first.
        """
        self._next_id += 1
        request_id = self._next_id
        self.sock.settimeout(reply_timeout)
        try:
            self.sock.sendall(frame({"id": request_id, "command": command, "arguments": arguments}))
            while True:
                message = self._receive()
                if message.get("id") in (request_id, None):
                    break
        except TimeoutError:
            raise LinkLost("the TMS did not answer in time") from None
        except OSError as e:
            raise LinkLost(f"the link to the TMS dropped ({e.strerror or e})") from None
        error = message.get("error")
        if error is not None:
            raise RemoteError(str(error.get("code", "")), str(error.get("message", "")))
        answer = message.get("answer")
        if not isinstance(answer, dict):
            raise LinkLost("the TMS sent an answer this client does not understand")
        return answer

    def _receive(self) -> dict:
        while True:
            if len(self._buffer) >= _LENGTH.size:
                (size,) = _LENGTH.unpack_from(self._buffer)
                if size > MAX_FRAME_BYTES:
                    raise LinkLost(f"the TMS sent a frame of {size} bytes")
                end = _LENGTH.size + size
                if len(self._buffer) >= end:
                    data = self._buffer[_LENGTH.size : end]
                    self._buffer = self._buffer[end:]
                    try:
                        message = loads(data)
                    except ValueError:
                        raise LinkLost("the TMS sent a frame that is not JSON") from None
                    if not isinstance(message, dict):
                        raise LinkLost("the TMS sent a frame that is not a JSON object")
                    return message
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise LinkLost("the link to the TMS dropped before it answered")
            self._buffer += chunk
