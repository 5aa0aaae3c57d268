"""The runner's log lines of starts and ends: one event per batch, a job's own words alone."""

from __future__ import annotations

from typing import Any, cast

from twisted.logger import ILogObserver, Logger, formatEvent, globalLogPublisher

from tm.executor.joblog import JobLog


def logged(action: Any) -> list[str]:
    events: list[dict] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    try:
        action(JobLog(Logger(namespace="test_joblog")))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, events.append))
    return [formatEvent(e) for e in events if e.get("log_namespace") == "test_joblog"]


def test_outside_a_batch_each_start_and_end_is_a_line_of_its_own() -> None:
    def act(log: JobLog) -> None:
        log.started(5, 1, 100)
        log.ended(5, 1, "exit code 0")

    assert logged(act) == ["job 5.1 started, pid 100", "job 5.1 ended: exit code 0"]


def test_the_starts_and_ends_of_a_batch_are_one_line_each() -> None:
    def act(log: JobLog) -> None:
        with log.batch():
            log.started(5, 1, 100)
            log.ended(3, 2, "exit code 1")
            with log.batch():
                log.started(6, 1, 101)
            log.ended(4, 1, "killed")
            assert log._started  # nothing written before the batch ends

    assert logged(act) == [
        "2 jobs started: 5.1 (pid 100), 6.1 (pid 101)",
        "2 jobs ended: 3.2: exit code 1; 4.1: killed",
    ]


def test_a_batch_of_one_reads_as_one_job_and_an_empty_batch_writes_nothing() -> None:
    def act(log: JobLog) -> None:
        with log.batch():
            log.ended(7, 1, "exit code 0")
        with log.batch():
            pass

    assert logged(act) == ["job 7.1 ended: exit code 0"]
