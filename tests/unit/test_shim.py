"""The shepherd's reading of the process table: /proc/PID/stat parsing and tree walks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

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


@given(comm=st.binary(max_size=15).filter(lambda b: b"\0" not in b),
       state=st.sampled_from([b"R", b"S", b"D", b"T", b"t", b"Z", b"X"]),
       ppid=st.integers(min_value=0, max_value=4194304))
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
        10: (1, "S"),   # the shepherd
        11: (10, "S"),  # its shell
        12: (11, "T"),  # a child of the shell
        13: (12, "Z"),  # a zombie grandchild is still listed: callers filter on state
        14: (10, "S"),  # an orphan reparented to the shepherd
        20: (1, "S"),   # unrelated
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
