"""``hConnect``: send one text command to the user's TMS, or with ``-T`` to the dispatcher.

To the TMS of this host it goes over the TMS's Unix socket, without Twisted; with ``-T``,
or when no TMS runs on this host (one is started, or the user's TMS on another host sharing
the home is reached over TLS), through :mod:`tm.cli.common`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tm import VERSION_LINE, localsocket, textcommands, textjson
from tm.cli import completion
from tm.cli.errors import CLIError, blocking_call, leave, report, run_now
from tm.cli.helpformat import HelpFormatter

PROG = "hConnect"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise CLIError(f"{message} (see {PROG} -h)", status=2)


def build_parser() -> argparse.ArgumentParser:
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
        args = build_parser().parse_args(argv)
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
        print(run_now(textjson.answer(command, no_call, args.json)))
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
        return await textjson.answer(command, call, as_json)
    except textcommands.TextCommandError as e:
        raise CLIError(str(e)) from None


async def no_call(name: str, **kw: Any) -> Any:  # pragma: no cover - help asks nothing
    raise AssertionError(name)


def main_fast(argv: list[str]) -> int:
    parsed = build_parser().parse_args(argv)
    early = completion.early(PROG, parsed)
    if early is not None:  # --completion SHELL, --complete-ids
        return early
    args, command = prepare(argv, parsed)
    if command.name in ("help", "fullhelp"):
        print(run_now(textjson.answer(command, no_call, args.json)))
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
