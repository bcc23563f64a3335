"""Batched deliveries: the deductions of deliveries arriving together are decided in one inbox
transaction (wallet/inbox.py `deduct_many`) instead of one each.

`InboxWindow` stands where wallet/delivery.py expects the inbox (`deduct`, `park`): each delivery
still takes its own steps (signature, parsing, logging, metrics, crash points, callback, its own
Verdict, settled on its own by wallet/consumer.py); only the `deduct` calls are gathered. A window
is flushed when it holds `size` deliveries, when no delivery joined it during the last event-loop
ticks (so a lone payment waits for nobody), or `linger` seconds after its first one, whichever
comes first. Every delivery of a window gets its own Decision; if the transaction fails, every one
gets the same exception (DatabaseUnavailable: each holds, then is requeued; the inbox, committed
or not as a whole, guards against a second deduction).

Each message is still acked on its own (wallet/consumer.py settle): an ack is one frame with no
reply, and a multiple-ack is only safe when every lower unsettled tag on the channel is an ack
too, while a window's verdicts (requeue, dead-letter, parked) and callback answers come back in
any order; tracking that would buy a few frames per window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from chancepay.core.payment import PaymentMessage
from chancepay.wallet.policy import Decision

# Event-loop ticks without a new delivery after which a window is flushed before its linger: the
# deliveries of one burst from the broker reach the window over a few ticks (aiormq reads frames
# through a queue), a lone one is alone after these.
QUIET_TICKS = 2


class WindowInbox(Protocol):
    async def deduct(self, msg: PaymentMessage, flipped: bool) -> Decision: ...
    async def deduct_many(self, window: Sequence[tuple[PaymentMessage, bool]]) -> list[Decision]: ...
    async def park(self, uuid: str, succeed: bool, delay: float, reason: str) -> None: ...


Pending = tuple[PaymentMessage, bool, "asyncio.Future[Decision]"]


class InboxWindow:
    def __init__(self, inbox: WindowInbox, *, size: int, linger: float) -> None:
        self.inbox = inbox
        self.size = size
        self.linger = linger
        self._window: list[Pending] = []
        self._started = 0.0  # loop time of the window's first delivery
        self._seen = 0  # window size at the last tick
        self._quiet = 0  # ticks in a row without a new delivery
        self._ticking = False
        self._in_flight: set[asyncio.Task[None]] = set()

    async def deduct(self, msg: PaymentMessage, flipped: bool) -> Decision:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        if not self._window:
            self._started, self._seen, self._quiet = loop.time(), 0, 0
        self._window.append((msg, flipped, future))
        if len(self._window) >= self.size:
            self._flush()
        elif not self._ticking:
            self._ticking = True
            loop.call_soon(self._tick)
        return await future

    async def park(self, uuid: str, succeed: bool, delay: float, reason: str) -> None:
        await self.inbox.park(uuid, succeed, delay, reason)

    def _tick(self) -> None:
        self._ticking = False
        if not self._window:
            return
        loop = asyncio.get_running_loop()
        self._quiet = self._quiet + 1 if len(self._window) == self._seen else 0
        self._seen = len(self._window)
        if self._quiet >= QUIET_TICKS or loop.time() - self._started >= self.linger:
            self._flush()
        else:
            self._ticking = True
            loop.call_soon(self._tick)

    def _flush(self) -> None:
        window, self._window = self._window, []
        if window:
            task = asyncio.create_task(self._decide(window))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _decide(self, window: list[Pending]) -> None:
        try:
            if len(window) == 1:
                msg, flipped, _ = window[0]
                decisions = [await self.inbox.deduct(msg, flipped)]
            else:
                decisions = await self.inbox.deduct_many([(msg, flipped) for msg, flipped, _ in window])
        except asyncio.CancelledError:
            for _, _, future in window:
                future.cancel()
            raise
        except Exception as exc:  # every delivery of the window gets the failure, none is left waiting
            for _, _, future in window:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), decision in zip(window, decisions, strict=True):
            if not future.done():
                future.set_result(decision)
