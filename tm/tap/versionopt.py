"""``twistd tmdispatcher|tmserver|tmmenial --version``: TaskManager's version, not Twisted's."""

from __future__ import annotations

import sys

from tm import VERSION_LINE


class VersionOption:
    """Mixed into the plugins' ``usage.Options`` (before it, so that this ``opt_version`` wins)."""

    def opt_version(self) -> None:
        """Print TaskManager's version and exit."""
        print(VERSION_LINE)
        sys.exit(0)
