"""Identity without root: the file-system challenge, TLS keys and secret files.

The dispatcher proves a connection's user once, at connect time (DESIGN.md §4):
it names a fresh file in a world-writable sticky directory it owns and hands a
fresh nonce; the client creates that file (``O_CREAT|O_EXCL|O_NOFOLLOW``) and
writes the nonce; the dispatcher opens it without following links and checks,
on the open descriptor, that it is a regular file with one link, no group or
other write bit, owned by the claimed user's uid, holding the nonce; then
removes it.  The functions here do the file work; callers run the blocking
ones in a bounded thread pool (NFS may block).
"""

from __future__ import annotations

import datetime
import os
import pwd
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from tm.protocol.commands import AuthenticationFailed

CHALLENGE_NAME = re.compile(r"^tmfs_[0-9a-f]{32}$")
CHALLENGE_DIR_MODE = 0o1733
#: The name every client checks in the dispatcher's (pinned) certificate.
DISPATCHER_TLS_NAME = "tm-dispatcher"
TMS_TLS_NAME = "tm-userserver"


class SecretFileError(Exception):
    """A key or access file is missing, unsafe (mode, owner, symlink) or unreadable."""


@dataclass(frozen=True)
class Challenge:
    path: str
    nonce: str


def ensure_challenge_dir(path: Path) -> None:
    """Create the challenge directory with mode 1733 (sticky, writable, not listable)."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise SecretFileError(f"{path} must be a directory owned by uid {os.getuid()}")
    os.chmod(path, CHALLENGE_DIR_MODE)


def new_challenge(challenge_dir: Path) -> Challenge:
    name = "tmfs_" + secrets.token_hex(16)
    return Challenge(path=str(challenge_dir / name), nonce=secrets.token_hex(16))


def answer_challenge(challenge_path: str, nonce: str, expected_dir: str) -> None:
    """Client side: create the named file exclusively and write the nonce into it.

    Refuses a path outside the expected directory or with an unexpected name,
    so a server cannot make the client create files elsewhere.
    """
    parent, name = os.path.split(challenge_path)
    if os.path.realpath(parent) != os.path.realpath(expected_dir) or not CHALLENGE_NAME.match(name):
        raise AuthenticationFailed(
            f"the dispatcher asked for an unexpected challenge file {challenge_path!r}"
        )
    try:
        fd = os.open(challenge_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise AuthenticationFailed(
            f"cannot create the challenge file {challenge_path}: {e.strerror}"
        ) from None
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, nonce.encode("ascii"))
    finally:
        os.close(fd)


def verify_challenge(challenge: Challenge, user: str) -> None:
    """Dispatcher side: check the file the client made, then remove it.

    Raises :class:`AuthenticationFailed` with the reason.  Blocking.
    """
    try:
        expected_uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise AuthenticationFailed(
            f"no Unix account named {user!r} on the dispatcher's host"
        ) from None
    try:
        # Make an NFS client revalidate the directory before we look (HTCondor's trick).
        probe = os.path.join(os.path.dirname(challenge.path), ".probe_" + secrets.token_hex(8))
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError:
            pass
        try:
            fd = os.open(challenge.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            raise AuthenticationFailed(
                f"challenge file not found or unusable: {e.strerror}"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise AuthenticationFailed("the challenge file is not a regular file")
            if st.st_nlink != 1:
                raise AuthenticationFailed("the challenge file has more than one link")
            if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise AuthenticationFailed("the challenge file is writable by group or others")
            if st.st_uid != expected_uid:
                raise AuthenticationFailed(
                    f"the challenge file is not owned by {user} (uid {expected_uid})"
                )
            content = os.read(fd, 256)
            if not secrets.compare_digest(content, challenge.nonce.encode("ascii")):
                raise AuthenticationFailed("the challenge file does not hold the nonce")
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(challenge.path)
        except OSError:
            pass


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte, in a 0700 directory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".new." + secrets.token_hex(4))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


#: Names the account that runs the dispatcher, for clients of a dispatcher run by an
#: unprivileged account: a file it publishes (dispatcher.json) is trusted when that account,
#: root or the reading user owns it. A user name or a uid.
ACCOUNT_VARIABLE = "TM_DISPATCHER_ACCOUNT"


def dispatcher_account(value: str | None = None) -> int | None:
    """The uid of the dispatcher's account: ``value`` (a name or uid), else
    ``$TM_DISPATCHER_ACCOUNT``; None when neither names one."""
    if value is None:
        value = os.environ.get(ACCOUNT_VARIABLE, "")
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise SecretFileError(
            f"{ACCOUNT_VARIABLE}={value} names no account on this host: "
            "set it to the account that runs the dispatcher"
        ) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _account_name(uid: int) -> str:
    name = _user_name(uid)
    return f"{name} (uid {uid})" if name != str(uid) else f"uid {uid}"


def file_trust_problem(
    path: Path | str, st: os.stat_result, secret: bool = False, account: int | None = None
) -> str | None:
    """Why a file with status ``st`` cannot be trusted, with the fix; None when it can.

    A file that tells a client whom to trust (``dispatcher.json``, a certificate) must be
    owned by root, the reading user, or the dispatcher's ``account``, and be writable by
    none but its owner: whoever can write it can send the client to a server of their own.
    A ``secret`` (a key, tms.json) must be the reading user's own and readable by no one
    else.
    """
    me = os.getuid()
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file: replace it with the file itself"
    mode = stat.S_IMODE(st.st_mode)
    if secret:
        if st.st_uid != me:
            return (
                f"{path} is owned by {_account_name(st.st_uid)}, not by you: a key must be "
                f"yours alone; remove it (it is made again) or run as root: "
                f"chown {_user_name(me)} {path}"
            )
        if mode & 0o077:
            return (
                f"{path} is readable or writable by others (mode {mode:o}); run: chmod 600 {path}"
            )
        return None
    trusted = {0, me} | ({account} if account is not None else set())
    if st.st_uid not in trusted:
        owner = _account_name(st.st_uid)
        name = _user_name(st.st_uid)
        if account is None:
            return (
                f"{path} is owned by {owner}, not by root or you, and whoever writes it chooses "
                f"the server you trust: if {name} runs the dispatcher, set "
                f"{ACCOUNT_VARIABLE}={name}; otherwise have the dispatcher's account own it "
                f"(as root: chown ACCOUNT {path})"
            )
        ours = _user_name(account)
        return (
            f"{path} is owned by {owner}, not by root, you or the dispatcher's account "
            f"{ours}, and whoever writes it chooses the server you trust: do not use it; "
            f"if it is genuine, have {ours} own it (as root: chown {ours} {path})"
        )
    if mode & 0o022:
        return (
            f"{path} is writable by group or others (mode {mode:o}): whoever can write it "
            f"chooses the server you trust; its owner should run: chmod go-w {path}"
        )
    return None


def read_trusted(path: Path, secret: bool = False, account: int | None = None) -> bytes:
    """Read ``path`` if :func:`file_trust_problem` finds nothing wrong with it.

    Checked on the open descriptor (no check-then-open race). A secret is opened without
    following a symbolic link; a public file may be a link (``/etc/taskmanager`` links to
    the dispatcher's copy) and the file it leads to is checked. Raises
    :class:`SecretFileError` with one line: the file, what is wrong, the fix.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (os.O_NOFOLLOW if secret else 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SecretFileError(f"{path} does not exist") from None
    except OSError as e:
        if secret and os.path.islink(path):
            raise SecretFileError(
                f"{path} is a symbolic link: a key must be a file of yours; remove the link"
            ) from None
        raise SecretFileError(f"cannot open {path}: {e.strerror}") from None
    try:
        problem = file_trust_problem(path, os.fstat(fd), secret, account)
        if problem is not None:
            raise SecretFileError(problem)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_secret(path: Path) -> bytes:
    """Read a secret file, refusing one that others could read or replace."""
    return read_trusted(path, secret=True)


def make_self_signed(name: str) -> tuple[bytes, bytes]:
    """A new EC key and a self-signed certificate for ``name``, both PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def ensure_key_pair(key_path: Path, cert_path: Path, name: str) -> tuple[bytes, bytes]:
    """Load the key pair, creating it (key 0600) on first use."""
    if not key_path.exists():
        key_pem, cert_pem = make_self_signed(name)
        write_secret(key_path, key_pem)
        cert_path.write_bytes(cert_pem)
        os.chmod(cert_path, 0o644)
    return read_secret(key_path), read_trusted(cert_path)


def server_tls_options(key_pem: bytes, cert_pem: bytes):  # -> CertificateOptions
    from twisted.internet import ssl

    return ssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem).options()


def client_tls_options(cert_pem: bytes, name: str):
    """TLS options that accept exactly the pinned self-signed certificate."""
    from twisted.internet import ssl

    return ssl.optionsForClientTLS(name, trustRoot=ssl.Certificate.loadPEM(cert_pem))
