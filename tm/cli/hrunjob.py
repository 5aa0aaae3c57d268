"""``hRunJob``: submit jobs to TaskManager through the user's TMS, or show its status."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from typing import Any

from tm.cli.common import CLIError, connect_tms, run_main
from tm.core.model import JobSpec, JobState
from tm.protocol import commands, records

PROG = "hRunJob"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one clear line, no traceback
        raise CLIError(f"{message} (see {PROG} -h)", status=2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Submit a job to TaskManager.")
    p.add_argument("-c", "--slots", type=int, default=1, help="slots (cores) on one host (default 1)")
    p.add_argument("-p", "--priority", type=int, default=0, help="0..127, higher first (default 0)")
    p.add_argument("-E", "--excludeHosts", default="", help="never run on these hosts: h1,h2")
    p.add_argument("-g", "--group", default="", help="group label")
    p.add_argument("-i", "--info-text", default="", help="free-text description")
    p.add_argument("-o", "--stdout_file", default="", help="file for the job's stdout")
    p.add_argument("-O", "--stderr_file", default="", help="file for the job's stderr")
    p.add_argument("-l", "--logfile", default="", help="log file written when the job ends")
    p.add_argument("-S", "--shell", default=None, help="shell that runs the command (default $SHELL)")
    p.add_argument("-t", "--estimatedTime", type=float, default=None, help="estimated run time")
    p.add_argument("-m", "--estimatedMemory", type=float, default=None, help="estimated memory (MB)")
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


def spec_from_args(args: argparse.Namespace, command: str) -> JobSpec:
    return JobSpec(
        uuid=str(uuid.uuid4()),
        command=command,
        shell=resolve_shell(args.shell),
        slots=args.slots,
        priority=args.priority,
        group=args.group,
        info=args.info_text,
        stdout=args.stdout_file,
        stderr=args.stderr_file,
        logfile=args.logfile,
        excluded_hosts=tuple(h.strip() for h in args.excludeHosts.split(",") if h.strip()),
        estimated_time=args.estimatedTime,
        estimated_memory=args.estimatedMemory,
    )


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


async def submit(proto: Any, specs: list[JobSpec]) -> list[int]:
    env = dict(os.environ)
    if len(json.dumps(env)) > records.MAX_VALUE_BYTES:
        raise CLIError(f"your environment is larger than {records.MAX_VALUE_BYTES} bytes; "
                       "unset large variables before submitting")
    ids: list[int] = []
    for rows in chunks(specs):
        answer = await proto.call(commands.SubmitJobs, cwd=os.getcwd(), umask=current_umask(),
                                  env=env, jobs=rows)
        ids.extend(answer["job_ids"])
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
    command = " ".join(args.command).strip()
    if not command:
        raise CLIError('no command given: hRunJob "COMMAND" (see hRunJob -h)', status=2)
    if args.slots < 1:
        raise CLIError(f"-c needs at least 1 slot, not {args.slots}", status=2)
    if not 0 <= args.priority <= 127:
        raise CLIError(f"-p must be between 0 and 127, not {args.priority}", status=2)
    spec = spec_from_args(args, command)
    proto = await connect_tms(reactor, args.dispatcher, args.verbose)
    ids = await submit(proto, [spec])
    if not args.quiet:
        print(f"Job [{ids[0]}] has been submitted to TaskDispatcher.")
    if args.wait:
        return await wait_for(proto, ids[0])
    return 0


def main() -> None:
    argv = sys.argv[1:]
    run_main(PROG, lambda reactor: main_async(reactor, argv))
