"""``hConnect wait:…``, ``cat:ID`` and ``follow:ID``: waiting for jobs and reading their output.

Standard library only: they run on the CLI's fast path (the TMS's Unix socket) as well as over
AMP. Each is a coroutine over an injected ``call(command_name, **kw)`` (as the text commands
are, :mod:`tm.textcommands`), and writes to the streams it is given.

- ``wait``: ``WaitJobs`` answers when the counts of the jobs change (pushed by the dispatcher
  once a change is committed, not polled); on a terminal a progress bar is redrawn on one
  line, in a pipe one plain line is printed per change. The exit status is 0 when every job
  finished, else the first failing job's (by id): its exit code, 128 + its signal, or 1.
- ``cat``: the file where it can be read here (homes are shared); otherwise, for a job on
  another host whose file is outside the home (``-o /tmp/…``), through the user's executor
  on that host (``ReadOutput``, relayed by the TMS and the dispatcher).
- ``follow``: reads what was added to the file, then asks ``WaitJob`` with a short timeout:
  the answer comes at once when the job ends (pushed), else after the interval (0.2 s,
  growing to 1 s while nothing is written). At the end, the rest is printed.
"""

from __future__ import annotations

import _socket  # socket's gethostname, without socket's enums (the everyday path)
import io
import os
import time

from tm.cli.errors import CLIError
from tm.joboutput import output_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # hConnect wait and cat import neither typing nor collections
    from collections.abc import Awaitable, Callable
    from typing import IO, Any

    Call = Callable[..., Awaitable[dict[str, Any]]]

ACTIVE = ("waiting", "pending", "running", "lost")
NOT_STARTED = ("waiting", "pending", "lost")
#: How long one WaitJobs may wait for a change before it is asked again.
WAIT_TIMEOUT = 60.0
#: The interval of ``follow`` between two reads while the job runs: from the first to the
#: second while nothing is written.
FOLLOW_INTERVAL = (0.2, 1.0)
READ_CHUNK = 32 * 1024  # through the executor: one AMP value
LOCAL_CHUNK = 1 << 20
KEEP_RUNNING = "stopped waiting; the jobs keep running (see hConnect lsrjobs)"


# --- what to wait for -------------------------------------------------------------------


def parse_selection(text: str) -> tuple[list[list[int]], str | None, bool]:
    """``ID[:ID…]``, ``A-B`` (mixed freely) or ``group:G`` → (ranges, group, strict).

    ``strict``: only single ids were named, each must be a job of the user."""
    usage = "usage: wait:ID[:ID...], wait:A-B or wait:group:GROUP"
    if text.startswith("group:"):
        group = text[len("group:") :]
        if not group:
            raise CLIError(f"wait: no group named; {usage}", status=2)
        return [], group, False
    ranges: list[list[int]] = []
    strict = True
    for part in text.split(":"):
        first, dash, last = part.strip().partition("-")
        try:
            a = int(first)
            b = int(last) if dash else a
        except ValueError:
            raise CLIError(f"wait: {part!r} is not a job id or a range A-B; {usage}", 2) from None
        if a < 0 or b < a:
            raise CLIError(f"wait: {part!r} is not a range of job ids (A-B, A <= B)", 2)
        strict = strict and not dash
        ranges.append([a, b])
    ranges.sort()
    merged: list[list[int]] = []
    for a, b in ranges:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    if len(merged) > 500:
        raise CLIError("wait: more than 500 separate ids or ranges; give ranges A-B", status=2)
    return merged, None, strict


def ending_code(job: dict[str, Any]) -> int:
    """The exit status that stands for a job that did not finish."""
    if job.get("signal") is not None:
        return min(255, 128 + int(job["signal"]))
    code = job.get("exit_code")
    if code:
        return int(code) if 0 < int(code) < 256 else 1
    return 1


def ending_text(job: dict[str, Any]) -> str:
    if job.get("signal") is not None:
        how = f"signal {job['signal']}"
    elif job.get("exit_code") is not None:
        how = f"exit code {job['exit_code']}"
    else:
        how = job.get("reason") or "no exit code"
    return f"job {job['id']} {job['state']} ({how})"


# --- how the wait is shown ------------------------------------------------------------------


