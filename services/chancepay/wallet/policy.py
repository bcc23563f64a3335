"""The wallet's decisions, as pure functions (no I/O; unit-tested in tests/unit/test_wallet_policy.py):
what a redelivery finds in the inbox means, what a callback's answer (an Outcome or a Failure,
core/payment.py) means, and what becomes of the message (ack, dead-letter, requeue, or park the
result and ack) after each step, with its reason (a Verdict)."""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Mapping
from typing import Any

from chancepay.core.backoff import capped_exponential, full_jitter, half_jitter
from chancepay.core.payment import Answer, Outcome

# Back-off before requeueing a message the database could not take (see db_retry_delay).
DB_RETRY_MIN_SECONDS = 0.5
DB_RETRY_MAX_SECONDS = 15.0
# The quick callback tries' back-off never waits longer than this between two tries.
CALLBACK_DELAY_CAP_SECONDS = 5.0


class Deduction(enum.Enum):
    NEW = "new"  # this delivery decided the result
    DUPLICATE = "duplicate"  # decided by an earlier delivery; not deducted again
    CONFLICT = "conflict"  # same uuid, different payment details: corrupt


@dataclasses.dataclass(frozen=True)
class Decision:
    kind: Deduction
    succeed: bool | None
    deliveries: int = 1  # deliveries of this uuid the inbox has seen, this one included

    @property
    def outcome(self) -> str:
        """The chancepay_wallet_messages_total label of a decided delivery."""
        if self.kind is Deduction.DUPLICATE:
            return "duplicate"
        return "succeeded" if self.succeed else "failed"


def redelivery(
    stored: Mapping[str, Any], stored_succeed: bool | None, deliveries: int, received: Mapping[str, Any], flipped: bool
) -> Decision:
    """A uuid already in the inbox (`stored` its details, as read back) received again with
    `received` details. A different payment under the same uuid is corrupt; a decided one keeps
    its stored result (no second deduction); a row left pending (by an older version or by hand)
    takes this delivery's coin flip."""
    if dict(stored) != dict(received):
        return Decision(Deduction.CONFLICT, stored_succeed, deliveries)
    if stored_succeed is not None:
        return Decision(Deduction.DUPLICATE, stored_succeed, deliveries + 1)
    return Decision(Deduction.NEW, flipped, deliveries + 1)


class Action(enum.Enum):
    """What becomes of a delivery. wallet/consumer.py settle() carries out the four final ones."""

    ACK = "ack"
    REJECTED = "rejected"  # ack: the orchestrator refused the result; logged for an operator
    DEAD_LETTER = "dead-letter"  # reject without requeue: the queue moves it to the DLQ
    REQUEUE = "requeue"  # nack with requeue (after a hold, when the database did not take it)
    PARK = "park"  # store the result for the background retrier, then ack (or requeue: after_park)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A delivery's Action and why."""

    action: Action
    reason: str


def after_deduction(decision: Decision | None) -> Action | None:
    """None (the database could not take it): hold, then requeue. A conflict: dead-letter.
    Otherwise continue with the callback (None)."""
    if decision is None:
        return Action.REQUEUE
    if decision.kind is Deduction.CONFLICT:
        return Action.DEAD_LETTER
    return None


def after_callback(answer: Answer) -> Action:
    """Once the quick tries are over: an outcome that settles (applied, repeated): ack. One that
    does not (conflict, unknown), or a failure no retry helps (a malformed result): the
    orchestrator refused it, REJECTED (acked, needs an operator). A failure a retry may help: park
    the result (the message is acked and holds no prefetch slot while the orchestrator is away)."""
    if isinstance(answer, Outcome):
        return Action.ACK if answer.settles else Action.REJECTED
    return Action.PARK if answer.retry_helps else Action.REJECTED


def after_park(parked: bool) -> Action:
    """Not even parked (database down): requeue; a redelivery finds the inbox row and calls back again."""
    return Action.ACK if parked else Action.REQUEUE


def db_retry_delay(outage_seconds: float) -> float:
    """How long to hold a message the database could not take before requeueing it: as long as
    the outage has lasted so far, within [0.5 s, 15 s]. A blip costs half a second; a long
    outage is probed every 15 s instead of spinning every message through the queue."""
    return min(DB_RETRY_MAX_SECONDS, max(DB_RETRY_MIN_SECONDS, outage_seconds))


def parked_retry_delay(attempts: int, base: float, cap: float, rng: random.Random) -> float:
    """Back-off before the next background try of a parked callback after `attempts` failed ones:
    capped exponential with a floor of half the delay (half jitter), so a fleet of wallets
    spreads its retries out but none spins."""
    return half_jitter(capped_exponential(attempts, base, cap), rng)


def callback_delays(
    tries: int, base: float, cap: float = CALLBACK_DELAY_CAP_SECONDS, rng: random.Random | None = None
) -> list[float]:
    """Full-jitter capped exponential back-off between `tries` quick tries (tries - 1 sleeps)."""
    rng = rng or random.Random()
    return [full_jitter(capped_exponential(i, base, cap), rng) for i in range(1, max(0, tries - 1) + 1)]
