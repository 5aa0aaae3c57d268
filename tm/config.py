"""Parsers of the configuration files: etc/cluster.tab, etc/cluster.cfg and etc/users.

Pure: text in, model objects out.  A malformed line raises :class:`ConfigError`
naming the file and the line, so the dispatcher can refuse to start with one
clear message.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from tm.core.model import Host, User

CLUSTER_COLUMNS = [
    "short_name",
    "full_name",
    "number_slots",
    "max_number_occupied_slots",
    "additional_info",
    "allow_info_server",
    "info_server_port",
    "active",
]
#: Columns the new design adds after the seed's eight; all optional.
EXTRA_COLUMNS = ["ssh_target", "tmmenial_command", "load_check"]
ROLES = frozenset({"user", "admin"})
USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]*\$?$", re.I)
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TRUE = {"true", "yes", "on", "1"}
FALSE = {"false", "no", "off", "0", ""}


class ConfigError(ValueError):
    def __init__(self, path: str, line_no: int, message: str) -> None:
        super().__init__(f"{path}:{line_no}: {message}" if line_no else f"{path}: {message}")
        self.path = path
        self.line_no = line_no
        self.message = message


def parse_bool(value: str, path: str, line_no: int, column: str) -> bool:
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise ConfigError(path, line_no, f"{column} must be True or False, not {value!r}")


def _int(value: str, path: str, line_no: int, column: str, minimum: int = 1) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise ConfigError(
            path, line_no, f"{column} must be a whole number, not {value!r}"
        ) from None
    if n < minimum:
        raise ConfigError(path, line_no, f"{column} must be at least {minimum}, not {n}")
    return n


def _host(values: dict[str, str], path: str, line_no: int) -> Host:
    name = values.get("full_name", "").strip()
    if not HOST_NAME.match(name):
        raise ConfigError(path, line_no, f"full_name {name!r} is not a host name")
    number_slots = _int(values.get("number_slots", ""), path, line_no, "number_slots")
    max_raw = values.get("max_number_occupied_slots", "").strip()
    max_slots = (
        _int(max_raw, path, line_no, "max_number_occupied_slots") if max_raw else number_slots
    )
    port = values.get("info_server_port", "").strip()
    if port:
        _int(port, path, line_no, "info_server_port", minimum=0)
    parse_bool(values.get("allow_info_server", ""), path, line_no, "allow_info_server")
    active_raw = values.get("active", "").strip()
    return Host(
        name=name,
        short_name=values.get("short_name", "").strip() or name.split(".")[0],
        number_slots=number_slots,
        max_slots=max_slots,
        additional_info=values.get("additional_info", "").strip(),
        active=parse_bool(active_raw, path, line_no, "active") if active_raw else True,
        load_check=parse_bool(values.get("load_check", ""), path, line_no, "load_check"),
        ssh_target=values.get("ssh_target", "").strip(),
        tmmenial_command=values.get("tmmenial_command", "").strip(),
    )


def _check_unique(hosts: list[tuple[int, Host]], path: str) -> list[Host]:
    seen: dict[str, int] = {}
    for line_no, host in hosts:
        if host.name in seen:
            raise ConfigError(
                path, line_no, f"host {host.name} is listed twice (first on line {seen[host.name]})"
            )
        seen[host.name] = line_no
    return [h for _, h in hosts]


def parse_cluster_tab(text: str, path: str) -> list[Host]:
    """The seed's tab-separated cluster table, header line first."""
    hosts: list[tuple[int, Host]] = []
    header_seen = False
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\n\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if not header_seen:
            header_seen = True
            if fields[0].strip() == "short_name":
                continue
        if len(fields) < len(CLUSTER_COLUMNS):
            raise ConfigError(
                path,
                line_no,
                f"expected {len(CLUSTER_COLUMNS)} tab-separated columns "
                f"({' '.join(CLUSTER_COLUMNS)}), found {len(fields)}",
            )
        if len(fields) > len(CLUSTER_COLUMNS) + len(EXTRA_COLUMNS):
            raise ConfigError(path, line_no, f"too many columns ({len(fields)})")
        values = dict(zip(CLUSTER_COLUMNS + EXTRA_COLUMNS, fields, strict=False))
        hosts.append((line_no, _host(values, path, line_no)))
    return _check_unique(hosts, path)


