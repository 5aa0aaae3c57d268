"""The file-system challenge and secret files, against the real file system."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tm import auth
from tm.protocol.commands import AuthenticationFailed

ME = __import__("pwd").getpwuid(os.getuid()).pw_name


@pytest.fixture
def challenge_dir(tmp_path: Path) -> Path:
    d = tmp_path / "challenge"
    auth.ensure_challenge_dir(d)
    return d


def test_challenge_dir_mode(challenge_dir: Path) -> None:
    assert challenge_dir.stat().st_mode & 0o7777 == 0o1733


def test_good_answer_is_accepted_and_removed(challenge_dir: Path) -> None:
    c = auth.new_challenge(challenge_dir)
    auth.answer_challenge(c.path, c.nonce, str(challenge_dir))
    auth.verify_challenge(c, ME)
    assert not os.path.exists(c.path)


def test_wrong_nonce_is_refused(challenge_dir: Path) -> None:
    c = auth.new_challenge(challenge_dir)
    auth.answer_challenge(c.path, "0" * 32, str(challenge_dir))
    with pytest.raises(AuthenticationFailed, match="nonce"):
        auth.verify_challenge(c, ME)


def test_missing_file_is_refused(challenge_dir: Path) -> None:
    c = auth.new_challenge(challenge_dir)
    with pytest.raises(AuthenticationFailed, match="not found"):
        auth.verify_challenge(c, ME)


def test_symlink_is_refused(challenge_dir: Path, tmp_path: Path) -> None:
    c = auth.new_challenge(challenge_dir)
    target = tmp_path / "mine"
    target.write_text(c.nonce)
    os.symlink(target, c.path)
    with pytest.raises(AuthenticationFailed):
        auth.verify_challenge(c, ME)


def test_group_writable_file_is_refused(challenge_dir: Path) -> None:
    c = auth.new_challenge(challenge_dir)
    auth.answer_challenge(c.path, c.nonce, str(challenge_dir))
    os.chmod(c.path, 0o664)
    with pytest.raises(AuthenticationFailed, match="writable"):
        auth.verify_challenge(c, ME)


def test_hard_link_is_refused(challenge_dir: Path, tmp_path: Path) -> None:
    c = auth.new_challenge(challenge_dir)
    auth.answer_challenge(c.path, c.nonce, str(challenge_dir))
    os.link(c.path, tmp_path / "second-link")
    with pytest.raises(AuthenticationFailed, match="link"):
        auth.verify_challenge(c, ME)


def test_other_owner_is_refused(challenge_dir: Path) -> None:
    c = auth.new_challenge(challenge_dir)
    auth.answer_challenge(c.path, c.nonce, str(challenge_dir))
    # The file is ours; claiming to be another account must fail.
    other = "nobody" if ME != "nobody" else "root"
    with pytest.raises(AuthenticationFailed, match="not owned"):
        auth.verify_challenge(c, other)


def test_client_refuses_foreign_paths(challenge_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(AuthenticationFailed, match="unexpected"):
        auth.answer_challenge(str(tmp_path / ("tmfs_" + "a" * 32)), "x", str(challenge_dir))
    with pytest.raises(AuthenticationFailed, match="unexpected"):
        auth.answer_challenge(str(challenge_dir / "evil"), "x", str(challenge_dir))


def test_secret_file_is_0600_in_0700(tmp_path: Path) -> None:
    path = tmp_path / "private" / "key"
    auth.write_secret(path, b"s3cret")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert auth.read_secret(path) == b"s3cret"


def test_unsafe_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    auth.write_secret(path, b"x")
    os.chmod(path, 0o644)
    with pytest.raises(auth.SecretFileError, match="chmod 600"):
        auth.read_secret(path)


def test_key_pair_is_created_once(tmp_path: Path) -> None:
    key1, cert1 = auth.ensure_key_pair(tmp_path / "k.pem", tmp_path / "c.pem", "tm-dispatcher")
    key2, cert2 = auth.ensure_key_pair(tmp_path / "k.pem", tmp_path / "c.pem", "tm-dispatcher")
    assert (key1, cert1) == (key2, cert2)
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    assert auth.server_tls_options(key1, cert1) is not None
    assert auth.client_tls_options(cert1, auth.DISPATCHER_TLS_NAME) is not None
