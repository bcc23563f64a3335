"""A wallet killed in the middle of a window of deliveries (wallet/window.py, issue 22): at the
multi-row insert nothing of the window is committed; after it, the whole window is, and the
redeliveries after the restart keep every stored result. Either way each uuid is deducted once."""

from __future__ import annotations

import signal

import pytest

from tests.support.env import wait_until
from tests.support.invariants import assert_converged
from tests.support.roles import restart_role, wait_exit_code

FAST = {
    "CHANCEPAY_SCANNER_RETRY_BASE_SECONDS": "0.2",
    "CHANCEPAY_CALLBACK_BACKOFF_SECONDS": "0.05",
    "CHANCEPAY_DB_TIMEOUT_SECONDS": "2",
    "CHANCEPAY_WALLET_BATCH_SIZE": "32",
    "CHANCEPAY_WALLET_BATCH_LINGER_SECONDS": "0.005",
}


@pytest.mark.parametrize("point", ["wallet.after_inbox_insert", "wallet.after_finalize"])
def test_wallet_killed_mid_window_deducts_each_uuid_once(make_stack, point: str) -> None:
    s = make_stack(**FAST).start("orchestrator", "scanner")
    uuids = s.pay_many(20, prefix="window")
    wait_until(lambda: s.env.queue_depth("chancepay.payments") == 20, 30, what="20 messages queued")
    wallet = s.role("wallet", CHANCEPAY_CRASH_POINTS=point).start()
    assert wait_exit_code(wallet) == -signal.SIGKILL
    wallet.wait_for_event("crash point reached", crash_point=point)

    before = {
        u: (succeed, deliveries)
        for u, succeed, deliveries in s.env.wallet_sql("SELECT uuid, succeed, deliveries FROM inbox")
    }
    if point == "wallet.after_inbox_insert":
        assert before == {}, "nothing of the window may be committed"
    else:
        # The window committed as a whole before its first callback; nothing was called back.
        assert before and all(v[1] == 1 for v in before.values()), before
        assert len(before) > 1, "the first window held one delivery: nothing was batched"
        assert s.env.orch_sql("SELECT COUNT(*) FROM request WHERE succeed IS NOT NULL")[0][0] == 0

    restart_role(s, "wallet", CHANCEPAY_CRASH_POINTS="")
    s.wait_final(uuids, timeout=30)
    rows = {
        u: (succeed, deliveries)
        for u, succeed, deliveries in s.env.wallet_sql("SELECT uuid, succeed, deliveries FROM inbox")
    }
    assert sorted(rows) == sorted(uuids)
    for u, (succeed, deliveries) in rows.items():
        if u in before:
            assert succeed == before[u][0], "a redelivery must not flip the coin again"
            assert deliveries == 2
        else:
            assert deliveries == 1
    assert not s.orchestrator.events("[FAILED TO FINALIZE")
    assert_converged(s, uuids)