def tally(counts: dict[str, int]) -> tuple[int, int, int, int, int]:
    """(done, running, waiting, failed, total) of a WaitJobs answer's counts."""
    total = sum(counts.values())
    done = counts.get("finished", 0)
    running = counts.get("running", 0)
    waiting = sum(counts.get(s, 0) for s in ("waiting", "pending", "lost"))
    return done, running, waiting, total - done - running - waiting, total


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Progress:
    """The wait's display: a bar redrawn in place on a terminal, a line per change elsewhere."""

    WIDTH = 24

    def __init__(self, out: IO[str], terminal: bool, clock: Callable[[], float]) -> None:
        self.out = out
        self.terminal = terminal
        self.clock = clock
        self.started = clock()
        self.first_ended: int | None = None
        self.drawn = False

    def line(self, counts: dict[str, int]) -> str:
        done, running, waiting, failed, total = tally(counts)
        ended = done + failed
        if self.first_ended is None:
            self.first_ended = ended
        text = f"{done} done, {running} running, {waiting} waiting, {failed} failed of {total}"
        elapsed = self.clock() - self.started
        fresh = ended - self.first_ended
        if fresh > 0 and elapsed > 0:
            rate = fresh / elapsed
            text += f", {rate * 60:.1f} jobs/min" if rate < 1 else f", {rate:.1f} jobs/s"
            if ended < total:
                text += f", about {_duration((total - ended) / rate)} left"
        if not self.terminal:
            return text
        filled = self.WIDTH * ended // total if total else self.WIDTH
        return "[" + "#" * filled + "." * (self.WIDTH - filled) + "] " + text

    def show(self, counts: dict[str, int]) -> None:
        text = self.line(counts)
        if self.terminal:
            self.out.write("\r" + text + "\x1b[K")
            self.drawn = True
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False


async def wait_jobs(
    call: Call,
    ranges: list[list[int]],
    group: str | None,
    strict: bool,
    out: IO[str],
    err: IO[str],
    terminal: bool,
    clock: Callable[[], float] = time.monotonic,
    prog: str = "hConnect",
    as_json: bool = False,
) -> int:
    """Wait until every job named has ended; the exit status (see the module's docstring).
    ``as_json``: no progress, and at the end one document (docs/json.md, ``wait``)."""
    progress = Progress(io.StringIO() if as_json else out, terminal and not as_json, clock)
    known: dict[str, int] = {}
    try:
        while True:
            answer = await call(
                "WaitJobs",
                ranges=ranges,
                group=group,
                known=known,
                timeout=WAIT_TIMEOUT,
                strict=strict,
            )
            counts = answer["counts"]
            if counts != known:
                progress.show(counts)
            known = counts
            if not any(counts.get(s) for s in ACTIVE):
                break
    finally:
        progress.close()
    done, _, _, failed_count, total = tally(known)
    failed = sorted(answer["failed"], key=lambda j: j["id"])
    if as_json:
        import json

        code = ending_code(failed[0]) if failed_count else 0
        keys = ("id", "state", "exit_code", "signal", "reason")
        out.write(
            json.dumps(
                {
                    "schema": 1,
                    "command": "wait",
                    "total": total,
                    "counts": known,
                    "failed_count": failed_count,
                    "failed": [{k: j.get(k) for k in keys} for j in failed],
                    "exit_status": code,
                },
                separators=(",", ":"),
            )
            + "\n"
        )
        return code
    if not failed_count:
        out.write(f"all {total} job(s) finished\n" if total != 1 else "the job finished\n")
        return 0
    first = failed[0]
    others = ", ".join(str(j["id"]) for j in failed[1:])
    more = f"; also {others}" if others else ""
    if failed_count > len(failed):
        more += f" and {failed_count - len(failed)} more"
    err.write(f"{prog}: {failed_count} of {total} job(s) did not finish: {ending_text(first)}")
    err.write(more + "\n")
    return ending_code(first)


# --- output by job id -----------------------------------------------------------------------


def parse_output(text: str, name: str) -> tuple[int, str]:
    """``ID`` or ``ID:err`` (``ID:out`` too) → (job id, stream)."""
    first, _, stream = text.partition(":")
    try:
        job_id = int(first)
    except ValueError:
        raise CLIError(f"{name}: {first!r} is not a job id; usage: {name}:ID[:err]", 2) from None
    stream = stream or "out"
    if stream not in ("out", "err") or job_id < 0:
        raise CLIError(f"{name}: say {name}:{first} or {name}:{first}:err", 2)
    return job_id, stream


def _this_host(name: str) -> bool:
    here = _socket.gethostname()
    return name == here or name.split(".")[0] == here.split(".")[0]


def readable_here(job: dict[str, Any], path: str) -> bool:
    """Whether ``path`` of ``job`` is the file as its host sees it: the job runs here, or the
    file is in the home directory (shared by every host)."""
    host = job.get("host") or ""
    if not host or _this_host(host):
        return True
    home = os.path.expanduser("~").rstrip("/")
    return path.startswith(home + "/")


