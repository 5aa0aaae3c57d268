"""When a test may skip for want of root or a second Unix user, and when it must fail.

On a developer's machine without root such a test skips and says why. In CI (``CI=true``, or
``TM_REQUIRE_ROOT=1`` set by ``.ci/run``) it fails instead: a suite whose privileged tests
quietly skipped must never be mistaken for a passing one. Every test that needs root or a
second user asks here, so the rule lives in one place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from tests.helpers.processes import Installation, UnixUser

#: Programs a second Unix user needs: to make it, to remove it, to run things as it.
USER_TOOLS = ("useradd", "userdel", "setpriv")


def privileged_tests_required() -> bool:
    """Whether tests needing root or a second user must run here (CI) rather than skip."""
    if os.environ.get("TM_REQUIRE_ROOT", "") not in ("", "0"):
        return True
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with ``reason``; in CI, fail with it."""
    if privileged_tests_required():
        pytest.fail(
            f"{reason}; this run requires it (CI=true or TM_REQUIRE_ROOT=1), so the "
            "test fails instead of skipping",
            pytrace=False,
        )
    pytest.skip(reason)


def require_root(why: str) -> None:
    """Skip (fail in CI) unless this process is root; ``why`` completes "needs root to ..."."""
    if os.geteuid() != 0:
        skip_or_fail(f"needs root to {why}")


def require_second_user() -> None:
    """Skip (fail in CI) unless a throw-away Unix user can be made and used here."""
    require_root("make a second Unix user")
    for tool in USER_TOOLS:
        if shutil.which(tool) is None:
            skip_or_fail(f"needs {tool} to make and use a second Unix user")


@contextlib.contextmanager
def second_user(prefix: str = "tm-users-") -> Iterator[UnixUser]:
    """A throw-away Unix user (see :class:`UnixUser`) with its home in a fresh directory any
    user can reach; removed, with its processes and files, afterwards."""
    require_second_user()
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    try:
        user = UnixUser.create(base)
        try:
            yield user
        finally:
            user.remove()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def installation_shared_with(
    prefix: str, *users: UnixUser, dispatcher_args: tuple[str, ...] = ()
) -> Iterator[Installation]:
    """An installation in a directory every user can reach, its dispatcher run by root (this
    process, an admin, with ``dispatcher_args``), with ``users`` as plain users; their
    processes and the installation are ended afterwards."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(root, 0o755)
    inst = Installation(root)
    try:
        names = "".join(f"{user.name}\tuser\n" for user in users)
        (inst.etc / "users").write_text(f"root\tuser,admin\n{names}")
        inst.start_dispatcher(*dispatcher_args)
        yield inst
    finally:
        for user in users:
            user.stop_processes()
        inst.cleanup()
        shutil.rmtree(root, ignore_errors=True)
