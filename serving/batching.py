"""Micro-batching of routing decisions on the event loop.

Requests that reach the decision in the same turn of the event loop are
decided together: the first schedules a flush with ``loop.call_soon`` and
every request that arrives before it runs joins the batch. A lone request
waits for nothing but that one turn of the loop (microseconds); under load,
requests arrive in bursts and a batch costs far less per prompt than as many
single decisions (:meth:`serving.routing.Routing.decide_many`).

The decision still runs on the event loop thread, as a single decision did:
it is CPU work of about a millisecond at most, and another thread would only
contend for the GIL.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Sequence

from router.decision import Decision
from serving.routing import Constraints

Request = tuple[str, str, Constraints]
DecideMany = Callable[[Sequence[Request]], list]


class DecisionBatcher:
    """``await decide(model, text, constraints)``: one decision, made in a batch with whatever arrived alongside."""

    def __init__(self, decide_many: DecideMany, *, max_batch: int = 64, observe_batch: Callable[[int], None] | None = None):
        self.decide_many = decide_many
        self.max_batch = max_batch  # a burst larger than this is decided in several batches, in arrival order
        self.observe_batch = observe_batch
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Request, asyncio.Future]]] = {}

    async def decide(self, model: str, text: str, constraints: Constraints) -> Decision:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = self._pending.get(loop)
        if pending is None:  # the first of a batch: decide once the requests already runnable have joined
            pending = self._pending[loop] = []
            loop.call_soon(self._flush, loop)
        pending.append(((model, text, constraints), future))
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = self._pending.pop(loop, [])
        for start in range(0, len(pending), self.max_batch):
            self._decide(pending[start:start + self.max_batch])

    def _decide(self, batch: list[tuple[Request, asyncio.Future]]) -> None:
        if self.observe_batch is not None:
            self.observe_batch(len(batch))
        try:
            results = self.decide_many([request for request, _ in batch])
        except Exception as exc:  # noqa: BLE001 - a fault of the batch is every request's fault
            results = [exc] * len(batch)
        for (_, future), result in zip(batch, results):
            if future.done():  # its request was cancelled (the client went away)
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
