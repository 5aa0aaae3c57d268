"""Logs that stay bounded: rate-limited problem lines, and twistd log files that rotate and expire.

Anyone who can reach a port can make a daemon log: every line a peer can cause goes
through :class:`ProblemLog`, which writes the first few lines of each kind and peer, then
one summary count per period.  And twistd's own log file rotates at 1 MB but never deletes
old files, so :func:`bounded_log_observer` gives twistd a file that keeps a bounded number
of them.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.logger import ILogObserver, Logger, textFileLogObserver
from twisted.python import logfile

#: Lines of one kind from one peer written per period before they are only counted.
BURST = 5
#: Seconds of a period; the count of what was not written follows at its end.
PERIOD = 60.0
#: Distinct (kind, peer) pairs tracked at once; beyond, peers share one entry per kind.
MAX_KEYS = 1000

#: A daemon's log file rotates at this size and keeps this many old files (twistd's own
#: default rotates at 1 MB and keeps every old file for ever); $TM_LOG_ROTATE_BYTES and
#: $TM_LOG_KEEP_FILES change them.
LOG_ROTATE_BYTES = 10 * 1000 * 1000
LOG_KEEP_FILES = 5


@dataclass
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0
    first_fields: dict[str, Any] = field(default_factory=dict)


class ProblemLog:
    """Rate-limited warnings about what peers do wrong: one line per event for the first
    :data:`BURST` events of a (kind, peer) pair in a period, then a count at the period's end.

    ``clock`` times the periods; without one, a pair writes its first ``burst`` lines and
    then one line per ``10 ** n`` events.
    """

    def __init__(
        self,
        log: Logger,
        clock: Any,
        burst: int = BURST,
        period: float = PERIOD,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.log = log
        self.clock: Any = clock  # Any: mypy cannot bind zope interface methods
        self.burst = burst
        self.period = period
        self.max_keys = max_keys
        self._windows: dict[tuple[str, str], _Window] = {}
        self._summary: Any = None
        #: Every event, written or not, by kind (for tests and the manhole).
        self.counts: dict[str, int] = {}

    def emit(self, kind: str, peer: str, text: str, **fields: Any) -> None:
        """One event: ``text`` is a Logger format string that may use ``{kind}``,
        ``{peer}`` and ``fields``."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        key = (kind, peer)
        if key not in self._windows and len(self._windows) >= self.max_keys:
            key = (kind, "*")
        now = self.clock.seconds() if self.clock is not None else 0.0
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(started=now)
        if window.written < self.burst:
            window.written += 1
            self.log.warn(text, kind=kind, peer=key[1], **fields)
            return
        window.suppressed += 1
        if self.clock is None:
            n = window.suppressed
            if n >= 10 and str(n).rstrip("0") == "1":  # 10, 100, 1000, ...
                self._write_summary(key, window, None)
            return
        if self._summary is None or not self._summary.active():
            self._summary = self.clock.callLater(
                max(0.0, window.started + self.period - now), self._end_periods
            )

    def _write_summary(self, key: tuple[str, str], window: _Window, seconds: float | None) -> None:
        self.log.warn(
            "{kind} from {peer}: {count} more not logged{since}",
            kind=key[0],
            peer=key[1],
            count=window.suppressed,
            since=f" in the last {seconds:.0f} s" if seconds is not None else " so far",
        )

    def _end_periods(self) -> None:
        assert self.clock is not None
        self._summary = None
        now = self.clock.seconds()
        pending = False
        for key, window in list(self._windows.items()):
            if now - window.started < self.period:
                pending = pending or window.suppressed > 0
                continue
            if window.suppressed:
                self._write_summary(key, window, now - window.started)
            del self._windows[key]
        if pending:
            first = min(w.started for w in self._windows.values() if w.suppressed)
            self._summary = self.clock.callLater(
                max(0.0, first + self.period - now), self._end_periods
            )

    def stop(self) -> None:
        """Cancel the pending summary (its counts are written now)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        for key, window in self._windows.items():
            if window.suppressed:
                self._write_summary(key, window, None)
        self._windows.clear()


_shared: weakref.WeakKeyDictionary[Any, ProblemLog] = weakref.WeakKeyDictionary()
_unclocked: ProblemLog | None = None


def problem_log(clock: Any) -> ProblemLog:
    """The process's problem log for ``clock`` (one per reactor, so limits hold across
    every connection of a daemon)."""
    global _unclocked
    if clock is None:
        if _unclocked is None:
            _unclocked = ProblemLog(Logger(namespace="tm.peers"), None)
        return _unclocked
    found = _shared.get(clock)
    if found is None:
        found = _shared[clock] = ProblemLog(Logger(namespace="tm.peers"), clock)
    return found


# --- twistd's log file ------------------------------------------------------------------


def bounded_log_file(
    path: str, rotate_bytes: int = LOG_ROTATE_BYTES, keep: int = LOG_KEEP_FILES
) -> logfile.LogFile:
    """A log file that rotates at ``rotate_bytes`` and keeps ``keep`` old files."""
    directory, name = os.path.split(os.path.abspath(path))
    return logfile.LogFile(name, directory, rotateLength=rotate_bytes, maxRotatedFiles=keep)


def twistd_log_path(twistd_options: Any) -> str | None:
    """The file twistd would log to with these (parent) options, or None when it logs to
    stdout or syslog, or was given its own observer (``--logger``)."""
    if twistd_options is None:
        return None
    get = twistd_options.get
    if get("syslog") or get("logger"):
        return None
    name = get("logfile")
    if name == "-" or (get("nodaemon") and not name):
        return None
    return name or "twistd.log"


class BoundedLogApplication(service.MultiService):
    """Holds a daemon's service; when twistd attaches it to its Application, it also gives
    the Application a log observer writing to a bounded :func:`bounded_log_file` (twistd
    uses an Application's ``ILogObserver`` in place of its own unbounded file)."""

    def __init__(self, inner: service.Service, log_path: str | None) -> None:
        super().__init__()
        self.inner = inner
        self.log_path = log_path
        inner.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> Any:  # noqa: N802 - Twisted's API
        if self.log_path is not None and hasattr(parent, "getComponent"):
            if parent.getComponent(ILogObserver, None) is None:
                log_file: Any = bounded_log_file(  # a file-like LogFile
                    self.log_path,
                    int(os.environ.get("TM_LOG_ROTATE_BYTES") or LOG_ROTATE_BYTES),
                    int(os.environ.get("TM_LOG_KEEP_FILES") or LOG_KEEP_FILES),
                )
                parent.setComponent(ILogObserver, textFileLogObserver(log_file))
        return super().setServiceParent(parent)


def with_bounded_log(inner: service.Service, options: Any) -> service.Service:
    """``inner`` ready for twistd: its log file (if any) rotates and old files expire."""
    return BoundedLogApplication(inner, twistd_log_path(getattr(options, "parent", None)))
