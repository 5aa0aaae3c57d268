"""Every AMP command of TaskManager, sent raw to the dispatcher by whoever runs this module,
each aimed at another user's job and name: what a curious user learns (issue 10 point 4).

Run as the curious user (``python -m tests.helpers.peek DISPATCHER_JSON JOB_ID USER HOST``);
prints one JSON object: command name -> the answer or error box, values decoded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.protocols import amp

from tests.helpers.rawamp import Closed, RawClient
from tm.protocol import commands

#: Values for arguments by name; the others by type (see value_for).
BY_NAME: dict[str, Any] = {
    "scope": "all",
    "states": [],
    "after_id": 0,
    "limit": 50,
    "timeout": 0.5,
    "text": None,
    "order": None,
    "group": None,
    "regex": None,
    "resume": False,
    "all": False,
    "active": False,
    "enabled": False,
    "protocol_version": commands.PROTOCOL_VERSION,
    "role": commands.ROLE_CLIENT,
    "running": [],
}


def every_command() -> list[type[amp.Command]]:
    found = [
        c
        for c in vars(commands).values()
        if isinstance(c, type) and issubclass(c, amp.Command) and getattr(c, "commandName", None)
    ]
    return sorted({c.commandName: c for c in found}.values(), key=lambda c: c.commandName)


def value_for(name: str, arg: amp.Argument, job_id: int, user: str, host: str) -> Any:
    if name in ("job_id",):
        return job_id
    if name == "job_ids":
        return [job_id]
    if name == "user":
        return user
    if name == "host":
        return host
    if name == "action":
        return "rmjobs"
    if name in BY_NAME:
        return BY_NAME[name]
    if isinstance(arg, amp.Integer):
        return 1
    if isinstance(arg, amp.Float):
        return 1.0
    if isinstance(arg, amp.Boolean):
        return False
    if isinstance(arg, amp.Unicode):
        return "x"
    if isinstance(arg, amp.ListOf | amp.AmpList):
        return []
    return []  # JSON


def request(command: type[amp.Command], job_id: int, user: str, host: str) -> dict[bytes, bytes]:
    values = {}
    for key, arg in command.arguments:
        name = key.decode()
        value = value_for(name, arg, job_id, user, host)
        if value is None and getattr(arg, "optional", False):
            continue
        values[name] = value
    try:
        return dict(command.makeArguments(values, None))
    except Exception:
        return {}  # arguments this helper cannot build: the bare command, refused anyway


def main() -> None:
    info, job_id, user, host = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    client = RawClient(info)
    client.authenticate()
    answers: dict[str, Any] = {}
    for command in every_command():
        name = command.commandName.decode()
        try:
            box = client.ask(command.commandName, request(command, job_id, user, host))
        except (Closed, OSError) as e:  # a command that ends the connection: a fresh one
            answers[name] = {"closed": str(e)}
            client = RawClient(info)
            client.authenticate()
            continue
        answers[name] = {
            k.decode(): v.decode("utf-8", "replace") for k, v in box.items() if k != b"_answer"
        }
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
