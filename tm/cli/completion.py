"""Shell completion of ``hRunJob`` and ``hConnect`` for bash and zsh.

``hRunJob --completion bash`` (or ``hConnect --completion zsh``) prints one script that
completes both programs: their options (read from their parsers), ``hConnect``'s commands
(from :data:`tm.textcommands.SPECS`, for the TMS or, after ``-T``, the dispatcher) and, after
``lajob:``, ``killjob:`` and the like, the user's job ids. Those come from
``hConnect --complete-ids``, which asks the user's TMS over its Unix socket only (the fast
path: no Twisted, no TMS started, nothing printed when none runs). Load it with
``source <(hConnect --completion bash)`` in ``~/.bashrc``, or
``source <(hConnect --completion zsh)`` after ``compinit`` in ``~/.zshrc``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

SHELLS = ("bash", "zsh")
#: The commands whose argument is one or more job ids.
ID_ARGS = (
    "int",
    "ints",
    "jobs",
    "output",
    "idset",
    "idprio",
    "resubmit",
)  # wait, cat, holdjob, ...
#: At most this many ids are offered (the active jobs first, then the ended ones).
MAX_IDS = 5_000
#: The options whose value is a file (by their destination).
FILE_DESTS = ("jobsFile", "stdout", "stderr", "logfile", "dispatcher")


def add_options(p: argparse.ArgumentParser, job_ids: bool = False) -> None:
    p.add_argument(
        "--completion",
        choices=SHELLS,
        default=None,
        help="print the shell completion script of hRunJob and hConnect: "
        "source <(%(prog)s --completion bash)",
    )
    if job_ids:  # for the completion script itself: the user's job ids, one a line
        p.add_argument("--complete-ids", action="store_true", help=argparse.SUPPRESS)


def early(prog: str, args: argparse.Namespace) -> int | None:
    """Serve ``--completion`` and ``--complete-ids``; None when neither was given."""
    if args.completion:
        print(script(args.completion))
        return 0
    if getattr(args, "complete_ids", False):
        sys.stdout.write("".join(f"{i}\n" for i in job_ids()))
        return 0
    return None


def job_ids(limit: int = MAX_IDS) -> list[int]:
    """The user's job ids from the TMS on this host (active ones first); none without one."""
    from tm import localsocket

    try:
        client = localsocket.LocalClient.connect()
    except localsocket.Unavailable:
        return []
    ids: list[int] = []
    try:
        for states in (["waiting", "pending", "running"], []):
            after = 0
            while len(ids) < limit:
                answer = client.call(
                    "ListJobs",
                    states=states,
                    scope="mine",
                    after_id=after,
                    limit=min(1000, limit - len(ids)),
                )
                ids.extend(j["id"] for j in answer["jobs"])
                after = answer.get("next_after_id") or 0
                if not after or not answer["jobs"]:
                    break
    except (localsocket.LinkLost, localsocket.RemoteError):
        pass
    finally:
        client.close()
    return list(dict.fromkeys(ids))[:limit]  # an active job may have ended in between


# --- what the scripts are made of -------------------------------------------------------------


def _options(p: argparse.ArgumentParser) -> tuple[list[str], list[str], list[str]]:
    """Every option shown in the help; those taking a value; those whose value is a file."""
    shown: list[str] = []
    valued: list[str] = []
    files: list[str] = []
    for action in p._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        shown.extend(action.option_strings)
        if action.nargs != 0:
            valued.extend(action.option_strings)
            if action.dest in FILE_DESTS:
                files.extend(action.option_strings)
    return shown, valued, files


def _commands(target: str) -> list[str]:
    """``hConnect``'s commands of ``target``; those taking an argument end with ``:``."""
    from tm.textcommands import SPECS

    return [s.name + (":" if s.arg else "") for s in SPECS.values() if target in s.targets]


def _facts() -> dict[str, Any]:
    from tm.cli import hconnect, hrunjob_options
    from tm.textcommands import SPECS

    run_shown, run_valued, run_files = _options(hrunjob_options.build_parser())
    con_shown, con_valued, con_files = _options(hconnect.build_parser())
    return {
        "hrunjob_opts": " ".join(run_shown),
        "hrunjob_valued": " ".join(run_valued),
        "hrunjob_files": " ".join(run_files),
        "hconnect_opts": " ".join(con_shown),
        "hconnect_valued": " ".join(con_valued),
        "hconnect_files": " ".join(con_files),
        "tms_commands": " ".join(_commands("tms")),
        "td_commands": " ".join(_commands("dispatcher")),
        "id_commands": " ".join(n for n, s in SPECS.items() if s.arg in ID_ARGS),
    }


def _variables(facts: dict[str, Any], assign: str) -> str:
    return "\n".join(f"{assign}_tm_{key}='{value}'" for key, value in facts.items())


def script(shell: str) -> str:
    """The completion script for ``shell`` ("bash" or "zsh")."""
    from tm import VERSION_LINE
    from tm.cli import completion_scripts

    body = completion_scripts.BASH if shell == "bash" else completion_scripts.ZSH
    assign = "" if shell == "bash" else "typeset -g "
    head = f"# {shell} completion of hRunJob and hConnect ({VERSION_LINE})\n"
    return head + _variables(_facts(), assign) + "\n" + body
