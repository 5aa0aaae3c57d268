"""``hConnect``: send one text command to the user's TMS, or with ``-T`` to the dispatcher."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tm.cli.common import CLIError, connect_dispatcher_direct, connect_tms, run_main

PROG = "hConnect"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise CLIError(f"{message} (see {PROG} -h)", status=2)


async def main_async(reactor: Any, argv: list[str]) -> int:
    from tm import textcommands

    p = _Parser(prog=PROG, description="Send a text command to your TMS or (-T) the dispatcher.")
    p.add_argument("-T", "--connect_to_td", action="store_true", help="talk to the dispatcher")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--dispatcher", default=None, help="the dispatcher's dispatcher.json")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    line = " ".join(args.command).strip()
    target = "dispatcher" if args.connect_to_td else "tms"
    if not line:
        raise CLIError(f"no command given; try `{PROG}{' -T' if args.connect_to_td else ''} help`",
                       status=2)
    try:
        command = textcommands.parse(line, target)
    except textcommands.TextCommandError as e:
        raise CLIError(str(e), status=2) from None
    if command.name in ("help", "fullhelp"):
        print(textcommands.help_text(target))
        return 0
    if args.connect_to_td:
        proto = await connect_dispatcher_direct(reactor, args.dispatcher)
    else:
        proto = await connect_tms(reactor, args.dispatcher, args.verbose)

    async def call(cmd: Any, **kw: Any) -> Any:
        return await proto.call(cmd, **kw)

    print(await command.run(call))
    return 0


def main() -> None:
    argv = sys.argv[1:]
    run_main(PROG, lambda reactor: main_async(reactor, argv))
