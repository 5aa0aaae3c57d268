"""The zygote's implementation is chosen in one place, and its requests' wire format."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers.native import require_native
from tm.executor.launcher import ShepherdArgs, encode_request, zygote_implementation
from tm.executor.request import OutputFiles

FILES = OutputFiles(stdout="/w/o", stderr="/w/e", logfile=None, log_dir="/l")
ARGS = ShepherdArgs(grace=0.5, umask=0o022, cwd="/w", shell="/bin/sh", command="true", files=FILES)


def test_auto_takes_the_compiled_zygote_where_it_is_built() -> None:
    require_native()
    assert importlib.util.find_spec("tm.executor._shepherd") is not None
    assert zygote_implementation("auto") == "native"
    assert zygote_implementation() == "native"


def test_either_implementation_may_be_asked_for_and_nothing_else() -> None:
    assert zygote_implementation("python") == "python"
    assert zygote_implementation("native") == "native"
    with pytest.raises(ValueError, match="unknown zygote implementation 'c'"):
        zygote_implementation("c")


def test_a_request_is_nul_terminated_fields_then_the_environment() -> None:
    body = encode_request(5, ARGS, {"A": "1", "B": "x=y"})
    fields = b"5\x000.5\x0018\x00/w\x00/bin/sh\x00true\x00/w/o\x00/w/e\x00\x00/l\x00"
    assert body == fields + b"A=1\x00B=x=y\x00"


def test_a_request_needs_the_paths_of_the_jobs_files() -> None:
    args = ShepherdArgs(grace=0.5, umask=0, cwd="/w", shell="/bin/sh", command="true")
    with pytest.raises(ValueError, match="paths"):
        encode_request(1, args, {})


@pytest.mark.parametrize(
    "env", [{"A=B": "1"}, {"": "1"}, {"A": "1\x002"}, {"A\x00": "1"}], ids=repr
)
def test_what_execve_cannot_take_is_refused_before_it_is_sent(env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        encode_request(1, ARGS, env)


def test_a_nul_in_the_command_is_refused() -> None:
    args = ShepherdArgs(
        grace=0.5, umask=0, cwd="/w", shell="/bin/sh", command="a\x00b", files=FILES
    )
    with pytest.raises(ValueError, match="NUL"):
        encode_request(1, args, {})
