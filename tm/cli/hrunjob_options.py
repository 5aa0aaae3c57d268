"""``hRunJob``'s options: the parser, and the limits it checks before anything is sent.

Split from :mod:`tm.cli.hrunjob` (no Twisted here). The everyday command lines do without it
(:mod:`tm.cli.hrunjob_args` reads them); it reads the others, with help and errors.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from tm import VERSION_LINE
from tm.cli import completion
from tm.cli.errors import CLIError
from tm.cli.helpformat import HelpFormatter
from tm.cli.hrunjob_args import (  # noqa: F401  (re-exported)
    ESTIMATES,
    MAX_ESTIMATED_MEMORY,
    MAX_ESTIMATED_TIME,
    MAX_SLOTS,
    PROG,
)
from tm.cli.hrunjob_array import array_option
from tm.core.plainspec import PlainSpec


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low..high``, refused in one line otherwise."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, not {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}, not {text}")
        return value

    return convert


def amount(high: float, unit: str) -> Callable[[str], float]:
    """An argparse type: a finite number in ``0..high``."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not 0 <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be a number from 0 to {high:.0f} {unit}, not {text!r}"
            )
        return value

    return convert


def time_limit(text: str) -> float:
    """An argparse type: a time limit (tm/core/jobtime.py), refused in one line otherwise."""
    from tm.core.jobtime import TimeLimitError, parse_time_limit  # only when given

    try:
        return parse_time_limit(text)
    except TimeLimitError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def retries(text: str) -> int:
    """An argparse type: a number of retries (0 to tm/core/retry.py's MAX_RETRIES)."""
    from tm.core.retry import MAX_RETRIES  # only when given

    return whole_number(0, MAX_RETRIES)(text)


