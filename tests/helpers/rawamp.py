"""A raw, synchronous AMP client for hostile-client tests: any bytes, any box, with or without
TLS, authenticated through the real file challenge or not."""

from __future__ import annotations

import getpass
import json
import os
import socket
import ssl
import struct
import time
from pathlib import Path

from tm import auth

Box = dict[bytes, bytes]


def encode(box: Box) -> bytes:
    """A box on the wire, without AMP's own checks (a key may be too long, a value too)."""
    out = bytearray()
    for key, value in box.items():
        out += struct.pack("!H", len(key)) + key
        out += struct.pack("!H", len(value) & 0xFFFF) + value
    return bytes(out + b"\x00\x00")


class Closed(Exception):
    """The server closed the connection."""


class RawClient:
    def __init__(
        self, info_path: Path, tls: bool = True, rcvbuf: int | None = None, timeout: float = 10.0
    ) -> None:
        info = json.loads(info_path.read_text())
        self.challenge_dir = info["challenge_dir"]
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", int(info["port"])))
        if tls:
            context = ssl.create_default_context(cadata=info["certificate"])
            sock = context.wrap_socket(sock, server_hostname=auth.DISPATCHER_TLS_NAME)
        self.sock = sock
        self.buffer = b""
        self.tag = 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self.buffer) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError, BrokenPipeError) as e:
                raise Closed(str(e)) from None
            except TimeoutError:
                raise
            if not chunk:
                raise Closed("end of stream")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_box(self, timeout: float = 10.0) -> Box:
        deadline = time.monotonic() + timeout
        box: Box = {}
        while True:
            (klen,) = struct.unpack("!H", self._read(2, deadline))
            if klen == 0:
                return box
            key = self._read(klen, deadline)
            (vlen,) = struct.unpack("!H", self._read(2, deadline))
            box[key] = self._read(vlen, deadline)

    def ask(self, command: bytes, args: Box, timeout: float = 10.0) -> Box:
        """Send one request and return its answer or error box."""
        self.tag += 1
        tag = str(self.tag).encode()
        self.send(encode({b"_command": command, b"_ask": tag, **args}))
        while True:
            box = self.read_box(timeout)
            if box.get(b"_answer") == tag or box.get(b"_error") == tag:
                return box

    def closed_within(self, timeout: float) -> bool:
        """Whether the server closes the connection within ``timeout`` seconds (what it
        sends meanwhile is read and dropped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, ssl.SSLError, BrokenPipeError, OSError) as e:
                if isinstance(e, (TimeoutError, socket.timeout)):
                    continue
                return True
        return False

    def authenticate(self, role: str = "client") -> Box:
        hello = self.ask(
            b"Hello",
            {
                b"protocol_version": b"1",
                b"role": role.encode(),
                b"user": getpass.getuser().encode(),
                b"host": socket.gethostname().encode(),
                b"pid": str(os.getpid()).encode(),
            },
        )
        assert b"_answer" in hello, hello
        auth.answer_challenge(
            hello[b"challenge_path"].decode(), hello[b"nonce"].decode(), self.challenge_dir
        )
        proven = self.ask(b"Authenticate", {})
        assert b"_answer" in proven, proven
        return proven

    def ping(self, timeout: float = 10.0) -> bool:
        return b"_answer" in self.ask(b"Ping", {}, timeout)
