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


# --- files that tell a client whom to trust (issue 10, point 6) ---------------------------


def test_a_published_file_of_ones_own_is_read_and_a_writable_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.json"
    path.write_text("{}")
    os.chmod(path, 0o644)
    assert auth.read_trusted(path) == b"{}"
    for mode in (0o664, 0o646):
        os.chmod(path, mode)
        with pytest.raises(auth.SecretFileError) as caught:
            auth.read_trusted(path)
        text = str(caught.value)
        assert text.startswith(f"{path} is writable by group or others (mode {mode:o})")
        assert f"chmod go-w {path}" in text and "\n" not in text


def test_a_published_file_may_be_a_link_to_a_trusted_file_a_key_may_not(tmp_path: Path) -> None:
    target = tmp_path / "var-dispatcher.json"
    target.write_text("{}")
    os.chmod(target, 0o644)
    link = tmp_path / "dispatcher.json"
    link.symlink_to(target)
    assert auth.read_trusted(link) == b"{}"
    key = tmp_path / "key"
    auth.write_secret(key, b"k")
    key_link = tmp_path / "key-link"
    key_link.symlink_to(key)
    with pytest.raises(auth.SecretFileError, match="is a symbolic link"):
        auth.read_secret(key_link)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "dispatcher.json"
    os.mkfifo(fifo, 0o644)
    with pytest.raises(auth.SecretFileError, match="not a regular file"):
        auth.read_trusted(fifo)


def test_the_owner_rule_names_the_owner_and_the_fix() -> None:
    me = os.getuid()
    stranger = 4_000_321  # no account: shown as a uid
    st = os.stat_result((0o100644, 0, 0, 1, stranger, 0, 2, 0, 0, 0))
    problem = auth.file_trust_problem("/shared/dispatcher.json", st)
    assert problem is not None
    assert problem.startswith(
        f"/shared/dispatcher.json is owned by uid {stranger}, not by root or you"
    )
    assert f"{auth.ACCOUNT_VARIABLE}={stranger}" in problem
    assert "chown ACCOUNT /shared/dispatcher.json" in problem
    # Named as the dispatcher's account, the same owner is trusted; another stays refused.
    assert auth.file_trust_problem("/shared/dispatcher.json", st, account=stranger) is None
    other = auth.file_trust_problem("/shared/dispatcher.json", st, account=me + 1)
    assert other is not None and "do not use it" in other
    for owner in {0, me}:
        mine = os.stat_result((0o100644, 0, 0, 1, owner, 0, 2, 0, 0, 0))
        assert auth.file_trust_problem("/x", mine) is None
    # A secret must be one's own, whoever else is trusted.
    assert auth.file_trust_problem("/k", st, secret=True, account=stranger) is not None


def test_the_dispatcher_account_is_a_name_or_a_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(auth.ACCOUNT_VARIABLE, raising=False)
    assert auth.dispatcher_account() is None
    monkeypatch.setenv(auth.ACCOUNT_VARIABLE, ME)
    assert auth.dispatcher_account() == os.getuid()
    assert auth.dispatcher_account("1234") == 1234
    with pytest.raises(auth.SecretFileError, match="names no account"):
        auth.dispatcher_account("no-such-user-here")
