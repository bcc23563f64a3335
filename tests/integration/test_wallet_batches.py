"""Batched deliveries at the wallet (wallet/window.py, issue 22) between real processes: windows
holding redeliveries (a uuid already decided, or twice in one window), a conflicting copy and a
corrupt message deduct each uuid once and give every delivery today's verdict."""

from __future__ import annotations

from decimal import Decimal

from chancepay.core.payment import PaymentMessage
from tests.support.env import dead_lettered, wait_until
from tests.support.faults import publish_raw
from tests.support.invariants import assert_invariants


def test_windows_with_redeliveries_deduct_each_uuid_once(make_stack) -> None:
    stack = make_stack(CHANCEPAY_WALLET_BATCH_SIZE="32", CHANCEPAY_WALLET_BATCH_LINGER_SECONDS="0.005")
    stack.start("orchestrator", "scanner")
    uuids = stack.pay_many(40, prefix="w")
    wait_until(lambda: stack.env.queue_depth("chancepay.payments") == 40, 30, what="40 messages queued")
    bodies = {
        u: PaymentMessage(u, {"cus_id": f"w-{i}", "amount": Decimal("12.50")}).encode() for i, u in enumerate(uuids)
    }
    copies = {u: 1 for u in uuids}

    def publish_copies(of: list[str]) -> None:
        # What a scanner re-publishing after a lost confirm sends: the same payment again.
        for u in of:
            publish_raw(stack, bodies[u], message_id=u)
            copies[u] += 1

    # Phase 1: a second copy of every other payment queued before the wallet starts, so its first
    # windows hold both copies of a uuid (in one window or in two running side by side).
    publish_copies(uuids[::2])
    stack.start("wallet")
    stack.wait_final(uuids)
    wait_until(lambda: stack.env.queue_depth("chancepay.payments") == 0, 30, what="queue drained")
    # Phase 2: copies of decided payments, a copy with a different amount (a conflict) and a
    # corrupt message, arriving together.
    publish_copies(uuids[1::4])
    publish_raw(
        stack, PaymentMessage(uuids[3], {"cus_id": "w-3", "amount": Decimal("99.00")}).encode(), message_id=uuids[3]
    )
    publish_raw(stack, b'{"uuid": "not-a-uuid"', message_id="corrupt-1")
    wait_until(lambda: dead_lettered(stack.env) == 2, 30, what="the conflict and the corrupt message dead-lettered")
    wait_until(
        lambda: sum(stack.env.wallet_sql("SELECT SUM(deliveries) FROM inbox")[0]) == sum(copies.values()),
        30,
        what="every copy counted",
    )

    rows = stack.env.wallet_sql("SELECT uuid, succeed, deliveries, amount, created_at FROM inbox")
    assert sorted(r[0] for r in rows) == sorted(uuids)  # one row per uuid, nothing else
    assert {r[0]: r[2] for r in rows} == copies
    assert all(r[3] == Decimal("12.50") for r in rows)
    requests = dict(stack.env.orch_sql("SELECT uuid, succeed FROM request"))
    assert all(requests[r[0]] == r[1] for r in rows)
    wallet = stack.wallet
    decided = sum(wallet.metric("chancepay_wallet_messages_total", outcome=o) for o in ("succeeded", "failed"))
    assert decided == 40 and wallet.metric("chancepay_wallet_messages_total", outcome="duplicate") == 30
    assert wallet.metric("chancepay_wallet_messages_total", outcome="corrupt") == 2
    assert uuids[3] in {line.get("uuid") for line in wallet.events("[PAYLOAD_CORRUPTION_ALERT]")}
    # Rows inserted by one multi-row statement share its NOW(6): the windows really were batched.
    created = [r[4] for r in rows]
    assert len(set(created)) < len(created), "no two rows were decided in one window"
    assert not wallet.events("[FAILED TO PROCESS MESSAGE]")
    assert_invariants(stack.env)
