"""The responders of a dispatcher session for the cluster, users, executors, sessions and
admin repairs. Each authorises, converts records and calls the dispatcher (see
:mod:`tm.dispatcher.responders`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tm import config
from tm.core.model import JobState
from tm.protocol import commands, records

if TYPE_CHECKING:  # pragma: no cover - typing only
    pass
from tm.dispatcher.sessionbase import SessionBase, _first, _fit_text


class AdminResponders(SessionBase):
    # --- cluster control ------------------------------------------------------------------

    @commands.SetClusterActive.responder
    async def set_cluster_active(self, active: bool) -> dict:
        with self._audited("activatecluster" if active else "deactivatecluster", "cluster"):
            self._require_admin()
            await self.dispatcher.set_cluster_active(active)
        return {}

    @commands.ReloadConfig.responder
    async def reload_config(self) -> dict:
        with self._audited("reload", "configuration"):
            self._require_admin()
            try:
                summary = await self.dispatcher.reload_config()
            except config.ConfigError as e:
                raise commands.InvalidRequest(f"reload refused, nothing changed: {e}") from None
        return {"summary": summary}

    @commands.SetHostActive.responder
    async def set_host_active(self, host: str, active: bool) -> dict:
        with self._audited("activatehost" if active else "deactivatehost", host):
            self._require_admin()
            name = await self.dispatcher.set_host_active(host, active)
        return {"host": name}

    @commands.ListUsers.responder
    def list_users(self, user: str | None = None) -> dict:
        me = self._require()
        d = self.dispatcher
        if user is not None and not self._may_see_user(user):
            raise commands.PermissionDenied(
                f"only an admin sees other users: ask for your own (lsusers:{me})"
            )
        if not self._sees_all():
            user = me  # a user's counts and usage are theirs (issue 10 point 4)
        usage = d.usage(d.reactor.seconds())
        rows = []
        for u in d.users.values():
            if user is not None and u.name != user:
                continue
            states = d.jobs.counts(u.name)
            rows.append(
                {
                    "name": u.name,
                    "roles": sorted(u.roles),
                    "enabled": u.enabled,
                    "tms_connected": u.name in d.tms_sessions,
                    "executors": _first(sorted(h for (n, h) in d.executors if n == u.name), 50),
                    "waiting": states.get(JobState.WAITING, 0),
                    "pending": states.get(JobState.PENDING, 0),
                    "running": states.get(JobState.RUNNING, 0),
                    "usage": usage.get(u.name, 0.0),
                }
            )
        if user is not None and not rows:
            raise commands.UnknownUser(f"unknown user {user!r}")
        fitted, n = records.fit_to_value(records.USER_FIELDS, rows, lambda r: r)
        if n < len(rows):
            raise commands.InvalidRequest(
                f"the {len(rows)} users do not fit in one answer: ask for one (lsusers:NAME)"
            )
        return {"users": fitted}

    @commands.SetUserEnabled.responder
    async def set_user_enabled(self, user: str, enabled: bool) -> dict:
        with self._audited("enableuser" if enabled else "disableuser", user):
            self._require_admin()
            await self.dispatcher.set_user_enabled(user, enabled)
        return {}

    @commands.ListExecutors.responder
    def list_executors(self) -> dict:
        me = self._require()
        d = self.dispatcher
        rows = []
        for (name, host), session in sorted(d.executors.items(), key=lambda kv: kv[0]):
            if name != me:
                continue
            jobs = [
                j.id
                for j in d.jobs.values()
                if j.user == me and j.host == host and j.state.holds_slots
            ]
            rows.append(
                {
                    "host": host,
                    "pid": session.peer_pid,
                    "since": session.authenticated_at,
                    "running": len(jobs),
                    "state": "connected",
                }
            )
        for (name, host), since in sorted(d.starting.items()):
            if name == me and (name, host) not in d.executors:
                rows.append(
                    {"host": host, "pid": None, "since": since, "running": 0, "state": "starting"}
                )
        now = d.reactor.seconds()
        for (name, host), until in sorted(d.backoff.items()):
            if name == me and until > now and (name, host) not in d.executors:
                rows.append(
                    {
                        "host": host,
                        "pid": None,
                        "since": None,
                        "running": 0,
                        "state": f"start failed, retried after {until - now:.0f} s",
                    }
                )
        while rows and records.json_size(rows) > records.MAX_VALUE_BYTES:
            rows = rows[: len(rows) * 3 // 4]  # more hosts than one answer holds: the first
        return {"executors": rows}

    @commands.ControlExecutors.responder
    async def control_executors(self, action: str) -> dict:
        """invokealltmms: start the caller's executor on every usable host that lacks one;
        shutdownalltmms: stop the caller's idle executors (one with running jobs is kept,
        and said so: stopping it would kill those jobs)."""
        me = self._require(commands.ROLE_TMS, commands.ROLE_CLIENT)
        d = self.dispatcher
        if action == "invoke":
            return {"hosts": d.invoke_executors(me)}
        if action == "shutdown":
            return {"hosts": await d.shutdown_executors(me)}
        raise commands.InvalidRequest(f"unknown executor action {action!r}: invoke or shutdown")

    @commands.ListSessions.responder
    def list_sessions(self) -> dict:
        self._require()
        d = self.dispatcher
        see = self._may_see_user
        lines = [f"tms {u}" for u in sorted(d.tms_sessions) if see(u)]
        lines += [f"tmms {u}@{h}" for (u, h) in sorted(d.executors) if see(u)]
        lines += [f"executor starting: {u}@{h}" for (u, h) in sorted(d.starting) if see(u)]
        starts = d.start_batches
        lines.append(
            f"scheduling passes: {d.passes}, group commits: {d.writer.batches}, "
            f"start orders: {starts.orders} in {starts.boxes} messages"
        )
        return {"lines": records.fit_lines(lines[:-1], records.MAX_VALUE_BYTES - 200) + lines[-1:]}

    @commands.AdminJobs.responder
    async def admin_jobs(self, action: str, user: str | None = None) -> dict:
        with self._audited(action, user or "all jobs"):
            return await self._admin_jobs(action, user)

    async def _admin_jobs(self, action: str, user: str | None) -> dict:
        self._require_admin()
        d = self.dispatcher
        if action in ("rmjobs", "rmwjobs"):
            if not user:
                raise commands.InvalidRequest(f"{action} needs a user: usage: {action}:USER")
            if user not in d.users:
                raise commands.UnknownUser(f"unknown user {user!r}; see lsusers")
            count, later = await d.remove_jobs(user, waiting_only=action == "rmwjobs")
            if count == 0 and later == 0:
                return {"count": 0, "message": "nothing has been removed"}
            # The seed's words; running jobs are counted, and removed once their processes
            # are gone (they keep their slots until then).
            return {
                "count": count + later,
                "message": f"removed {count + later} job(s) of user {user}.",
            }
        moves = {
            "setallpjobsaswaiting": (JobState.PENDING, JobState.WAITING, "waiting"),
            "setallrjobsaswaiting": (JobState.RUNNING, JobState.WAITING, "waiting"),
            "setallpjobsasfinished": (JobState.PENDING, JobState.FINISHED, "finished"),
            "setallrjobsasfinished": (JobState.RUNNING, JobState.FINISHED, "finished"),
        }
        if action in moves:
            old, new, word = moves[action]
            count = d.set_all(old, new)
            # Running jobs are killed first and keep their slots until their processes are
            # gone; the answer keeps the seed's words.
            return {"count": count, "message": f"set {count} jobs as {word}"}
        if action == "checkslots":
            # Occupied slots are derived from the jobs that hold them (pending and running),
            # never kept as a separate counter: recomputing is reporting them.
            occ = d.occupied()
            parts = [f"{h.name} {occ[h.name]}/{h.max_slots}" for h in d.hosts.values()]
            d.request_pass()
            return {
                "count": sum(occ.values()),
                "message": _fit_text(
                    "number of occupied slots have been updated: " + ", ".join(parts)
                ),
            }
        if action == "updateload":
            # Executors report their host's load every few seconds; show what is known and
            # run a scheduling pass with it.
            now = d.reactor.seconds()
            parts = [
                f"{h.name} {d.loads[h.name]:.2f} ({now - d.load_at.get(h.name, now):.0f} s ago)"
                if h.name in d.loads
                else f"{h.name} n.a. (no executor)"
                for h in d.hosts.values()
            ]
            d.request_pass()
            return {"count": len(d.loads), "message": _fit_text("load: " + ", ".join(parts))}
        raise commands.InvalidRequest(f"unknown admin action {action!r}")
