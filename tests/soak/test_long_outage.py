"""Opt-in (make soak): a database outage longer than the quorum queue's delivery limit allows at
a fixed ~1 s requeue cadence. Payments waiting for the wallet must not be dead-lettered: a DB
outage is not a poison message."""

from __future__ import annotations

import signal
import time

from tests.support.env import dead_lettered, outbox_depth, wait_until
from tests.support.faultproxy import FaultProxy
from tests.support.invariants import assert_converged

OUTAGE_SECONDS = 75  # > DELIVERY_LIMIT (50) deliveries at the old ~1 s cadence


def test_long_database_outage_does_not_dead_letter_queued_payments(make_stack, env) -> None:
    proxy = FaultProxy("127.0.0.1", 3306).start()
    try:
        s = make_stack(CHANCEPAY_DB_TIMEOUT_SECONDS="2", CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05")
        s.role("orchestrator").start()
        s.role("scanner").start()
        s.role("wallet", CHANCEPAY_WALLET_DB=env.wallet_url(port=proxy.port)).start()
        for r in s.roles.values():
            r.wait_ready()
        s.wallet.signal(signal.SIGSTOP)
        uuids = [s.pay(cus_id=f"long-{i}").json()["uuid"] for i in range(5)]
        wait_until(lambda: outbox_depth(env) == 0, 30, what="published")
        proxy.set_mode("refuse")
        s.wallet.signal(signal.SIGCONT)
        s.wallet.wait_for_event("[FAILED TO DEDUCT IN WALLET]", timeout=15)
        time.sleep(OUTAGE_SECONDS)  # the deliberate duration of the outage
        proxy.set_mode("pass")
        s.wait_final(uuids, timeout=90)
        assert dead_lettered(env) == 0
        assert s.wallet.running
        assert_converged(s, uuids)
    finally:
        proxy.stop()
