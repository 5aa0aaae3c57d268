"""What ``hRunJob`` prints: the seed's line for a submission, its ids alone (``--parsable``) or
as JSON (``--json``, docs/json.md), and the status of ``-s``. No Twisted."""

from __future__ import annotations

from tm.cli.errors import CLIError

TYPE_CHECKING = False
if TYPE_CHECKING:  # the everyday path imports neither argparse nor typing
    import argparse
    from collections.abc import Callable
    from typing import Any

    from tm.core.plainspec import PlainSpec


def check_output_options(args: argparse.Namespace) -> None:
    given = [
        option
        for option, on in (("-q", args.quiet), ("--json", args.json), ("--parsable", args.parsable))
        if on
    ]
    if len(given) > 1:
        raise CLIError(f"{' and '.join(given)} exclude each other: give one of them", status=2)


def submitted_text(
    args: argparse.Namespace, jobs: list[tuple[int, PlainSpec]], ids: list[int]
) -> str | None:
    """What a submission prints: the seed's line, the ids alone (``--parsable``), their JSON
    (``--json``), or nothing (``-q``)."""
    if args.json:
        from tm import textjson  # here: the everyday submission does without it

        row = submitted_row()
        rows = (row(spec) for _, spec in jobs)
        return textjson.dumps(textjson.submitted(ids, rows))
    if args.parsable:
        return "\n".join(str(i) for i in ids)
    if args.quiet:
        return None
    if args.array is not None:  # hRunJob --array: the ids and the group
        from tm.cli.hrunjob_array import submitted as array_submitted

        return array_submitted(args, ids)
    if args.jobsFile is None:
        return f"Job [{ids[0]}] has been submitted to TaskDispatcher."
    from tm.jobfile import compress_ids

    return f"{len(ids)} job(s) [{compress_ids(ids)}] have been submitted to TaskDispatcher."


def server_info_text(args: argparse.Namespace, info: dict, status: dict) -> str:
    """``hRunJob -s``: the TMS's and the dispatcher's status, as text or (``--json``) JSON."""
    if args.json:
        from tm import textjson

        return textjson.dumps(textjson.server_info(info, status))
    from tm.textformat import format_server_info

    return format_server_info(info, status)


def submitted_row() -> Callable[[PlainSpec], dict[str, Any]]:
    """A submitted job's record in ``hRunJob --json``: what the user gave, and its UUID."""
    from tm.core import jobfields  # here: the everyday submission does without it

    return jobfields.plain_rows((jobfields.BY_NAME["uuid"], *jobfields.GIVEN_FIELDS), of_spec=True)
