"""The wallet consumer: at-least-once delivery made exactly-once-deducted by the inbox.

For each delivery:
1. verify its signature and parse it; unsigned, wrongly signed or unparseable ->
   [PAYLOAD_CORRUPTION_ALERT] (with the uuid when one is readable), no inbox row, reject without
   requeue (the queue dead-letters it to chancepay.payments.dlq). Only the scanner holds the key,
   so nothing is deducted for a message nobody published from the outbox;
2. flip the coin and insert the inbox row already final (INSERT IGNORE, one statement, one
   commit). The decision is durable before anything leaves the wallet; a redelivery finds the
   row there and is not deducted again (its stored result is sent instead);
3. call the orchestrator back with the stored result (CHANCEPAY_CALLBACK_ATTEMPTS quick tries);
4. ack. A result still undelivered is first parked in the wallet's own `pending_callback` table
   (then the message is acked: it holds no prefetch slot while the orchestrator is away), and a
   background loop retries it with a capped, jittered back-off until the orchestrator takes it:
   an orchestrator restart or rolling update heals without the reconciler, and so does a wallet
   restart (the row outlives the process). If even parking fails (database down), the message
   is requeued.

Nothing here reads the broker's x-delivery-count (RabbitMQ 4.3 changed what it counts).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import random
from decimal import Decimal
from typing import Any

import aiohttp
import orjson

from chancepay.core import signing, sql, topology
from chancepay.core.backoff import capped_exponential, half_jitter
from chancepay.core.broker import close_quietly, connect_any, open_with_retry
from chancepay.core.codec import InvalidPayload, PaymentMessage, decode_message, readable_uuid
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database
from chancepay.core.logging import bound, get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.runner import FatalError, sleep_or_stop

CORRUPTION_TAG = "[PAYLOAD_CORRUPTION_ALERT]"
CALLBACK_TAG = "[FAILED TO CALLBACK FROM WALLET]"
CONSUME_TAG = "[FAILED TO CONSUME FROM MQ]"
# The background retrier: rows claimed per pass, how long a claim hides them from other wallets,
# and the pause when nothing is due.
RETRY_BATCH = 100
RETRY_LEASE_SECONDS = 30.0
RETRY_IDLE_SECONDS = 0.5
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


def after_callback(result: CallbackResult) -> str:
    """What the delivery does once its quick tries are over: "ack", or "park" (store the result
    for the background retrier, then ack)."""
    return "park" if result is CallbackResult.RETRYABLE else "ack"


def parked_retry_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Back-off before the next background try of a parked callback after `attempts` failed ones:
    capped exponential with a floor of half the delay (half jitter), so a fleet of wallets
    spreads its retries out but none spins."""
    return half_jitter(capped_exponential(attempts, base, cap), rng)


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
        # Several URLs are the nodes of one cluster: start at a random one, so replicas spread out.
        self.broker_urls = settings.amqp_url_list
        self.broker_start = random.randrange(len(self.broker_urls))
        self.in_flight: set[asyncio.Task[Any]] = set()
        # Start of the current database outage (monotonic seconds), None while deductions succeed.
        self.db_down_since: float | None = None
        self.callback_errors: dict[str, str] = {}  # uuid -> the last failed try's reason

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
    async def callback(self, uuid: str, succeed: bool, tries: int | None = None) -> CallbackResult:
        tries = tries or self.settings.callback_attempts
        delays = backoff_delays(tries, self.settings.callback_backoff, rng=self.rng)
        for attempt in range(1, tries + 1):
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
            final = result is CallbackResult.REJECTED or attempt == tries
            self.callback_errors[uuid] = reason
            self.log.error(CALLBACK_TAG, reason=reason, attempt=attempt, succeed=succeed,
                           will_retry=result is CallbackResult.RETRYABLE)
            if final:
                if result is not CallbackResult.RETRYABLE:
                    self.callback_errors.pop(uuid, None)
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
                self.log.error("[FAILED TO DEDUCT IN WALLET]", error=str(exc) or repr(exc),
                               retry_in_seconds=round(delay, 2))
                await asyncio.sleep(delay)
                await self.channel.basic_nack(tag, requeue=True)
                return
            self.db_down_since = None
            if decision.kind is Deduction.CONFLICT:
                await self._dead_letter(message, "uuid already in the inbox with a different cusId or amount")
                return
            if decision.kind is Deduction.DUPLICATE:
                outcome = "duplicate"
            else:
                outcome = "succeeded" if decision.succeed else "failed"
            self.metrics.wallet_messages.labels(outcome=outcome).inc()
            self.log.info("deduction decided", outcome=outcome, succeed=decision.succeed)
            self.crash.hit("wallet.after_finalize")
            assert decision.succeed is not None
            result = await self.callback(msg.uuid, decision.succeed)
            self.crash.hit("wallet.after_callback")
            if after_callback(result) == "park":
                try:
                    await self.park(msg.uuid, decision.succeed)
                except Exception as exc:
                    # Not even parked (database down): the broker keeps the message; a redelivery
                    # finds the inbox row and tries the callback again.
                    self.log.error(CALLBACK_TAG, reason=f"could not park the result: {exc}", will_retry=True)
                    await self.channel.basic_nack(tag, requeue=True)
                    return
            elif result is CallbackResult.REJECTED:
                self.log.error(
                    CALLBACK_TAG,
                    reason="the orchestrator rejected the result (unknown payment or a different stored result); "
                           "acked, needs an operator",
                    succeed=decision.succeed,
                )
            await self.channel.basic_ack(tag)

    # ------------------------------------------------------------------ parked callbacks
    async def park(self, uuid: str, succeed: bool) -> None:
        delay = parked_retry_delay(1, self.settings.callback_backoff, self.settings.callback_retry_max, self.rng)
        reason = self.callback_errors.pop(uuid, "")
        await self.db.execute(sql.PARK_CALLBACK, (uuid, succeed, int(delay * 1e6), reason[:512]))
        self.log.info("result parked for background retries", succeed=succeed, retry_in_seconds=round(delay, 2))

    async def retry_parked_once(self) -> int:
        """Claim due parked callbacks (SKIP LOCKED + a lease, like the scanner), try each once,
        delete the delivered and rejected ones, reschedule the rest. Returns rows claimed."""
        lease_us = int(RETRY_LEASE_SECONDS * 1e6)

        async def claim(cur: Any) -> list[tuple[str, bool, int]]:
            await cur.execute(sql.CLAIM_CALLBACKS, (RETRY_BATCH,))
            rows = [(r[0], bool(r[1]), int(r[2])) for r in await cur.fetchall()]
            if rows:
                placeholders = ",".join(["%s"] * len(rows))
                await cur.execute(sql.LEASE_CALLBACKS.format(placeholders=placeholders),
                                  (lease_us, *[r[0] for r in rows]))
            return rows

        rows = await self.db.run(claim)
        if not rows:
            return 0

        async def one(uuid: str, succeed: bool) -> CallbackResult:
            with bound(uuid=uuid):
                return await self.callback(uuid, succeed, tries=1)

        results = await asyncio.gather(*(one(u, s) for u, s, _ in rows))
        done = [u for (u, _, _), r in zip(rows, results, strict=True) if r is not CallbackResult.RETRYABLE]
        for (u, succeed, _), r in zip(rows, results, strict=True):
            if r is CallbackResult.REJECTED:
                self.log.error(CALLBACK_TAG, uuid=u, succeed=succeed, reason="the orchestrator rejected the "
                               "result (unknown payment or a different stored result); dropped, needs an operator")
        if done:
            placeholders = ",".join(["%s"] * len(done))
            await self.db.execute(sql.DELETE_CALLBACKS.format(placeholders=placeholders), done)
        again = [(u, a) for (u, _, a), r in zip(rows, results, strict=True) if r is CallbackResult.RETRYABLE]
        if again:
            s = self.settings

            async def reschedule(cur: Any) -> None:
                for uuid, attempts in again:
                    delay = parked_retry_delay(attempts + 1, s.callback_backoff, s.callback_retry_max, self.rng)
                    reason = self.callback_errors.pop(uuid, "")[:512]
                    await cur.execute(sql.RESCHEDULE_CALLBACK, (reason, int(delay * 1e6), uuid))

            await self.db.run(reschedule)
        return len(rows)

    async def retry_forever(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                claimed = await self.retry_parked_once()
                failures = 0
            except Exception as exc:  # database down: parked rows wait, the next pass tries again
                failures += 1
                delay = half_jitter(capped_exponential(failures, 0.5, 10.0), self.rng)
                self.log.error("[FAILED TO REACH DATABASE]", step="read parked callbacks", error=str(exc),
                               retry_in_seconds=round(delay, 2))
                await sleep_or_stop(stop, delay)
                continue
            if claimed < RETRY_BATCH:
                await sleep_or_stop(stop, RETRY_IDLE_SECONDS)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """The consumer and the background retrier; either one's fatal error ends both."""
        retrier = asyncio.ensure_future(self.retry_forever(stop))
        try:
            await self.consume_forever(stop)
        finally:
            stop.set()
            try:
                await asyncio.wait_for(retrier, timeout=max(1.0, self.settings.shutdown_grace - 2))
            except Exception:
                retrier.cancel()

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
        connection = await connect_any(self.broker_urls, start=self.broker_start)
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
        if not await open_with_retry(stop, self.connect, log=self.log, tag=CONSUME_TAG,
                                     on_failure=self.metrics.broker_connect_failures.inc):
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

