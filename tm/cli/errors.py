"""What the command-line programs share without Twisted: failures as one line, and running
the text commands' coroutines against the TMS's Unix socket."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # the everyday path imports neither typing nor collections
    from collections.abc import Awaitable, Callable, Coroutine, Generator
    from typing import Any, TypeVar

    T = TypeVar("T")


class CLIError(Exception):
    """A failure to report as one line, with the exit status to use."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Ready:
    """An awaitable whose value is already there."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # pragma: no cover - makes this a generator that never suspends


def blocking_call(call: Callable[..., dict]) -> Callable[..., Awaitable[dict]]:
    """``call`` (a blocking ``call(name, **kw) -> dict``) as the awaitable ``call`` of
    :meth:`tm.textcommands.TextCommand.run`."""

    def awaitable(name: str, **kw: Any) -> Awaitable[dict]:
        return _Ready(call(name, **kw))

    return awaitable


def run_now(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end, here: everything it awaits must be ready (no loop)."""
    try:
        coroutine.send(None)
    except StopIteration as end:
        return end.value
    coroutine.close()
    raise RuntimeError("the coroutine waited for something that was not ready")


def report(prog: str, main: Callable[[], int]) -> int:
    """Run ``main``; every failure of the fast path becomes one line on stderr."""
    from tm import localsocket

    try:
        return main()
    except SystemExit as e:  # argparse after --help, the Twisted path's task.react
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except CLIError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return e.status
    except localsocket.RemoteError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except localsocket.LinkLost as e:
        print(f"{prog}: {e}; see `hConnect lswjobs` before you try again", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return reader_gone()
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"{prog}: {e.strerror or e.__class__.__name__}{where}", file=sys.stderr)
        return 1
    except Exception as e:  # the last line of defence: one line, never a traceback
        print(
            f"{prog}: internal error ({e.__class__.__name__}: {e}); please report it",
            file=sys.stderr,
        )
        return 1


def leave(status: int) -> None:
    """End the command with ``status`` at once: its output flushed, then ``os._exit``.

    The interpreter's own teardown (every module imported, freed one by one) costs about
    6 ms of CPU after the fast path's imports, as much as the command's whole exchange with
    its TMS; nothing of the fast path needs it (no atexit handler, no file left open but
    the standard streams, flushed here)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = reader_gone()
    except OSError:
        status = status or 1
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(status)


def reader_gone() -> int:
    """The reader of our output went away (hConnect lswjobs | head): stop quietly, as cat does;
    the exit status of a process killed by SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the final flush must not fail again
    except OSError:
        pass
    return 141
