"""Signed job specs and sealed environments: the user's key, its signature and its seal.

The user's TMS signs what defines each job it submits, and seals the submission's
environment, with a secret only the user can read (``~/.taskmanager/jobkey``: 32 random
bytes, 0600 in the 0700 directory; the home is shared, so the user's executors on every host
read it too). The executor checks the signature and opens the seal before it starts anything;
the dispatcher and the database carry both and hold neither the key nor the environment in
clear. The design, its limits and what it defends against: ``docs/security.md`` ("Signed job
specs"). Flux's signed J (flux-security, RFC 15) is the model; this is its HMAC flavour, a
shared-secret mechanism where the signer and the verifier are the same user.

* Two keys are derived from the secret (HKDF-SHA256, one purpose label each): one signs
  (HMAC-SHA256), one seals (AES-256-GCM). A key id, derived too, names the secret in every
  signature and seal, so a job signed with a replaced key is refused as such.
* The signed message is a canonical, unambiguous encoding: a fixed tag, then each part as
  its name and its value, each with a 4-byte length. The header (version, key id, user,
  time, the sealed environment's SHA-256) comes first, then the job's fields of
  ``jobfields.SIGNED`` in the declaration's order: those of the submission (cwd, umask), then
  those of each job. One HMAC per job: the submission's part is hashed once and copied.
* The environment is sealed once per submission (a random nonce; the user and the key id as
  associated data); each job's signature covers the sealed text's digest, which binds the
  job to that environment.

Pure but for reading and creating the key file: no Twisted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tm import auth
from tm.core import jobfields

VERSION = "1"
KEY_BYTES = 32
#: A spec signed longer ago than this is refused (``tmmenial --job-max-age``, in days).
DEFAULT_MAX_AGE_DAYS = 30.0
MAX_AGE_VARIABLE = "TM_JOB_MAX_AGE_DAYS"
#: What every refusal starts with (the job's reason, the executor's log line).
MISMATCH = "signature mismatch"

_TAG = b"taskmanager job spec\x00"
_SALT = b"taskmanager jobkey v1"
_SIGN_LABEL = b"sign job specs"
_SEAL_LABEL = b"seal environments"
_ID_LABEL = b"key id"
_SEAL_AAD = b"taskmanager environment\x00"

#: The signed fields, in the message's order: the submission's, then each job's.
SUBMISSION_FIELDS = tuple(f for f in jobfields.SIGNED_FIELDS if not f.in_spec)
JOB_FIELDS = tuple(f for f in jobfields.SIGNED_FIELDS if f.in_spec)
#: Signed fields added after the first signed jobs were stored (the optional ones: the time
#: limit, an array job's index): in the message only when set, so that the signature of a job
#: stored before (which has none of them) still verifies; the parts are named, so leaving one
#: out is unambiguous.
WHEN_SET = frozenset(f.name for f in jobfields.SIGNED_FIELDS if f.optional)


class JobKeyError(Exception):
    """The key file cannot be used; the text names the file and the fix."""


def key_path() -> Path:
    from tm.link import user_dir

    return user_dir() / "jobkey"


def _hkdf(secret: bytes, label: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``secret`` for one purpose: 32 bytes (one block)."""
    prk = hmac.new(_SALT, secret, hashlib.sha256).digest()
    return hmac.new(prk, label + b"\x01", hashlib.sha256).digest()


def _part(name: str, value: str) -> bytes:
    n = name.encode("ascii")
    v = value.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v


def _text(f: jobfields.Field, value: Any) -> str:
    """A field's value as the message holds it (ints in decimal, text as it is)."""
    if f.base is int:
        return str(int(value))
    if value is None:
        return ""
    return str(value)


