"""The everyday command lines read without argparse (tm/cli/hrunjob_args.py,
tm/cli/hconnect.py) read as argparse reads them, or are left to it; the TMS socket's JSON
without the json module (tm/localsocket.py) is json's."""

from __future__ import annotations

import json
import math
import shlex
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tm import localsocket
from tm.cli import hconnect, hrunjob_args, hrunjob_options
from tm.cli.errors import CLIError

#: Command lines of hRunJob: everyday ones, ones argparse reads otherwise, and errors.
HRUNJOB_LINES = [
    ["-q", "true"],
    ["true"],
    ["--wait", "echo", "hi"],
    ["-q", "--wait", "true"],
    ["-c", "2", "-p", "5", "-g", "grp", "-i", "info", "echo", "x"],
    ["--slots", "3", "--priority", "0", "--group", "", "x"],
    ["-c", "0", "true"],
    ["-c", "100001", "true"],
    ["-c", "x", "true"],
    ["-c", "1_0", "true"],
    ["-c", " 3 ", "true"],
    ["-c2", "true"],
    ["--slots=2", "true"],
    ["--sl", "2", "true"],
    ["-p", "127", "x"],
    ["-p", "128", "x"],
    ["-p", "-1", "true"],
    ["-t", "nan", "true"],
    ["-t", "inf", "true"],
    ["-t", "-0", "true"],
    ["-t", "5", "-m", "100", "true"],
    ["-t", "1e400", "x"],
    ["-m", "1e13", "true"],
    ["--estimatedTime", "0.5", "--estimatedMemory", "7", "x"],
    ["-q"],
    [],
    ["--help"],
    ["-h", "x"],
    ["--version"],
    ["-x", "true"],
    ["--wai", "true"],
    ["-qv", "true"],
    ["-q", "--json", "true"],
    ["--json", "true"],
    ["--parsable", "true"],
    ["-s"],
    ["--status", "--json"],
    ["-f", "jobs.txt"],
    ["-q", "-f", "jobs.txt", "extra", "words"],
    ["-f", "-"],
    ["-f"],
    ["-g"],
    ["-g", "-q", "true"],
    ["--", "echo", "a b", "it's", "", "é", "$HOME"],
    ["-q", "--"],
    ["--"],
    ["-q", "--", "--wait"],
    ["echo", "--", "x"],
    ["-q", "echo", "-q", "--wait"],
    ["-S", "sh", "-q", "true"],
    ["--shell", "/bin/bash", "x"],
    ["-E", "a,b", "--excludeHosts", "c", "true"],
    ["-o", "out", "-O", "err", "-l", "log", "true"],
    ["--stdout_file", "o", "--stderr_file", "e", "--logfile", "l", "--info-text", "i", "x"],
    ["--after", "1,2", "--after-any", "3", "--after-group", "g", "--hold", "true"],
    ["--on-end", "echo done", "--retry-on-exit", "3", "true"],
    ["--retries", "2", "true"],
    ["--time-limit", "5m", "true"],
    ["--array", "1-3", "echo {idx}"],
    ["--completion", "bash"],
    ["--dispatcher", "x.json", "-v", "true"],
    [""],
    ["-q", "  "],
    ["-5"],
    ["-q", "-1", "x"],
    ["-g", "a b", "-i", "-x y", "true"],
]

#: hConnect's.
HCONNECT_LINES = [
    ["lswjobs"],
    ["lsfjobs"],
    ["lajob:7"],
    ["wait:7"],
    ["-T", "lswjobs"],
    ["--connect_to_td", "--verbose", "--json", "lsrjobs"],
    ["-v", "--json", "lsfjobs"],
    ["--dispatcher", "d.json", "-T", "lswjobs"],
    ["--dispatcher"],
    ["--dispatcher", "-T", "x"],
    ["lswjobs", "-T"],
    ["lswjobs", "--", "x"],
    ["--", "lswjobs"],
    ["lajob:", "7"],
    ["-Tv", "lswjobs"],
    ["--js", "lswjobs"],
    ["--json=1", "lswjobs"],
    ["--completion", "zsh"],
    ["--complete-ids"],
    ["--help"],
    ["--version"],
    ["-x"],
    [],
    ["-T"],
]


def argparse_reading(parse: Any, argv: list[str]) -> dict[str, Any] | str:
    """argparse's reading of ``argv``: its values in order, or what it did instead."""
    try:
        return dict(vars(parse(argv)))
    except CLIError as e:
        return f"error: {e}"
    except SystemExit as e:
        return f"exit {e.code}"


