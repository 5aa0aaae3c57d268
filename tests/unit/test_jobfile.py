"""The job-file parser of ``hRunJob -f``."""

from __future__ import annotations

import pytest

from tm.jobfile import JobFileError, compress_ids, parse_job_file

DEFAULTS = {
    "command": "",
    "slots": 1,
    "priority": 0,
    "group": "cli-group",
    "info": "",
    "logfile": "",
    "stdout": "",
    "stderr": "",
    "shell": None,
    "estimated_time": None,
    "estimated_memory": None,
    "excluded_hosts": "",
}


def test_fields_idx_and_defaults() -> None:
    text = (
        "# a comment\n"
        "\n"
        "command::run --seed {idx}\tslots::2\tstdout::out.{idx}\n"
        "priority::7\tcommand::echo ${HOME} {a,b}\tinfoText::second\texcludedHosts::h1,h2\n"
    )
    jobs = parse_job_file(text, "jobs.txt", DEFAULTS)
    assert [j.line_no for j in jobs] == [3, 4]
    first, second = (j.options for j in jobs)
    assert first["command"] == "run --seed 2"
    assert first["slots"] == 2 and first["stdout"] == "out.2"
    assert first["group"] == "cli-group"  # missing field: the command-line option's value
    assert second["command"] == "echo ${HOME} {a,b}"  # other braces pass through
    assert second["priority"] == 7 and second["info"] == "second"
    assert second["excluded_hosts"] == "h1,h2"
    assert second["slots"] == 1


def test_aliases_and_floats() -> None:
    jobs = parse_job_file("command::x\texcludeHosts::h3\testimatedTime::1.5\n", "f", DEFAULTS)
    assert jobs[0].options["excluded_hosts"] == "h3"
    assert jobs[0].options["estimated_time"] == 1.5


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("command::a\nslots::x\tcommand::b\n", 2, "slots must be a whole number"),
        ("command::a\n\ncommand::b\tcolor::red\n", 3, "unknown field 'color'"),
        ("command::a\tcommand::b\n", 1, "given twice"),
        ("just a command\n", 1, "is not field::value"),
        ("command::a\ngroup::g\n", 2, "has no command"),
        ("command::   \n", 1, "has no command"),
        ("estimatedMemory::lots\tcommand::a\n", 1, "must be a number"),
    ],
)
def test_malformed_line_names_its_number(text: str, line: int, words: str) -> None:
    with pytest.raises(JobFileError) as info:
        parse_job_file(text, "jobs.txt", DEFAULTS)
    assert info.value.line_no == line
    assert str(info.value).startswith(f"jobs.txt:{line}: ")
    assert words in str(info.value)


def test_empty_file_has_no_jobs() -> None:
    assert parse_job_file("# nothing\n\n", "f", DEFAULTS) == []


def test_compress_ids() -> None:
    assert compress_ids([]) == ""
    assert compress_ids([5]) == "5"
    assert compress_ids([3, 4, 5, 9, 11, 12]) == "3-5,9,11-12"
