"""A long job file through the real CLI: every job committed once, listed identically by
every path (the TMS's socket, the dispatcher, a database listing), and a chunk sent again
creates nothing twice. Sizes a test can afford; the 100 000-job figures are bench/queue.py's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import cli
from tests.helpers.processes import Installation
from tm import localsocket
from tm.core.model import JobSpec
from tm.protocol.limits import spec_to_row

JOBS = 5000


def _stored(inst: Installation) -> tuple[list[int], dict[int, int]]:
    """The ids of every job in the database, and how many history rows each has."""
    ids = [row[0] for row in inst.sql("SELECT id FROM jobs ORDER BY id")]
    history = dict(inst.sql("SELECT job_id, COUNT(*) FROM job_history GROUP BY job_id"))
    return ids, {int(k): int(v) for k, v in history.items()}


@pytest.fixture(params=["sqlite", "mariadb"])
def stopped_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Installation]:
    """A dispatcher whose cluster is deactivated: what is submitted stays waiting."""
    url = request.getfixturevalue("mysql_url") if request.param == "mariadb" else None
    inst = Installation(tmp_path, database_url=url)
    try:
        inst.start_dispatcher()
        cli.td(inst, "deactivatecluster")
        yield inst
    finally:
        inst.cleanup()


def test_a_long_job_file_is_committed_once_and_listed_alike_by_every_path(
    stopped_cluster: Installation,
) -> None:
    inst = stopped_cluster
    lines = [
        f"command::echo {{idx}} >> out\tgroup::g{i % 3}\tinfoText::line {i}"
        + ("\tslots::2\tpriority::5" if i % 7 == 0 else "")
        for i in range(JOBS)
    ]
    ids = cli.submit_file(inst, "jobs.txt", content="\n".join(lines) + "\n", cwd=inst.work)
    assert len(ids) == JOBS and ids == sorted(set(ids))
    stored, history = _stored(inst)
    assert stored == ids
    assert history == dict.fromkeys(ids, 1)  # "submitted", once each

    mine = cli.tms(inst, "lswjobs")  # over the TMS's socket: pages read ahead
    assert cli.listed_ids(mine) == ids
    for i, row in enumerate(cli.parse_listing(mine)):
        assert row.state == "waiting"
        assert row.text.split()[-7:] == [f"g{i % 3}", "line", str(i), "echo", str(i), ">>", "out"]
    # Through the dispatcher, from its working set; and from the database (findjobs reads
    # it): the same text, but for the user column the dispatcher's listing adds.
    assert cli.listed_ids(cli.td(inst, "lswjobs")) == ids
    assert cli.tms(inst, "findjobs:echo") == mine


def test_a_chunk_sent_again_creates_nothing_twice(
    stopped_cluster: Installation, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = stopped_cluster
    cli.tms(inst, "ping")  # the TMS and its socket
    monkeypatch.setenv("HOME", str(inst.home))
    client = localsocket.LocalClient.connect()
    try:

        def submit(rows: list[dict]) -> list[int]:
            answer = client.call(
                "SubmitJobs", cwd=str(inst.work), umask=0o022, env={"A": "1"}, jobs=rows
            )
            return list(answer["job_ids"])

        # More than one AMP value: the TMS sends it in chunks.
        rows = [
            spec_to_row(JobSpec(uuid=str(uuid.uuid4()), command=f"true {i}", shell="/bin/sh"))
            for i in range(900)
        ]
        first = submit(rows)
        assert len(first) == 900 and first == sorted(set(first))
        assert submit(rows) == first  # the whole submission again
        assert submit(rows[300:600]) == first[300:600]  # one chunk again
        more = [
            spec_to_row(JobSpec(uuid=str(uuid.uuid4()), command="true new", shell="/bin/sh"))
            for _ in range(50)
        ]
        mixed = submit(rows[850:] + more)  # a chunk partly stored before
        assert mixed[:50] == first[850:]
        assert len(set(mixed[50:])) == 50 and min(mixed[50:]) > max(first)
    finally:
        client.close()
    stored, history = _stored(inst)
    assert stored == first + mixed[50:]
    assert history == dict.fromkeys(stored, 1)
    assert cli.listed_ids(cli.tms(inst, "lswjobs")) == stored
