"""Stand-ins for the executor's unit tests: a spawner that records spawns and plays exits, a
pool whose work runs only when the test says so, and a dispatcher link that records calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, error
from twisted.python.failure import Failure

from tm.jobsign import JobKey

#: Above Linux's highest possible pid (PID_MAX_LIMIT, 2**22): signals to these find nobody.
FAKE_PID_BASE = 5_000_000


@dataclass
class FakeTransport:
    pid: int


@dataclass
class Spawn:
    proto: Any
    executable: str
    args: list[str]
    env: dict[str, str]
    child_fds: dict[int, Any]
    transport: FakeTransport

    def exit(self, code: int = 0) -> None:
        """Play the process's exit with ``code``."""
        if code == 0:
            self.proto.processExited(Failure(error.ProcessDone(0)))
        else:
            self.proto.processExited(Failure(error.ProcessTerminated(exitCode=code)))


class FakeSpawner:
    """``spawnProcess`` that records each spawn; ``fail_with`` makes the next spawns raise."""

    def __init__(self) -> None:
        self.spawns: list[Spawn] = []
        self.fail_with: BaseException | None = None
        self.exit_at_once = False

    def spawnProcess(
        self,
        proto: Any,
        executable: str,
        args: list[str],  # noqa: N802
        env: dict[str, str] | None = None,
        childFDs: Any = None,  # noqa: N803
        **kw: Any,
    ) -> FakeTransport:
        if self.fail_with is not None:
            raise self.fail_with
        transport = FakeTransport(pid=FAKE_PID_BASE + len(self.spawns) + 1)
        spawn = Spawn(
            proto, executable, list(args), dict(env or {}), dict(childFDs or {}), transport
        )
        self.spawns.append(spawn)
        # As Twisted does: the protocol is connected before the process is registered for
        # reaping, which reports an exit that already happened at once.
        proto.makeConnection(transport)
        if self.exit_at_once:
            spawn.exit(0)
        return transport


@dataclass
class ManualPool:
    """A ``blocking`` whose work waits until the test runs it (as a slow file system would)."""

    queue: list[tuple[Callable[..., Any], tuple[Any, ...], defer.Deferred[Any]]] = field(
        default_factory=list
    )

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.queue.append((f, args, d))
        return d

    def names(self) -> list[str]:
        return [f.__name__ for f, _, _ in self.queue]

    def run(self, index: int = 0) -> None:
        """Run one queued piece of work and fire its Deferred with its outcome."""
        f, args, d = self.queue.pop(index)
        try:
            result = f(*args)
        except BaseException:
            d.errback(Failure())
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.queue:
            self.run()


class FakeLink:
    """The executor's dispatcher link: records calls; each answer is a Deferred the test fires,
    or ``answer`` (a callable of the command and arguments) answers at once."""

    def __init__(self) -> None:
        self.connected = True
        self.calls: list[tuple[str, dict[str, Any], defer.Deferred[Any]]] = []
        self.answer: Callable[[str, dict[str, Any]], Any] | None = None

    async def call(self, command: type, **kw: Any) -> Any:
        name = command.commandName.decode()  # type: ignore[attr-defined]
        d: defer.Deferred[Any] = defer.Deferred()
        self.calls.append((name, kw, d))
        if self.answer is not None:
            return self.answer(name, kw)
        return await d

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, kw, _ in self.calls if n == name]

    def stop(self) -> None:
        self.connected = False


def signed_order(key: JobKey, user: str, fields: dict[str, Any], now: float) -> dict[str, Any]:
    """A start order's fields as the dispatcher sends them for a job that ``user``'s TMS
    submitted: its environment sealed, its spec signed (tm/jobsign.py)."""
    order = dict(fields)
    order.setdefault("uuid", "00000000-0000-0000-0000-000000000007")
    order["user"] = user
    order["env"] = key.seal(user, order["env"])
    order["signed_at"] = float(int(now))
    signer = key.submission(user, order["cwd"], order["umask"], order["env"], order["signed_at"])
    order["signature"] = signer.sign(order)
    return order
