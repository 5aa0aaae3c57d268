"""``hRunJob``: submit jobs to TaskManager through the user's TMS, or show its status."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.task import deferLater

from tm.cli.common import CLIError, connect_tms, run_main
from tm.core.model import JobSpec, JobState
from tm.jobfile import JobFileError, compress_ids, parse_job_file
from tm.protocol import commands, records

PROG = "hRunJob"
#: The dispatcher's limits (tm/protocol/records.py); the client checks them before sending so
#: that a bad value gets one line saying what to change, not a refusal after a round trip.
MAX_SLOTS: int = getattr(records, "MAX_SLOTS", 100_000)
MAX_ESTIMATED_TIME: float = getattr(records, "MAX_ESTIMATED_TIME", 10 * 365 * 86_400.0)
MAX_ESTIMATED_MEMORY: float = getattr(records, "MAX_ESTIMATED_MEMORY", 1e12)


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low..high``, refused in one line otherwise."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a whole number from {low} to {high}, not {text!r}") from None
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
                f"must be a number from 0 to {high:.0f} {unit}, not {text!r}")
        return value

    return convert


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one clear line, no traceback
        raise CLIError(f"{message} (see {PROG} -h)", status=2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Submit a job to TaskManager.")
    p.add_argument("-c", "--slots", type=whole_number(1, MAX_SLOTS), default=1,
                   help="slots (cores) on one host (default 1)")
    p.add_argument("-p", "--priority", type=whole_number(0, 127), default=0,
                   help="0..127, higher first (default 0)")
    p.add_argument("-E", "--excludeHosts", default="", help="never run on these hosts: h1,h2")
    p.add_argument("-f", "--jobsFile", default=None,
                   help="submit one job per line of FILE (field::value tokens separated by tabs; "
                        "'-' reads standard input)")
    p.add_argument("-g", "--group", default="", help="group label")
    p.add_argument("-i", "--info-text", default="", help="free-text description")
    p.add_argument("-o", "--stdout_file", default="", help="file for the job's stdout")
    p.add_argument("-O", "--stderr_file", default="", help="file for the job's stderr")
    p.add_argument("-l", "--logfile", default="", help="log file written when the job ends")
    p.add_argument("-S", "--shell", default=None, help="shell that runs the command (default $SHELL)")
    p.add_argument("-t", "--estimatedTime", type=amount(MAX_ESTIMATED_TIME, "s"), default=None,
                   help="estimated run time (s)")
    p.add_argument("-m", "--estimatedMemory", type=amount(MAX_ESTIMATED_MEMORY, "MB"),
                   default=None, help="estimated memory (MB)")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    p.add_argument("-s", "--status", action="store_true", help="show the TMS and dispatcher status")
    p.add_argument("-v", "--verbose", action="store_true", help="say how the TMS is found or started")
    p.add_argument("--wait", action="store_true", help="wait for the job's end and exit with its code")
    p.add_argument("--dispatcher", default=None, help="the dispatcher's dispatcher.json")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the command to run")
    return p


def resolve_shell(name: str | None) -> str:
    name = name or os.environ.get("SHELL") or "/bin/sh"
    path = name if os.path.isabs(name) else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise CLIError(f"unknown shell {name!r}: give a shell installed here, e.g. -S bash", status=2)
    return path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _excluded(value: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in value.split(",") if h.strip())


def spec_from_options(options: dict[str, Any]) -> JobSpec:
    """A JobSpec from option values (the parsed command line, or one job-file line over it).

    Raises CLIError for values that no dispatcher would accept.
    """
    slots, priority = options["slots"], options["priority"]
    if not 1 <= slots <= MAX_SLOTS:
        raise CLIError(f"-c must be from 1 to {MAX_SLOTS} slots, not {slots}", status=2)
    if not 0 <= priority <= 127:
        raise CLIError(f"-p must be between 0 and 127, not {priority}", status=2)
    for option, key, high, unit in (("-t", "estimatedTime", MAX_ESTIMATED_TIME, "s"),
                                    ("-m", "estimatedMemory", MAX_ESTIMATED_MEMORY, "MB")):
        value = options[key]
        if value is not None and not (math.isfinite(value) and 0 <= value <= high):
            raise CLIError(f"{option} must be a number from 0 to {high:.0f} {unit}, not {value}",
                           status=2)
    spec = JobSpec(
        uuid=str(uuid.uuid4()),
        command=options["command"],
        shell=resolve_shell(options["shell"]),
        slots=slots,
        priority=priority,
        group=options["group"],
        info=options["info_text"],
        stdout=options["stdout_file"],
        stderr=options["stderr_file"],
        logfile=options["logfile"],
        excluded_hosts=_excluded(options["excludeHosts"]),
        estimated_time=options["estimatedTime"],
        estimated_memory=options["estimatedMemory"],
    )
    problem = records.spec_problem(spec)  # the dispatcher's own check, without a round trip
    if problem:
        raise CLIError(problem, status=2)
    return spec


def host_names(hosts: list[dict]) -> set[str]:
    """Every name a host of ListHosts may be given by: full and short."""
    return {h["name"] for h in hosts} | {h["short_name"] for h in hosts}


def check_against_cluster(spec: JobSpec, names: set[str]) -> None:
    """Refuse what the dispatcher would refuse, before anything is sent."""
    for host in spec.excluded_hosts:
        if host not in names:
            raise CLIError(f"unknown host {host!r} in -E; see hConnect lscluster", status=2)


def read_job_file(args: argparse.Namespace) -> list[tuple[int, JobSpec]]:
    """Every job of ``-f FILE`` as (line number, spec); any bad line refuses the whole file."""
    path = args.jobsFile
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise CLIError(f"cannot read the job file {path}: {e.strerror}", status=2) from None
    except UnicodeDecodeError as e:
        raise CLIError(f"the job file {path} is not UTF-8 text: {e.reason} at byte {e.start}",
                       status=2) from None
    defaults = vars(args) | {"command": " ".join(args.command).strip()}
    try:
        lines = parse_job_file(text, path, defaults)
    except JobFileError as e:
        raise CLIError(f"{e}; nothing was submitted", status=2) from None
    if not lines:
        raise CLIError(f"the job file {path} holds no job; nothing was submitted", status=2)
    out = []
    for line in lines:
        try:
            out.append((line.line_no, spec_from_options(line.options)))
        except CLIError as e:
            raise CLIError(f"{path}:{line.line_no}: {e}; nothing was submitted", status=2) from None
    return out


def chunks(specs: list[JobSpec]) -> list[list[dict]]:
    """Cut a submission into chunks that each fit in one AMP value."""
    out = []
    rest = specs
    while rest:
        rows, n = records.fit_to_value(records.JOB_SPEC_FIELDS, rest, records.spec_to_amp)
        if n == 0:
            raise CLIError("a job's description is too large to send (shorten the command)")
        out.append(rows)
        rest = rest[n:]
    return out


#: How long a submission is sent again while the link to the TMS drops before its answer.
SUBMIT_RETRY_SECONDS = 60.0
#: Failures of the link to the TMS that leave open whether the submission was stored.
LINK_FAILURES: tuple[type[Exception], ...] = (
    ConnectionClosed, ConnectError, defer.TimeoutError, TimeoutError, OSError,
)


def _link_failure(e: Exception) -> str:
    if isinstance(e, ConnectionClosed):
        return "the link to the TMS dropped before the answer came"
    if isinstance(e, defer.TimeoutError | TimeoutError):
        return "the TMS did not answer in time"
    return str(e) or e.__class__.__name__


class Submitter:
    """Sends submissions to the TMS; when the link drops before the answer, reconnects (a new
    TMS is started when needed) and sends the same jobs, with the same UUIDs, again: the
    store keeps UUIDs unique, so the user sees one success and one set of ids."""

    def __init__(self, reactor: Any, proto: Any, reconnect: Callable[[], Awaitable[Any]],
                 budget: float = SUBMIT_RETRY_SECONDS) -> None:
        self.reactor = reactor
        self.proto = proto
        self.reconnect = reconnect
        self.budget = budget

    async def send(self, **kw: Any) -> dict:
        deadline = self.reactor.seconds() + self.budget
        pause = 0.2
        while True:
            try:
                return await self.proto.call(commands.SubmitJobs, **kw)
            except LINK_FAILURES as e:
                reason = _link_failure(e)
            if self.proto.transport is not None:
                self.proto.transport.loseConnection()
            while True:
                if self.reactor.seconds() >= deadline:
                    raise CLIError(
                        f"the submission was not acknowledged within {self.budget:.0f} s "
                        f"({reason}); see `hConnect lswjobs` before submitting it again")
                await deferLater(self.reactor, pause, lambda: None)
                pause = min(2 * pause, 1.0)
                try:
                    self.proto = await self.reconnect()
                    break
                except LINK_FAILURES as e:
                    reason = _link_failure(e)
                except CLIError as e:
                    # No TMS for now (the old one may still be dying, holding its pid
                    # file): the submission is not lost, so keep trying while time is left.
                    if self.reactor.seconds() >= deadline:
                        raise CLIError(f"{e}; the submission was sent once but not "
                                       "acknowledged: see `hConnect lswjobs` before you "
                                       "submit it again") from None
                    reason = str(e)


async def submit(submitter: Submitter, specs: list[JobSpec]) -> list[int]:
    env = dict(os.environ)
    if len(json.dumps(env)) > records.MAX_VALUE_BYTES:
        raise CLIError(f"your environment is larger than {records.MAX_VALUE_BYTES} bytes; "
                       "unset large variables before submitting")
    ids: list[int] = []
    warned: list[str] = []
    for rows in chunks(specs):
        try:
            answer = await submitter.send(cwd=os.getcwd(), umask=current_umask(), env=env,
                                          jobs=rows)
        except Exception as e:
            if not ids:
                raise
            # Earlier chunks are stored: say exactly which, so nothing is submitted twice.
            raise CLIError(f"{e}; the first {len(ids)} job(s) [{compress_ids(ids)}] were "
                           f"submitted, the remaining {len(specs) - len(ids)} were not") from None
        ids.extend(answer["job_ids"])
        for warning in answer.get("warnings") or []:
            if warning not in warned:
                warned.append(warning)
                print(f"{PROG}: warning: {warning}", file=sys.stderr)
    return ids


async def wait_for(proto: Any, job_id: int) -> int:
    while True:
        answer = await proto.call(commands.WaitJob, reply_timeout=120, job_id=job_id, timeout=60.0)
        if JobState(answer["state"]).terminal:
            break
    if answer["signal"] is not None:
        return 128 + answer["signal"]
    if answer["exit_code"] is not None:
        return answer["exit_code"]
    return 0 if answer["state"] == JobState.FINISHED.value else 1


async def main_async(reactor: Any, argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.status:
        from tm.textcommands import format_server_info

        proto = await connect_tms(reactor, args.dispatcher, args.verbose)
        info = await proto.call(commands.ServerInfo)
        status = await proto.call(commands.GetStatus)
        print(format_server_info(info, status))
        return 0
    if args.jobsFile is not None:
        return await submit_job_file(reactor, args)
    command = " ".join(args.command).strip()
    if not command:
        raise CLIError('no command given: hRunJob "COMMAND" (see hRunJob -h)', status=2)
    spec = spec_from_options(vars(args) | {"command": command})
    submitter = await _submitter(reactor, args)
    ids = await submit(submitter, [spec])
    if not args.quiet:
        print(f"Job [{ids[0]}] has been submitted to TaskDispatcher.")
    if args.wait:
        return await wait_for(submitter.proto, ids[0])
    return 0


async def submit_job_file(reactor: Any, args: argparse.Namespace) -> int:
    jobs = read_job_file(args)
    submitter = await _submitter(reactor, args)
    names = host_names((await submitter.proto.call(commands.ListHosts))["hosts"])
    for line_no, spec in jobs:
        try:
            check_against_cluster(spec, names)
        except CLIError as e:
            raise CLIError(f"{args.jobsFile}:{line_no}: {e}; nothing was submitted",
                           status=2) from None
    ids = await submit(submitter, [spec for _, spec in jobs])
    if not args.quiet:
        print(f"{len(ids)} job(s) [{compress_ids(ids)}] have been submitted to TaskDispatcher.")
    if args.wait:
        code = 0
        for job_id in ids:
            end = await wait_for(submitter.proto, job_id)
            code = code or end
        return code
    return 0


async def _submitter(reactor: Any, args: argparse.Namespace) -> Submitter:
    def reconnect() -> Awaitable[Any]:
        return connect_tms(reactor, args.dispatcher, args.verbose)

    return Submitter(reactor, await reconnect(), reconnect)


def main() -> None:
    argv = sys.argv[1:]
    run_main(PROG, lambda reactor: main_async(reactor, argv))