def parse_cluster_cfg(text: str, path: str) -> list[Host]:
    """The INI form: ``[CLUSTER] hosts = A, B`` and one section per host."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=path)
    except configparser.Error as e:
        line = getattr(e, "lineno", 0) or 0
        raise ConfigError(path, line, str(e).splitlines()[0]) from None
    if not parser.has_section("CLUSTER") or not parser.has_option("CLUSTER", "hosts"):
        raise ConfigError(path, 1, "needs a [CLUSTER] section with 'hosts = SECTION, ...'")
    lines = text.splitlines()
    hosts: list[tuple[int, Host]] = []
    for section in [s.strip() for s in parser.get("CLUSTER", "hosts").split(",") if s.strip()]:
        line_no = next(
            (i for i, line in enumerate(lines, start=1) if line.strip() == f"[{section}]"), 1
        )
        if not parser.has_section(section):
            raise ConfigError(
                path, line_no, f"[CLUSTER] lists host section {section!r}, which is missing"
            )
        values = {k: v for k, v in parser.items(section)}
        hosts.append((line_no, _host(values, path, line_no)))
    return _check_unique(hosts, path)


def parse_users(text: str, path: str) -> list[User]:
    """``name<TAB>role,role`` per line (spaces accepted too)."""
    users: list[User] = []
    seen: dict[str, int] = {}
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ConfigError(path, line_no, "expected 'name<TAB>role[,role...]'")
        name, role_text = parts
        if not USER_NAME.match(name):
            raise ConfigError(path, line_no, f"{name!r} is not a Unix user name")
        roles = frozenset(r.strip() for r in role_text.split(",") if r.strip())
        unknown = roles - ROLES
        if not roles or unknown:
            raise ConfigError(
                path,
                line_no,
                f"unknown role(s) {', '.join(sorted(unknown)) or '(none)'}; roles are: user, admin",
            )
        if name in seen:
            raise ConfigError(
                path, line_no, f"user {name} is listed twice (first on line {seen[name]})"
            )
        seen[name] = line_no
        users.append(User(name=name, roles=roles))
    return users


def default_local_host(hostname: str, cores: int) -> Host:
    """The only host when there is no cluster file: this one, with all its cores."""
    return Host(
        name=hostname,
        short_name=hostname.split(".")[0],
        number_slots=max(1, cores),
        max_slots=max(1, cores),
    )


CLUSTER_FILES = {"tab": "cluster.tab", "cfg": "cluster.cfg"}


def load_cluster(config_dir: Path, kind: str, hostname: str, cores: int) -> list[Host]:
    """The hosts of ``config_dir``'s cluster file; without one, this host alone.

    Raises ConfigError for a malformed or empty file, OSError if it cannot be read.
    """
    path = config_dir / CLUSTER_FILES[kind]
    if not path.exists():
        return [default_local_host(hostname, cores)]
    text = path.read_text()
    hosts = (
        parse_cluster_tab(text, str(path)) if kind == "tab" else parse_cluster_cfg(text, str(path))
    )
    if not hosts:
        raise ConfigError(str(path), 0, "the file lists no hosts")
    return hosts


def load_users(config_dir: Path, current_user: str) -> list[User]:
    """The users of ``config_dir/users``; without that file, the current user as admin."""
    path = config_dir / "users"
    if not path.exists():
        return [User(name=current_user, roles=frozenset({"user", "admin"}))]
    users = parse_users(path.read_text(), str(path))
    if not users:
        raise ConfigError(str(path), 0, "the file lists no users")
    return users
