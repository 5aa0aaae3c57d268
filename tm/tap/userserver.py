"""``twistd tmserver``: the user's TMS (started by hRunJob/hConnect when needed)."""

from __future__ import annotations

from twisted.application import service
from twisted.python import usage

from tm.link import DispatcherNotFound, find_dispatcher
from tm.logs import with_bounded_log
from tm.tap.versionopt import VersionOption


class Options(VersionOption, usage.Options):
    synopsis = "[options]"
    longdesc = "Runs a user's TaskManager server (TMS). Clients start it on demand."
    optParameters = [
        [
            "dispatcher",
            None,
            None,
            "The dispatcher's dispatcher.json (default: $TM_DISPATCHER, "
            "~/.taskmanager/dispatcher.json, /etc/taskmanager/dispatcher.json).",
        ],
        [
            "interface",
            None,
            "",
            "Address to listen on (default: loopback, and the address the dispatcher is reached from).",
        ],
    ]


def makeService(options: Options) -> service.Service:  # noqa: N802
    from twisted.internet import reactor

    from tm.userserver.service import UserServer

    try:
        info = find_dispatcher(options["dispatcher"])
    except DispatcherNotFound as e:
        raise usage.UsageError(str(e)) from None
    return with_bounded_log(UserServer(reactor, info, interface=options["interface"]), options)
