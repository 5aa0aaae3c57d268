"""The remaining text commands end to end, and explicit refusals: help, fullhelp,
printserverinfo, suspendjob/resumejob, setallrjobsaswaiting, setall[pr]jobsasfinished,
updateload, lsthreads; unknown ids and hosts, malformed commands."""

from __future__ import annotations

import os
import re

import pytest

from tests.helpers.cli import listed_ids, parse_hosts, status, submit, td, tms
from tests.helpers.processes import Installation, alive, wait_until
from tm.textcommands import SPECS


def ticks(tm: Installation) -> int:
    path = tm.work / "ticks"
    return len(path.read_text().split()) if path.exists() else 0


TICKER = "echo $$ > shell.pid; while :; do echo x >> ticks; sleep 0.1; done"


def test_help_and_fullhelp_list_every_command_of_their_server(installation: Installation) -> None:
    mine, dispatcher = tms(installation, "help"), td(installation, "fullhelp")
    assert td(installation, "help") == dispatcher
    for name, spec in SPECS.items():
        usage_line = re.compile(rf"^  {re.escape(spec.usage)}\s", re.M)
        if "tms" in spec.targets:
            assert usage_line.search(mine), name
        if "dispatcher" in spec.targets:
            assert usage_line.search(dispatcher), name


def test_printserverinfo_describes_the_tms(installation: Installation) -> None:
    out = tms(installation, "printserverinfo")
    pid = int((installation.home / ".taskmanager" / "tms.pid").read_text())
    assert out.splitlines()[0].startswith("Status of TaskManagerServer on ")
    assert f"(pid {pid})" in out
    assert f":{installation.port} (connected)" in out
    assert "dispatcher activity status: active" in out


def test_suspend_stops_the_job_and_keeps_its_slot_resume_continues_it(
    installation: Installation,
) -> None:
    job = submit(installation, TICKER)
    wait_until(lambda: ticks(installation) > 3, 30, "the job to tick")
    assert tms(installation, f"suspendjob:{job}") == f"job {job} has been suspended"
    assert status(installation, job) == "running (suspended)"
    shell = int((installation.work / "shell.pid").read_text())
    wait_until(
        lambda: open(f"/proc/{shell}/stat").read().rsplit(")", 1)[1].split()[0] == "T",
        10,
        "the job's shell to be stopped",
    )
    frozen = ticks(installation)
    wait_until(lambda: "1/2" in td(installation, "lscluster"), 5, "the slot to stay occupied")
    assert ticks(installation) <= frozen + 1  # at most a write that was under way
    assert tms(installation, f"resumejob:{job}") == f"job {job} has been resumed"
    wait_until(lambda: ticks(installation) > frozen + 3, 10, "the job to tick again")
    assert status(installation, job) == "running"
    tms(installation, f"killjob:{job}")
    wait_until(lambda: status(installation, job) == "killed", 30, "the kill")
    refused = installation.run("hConnect", f"suspendjob:{job}")
    assert refused.returncode != 0 and f"job {job} is killed, not running" in refused.stderr


def test_setallrjobsaswaiting_requeues_running_jobs_and_kills_the_running_copy(
    installation: Installation,
) -> None:
    job = submit(installation, TICKER)
    wait_until(
        lambda: (installation.work / "shell.pid").exists() and ticks(installation) > 1,
        30,
        "the job to run",
    )
    first = int((installation.work / "shell.pid").read_text())
    assert td(installation, "deactivatecluster") == "deactivated."
    assert td(installation, "setallrjobsaswaiting") == "set 1 jobs as waiting"
    # The attempt keeps its slot until its processes are gone; then it is requeued.
    wait_until(lambda: not alive(first), 30, "the running copy to be killed")
    wait_until(
        lambda: status(installation, job).split()[0] == "waiting", 30, "the job to be requeued"
    )
    assert "0 / 2" in td(installation, "status") or "occupied slots: 0" in td(
        installation, "status"
    )
    td(installation, "activatecluster")
    wait_until(lambda: status(installation, job) == "running", 30, "the job to run again")
    second = wait_until(
        lambda: (
            int((installation.work / "shell.pid").read_text() or 0) != first
            and int((installation.work / "shell.pid").read_text())
        ),
        30,
        "a new shell",
    )
    assert alive(second)
    tms(installation, f"killjob:{job}")


