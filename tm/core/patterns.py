"""User-supplied regular expressions, matched in linear time (RE2).

``killmatchingjobs:REGEX`` runs on the dispatcher's reactor thread, over every job
of the user: Python's backtracking ``re`` lets a pattern such as ``^(a+)+$`` take
seconds (exponential in the text's length).  RE2 has no backtracking, so matching
is linear in the text; the pattern's own length is bounded too.
"""

from __future__ import annotations

from typing import Any

import re2

#: Longest pattern accepted, in bytes (UTF-8).
MAX_PATTERN_BYTES = 1_000
#: Memory RE2 may use for one compiled pattern (its default); larger ones are refused.
MAX_PATTERN_MEMORY = 8 << 20


class PatternError(ValueError):
    """A pattern that cannot be used; the text is one line for the user."""


def compile_user_pattern(pattern: str) -> Any:
    """Compile ``pattern`` with RE2, or raise :class:`PatternError` saying why not."""
    size = len(pattern.encode("utf-8", "surrogatepass"))
    if size > MAX_PATTERN_BYTES:
        raise PatternError(
            f"the regular expression is {size} bytes, more than the limit of {MAX_PATTERN_BYTES}"
        )
    options = re2.Options()
    options.log_errors = False  # RE2 would print each refused pattern on stderr
    options.max_mem = MAX_PATTERN_MEMORY
    try:
        return re2.compile(pattern, options=options)
    except re2.error as e:
        detail = e.args[0] if e.args else ""
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise PatternError(
            f"bad regular expression {pattern!r}: {' '.join(str(detail).split())} "
            "(RE2 syntax: lookarounds and backreferences are not supported)"
        ) from None
