"""The TMS sends a submission again, with the same UUIDs, until the dispatcher acknowledges it."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tm.protocol import commands
from tm.userserver.service import submit_until_acknowledged

JOBS = {"cwd": "/w", "umask": 0o22, "env": {}, "jobs": [{"uuid": "u-1", "command": "true"}]}


class FakeLink:
    """A link whose answers are scripted; it is down between ``down_at`` and ``up_at``."""

    def __init__(self, clock: Clock, answers: list[Any]) -> None:
        self.clock: Any = clock
        self.answers = answers
        self.sent: list[dict] = []
        self.connected = True
        self.fatal: Exception | None = None
        self.last_error = ""
        self.info = type("Info", (), {"address": "d:1"})()
        self._up: list[defer.Deferred] = []

    async def ready(self, timeout: float) -> None:
        if self.connected:
            return
        d: defer.Deferred = defer.Deferred()
        self._up.append(d)
        d.addTimeout(timeout, self.clock)
        try:
            await d
        except defer.TimeoutError:
            pass

    def come_back(self) -> None:
        self.connected = True
        for d in self._up:
            if not d.called:
                d.callback(None)

    async def call(self, command: type, **kw: Any) -> Any:
        assert command is commands.SubmitJobs
        self.sent.append({k: v for k, v in kw.items() if k != "reply_timeout"})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            if isinstance(answer, ConnectionDone):
                self.connected = False
                self.last_error = "connection lost"
            raise answer
        return answer


def run(clock: Clock, link: FakeLink) -> defer.Deferred:
    return defer.ensureDeferred(submit_until_acknowledged(link, clock, dict(JOBS)))


def test_a_submission_whose_answer_was_lost_is_sent_again_once_the_link_is_back() -> None:
    clock = Clock()
    link = FakeLink(clock, [ConnectionDone(), {"job_ids": [7], "warnings": []}])
    d = run(clock, link)
    clock.advance(20)
    assert not d.called and len(link.sent) == 1
    link.come_back()
    assert d.result == {"job_ids": [7], "warnings": []}
    assert link.sent == [JOBS, JOBS]  # the same UUID both times


def test_a_refusal_is_passed_on_at_once() -> None:
    clock = Clock()
    link = FakeLink(clock, [commands.InvalidRequest("the command is empty")])
    d = run(clock, link)
    assert isinstance(d.result, Failure) and d.result.check(commands.InvalidRequest)
    d.addErrback(lambda _: None)
    assert len(link.sent) == 1


def test_database_unavailable_is_tried_again_a_few_times_with_back_off() -> None:
    clock = Clock()
    busy = commands.DatabaseUnavailable("the submission was not stored: gone away")
    link = FakeLink(clock, [busy, busy, {"job_ids": [3], "warnings": []}])
    d = run(clock, link)
    clock.advance(0.9)
    assert len(link.sent) == 1
    clock.pump([0.1, 1.9])
    assert len(link.sent) == 2 and not d.called
    clock.advance(0.1)
    assert d.result == {"job_ids": [3], "warnings": []}
    gave_up = FakeLink(clock, [busy] * 4)
    d = run(clock, gave_up)
    clock.pump([1.0, 2.0, 4.0])
    assert isinstance(d.result, Failure) and d.result.check(commands.DatabaseUnavailable)
    d.addErrback(lambda _: None)
    assert len(gave_up.sent) == 4


def test_without_the_dispatcher_it_gives_up_after_its_budget_with_one_line() -> None:
    clock = Clock()
    link = FakeLink(clock, [ConnectionDone()])
    d = run(clock, link)
    clock.advance(59)
    assert not d.called
    clock.advance(1.5)
    assert isinstance(d.result, Failure) and d.result.check(commands.DispatcherUnavailable)
    assert str(d.result.value) == (
        "the dispatcher at d:1 did not acknowledge the submission within 60 s (connection lost)"
    )
    d.addErrback(lambda _: None)
    assert not clock.getDelayedCalls()


class FakeTMS:
    """One link to a TMS: answers in turn from a shared script."""

    def __init__(self, script: list[Any], sent: list[dict]) -> None:
        self.script = script
        self.sent = sent
        self.transport: Any = None

    async def call(self, command: type, **kw: Any) -> Any:
        self.sent.append(kw)
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_the_cli_reconnects_to_its_tms_and_sends_the_same_jobs_again() -> None:
    from tm.cli.hrunjob import Submitter

    clock = Clock()
    sent: list[dict] = []
    script: list[Any] = [ConnectionDone(), {"job_ids": [5], "warnings": []}]
    links: list[FakeTMS] = []

    async def reconnect() -> FakeTMS:
        links.append(FakeTMS(script, sent))
        return links[-1]

    submitter = Submitter(clock, FakeTMS(script, sent), reconnect)
    d = defer.ensureDeferred(submitter.send(**JOBS))
    clock.advance(0.2)
    assert d.result == {"job_ids": [5], "warnings": []}
    assert sent == [JOBS, JOBS] and submitter.proto is links[0]


def test_the_cli_gives_up_after_its_budget_with_one_line() -> None:
    from twisted.internet.error import ConnectionRefusedError

    from tm.cli.common import CLIError
    from tm.cli.hrunjob import Submitter

    clock = Clock()
    sent: list[dict] = []

    async def reconnect() -> FakeTMS:
        raise ConnectionRefusedError()

    submitter = Submitter(clock, FakeTMS([ConnectionDone()], sent), reconnect)
    d = defer.ensureDeferred(submitter.send(**JOBS))
    for _ in range(70):
        clock.advance(1.0)
    assert isinstance(d.result, Failure) and d.result.check(CLIError)
    assert "not acknowledged within 60 s" in str(d.result.value)
    d.addErrback(lambda _: None)
    assert len(sent) == 1


def test_a_link_that_fails_calls_while_still_counted_up_is_not_tried_in_a_hot_loop() -> None:
    # A connection being lost fails its calls before the link hears it is down.
    clock = Clock()
    link = FakeLink(clock, [commands.DispatcherUnavailable("no link")] * 1000)
    d = run(clock, link)
    assert len(link.sent) == 1
    for _ in range(610):
        clock.advance(0.1)
    assert isinstance(d.result, Failure) and d.result.check(commands.DispatcherUnavailable)
    d.addErrback(lambda _: None)
    assert 30 < len(link.sent) < 100  # about one a second once backed off


def test_the_cli_keeps_trying_while_no_tms_can_be_started_for_a_moment() -> None:
    from tm.cli.common import CLIError
    from tm.cli.hrunjob import Submitter

    clock = Clock()
    sent: list[dict] = []
    script: list[Any] = [ConnectionDone(), {"job_ids": [8], "warnings": []}]
    starts: list[Any] = [CLIError("Could not start a TMS: a TMS of yours is already running")]

    async def reconnect() -> FakeTMS:
        if starts:
            raise starts.pop(0)
        return FakeTMS(script, sent)

    d = defer.ensureDeferred(Submitter(clock, FakeTMS(script, sent), reconnect).send(**JOBS))
    clock.pump([0.2, 0.4])
    assert d.result == {"job_ids": [8], "warnings": []} and sent == [JOBS, JOBS]


def test_jobs_handed_over_by_the_fast_path_wait_for_a_new_tms_like_a_lost_link() -> None:
    # The fast path sent the jobs over the TMS's socket and lost it before the answer: the
    # TLS path starts with no link, and keeps trying while the old TMS is still dying.
    from tm.cli.common import CLIError
    from tm.cli.hrunjob import Submitter

    clock = Clock()
    sent: list[dict] = []
    starts: list[Any] = [CLIError("Could not start a TMS: a TMS of yours is already running")]

    async def reconnect() -> FakeTMS:
        if starts:
            raise starts.pop(0)
        return FakeTMS([{"job_ids": [9], "warnings": []}], sent)

    submitter = Submitter(clock, None, reconnect, lost="the link to the TMS dropped")
    d = defer.ensureDeferred(submitter.send(**JOBS))
    assert not d.called and sent == []
    clock.pump([0.2, 0.4])
    assert d.result == {"job_ids": [9], "warnings": []} and sent == [JOBS]
