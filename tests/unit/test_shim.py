"""The shepherd's reading of the process table (/proc/PID/stat parsing, tree walks), and when
it walks it."""

from __future__ import annotations

import os
import signal

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers.processes import alive
from tm.executor import shim
from tm.executor.shim import descendants, parse_stat

TAIL = b" 0 0 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 1234 0 0\n"


def stat_line(pid: int, comm: bytes, state: bytes, ppid: int) -> bytes:
    return b"%d (%s) %s %d" % (pid, comm, state, ppid) + TAIL


def test_plain_command_name() -> None:
    assert parse_stat(stat_line(42, b"sleep", b"S", 7)) == (7, "S")


def test_command_name_with_spaces_and_parentheses() -> None:
    # A process may name itself anything: the fields that follow start after the LAST ')'.
    assert parse_stat(stat_line(42, b"a) Z 1 (b", b"T", 99)) == (99, "T")
    assert parse_stat(stat_line(42, b"x ) R 5", b"Z", 3)) == (3, "Z")


@given(
    comm=st.binary(max_size=15).filter(lambda b: b"\0" not in b),
    state=st.sampled_from([b"R", b"S", b"D", b"T", b"t", b"Z", b"X"]),
    ppid=st.integers(min_value=0, max_value=4194304),
)
def test_any_command_name(comm: bytes, state: bytes, ppid: int) -> None:
    assert parse_stat(stat_line(1, comm, state, ppid)) == (ppid, state.decode())


def test_unparseable_lines() -> None:
    assert parse_stat(b"") is None
    assert parse_stat(b"12 (cut") is None
    assert parse_stat(b"12 (x) S") is None
    assert parse_stat(b"12 (x) S notanumber 1") is None


def test_descendants_follow_the_parent_chain_only() -> None:
    table = {
        1: (0, "S"),
        10: (1, "S"),  # the shepherd
        11: (10, "S"),  # its shell
        12: (11, "T"),  # a child of the shell
        13: (12, "Z"),  # a zombie grandchild is still listed: callers filter on state
        14: (10, "S"),  # an orphan reparented to the shepherd
        20: (1, "S"),  # unrelated
        21: (20, "S"),
    }
    assert sorted(descendants(10, table)) == [11, 12, 13, 14]
    assert descendants(13, table) == []
    assert descendants(99, table) == []


def test_parents_come_before_children() -> None:
    table = {5: (1, "S"), 6: (5, "S"), 7: (6, "S"), 8: (7, "S"), 9: (5, "S")}
    order = descendants(1, table)
    assert sorted(order) == [5, 6, 7, 8, 9]
    for pid, (ppid, _) in table.items():
        if ppid != 1:
            assert order.index(ppid) < order.index(pid)


def test_a_cycle_from_a_torn_read_does_not_loop() -> None:
    # /proc is not read atomically; a pid reused during the walk could form a cycle.
    table = {2: (3, "S"), 3: (2, "S"), 4: (1, "S"), 5: (4, "S"), 1: (5, "S")}
    assert sorted(descendants(1, table)) == [4, 5]


# -- the shepherd's end: a walk of /proc only when something is left ---------------------------


def run_shepherd_in_a_child(shell_code: str) -> tuple[int, bool]:
    """Fork; the child becomes a shepherd (subreaper) of ``sh -c shell_code``. Return its exit
    code (the shell's) and whether it walked /proc. The shell's stdout is a pipe read here: the
    pids it prints (of what it leaves in the background) must be gone with the shepherd."""
    out_r, out_w = os.pipe()
    walks_r, walks_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 98
        try:
            os.close(out_r)
            os.close(walks_r)
            shim.take_control_signals()
            shim._prctl(shim.PR_SET_CHILD_SUBREAPER, 1)
            walk = shim.process_table

            def counted() -> dict[int, tuple[int, str]]:
                os.write(walks_w, b"w")
                return walk()

            shim.process_table = counted
            child = os.fork()
            if child == 0:
                os.dup2(out_w, 1)
                signal.pthread_sigmask(signal.SIG_SETMASK, set())
                os.execv("/bin/sh", ["/bin/sh", "-c", shell_code])
            os.close(out_w)
            status = shim.Shepherd(child, 0.5).run()
            code = os.waitstatus_to_exitcode(status)
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(walks_w)
    with os.fdopen(out_r) as pipe:
        left = pipe.read().split()
    _, status = os.waitpid(pid, 0)
    with os.fdopen(walks_r, "rb") as walks:
        walked = bool(walks.read())
    for text in left:
        assert not alive(int(text)), text
    return os.waitstatus_to_exitcode(status), walked


def test_a_shell_that_leaves_nothing_ends_without_a_walk_of_proc() -> None:
    assert run_shepherd_in_a_child("/bin/true; exit 3") == (3, False)


def test_what_the_shell_leaves_behind_is_found_and_killed() -> None:
    # The background sleep is orphaned to the shepherd when the shell exits: walked, killed.
    assert run_shepherd_in_a_child("sleep 100 >/dev/null & echo $!; exit 4") == (4, True)