def add_control_options(p: argparse.ArgumentParser) -> None:
    """Dependencies and hold (issue 11; tm/core/dependencies.py)."""
    p.add_argument(
        "--after",
        default="",
        metavar="ID[,ID...]",
        help="start once these jobs have all finished (exit 0); cancelled if one does not",
    )
    p.add_argument(
        "--after-any",
        dest="after_any",
        default="",
        metavar="ID[,ID...]",
        help="start once these jobs have all ended, however they ended",
    )
    p.add_argument(
        "--after-group",
        dest="after_group",
        default="",
        metavar="GROUP",
        help="start once every job of your group GROUP submitted before has finished",
    )
    p.add_argument(
        "--hold",
        action="store_const",
        const="user",
        default="",
        help="submit held: it waits until hConnect releasejob:ID",
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one clear line, no traceback
        raise CLIError(f"{message} (see {PROG} -h)", status=2)


#: The parsed command line and the jobs it describes (line number, spec); none for ``-s``.
Prepared = tuple[argparse.Namespace, list[tuple[int, PlainSpec]]]


# The options' destinations are the job's field names (tm/core/jobfields.py); the options,
# and the metavars in the help, are the seed's.
#: Text options: option, long option, field, help.
TEXTS = (
    ("-g", "--group", "group", "group label"),
    ("-i", "--info-text", "info", "free-text description"),
    ("-o", "--stdout_file", "stdout", "file for the job's stdout"),
    ("-O", "--stderr_file", "stderr", "file for the job's stderr"),
    ("-l", "--logfile", "logfile", "log file written when the job ends"),
)


def _metavar(long_option: str) -> str:
    """The metavar argparse would show had the option its own destination."""
    return long_option[2:].replace("-", "_").upper()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG, description="Submit a job to TaskManager.", formatter_class=HelpFormatter
    )
    p.add_argument(
        "-c",
        "--slots",
        type=whole_number(1, MAX_SLOTS),
        default=1,
        help="slots (cores) on one host (default 1)",
    )
    p.add_argument(
        "-p",
        "--priority",
        type=whole_number(0, 127),
        default=0,
        help="0..127, higher first (default 0)",
    )
    p.add_argument(
        "-E",
        "--excludeHosts",
        dest="excluded_hosts",
        metavar=_metavar("--excludeHosts"),
        default="",
        help="never run on these hosts: h1,h2",
    )
    p.add_argument(
        "-f",
        "--jobsFile",
        default=None,
        help="submit one job per line of FILE (field::value tokens separated by tabs; "
        "'-' reads standard input)",
    )
    for option, long_option, name, what in TEXTS:
        p.add_argument(
            option, long_option, dest=name, metavar=_metavar(long_option), default="", help=what
        )
    p.add_argument(
        "-S", "--shell", default=None, help="shell that runs the command (default $SHELL)"
    )
    for option, long_option, name, high, unit, what in ESTIMATES:
        p.add_argument(
            option,
            long_option,
            dest=name,
            metavar=_metavar(long_option),
            type=amount(high, unit),
            default=None,
            help=what,
        )
    p.add_argument(
        "--time-limit",
        dest="time_limit",
        type=time_limit,
        default=None,
        help="stop the job when it has run this long on its host (90, 90s, 15m, 2h, "
        "1-12:00:00); it then ends 'timeout'",
    )
    p.add_argument(
        "--retries",
        type=retries,
        default=None,
        help="requeue the job up to N times when it is lost, its start fails, or it exits "
        "with a code of --retry-on-exit (default: lost jobs as the dispatcher says, else 0)",
    )
    p.add_argument(
        "--retry-on-exit",
        default="",
        metavar="CODES",
        help="exit codes that are retried too: 3,5-7 (needs --retries)",
    )
    p.add_argument(
        "--on-end",
        default="",
        metavar="CMD",
        help="your TMS runs CMD (sh -c, in the job's directory) when the job has ended; "
        "TM_JOB_ID, TM_JOB_GROUP, TM_JOB_STATE, TM_JOB_EXIT_CODE, TM_JOB_SIGNAL and "
        "TM_JOB_RUN_TIME say how",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("-s", "--status", action="store_true", help="show the TMS and dispatcher status")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="say how the TMS is found or started"
    )
    p.add_argument(
        "--wait", action="store_true", help="wait for the job's end and exit with its code"
    )
    p.add_argument("--dispatcher", default=None, help="the dispatcher's dispatcher.json")
    p.add_argument(
        "--array",
        type=array_option,
        default=None,
        metavar="0-999[:STEP][%MAX]",
        help="submit the command once per index (also a list: 1,3,5-9), as one group; "
        "{idx} in the command and -o/-O/-l/-i becomes the index, and TM_ARRAY_INDEX is set; "
        "%%MAX: at most MAX of them pending or running at once",
    )
    p.add_argument("--json", action="store_true", help="print the ids made as JSON (docs/json.md)")
    p.add_argument("--parsable", action="store_true", help="print the ids made, one a line")
    completion.add_options(p)
    p.add_argument("--version", action="version", version=VERSION_LINE)
    add_control_options(p)
    p.add_argument("command", nargs=argparse.REMAINDER, help=COMMAND_HELP)
    return p


COMMAND_HELP = (
    "the command to run, by your shell (-S): %(prog)s [options] 'CMD ARG...' (several words "
    "are joined with spaces, so quote what the shell must see quoted), or "
    "%(prog)s [options] -- CMD ARG... (each argument kept as given: "
    "%(prog)s -- python3 -c 'print(1)' runs print(1))"
)


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed. ``hRunJob [options] -- CMD ARG...``: the command is the arguments
    after ``--``, each quoted for the shell (``shlex.join``), so that it runs with the
    arguments as given; otherwise the words of the command are joined with spaces, as the
    seed did (``hRunJob echo 'a  b'`` runs ``echo a  b``)."""
    p = build_parser()
    if "--" in argv:
        cut = argv.index("--")
        before = p.parse_args(argv[:cut])
        if not before.command:  # no command before `--`: the `--` form
            words = argv[cut + 1 :]
            if words:
                import shlex  # the `--` form alone quotes

                before.command = [shlex.join(words)]
            else:
                before.command = []
            return before
    return p.parse_args(argv)
