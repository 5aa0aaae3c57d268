"""On-end callbacks (``hRunJob --on-end CMD``, issue 11 point 7), run by the user's TMS.

When a job with an ``on_end`` has ended, the TMS runs its command as the user -- ``sh -c
CMD`` in the job's directory, with the TMS's environment plus ``TM_JOB_ID``,
``TM_JOB_GROUP``, ``TM_JOB_STATE``, ``TM_JOB_EXIT_CODE``, ``TM_JOB_SIGNAL``,
``TM_JOB_RUN_TIME`` (seconds) and ``TM_JOB_REASON`` (empty where there is no value), the way
pueue's callback works. A job of a group also gets ``TM_GROUP_ENDED``: ``1`` in the callback
of the job whose end ended its group (no job of it waiting, pending or running any more, as
the dispatcher has committed it), once per group and size, else ``0``; with it
``TM_GROUP_COUNTS`` (``finished=9 failed=1``), so one command can report on a whole sweep.

How the TMS hears of ends: the dispatcher pushes ``JobEnded`` once a job's end is committed
(tm/dispatcher/callbacks.py); each time the TMS's link comes up it asks for
``PendingCallbacks`` -- ended jobs whose callback has not run, e.g. because no TMS was running
when they ended: those callbacks run at the TMS's next start. No polling.

What runs is what the user gave, never what the dispatcher says: at submission this TMS
records each job's command and directory under ``~/.taskmanager/on-end/<uuid>`` (0600); the
dispatcher's message only says which job ended and how. A job without a record (its callback
ran already, or the dispatcher's copy was changed) is logged and not run. The record is
removed once the callback ran, then the dispatcher is told (``CallbackRan``), so a callback
runs once; if the TMS dies while one runs, it does not run again.

Never blocking anything else: at most :data:`MAX_RUNNING` callbacks at a time (the others
queue), each stopped (TERM, then KILL to its whole process group) after
:data:`CALLBACK_TIMEOUT` seconds; failures (an exit code, a signal, a command that cannot
start) are one line in the TMS's log, with the end of what it printed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from tm.link import user_dir
from tm.protocol import commands, jobends

#: Callbacks running at once; more wait their turn.
MAX_RUNNING = 4
#: Seconds a callback may run before it is stopped (TERM, then KILL after KILL_GRACE); the
#: TMS's environment may set another in $TM_ON_END_TIMEOUT.
CALLBACK_TIMEOUT = 300.0
TIMEOUT_VARIABLE = "TM_ON_END_TIMEOUT"
KILL_GRACE = 5.0
#: Output of a callback kept for the log line of its failure.
OUTPUT_KEPT = 2000
#: Job ids already taken (a push and a page of pending callbacks may name the same job).
SEEN_KEPT = 10_000
#: The states in which a job of a group keeps the group from having ended.
ACTIVE = frozenset({"waiting", "pending", "running", "lost"})


def records_dir() -> Path:
    return user_dir() / "on-end"


class _Output(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.done: Deferred = Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:  # noqa: N802 - Twisted's API
        self.output = (self.output + data)[-OUTPUT_KEPT:]

    def processEnded(self, reason: Any) -> None:  # noqa: N802 - Twisted's API
        self.done.callback(reason.value)


def environment(job: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
    """The callback's environment: ``base`` and what says how ``job`` ended."""

    def text(value: Any) -> str:
        return "" if value is None else str(value)

    run_time = job.get("run_time")
    return {
        **base,
        "TM_JOB_ID": text(job.get("id")),
        "TM_JOB_GROUP": text(job.get("group")),
        "TM_JOB_STATE": text(job.get("state")),
        "TM_JOB_EXIT_CODE": text(job.get("exit_code")),
        "TM_JOB_SIGNAL": text(job.get("signal")),
        "TM_JOB_RUN_TIME": "" if run_time is None else f"{float(run_time):.3f}",
        "TM_JOB_REASON": text(job.get("reason")),
    }


def configured_timeout() -> float:
    """$TM_ON_END_TIMEOUT if it is a positive number of seconds, else CALLBACK_TIMEOUT."""
    try:
        value = float(os.environ.get(TIMEOUT_VARIABLE, ""))
    except ValueError:
        return CALLBACK_TIMEOUT
    return value if 0 < value < 86_400 else CALLBACK_TIMEOUT


