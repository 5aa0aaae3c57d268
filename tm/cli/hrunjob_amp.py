"""``hRunJob``'s Twisted path: the user's TMS over TLS (started first when none answers).

Used when the fast path of :mod:`tm.cli.hrunjob` (the TMS's Unix socket) cannot serve: no
TMS on this host yet, or the user's TMS runs on another host sharing the home directory.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.task import deferLater

from tm.cli.common import CLIError, command_named, connect_tms, run_main
from tm.cli.hrunjob import (
    PROG,
    Acknowledged,
    Prepared,
    check_job_file_hosts,
    current_umask,
    host_names,
    prepare,
    server_info_text,
    submission_environment,
    submitted_text,
    terminal_code,
)
from tm.core.plainspec import PlainSpec
from tm.protocol import commands, records


def chunks(specs: list[PlainSpec]) -> list[list[dict]]:
    """Cut a submission into chunks that each fit in one AMP value."""
    out = []
    rest = specs
    while rest:
        # PlainSpec.row: records.spec_to_amp's row of the same JobSpec (test_plainspec.py)
        rows, n = records.fit_to_value(records.JOB_SPEC_FIELDS, rest, PlainSpec.row)
        if n == 0:
            raise CLIError("a job's description is too large to send (shorten the command)")
        out.append(rows)
        rest = rest[n:]
    return out


#: How long a submission is sent again while the link to the TMS drops before its answer.
SUBMIT_RETRY_SECONDS = 60.0
#: Failures of the link to the TMS that leave open whether the submission was stored.
LINK_FAILURES: tuple[type[Exception], ...] = (
    ConnectionClosed,
    ConnectError,
    defer.TimeoutError,
    TimeoutError,
    OSError,
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

    def __init__(
        self,
        reactor: Any,
        proto: Any,
        reconnect: Callable[[], Awaitable[Any]],
        budget: float = SUBMIT_RETRY_SECONDS,
        lost: str = "",
    ) -> None:
        """``proto`` None with ``lost`` saying why: the fast path lost its TMS after it
        sent the jobs; connect (or start a TMS) as after a lost link."""
        self.reactor = reactor
        self.proto = proto
        self.reconnect = reconnect
        self.budget = budget
        self.lost = lost

    async def ready(self) -> Any:
        """The link to a TMS, made again (within the budget) when there is none."""
        if self.proto is None:
            await self._reconnect(self.reactor.seconds() + self.budget, self.lost)
        return self.proto

    async def send(self, **kw: Any) -> dict:
        deadline = self.reactor.seconds() + self.budget
        reason = self.lost
        while True:
            if self.proto is not None:
                try:
                    return await self.proto.call(commands.SubmitJobs, **kw)
                except LINK_FAILURES as e:
                    reason = _link_failure(e)
                if self.proto.transport is not None:
                    self.proto.transport.loseConnection()
                self.proto = None
            await self._reconnect(deadline, reason)

    async def _reconnect(self, deadline: float, reason: str) -> None:
        pause = 0.2
        while True:
            if self.reactor.seconds() >= deadline:
                raise CLIError(
                    f"the submission was not acknowledged within {self.budget:.0f} s "
                    f"({reason}); see `hConnect lswjobs` before submitting it again"
                )
            await deferLater(self.reactor, pause, lambda: None)
            pause = min(2 * pause, 1.0)
            try:
                self.proto = await self.reconnect()
                return
            except LINK_FAILURES as e:
                reason = _link_failure(e)
            except CLIError as e:
                # No TMS for now (the old one may still be dying, holding its pid
                # file): the submission is not lost, so keep trying while time is left.
                if self.reactor.seconds() >= deadline:
                    raise CLIError(
                        f"{e}; the submission was sent once but not "
                        "acknowledged: see `hConnect lswjobs` before you "
                        "submit it again"
                    ) from None
                reason = str(e)


async def submit(submitter: Submitter, specs: list[PlainSpec]) -> list[int]:
    env = submission_environment()
    done = Acknowledged(len(specs))
    for rows in chunks(specs):
        try:
            answer = await submitter.send(
                cwd=os.getcwd(), umask=current_umask(), env=env, jobs=rows
            )
        except Exception as e:
            raise done.failure(e) from None
        done.add(answer)
    return done.ids


async def wait_for(proto: Any, job_id: int) -> int:
    while True:  # each WaitJob answers at the job's end (pushed), or after 60 s without one
        answer = await proto.call(commands.WaitJob, reply_timeout=120, job_id=job_id, timeout=60.0)
        code = terminal_code(answer)
        if code is not None:
            return code


async def main_async(
    reactor: Any, argv: list[str], prepared: Prepared | None = None, lost: str = ""
) -> int:
    """``hRunJob argv`` over TLS; ``prepared`` (from the fast path, which could not send it)
    keeps the jobs and their UUIDs, so that what reached a TMS is not stored twice; ``lost``
    says why the fast path's TMS was lost after it had sent them (none: it sent nothing)."""
    args, jobs = prepared if prepared is not None else prepare(argv)
    if args.status:
        proto = await connect_tms(reactor, args.dispatcher, args.verbose)
        info = await proto.call(commands.ServerInfo)
        status = await proto.call(commands.GetStatus)
        print(server_info_text(args, info, status))
        return 0
    if args.jobsFile is not None:
        return await submit_job_file(reactor, args, jobs, lost)
    if args.array is not None:
        return await submit_array(reactor, args, jobs, lost)
    spec = jobs[0][1]
    submitter = await _submitter(reactor, args, lost)
    ids = await submit(submitter, [spec])
    _print_submitted(args, jobs, ids)
    if args.wait:
        return await wait_for(await submitter.ready(), ids[0])
    return 0


