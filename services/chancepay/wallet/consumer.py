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

This module is the AMQP side and the order of the steps; the decisions are wallet/policy.py (pure,
unit-tested), the SQL wallet/inbox.py, the HTTP call wallet/callback.py.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import aiohttp

from chancepay.core import deadletters, migrations, signing, topology
from chancepay.core.backoff import Backoff, half_jitter
from chancepay.core.broker import close_quietly, connect_any, open_with_retry
from chancepay.core.codec import InvalidPayload, readable_uuid
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database, DatabaseUnavailable
from chancepay.core.logging import bound, get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import PaymentMessage
from chancepay.core.runner import FatalError, sleep_or_stop
from chancepay.core.waiting import STARTUP_WAIT_SECONDS, Dependency
from chancepay.wallet.callback import CALLBACK_TAG, CallbackClient
from chancepay.wallet.inbox import Inbox
from chancepay.wallet.policy import (
    Action,
    CallbackResult,
    Decision,
    after_callback,
    after_deduction,
    after_park,
    db_retry_delay,
    parked_retry_delay,
)

CORRUPTION_TAG = "[PAYLOAD_CORRUPTION_ALERT]"
CONSUME_TAG = "[FAILED TO CONSUME FROM MQ]"
REJECTED_REASON = "the orchestrator rejected the result (unknown payment or a different stored result)"
# The background retrier: rows claimed per pass, how long a claim hides them from other wallets,
# and the pause when nothing is due.
RETRY_BATCH = 100
RETRY_LEASE_SECONDS = 30.0
RETRY_IDLE_SECONDS = 0.5
# Dead letters moved from chancepay.payments.dlq into the `dead_letter` table (core/deadletters.py):
# messages per pass, and the pause when the queue is empty.
MOVE_BATCH = 100
MOVE_IDLE_SECONDS = 1.0


