"""The dispatcher: the queue, the slot accounting, and where each job runs.

State lives in the database; this service keeps the working set (waiting,
pending and running jobs, hosts, sessions) in memory and writes every change as
a compare-and-set through the group-commit writer.  A scheduling pass runs when
something changed, coalesced into one pass per reactor turn; a placement is
committed (``pending``) before the start order goes out.

The parts: :mod:`tm.dispatcher.core` (state, transitions, the pass),
:mod:`tm.dispatcher.links` (sessions, executors), :mod:`tm.dispatcher.jobcontrol` (ends,
kill, repairs); this module adds start-up, configuration reload and the requests the
responders (:mod:`tm.dispatcher.session`) call. See docs/dispatcher.md.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import signal
import socket
from typing import Any

from twisted.application import service
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from tm import config, trace
from tm.core import scheduler
from tm.core.model import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    Job,
    JobEnvironment,
    JobSpec,
    JobState,
    Transition,
)
from tm.db.errors import StoreError
from tm.dispatcher import challenges
from tm.dispatcher.atonce import PlaceAtOnce
from tm.dispatcher.audit import AuditLog
from tm.dispatcher.core import (  # noqa: F401 - the names tests and the tap import from here
    EXECUTOR_BACKOFF,
    EXECUTOR_START_TIMEOUT,
    MAX_EXECUTOR_BACKOFF,
    MAX_START_RETRY_DELAY,
    MAX_START_TRIES,
    RESYNC_DELAY,
    START_RETRY_DELAY,
    USAGE_SAVE_INTERVAL,
    USAGE_SETTING,
    DispatcherCore,
    Killing,
    NotWritten,
    Settings,
)
from tm.dispatcher.dependencies import JobDependencies
from tm.dispatcher.jobcontrol import JobControl
from tm.dispatcher.links import ExecutorLinks
from tm.dispatcher.ports import DispatcherStore
from tm.dispatcher.tickets import ExecutorTickets
from tm.loginlimit import LoginLimiter
from tm.protocol import commands, records


class Dispatcher(
    PlaceAtOnce, ExecutorLinks, JobControl, JobDependencies, DispatcherCore, service.Service
):
    log = Logger()

    def __init__(self, reactor: Any, settings: Settings, store: DispatcherStore) -> None:
        super().__init__(reactor, settings, store)
        #: Failed logins per address and claimed user (the sessions consult and feed it).
        self.logins = LoginLimiter(reactor)
        #: Challenges handed out and not checked yet (their files are removed when unused).
        self.challenges = challenges.ChallengeBook()
        #: One line per admin action; the tap moves it next to the dispatcher's log file.
        self.audit = AuditLog(settings.var_dir / "audit.log", reactor)
        #: What an executor shows when it logs in again (see tm.dispatcher.tickets).
        self.tickets = ExecutorTickets(settings.var_dir / "executor-tickets.key")

    # --- start-up -----------------------------------------------------------------

    async def start(self) -> None:
        await self.store.upgrade()
        self.tickets.load()
        self.started_at = self.reactor.seconds()
        await self.store.sync_users(list(self.users.values()))
        for name, enabled in (await self.store.load_users()).items():
            if name in self.users:
                self.users[name].enabled = enabled
        saved = await self.store.load_hosts()
        for name, (active, retired) in saved.items():
            if name in self.hosts:
                self.hosts[name].active = active
                if retired:  # back in the configuration
                    await self.store.save_host(name, active, False)
        self.cluster_active = await self.store.get_setting("cluster_active") != "0"
        await self.take_in_loaded(await self.store.load_active_jobs())
        # Placements whose start order may not have gone out: back to waiting. (Had it gone
        # out, the executor's heartbeat shows the copy and it is killed: see heartbeat().)
        for job in list(self.jobs.in_state(JobState.PENDING)):
            self._transition(job, JobState.WAITING, "dispatcher restarted before the job started")
        # Running jobs wait for their executors to come back, for one lease at most.
        for job in list(self.jobs.in_state(JobState.RUNNING)):
            if job.host:
                self.executor_table.gone(job.user, job.host)
        saved_usage = await self.store.get_setting(USAGE_SETTING)
        if saved_usage:
            try:
                self.ledger.restore(json.loads(saved_usage))
            except (ValueError, TypeError, AttributeError) as e:
                self.log.warn(
                    "recorded fair-share usage unreadable, starting from zero: {e}", e=str(e)
                )
        self.usage_saver = LoopingCall(self._save_usage_in_background)
        self.usage_saver.clock = self.reactor
        self.usage_saver.start(USAGE_SAVE_INTERVAL, now=False)
        self.lease_check = LoopingCall(self._check_leases)
        self.lease_check.clock = self.reactor
        self.lease_check.start(max(0.5, self.settings.executor_lease / 4), now=False)
        self.challenge_sweep = LoopingCall(self._sweep_challenges)
        self.challenge_sweep.clock = self.reactor
        self.challenge_sweep.start(challenges.SWEEP_INTERVAL, now=True)
        self.request_pass()

        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._sighup)

    def stopService(self) -> Any:  # noqa: N802
        super().stopService()
        for timer in (
            getattr(self, "lease_check", None),
            getattr(self, "usage_saver", None),
            getattr(self, "challenge_sweep", None),
        ):
            if timer is not None and timer.running:
                timer.stop()
        self.executor_table.stop()
        self.audit.stop()

    def _sweep_challenges(self) -> None:
        """Remove what is left in the challenge directory (see tm.dispatcher.challenges)."""
        if self.fs_pool is None:
            return
        from twisted.internet.threads import deferToThreadPool

        d = deferToThreadPool(
            self.reactor,
            self.fs_pool,
            challenges.sweep,
            self.settings.var_dir / "challenge",
            frozenset(self.challenges.live),
        )

        def swept(n: int) -> None:
            if n:
                self.log.info("removed {n} unused challenge file(s)", n=n)

        d.addCallbacks(
            swept, lambda f: self.log.warn("challenge sweep failed: {e}", e=f.getErrorMessage())
        )

    async def save_usage(self) -> None:
        """Store the recorded fair-share usage, so that a restart does not forget it."""
        await self.store.set_setting(USAGE_SETTING, json.dumps(self.ledger.snapshot()))

    def _save_usage_in_background(self) -> None:
        d = ensureDeferred(self.save_usage())
        d.addErrback(
            lambda f: self.log.warn("fair-share usage not saved: {e}", e=f.getErrorMessage())
        )

    # --- configuration reload -----------------------------------------------------------

    def _sighup(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._reload_from_signal)

    def _reload_from_signal(self) -> None:
        d = ensureDeferred(self.reload_config())

        def done(summary: str) -> None:
            self.log.info("SIGHUP: {summary}", summary=summary)
            self.audit.record(getpass.getuser(), "signal", None, "reload", "SIGHUP")

        def failed(f: Any) -> None:
            self.log.error("SIGHUP: {e}", e=f.getErrorMessage())
            self.audit.record(
                getpass.getuser(),
                "signal",
                None,
                "reload",
                "SIGHUP",
                "failed: " + f.getErrorMessage(),
            )

        d.addCallbacks(done, failed)

    async def reload_config(self) -> str:
        """Re-read the cluster and users files; add, update and retire hosts and users.

        A host that left the file is retired: it gets no new jobs, its running jobs finish.
        A host's ``active`` column only sets the state of a host new to the dispatcher;
        activatehost/deactivatehost decide for known ones. Raises ConfigError (nothing changes)
        when a file is malformed.
        """
        s = self.settings
        try:
            hosts = config.load_cluster(
                s.config_dir, s.cluster_config, socket.gethostname(), os.cpu_count() or 1
            )
            users = config.load_users(s.config_dir, getpass.getuser())
        except OSError as e:
            raise config.ConfigError(
                e.filename or str(s.config_dir), 0, f"cannot be read: {e.strerror}"
            ) from None
        added, updated, retired, restored = [], [], [], []
        new_names = {h.name for h in hosts}
        for h in hosts:
            old = self.hosts.get(h.name)
            if old is None:
                self.hosts[h.name] = h
                added.append(h.name)
                await self.store.save_host(h.name, h.active, False)
                continue
            h.active = old.active
            if old.retired:
                restored.append(h.name)
                await self.store.save_host(h.name, h.active, False)
            elif h != old:
                updated.append(h.name)
            self.hosts[h.name] = h
        for name, old in list(self.hosts.items()):
            if name not in new_names and not old.retired:
                old.retired = True
                retired.append(name)
                await self.store.save_host(name, old.active, True)
        # Retired hosts with nothing left on them are forgotten (they stay retired in the store).
        busy = self.jobs.hosts_in_use()
        for name, h in list(self.hosts.items()):
            if h.retired and name not in busy:
                del self.hosts[name]
        user_names = {u.name for u in users}
        old_users = self.users
        self.users = {}
        for u in users:
            previous = old_users.get(u.name)
            if previous is not None:
                u.enabled = previous.enabled
            self.users[u.name] = u
        await self.store.sync_users(users)
        removed_users = sorted(set(old_users) - user_names)
        new_users = sorted(user_names - set(old_users))
        self.request_pass()
        parts = [f"{len(self.hosts)} host(s), {len(self.users)} user(s)"]
        for label, names in (
            ("added", added),
            ("updated", updated),
            ("retired", retired),
            ("back", restored),
            ("new users", new_users),
            ("removed users", removed_users),
        ):
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        summary = "configuration reloaded: " + "; ".join(parts)
        self.log.info(summary)
        return summary

    # --- requests (what the responders call) --------------------------------------------------

    async def submit(
        self, user: str, environment: JobEnvironment, specs: list[JobSpec]
    ) -> tuple[list[int], list[str]]:
        """Check and store a submission, take its jobs into the queue; their ids (in the order
        of ``specs``) and warnings. Raises InvalidRequest/UnknownHost (nothing stored) or
        DatabaseUnavailable."""
        largest = max((h.max_slots for h in self.hosts.values() if not h.retired), default=0)
        warnings: list[str] = []
        by_short = {h.short_name: h.name for h in self.hosts.values() if h.short_name}
        for index, spec in enumerate(specs):
            problem = records.spec_problem(spec, MIN_PRIORITY, MAX_PRIORITY)
            if problem:
                where = f"job {index + 1} of {len(specs)}: " if len(specs) > 1 else ""
                raise commands.InvalidRequest(f"{where}{problem}; nothing was submitted")
            if spec.slots > largest:
                warning = (
                    f"a job needs {spec.slots} slots but the largest host has {largest}: "
                    "it waits until a host that large is configured"
                )
                if warning not in warnings:
                    warnings.append(warning)
            # Hosts are named by their full name from here on; -E accepts short names too.
            excluded: list[str] = []
            for host in spec.excluded_hosts:
                full = host if host in self.hosts else by_short.get(host)
                if full is None:
                    raise commands.UnknownHost(
                        f"unknown host {host!r} in the excluded hosts; see lscluster"
                    )
                if full not in excluded:
                    excluded.append(full)
            if tuple(excluded) != spec.excluded_hosts:
                specs[index] = dataclasses.replace(spec, excluded_hosts=tuple(excluded))
        checked = await self.check_dependencies(user, specs)
        now = self.reactor.seconds()
        # Jobs that can start now are placed in the same transaction (tm/dispatcher/atonce.py).
        claims = self.claim_at_once(user, specs)
        waits = len(claims) < len(specs)
        self.waiting_in_flight += waits
        placed: list[Transition] = []
        try:
            if claims:
                hosts = {uuid: host for uuid, (host, _) in claims.items()}
                ids, created, placed = await self.store.insert_and_place(
                    user, environment, specs, now, hosts
                )
            else:
                ids, created = await self.store.insert_jobs(user, environment, specs, now)
            trace.point("dispatcher", "submit-committed", ids[-1] if ids else "-")
        except (commands.TMError, StoreError):
            self.release(claims)
            raise  # a StoreError becomes its AMP error at the responder's edge
        except Exception as e:
            self.release(claims)
            self.log.failure("submission of {n} jobs failed", n=len(specs))
            raise commands.DatabaseUnavailable(f"the submission was not stored: {e}") from None
        finally:
            self.waiting_in_flight -= waits
        try:
            # In the working set (pending ones holding their slots) in the turn their claims end.
            self.release(claims, [job.uuid for job in created])
            self.take_in(created, checked)
            for observer in self.observers:
                observer.submitted(created)
            if placed:
                by_id = {job.id: job for job in created}
                self.placed_at_once(((by_id[t.job_id], t) for t in placed), environment)
            if len(created) < len(ids):  # a resent chunk: what it stored before, if still waiting
                known = {job.id for job in created}
                unknown = [i for i in ids if i not in known and i not in self.jobs]
                again = await self.store.get_jobs(unknown) if unknown else []
                self.take_in([job for job in again if job.state is JobState.WAITING], checked)
                # Placed by an earlier try of this transaction that committed unseen (a lost
                # connection): started as placed, with the slots claimed for them until now.
                mine = [
                    job
                    for job in again
                    if job.state is JobState.PENDING and claims.get(job.uuid, ("",))[0] == job.host
                ]
                self.release(claims)
                self.take_in(mine, checked)
                for job in mine:
                    self._placed(True, job, job.attempt)
        finally:  # whatever happens above (a failed read of a resent chunk's jobs)
            self.release(claims)
        if len(placed) < len(ids):  # jobs of it wait: a pass for them
            self.request_pass()
        return ids, warnings

    async def set_cluster_active(self, active: bool) -> None:
        self.cluster_active = active
        await self.store.set_setting("cluster_active", "1" if active else "0")
        self.request_pass()

    async def set_host_active(self, name: str, active: bool) -> str:
        """(De)activate a host named by its full or short name; its full name."""
        found = self.hosts.get(name) or next(
            (h for h in self.hosts.values() if h.short_name == name), None
        )
        if found is None:
            raise commands.UnknownHost(f"unknown host {name!r}; see lscluster")
        found.active = active
        await self.store.save_host(found.name, active, found.retired)
        self.request_pass()
        return found.name

    async def set_user_enabled(self, user: str, enabled: bool) -> None:
        if user not in self.users:
            raise commands.UnknownUser(f"unknown user {user!r}; see lsusers")
        self.users[user].enabled = enabled
        await self.store.set_user_enabled(user, enabled)
        self.request_pass()

    def queue_order(self, owner: str | None) -> list[Job]:
        """The waiting jobs (of ``owner``, or everyone's) in the order a pass takes them."""
        return [
            self.jobs[v.id]
            for v in scheduler.queue_order(self.scheduler_input(listing=True))
            if owner in (None, v.user)
        ]

    def wait_reason(self, job: Job) -> str:
        """Why ``job`` waits (or why its start is retried later); "" otherwise."""
        if job.state is JobState.WAITING:
            blocked = self.blocked_reason(job)
            if blocked:
                return blocked
            capped = self.jobs.arrays.at_cap(job)
            if capped:
                return capped
            inp = self.scheduler_input(listing=True)
            view = next((j for j in inp.jobs if j.id == job.id), None)
            return "" if view is None else scheduler.explain_wait(view, inp)
        if job.id in self.start_failures:
            failures, retry_at = self.start_failures[job.id]
            return (
                f"its start failed {failures} time(s) in a row; tried again in "
                f"{max(0.0, retry_at - self.reactor.seconds()):.0f} s"
            )
        return ""

    # --- published information -----------------------------------------------------------------

    def public_info(self, certificate: bytes) -> dict[str, Any]:
        return {
            "host": self.settings.public_host,
            "port": self.settings.port,
            "certificate": certificate.decode("ascii"),
            "challenge_dir": str(self.settings.var_dir / "challenge"),
            "pid": os.getpid(),
            "started_at": self.started_at,
        }
