"""The text commands of job control of issue 11: hold and release (ids, ranges, groups),
kill of ranges and groups, and a waiting job's priority.

Pure, without Twisted (``hConnect``'s fast path runs it): sends ``ControlJobs`` and
``SetPriority`` (tm/protocol/control.py) through the injected ``call``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # hConnect's everyday commands import neither typing nor tm.jobfile
    from collections.abc import Awaitable, Callable
    from typing import Any

    Call = Callable[..., Awaitable[dict[str, Any]]]

#: command -> (action, by group)
_ACTIONS = {
    "killjobs": ("kill", False),
    "killgroup": ("kill", True),
    "holdjob": ("hold", False),
    "holdgroup": ("hold", True),
    "releasejob": ("release", False),
    "releasegroup": ("release", True),
}
_DONE = {"kill": "killed", "hold": "held", "release": "released"}
CONTROL_COMMANDS = frozenset(
    {"killgroup", "holdjob", "holdgroup", "releasejob", "releasegroup", "setpriority"}
)


async def run_control(name: str, args: tuple[Any, ...], call: Call) -> str:
    if name == "setpriority":
        job_id, priority = args
        r = await call("SetPriority", job_id=job_id, priority=priority)
        return f"job {job_id}: priority {r['old']} -> {priority}"
    action, by_group = _ACTIONS[name]
    requests: list[dict[str, Any]] = []
    if by_group:
        requests.append({"job_ids": [], "group": args[0]})
    else:
        ids = [x for x in args if not isinstance(x, tuple)]
        if ids:
            requests.append({"job_ids": ids})
        requests += [
            {"job_ids": [], "first": x[0], "last": x[1]} for x in args if isinstance(x, tuple)
        ]
    done: list[int] = []
    more = 0
    notes: list[str] = []
    for request in requests:
        r = await call("ControlJobs", action=action, **request)
        done += r["done"]
        more += r.get("more") or 0
        notes += r.get("notes") or []
    verb = _DONE[action]
    if done:
        from tm.jobfile import compress_ids

        line = f"job(s) {compress_ids(sorted(set(done)))}"
        line += f" and {more} more" if more else ""
        lines = [f"{line} {'has' if len(done) == 1 and not more else 'have'} been {verb}"]
    else:
        lines = [f"no job {verb}"]
    return "\n".join(lines + notes)