class OutputReader:
    """Reads a job's output from ``offset`` on: the file here, or through its executor."""

    def __init__(self, call: Call, job: dict[str, Any], stream: str, verbose: IO[str] | None):
        self.call = call
        self.job_id = int(job["id"])
        self.stream = stream
        self.path = output_path(job, stream)
        self.local = readable_here(job, self.path)
        self.offset = 0
        self.missing = False
        self._file: IO[bytes] | None = None
        if verbose is not None:
            how = "here" if self.local else f"through your executor on {job.get('host')}"
            verbose.write(f"hConnect: reading {self.path} {how}\n")

    async def read(self, sink: IO[bytes]) -> int:
        """Copy what was added since the last read to ``sink``; how many bytes."""
        total = 0
        while True:
            data = await self._chunk()
            if not data:
                return total
            sink.write(data)
            self.offset += len(data)
            total += len(data)

    async def _chunk(self) -> bytes:
        if self.local:
            try:
                if self._file is None:
                    self._file = open(self.path, "rb")  # noqa: SIM115 - kept while following
                    self._file.seek(self.offset)
                data = self._file.read(LOCAL_CHUNK)
            except FileNotFoundError:
                self.missing = True
                return b""
            except IsADirectoryError:
                raise CLIError(f"{self.path} (job {self.job_id}'s output) is a directory") from None
            except PermissionError:
                raise CLIError(f"cannot read {self.path}: permission denied") from None
            self.missing = False
            return data
        answer = await self.call(
            "ReadOutput",
            job_id=self.job_id,
            stream=self.stream,
            offset=self.offset,
            length=READ_CHUNK,
        )
        self.missing = bool(answer["missing"])
        import base64  # cat and follow through the TMS alone

        return base64.b64decode(answer["data"])


async def cat_output(
    call: Call, job_id: int, stream: str, sink: IO[bytes], verbose: IO[str] | None = None
) -> int:
    """Print the job's stdout (or stderr) as it is now."""
    job = (await call("GetJob", job_id=job_id))["job"][0]
    if job["state"] in NOT_STARTED:
        raise CLIError(f"job {job_id} has not started yet: no output so far")
    reader = OutputReader(call, job, stream, verbose)
    await reader.read(sink)
    sink.flush()
    if reader.missing and reader.offset == 0:
        return _missing(job, reader)
    return 0


def _missing(job: dict[str, Any], reader: OutputReader) -> int:
    state = job["state"]
    if reader.stream == "err" and state not in ACTIVE:
        return 0  # an empty stderr file is removed at the job's end: it wrote nothing there
    raise CLIError(f"job {reader.job_id}'s output file {reader.path} does not exist")


async def follow_output(
    call: Call,
    job_id: int,
    stream: str,
    sink: IO[bytes],
    verbose: IO[str] | None = None,
) -> int:
    """Print the job's output as it is written, until the job ends; then the rest."""
    job = (await call("GetJob", job_id=job_id))["job"][0]
    interval = FOLLOW_INTERVAL[0]
    reader: OutputReader | None = None
    while True:
        if reader is None and job.get("host") and job["state"] not in NOT_STARTED:
            reader = OutputReader(call, job, stream, verbose)
        grew = await reader.read(sink) if reader is not None else 0
        sink.flush()
        if job["state"] not in ACTIVE:
            break
        # Answered at the job's end (pushed by the dispatcher), else after ``interval``.
        interval = FOLLOW_INTERVAL[0] if grew else min(FOLLOW_INTERVAL[1], interval * 1.5)
        end = await call("WaitJob", job_id=job_id, timeout=interval)
        if end["state"] not in ACTIVE or reader is None:
            # Ended (the rest is read next), or perhaps placed since (its host known now).
            job = (await call("GetJob", job_id=job_id))["job"][0]
    if reader is not None:
        await reader.read(sink)
        sink.flush()
    return 0


async def under_reactor(reactor: Any, coroutine: Any, on_interrupt: Callable[[], int]) -> int:
    """Run one of these coroutines on the Twisted path (a TMS reached over TLS): Ctrl-C
    cancels it and ``on_interrupt()`` gives the status (the reactor's own handler would stop
    the reactor with status 0, the wait's outcome unsaid)."""
    import signal

    from twisted.internet.defer import CancelledError, ensureDeferred

    running = ensureDeferred(coroutine)
    previous = signal.signal(signal.SIGINT, lambda *_: reactor.callFromThread(running.cancel))
    try:
        return int(await running)
    except CancelledError:
        return on_interrupt()
    finally:
        signal.signal(signal.SIGINT, previous)
