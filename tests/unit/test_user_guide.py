"""docs/user-guide.md names only options and commands that exist: every ``hRunJob`` option and
every ``hConnect`` command (with its options) written after the program's name in a code span
or a code block is checked against the real parsers and the command table."""

from __future__ import annotations

import re
import shlex

from tests.helpers.processes import REPO
from tm.cli import hconnect
from tm.cli.hrunjob_options import build_parser
from tm.textcommands import SPECS

GUIDE = REPO / "docs" / "user-guide.md"


def _snippets() -> list[str]:
    """Each inline code span and each line of a code block."""
    text = GUIDE.read_text()
    blocks = re.findall(r"```\w*\n(.*?)```", text, re.S)
    lines = [line.split("#")[0] for block in blocks for line in block.splitlines()]
    spans = re.findall(r"`([^`\n]+)`", re.sub(r"```\w*\n.*?```", "", text, flags=re.S))
    return lines + spans


def _words_after(program: str) -> list[list[str]]:
    found = []
    for snippet in _snippets():
        try:
            words = shlex.split(snippet)
        except ValueError:
            words = snippet.split()
        for i, word in enumerate(words):
            if word == program:
                found.append(words[i + 1 :])
    return found


def _options(parser) -> set[str]:  # noqa: ANN001
    return {o for action in parser._actions for o in action.option_strings}


def test_every_hrunjob_option_in_the_guide_exists() -> None:
    known = _options(build_parser())
    uses = _words_after("hRunJob")
    assert len(uses) > 20, "the guide shows hRunJob"
    for words in uses:
        for word in words:
            if word == "--" or not word.startswith("-"):
                if word == "--" or word in ("CMD", "…"):
                    break
                continue
            assert word.split("=")[0] in known, f"hRunJob has no option {word}: {words}"


def test_every_hconnect_command_in_the_guide_exists() -> None:
    known = _options(hconnect.build_parser())
    uses = _words_after("hConnect")
    assert len(uses) > 20, "the guide shows hConnect"
    for words in uses:
        commands = [w for w in words if not w.startswith("-")]
        for word in words:
            if word.startswith("-"):
                assert word in known, f"hConnect has no option {word}: {words}"
        for command in commands:
            name = command.split(":")[0]
            if name in ("COMMAND",):
                continue
            assert name in SPECS, f"hConnect has no command {name!r}: {words}"
