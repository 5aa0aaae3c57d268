"""``/metrics``: the dispatcher in the Prometheus text format (``prometheus_client``).

Counters (submissions, ends, transitions) and histograms (scheduling pass, database
write, reactor lag) are fed as things happen; the gauges (jobs by state and user, slots,
executors) are read from the dispatcher's memory at each scrape, so a scrape costs no
database query.  One registry per dispatcher, not the library's global one.  The metric
names and what they mean are listed in docs/dashboard.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.logger import Logger

from tm.core.model import ACTIVE_STATES, Job, Transition

#: How often the reactor's lateness is measured.
LAG_INTERVAL = 1.0
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Live(Collector):
    """The gauges, read from the dispatcher at each scrape."""

    def __init__(self, dispatcher: Any) -> None:
        self.d = dispatcher

    def collect(self) -> Iterator[GaugeMetricFamily]:
        d = self.d
        jobs = GaugeMetricFamily(
            "tm_jobs",
            "Jobs in the queue (waiting, pending, running, lost) by state and user; ended "
            "jobs are counted by tm_jobs_ended_total",
            labels=["state", "user"],
        )
        users = sorted(set(d.users) | set(d.jobs.waiting_users()))
        for user in users:
            counts = d.jobs.counts(user)
            for state in sorted(ACTIVE_STATES):
                jobs.add_metric([state.value, user], counts.get(state, 0))
        yield jobs
        occupied = d.occupied()
        slots = GaugeMetricFamily("tm_host_slots", "Slots a host offers", labels=["host"])
        used = GaugeMetricFamily(
            "tm_host_slots_used", "Slots held by pending and running jobs", labels=["host"]
        )
        active = GaugeMetricFamily(
            "tm_host_active", "1 if the host gets new jobs, else 0", labels=["host"]
        )
        load = GaugeMetricFamily("tm_host_load", "The host's last reported load", labels=["host"])
        executors = GaugeMetricFamily(
            "tm_executors", "Executors (TMMS) connected, per host", labels=["host"]
        )
        per_host: dict[str, int] = {}
        for _user, host in d.executors:
            per_host[host] = per_host.get(host, 0) + 1
        for name, h in sorted(d.hosts.items()):
            slots.add_metric([name], h.max_slots)
            used.add_metric([name], occupied.get(name, 0))
            active.add_metric([name], 1 if h.active and not h.retired else 0)
            if d.loads.get(name) is not None:
                load.add_metric([name], d.loads[name])
            executors.add_metric([name], per_host.get(name, 0))
        yield from (slots, used, active, load, executors)
        yield GaugeMetricFamily(
            "tm_cluster_active", "1 if the cluster dispatches jobs, else 0", value=d.cluster_active
        )
        yield GaugeMetricFamily(
            "tm_user_servers", "Users whose TMS is connected", value=len(d.tms_sessions)
        )
        yield GaugeMetricFamily(
            "tm_database_queued_changes",
            "State changes decided and not yet written to the database",
            value=d.writer.queued,
        )


class DispatcherMetrics:
    """The dispatcher's metrics; an observer of the dispatcher (``Dispatcher.observers``)."""

    log = Logger()

    def __init__(self, dispatcher: Any, clock: Any) -> None:
        self.clock = clock
        # The ``*_created`` series say only when the dispatcher started: left out.
        disable_created_metrics()
        self.registry = r = CollectorRegistry()
        self.submitted_jobs = Counter("tm_jobs_submitted", "Jobs submitted", ["user"], registry=r)
        self.ended_jobs = Counter(
            "tm_jobs_ended", "Jobs that ended, by user and end state", ["user", "state"], registry=r
        )
        self.transitions = Counter(
            "tm_job_transitions", "State changes of jobs, by new state", ["state"], registry=r
        )
        self.pass_seconds = Histogram(
            "tm_scheduling_pass_seconds", "Duration of a scheduling pass", buckets=_FAST, registry=r
        )
        self.write_seconds = Histogram(
            "tm_database_write_seconds",
            "Duration of one group-commit write of state changes",
            buckets=_FAST,
            registry=r,
        )
        self.lag_seconds = Histogram(
            "tm_reactor_lag_seconds",
            "How late the reactor ran a timer due every second",
            buckets=_FAST,
            registry=r,
        )
        self.lag_last = Gauge(
            "tm_reactor_lag_last_seconds", "The reactor's lateness at the last check", registry=r
        )
        r.register(_Live(dispatcher))
        self._lag_call: Any = None
        self._due = 0.0

    # --- the dispatcher's observer interface ------------------------------------------

    def transition(self, job: Job, t: Transition) -> None:
        try:
            self.transitions.labels(t.new.value).inc()
            if t.new.terminal:
                self.ended_jobs.labels(job.user, t.new.value).inc()
        except Exception:  # metrics must never break a state change
            self.log.failure("metrics: transition of job {id} not counted", id=t.job_id)

    def submitted(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.submitted_jobs.labels(job.user).inc()

    def pass_done(self, seconds: float) -> None:
        self.pass_seconds.observe(seconds)

    # --- database writes and reactor lag ------------------------------------------------

    def time_writes(self, writer: Any) -> None:
        """Wrap the writer's batch write so that each one is timed."""
        apply_batch = writer.apply_batch

        async def timed(transitions: list[Transition], now: float) -> list[bool]:
            began = time.perf_counter()
            try:
                return await apply_batch(transitions, now)
            finally:
                self.write_seconds.observe(time.perf_counter() - began)

        writer.apply_batch = timed

    def start(self) -> None:
        """Measure the reactor's lateness: a timer due in a second, run how much later?
        (A chain of timers, not a LoopingCall, which would skip the intervals it missed.)"""
        self._due = self.clock.seconds() + LAG_INTERVAL
        self._lag_call = self.clock.callLater(LAG_INTERVAL, self._measure_lag)

    def _measure_lag(self) -> None:
        now = self.clock.seconds()
        lag = max(0.0, now - self._due)
        self.lag_seconds.observe(lag)
        self.lag_last.set(lag)
        self._due = now + LAG_INTERVAL
        self._lag_call = self.clock.callLater(LAG_INTERVAL, self._measure_lag)

    def stop(self) -> None:
        if self._lag_call is not None and self._lag_call.active():
            self._lag_call.cancel()
        self._lag_call = None

    def render(self) -> bytes:
        return generate_latest(self.registry)