class Wallet:
    def __init__(
        self, settings: Settings, db: Database, metrics: Metrics, crash: CrashPoints, http: aiohttp.ClientSession
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.crash = crash
        self.log = get_logger()
        self.rng = random.Random()
        self.db = db
        # Failures to reach the broker are "waiting" until it was first reached (core/waiting.py).
        self.broker = Dependency("broker", STARTUP_WAIT_SECONDS)
        self.inbox = Inbox(db, on_inserted=lambda: crash.hit("wallet.after_inbox_insert"))
        self.callbacks = CallbackClient(http, settings.orchestrator_url, metrics, tries=settings.callback_attempts,
                                        backoff=settings.callback_backoff, rng=self.rng,
                                        batch_size=settings.callback_batch_size,
                                        batch_linger=settings.callback_batch_linger)
        self.connection: Any = None
        self.channel: Any = None
        self.stats_channel: Any = None
        self.dlq_channel: Any = None
        self.consumer_tag: str | None = None
        # Several URLs are the nodes of one cluster: start at a random one, so replicas spread out.
        self.broker_urls = settings.amqp_url_list
        self.broker_start = random.randrange(len(self.broker_urls))
        self.in_flight: set[asyncio.Task[Any]] = set()
        # Start of the current database outage (monotonic seconds), None while deductions succeed.
        self.db_down_since: float | None = None

    def flip(self) -> bool:
        return self.rng.random() < self.settings.wallet_success_rate

    # ------------------------------------------------------------------ one delivery
    async def handle(self, message: Any) -> None:
        """The steps of one delivery; each ends in the Action the policy names."""
        tag = message.delivery.delivery_tag
        body = bytes(message.body)
        unsigned = signing.verify(body, message.header.properties.headers, self.settings.message_keys)
        if unsigned is not None:
            await self._dead_letter(message, f"signature: {unsigned}")
            return
        try:
            msg = PaymentMessage.decode(body)
        except InvalidPayload as exc:
            await self._dead_letter(message, str(exc))
            return
        with bound(uuid=msg.uuid):
            decision: Decision | None
            failure: Exception | None = None
            try:
                decision = await self.inbox.deduct(msg, self.flip())
            except Exception as exc:
                decision, failure = None, exc
            action = after_deduction(decision)
            if action is Action.REQUEUE:
                await self._hold_and_requeue(tag, failure)
                return
            assert decision is not None
            self.db_down_since = None
            if action is Action.DEAD_LETTER:
                await self._dead_letter(message, "uuid already in the inbox with a different payment")
                return
            self.metrics.wallet_messages.labels(outcome=decision.outcome).inc()
            self.log.info("deduction decided", outcome=decision.outcome, succeed=decision.succeed)
            self.crash.hit("wallet.after_finalize")
            assert decision.succeed is not None
            result = await self.callbacks.deliver(msg.uuid, decision.succeed)
            self.crash.hit("wallet.after_callback")
            action = after_callback(result)
            if action is Action.PARK:
                action = after_park(await self._park(msg.uuid, decision.succeed))
                if action is Action.REQUEUE:
                    await self.channel.basic_nack(tag, requeue=True)
                    return
            elif result is CallbackResult.REJECTED:
                self.log.error(CALLBACK_TAG, reason=f"{REJECTED_REASON}; acked, needs an operator",
                               succeed=decision.succeed)
            await self.channel.basic_ack(tag)

    async def _hold_and_requeue(self, tag: Any, failure: Exception | None) -> None:
        """Database down, timing out or not migrated yet: nothing was decided. Hold the message,
        then requeue it. The hold grows with the outage (not with the broker's delivery count), so
        a long outage neither spins nor dead-letters valid payments."""
        self.metrics.db_unavailable.inc()
        now = asyncio.get_running_loop().time()
        if self.db_down_since is None:
            self.db_down_since = now
        delay = half_jitter(db_retry_delay(now - self.db_down_since), self.rng)
        self.log.error("[FAILED TO DEDUCT IN WALLET]", error=str(failure) or repr(failure),
                       retry_in_seconds=round(delay, 2), **self._waiting(failure))
        await asyncio.sleep(delay)
        await self.channel.basic_nack(tag, requeue=True)

    def _waiting(self, failure: BaseException | None) -> dict[str, Any]:
        """`"waiting": true` for a database not reached yet since start (core/waiting.py)."""
        return self.db.dependency.fields() if isinstance(failure, DatabaseUnavailable) else {}

    async def _park(self, uuid: str, succeed: bool) -> bool:
        delay = parked_retry_delay(1, self.settings.callback_backoff, self.settings.callback_retry_max, self.rng)
        try:
            await self.inbox.park(uuid, succeed, delay, self.callbacks.take_error(uuid))
        except Exception as exc:
            self.log.error(CALLBACK_TAG, reason=f"could not park the result: {exc}", will_retry=True)
            return False
        self.log.info("result parked for background retries", succeed=succeed, retry_in_seconds=round(delay, 2))
        return True

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

    # ------------------------------------------------------------------ parked callbacks
    async def retry_parked_once(self) -> int:
        """Claim due parked callbacks, try each once, forget the delivered and rejected ones,
        reschedule the rest. Returns rows claimed."""
        rows = await self.inbox.claim_parked(RETRY_BATCH, RETRY_LEASE_SECONDS)
        if not rows:
            return 0

        async def one(uuid: str, succeed: bool) -> CallbackResult:
            with bound(uuid=uuid):
                return await self.callbacks.deliver(uuid, succeed, tries=1)

        results = await asyncio.gather(*(one(r.uuid, r.succeed) for r in rows))
        for row, result in zip(rows, results, strict=True):
            if result is CallbackResult.REJECTED:
                self.log.error(CALLBACK_TAG, uuid=row.uuid, succeed=row.succeed,
                               reason=f"{REJECTED_REASON}; dropped, needs an operator")
        await self.inbox.forget_parked([r.uuid for r, res in zip(rows, results, strict=True)
                                        if after_callback(res) is Action.ACK])
        s = self.settings
        await self.inbox.reschedule_parked([
            (r.uuid, parked_retry_delay(r.attempts + 1, s.callback_backoff, s.callback_retry_max, self.rng),
             self.callbacks.take_error(r.uuid))
            for r, res in zip(rows, results, strict=True) if after_callback(res) is Action.PARK
        ])
        return len(rows)

    async def retry_forever(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.5, 10.0, rng=self.rng)
        while not stop.is_set():
            try:
                claimed = await self.retry_parked_once()
                backoff.succeeded()
            except Exception as exc:  # database down: parked rows wait, the next pass tries again
                delay = backoff.failed()
                self.log.error("[FAILED TO REACH DATABASE]", step="read parked callbacks", error=str(exc),
                               retry_in_seconds=round(delay, 2), **self._waiting(exc))
                await sleep_or_stop(stop, delay)
                continue
            if claimed < RETRY_BATCH:
                await sleep_or_stop(stop, RETRY_IDLE_SECONDS)

    # ------------------------------------------------------------------ dead letters
    async def move_dead_letters_once(self, stop: asyncio.Event | None = None) -> int:
        """Move what waits in chancepay.payments.dlq into the `dead_letter` table (each message
        committed before it is acked). Returns the messages moved; 0 while not connected."""
        if not self.broker_ready():
            return 0
        # Take a message only when it can be stored: a failed insert requeues it, and each requeue
        # counts against the DLQ's delivery limit (20 by default on RabbitMQ 4.0). So not before
        # migrate made the table (a rolling update), nor while the database does not answer.
        if not await self.db.schema_ready(migrations.latest(migrations.WALLET)):
            return 0
        if self.dlq_channel is None or self.dlq_channel.is_closed:
            self.dlq_channel = await self.connection.channel()

        def held(exc: BaseException, attempt: int, delay: float) -> None:
            self.log.error(deadletters.MOVE_TAG, queue=topology.DLQ, error=repr(exc)[:500], attempt=attempt,
                           held=True, retry_in_seconds=round(delay, 2), **self._waiting(exc))

        return await deadletters.move_batch(self.dlq_channel, self.db, MOVE_BATCH, on_store_failure=held, stop=stop)

    async def move_dead_letters_forever(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.5, 10.0, rng=self.rng)
        while not stop.is_set():
            try:
                moved = await self.move_dead_letters_once(stop)
                backoff.succeeded()
            except Exception as exc:  # database or broker away: the messages wait in the queue
                delay = backoff.failed()
                if self.broker_ready():
                    self.log.error(deadletters.MOVE_TAG, queue=topology.DLQ, error=repr(exc)[:500],
                                   retry_in_seconds=round(delay, 2), **self._waiting(exc))
                await sleep_or_stop(stop, delay)
                continue
            if moved:
                self.log.info("dead letters moved into the dead_letter table", messages=moved)
            if moved < MOVE_BATCH:
                await sleep_or_stop(stop, MOVE_IDLE_SECONDS)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """The consumer and the background tasks (parked callbacks, dead letters); the consumer's
        fatal error ends them all."""
        background = [asyncio.ensure_future(self.retry_forever(stop)),
                      asyncio.ensure_future(self.move_dead_letters_forever(stop))]
        try:
            await self.consume_forever(stop)
        finally:
            stop.set()
            for task in background:
                try:
                    await asyncio.wait_for(task, timeout=max(1.0, self.settings.shutdown_grace - 2))
                except Exception:
                    task.cancel()

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
        if not await open_with_retry(stop, self.connect, log=self.log, tag=CONSUME_TAG, broker=self.broker,
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

