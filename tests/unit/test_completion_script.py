"""The completion scripts are made from the parsers and the text commands (tm/cli/completion.py);
tests/integration/test_completion.py runs them in real shells."""

from __future__ import annotations

import re

import pytest

from tm.cli import completion, hconnect, hrunjob
from tm.textcommands import SPECS


def variables(text: str) -> dict[str, list[str]]:
    return {
        name: value.split()
        for name, value in re.findall(r"^(?:typeset -g )?_tm_(\w+)='([^']*)'$", text, re.M)
    }


@pytest.mark.parametrize("shell", completion.SHELLS)
def test_the_script_names_every_command_and_option(shell: str) -> None:
    text = completion.script(shell)
    assert text.startswith(f"# {shell} completion of hRunJob and hConnect (TaskManager ")
    facts = variables(text)
    for target, key in (("tms", "tms_commands"), ("dispatcher", "td_commands")):
        expected = [s.name + (":" if s.arg else "") for s in SPECS.values() if target in s.targets]
        assert facts[key] == expected
    assert set(facts["id_commands"]) == {n for n, s in SPECS.items() if s.arg in completion.ID_ARGS}
    assert {"--json", "--parsable", "--version", "--completion", "-f", "--wait"} <= set(
        facts["hrunjob_opts"]
    )
    assert {"-f", "--jobsFile", "-o", "-O", "-l"} <= set(facts["hrunjob_files"])
    assert "-q" not in facts["hrunjob_valued"] and "-c" in facts["hrunjob_valued"]
    assert {"-T", "--json", "--version", "--completion"} <= set(facts["hconnect_opts"])
    assert "--complete-ids" not in facts["hconnect_opts"]  # the script's own, not the user's


def test_completion_options_are_served_before_anything_else(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert completion.early("hConnect", hconnect.build_parser().parse_args(["lswjobs"])) is None
    args = hrunjob.build_parser().parse_args(["--completion", "zsh"])
    assert completion.early("hRunJob", args) == 0
    assert "compdef _tm_hrunjob hRunJob" in capsys.readouterr().out
    assert hrunjob.prepare(["--completion", "bash"])[1] == []  # no command needed
