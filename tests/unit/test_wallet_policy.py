"""wallet/policy.py: the wallet's decisions, apart from I/O: what a redelivery finds in the inbox
means, what an answer to a callback (an Outcome or a Failure) means for the delivery. (The retry
schedules: tests/unit/test_wallet_policy_delays.py.)"""

from __future__ import annotations

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


@pytest.mark.parametrize(("answer", "action"), [
    (Outcome.APPLIED, Action.ACK),
    (Outcome.REPEATED, Action.ACK),
    (Outcome.CONFLICT, Action.REJECTED),  # the orchestrator holds the other value: an operator looks
    (Outcome.UNKNOWN, Action.REJECTED),
    (Failure("no answer", unreachable=True), Action.PARK),  # the orchestrator away: park, ack
    (Failure.of_status(503, "HTTP 503"), Action.PARK),
    (Failure.of_status(401, "HTTP 401"), Action.PARK),  # a token rotation one step behind
    (Failure.of_status(422, "HTTP 422"), Action.REJECTED),  # retrying cannot help
])
def test_what_an_answer_means_for_the_delivery(answer: Outcome | Failure, action: Action) -> None:
    assert after_callback(answer) is action


@pytest.mark.parametrize(("status", "retry_helps", "unreachable"), [
    (None, True, True), (500, True, True), (503, True, True), (401, True, False), (408, True, False),
    (429, True, False), (404, False, False), (409, False, False), (422, False, False), (400, False, False),
])
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