async def submit_job_file(
    reactor: Any, args: argparse.Namespace, jobs: list[tuple[int, PlainSpec]], lost: str = ""
) -> int:
    submitter = await _submitter(reactor, args, lost)
    names = host_names((await (await submitter.ready()).call(commands.ListHosts))["hosts"])
    check_job_file_hosts(args.jobsFile, jobs, names)
    ids = await submit(submitter, [spec for _, spec in jobs])
    _print_submitted(args, jobs, ids)
    if args.wait:
        return await wait_many(reactor, await submitter.ready(), ids)
    return 0


async def submit_array(
    reactor: Any, args: argparse.Namespace, jobs: list[tuple[int, PlainSpec]], lost: str = ""
) -> int:
    """``hRunJob --array``: its jobs in one submission, and one line naming them."""
    submitter = await _submitter(reactor, args, lost)
    ids = await submit(submitter, [spec for _, spec in jobs])
    _print_submitted(args, jobs, ids)
    code = 0
    for job_id in ids if args.wait else ():
        end = await wait_for(await submitter.ready(), job_id)
        code = code or end
    return code


def _print_submitted(
    args: argparse.Namespace, jobs: list[tuple[int, PlainSpec]], ids: list[int]
) -> None:
    text = submitted_text(args, jobs, ids)
    if text is not None:
        print(text)


async def wait_many(reactor: Any, proto: Any, ids: list[int]) -> int:
    """``-f FILE --wait`` over TLS: as on the fast path (hrunjob.wait_many_local)."""
    from tm.cli import jobwatch

    async def call(name: str, **kw: Any) -> Any:
        return await proto.call(command_named(name), reply_timeout=180.0, **kw)

    def interrupted() -> int:
        print(f"{PROG}: {jobwatch.KEEP_RUNNING}", file=sys.stderr)
        return 130

    sys.stdout.flush()
    ranges, _, _ = jobwatch.parse_selection(":".join(str(i) for i in ids))
    waiting = jobwatch.wait_jobs(
        call, ranges, None, False, sys.stdout, sys.stderr, sys.stdout.isatty(), prog=PROG
    )
    return await jobwatch.under_reactor(reactor, waiting, interrupted)


async def _submitter(reactor: Any, args: argparse.Namespace, lost: str = "") -> Submitter:
    def reconnect() -> Awaitable[Any]:
        return connect_tms(reactor, args.dispatcher, args.verbose)

    if lost:  # the jobs may have reached the lost TMS: retry as after a lost link
        return Submitter(reactor, None, reconnect, lost=lost)
    return Submitter(reactor, await reconnect(), reconnect)


def run(argv: list[str], prepared: Prepared | None = None, lost: str = "") -> None:
    """Run ``hRunJob argv`` over TLS under a reactor; exits with the command's status."""
    run_main(PROG, lambda reactor: main_async(reactor, argv, prepared, lost))
