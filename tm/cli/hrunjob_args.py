"""``hRunJob``'s everyday command lines, read without argparse; its limits and names.

argparse (with ``re``, ``enum``, ``gettext`` and ``typing``, and a parser of forty options
built for each run) is most of what ``hRunJob -q CMD`` spends before it talks to its TMS.
:func:`parse` reads the everyday forms itself: the options given as whole words
(``-q``, ``--wait``, ``-c 2``, ``--group NAME`` ...), then the command (``CMD ARG...``, or
``-- CMD ARG...``). Anything else (``--help``, ``-c2``, ``--group=x``, an abbreviation, an
unknown option, a value that argparse would refuse or read otherwise, the rare options)
returns None, and the caller parses with argparse (:mod:`tm.cli.hrunjob_options`): its
help, errors and exit statuses are argparse's, byte for byte. Where :func:`parse` answers,
its answer is argparse's (tests/unit/test_cli_parse.py compares them).

Imports neither argparse nor ``typing`` at run time.
"""

from __future__ import annotations

# The dispatcher's limits: the client checks them before sending, so that a bad value gets one
# line saying what to change, not a refusal after a round trip.
from tm.protocol.limits import MAX_ESTIMATED_MEMORY, MAX_ESTIMATED_TIME, MAX_SLOTS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from argparse import Namespace as _Base
else:
    _Base = object

PROG = "hRunJob"

#: The estimates a job may carry: option, long option, field, largest value, unit, help.
ESTIMATES = (
    ("-t", "--estimatedTime", "estimated_time", MAX_ESTIMATED_TIME, "s", "estimated run time (s)"),
    (
        "-m",
        "--estimatedMemory",
        "estimated_memory",
        MAX_ESTIMATED_MEMORY,
        "MB",
        "estimated memory (MB)",
    ),
)

#: Every destination of the parser's options with its default, in the parser's order
#: (tests/unit/test_cli_parse.py checks both against argparse's).
DEFAULTS = {
    "slots": 1,
    "priority": 0,
    "excluded_hosts": "",
    "jobsFile": None,
    "group": "",
    "info": "",
    "stdout": "",
    "stderr": "",
    "logfile": "",
    "shell": None,
    "estimated_time": None,
    "estimated_memory": None,
    "time_limit": None,
    "retries": None,
    "retry_on_exit": "",
    "on_end": "",
    "quiet": False,
    "status": False,
    "verbose": False,
    "wait": False,
    "dispatcher": None,
    "array": None,
    "json": False,
    "parsable": False,
    "completion": None,
    "after": "",
    "after_any": "",
    "after_group": "",
    "hold": "",
    "command": [],
}

#: The options read here that take no value: option word -> (destination, value).
FLAGS = {
    "-q": ("quiet", True),
    "--quiet": ("quiet", True),
    "-s": ("status", True),
    "--status": ("status", True),
    "-v": ("verbose", True),
    "--verbose": ("verbose", True),
    "--wait": ("wait", True),
    "--json": ("json", True),
    "--parsable": ("parsable", True),
    "--hold": ("hold", "user"),
}
#: The options read here that take a value (the next word): option word -> destination.
#: The rare ones (--time-limit, --retries, --array, --completion) are left to argparse.
VALUED = {
    "-c": "slots",
    "--slots": "slots",
    "-p": "priority",
    "--priority": "priority",
    "-E": "excluded_hosts",
    "--excludeHosts": "excluded_hosts",
    "-f": "jobsFile",
    "--jobsFile": "jobsFile",
    "-g": "group",
    "--group": "group",
    "-i": "info",
    "--info-text": "info",
    "-o": "stdout",
    "--stdout_file": "stdout",
    "-O": "stderr",
    "--stderr_file": "stderr",
    "-l": "logfile",
    "--logfile": "logfile",
    "-S": "shell",
    "--shell": "shell",
    "-t": "estimated_time",
    "--estimatedTime": "estimated_time",
    "-m": "estimated_memory",
    "--estimatedMemory": "estimated_memory",
    "--dispatcher": "dispatcher",
    "--after": "after",
    "--after-any": "after_any",
    "--after-group": "after_group",
    "--retry-on-exit": "retry_on_exit",
    "--on-end": "on_end",
}
#: The characters shlex.quote leaves unquoted (its ``[^\w@%+=:,./-]``, ASCII).
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-")


class Options(_Base):
    """The parsed command line, as argparse's Namespace has it (attributes, ``vars``)."""

    def __init__(self, **values: object) -> None:
        self.__dict__.update(values)

    def __repr__(self) -> str:
        return "Options(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"


class _Argparse(Exception):
    """This command line is argparse's to read."""


def _converted(name: str, text: str) -> object:
    """The option's value as argparse's type makes it (tm/cli/hrunjob_options.py); _Argparse
    where argparse would refuse it (its error line is argparse's)."""
    if name == "slots" or name == "priority":
        low, top = (1, MAX_SLOTS) if name == "slots" else (0, 127)
        try:
            number = int(text)
        except ValueError:
            raise _Argparse from None
        if not low <= number <= top:
            raise _Argparse
        return number
    if name == "estimated_time" or name == "estimated_memory":
        high = MAX_ESTIMATED_TIME if name == "estimated_time" else MAX_ESTIMATED_MEMORY
        try:
            value = float(text)
        except ValueError:
            raise _Argparse from None
        if value != value or not 0 <= value <= high:  # NaN, or out of range (inf too)
            raise _Argparse
        return value
    return text


def quote(word: str) -> str:
    """``shlex.quote(word)``, without ``shlex`` (which imports ``re``)."""
    if not word:
        return "''"
    if all(c in _SAFE for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def parse(argv: list[str]) -> Options | None:
    """``argv`` parsed as ``parse_command_line`` parses it, or None: argparse's to read."""
    try:
        return _parse(argv)
    except _Argparse:
        return None


def _parse(argv: list[str]) -> Options:
    values = dict(DEFAULTS)
    at = 0
    while at < len(argv):
        word = argv[at]
        if word == "--":  # the `--` form: each word kept as given
            rest = argv[at + 1 :]
            values["command"] = [" ".join(quote(w) for w in rest)] if rest else []
            return Options(**values)
        if not word.startswith("-"):  # the command: every word from here on
            rest = argv[at:]
            if "--" in rest:  # argparse's REMAINDER with a `--` in it: left to argparse
                raise _Argparse
            values["command"] = rest
            return Options(**values)
        flag = FLAGS.get(word)
        if flag is not None:
            values[flag[0]] = flag[1]
            at += 1
            continue
        name = VALUED.get(word)
        if name is None or at + 1 >= len(argv) or argv[at + 1].startswith("-"):
            raise _Argparse  # unknown, abbreviated, joined (-c2, --x=y), help, or no value
        values[name] = _converted(name, argv[at + 1])
        at += 2
    return Options(**values)
