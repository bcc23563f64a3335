"""The wallet consumer: at-least-once delivery made exactly-once-deducted by the inbox.

For each delivery:
1. verify its signature and parse it; unsigned, wrongly signed or unparseable ->
   [PAYLOAD_CORRUPTION_ALERT] (with the uuid when one is readable), no inbox row, reject without
   requeue (the queue dead-letters it to chancepay.payments.dlq). Only the scanner holds the key,
   so nothing is deducted for a message nobody published from the outbox;
2. flip the coin and insert the inbox row already final (INSERT IGNORE, one statement, one
   commit). The decision is durable before anything leaves the wallet; a redelivery finds the
   row there and is not deducted again (its stored result is sent instead);
3. call the orchestrator back with the stored result (retries with capped, jittered back-off);
4. ack. A callback that still fails is requeued for a later delivery, up to
   CHANCEPAY_WALLET_MAX_DELIVERIES; after that the message is acked and the reconciler heals
   the request from the inbox.

Deliveries are counted by the wallet itself (the inbox row's `deliveries` column), never by the
broker's x-delivery-count: RabbitMQ 4.3 stopped counting a requeueing basic.nack there, and a
count the broker can redefine must not decide when a payment is handed to the reconciler.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import random
from decimal import Decimal
from typing import Any

import aiohttp
import aiormq
import orjson

from chancepay.core import signing, sql, topology
from chancepay.core.backoff import half_jitter
from chancepay.core.broker import close_quietly, open_with_retry
from chancepay.core.codec import InvalidPayload, PaymentMessage, decode_message, readable_uuid
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database
from chancepay.core.logging import bound, get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.runner import FatalError

CORRUPTION_TAG = "[PAYLOAD_CORRUPTION_ALERT]"
CALLBACK_TAG = "[FAILED TO CALLBACK FROM WALLET]"
CONSUME_TAG = "[FAILED TO CONSUME FROM MQ]"
# Back-off before requeueing a message the database could not take (see db_retry_delay).
DB_RETRY_MIN_SECONDS = 0.5
DB_RETRY_MAX_SECONDS = 15.0


class Deduction(enum.Enum):
    NEW = "new"  # this delivery decided the result
    DUPLICATE = "duplicate"  # decided by an earlier delivery; not deducted again
    CONFLICT = "conflict"  # same uuid, different cusId/amount: corrupt


@dataclasses.dataclass(frozen=True)
class Decision:
    kind: Deduction
    succeed: bool | None
    deliveries: int = 1  # deliveries of this uuid the inbox has seen, this one included


class CallbackResult(enum.Enum):
    DELIVERED = "delivered"
    RETRYABLE = "retryable"  # network, timeout, 5xx, 401: a later delivery may succeed
    REJECTED = "rejected"  # 404/409/422: retrying cannot help


def db_retry_delay(outage_seconds: float) -> float:
    """How long to hold a message the database could not take before requeueing it: as long as
    the outage has lasted so far, within [0.5 s, 15 s]. A blip costs half a second; a long
    outage is probed every 15 s instead of spinning every message through the queue."""
    return min(DB_RETRY_MAX_SECONDS, max(DB_RETRY_MIN_SECONDS, outage_seconds))


def after_callback(result: CallbackResult, deliveries: int, max_deliveries: int) -> str:
    """The ack policy once the result is stored: "ack" or "requeue" (a later delivery retries the
    callback). `deliveries` is the wallet's own count of deliveries of this uuid."""
    if result is CallbackResult.RETRYABLE and deliveries < max_deliveries:
        return "requeue"
    return "ack"


def backoff_delays(attempts: int, base: float, cap: float = 5.0, rng: random.Random | None = None) -> list[float]:
    """Full-jitter capped exponential back-off between `attempts` tries (attempts - 1 sleeps)."""
    rng = rng or random.Random()
    return [rng.uniform(0, min(cap, base * 2**i)) for i in range(max(0, attempts - 1))]


