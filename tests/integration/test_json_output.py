"""Scriptable output through the real CLI (docs/json.md): ``hRunJob --json/--parsable``,
``hConnect [-T] --json`` for the listings, a job's detail, groups, the cluster and the status;
``hRunJob -- CMD ARG...``; the listings' header line; ``--version`` of every program."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from tests.helpers import cli
from tests.helpers.processes import TWISTD, Installation, wait_until
from tm import VERSION_LINE

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def run_json(tm: Installation, *argv: str) -> dict:
    """``hRunJob ARGV`` (with --json among them): its one document."""
    result = tm.run("hRunJob", *argv)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1, result.stdout
    doc = json.loads(result.stdout)
    cli.assert_json_keys(doc)
    return doc


def assert_time(record: dict, key: str) -> None:
    """``key`` holds a time as ISO 8601 and ``key_s`` the same time in seconds."""
    assert ISO.fullmatch(record[key]), record
    seconds = record[key + "_s"]
    assert isinstance(seconds, float)
    assert abs(json_time(record[key]) - seconds) < 1, record


def json_time(text: str) -> float:
    import calendar
    import time

    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def one_line_failure(result: object) -> str:
    stderr = getattr(result, "stderr", "")
    assert getattr(result, "returncode", 0) != 0 and getattr(result, "stdout", "x") == "", result
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    return stderr


def test_hrunjob_prints_the_ids_it_made_as_json_or_alone(installation: Installation) -> None:
    tm = installation
    doc = run_json(tm, "--json", "-g", "sweep", "--", "python3", "-c", "print(1)")
    (job_id,) = doc["ids"]
    assert doc["group"] == "sweep" and doc["jobs"][0]["id"] == job_id
    assert doc["jobs"][0]["command"] == "python3 -c 'print(1)'"
    assert doc["jobs"][0]["uuid"] and doc["jobs"][0]["slots"] == 1

    one_line_failure(tm.run("hRunJob", "--parsable", "-f", "jobs.txt"))  # no such file yet
    (tm.work / "jobs.txt").write_text(cli.job_file(["true", "true", "true"]))
    many = tm.run("hRunJob", "--parsable", "-f", "jobs.txt", check=True)
    ids = [int(line) for line in many.stdout.splitlines()]
    assert len(ids) == 3 and ids == sorted(ids) and ids[0] > job_id

    bulk = run_json(tm, "--json", "-f", "jobs.txt", "-g", "bulk")
    assert len(bulk["ids"]) == 3 and [j["id"] for j in bulk["jobs"]] == bulk["ids"]
    assert bulk["group"] == "bulk"

    refused = tm.run("hRunJob", "-q", "--json", "true")
    assert "exclude each other" in one_line_failure(refused)
    assert refused.returncode == 2

    status = run_json(tm, "-s", "--json")
    assert status["tms"]["dispatcher_connected"] is True
    assert_time(status["tms"], "started_at")
    assert status["status"]["cluster_active"] is True


def test_the_arguments_after_a_double_dash_keep_their_quoting(installation: Installation) -> None:
    tm = installation
    waited = tm.run(
        "hRunJob", "--parsable", "--wait", "-o", "one.txt", "--", "python3", "-c", "print(1)"
    )
    assert waited.returncode == 0, waited.stderr
    job_id = int(waited.stdout)
    assert (tm.work / "one.txt").read_text() == "1\n"
    assert cli.lajob(tm, job_id).fields["command"] == "python3 -c 'print(1)'"

    argv = ["printf", "%s|", "a  b", "$HOME", "it's"]
    spaced = tm.run("hRunJob", "--wait", "-o", "spaced.txt", "--", *argv)
    assert spaced.returncode == 0, spaced.stderr
    assert (tm.work / "spaced.txt").read_text() == "a  b|$HOME|it's|"
    assert cli.lajob(tm, cli.submitted_id(spaced.stdout)).fields["command"] == shlex.join(argv)

    # Without `--`, the seed's words are joined with spaces, for the shell to split again.
    seed = tm.run("hRunJob", "--wait", "-o", "seed.txt", "echo", "a  b", "$HOME")
    assert seed.returncode == 0, seed.stderr
    assert (tm.work / "seed.txt").read_text() == f"a b {tm.home}\n"
    assert cli.lajob(tm, cli.submitted_id(seed.stdout)).fields["command"] == "echo a  b $HOME"


def test_listings_details_groups_and_status_as_json(installation: Installation) -> None:
    tm = installation
    cli.td(tm, "deactivatecluster")
    long = "echo " + "z" * 80
    ids = [
        int(tm.run("hRunJob", "--parsable", "-g", "grp", "-i", "some info", long).stdout)
        for _ in range(2)
    ]

    mine = cli.json_of(tm, "lswjobs")
    assert mine["command"] == "lswjobs" and [j["id"] for j in mine["jobs"]] == ids
    first = mine["jobs"][0]
    assert first["command"] == long and first["state"] == "waiting"  # never shortened
    assert first["group"] == "grp" and first["info"] == "some info" and first["host"] is None
    assert first["exit_code"] is None and first["suspended"] is False
    assert_time(first, "submitted_at")
    assert_time(first, "state_since")
    everyone = cli.json_of(tm, "-T", "lswjobs")
    assert {j["user"] for j in everyone["jobs"]} == {first["user"]}
    assert [j["id"] for j in cli.json_of(tm, "findjobs:zzzz")["jobs"]] == ids
    assert [j["id"] for j in cli.json_of(tm, "-T", "lsnextjobs:1")["jobs"]] == ids[:1]
    assert cli.json_of(tm, "lsrjobs")["jobs"] == []

    detail = cli.json_of(tm, "lajob:" + str(ids[0]))["job"]
    assert detail["id"] == ids[0] and detail["command"] == long
    assert detail["wait_reason"] and detail["started_at"] is None
    assert detail["cwd"] == str(tm.work) and detail["env"]["HOME"] == str(tm.home)
    assert [h["state"] for h in detail["history"]] == ["waiting"]
    assert_time(detail["history"][0], "at")
    assert "env" not in cli.json_of(tm, "-T", "lajob:" + str(ids[0]))["job"]

    group = cli.json_of(tm, "lagroup:grp")["group"]
    assert group == {
        "group": "grp",
        "counts": group["counts"],
        "total": 2,
        "ended": 0,
        "progress": 0.0,
        "finished": False,
    }
    assert group["counts"]["waiting"] == 2
    assert [g["group"] for g in cli.json_of(tm, "lagroups")["groups"]] == ["grp"]
    assert cli.json_of(tm, "hasgroupfinished:grp")["group"]["finished"] is False

    cluster = cli.json_of(tm, "-T", "lscluster")
    assert cluster["cluster_active"] is False and len(cluster["hosts"]) == 1
    assert cluster["hosts"][0]["free_slots"] == cluster["hosts"][0]["max_slots"]
    for doc in (cli.json_of(tm, "-T", "status"), cli.json_of(tm, "gettdstatus")):
        assert doc["status"]["cluster_active"] is False
        assert doc["status"]["counts"]["waiting"] == 2
        assert doc["status"]["user_counts"]["waiting"] == 2
        assert_time(doc["status"], "started_at")
    info = cli.json_of(tm, "printserverinfo")
    assert info["tms"]["user"] == first["user"] and "status" in info
    assert [u["name"] for u in cli.json_of(tm, "-T", "lsusers")["users"]] == [first["user"]]

    assert cli.json_of(tm, "killjob:" + str(ids[1]))["killed"] == [ids[1]]
    assert cli.json_of(tm, "-T", "activatecluster")["message"] == "activated."

    def ended() -> dict | None:
        jobs = {j["id"]: j for j in cli.json_of(tm, "lsfjobs")["jobs"]}
        return jobs if len(jobs) == 2 and jobs[ids[0]]["state"] == "finished" else None

    jobs = wait_until(ended, 60, "both jobs to end")
    assert jobs[ids[0]]["exit_code"] == 0 and jobs[ids[1]]["state"] == "killed"
    done = cli.json_of(tm, "lajob:" + str(ids[0]))["job"]
    assert_time(done, "started_at")
    assert_time(done, "ended_at")
    assert done["host"] == cluster["hosts"][0]["name"]
    assert cli.json_of(tm, "hasgroupfinished:grp")["group"]["finished"] is True

    # The human listing: a header line, then the rows the helper reads.
    header, *rows = cli.tms(tm, "lsfjobs").splitlines()
    assert header.split() == ["#", "ID", "STATE", "GROUP", "INFO", "COMMAND"]
    assert [r.job_id for r in cli.parse_listing("\n".join([header, *rows]))] == ids
    assert cli.td(tm, "lsfjobs").splitlines()[0].split()[:3] == ["#", "ID", "USER"]

    helped = cli.json_of(tm, "-T", "help")
    assert "lscluster" in [c["name"] for c in helped["commands"]]

    # Bad input: one line, no document.
    assert "unknown job 99999" in one_line_failure(tm.run("hConnect", "--json", "lajob:99999"))
    assert "group 'nope' is unknown" in one_line_failure(
        tm.run("hConnect", "--json", "lagroup:nope")
    )


def test_every_program_says_its_version(tmp_path: Path) -> None:
    tm = Installation(tmp_path)
    try:
        for program in ("hRunJob", "hConnect", "hAdminDatabase"):
            result = tm.run(program, "--version")
            assert (result.returncode, result.stdout) == (0, VERSION_LINE + "\n"), result
        for plugin in ("tmdispatcher", "tmserver", "tmmenial"):
            result = tm.run(*TWISTD, plugin, "--version")
            assert (result.returncode, result.stdout) == (0, VERSION_LINE + "\n"), result
    finally:
        tm.cleanup()
