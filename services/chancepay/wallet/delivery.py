"""One delivery, apart from AMQP: at-least-once delivery made exactly-once-deducted by the inbox.

`Delivery.handle(body, headers, message_id)` takes the steps and returns the Verdict (an Action
and its reason); wallet/consumer.py settles it on the channel, in one place.
1. verify its signature and parse it; unsigned, wrongly signed or unparseable ->
   [PAYLOAD_CORRUPTION_ALERT] (with the uuid when one is readable), no inbox row, DEAD_LETTER
   (the queue dead-letters it to chancepay.payments.dlq). Only the scanner holds the key, so
   nothing is deducted for a message nobody published from the outbox;
2. flip the coin and insert the inbox row already final (INSERT IGNORE, one statement, one
   commit). The decision is durable before anything leaves the wallet; a redelivery finds the
   row there and is not deducted again (its stored result is sent instead). The database not
   answering (DatabaseUnavailable, and only that): hold, then REQUEUE; any other error is a bug
   and propagates (wallet/consumer.py logs [FAILED TO PROCESS MESSAGE] and requeues). With
   CHANCEPAY_WALLET_BATCH_SIZE > 1 the inbox here is wallet/window.py's InboxWindow: the
   deductions of deliveries arriving together share one transaction, each gets its own Decision;
3. call the orchestrator back with the stored result (CHANCEPAY_CALLBACK_ATTEMPTS quick tries);
4. ACK. A result still undelivered is first parked in the wallet's own `pending_callback` table
   (wallet/parked.py retries it in the background); if even parking fails, REQUEUE. A result the
   orchestrator refuses is REJECTED: acked, logged for an operator.

Nothing here reads the broker's x-delivery-count (RabbitMQ 4.3 changed what it counts).
The decisions are wallet/policy.py (pure), the SQL wallet/inbox.py, the HTTP wallet/callback.py.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from chancepay.core import signing
from chancepay.core.backoff import half_jitter
from chancepay.core.codec import InvalidPayload, readable_uuid
from chancepay.core.crash import CrashPoints
from chancepay.core.db import DatabaseUnavailable
from chancepay.core.logging import bound, get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import Answer, Failure, PaymentMessage, Result
from chancepay.core.waiting import Dependency
from chancepay.wallet.callback import CALLBACK_TAG
from chancepay.wallet.policy import (
    Action,
    Decision,
    Verdict,
    after_callback,
    after_deduction,
    after_park,
    db_retry_delay,
)

CORRUPTION_TAG = "[PAYLOAD_CORRUPTION_ALERT]"
REJECTED_REASON = "the orchestrator rejected the result (unknown payment or a different stored result)"


class InboxPort(Protocol):
    async def deduct(self, msg: PaymentMessage, flipped: bool) -> Decision: ...
    async def park(self, uuid: str, succeed: bool, delay: float, reason: str) -> None: ...


class CallbacksPort(Protocol):
    async def deliver(self, result: Result, tries: int | None = None) -> Answer: ...


class Delivery:
    def __init__(
        self,
        *,
        inbox: InboxPort,
        callbacks: CallbacksPort,
        metrics: Metrics,
        crash: CrashPoints,
        message_keys: tuple[str, ...],
        flip: Callable[[], bool],
        park_delay: Callable[[], float],
        database: Dependency,
        rng: random.Random | None = None,
        hold: Callable[[float], float] = db_retry_delay,
        log: Any = None,
    ) -> None:
        self.inbox = inbox
        self.callbacks = callbacks
        self.metrics = metrics
        self.crash = crash
        self.message_keys = message_keys
        self.flip = flip  # the coin: True = the deduction succeeds
        self.park_delay = park_delay  # before a parked result's first background try
        self.database = database  # its fields() mark the failures while the database is awaited
        self.rng = rng or random.Random()
        self.hold = hold  # outage seconds so far -> seconds to hold a message before requeueing it
        self.log = log or get_logger()
        self.db_down_since: float | None = None  # start of the current outage (monotonic), None while up

    async def handle(self, body: bytes, headers: Mapping[str, Any] | None, message_id: str | None) -> Verdict:
        unsigned = signing.verify(body, headers, self.message_keys)
        if unsigned is not None:
            return self._dead_letter(body, message_id, f"signature: {unsigned}")
        try:
            msg = PaymentMessage.decode(body)
        except InvalidPayload as exc:
            return self._dead_letter(body, message_id, str(exc))
        with bound(uuid=msg.uuid):
            return await self._deduct_and_call_back(msg, body, message_id)

    async def _deduct_and_call_back(self, msg: PaymentMessage, body: bytes, message_id: str | None) -> Verdict:
        try:
            decision: Decision | None = await self.inbox.deduct(msg, self.flip())
        except DatabaseUnavailable as exc:
            return await self._hold(exc)
        if after_deduction(decision) is Action.DEAD_LETTER:
            self.db_down_since = None
            return self._dead_letter(body, message_id, "uuid already in the inbox with a different payment")
        assert decision is not None and decision.succeed is not None
        self.db_down_since = None
        self.metrics.wallet_messages.labels(outcome=decision.outcome).inc()
        self.log.info("deduction decided", outcome=decision.outcome, succeed=decision.succeed)
        self.crash.hit("wallet.after_finalize")
        result = Result(msg.uuid, decision.succeed)
        answer = await self.callbacks.deliver(result)
        self.crash.hit("wallet.after_callback")
        return await self._after_callback(result, answer)

    async def _after_callback(self, result: Result, answer: Answer) -> Verdict:
        action = after_callback(answer)
        if action is Action.PARK:
            assert isinstance(answer, Failure)
            return Verdict(after_park(await self._park(result, answer.reason)), answer.reason)
        if action is Action.REJECTED:
            self.log.error(CALLBACK_TAG, reason=f"{REJECTED_REASON}; acked, needs an operator", succeed=result.succeed)
            return Verdict(action, REJECTED_REASON)
        return Verdict(action, "delivered")

    async def _hold(self, failure: DatabaseUnavailable) -> Verdict:
        """Database down, timing out or not migrated yet: nothing was decided. Hold the message,
        then requeue it. The hold grows with the outage (not with the broker's delivery count), so
        a long outage neither spins nor dead-letters valid payments."""
        self.metrics.db_unavailable.inc()
        now = asyncio.get_running_loop().time()
        if self.db_down_since is None:
            self.db_down_since = now
        delay = half_jitter(self.hold(now - self.db_down_since), self.rng)
        self.log.error(
            "[FAILED TO DEDUCT IN WALLET]",
            error=str(failure) or repr(failure),
            retry_in_seconds=round(delay, 2),
            **self.database.fields(),
        )
        await asyncio.sleep(delay)
        return Verdict(Action.REQUEUE, f"database unavailable: {failure}")

    async def _park(self, result: Result, reason: str) -> bool:
        delay = self.park_delay()
        try:
            await self.inbox.park(result.uuid, result.succeed, delay, reason)
        except Exception as exc:
            self.log.error(CALLBACK_TAG, reason=f"could not park the result: {exc}", will_retry=True)
            return False
        self.log.info("result parked for background retries", succeed=result.succeed, retry_in_seconds=round(delay, 2))
        return True

    def _dead_letter(self, body: bytes, message_id: str | None, reason: str) -> Verdict:
        self.metrics.wallet_messages.labels(outcome="corrupt").inc()
        uuid = readable_uuid(body, message_id)
        self.log.error(
            CORRUPTION_TAG,
            **({"uuid": uuid} if uuid else {}),
            reason=reason,
            message_id=message_id,
            body_preview=body[:256].decode("utf-8", "replace"),
            body_bytes=len(body),
        )
        return Verdict(Action.DEAD_LETTER, reason)
