"""Start orders batched per reactor turn (issue 13, point 2): the orders of one turn for one
executor and one submission environment go in one ``RunJobs`` (tm/protocol/batches.py), or
in ``RunJob`` when there is one; each order's outcome is handed to its caller as if it had
been sent alone: RunJob's answer, ``JobStartFailed`` with its reason, or the call's error.

An executor that does not know ``RunJobs`` (one of the previous version, still running across
the dispatcher's upgrade) answers it as an unknown command: its orders are then sent again
one by one, and so are its later ones.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from tm.dispatcher.ports import PeerSession
from tm.protocol import batches, commands, records


@dataclass
class _Order:
    arguments: dict[str, Any]  # RunJob's, but ``env``
    deferred: Deferred = field(default_factory=Deferred)


@dataclass
class _Queue:
    session: PeerSession
    #: env_id -> (the environment as RunJob carries it, its orders in the order given)
    by_env: dict[int | None, tuple[Any, list[_Order]]] = field(default_factory=dict)


class StartBatches:
    """The start orders of the current turn, per executor session; sent at the turn's end."""

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._queues: dict[int, _Queue] = {}
        self._scheduled = False
        #: Sessions of executors without RunJobs: their orders go one by one.
        self._singles: weakref.WeakSet[Any] = weakref.WeakSet()
        self.boxes = 0  # RunJob and RunJobs calls sent
        self.orders = 0  # orders they carried

    def order(
        self, session: PeerSession, env_id: int | None, env: Any, arguments: dict[str, Any]
    ) -> Deferred:
        """Queue one start order (``arguments``: RunJob's but ``env``); fires as RunJob's call
        would: with its answer, or failing (``JobStartFailed``, the link's error)."""
        queue = self._queues.get(id(session))
        if queue is None:
            queue = self._queues[id(session)] = _Queue(session)
        _, orders = queue.by_env.setdefault(env_id, (env, []))
        order = _Order(arguments)
        orders.append(order)
        if not self._scheduled:
            self._scheduled = True
            self.reactor.callLater(0, self._flush)
        return order.deferred

    def send_now(self) -> None:
        """Send the orders queued so far now, not at the turn's end: the placements made at
        submission go out right after their commit (tm/dispatcher/atonce.py)."""
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        queues, self._queues = self._queues, {}
        for queue in queues.values():
            for env, orders in queue.by_env.values():
                self._send_all(queue.session, env, orders)

    def _send_all(self, session: PeerSession, env: Any, orders: list[_Order]) -> None:
        if len(orders) == 1 or session in self._singles:
            for order in orders:
                ensureDeferred(self._send_one(session, env, order))
            return
        while orders:
            rows, n = records.fit_to_value(batches.ORDER_FIELDS, orders, lambda o: o.arguments)
            if n == 0:  # one order alone fills a value: it goes as RunJob (a value per field)
                ensureDeferred(self._send_one(session, env, orders[0]))
                n = 1
            elif n == 1:
                ensureDeferred(self._send_one(session, env, orders[0]))
            else:
                ensureDeferred(self._send_batch(session, env, orders[:n], rows))
            orders = orders[n:]

    async def _send_one(self, session: PeerSession, env: Any, order: _Order) -> None:
        self.boxes += 1
        self.orders += 1
        try:
            answer = await session.proto.call(commands.RunJob, env=env, **order.arguments)
        except Exception:
            order.deferred.errback(Failure())
            return
        order.deferred.callback(answer)

    async def _send_batch(
        self, session: PeerSession, env: Any, orders: list[_Order], rows: list[dict]
    ) -> None:
        self.boxes += 1
        self.orders += len(orders)
        try:
            try:
                answer = await session.proto.call(batches.RunJobs, env=env, orders=rows)
            except amp.UnhandledCommand:
                self.log.info("an executor without RunJobs: its start orders go one by one")
                self._singles.add(session)
                for order in orders:
                    ensureDeferred(self._send_one(session, env, order))
                return
            results = answer["results"]
            if len(results) != len(orders):
                raise commands.InvalidRequest(
                    f"the executor answered {len(results)} results to {len(orders)} start orders"
                )
        except Exception:
            failure = Failure()
            for order in orders:
                order.deferred.errback(failure)
            return
        for order, result in zip(orders, results, strict=True):
            if result.get("error") is not None:
                order.deferred.errback(commands.JobStartFailed(result["error"]))
            elif result.get("pid") is None or result.get("started_at") is None:
                # Still starting: asked again alone, that answer waits for the start under way.
                ensureDeferred(self._send_one(session, env, order))
            else:
                order.deferred.callback({"pid": result["pid"], "started_at": result["started_at"]})
