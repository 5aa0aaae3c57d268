"""Shell completion (tm/cli/completion.py): the script ``hConnect --completion bash|zsh``
prints, sourced in a real bash (its completion functions called as bash calls them, with
COMP_WORDS and COMP_CWORD) and a real zsh, completing options, hConnect's commands and the
user's job ids (asked of the user's TMS over its socket)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cli
from tests.helpers.processes import Installation
from tests.helpers.requirements import skip_or_fail
from tm.textcommands import SPECS

#: bash's default COMP_WORDBREAKS; it splits ``lajob:12`` into the words ``lajob : 12``.
BREAKS = " \t\n\"'><=;|&(:"

#: Calls the completion function bash would call for the words given as arguments (the last
#: one being completed), and prints the candidates, one a line.
BASH_HARNESS = r"""
source "$0"
COMP_WORDBREAKS=$BREAKS
COMP_WORDS=("$@")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
spec=$(complete -p "$1")
function=${spec#*-F }
function=${function%% *}
"$function" "$1" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def script(tm: Installation, shell: str) -> Path:
    result = tm.run("hConnect", "--completion", shell)
    assert result.returncode == 0, result.stderr
    same = tm.run("hRunJob", "--completion", shell)
    assert same.stdout == result.stdout  # one script for both programs
    path = tm.work / f"completion.{shell}"
    path.write_text(result.stdout)
    return path


def bash_complete(tm: Installation, path: Path, *words: str, breaks: str = BREAKS) -> list[str]:
    """The candidates for ``words`` (split as bash splits a line at COMP_WORDBREAKS), sorted."""
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", BASH_HARNESS, str(path), *words],
        env=tm.env | {"BREAKS": breaks},
        cwd=tm.work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return sorted(line for line in result.stdout.splitlines() if line)


def commands_of(target: str, prefix: str) -> list[str]:
    return sorted(
        s.name + (":" if s.arg else "")
        for s in SPECS.values()
        if target in s.targets and s.name.startswith(prefix)
    )


@pytest.fixture
def with_jobs(installation: Installation) -> tuple[Installation, list[int]]:
    """An installation whose user has three jobs (and so a TMS on this host)."""
    cli.td(installation, "deactivatecluster")  # they stay waiting
    ids = [cli.submit(installation, "true") for _ in range(3)]
    return installation, ids


def test_bash_completes_options_commands_and_job_ids(
    with_jobs: tuple[Installation, list[int]],
) -> None:
    tm, ids = with_jobs
    path = script(tm, "bash")
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0

    # hConnect's commands: the TMS's, or after -T the dispatcher's
    assert bash_complete(tm, path, "hConnect", "la") == commands_of("tms", "la")
    assert bash_complete(tm, path, "hConnect", "ls") == commands_of("tms", "ls")
    assert "lstmms" in commands_of("tms", "ls") and "lscluster" not in commands_of("tms", "ls")
    assert bash_complete(tm, path, "hConnect", "-T", "ls") == commands_of("dispatcher", "ls")
    assert bash_complete(tm, path, "hConnect", "--json", "-T", "lsc") == ["lscluster"]
    assert bash_complete(tm, path, "hConnect", "--j") == ["--json"]
    assert bash_complete(tm, path, "hConnect", "lswjobs", "") == []  # one command per call

    # job ids after a command taking one: bash has split `lajob:` at its colon
    every = sorted(str(i) for i in ids)
    assert sorted(bash_complete(tm, path, "hConnect", "lajob", ":")) == every
    last = str(ids[-1])
    assert last in bash_complete(tm, path, "hConnect", "-T", "lajob", ":", last[:-1] or last)
    assert sorted(bash_complete(tm, path, "hConnect", "killjobs", ":", str(ids[0]), ":")) == every
    assert bash_complete(tm, path, "hConnect", "lagroup", ":") == []  # a group, not an id
    # without ':' in COMP_WORDBREAKS the word is whole, and so are the candidates
    whole = bash_complete(tm, path, "hConnect", "lajob:", breaks=" \t\n")
    assert sorted(whole) == sorted(f"lajob:{i}" for i in ids)

    # hRunJob: its options, their values, and the command after them or after `--`
    assert bash_complete(tm, path, "hRunJob", "--j") == ["--jobsFile", "--json"]
    assert bash_complete(tm, path, "hRunJob", "--completion", "") == ["bash", "zsh"]
    assert bash_complete(tm, path, "hRunJob", "-c", "") == []
    (tm.work / "jobs-file.txt").write_text("command::true\n")
    assert bash_complete(tm, path, "hRunJob", "-g", "x", "-f", "jobs-f") == ["jobs-file.txt"]
    assert "python3" in bash_complete(tm, path, "hRunJob", "--", "python")
    assert "python3" in bash_complete(tm, path, "hRunJob", "-q", "python")
    assert bash_complete(tm, path, "hRunJob", "--", "python3", "jobs-f") == ["jobs-file.txt"]


def test_the_ids_for_completion_come_only_from_a_running_tms(tmp_path: Path) -> None:
    """No TMS: no ids, at once, and no TMS started for them."""
    tm = Installation(tmp_path)
    try:
        result = tm.run("hConnect", "--complete-ids")
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert not (tm.home / ".taskmanager" / "tms.pid").exists()
        path = script(tm, "bash")
        assert bash_complete(tm, path, "hConnect", "lajob", ":") == []
    finally:
        tm.cleanup()


ZSH_HARNESS = r"""
autoload -Uz compinit && compinit -u -D
source "$0"
print -r -- "registered: $_comps[hConnect] $_comps[hRunJob]"
_tm_hconnect_candidates "$1" "$2"
print -rl -- $reply
"""


def zsh_candidates(tm: Installation, path: Path, target: str, word: str) -> list[str]:
    result = subprocess.run(
        ["zsh", "-f", "-c", ZSH_HARNESS, str(path), target, word],
        env=tm.env,
        cwd=tm.work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    first, *rest = result.stdout.splitlines()
    assert first == "registered: _tm_hconnect _tm_hrunjob", result.stdout
    return sorted(rest)


def test_zsh_completes_commands_and_job_ids(with_jobs: tuple[Installation, list[int]]) -> None:
    if shutil.which("zsh") is None:
        skip_or_fail("needs zsh (apt-get install zsh) to source the zsh completion")
    tm, ids = with_jobs
    path = script(tm, "zsh")
    check = subprocess.run(["zsh", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert zsh_candidates(tm, path, "tms", "la") == commands_of("tms", "la")
    assert zsh_candidates(tm, path, "dispatcher", "lsc") == ["lscluster"]
    assert zsh_candidates(tm, path, "tms", "lajob:") == sorted(f"lajob:{i}" for i in ids)
    assert "--json" in zsh_candidates(tm, path, "tms", "--")
