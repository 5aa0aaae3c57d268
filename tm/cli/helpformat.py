"""The help formatter of the commands' parsers: argparse's, without importing ``shutil``
until a help or usage text is formatted.

argparse makes a formatter for every ``add_argument`` (to check the option's metavar), and
its formatter imports ``shutil`` (with ``zlib``, ``bz2``, ``lzma`` and ``fnmatch``) for the
terminal's width: 2 to 3 ms of every command's start, for a width that only ``--help``
uses. This one asks for the width when a text is formatted, as argparse does: the help is
byte for byte argparse's.
"""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        # argparse's own with any width: the width and the position of the help are set
        # again below, as argparse sets them, when first read.
        super().__init__(prog, indent_increment, max_help_position, 80 if width is None else width)
        self._asked = (indent_increment, max_help_position)
        if width is None:
            del self.__dict__["_lazy_width"], self.__dict__["_lazy_help_position"]

    @property
    def _width(self) -> int:
        if "_lazy_width" not in self.__dict__:
            import shutil

            self.__dict__["_lazy_width"] = shutil.get_terminal_size().columns - 2
        return int(self.__dict__["_lazy_width"])

    @_width.setter
    def _width(self, value: int) -> None:
        self.__dict__["_lazy_width"] = value

    @property
    def _max_help_position(self) -> int:
        if "_lazy_help_position" not in self.__dict__:
            indent_increment, max_help_position = self._asked
            self.__dict__["_lazy_help_position"] = min(
                max_help_position, max(self._width - 20, indent_increment * 2)
            )
        return int(self.__dict__["_lazy_help_position"])

    @_max_help_position.setter
    def _max_help_position(self, value: int) -> None:
        self.__dict__["_lazy_help_position"] = value
