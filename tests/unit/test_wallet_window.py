"""wallet/window.py (deliveries arriving together decided in one inbox transaction) under
wallet/delivery.py, and wallet/inbox.py's deduct_many on a scripted cursor: each delivery of a
window gets the Verdict it gets alone; a failed window requeues every delivery of it."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from chancepay.core import signing, sql
from chancepay.core.config import Settings
from chancepay.core.db import DatabaseUnavailable
from chancepay.core.payment import PaymentMessage, Result
from chancepay.wallet.delivery import CORRUPTION_TAG, Delivery
from chancepay.wallet.inbox import Inbox
from chancepay.wallet.policy import Action, Decision, Deduction, Verdict
from chancepay.wallet.window import InboxWindow
from tests.support.fakes import FakeCallbacks, FakeInbox, wallet_delivery
from tests.support.recording_log import RecordingLog

KEY = Settings.from_env({}).message_key
ALICE = {"cus_id": "alice", "amount": Decimal("12.50")}
NEW, DUP, CONFLICT, CORRUPT = (f"0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a6{i}" for i in range(4))


def delivery(inbox: Any, callbacks: FakeCallbacks, log: RecordingLog) -> Delivery:
    return wallet_delivery(inbox, callbacks, log)


def signed(uuid: str, body: bytes | None = None) -> tuple[bytes, dict[str, str], str]:
    body = body if body is not None else PaymentMessage(uuid, ALICE).encode()
    return body, {signing.HEADER: signing.sign(body, KEY)}, uuid


def handle_together(
    inbox: FakeInbox,
    callbacks: FakeCallbacks,
    messages: list[tuple[bytes, Any, str]],
    log: RecordingLog,
    *,
    size: int = 32,
    linger: float = 10.0,
) -> list[Verdict]:
    async def run() -> list[Verdict]:
        d = delivery(InboxWindow(inbox, size=size, linger=linger), callbacks, log)
        return list(await asyncio.wait_for(asyncio.gather(*(d.handle(*m) for m in messages)), timeout=5))

    return asyncio.run(run())


def test_a_window_gives_each_delivery_its_own_verdict_from_one_transaction() -> None:
    inbox = FakeInbox(
        {
            NEW: Decision(Deduction.NEW, True),
            DUP: Decision(Deduction.DUPLICATE, False, 2),
            CONFLICT: Decision(Deduction.CONFLICT, True),
        }
    )
    callbacks, log = FakeCallbacks(), RecordingLog()
    verdicts = handle_together(
        inbox, callbacks, [signed(NEW), signed(DUP), signed(CONFLICT), signed(CORRUPT, b'{"uuid": 1}')], log
    )
    assert [v.action for v in verdicts] == [Action.ACK, Action.ACK, Action.DEAD_LETTER, Action.DEAD_LETTER]
    assert inbox.windows == [[NEW, DUP, CONFLICT]]  # one transaction; the corrupt one never reached it
    # The duplicate's stored result is sent again; nothing for the conflict or the corrupt message.
    assert [result for result, _ in callbacks.calls] == [Result(NEW, True), Result(DUP, False)]
    assert {line["uuid"] for line in log.tagged(CORRUPTION_TAG)} == {CONFLICT, CORRUPT}
    assert [line["outcome"] for line in log.tagged("deduction decided")] == ["succeeded", "duplicate"]


def test_a_database_failure_of_a_window_holds_and_requeues_every_delivery_of_it() -> None:
    inbox = FakeInbox({NEW: DatabaseUnavailable("no answer"), DUP: Decision(Deduction.DUPLICATE, False, 2)})
    callbacks, log = FakeCallbacks(), RecordingLog()
    verdicts = handle_together(inbox, callbacks, [signed(NEW), signed(DUP)], log)
    assert [v.action for v in verdicts] == [Action.REQUEUE, Action.REQUEUE]
    assert callbacks.calls == []
    assert len(log.tagged("[FAILED TO DEDUCT IN WALLET]")) == 2


def test_a_lone_delivery_waits_for_nobody() -> None:
    """Nothing else arriving: flushed after a couple of event-loop ticks, not after the linger
    (10 s here; handle_together gives up after 5), and decided by today's single-row deduct."""
    inbox = FakeInbox(Decision(Deduction.NEW, True))
    verdicts = handle_together(inbox, FakeCallbacks(), [signed(NEW)], RecordingLog())
    assert [v.action for v in verdicts] == [Action.ACK]
    assert inbox.windows == [] and inbox.deducted == [(NEW, True)]


