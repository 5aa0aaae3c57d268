"""The CLI's start and end: what the everyday path imports, and how it leaves."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tm.cli.errors import report
from tm.cli.hrunjob import new_uuid

REPO = Path(__file__).resolve().parents[2]
#: Standard modules the everyday submission does without: each costs its start milliseconds.
NOT_ON_THE_FAST_PATH = ("pathlib", "uuid", "platform", "twisted", "OpenSSL")


def run(code: str, *flags: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, *flags, "-c", code], env=env, cwd=REPO, capture_output=True
    )


def test_a_submission_imports_none_of_the_costly_modules_it_does_not_need() -> None:
    # -S: without site-packages' .pth files, which may import any of these themselves.
    code = (
        "import sys\n"
        "from tm.cli import hrunjob\n"
        "args, jobs = hrunjob.prepare(['-q', '--wait', 'true'])\n"
        "rows = [hrunjob.spec_to_json(spec) for _, spec in jobs]\n"
        f"print(sorted(m for m in {NOT_ON_THE_FAST_PATH!r} if m in sys.modules))\n"
    )
    result = run(code, "-S")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"[]"


def test_uuids_are_random_version_4_uuids_in_the_usual_text() -> None:
    made = {new_uuid() for _ in range(1000)}
    assert len(made) == 1000
    for text in made:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_leaving_keeps_the_status_and_every_byte_of_output() -> None:
    code = (
        "import sys\n"
        "from tm.cli.errors import leave\n"
        "sys.stdout.write('x' * 1_000_000)\n"
        "print('last line', file=sys.stderr)\n"
        "leave(7)\n"
    )
    result = run(code)
    assert result.returncode == 7
    assert result.stdout == b"x" * 1_000_000
    assert result.stderr == b"last line\n"


def test_leaving_when_the_reader_has_gone_ends_quietly_as_cat_does() -> None:
    code = "import sys\nfrom tm.cli.errors import leave\nsys.stdout.write('line\\n')\nleave(0)\n"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONUNBUFFERED", None)  # buffered, as on a pipe: the write happens in leave
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone (hConnect lswjobs | head, once head ended)
    try:
        writer = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    assert writer.returncode == 141
    assert writer.stderr == b""


def test_every_way_out_of_a_command_leaves_through_report_with_its_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def exits(code: object) -> Callable[[], int]:
        def main() -> int:
            raise SystemExit(code)

        return main

    assert report("hRunJob", exits(None)) == 0  # argparse after --help
    assert report("hRunJob", exits(3)) == 3  # the Twisted path's task.react
    assert report("hRunJob", exits("no way")) == 1
    assert capsys.readouterr().err == "no way\n"
