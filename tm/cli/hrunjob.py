"""``hRunJob``: submit jobs to TaskManager through the user's TMS, or show its status.

The everyday path imports neither Twisted nor TLS: when the user's TMS runs on this host,
the jobs go over its Unix socket (:mod:`tm.localsocket`). Otherwise (no TMS yet: one is
started; a TMS on another host sharing the home: TLS) :mod:`tm.cli.hrunjob_amp` takes over,
with the same jobs and UUIDs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from tm import localsocket, trace
from tm.cli import completion
from tm.cli.errors import CLIError, leave, report
from tm.cli.hrunjob_array import array_jobs
from tm.cli.hrunjob_options import (  # noqa: F401  (re-exported)
    ESTIMATES,
    MAX_ESTIMATED_MEMORY,
    MAX_ESTIMATED_TIME,
    MAX_SLOTS,
    PROG,
    Prepared,
    amount,
    build_parser,
    parse_command_line,
    whole_number,
)
from tm.cli.hrunjob_output import (  # noqa: F401  (re-exported)
    check_output_options,
    server_info_text,
    submitted_text,
)
from tm.core.plainspec import GIVEN, PlainSpec
from tm.jobfile import JobFileError, compress_ids, parse_job_file
from tm.protocol import limits as records  # the limits alone: no Twisted

# The jobs are PlainSpecs (tm/core/plainspec.py), not the model's JobSpecs: the everyday
# submission imports neither the model nor dataclasses; dependencies, retries, time limits
# and arrays import their modules when given.


def new_uuid() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` makes it: without the
    uuid module, whose import (it imports ``platform``) costs a command's start 2 ms."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def resolve_shell(name: str | None) -> str:
    name = name or os.environ.get("SHELL") or "/bin/sh"
    if os.path.isabs(name):
        path: str | None = name
    else:
        import shutil  # a shell given by name alone (-S bash)

        path = shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise CLIError(
            f"unknown shell {name!r}: give a shell installed here, e.g. -S bash", status=2
        )
    return path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _excluded(value: str) -> tuple[str, ...]:
    return tuple(h.strip() for h in value.split(",") if h.strip())


def spec_from_options(options: dict[str, Any], shells: dict[Any, str] | None = None) -> PlainSpec:
    """A job's spec from option values (the parsed command line, or one job-file line over it),
    keyed by the job's field names.

    Raises CLIError for values that no dispatcher would accept. ``shells``: the shells
    resolved already (a job file's lines mostly name the same one).
    """
    slots, priority = options["slots"], options["priority"]
    if not 1 <= slots <= MAX_SLOTS:
        raise CLIError(f"-c must be from 1 to {MAX_SLOTS} slots, not {slots}", status=2)
    if not 0 <= priority <= 127:
        raise CLIError(f"-p must be between 0 and 127, not {priority}", status=2)
    for option, _, name, high, unit, _ in ESTIMATES:
        value = options[name]
        if value is not None and not (math.isfinite(value) and 0 <= value <= high):
            raise CLIError(
                f"{option} must be a number from 0 to {high:.0f} {unit}, not {value}", status=2
            )
    values = {name: options[name] for name in GIVEN}
    values["shell"] = resolve_shell(options["shell"]) if shells is None else _shell(options, shells)
    values["excluded_hosts"] = _excluded(options["excluded_hosts"])
    if values["retry_on_exit"]:  # "" stays ""
        from tm.core.retry import normalize_exit_codes

        try:
            values["retry_on_exit"] = normalize_exit_codes(values["retry_on_exit"])
        except ValueError as e:
            raise CLIError(str(e), status=2) from None
    spec = PlainSpec(uuid=new_uuid(), **values)
    problem = records.spec_problem(spec)  # the dispatcher's own check, without a round trip
    if spec.after or spec.after_any:  # "" names no job
        from tm.core.dependencies import DependencyError, parse_ids

        try:
            for text, what in ((spec.after, "--after"), (spec.after_any, "--after-any")):
                parse_ids(text, what)
        except DependencyError as e:
            raise CLIError(str(e), status=2) from None
    if problem:
        raise CLIError(problem, status=2)
    return spec


def _shell(options: dict[str, Any], shells: dict[Any, str]) -> str:
    name = options["shell"]
    path = shells.get(name)
    if path is None:
        path = shells[name] = resolve_shell(name)
    return path


def host_names(hosts: list[dict]) -> set[str]:
    """Every name a host of ListHosts may be given by: full and short."""
    return {h["name"] for h in hosts} | {h["short_name"] for h in hosts}


def check_against_cluster(spec: PlainSpec, names: set[str]) -> None:
    """Refuse what the dispatcher would refuse, before anything is sent."""
    for host in spec.excluded_hosts:
        if host not in names:
            raise CLIError(f"unknown host {host!r} in -E; see hConnect lscluster", status=2)


def read_job_file(args: argparse.Namespace) -> list[tuple[int, PlainSpec]]:
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
        raise CLIError(
            f"the job file {path} is not UTF-8 text: {e.reason} at byte {e.start}", status=2
        ) from None
    defaults = vars(args) | {"command": " ".join(args.command).strip()}
    try:
        lines = parse_job_file(text, path, defaults)
    except JobFileError as e:
        raise CLIError(f"{e}; nothing was submitted", status=2) from None
    if not lines:
        raise CLIError(f"the job file {path} holds no job; nothing was submitted", status=2)
    out = []
    shells: dict[Any, str] = {}
    for line in lines:
        try:
            out.append((line.line_no, spec_from_options(line.options, shells)))
        except CLIError as e:
            raise CLIError(f"{path}:{line.line_no}: {e}; nothing was submitted", status=2) from None
    return out


def prepare(argv: list[str]) -> Prepared:
    """Parse ``argv`` and build its jobs (UUIDs made here, once); CLIError when wrong."""
    args = parse_command_line(argv)
    check_output_options(args)
    if args.status or args.completion:
        return args, []
    if args.jobsFile is not None and args.array is None:
        return args, read_job_file(args)
    command = " ".join(args.command).strip()
    if not command:
        raise CLIError('no command given: hRunJob "COMMAND" (see hRunJob -h)', status=2)
    if args.array is not None:
        return args, array_jobs(args, command, new_uuid, spec_from_options)
    return args, [(0, spec_from_options(vars(args) | {"command": command}))]


TERMINAL_STATES = ("finished", "failed", "killed", "lost", "timeout", "cancelled")


def terminal_code(answer: dict[str, Any]) -> int | None:
    """The exit status for a WaitJob answer, or None while the job has not ended."""
    if answer["state"] not in TERMINAL_STATES:
        return None
    if answer.get("signal") is not None:
        return 128 + int(answer["signal"])
    if answer.get("exit_code") is not None:
        return int(answer["exit_code"])
    return 0 if answer["state"] == "finished" else 1


spec_to_json = PlainSpec.row  # the row of SubmitJobs, as the AMP path builds it


#: Jobs per request over the socket (the TMS cuts each into chunks of one AMP value).
LOCAL_BATCH_JOBS = 2_000
#: How long one request over the socket may wait for its answer: longer than the TMS's
#: own retry budget for a submission (60 s), so the TMS's answer comes first.
LOCAL_REPLY_TIMEOUT = 120.0


class HandOver(Exception):
    """The fast path cannot finish: the Twisted path takes over with the same jobs."""


def local_client(verbose: bool) -> localsocket.LocalClient | None:
    """A connection to this host's TMS over its Unix socket, or None when there is none."""
    try:
        client = localsocket.LocalClient.connect()
    except localsocket.Unavailable as e:
        if verbose:
            print(f"{PROG}: {e}; trying TLS", file=sys.stderr)
        return None
    if verbose:
        print(f"{PROG}: using the TMS on {localsocket.socket_path()}", file=sys.stderr)
    return client


def submission_environment() -> dict[str, str]:
    """The environment the jobs get (this one); CLIError when it is too large to send."""
    env = dict(os.environ)
    if len(json.dumps(env)) > records.MAX_VALUE_BYTES:
        raise CLIError(
            f"your environment is larger than {records.MAX_VALUE_BYTES} bytes; "
            "unset large variables before submitting"
        )
    return env


def submit_local(client: localsocket.LocalClient, specs: list[PlainSpec]) -> list[int]:
    """Submit ``specs`` over the socket; their ids. HandOver when the link is lost before
    every part was acknowledged (the TLS path sends them again, with the same UUIDs)."""
    env = submission_environment()
    cwd, umask = os.getcwd(), current_umask()
    done = Acknowledged(len(specs))
    for start in range(0, len(specs), LOCAL_BATCH_JOBS):
        rows = [spec_to_json(s) for s in specs[start : start + LOCAL_BATCH_JOBS]]
        trace.point("cli", "submit-sent", f"u:{rows[0]['uuid']}")
        try:
            answer = client.call(
                "SubmitJobs",
                reply_timeout=LOCAL_REPLY_TIMEOUT,
                cwd=cwd,
                umask=umask,
                env=env,
                jobs=rows,
            )
        except localsocket.LinkLost as e:
            raise HandOver(str(e)) from None
        except localsocket.RemoteError as e:
            raise done.failure(e) from None
        done.add(answer)
        if done.ids:
            trace.point("cli", "submit-answered", done.ids[-1])
    return done.ids


def partly_submitted(error: Exception, ids: list[int], total: int) -> CLIError:
    """A chunk failed after earlier ones were stored: say exactly which, so that nothing is
    submitted twice."""
    return CLIError(
        f"{error}; the first {len(ids)} job(s) [{compress_ids(ids)}] were "
        f"submitted, the remaining {total - len(ids)} were not"
    )


class Acknowledged:
    """The ids and warnings of the parts of a submission acknowledged so far."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.ids: list[int] = []
        self.warned: list[str] = []

    def add(self, answer: dict) -> None:
        self.ids.extend(answer["job_ids"])
        warn_once(answer, self.warned)

    def failure(self, error: Exception) -> Exception:
        """What to raise when a part failed: ``error`` itself while nothing was stored, else
        which jobs were submitted and which were not."""
        return partly_submitted(error, self.ids, self.total) if self.ids else error


def warn_once(answer: dict, warned: list[str]) -> None:
    """Print the warnings of a submission's answer that were not printed yet."""
    for warning in answer.get("warnings") or []:
        if warning not in warned:
            warned.append(warning)
            print(f"{PROG}: warning: {warning}", file=sys.stderr)


def check_job_file_hosts(path: str, jobs: list[tuple[int, PlainSpec]], names: set[str]) -> None:
    """Refuse a job file naming a host the cluster does not know, with its line."""
    for line_no, spec in jobs:
        try:
            check_against_cluster(spec, names)
        except CLIError as e:
            raise CLIError(f"{path}:{line_no}: {e}; nothing was submitted", status=2) from None


def wait_local(client: localsocket.LocalClient, job_id: int) -> int:
    """Wait for the job's end: the TMS answers WaitJob when the dispatcher tells it the job
    ended (pushed, no polling here); after 60 s without an end, ask again."""
    while True:
        trace.point("cli", "wait-sent", job_id)
        try:
            answer = client.call("WaitJob", reply_timeout=None, job_id=job_id, timeout=60.0)
        except localsocket.LinkLost as e:
            raise CLIError(
                f"{e} while waiting for job {job_id}; it keeps running: see "
                f"`hConnect lajob:{job_id}`"
            ) from None
        code = terminal_code(answer)
        if code is not None:
            trace.point("cli", "wait-answered", job_id)
            return code


def wait_many_local(client: localsocket.LocalClient, ids: list[int]) -> int:
    """``-f FILE --wait``: wait for every job, with hConnect wait's display (a progress bar on
    a terminal) and exit status (tm/cli/jobwatch.py)."""
    from tm.cli import jobwatch
    from tm.cli.errors import blocking_call, run_now

    ranges, _, _ = jobwatch.parse_selection(":".join(str(i) for i in ids))
    call = blocking_call(lambda name, **kw: client.call(name, reply_timeout=None, **kw))
    waiting = jobwatch.wait_jobs(
        call, ranges, None, False, sys.stdout, sys.stderr, sys.stdout.isatty(), prog=PROG
    )
    try:
        return run_now(waiting)
    except KeyboardInterrupt:
        print(f"{PROG}: {jobwatch.KEEP_RUNNING}", file=sys.stderr)
        return 130
    except localsocket.LinkLost as e:
        raise CLIError(f"{e} while waiting; the jobs keep running: see hConnect lsrjobs") from None


def run_local(
    client: localsocket.LocalClient, args: argparse.Namespace, jobs: list[tuple[int, PlainSpec]]
) -> int:
    if args.status:
        try:
            info = client.call("ServerInfo")
            status = client.call("GetStatus")
        except localsocket.LinkLost as e:
            raise HandOver(str(e)) from None
        print(server_info_text(args, info, status))
        return 0
    if args.jobsFile is not None and any(spec.excluded_hosts for _, spec in jobs):
        try:
            names = host_names(client.call("ListHosts")["hosts"])
        except localsocket.LinkLost as e:
            raise HandOver(str(e)) from None
        check_job_file_hosts(args.jobsFile, jobs, names)
    ids = submit_local(client, [spec for _, spec in jobs])
    text = submitted_text(args, jobs, ids)
    if text is not None:
        print(text)
    if args.wait and len(ids) > 1:
        sys.stdout.flush()
        return wait_many_local(client, ids)
    if args.wait:
        sys.stdout.flush()
        code = 0
        for job_id in ids:
            end = wait_local(client, job_id)
            code = code or end
        return code
    return 0


def main_fast(argv: list[str]) -> int:
    """``hRunJob argv`` over this host's TMS socket; the Twisted path when that cannot serve."""
    trace.point("cli", "main")
    args, jobs = prepare(argv)
    if args.completion:
        return completion.early(PROG, args) or 0
    trace.point("cli", "prepared")
    client = local_client(args.verbose)
    trace.point("cli", "connected")
    lost = ""
    if client is not None:
        try:
            return run_local(client, args, jobs)
        except HandOver as e:
            lost = str(e)
            if args.verbose:
                print(f"{PROG}: {e}; going on over TLS", file=sys.stderr)
        finally:
            client.close()
    from tm.cli import hrunjob_amp

    hrunjob_amp.run(argv, (args, jobs), lost)
    return 0


def main() -> None:
    status = report(PROG, lambda: main_fast(sys.argv[1:]))
    trace.point("cli", "exit")
    leave(status)


def __getattr__(name: str) -> Any:
    """The Twisted path's names, for the code that imported them from here."""
    if name in (
        "Submitter",
        "submit",
        "wait_for",
        "main_async",
        "submit_job_file",
        "chunks",
        "SUBMIT_RETRY_SECONDS",
        "LINK_FAILURES",
    ):
        from tm.cli import hrunjob_amp

        return getattr(hrunjob_amp, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
