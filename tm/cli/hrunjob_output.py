"""What ``hRunJob`` prints: the seed's line for a submission, its ids alone (``--parsable``) or
as JSON (``--json``, docs/json.md), and the status of ``-s``. No Twisted."""

from __future__ import annotations

import argparse

from tm.cli.errors import CLIError
from tm.core import jobfields
from tm.core.model import JobSpec
from tm.jobfile import compress_ids


def check_output_options(args: argparse.Namespace) -> None:
    given = [
        option
        for option, on in (("-q", args.quiet), ("--json", args.json), ("--parsable", args.parsable))
        if on
    ]
    if len(given) > 1:
        raise CLIError(f"{' and '.join(given)} exclude each other: give one of them", status=2)


def submitted_text(
    args: argparse.Namespace, jobs: list[tuple[int, JobSpec]], ids: list[int]
) -> str | None:
    """What a submission prints: the seed's line, the ids alone (``--parsable``), their JSON
    (``--json``), or nothing (``-q``)."""
    if args.json:
        from tm import textjson  # here: the everyday submission does without it

        rows = (SUBMITTED_ROW(spec) for _, spec in jobs)
        return textjson.dumps(textjson.submitted(ids, rows))
    if args.parsable:
        return "\n".join(str(i) for i in ids)
    if args.quiet:
        return None
    if args.jobsFile is None:
        return f"Job [{ids[0]}] has been submitted to TaskDispatcher."
    return f"{len(ids)} job(s) [{compress_ids(ids)}] have been submitted to TaskDispatcher."


def server_info_text(args: argparse.Namespace, info: dict, status: dict) -> str:
    """``hRunJob -s``: the TMS's and the dispatcher's status, as text or (``--json``) JSON."""
    if args.json:
        from tm import textjson

        return textjson.dumps(textjson.server_info(info, status))
    from tm.textformat import format_server_info

    return format_server_info(info, status)


#: A submitted job's fields in ``hRunJob --json``: what the user gave, and its UUID.
SUBMITTED_ROW = jobfields.plain_rows(
    (jobfields.BY_NAME["uuid"], *jobfields.GIVEN_FIELDS), of_spec=True
)
