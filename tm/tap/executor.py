"""``twistd tmmenial``: a user's executor (TMMS) on one host, started by the user's TMS."""

from __future__ import annotations

import os
import socket
import sys

from twisted.application import service
from twisted.python import usage

from tm import jobsign
from tm.link import DispatcherNotFound, find_dispatcher, user_dir
from tm.logs import with_bounded_log
from tm.tap.versionopt import VersionOption


class Options(VersionOption, usage.Options):
    synopsis = "[options]"
    longdesc = "Runs a user's TaskManager executor (TMMS); it connects out to the dispatcher."
    optFlags = [
        [
            "token-from-stdin",
            None,
            "Read the one-time start token from the first line of stdin (the TMS writes it "
            "there): the dispatcher admits an executor only with it (issue 10 point 5).",
        ],
    ]
    optParameters = [
        ["dispatcher", None, None, "The dispatcher's dispatcher.json."],
        [
            "dispatcher-account",
            None,
            None,
            "The account that runs the dispatcher, trusted to own dispatcher.json "
            "(default $TM_DISPATCHER_ACCOUNT).",
        ],
        ["host", None, None, "This host's name in the cluster configuration (default: hostname)."],
        [
            "idle-timeout",
            None,
            float(os.environ.get("TM_EXECUTOR_IDLE_TIMEOUT") or 300.0),
            "Exit after this many seconds without a job (default $TM_EXECUTOR_IDLE_TIMEOUT or 300).",
            float,
        ],
        ["log-dir", None, None, "Default directory for job output (default ~/.taskmanager/logs)."],
        [
            "job-max-age",
            None,
            float(os.environ.get(jobsign.MAX_AGE_VARIABLE) or jobsign.DEFAULT_MAX_AGE_DAYS),
            "Refuse a job signed more than this many days ago (default "
            f"${jobsign.MAX_AGE_VARIABLE} or {jobsign.DEFAULT_MAX_AGE_DAYS:g}).",
            float,
        ],
    ]


def makeService(options: Options) -> service.Service:  # noqa: N802
    from twisted.internet import reactor

    from tm.executor.service import Executor

    try:
        info = find_dispatcher(options["dispatcher"], options["dispatcher-account"])
    except DispatcherNotFound as e:
        raise usage.UsageError(str(e)) from None
    executor = Executor(
        reactor,
        info,
        host=options["host"] or socket.gethostname(),
        idle_timeout=options["idle-timeout"],
        log_dir=options["log-dir"] or str(user_dir() / "logs"),
        job_max_age_days=options["job-max-age"],
    )
    if options["token-from-stdin"]:
        # Read before twistd daemonizes (and closes stdin); never on the command line,
        # where every user of the host could read it.
        executor.link.credential = sys.stdin.readline().strip() or None
    return with_bounded_log(executor, options)
