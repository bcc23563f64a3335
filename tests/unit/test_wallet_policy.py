"""wallet/policy.py: the wallet's decisions, apart from I/O: what a redelivery finds in the inbox
means, what an answer to a callback (an Outcome or a Failure) means for the delivery, and the retry
schedules (the quick callback tries, the parked-result retrier, the hold before requeueing what the
database did not take)."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from chancepay.core.payment import Failure, Outcome
from chancepay.wallet.policy import (
    Action,
    Decision,
    Deduction,
    after_callback,
    after_deduction,
    after_park,
    callback_delays,
    db_retry_delay,
    parked_retry_delay,
    redelivery,
)

ALICE = {"cus_id": "alice", "amount": Decimal("12.50")}


def test_a_redelivery_keeps_the_stored_result() -> None:
    assert redelivery(ALICE, True, 1, ALICE, flipped=False) == Decision(Deduction.DUPLICATE, True, 2)
    assert redelivery(ALICE, False, 3, ALICE, flipped=True) == Decision(Deduction.DUPLICATE, False, 4)


def test_a_pending_inbox_row_takes_this_deliverys_flip() -> None:
    assert redelivery(ALICE, None, 1, ALICE, flipped=True) == Decision(Deduction.NEW, True, 2)


def test_another_payment_under_the_same_uuid_is_a_conflict() -> None:
    other = {"cus_id": "alice", "amount": Decimal("12.51")}
    assert redelivery(ALICE, True, 1, other, flipped=True) == Decision(Deduction.CONFLICT, True, 1)
    assert after_deduction(redelivery(ALICE, True, 1, other, flipped=True)) is Action.DEAD_LETTER


@pytest.mark.parametrize(
    ("answer", "action"),
    [
        (Outcome.APPLIED, Action.ACK),
        (Outcome.REPEATED, Action.ACK),
        (Outcome.CONFLICT, Action.REJECTED),  # the orchestrator holds the other value: an operator looks
        (Outcome.UNKNOWN, Action.REJECTED),
        (Failure("no answer", unreachable=True), Action.PARK),  # the orchestrator away: park, ack
        (Failure.of_status(503, "HTTP 503"), Action.PARK),
        (Failure.of_status(401, "HTTP 401"), Action.PARK),  # a token rotation one step behind
        (Failure.of_status(422, "HTTP 422"), Action.REJECTED),  # retrying cannot help
    ],
)
def test_what_an_answer_means_for_the_delivery(answer: Outcome | Failure, action: Action) -> None:
    assert after_callback(answer) is action


@pytest.mark.parametrize(
    ("status", "retry_helps", "unreachable"),
    [
        (None, True, True),
        (500, True, True),
        (503, True, True),
        (401, True, False),
        (408, True, False),
        (429, True, False),
        (404, False, False),
        (409, False, False),
        (422, False, False),
        (400, False, False),
    ],
)
def test_what_an_http_answer_without_outcomes_means(status: int | None, retry_helps: bool, unreachable: bool) -> None:
    failure = Failure.of_status(status, "why")
    assert (failure.retry_helps, failure.unreachable, failure.reason) == (retry_helps, unreachable, "why")


def test_what_becomes_of_the_message() -> None:
    assert after_deduction(None) is Action.REQUEUE  # the database did not take it: nothing decided
    assert after_deduction(Decision(Deduction.NEW, True)) is None  # go on to the callback
    assert after_deduction(Decision(Deduction.DUPLICATE, False, 2)) is None
    assert after_park(True) is Action.ACK and after_park(False) is Action.REQUEUE
    assert Decision(Deduction.DUPLICATE, True, 2).outcome == "duplicate"
    assert Decision(Deduction.NEW, False).outcome == "failed"


def test_parked_retries_back_off_within_bounds() -> None:
    rng = random.Random(5)
    for attempts, full in ((1, 0.2), (2, 0.4), (5, 3.2), (8, 25.6), (9, 30.0), (50, 30.0)):
        delays = [parked_retry_delay(attempts, 0.2, 30.0, rng) for _ in range(100)]
        assert all(full / 2 <= d <= full for d in delays), (attempts, min(delays), max(delays))
    # minutes of patience: the sum of the first 20 waits is well past a rolling update
    assert sum(parked_retry_delay(a, 0.2, 30.0, random.Random(1)) for a in range(1, 21)) > 180


def test_database_retry_hold_follows_the_outage_not_the_delivery_count() -> None:
    assert db_retry_delay(0) == 0.5 and db_retry_delay(0.2) == 0.5  # a blip: half a second
    assert db_retry_delay(4) == 4
    assert db_retry_delay(60) == 15 and db_retry_delay(3600) == 15  # a long outage: probe every 15 s


def test_callback_backoff_has_full_jitter_under_the_cap() -> None:
    rng = random.Random(7)
    delays = callback_delays(6, base=0.2, cap=1.0, rng=rng)
    assert len(delays) == 5
    caps = [0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(0 <= d <= c for d, c in zip(delays, caps, strict=True))
    assert len(set(delays)) == 5, "jitter spreads retries of many wallets apart"
    assert callback_delays(1, base=0.2) == []