@pytest.mark.parametrize("which", ["r", "p"])
def test_setalljobsasfinished_ends_jobs_finished(
    installation: Installation, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if which == "p":
        # A host reached through an "ssh" that never connects keeps its job pending.
        fakebin = installation.root / "fakebin"
        fakebin.mkdir()
        (fakebin / "ssh").write_text(
            f"#!/bin/sh\necho $$ >> {installation.root}/ssh.pids\nexec sleep 60\n"
        )
        (fakebin / "ssh").chmod(0o755)
        monkeypatch.setenv("PATH", f"{fakebin}:{os.environ['PATH']}")
        (installation.etc / "cluster.tab").write_text(
            "faraway\tfaraway\t1\t1\t\tFalse\t0\tTrue\tfaraway\n"
        )
        installation.stop_dispatcher()
        installation.start_dispatcher()
        try:
            job = submit(installation, "true")
            wait_until(lambda: status(installation, job) == "pending", 30, "the job to be pending")
            assert td(installation, "setallpjobsasfinished") == "set 1 jobs as finished"
            assert status(installation, job) == "finished"
        finally:
            for pid in (installation.root / "ssh.pids").read_text().split():
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass
        return
    job = submit(installation, TICKER)
    wait_until(
        lambda: (installation.work / "shell.pid").exists() and ticks(installation) > 1,
        30,
        "the job",
    )
    assert td(installation, "setallrjobsasfinished") == "set 1 jobs as finished"
    shell = int((installation.work / "shell.pid").read_text())
    wait_until(lambda: not alive(shell), 30, "the running copy to be killed")
    wait_until(lambda: status(installation, job) == "finished", 30, "the job to be set as finished")


def test_updateload_and_lsthreads_report_the_live_state(installation: Installation) -> None:
    job = submit(installation, TICKER)
    wait_until(lambda: ticks(installation) > 1, 30, "the job to run")
    (host,) = parse_hosts(td(installation, "lscluster"))[1]
    wait_until(
        lambda: re.fullmatch(
            rf"load: {re.escape(host)} \d+\.\d\d \(\d+ s ago\)", td(installation, "updateload")
        ),
        15,
        "a load report",
    )
    lines = td(installation, "lsthreads").splitlines()
    me = os.environ.get("USER") or "root"
    assert f"tms {me}" in lines or any(line.startswith("tms ") for line in lines)
    assert any(
        line == f"tmms {line.split()[1]}" and line.endswith(f"@{host}")
        for line in lines
        if line.startswith("tmms ")
    )
    tms(installation, f"killjob:{job}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lajob:12345"], "unknown job 12345"),
        (["killjob:12345"], "unknown job 12345"),
        (["resumejob:12345"], "unknown job 12345"),
        (["lajob:abc"], "lajob: 'abc' is not a job id: usage: lajob:ID"),
        (
            ["killjobs"],
            "killjobs needs job ids or a range of ids: "
            "usage: killjobs:ID[:ID...] or killjobs:FIRST-LAST",
        ),
        (["killmatchingjobs:("], "bad regular expression"),
        (["-T", "activatehost:nohost"], "unknown host 'nohost'; see lscluster"),
        (["-T", "lsuser:nobody_here"], "unknown user 'nobody_here'"),
        (["-T", "killjob:1"], "is not a command of the dispatcher"),
        (["nosuchcommand"], "unknown command 'nosuchcommand'"),
    ],
)
def test_refusals_are_explicit(installation: Installation, argv: list[str], message: str) -> None:
    result = installation.run("hConnect", *argv)
    assert result.returncode != 0, result.stdout
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_estimates_are_stored_and_shown(installation: Installation) -> None:
    out = installation.run(
        "hRunJob", "-t", "3600", "-m", "512", "-i", "a note", "true", check=True
    ).stdout
    job = int(re.search(r"\[(\d+)\]", out).group(1))
    detail = tms(installation, f"lajob:{job}")
    assert re.search(r"^estimated time:\s+3600\.0$", detail, re.M), detail
    assert re.search(r"^estimated memory:\s+512\.0$", detail, re.M), detail
    assert re.search(r"^info:\s+a note$", detail, re.M), detail


def test_listings_page_through_jobs_far_beyond_one_amp_value(installation: Installation) -> None:
    td(installation, "deactivatecluster")
    # 3000 jobs with 200-byte commands: about 1 MB of listing, sixteen times what one AMP value
    # (64 KiB) may hold.
    lines = [f"command::true {{idx}} {'x' * 200}\tgroup::many" for _ in range(3000)]
    (installation.work / "jobs.txt").write_text("\n".join(lines) + "\n")
    out = installation.run("hRunJob", "-f", "jobs.txt", check=True).stdout
    first, last = map(int, re.search(r"\[(\d+)-(\d+)\]", out).groups())
    assert last - first == 2999
    for listing in (
        tms(installation, "lswjobs"),
        td(installation, "lswjobs"),
        tms(installation, "findjobs:xxxx"),
    ):
        ids = listed_ids(listing)
        assert ids == list(range(first, last + 1))
    assert len(listed_ids(td(installation, "lsnextjobs:2500"))) == 2500
    assert "total: 3000" in tms(installation, "lagroup:many")
