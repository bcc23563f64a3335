"""wallet/delivery.py (one delivery's steps, returning a Verdict) and wallet/consumer.py's settle
and on_message (where a Verdict is carried out), with the fakes of tests/support/fakes.py: no
server, no patching (the same flows run against the real database, broker and orchestrator in
tests/integration and tests/faults)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from chancepay.core import signing
from chancepay.core.config import Settings
from chancepay.core.db import DatabaseUnavailable
from chancepay.core.payment import Answer, Failure, Outcome, PaymentMessage, Result
from chancepay.wallet import consumer as consumer_module
from chancepay.wallet.consumer import PROCESS_TAG, Consumer, settle
from chancepay.wallet.delivery import CORRUPTION_TAG, Delivery
from chancepay.wallet.policy import Action, Decision, Deduction, Verdict
from tests.support.fakes import FakeCallbacks, FakeChannel, FakeInbox, message, wallet_delivery
from tests.support.recording_log import RecordingLog

UUID = "0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a6b"
ALICE = {"cus_id": "alice", "amount": Decimal("12.50")}
KEY = Settings.from_env({}).message_key


def delivery(inbox: FakeInbox, callbacks: FakeCallbacks, log: RecordingLog | None = None) -> Delivery:
    return wallet_delivery(inbox, callbacks, log or RecordingLog())


def handle(
    inbox: FakeInbox,
    callbacks: FakeCallbacks,
    *,
    signed: bool = True,
    body: bytes | None = None,
    log: RecordingLog | None = None,
) -> Verdict:
    body = body if body is not None else PaymentMessage(UUID, ALICE).encode()
    headers = {signing.HEADER: signing.sign(body, KEY)} if signed else {}
    return asyncio.run(delivery(inbox, callbacks, log).handle(body, headers, UUID))


def test_decided_and_delivered_is_acked() -> None:
    callbacks = FakeCallbacks(Outcome.APPLIED)
    assert handle(FakeInbox(Decision(Deduction.NEW, True)), callbacks).action is Action.ACK
    assert callbacks.calls == [(Result(UUID, True), None)]


def test_a_duplicate_sends_the_stored_result_again() -> None:
    callbacks = FakeCallbacks(Outcome.REPEATED)
    assert handle(FakeInbox(Decision(Deduction.DUPLICATE, False, 2)), callbacks).action is Action.ACK
    assert callbacks.calls == [(Result(UUID, False), None)]


def test_an_undelivered_result_is_parked_with_its_reason_then_acked() -> None:
    inbox = FakeInbox(Decision(Deduction.NEW, False))
    verdict = handle(inbox, FakeCallbacks(Failure("HTTP 503: down", unreachable=True)))
    assert verdict == Verdict(Action.ACK, "HTTP 503: down")
    assert inbox.parked == [(UUID, False, "HTTP 503: down")]


def test_not_even_parked_is_requeued() -> None:
    inbox = FakeInbox(Decision(Deduction.NEW, False), park_fails=True)
    assert handle(inbox, FakeCallbacks(Failure("no answer"))).action is Action.REQUEUE


@pytest.mark.parametrize("answer", [Outcome.CONFLICT, Outcome.UNKNOWN, Failure.of_status(422, "HTTP 422")])
def test_a_refused_result_is_rejected_acked_not_parked(answer: Answer) -> None:
    inbox, log = FakeInbox(Decision(Deduction.NEW, True)), RecordingLog()
    assert handle(inbox, FakeCallbacks(answer), log=log).action is Action.REJECTED
    assert inbox.parked == []
    assert "needs an operator" in log.tagged("[FAILED TO CALLBACK FROM WALLET]")[-1]["reason"]


def test_conflicts_unsigned_and_corrupt_messages_are_dead_lettered_without_a_callback() -> None:
    callbacks, log = FakeCallbacks(), RecordingLog()
    assert handle(FakeInbox(Decision(Deduction.CONFLICT, True)), callbacks).action is Action.DEAD_LETTER
    assert (
        handle(FakeInbox(Decision(Deduction.NEW, True)), callbacks, signed=False, log=log).action is Action.DEAD_LETTER
    )
    assert handle(FakeInbox(Decision(Deduction.NEW, True)), callbacks, body=b'{"uuid":1}').action is Action.DEAD_LETTER
    assert callbacks.calls == []
    assert log.tagged(CORRUPTION_TAG)[0]["uuid"] == UUID  # from the message id


def test_database_down_holds_then_requeues_waiting_while_never_reached() -> None:
    callbacks, log = FakeCallbacks(), RecordingLog()
    verdict = handle(FakeInbox(DatabaseUnavailable("no answer")), callbacks, log=log)
    assert verdict.action is Action.REQUEUE and "no answer" in verdict.reason
    assert callbacks.calls == []
    assert log.tagged("[FAILED TO DEDUCT IN WALLET]")[0]["waiting"] is True


def test_a_programming_error_at_the_deduction_is_not_taken_for_an_outage() -> None:
    """Only DatabaseUnavailable means "hold and requeue"; a bug propagates out of the delivery
    (the consumer then logs [FAILED TO PROCESS MESSAGE] and requeues: see below)."""
    with pytest.raises(KeyError):
        handle(FakeInbox(KeyError("cus_id")), FakeCallbacks())


# --------------------------------------------------------------------------- the AMQP side
@pytest.mark.parametrize(
    ("action", "call"),
    [
        (Action.ACK, ("ack", 7)),
        (Action.REJECTED, ("ack", 7)),
        (Action.REQUEUE, ("nack", True)),
        (Action.DEAD_LETTER, ("reject", False)),
    ],
)
def test_settle_is_the_one_place_a_delivery_is_acked_requeued_or_rejected(action: Action, call: Any) -> None:
    channel = FakeChannel()
    asyncio.run(settle(channel, 7, action))
    assert channel.calls == [call]


def test_park_is_not_a_way_to_settle() -> None:
    with pytest.raises(ValueError):
        asyncio.run(settle(FakeChannel(), 7, Action.PARK))


def consume(handler: Any, log: RecordingLog) -> FakeChannel:
    consumer = Consumer(["amqp://unused"], handler, prefetch=1, shutdown_grace=1.0, log=log)
    consumer.channel = FakeChannel()
    asyncio.run(consumer.on_message(message(b"{}", message_id=UUID)))
    assert not consumer.in_flight
    channel: FakeChannel = consumer.channel
    return channel


def test_the_consumer_settles_the_verdict_of_the_delivery() -> None:
    async def handler(body: bytes, headers: Any, message_id: str | None) -> Verdict:
        assert (body, message_id) == (b"{}", UUID)
        return Verdict(Action.DEAD_LETTER, "corrupt")

    assert consume(handler, RecordingLog()).calls == [("reject", False)]


def test_a_bug_in_a_delivery_is_logged_and_the_message_handed_back_after_a_hold(monkeypatch) -> None:
    async def handler(body: bytes, headers: Any, message_id: str | None) -> Verdict:
        raise KeyError("cus_id")

    held: list[float] = []

    async def hold(seconds: float) -> None:
        held.append(seconds)

    monkeypatch.setattr(consumer_module.asyncio, "sleep", hold)
    log = RecordingLog()
    assert consume(handler, log).calls == [("nack", True)]
    line = log.tagged(PROCESS_TAG)[0]
    assert "KeyError" in line["error"]
    # Not handed straight back: a bug that fails every delivery must not spin the queue.
    assert held == [consumer_module.BUG_HOLD_SECONDS] and line["requeue_in_seconds"] == held[0] > 0
