"""The wallet's and the scanner's decisions, apart from I/O: the pure policies, and one delivery
through Wallet.handle with fakes for the inbox, the callback and the channel (the same flows run
against the real database, broker and orchestrator in tests/integration and tests/faults)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import aiormq.exceptions
import pytest
from pamqp import commands as spec

from chancepay.core import signing
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.metrics import Metrics
from chancepay.core.payment import PaymentMessage
from chancepay.scanner.policy import OutboxRow, sort_results
from chancepay.wallet.consumer import Wallet
from chancepay.wallet.policy import (
    Action,
    CallbackResult,
    Decision,
    Deduction,
    after_callback,
    after_deduction,
    after_park,
    callback_result,
    redelivery,
)

UUID = "0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a6b"
ALICE = {"cus_id": "alice", "amount": Decimal("12.50")}


# --------------------------------------------------------------------------- pure policies
def test_a_redelivery_keeps_the_stored_result() -> None:
    assert redelivery(ALICE, True, 1, ALICE, flipped=False) == Decision(Deduction.DUPLICATE, True, 2)
    assert redelivery(ALICE, False, 3, ALICE, flipped=True) == Decision(Deduction.DUPLICATE, False, 4)


def test_a_pending_inbox_row_takes_this_deliverys_flip() -> None:
    assert redelivery(ALICE, None, 1, ALICE, flipped=True) == Decision(Deduction.NEW, True, 2)


def test_another_payment_under_the_same_uuid_is_a_conflict() -> None:
    other = {"cus_id": "alice", "amount": Decimal("12.51")}
    assert redelivery(ALICE, True, 1, other, flipped=True) == Decision(Deduction.CONFLICT, True, 1)
    assert after_deduction(redelivery(ALICE, True, 1, other, flipped=True)) is Action.DEAD_LETTER


@pytest.mark.parametrize(("status", "result"), [
    (200, CallbackResult.DELIVERED), (None, CallbackResult.RETRYABLE), (500, CallbackResult.RETRYABLE),
    (503, CallbackResult.RETRYABLE), (401, CallbackResult.RETRYABLE), (408, CallbackResult.RETRYABLE),
    (429, CallbackResult.RETRYABLE), (404, CallbackResult.REJECTED), (409, CallbackResult.REJECTED),
    (422, CallbackResult.REJECTED), (400, CallbackResult.REJECTED),
])
def test_what_a_callback_answer_means(status: int | None, result: CallbackResult) -> None:
    assert callback_result(status) is result


def test_what_becomes_of_the_message() -> None:
    assert after_deduction(None) is Action.REQUEUE  # the database did not take it: nothing decided
    assert after_deduction(Decision(Deduction.NEW, True)) is None  # go on to the callback
    assert after_deduction(Decision(Deduction.DUPLICATE, False, 2)) is None
    assert after_callback(CallbackResult.RETRYABLE) is Action.PARK
    assert after_park(True) is Action.ACK and after_park(False) is Action.REQUEUE
    assert Decision(Deduction.DUPLICATE, True, 2).outcome == "duplicate"
    assert Decision(Deduction.NEW, False).outcome == "failed"


def test_scanner_sorts_publish_results() -> None:
    rows = [OutboxRow(f"u{i}", b"{}", 0) for i in range(5)]
    results: list[Any] = [spec.Basic.Ack(), aiormq.exceptions.DeliveryError(None, spec.Basic.Nack()), TimeoutError(),
                          ConnectionResetError(), object()]
    acked, failures = sort_results(rows, results)
    assert acked == ["u0"]
    assert [(f.row.uuid, f.reason) for f in failures] == [
        ("u1", "nack"), ("u2", "timeout"), ("u3", "connection"), ("u4", "returned")]


# --------------------------------------------------------------------------- one delivery, with fakes
class FakeChannel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def basic_ack(self, tag: int) -> None:
        self.calls.append(("ack", tag))

    async def basic_nack(self, tag: int, requeue: bool) -> None:
        self.calls.append(("nack", requeue))

    async def basic_reject(self, tag: int, requeue: bool) -> None:
        self.calls.append(("reject", requeue))


class FakeInbox:
    def __init__(self, decision: Decision | Exception, park_fails: bool = False) -> None:
        self.decision = decision
        self.park_fails = park_fails
        self.parked: list[tuple[str, bool]] = []

    async def deduct(self, msg: PaymentMessage, flipped: bool) -> Decision:
        if isinstance(self.decision, Exception):
            raise self.decision
        return self.decision

    async def park(self, uuid: str, succeed: bool, delay: float, reason: str) -> None:
        if self.park_fails:
            raise ConnectionError("database down")
        self.parked.append((uuid, succeed))


class FakeCallbacks:
    def __init__(self, result: CallbackResult) -> None:
        self.result = result
        self.calls: list[tuple[str, bool]] = []

    async def deliver(self, uuid: str, succeed: bool, tries: int | None = None) -> CallbackResult:
        self.calls.append((uuid, succeed))
        return self.result

    def take_error(self, uuid: str) -> str:
        return "HTTP 503"


class Message:
    def __init__(self, body: bytes, key: str | None) -> None:
        self.body = body
        headers = {signing.HEADER: signing.sign(body, key)} if key else {}
        self.header = type("H", (), {"properties": spec.Basic.Properties(headers=headers, message_id=UUID)})()
        self.delivery = type("D", (), {"delivery_tag": 7})()


def deliver(inbox: FakeInbox, callbacks: FakeCallbacks, *, signed: bool = True,
            body: bytes | None = None) -> FakeChannel:
    settings = Settings.from_env({})
    wallet = Wallet(settings, db=None, metrics=Metrics("wallet"), crash=CrashPoints(frozenset()), http=None)  # type: ignore[arg-type]
    wallet.inbox, wallet.callbacks = inbox, callbacks  # type: ignore[assignment]
    wallet.channel = FakeChannel()
    body = body if body is not None else PaymentMessage(UUID, ALICE).encode()
    asyncio.run(wallet.handle(Message(body, settings.message_key if signed else None)))
    return wallet.channel


def test_decided_and_delivered_is_acked() -> None:
    callbacks = FakeCallbacks(CallbackResult.DELIVERED)
    assert deliver(FakeInbox(Decision(Deduction.NEW, True)), callbacks).calls == [("ack", 7)]
    assert callbacks.calls == [(UUID, True)]


def test_a_duplicate_sends_the_stored_result_again() -> None:
    callbacks = FakeCallbacks(CallbackResult.DELIVERED)
    deliver(FakeInbox(Decision(Deduction.DUPLICATE, False, 2)), callbacks)
    assert callbacks.calls == [(UUID, False)]


def test_an_undelivered_result_is_parked_then_acked() -> None:
    inbox = FakeInbox(Decision(Deduction.NEW, False))
    assert deliver(inbox, FakeCallbacks(CallbackResult.RETRYABLE)).calls == [("ack", 7)]
    assert inbox.parked == [(UUID, False)]


def test_not_even_parked_is_requeued() -> None:
    inbox = FakeInbox(Decision(Deduction.NEW, False), park_fails=True)
    assert deliver(inbox, FakeCallbacks(CallbackResult.RETRYABLE)).calls == [("nack", True)]


def test_a_rejected_result_is_acked_not_parked() -> None:
    inbox = FakeInbox(Decision(Deduction.NEW, True))
    assert deliver(inbox, FakeCallbacks(CallbackResult.REJECTED)).calls == [("ack", 7)]
    assert inbox.parked == []


def test_conflicts_unsigned_and_corrupt_messages_are_dead_lettered_without_a_callback() -> None:
    callbacks = FakeCallbacks(CallbackResult.DELIVERED)
    assert deliver(FakeInbox(Decision(Deduction.CONFLICT, True)), callbacks).calls == [("reject", False)]
    assert deliver(FakeInbox(Decision(Deduction.NEW, True)), callbacks, signed=False).calls == [("reject", False)]
    assert deliver(FakeInbox(Decision(Deduction.NEW, True)), callbacks, body=b'{"uuid":1}').calls == [
        ("reject", False)]
    assert callbacks.calls == []


def test_database_down_holds_then_requeues(monkeypatch) -> None:
    from chancepay.wallet import consumer

    monkeypatch.setattr(consumer, "db_retry_delay", lambda outage: 0.0)
    callbacks = FakeCallbacks(CallbackResult.DELIVERED)
    assert deliver(FakeInbox(ConnectionError("down")), callbacks).calls == [("nack", True)]
    assert callbacks.calls == []