def test_a_full_window_is_decided_at_once_and_the_rest_in_the_next() -> None:
    inbox = FakeInbox(Decision(Deduction.NEW, True))
    verdicts = handle_together(
        inbox, FakeCallbacks(), [signed(u) for u in (NEW, DUP, CONFLICT)], RecordingLog(), size=2
    )
    assert [v.action for v in verdicts] == [Action.ACK] * 3
    assert inbox.windows == [[NEW, DUP]] and inbox.deducted[-1] == (CONFLICT, True)


# --------------------------------------------------------------------------- Inbox.deduct_many
class ScriptedCursor:
    """Answers rowcount per statement kind: the multi-row insert creates `created` rows; each
    single-row insert creates its row unless its uuid is in `stored` (then LOCK_INBOX reads it)."""

    def __init__(self, created: int, stored: dict[str, dict[str, Any]]) -> None:
        self.created = created
        self.stored = stored
        self.statements: list[str] = []
        self.rowcount = 0
        self.row: tuple[Any, ...] | None = None
        self.description: list[tuple[str]] = []

    async def execute(self, statement: str, args: Any = None) -> None:
        self.statements.append(statement)
        if statement.startswith("INSERT IGNORE INTO inbox") and "), (" in statement:
            self.rowcount = self.created
        elif statement == sql.INSERT_INBOX_DECIDED:
            self.rowcount = 0 if args[0] in self.stored else 1
        elif statement == sql.LOCK_INBOX:
            row = self.stored[args[0]]
            self.description = [(k,) for k in row]
            self.row = tuple(row.values())

    async def fetchone(self) -> Any:
        return self.row


class ScriptedDatabase:
    def __init__(self, cursor: ScriptedCursor) -> None:
        self.cursor = cursor

    async def run(self, work: Any) -> Any:
        return await work(self.cursor)


def window(*uuids: str) -> list[tuple[PaymentMessage, bool]]:
    return [(PaymentMessage(u, ALICE), True) for u in uuids]


def test_deduct_many_all_new_is_one_statement() -> None:
    cursor = ScriptedCursor(created=3, stored={})
    decisions = asyncio.run(Inbox(ScriptedDatabase(cursor)).deduct_many(window(DUP, NEW, CONFLICT)))  # type: ignore[arg-type]
    assert decisions == [Decision(Deduction.NEW, True, 1)] * 3
    assert len(cursor.statements) == 1


def test_deduct_many_with_a_redelivery_rolls_back_and_decides_each_as_alone() -> None:
    stored = {"cus_id": "alice", "amount": Decimal("12.50"), "succeed": 0, "deliveries": 1}
    cursor = ScriptedCursor(created=1, stored={DUP: stored})
    decisions = asyncio.run(Inbox(ScriptedDatabase(cursor)).deduct_many(window(NEW, DUP)))  # type: ignore[arg-type]
    assert decisions == [Decision(Deduction.NEW, True, 1), Decision(Deduction.DUPLICATE, False, 2)]
    assert cursor.statements[1] == sql.ROLLBACK
    assert sql.COUNT_INBOX_DELIVERY in cursor.statements


def test_deduct_many_with_one_uuid_twice_decides_the_second_as_a_duplicate_of_the_first() -> None:
    class Remembering(ScriptedCursor):
        async def execute(self, statement: str, args: Any = None) -> None:
            await super().execute(statement, args)
            if statement == sql.INSERT_INBOX_DECIDED and self.rowcount == 1:
                self.stored[args[0]] = {"cus_id": args[1], "amount": args[2], "succeed": int(args[3]), "deliveries": 1}

    cursor = Remembering(created=0, stored={})
    decisions = asyncio.run(Inbox(ScriptedDatabase(cursor)).deduct_many(window(NEW, NEW)))  # type: ignore[arg-type]
    assert decisions == [Decision(Deduction.NEW, True, 1), Decision(Deduction.DUPLICATE, True, 2)]
    assert sql.ROLLBACK not in cursor.statements  # no multi-row insert was tried for it
