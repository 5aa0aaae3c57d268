"""Parsers of etc/cluster.tab, etc/cluster.cfg and etc/users."""

from __future__ import annotations

import pytest

from tm.config import (
    ConfigError,
    default_local_host,
    parse_cluster_cfg,
    parse_cluster_tab,
    parse_users,
)

HEADER = (
    "short_name\tfull_name\tnumber_slots\tmax_number_occupied_slots\tadditional_info\t"
    "allow_info_server\tinfo_server_port\tactive\n"
)


def test_cluster_tab_with_seed_columns_and_extras() -> None:
    hosts = parse_cluster_tab(
        HEADER
        + "# a comment\n\n"
        + "n1\tnode1.example\t8\t6\tbig box\tFalse\t0\tTrue\n"
        + "n2\tnode2.example\t4\t4\t\tno\t0\tFalse\tuser@node2\t/opt/tm/bin/tmmenial\tyes\n",
        "etc/cluster.tab",
    )
    assert [h.name for h in hosts] == ["node1.example", "node2.example"]
    n1, n2 = hosts
    assert (n1.short_name, n1.number_slots, n1.max_slots, n1.active) == ("n1", 8, 6, True)
    assert n1.additional_info == "big box" and n1.ssh_target == ""
    assert n2.active is False  # "False" is false
    assert (n2.ssh_target, n2.tmmenial_command, n2.load_check) == (
        "user@node2",
        "/opt/tm/bin/tmmenial",
        True,
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("n1\tnode1\tmany\t2\t\tFalse\t0\tTrue", "number_slots"),
        ("n1\tnode1\t0\t2\t\tFalse\t0\tTrue", "at least 1"),
        ("n1\tnode1\t2\t2\t\tFalse\t0\tmaybe", "active must be True or False"),
        ("n1\tnode1\t2", "expected 8 tab-separated columns"),
        ("n1\tbad host!\t2\t2\t\tFalse\t0\tTrue", "not a host name"),
    ],
)
def test_cluster_tab_errors_name_file_and_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cluster_tab(HEADER + line + "\n", "etc/cluster.tab")
    assert str(info.value).startswith("etc/cluster.tab:2: ")
    assert message in str(info.value)


def test_duplicate_hosts_are_an_error() -> None:
    line = "n1\tnode1\t2\t2\t\tFalse\t0\tTrue\n"
    with pytest.raises(ConfigError, match=r"cluster.tab:3: .*listed twice"):
        parse_cluster_tab(HEADER + line + line, "cluster.tab")


def test_cluster_cfg() -> None:
    text = (
        "[CLUSTER]\nname = test\nhosts = A, B\n\n"
        "[A]\nshort_name = a\nfull_name = a.example\nnumber_slots = 2\n"
        "max_number_occupied_slots = 2\nactive = True\n\n"
        "[B]\nfull_name = b.example\nnumber_slots = 4\nactive = False\n"
    )
    a, b = parse_cluster_cfg(text, "cluster.cfg")
    assert (a.name, a.max_slots, a.active) == ("a.example", 2, True)
    assert (b.name, b.max_slots, b.active) == ("b.example", 4, False)


def test_cluster_cfg_missing_section() -> None:
    with pytest.raises(ConfigError, match="missing"):
        parse_cluster_cfg("[CLUSTER]\nhosts = A\n", "cluster.cfg")


def test_users() -> None:
    users = parse_users("# users\nalice\tuser\nroot\tuser,admin\nbob user\n", "etc/users")
    assert [(u.name, u.is_admin) for u in users] == [
        ("alice", False),
        ("root", True),
        ("bob", False),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", "etc/users:1: expected"),
        ("alice\tsuperuser\n", "etc/users:1: unknown role"),
        ("al!ce\tuser\n", "not a Unix user name"),
        ("alice\tuser\nalice\tadmin\n", "etc/users:2: user alice is listed twice"),
    ],
)
def test_user_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_users(text, "etc/users")


def test_default_local_host() -> None:
    host = default_local_host("vm.example", 2)
    assert (host.name, host.short_name, host.max_slots, host.ssh_target) == (
        "vm.example",
        "vm",
        2,
        "",
    )
