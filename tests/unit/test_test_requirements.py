"""The rule of tests/helpers/requirements.py: a test needing root skips on a developer's
machine and fails in CI."""

from __future__ import annotations

import pytest

from tests.helpers import requirements


@pytest.mark.parametrize(
    ("env", "required"),
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "True"}, True),
        ({"CI": "false"}, False),
        ({"TM_REQUIRE_ROOT": "1"}, True),
        ({"TM_REQUIRE_ROOT": "0"}, False),
        ({"CI": "false", "TM_REQUIRE_ROOT": "1"}, True),
    ],
)
def test_ci_or_tm_require_root_makes_privileged_tests_required(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], required: bool
) -> None:
    for name in ("CI", "TM_REQUIRE_ROOT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert requirements.privileged_tests_required() is required


def test_without_root_a_test_skips_outside_ci_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TM_REQUIRE_ROOT", raising=False)
    monkeypatch.setattr(requirements.os, "geteuid", lambda: 1000)
    with pytest.raises(pytest.skip.Exception, match="needs root to make a second Unix user"):
        requirements.require_second_user()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs root to run a client as nobody"):
        requirements.require_root("run a client as nobody")


def test_as_root_nothing_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requirements.os, "geteuid", lambda: 0)
    monkeypatch.setattr(requirements.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    requirements.require_root("do anything")
    requirements.require_second_user()
