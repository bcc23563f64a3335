"""Named crash points: a role SIGKILLs itself at an exact line; after a restart the pipeline converges
with one inbox row per payment and request == inbox (CONTRACT.md, Invariants)."""

from __future__ import annotations

import signal

import httpx
import pytest

from tests.support.env import wait_until
from tests.support.groups import GROUPED, HOLD_KEY, HeldGroup
from tests.support.invariants import assert_converged
from tests.support.roles import Stack, restart_role, wait_exit_code

FAST = {
    "CHANCEPAY_SCANNER_LEASE_SECONDS": "2",
    "CHANCEPAY_SCANNER_RETRY_BASE_SECONDS": "0.2",
    "CHANCEPAY_CALLBACK_BACKOFF_SECONDS": "0.05",
    "CHANCEPAY_DB_TIMEOUT_SECONDS": "2",
}


def _pay(s: Stack, n: int, prefix: str) -> list[str]:
    uuids = []
    for i in range(n):
        r = s.pay(cus_id=f"{prefix}-{i}", amount=f"{i + 1}.10")
        assert r.status_code == 202, r.text
        uuids.append(r.json()["uuid"])
    return uuids


def test_scanner_killed_after_claim_rows_come_back_after_the_lease(make_stack) -> None:
    s = make_stack(**FAST).start("orchestrator", "wallet")
    uuids = _pay(s, 5, "claim")
    scanner = s.role("scanner", CHANCEPAY_CRASH_POINTS="scanner.after_claim").start()
    assert wait_exit_code(scanner) == -signal.SIGKILL
    scanner.wait_for_event("crash point reached", crash_point="scanner.after_claim")

    # The rows are leased (claimed, invisible) but not published, and no attempt was counted.
    rows = s.env.orch_sql(
        "SELECT uuid, attempts, claimed_by IS NOT NULL, next_attempt_at > NOW(6) FROM outbox ORDER BY uuid"
    )
    assert sorted(r[0] for r in rows) == sorted(uuids)
    assert all(r[1] == 0 and r[2] == 1 for r in rows), rows
    assert s.env.wallet_sql("SELECT COUNT(*) FROM inbox")[0][0] == 0

    fresh = restart_role(s, "scanner")
    s.wait_final(uuids, timeout=30)
    assert fresh.metric("chancepay_outbox_published_total") == 5
    assert s.wallet.metric("chancepay_wallet_messages_total", outcome="duplicate") == 0
    assert_converged(s, uuids)


def test_scanner_killed_after_broker_ack_before_delete_wallet_dedupes(make_stack) -> None:
    s = make_stack(**FAST).start("orchestrator", "wallet")
    uuids = _pay(s, 3, "ack")
    scanner = s.role("scanner", CHANCEPAY_CRASH_POINTS="scanner.after_ack").start()
    assert wait_exit_code(scanner) == -signal.SIGKILL
    # Confirmed by the broker, so the wallet finalizes them; the outbox rows are still there.
    s.wait_final(uuids, timeout=30)
    assert s.env.orch_sql("SELECT COUNT(*) FROM outbox")[0][0] == 3

    fresh = restart_role(s, "scanner")
    wait_until(lambda: s.env.orch_sql("SELECT COUNT(*) FROM outbox")[0][0] == 0, 30, what="outbox drained")
    assert fresh.metric("chancepay_outbox_published_total") == 3  # the second publish of each
    wait_until(
        lambda: s.wallet.metric("chancepay_wallet_messages_total", outcome="duplicate") == 3,
        30,
        what="three duplicates",
    )
    rows = s.env.wallet_sql("SELECT uuid, deliveries FROM inbox")
    assert sorted(r[0] for r in rows) == sorted(uuids) and all(r[1] == 2 for r in rows), rows
    finalized = sum(
        s.orchestrator.metric("chancepay_payments_finalized_total", result=r) for r in ("succeeded", "failed")
    )
    assert finalized == 3
    assert not s.orchestrator.events("[FAILED TO FINALIZE")
    assert_converged(s, uuids)


@pytest.mark.parametrize("point", ["wallet.after_inbox_insert", "wallet.after_finalize", "wallet.after_callback"])
def test_wallet_killed_at_crash_point_then_restarted(make_stack, point: str) -> None:
    s = make_stack(**FAST).start("orchestrator", "scanner")
    wallet = s.role("wallet", CHANCEPAY_CRASH_POINTS=point).start()
    uuid = _pay(s, 1, point)[0]
    assert wait_exit_code(wallet) == -signal.SIGKILL
    wallet.wait_for_event("crash point reached", crash_point=point)

    inbox = s.env.wallet_sql("SELECT succeed FROM inbox WHERE uuid=%s", (uuid,))
    request = s.env.orch_sql("SELECT succeed FROM request WHERE uuid=%s", (uuid,))[0][0]
    if point == "wallet.after_inbox_insert":
        assert inbox == [], "the insert was not committed: the transaction died with the process"
        assert request is None
    elif point == "wallet.after_finalize":
        assert inbox and inbox[0][0] in (0, 1), "the decision is durable before the callback"
        assert request is None
    else:
        assert inbox and request == inbox[0][0], "the callback was delivered before the crash"

    restart_role(s, "wallet")
    s.wait_final([uuid], timeout=30)
    rows = s.env.wallet_sql("SELECT uuid, succeed, deliveries FROM inbox")
    assert len(rows) == 1 and rows[0][0] == uuid
    if inbox:
        assert rows[0][1] == inbox[0][0], "a redelivery must not flip the coin again"
        assert rows[0][2] == 2
    assert s.env.orch_sql("SELECT succeed FROM request WHERE uuid=%s", (uuid,))[0][0] == rows[0][1]
    assert not s.orchestrator.events("[FAILED TO FINALIZE")
    assert_converged(s, [uuid])


def test_orchestrator_killed_mid_group_commits_none_of_it_and_answered_none(make_stack) -> None:
    """A group (orchestrator/group.py) killed after its INSERTs, before its COMMIT: none of its rows
    exists, none of its callers got a 202; the payments before it (a lone one, the held one) stand."""
    s = make_stack(**{**FAST, **GROUPED, "CHANCEPAY_CRASH_POINTS": "orchestrator.mid_group"}).start("orchestrator")
    lone = s.pay(cus_id="lone", amount="1.00")  # flushed alone: a group of one is no crash point
    assert lone.status_code == 202, lone.text
    held = HeldGroup(s)
    try:
        posted = [held.post(f"group-{i}", f"{i + 1}.00") for i in range(5)]
        held.release()
        assert wait_exit_code(s.orchestrator) == -signal.SIGKILL
        for f in posted:  # nobody of the group got an answer
            with pytest.raises(httpx.HTTPError):
                f.result(timeout=30)
    finally:
        held.close()
    s.orchestrator.wait_for_event("crash point reached", crash_point="orchestrator.mid_group")
    # The held payment committed before the group left (whether its 202 got out before the kill).
    accepted = sorted(
        [lone.json()["uuid"], s.env.orch_sql("SELECT uuid FROM request WHERE idempotency_key = %s", (HOLD_KEY,))[0][0]]
    )
    if held.held.exception() is None:
        assert held.held.result().json()["uuid"] in accepted
    assert sorted(r[0] for r in s.env.orch_sql("SELECT uuid FROM request")) == accepted
    assert sorted(r[0] for r in s.env.orch_sql("SELECT uuid FROM outbox")) == accepted

    restart_role(s, "orchestrator", CHANCEPAY_CRASH_POINTS="")
    s.start("scanner", "wallet")
    s.wait_final(accepted, timeout=30)
    assert_converged(s, accepted)