class Callbacks:
    """The TMS's callbacks: records made at submission, runs when jobs end."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        link: Any,
        directory: Path | None = None,
        timeout: float | None = None,
        max_running: int = MAX_RUNNING,
    ) -> None:
        self.reactor = reactor
        self.link = link
        self.directory = directory
        self.timeout = configured_timeout() if timeout is None else timeout
        self.max_running = max_running
        self.queue: deque[dict[str, Any]] = deque()
        self.running = 0
        self._seen: OrderedDict[int, None] = OrderedDict()
        #: (group, its number of jobs) whose end a callback was told of: told once, even when
        #: its last jobs end together.
        self._groups_told: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._setsid = shutil.which("setsid")

    def _dir(self) -> Path:
        return self.directory or records_dir()

    # --- at submission ------------------------------------------------------------------

    def record(self, rows: list[Any], cwd: str) -> None:
        """Keep the on-end command of each job of a submission that has one (before the
        submission leaves: the job may end before its answer comes back)."""
        wanted = [r for r in rows if isinstance(r, dict) and r.get("on_end") and r.get("uuid")]
        if not wanted:
            return
        base = self._dir()
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        for row in wanted:
            uuid = str(row["uuid"])
            if "/" in uuid or uuid.startswith("."):
                continue  # not a uuid hRunJob made; the dispatcher refuses it anyway
            data = json.dumps({"on_end": row["on_end"], "cwd": cwd}).encode()
            fd = os.open(base / uuid, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def _recorded(self, uuid: str) -> dict[str, Any] | None:
        if not uuid or "/" in uuid or uuid.startswith("."):
            return None
        try:
            data = json.loads((self._dir() / uuid).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _forget(self, uuid: str) -> None:
        try:
            (self._dir() / uuid).unlink()
        except OSError:
            pass

    # --- ends -------------------------------------------------------------------------------

    def job_ended(self, jobs: list[Any]) -> None:
        """Jobs told ended (pushed, or pending): queue their callbacks, each once."""
        for job in jobs:
            if not isinstance(job, dict) or not isinstance(job.get("id"), int):
                continue
            if job["id"] in self._seen:
                continue
            self._seen[job["id"]] = None
            if len(self._seen) > SEEN_KEPT:
                self._seen.popitem(last=False)
            self.queue.append(job)
        self._pump()

    async def catch_up(self) -> None:
        """Ask the dispatcher for the callbacks that have not run (at each link)."""
        after = 0
        while True:
            try:
                answer = await self.link.call(jobends.PendingCallbacks, after_id=after)
            except Exception as e:
                self.log.warn("could not ask for pending on-end callbacks: {e}", e=str(e))
                return
            self.job_ended(answer["jobs"])
            after = answer.get("next_after_id")
            if after is None:
                return

    def _pump(self) -> None:
        while self.queue and self.running < self.max_running:
            job = self.queue.popleft()
            self.running += 1
            d = ensureDeferred(self._run(job))
            d.addErrback(lambda f: self.log.failure("an on-end callback failed", f))
            d.addBoth(self._one_done)

    def _one_done(self, _: Any) -> None:
        self.running -= 1
        self._pump()

    async def _run(self, job: dict[str, Any]) -> None:
        job_id, uuid = job["id"], str(job.get("uuid", ""))
        record = self._recorded(uuid)
        if record is None or record.get("on_end") != job.get("on_end"):
            self.log.warn(
                "on-end callback of job {id} not run: this TMS has no record of it "
                "(it ran already, or the job was not submitted with it by you)",
                id=job_id,
            )
            await self._tell_ran(job_id)
            return
        command, cwd = str(record["on_end"]), str(record.get("cwd") or "/")
        env = environment(job, dict(os.environ))
        if job.get("group"):
            env.update(await self._group_end(str(job["group"])))
        proto = _Output()
        argv = ["/bin/sh", "-c", command]
        if self._setsid:
            argv = [self._setsid, *argv]  # its own process group: a timeout kills it whole
        try:
            process = self.reactor.spawnProcess(
                proto,
                argv[0],
                argv,
                env=env,
                path=cwd,
                childFDs={0: "w", 1: "r", 2: "r"},
            )
            process.closeStdin()
        except OSError as e:
            self.log.warn(
                "on-end callback of job {id} could not start: {e}", id=job_id, e=e.strerror
            )
            self._forget(uuid)
            await self._tell_ran(job_id)
            return
        term = self.reactor.callLater(self.timeout, self._stop, process, signal.SIGTERM)
        kill = self.reactor.callLater(
            self.timeout + KILL_GRACE, self._stop, process, signal.SIGKILL
        )
        ended = await proto.done
        timed_out = term.called
        for timer in (term, kill):
            if timer.active():
                timer.cancel()
        code = getattr(ended, "exitCode", None)
        sig = getattr(ended, "signal", None)
        self._forget(uuid)
        if code == 0:
            self.log.info("on-end callback of job {id} ran", id=job_id)
        else:
            how = f"signal {sig}" if code is None and sig else f"exit code {code}"
            if timed_out:
                how = f"stopped after {self.timeout:g} s"
            self.log.warn(
                "on-end callback of job {id} failed ({how}): {output}",
                id=job_id,
                how=how,
                output=proto.output.decode("utf-8", "replace").strip()[-500:] or "no output",
            )
        await self._tell_ran(job_id)

    async def _group_end(self, group: str) -> dict[str, str]:
        """``TM_GROUP_ENDED`` and ``TM_GROUP_COUNTS`` of ``group``, as the dispatcher has
        committed it (this job's end included: it is pushed once committed)."""
        try:
            answer = await self.link.call(commands.GroupSummary, group=group, scope="mine")
            counts = answer["groups"].get(group) or {}
        except Exception as e:
            self.log.info("could not ask how group {g} stands: {e}", g=group, e=str(e))
            return {"TM_GROUP_ENDED": "", "TM_GROUP_COUNTS": ""}
        ended = not any(counts.get(state) for state in ACTIVE)
        key = (group, sum(counts.values()))
        if ended and key in self._groups_told:
            ended = False  # another callback of this group was told already
        elif ended:
            self._groups_told[key] = None
            if len(self._groups_told) > SEEN_KEPT:
                self._groups_told.popitem(last=False)
        shown = " ".join(f"{state}={n}" for state, n in sorted(counts.items()) if n)
        return {"TM_GROUP_ENDED": "1" if ended else "0", "TM_GROUP_COUNTS": shown}

    def _stop(self, process: Any, sig: int) -> None:
        pid = process.pid
        if pid is None:
            return
        try:
            if self._setsid:
                os.killpg(pid, sig)
            else:
                process.signalProcess("TERM" if sig == signal.SIGTERM else "KILL")
        except Exception:
            pass  # it ended meanwhile

    async def _tell_ran(self, job_id: int) -> None:
        try:
            await self.link.call(jobends.CallbackRan, job_ids=[job_id])
        except Exception as e:
            # Asked again at the next link: its record is gone, so it does not run twice.
            self.log.info(
                "could not tell the dispatcher that job {id}'s callback ran: {e}",
                id=job_id,
                e=str(e),
            )