@pytest.mark.parametrize("argv", HRUNJOB_LINES, ids=" ".join)
def test_hrunjob_s_everyday_lines_read_as_argparse_reads_them(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    mine = hrunjob_args.parse(argv)
    theirs = argparse_reading(hrunjob_options.parse_command_line, argv)
    capsys.readouterr()
    if mine is not None:
        assert isinstance(theirs, dict), (argv, theirs)
        assert list(vars(mine).items()) == list(theirs.items())


@pytest.mark.parametrize("argv", HCONNECT_LINES, ids=" ".join)
def test_hconnect_s_everyday_lines_read_as_argparse_reads_them(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    mine = hconnect.parse_everyday(argv)
    theirs = argparse_reading(hconnect.build_parser().parse_args, argv)
    capsys.readouterr()
    if mine is not None:
        assert isinstance(theirs, dict), (argv, theirs)
        assert list(vars(mine).items()) == list(theirs.items())


def test_the_everyday_lines_are_read_without_argparse() -> None:
    """What the fast path is for: these are not handed to argparse."""
    for argv in (
        ["-q", "true"],
        ["--wait", "echo", "hi"],
        ["-q", "-c", "2", "-g", "g", "-f", "jobs.txt"],
        ["-q", "--", "echo", "a b"],
        ["-t", "5", "-m", "100", "-E", "a", "-S", "sh", "--after", "3", "x"],
    ):
        assert hrunjob_args.parse(argv) is not None, argv
    for argv in (["lswjobs"], ["-T", "lsfjobs"], ["--json", "wait:7"], ["-v", "lajob:3"]):
        assert hconnect.parse_everyday(argv) is not None, argv
    # Help, errors and the rare options are argparse's.
    for argv in (["--help"], ["-c"], ["-c", "0", "x"], ["--array", "1-2", "x"], ["-qv", "x"]):
        assert hrunjob_args.parse(argv) is None, argv
    for argv in (["--help"], ["--completion", "bash"], ["--dispatcher"]):
        assert hconnect.parse_everyday(argv) is None, argv


def test_the_defaults_are_the_parsers() -> None:
    """Every destination of the parsers, with its default, in their order."""
    parsed = hrunjob_options.build_parser().parse_args([])
    assert list(vars(parsed).items()) == list(hrunjob_args.DEFAULTS.items())
    assert hrunjob_args.MAX_SLOTS == hrunjob_options.MAX_SLOTS
    parsed = hconnect.build_parser().parse_args([])
    assert list(vars(parsed).items()) == list(hconnect.DEFAULTS.items())


words = st.lists(
    st.one_of(
        st.sampled_from(
            ["-q", "--wait", "-c", "2", "-p", "-g", "x", "--", "-v", "--json", "-f", "-T", ""]
        ),
        st.text(max_size=6),
    ),
    max_size=7,
)


@given(words)
def test_any_line_is_read_as_argparse_reads_it_or_left_to_it(argv: list[str]) -> None:
    for mine, parse in (
        (hrunjob_args.parse(argv), hrunjob_options.parse_command_line),
        (hconnect.parse_everyday(argv), hconnect.build_parser().parse_args),
    ):
        if mine is not None:
            assert list(vars(mine).items()) == list(vars(parse(argv)).items())


@given(st.text())
def test_quote_is_shlex_s(word: str) -> None:
    assert hrunjob_args.quote(word) == shlex.quote(word)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_values, max_size=5))
def test_the_socket_s_json_is_json_s(message: dict[str, Any]) -> None:
    text = localsocket.dumps(message)
    assert text == json.dumps(message, separators=(",", ":"))
    assert localsocket.dumps(message, (", ", ": ")) == json.dumps(message)
    data = text.encode("utf-8", "surrogatepass")
    mine, theirs = localsocket.loads(data), json.loads(data)
    assert json.dumps(mine) == json.dumps(theirs)  # NaN != NaN: compared as text
    assert localsocket.frame(message)[4:] == text.encode("utf-8")


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1} x',
        b"{",
        b'{"a": 1}{}',
        b"[1]",
        b' {"a":1}',
        b"\xef\xbb\xbf{}",
        b'{"a":"\\ud800"}',
    ],
)
def test_a_frame_json_refuses_is_refused_as_json_refuses_it(data: bytes) -> None:
    try:
        theirs: Any = json.loads(data)
    except ValueError as e:
        theirs = type(e)
    try:
        mine: Any = localsocket.loads(data)
    except ValueError as e:
        mine = type(e)
    assert mine == theirs


def test_special_floats_travel_as_json_writes_them() -> None:
    message = {"a": math.inf, "b": -math.inf, "c": 1e300, "d": -0.0}
    assert localsocket.dumps(message) == json.dumps(message, separators=(",", ":"))
    assert localsocket.loads(localsocket.dumps(message).encode()) == message
    with pytest.raises(TypeError, match="Object of type set is not JSON serializable"):
        localsocket.dumps({"a": {1}})