def _header(key_id: str, user: str, signed_at: float, sealed_env: str) -> bytes:
    env_digest = hashlib.sha256(sealed_env.encode("ascii", "replace")).hexdigest()
    return b"".join(
        (
            _TAG,
            _part("version", VERSION),
            _part("key_id", key_id),
            _part("user", user),
            _part("signed_at", repr(float(signed_at))),
            _part("env_sha256", env_digest),
        )
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class JobKey:
    """The user's secret, and the keys derived from it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise JobKeyError(f"a job key has {KEY_BYTES} bytes, not {len(secret)}")
        self._sign = _hkdf(secret, _SIGN_LABEL)
        self._seal = _hkdf(secret, _SEAL_LABEL)
        self.key_id = _hkdf(secret, _ID_LABEL)[:8].hex()

    # --- the submission's side (the TMS) ---------------------------------------------------

    def seal(self, user: str, env: Mapping[str, str]) -> str:
        """``env`` encrypted and authenticated: ``1.KEYID.BASE64(nonce|ciphertext|tag)``."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        plain = json.dumps(dict(env), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        nonce = os.urandom(12)
        sealed = AESGCM(self._seal).encrypt(
            nonce, plain.encode("utf-8", "surrogatepass"), self._aad(user)
        )
        return f"{VERSION}.{self.key_id}.{_b64(nonce + sealed)}"

    def submission(
        self, user: str, cwd: str, umask: int, sealed_env: str, signed_at: float
    ) -> SubmissionSigner:
        """The signer of the jobs of one submission (one HMAC state for their common part)."""
        start = hmac.new(self._sign, _header(self.key_id, user, signed_at, sealed_env), "sha256")
        values = {"user": user, "cwd": cwd, "umask": umask}
        for f in SUBMISSION_FIELDS:
            start.update(_part(f.name, _text(f, values[f.name])))
        return SubmissionSigner(self.key_id, start)

    # --- the executor's side ---------------------------------------------------------------

    def open(self, user: str, sealed_env: str) -> dict[str, str]:
        """The environment sealed in ``sealed_env``; ValueError when it was not sealed by this
        key for ``user`` or was changed since."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        version, key_id, body = _split(sealed_env, "the environment")
        if key_id != self.key_id:
            raise ValueError(f"the environment was sealed with another key ({key_id})")
        try:
            data = _unb64(body)
            plain = AESGCM(self._seal).decrypt(data[:12], data[12:], self._aad(user))
        except (InvalidTag, ValueError, binascii.Error):
            raise ValueError("the sealed environment does not open with your key") from None
        env = json.loads(plain.decode("utf-8", "surrogatepass"))
        if not isinstance(env, dict):
            raise ValueError("the sealed environment is not a mapping")
        return env

    def check(
        self,
        values: Mapping[str, Any],
        signature: str,
        signed_at: float,
        sealed_env: str,
        *,
        user: str,
        now: float,
        max_age: float,
    ) -> str | None:
        """Why the job of ``values`` (its fields of ``jobfields.SIGNED``) may not run for
        ``user``, as one line starting with :data:`MISMATCH`; None when it may."""
        if values.get("user") != user:
            return f"{MISMATCH}: the job is {values.get('user')!r}'s, this executor runs {user}'s"
        if not signature:
            return f"{MISMATCH}: the job is not signed (it was not submitted through your TMS)"
        try:
            version, key_id, _ = _split(signature, "the signature")
        except ValueError as e:
            return f"{MISMATCH}: {e}"
        if key_id != self.key_id:
            return (
                f"{MISMATCH}: signed with another key (id {key_id}; yours is {self.key_id}: "
                "~/.taskmanager/jobkey was replaced since)"
            )
        signer = self.submission(user, values["cwd"], values["umask"], sealed_env, signed_at)
        if not hmac.compare_digest(signer.sign(values), signature):
            return f"{MISMATCH}: the job's spec is not the one you signed"
        age = now - signed_at
        if age > max_age:
            return (
                f"{MISMATCH}: signed {age / 86400:.1f} days ago, longer than the limit of "
                f"{max_age / 86400:g} days"
            )
        return None

    def _aad(self, user: str) -> bytes:
        return _SEAL_AAD + _part("user", user) + _part("key_id", self.key_id)


def _split(text: str, what: str) -> tuple[str, str, str]:
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 3:
        raise ValueError(f"{what} is not in the format of TaskManager's signed jobs")
    if parts[0] != VERSION:
        raise ValueError(f"{what} has version {parts[0][:10]!r}, this executor knows {VERSION}")
    return parts[0], parts[1], parts[2]


#: Each job field of the message: its name's part, whether it is an integer, its name, and
#: whether it is left out when None (:data:`WHEN_SET`).
_JOB_PARTS = tuple(
    (
        struct.pack(">I", len(f.name)) + f.name.encode("ascii"),
        f.base is int,
        f.name,
        f.name in WHEN_SET,
    )
    for f in JOB_FIELDS
)


@dataclass
class SubmissionSigner:
    key_id: str
    _start: Any  # an hmac object: the header and the submission's fields

    def sign(self, job: Mapping[str, Any]) -> str:
        """The signature of one job (``job``: its fields of :data:`JOB_FIELDS` by name).

        The same bytes as :func:`_part` of each field, built in one pass: this runs once per
        job of a bulk submission."""
        parts: list[bytes] = []
        for name_part, is_int, name, when_set in _JOB_PARTS:
            value: Any = job.get(name) if when_set else job[name]
            if when_set and value is None:
                continue
            if when_set and not is_int:  # time_limit: the same text from an int or a float
                text = repr(float(value))
            else:
                text = str(int(value)) if is_int else "" if value is None else str(value)
            data = text.encode("utf-8", "surrogatepass")
            parts += (name_part, len(data).to_bytes(4, "big"), data)
        h = self._start.copy()
        h.update(b"".join(parts))
        return f"{self._prefix}{base64.urlsafe_b64encode(h.digest())[:43].decode('ascii')}"

    @property
    def _prefix(self) -> str:
        return f"{VERSION}.{self.key_id}."


def load_key(path: Path | None = None) -> JobKey:
    """The user's key from ``path`` (default ``~/.taskmanager/jobkey``), checked as a secret
    (the user's own file, mode 0600, not a link)."""
    path = path or key_path()
    try:
        return JobKey(auth.read_secret(path))
    except auth.SecretFileError as e:
        raise JobKeyError(str(e)) from None
    except JobKeyError as e:
        raise JobKeyError(f"{path}: {e}; remove it and restart your TMS to make a new one") from e


def ensure_key(path: Path | None = None) -> JobKey:
    """The user's key, made (32 random bytes, 0600) when there is none yet."""
    path = path or key_path()
    if not os.path.lexists(path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Written whole under another name, then linked into place: a reader never sees a
        # part of it, and of two TMSs making one at once, the first one's is kept.
        tmp = path.with_name(f"{path.name}.new.{os.getpid()}.{os.urandom(4).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, os.urandom(KEY_BYTES))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return load_key(path)