class Wallet:
    def __init__(
        self, settings: Settings, db: Database, metrics: Metrics, crash: CrashPoints, http: aiohttp.ClientSession
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.crash = crash
        self.http = http
        self.callback_base = settings.orchestrator_url.rstrip("/")
        self.log = get_logger()
        self.rng = random.Random()
        self.connection: Any = None
        self.channel: Any = None
        self.stats_channel: Any = None
        self.consumer_tag: str | None = None
        self.in_flight: set[asyncio.Task[Any]] = set()
        # Start of the current database outage (monotonic seconds), None while deductions succeed.
        self.db_down_since: float | None = None

    # ------------------------------------------------------------------ deduction
    def flip(self) -> bool:
        return self.rng.random() < self.settings.wallet_success_rate

    async def deduct(self, msg: PaymentMessage) -> Decision:
        """Decide once, durably. The coin is flipped first and the inbox row inserted already
        final, in one statement; the flip only counts if that insert creates the row. If the uuid
        is already there (a redelivery), the stored decision wins and nothing is deducted again."""
        decided = self.flip()

        async def decide(cur: Any) -> Decision:
            await cur.execute(sql.INSERT_INBOX_DECIDED, (msg.uuid, msg.cus_id, msg.amount, decided))
            self.crash.hit("wallet.after_inbox_insert")
            if cur.rowcount == 1:
                return Decision(Deduction.NEW, decided, 1)
            await cur.execute(sql.LOCK_INBOX, (msg.uuid,))
            cus_id, amount, succeed, deliveries = await cur.fetchone()
            if cus_id != msg.cus_id or Decimal(amount) != msg.amount:
                return Decision(Deduction.CONFLICT, None if succeed is None else bool(succeed), int(deliveries))
            await cur.execute(sql.COUNT_INBOX_DELIVERY, (msg.uuid,))
            if succeed is not None:
                return Decision(Deduction.DUPLICATE, bool(succeed), int(deliveries) + 1)
            # A pending row (written by an older version, or by hand): finalize it now.
            await cur.execute(sql.FINALIZE_INBOX, (decided, msg.uuid))
            return Decision(Deduction.NEW, decided, int(deliveries) + 1)

        return await self.db.run(decide)

    # ------------------------------------------------------------------ callback
    async def callback(self, uuid: str, succeed: bool) -> CallbackResult:
        delays = backoff_delays(self.settings.callback_attempts, self.settings.callback_backoff, rng=self.rng)
        for attempt in range(1, self.settings.callback_attempts + 1):
            try:
                async with self.http.post(
                    f"{self.callback_base}/internal/payments/{uuid}/result",
                    data=orjson.dumps({"succeed": succeed}),
                    headers={"Content-Type": "application/json"},
                ) as response:
                    status = response.status
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                result, reason = CallbackResult.RETRYABLE, f"{type(exc).__name__}: {exc}"
            else:
                if status == 200:
                    self.metrics.wallet_callbacks.inc()
                    return CallbackResult.DELIVERED
                reason = f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
                retryable = status >= 500 or status in (401, 408, 429)
                result = CallbackResult.RETRYABLE if retryable else CallbackResult.REJECTED
            self.metrics.wallet_callback_failures.inc()
            final = result is CallbackResult.REJECTED or attempt == self.settings.callback_attempts
            self.log.error(CALLBACK_TAG, reason=reason, attempt=attempt, succeed=succeed, will_retry=not final)
            if final:
                return result
            await asyncio.sleep(delays[attempt - 1])
        return CallbackResult.RETRYABLE  # pragma: no cover - the loop always returns

    # ------------------------------------------------------------------ one delivery
    async def handle(self, message: Any) -> None:
        tag = message.delivery.delivery_tag
        body = bytes(message.body)
        unsigned = signing.verify(body, message.header.properties.headers, self.settings.message_keys)
        if unsigned is not None:
            await self._dead_letter(message, f"signature: {unsigned}")
            return
        try:
            msg = decode_message(body)
        except InvalidPayload as exc:
            await self._dead_letter(message, str(exc))
            return
        with bound(uuid=msg.uuid):
            try:
                decision = await self.deduct(msg)
            except Exception as exc:
                # Database down, timing out or not migrated yet: nothing was decided. Hold the
                # message, then requeue it. The hold grows with the outage (not with the broker's
                # delivery count), so a long outage neither spins nor dead-letters valid payments.
                self.metrics.db_unavailable.inc()
                now = asyncio.get_running_loop().time()
                if self.db_down_since is None:
                    self.db_down_since = now
                delay = half_jitter(db_retry_delay(now - self.db_down_since), self.rng)
                self.log.error("[FAILED TO DEDUCT IN WALLET]", error=str(exc) or repr(exc), retry_in_seconds=round(delay, 2))
                await asyncio.sleep(delay)
                await self.channel.basic_nack(tag, requeue=True)
                return
            self.db_down_since = None
            if decision.kind is Deduction.CONFLICT:
                await self._dead_letter(message, "uuid already in the inbox with a different cusId or amount")
                return
            outcome = "duplicate" if decision.kind is Deduction.DUPLICATE else ("succeeded" if decision.succeed else "failed")
            self.metrics.wallet_messages.labels(outcome=outcome).inc()
            self.log.info("deduction decided", outcome=outcome, succeed=decision.succeed)
            self.crash.hit("wallet.after_finalize")
            assert decision.succeed is not None
            result = await self.callback(msg.uuid, decision.succeed)
            self.crash.hit("wallet.after_callback")
            if after_callback(result, decision.deliveries, self.settings.wallet_max_deliveries) == "requeue":
                await self.channel.basic_nack(tag, requeue=True)
                return
            if result is CallbackResult.RETRYABLE:
                self.log.error(
                    CALLBACK_TAG,
                    reason="giving up on this message; the inbox holds the result and `chancepay reconcile` will finalize the request",
                    deliveries=decision.deliveries,
                    succeed=decision.succeed,
                )
            elif result is CallbackResult.REJECTED:
                self.log.error(
                    CALLBACK_TAG,
                    reason="the orchestrator rejected the result (unknown payment or a different stored result); acked, needs an operator",
                    succeed=decision.succeed,
                )
            await self.channel.basic_ack(tag)

    async def _dead_letter(self, message: Any, reason: str) -> None:
        self.metrics.wallet_messages.labels(outcome="corrupt").inc()
        props = message.header.properties
        uuid = readable_uuid(bytes(message.body), props.message_id)
        self.log.error(
            CORRUPTION_TAG,
            **({"uuid": uuid} if uuid else {}),
            reason=reason,
            message_id=props.message_id,
            body_preview=bytes(message.body[:256]).decode("utf-8", "replace"),
            body_bytes=len(message.body),
        )
        await self.channel.basic_reject(message.delivery.delivery_tag, requeue=False)

    async def on_message(self, message: Any) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        try:
            await self.handle(message)
        except Exception as exc:
            # Channel or connection gone mid-delivery: the broker redelivers the message.
            self.log.error("[FAILED TO PROCESS MESSAGE]", error=repr(exc))
        finally:
            self.in_flight.discard(task)

    # ------------------------------------------------------------------ lifecycle
    async def connect(self) -> None:
        """One attempt: connect, declare the topology, set the prefetch window."""
        connection = await asyncio.wait_for(aiormq.connect(self.settings.amqp_url), timeout=10)
        try:
            channel = await connection.channel()
            await topology.declare(channel)
            await channel.basic_qos(prefetch_count=self.settings.wallet_prefetch)
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

    async def consume_forever(self, stop: asyncio.Event) -> None:
        if not await open_with_retry(stop, self.connect, log=self.log, tag=CONSUME_TAG):
            return
        ok = await self.channel.basic_consume(topology.QUEUE, self.on_message, no_ack=False)
        self.consumer_tag = ok.consumer_tag
        self.log.info("wallet consuming", queue=topology.QUEUE, prefetch=self.settings.wallet_prefetch)
        closed = asyncio.ensure_future(self.connection.closing)
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                await asyncio.wait({closed, stop_wait}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    break
                if closed.done() or self.channel.is_closed:
                    self.log.error(CONSUME_TAG, error="broker connection or channel closed")
                    raise FatalError("broker connection closed")
                if self.consumer_tag not in self.channel.consumers:
                    # The broker cancelled our consumer (queue deleted): restart and declare again.
                    self.log.error(CONSUME_TAG, error="the broker cancelled the consumer")
                    raise FatalError("consumer cancelled by the broker")
            # Graceful stop: take no new deliveries, finish the ones in flight, then close.
            try:
                await asyncio.wait_for(self.channel.basic_cancel(self.consumer_tag), timeout=2)
            except Exception:
                pass
            if self.in_flight:
                await asyncio.wait(set(self.in_flight), timeout=self.settings.shutdown_grace - 2)
        finally:
            closed.cancel()
            stop_wait.cancel()
            await close_quietly(self.connection)

