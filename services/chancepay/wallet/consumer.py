"""The wallet's AMQP side: the connection (opened with retries at start-up, fatal when lost
later), the consumer, and `settle`, the one place a delivery is acked, requeued or rejected. What
becomes of a delivery is wallet/delivery.py's Verdict; this module only carries it out."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from chancepay.core import topology
from chancepay.core.broker import close_quietly, connect_any, open_with_retry
from chancepay.core.logging import get_logger
from chancepay.core.runner import FatalError
from chancepay.core.waiting import STARTUP_WAIT_SECONDS, Dependency
from chancepay.wallet.policy import Action, Verdict

CONSUME_TAG = "[FAILED TO CONSUME FROM MQ]"
PROCESS_TAG = "[FAILED TO PROCESS MESSAGE]"
BUG_HOLD_SECONDS = 1.0  # before a delivery whose handling raised is handed back

Handler = Callable[[bytes, Mapping[str, Any] | None, str | None], Awaitable[Verdict]]


async def settle(channel: Any, tag: Any, action: Action) -> None:
    """Carry out a delivery's final Action on its channel."""
    if action in (Action.ACK, Action.REJECTED):
        await channel.basic_ack(tag)
    elif action is Action.REQUEUE:
        await channel.basic_nack(tag, requeue=True)
    elif action is Action.DEAD_LETTER:
        await channel.basic_reject(tag, requeue=False)
    else:
        raise ValueError(f"{action} does not settle a delivery")


class Consumer:
    def __init__(
        self,
        urls: list[str],
        handle: Handler,
        *,
        prefetch: int,
        shutdown_grace: float,
        on_connect_failure: Callable[[], None] | None = None,
        log: Any = None,
    ) -> None:
        # Several URLs are the nodes of one cluster: start at a random one, so replicas spread out.
        self.urls = urls
        self.start = random.randrange(len(urls))
        self.handle = handle
        self.prefetch = prefetch
        self.shutdown_grace = shutdown_grace
        self.on_connect_failure = on_connect_failure
        self.log = log or get_logger()
        # Failures to reach the broker are "waiting" until it was first reached (core/waiting.py).
        self.broker = Dependency("broker", STARTUP_WAIT_SECONDS)
        self.connection: Any = None
        self.channel: Any = None
        self.stats_channel: Any = None
        self.consumer_tag: str | None = None
        self.in_flight: set[asyncio.Task[Any]] = set()
        # Called with the channel once the topology is declared (core/durability.py); a refusal
        # (CannotProceed) it raises ends the retries.
        self.on_declared: Callable[[Any], None] | None = None

    async def on_message(self, message: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        tag = message.delivery.delivery_tag
        props = message.header.properties
        try:
            verdict = await self.handle(bytes(message.body), props.headers, props.message_id)
            await settle(self.channel, tag, verdict.action)
        except Exception as exc:
            # A bug, or the channel or connection gone mid-delivery: say so, and hand the message
            # back after a short hold (if the channel is gone, the broker redelivers it anyway). The
            # hold keeps a bug that fails every delivery from spinning the queue; on RabbitMQ 4 each
            # requeue counts against the delivery limit, so such a message ends in the DLQ, kept.
            self.log.error(PROCESS_TAG, error=repr(exc), requeue_in_seconds=BUG_HOLD_SECONDS)
            await asyncio.sleep(BUG_HOLD_SECONDS)
            try:
                await settle(self.channel, tag, Action.REQUEUE)
            except Exception:
                pass
        finally:
            self.in_flight.discard(task)

    # ------------------------------------------------------------------ connection
    async def connect(self) -> None:
        """One attempt: connect, declare the topology, set the prefetch window."""
        connection = await connect_any(self.urls, start=self.start)
        try:
            channel = await connection.channel()
            await topology.declare(channel)
            if self.on_declared is not None:
                self.on_declared(channel)
            await channel.basic_qos(prefetch_count=self.prefetch)
            stats_channel = await connection.channel()
        except BaseException:
            await close_quietly(connection)
            raise
        self.connection, self.channel, self.stats_channel = connection, channel, stats_channel

    def broker_ready(self) -> bool:
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self.channel is not None
            and not self.channel.is_closed
        )

    async def open_channel(self) -> Any:
        """Another channel on the consumer's connection (the dead-letter mover's)."""
        return await self.connection.channel()

    async def dlq_depth(self) -> int | None:
        try:
            if self.stats_channel is None or self.stats_channel.is_closed:
                if self.connection is None or self.connection.is_closed:
                    return None
                self.stats_channel = await self.connection.channel()
            ok = await asyncio.wait_for(self.stats_channel.queue_declare(topology.DLQ, passive=True), timeout=2)
            return int(ok.message_count)
        except Exception:
            return None

    # ------------------------------------------------------------------ consuming
    async def consume_forever(self, stop: asyncio.Event) -> None:
        if not await open_with_retry(
            stop, self.connect, log=self.log, tag=CONSUME_TAG, broker=self.broker, on_failure=self.on_connect_failure
        ):
            return
        ok = await self.channel.basic_consume(topology.QUEUE, self.on_message, no_ack=False)
        self.consumer_tag = ok.consumer_tag
        self.log.info("wallet consuming", queue=topology.QUEUE, prefetch=self.prefetch)
        closed = asyncio.ensure_future(self.connection.closing)
        try:
            await self._watch(closed, stop)
            await self._drain()
        finally:
            closed.cancel()
            await close_quietly(self.connection)

    async def _watch(self, closed: asyncio.Future[Any], stop: asyncio.Event) -> None:
        """Until `stop`: a lost connection or a cancelled consumer is fatal (the supervisor restarts us)."""
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                await asyncio.wait({closed, stop_wait}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    return
                if closed.done() or self.channel.is_closed:
                    self.log.error(CONSUME_TAG, error="broker connection or channel closed")
                    raise FatalError("broker connection closed")
                if self.consumer_tag not in self.channel.consumers:
                    # The broker cancelled our consumer (queue deleted): restart and declare again.
                    self.log.error(CONSUME_TAG, error="the broker cancelled the consumer")
                    raise FatalError("consumer cancelled by the broker")
        finally:
            stop_wait.cancel()

    async def _drain(self) -> None:
        """Graceful stop: take no new deliveries, finish the ones in flight."""
        try:
            await asyncio.wait_for(self.channel.basic_cancel(self.consumer_tag), timeout=2)
        except Exception:
            pass
        if self.in_flight:
            await asyncio.wait(set(self.in_flight), timeout=self.shutdown_grace - 2)
