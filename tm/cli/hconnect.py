"""``hConnect``: send one text command to the user's TMS, or with ``-T`` to the dispatcher.

To the TMS of this host it goes over the TMS's Unix socket, without Twisted; with ``-T``,
or when no TMS runs on this host (one is started, or the user's TMS on another host sharing
the home is reached over TLS), through :mod:`tm.cli.common`.
"""

from __future__ import annotations

import sys

from tm import localsocket, textcommands
from tm.cli.errors import CLIError, blocking_call, leave, report, run_now
from tm.cli.hrunjob_args import Options

TYPE_CHECKING = False
if TYPE_CHECKING:  # the everyday commands import neither argparse nor typing
    import argparse
    from typing import Any

PROG = "hConnect"

#: The options read without argparse (:func:`parse_everyday`): option word -> (destination,
#: whether it takes the next word as its value).
EVERYDAY_OPTIONS = {
    "-T": ("connect_to_td", False),
    "--connect_to_td": ("connect_to_td", False),
    "-v": ("verbose", False),
    "--verbose": ("verbose", False),
    "--json": ("json", False),
    "--dispatcher": ("dispatcher", True),
}
#: The parser's destinations and defaults, in its order (tests/unit/test_cli_parse.py).
DEFAULTS: dict[str, object] = {
    "connect_to_td": False,
    "verbose": False,
    "dispatcher": None,
    "completion": None,
    "complete_ids": False,
    "json": False,
    "command": [],
}


def parse_everyday(argv: list[str]) -> Options | None:
    """``argv`` as argparse's parser reads it, for the everyday forms (options as whole words,
    then the command); None for anything else (help, errors, the rare options), which is
    argparse's to read, as tm/cli/hrunjob_args.py does for hRunJob."""
    values: dict[str, object] = dict(DEFAULTS)
    at = 0
    while at < len(argv):
        word = argv[at]
        if not word.startswith("-"):
            rest = argv[at:]
            if "--" in rest:
                return None
            values["command"] = rest
            break
        option = EVERYDAY_OPTIONS.get(word)
        if option is None:
            return None
        name, valued = option
        if not valued:
            values[name] = True
            at += 1
            continue
        if at + 1 >= len(argv) or argv[at + 1].startswith("-"):
            return None
        values[name] = argv[at + 1]
        at += 2
    return Options(**values)


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    everyday = parse_everyday(argv)
    return everyday if everyday is not None else build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from tm import VERSION_LINE
    from tm.cli import completion
    from tm.cli.helpformat import HelpFormatter

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:
            raise CLIError(f"{message} (see {PROG} -h)", status=2)

    p = _Parser(
        prog=PROG,
        description="Send a text command to your TMS or (-T) the dispatcher.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("-T", "--connect_to_td", action="store_true", help="talk to the dispatcher")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--dispatcher", default=None, help="the dispatcher's dispatcher.json")
    completion.add_options(p, job_ids=True)
    p.add_argument(
        "--json", action="store_true", help="answer with one JSON document (docs/json.md)"
    )
    p.add_argument("--version", action="version", version=VERSION_LINE)
    p.add_argument("command", nargs=argparse.REMAINDER)
    return p


def prepare(
    argv: list[str], args: argparse.Namespace | None = None
) -> tuple[argparse.Namespace, textcommands.TextCommand]:
    """``argv``'s options and its command; ``args``: ``argv`` parsed already."""
    if args is None:
        args = parse_command_line(argv)
    line = " ".join(args.command).strip()
    target = "dispatcher" if args.connect_to_td else "tms"
    if not line:
        raise CLIError(
            f"no command given; try `{PROG}{' -T' if args.connect_to_td else ''} help`", status=2
        )
    try:
        return args, textcommands.parse(line, target)
    except textcommands.TextCommandError as e:
        raise CLIError(str(e), status=2) from None


#: Commands hConnect runs itself (tm/cli/jobwatch.py): they stream, with an exit status.
WATCHING = ("wait", "cat", "follow")


