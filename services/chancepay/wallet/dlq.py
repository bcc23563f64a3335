"""The dead-letter mover, shaped like the scanner: `move_dead_letters_once` moves what waits in
chancepay.payments.dlq into the wallet's `dead_letter` table (core/deadletters.py: each message
committed before it is acked); `move_dead_letters_forever` repeats it until the role stops."""

from __future__ import annotations

import asyncio
import random
from typing import Any, Protocol

from chancepay.core import deadletters, migrations, topology
from chancepay.core.backoff import Backoff
from chancepay.core.db import Database, DatabaseUnavailable
from chancepay.core.logging import get_logger
from chancepay.core.waiting import forever

# Messages per pass, and the pause when the queue is empty.
MOVE_BATCH = 100
MOVE_IDLE_SECONDS = 1.0


class Broker(Protocol):
    """The consumer's connection: whether it is up, and a channel of its own on it."""

    def broker_ready(self) -> bool: ...
    async def open_channel(self) -> Any: ...


class DeadLetterMover:
    def __init__(self, db: Database, broker: Broker, *, rng: random.Random | None = None, log: Any = None) -> None:
        self.db = db
        self.broker = broker
        self.rng = rng or random.Random()
        self.log = log or get_logger()
        self.channel: Any = None

    async def move_dead_letters_once(self, stop: asyncio.Event | None = None) -> int:
        """Returns the messages moved; 0 while not connected."""
        if not self.broker.broker_ready():
            return 0
        # Take a message only when it can be stored: a failed insert requeues it, and each requeue
        # counts against the DLQ's delivery limit (20 by default on RabbitMQ 4.0). So not before
        # migrate made the table (a rolling update), nor while the database does not answer.
        if not await self.db.schema_ready(migrations.latest(migrations.WALLET)):
            return 0
        if self.channel is None or self.channel.is_closed:
            self.channel = await self.broker.open_channel()

        def held(exc: BaseException, attempt: int, delay: float) -> None:
            self.log.error(
                deadletters.MOVE_TAG,
                queue=topology.DLQ,
                error=repr(exc)[:500],
                attempt=attempt,
                held=True,
                retry_in_seconds=round(delay, 2),
                **self._waiting(exc),
            )

        return await deadletters.move_batch(self.channel, self.db, MOVE_BATCH, on_store_failure=held, stop=stop)

    async def move_dead_letters_forever(self, stop: asyncio.Event) -> None:
        async def once() -> int:
            moved = await self.move_dead_letters_once(stop)
            if moved:
                self.log.info("dead letters moved into the dead_letter table", messages=moved)
            return moved

        def failed(exc: BaseException, delay: float) -> None:  # database or broker away: they wait in the queue
            if self.broker.broker_ready():
                self.log.error(
                    deadletters.MOVE_TAG,
                    queue=topology.DLQ,
                    error=repr(exc)[:500],
                    retry_in_seconds=round(delay, 2),
                    **self._waiting(exc),
                )

        await forever(
            once,
            stop,
            full=MOVE_BATCH,
            idle=MOVE_IDLE_SECONDS,
            backoff=Backoff(0.5, 10.0, rng=self.rng),
            on_failure=failed,
        )

    def _waiting(self, exc: BaseException) -> dict[str, Any]:
        """`"waiting": true` for a database not reached yet since start (core/waiting.py)."""
        return self.db.dependency.fields() if isinstance(exc, DatabaseUnavailable) else {}