def watching(
    command: textcommands.TextCommand, call: Any, verbose: bool, as_json: bool = False
) -> Any:
    """The coroutine of a command of WATCHING (its argument checked first: CLIError)."""
    from tm.cli import jobwatch

    text = command.args[0]
    if command.name == "wait":
        ranges, group, strict = jobwatch.parse_selection(text)
        return jobwatch.wait_jobs(
            call,
            ranges,
            group,
            strict,
            sys.stdout,
            sys.stderr,
            sys.stdout.isatty(),
            as_json=as_json,
        )
    if as_json:
        raise CLIError(
            f"--json does not apply to {command.name}: it prints the job's own output", status=2
        )
    job_id, stream = jobwatch.parse_output(text, command.name)
    run = jobwatch.cat_output if command.name == "cat" else jobwatch.follow_output
    return run(call, job_id, stream, sys.stdout.buffer, sys.stderr if verbose else None)


def interrupted(command: textcommands.TextCommand) -> int:
    """Ctrl-C: one line, no traceback; the jobs are not touched."""
    from tm.cli import jobwatch

    if command.name == "wait":
        print(f"{PROG}: {jobwatch.KEEP_RUNNING}", file=sys.stderr)
    elif command.name == "follow":
        print(f"{PROG}: stopped following; the job keeps running", file=sys.stderr)
    return 130


async def main_async(reactor: Any, argv: list[str]) -> int:
    """The Twisted path: the dispatcher (``-T``) or the user's TMS over TLS."""
    from tm.cli.common import command_named, connect_dispatcher_direct, connect_tms

    args, command = prepare(argv)
    if command.name in ("help", "fullhelp"):
        print(run_now(answer(command, no_call, args.json)))
        return 0
    if args.connect_to_td:
        proto = await connect_dispatcher_direct(reactor, args.dispatcher)
    else:
        proto = await connect_tms(reactor, args.dispatcher, args.verbose)

    async def call(name: str, **kw: Any) -> Any:
        if name == "WaitJobs":
            kw["reply_timeout"] = 180.0
        return await proto.call(command_named(name), **kw)

    if command.name in WATCHING:
        from tm.cli.jobwatch import under_reactor

        coroutine = watching(command, call, args.verbose, args.json)
        return await under_reactor(reactor, coroutine, lambda: interrupted(command))
    print(await answer(command, call, args.json))
    return 0


async def answer(command: textcommands.TextCommand, call: Any, as_json: bool) -> str:
    """The answer's text (or JSON document); a command that names nothing known: CLIError."""
    try:
        if not as_json:
            return await command.run(call)
        from tm import textjson  # --json alone

        return await textjson.answer(command, call, as_json)
    except textcommands.TextCommandError as e:
        raise CLIError(str(e)) from None


async def no_call(name: str, **kw: Any) -> Any:  # pragma: no cover - help asks nothing
    raise AssertionError(name)


def main_fast(argv: list[str]) -> int:
    parsed = parse_command_line(argv)
    if parsed.completion or parsed.complete_ids:  # --completion SHELL, --complete-ids
        from tm.cli import completion

        return completion.early(PROG, parsed) or 0
    args, command = prepare(argv, parsed)
    if command.name in ("help", "fullhelp"):
        print(run_now(answer(command, no_call, args.json)))
        return 0
    if not args.connect_to_td:
        try:
            client = localsocket.LocalClient.connect()
        except localsocket.Unavailable as e:
            if args.verbose:
                print(f"{PROG}: {e}; trying TLS", file=sys.stderr)
        else:
            if args.verbose:
                print(f"{PROG}: using the TMS on {localsocket.socket_path()}", file=sys.stderr)
            try:
                call = blocking_call(
                    lambda name, **kw: client.call(
                        name, reply_timeout=None if name == "WaitJobs" else 120.0, **kw
                    )
                )
                if command.name in WATCHING:
                    coroutine = watching(command, call, args.verbose, args.json)
                    try:
                        return int(run_now(coroutine))
                    except KeyboardInterrupt:
                        return interrupted(command)
                print(run_now(answer(command, call, args.json)))
                return 0
            finally:
                client.close()
    from tm.cli.common import run_main

    run_main(PROG, lambda reactor: main_async(reactor, argv))
    return 0


def main() -> None:
    leave(report(PROG, lambda: main_fast(sys.argv[1:])))
