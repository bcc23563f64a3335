"""The wallet's result callback fails: 500 for 30 s; a timeout after the orchestrator committed."""

from __future__ import annotations

import time

from tests.support.stack import (
    CallbackStub,
    Payer,
    assert_converged,
    pending_count,
    run_reconcile,
    wait_until,
)

OUTAGE_SECONDS = 30
CALLBACK_TAG = "[FAILED TO CALLBACK FROM WALLET]"


def test_callback_answering_500_for_30s_then_healed_by_retries_and_reconcile(make_stack, env) -> None:
    fault_end = [float("inf")]

    def behaviour(path: str, n: int) -> tuple:
        return ("status", 500) if time.monotonic() < fault_end[0] else ("forward",)

    with CallbackStub(env.base_url("orchestrator"), behaviour) as stub:
        s = make_stack(CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05", CHANCEPAY_CALLBACK_TIMEOUT_SECONDS="1")
        s.start_wallet_with(CHANCEPAY_ORCHESTRATOR_URL=stub.url)
        fault_end[0] = time.monotonic() + OUTAGE_SECONDS
        with Payer(s, rate=2, prefix="cb500") as payer:
            s.wallet.wait_for_event(CALLBACK_TAG, timeout=15)
            wait_until(lambda: time.monotonic() >= fault_end[0], OUTAGE_SECONDS + 5, interval=0.5,
                       what="end of the 500 window")
        accepted = payer.accepted
        assert len(accepted) >= OUTAGE_SECONDS
        assert all(r["status"] == 202 for r in payer.snapshot())
        after = []
        for i in range(5):  # the callback works again: new payments are finalized by the wallet itself
            r = s.pay(cus_id=f"after-{i}")
            assert r.status_code == 202
            after.append(r.json()["uuid"])
        s.wait_final(after, timeout=30)
        accepted += after

        # Deliveries the wallet gave up on (inbox final, request pending) are exactly what stays pending.
        def given_up() -> set[str]:
            return {e["uuid"] for e in s.wallet.events(CALLBACK_TAG) if "deliveries" in e}

        def settled() -> bool:
            pending = {u for (u,) in env.orch_sql("SELECT uuid FROM request WHERE succeed IS NULL")}
            return pending == given_up() and len(env.wallet_sql("SELECT uuid FROM inbox")) == len(accepted)

        wait_until(settled, 60, interval=0.5, what="every payment final or given up by the wallet")
        stuck = pending_count(env)
        assert stuck > 0, "30 s of 500 outlasts the wallet's retry budget; the reconciler heals the rest"
        inbox_final = dict(env.wallet_sql("SELECT uuid, succeed FROM inbox WHERE succeed IS NOT NULL"))
        assert len(inbox_final) == len(accepted)
        assert any("HTTP 500" in e.get("reason", "") for e in s.wallet.events(CALLBACK_TAG))
        assert s.wallet.metric("chancepay_wallet_callback_failures_total") > 0

        code, summary = run_reconcile(env, age=0)
        assert code == 0, summary
        assert summary["finalized_from_inbox"] == stuck and summary["failures"] == 0, summary
        assert pending_count(env) == 0
        # every forwarded callback was applied or repeated (200), never contradicted
        assert all(c.get("upstream_status") == 200 for c in stub.snapshot() if c["action"] == "forward")
        assert not s.orchestrator.events("[FAILED TO FINALIZE")
        assert_converged(s, accepted)


def test_callback_times_out_after_the_orchestrator_committed_retry_gets_200(make_stack, env) -> None:
    def behaviour(path: str, n: int) -> tuple:
        # first call: the orchestrator commits, but its answer arrives after the wallet's timeout
        return ("forward_then_delay", 2.5) if n == 0 else ("forward",)

    with CallbackStub(env.base_url("orchestrator"), behaviour) as stub:
        s = make_stack(CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05", CHANCEPAY_CALLBACK_TIMEOUT_SECONDS="1")
        s.start_wallet_with(CHANCEPAY_ORCHESTRATOR_URL=stub.url)
        uuids = s.pay_many(3, "slow")
        s.wait_final(uuids, timeout=30)
        wait_until(lambda: s.wallet.metric("chancepay_wallet_callbacks_total") == 3, 30, what="3 delivered callbacks")
        calls = stub.snapshot()
        for uuid in uuids:
            mine = [c for c in calls if f"/{uuid}/" in c["path"]]
            assert len(mine) == 2, mine
            assert mine[0]["action"] == "forward_then_delay" and mine[0]["upstream_status"] == 200
            assert mine[1]["upstream_status"] == 200 and mine[1]["answered"] == 200, "the retry is a 200 repeat"
        timeouts = s.wallet.events(CALLBACK_TAG)
        assert len(timeouts) == 3 and all("Timeout" in e["reason"] and e["will_retry"] for e in timeouts), timeouts
        # finalized once each, never contradicted, the message acked on its first delivery
        assert sum(s.orchestrator.metric("chancepay_payments_finalized_total", result=r)
                   for r in ("succeeded", "failed")) == 3
        assert not s.orchestrator.events("[FAILED TO FINALIZE")
        assert all(d == 1 for (d,) in env.wallet_sql("SELECT deliveries FROM inbox"))
        assert_converged(s, uuids)


def test_wallet_gives_up_after_max_deliveries_it_counted_itself(make_stack, env) -> None:
    """CHANCEPAY_WALLET_MAX_DELIVERIES is counted in the inbox row, on every broker version (the
    broker's x-delivery-count changed meaning in RabbitMQ 4.3). One callback try per delivery: the
    orchestrator sees exactly MAX calls, the inbox row says MAX, then the message is acked."""
    deliveries = 3

    with CallbackStub(env.base_url("orchestrator"), lambda path, n: ("status", 500)) as stub:
        s = make_stack(CHANCEPAY_CALLBACK_ATTEMPTS="1", CHANCEPAY_WALLET_MAX_DELIVERIES=str(deliveries))
        s.start_wallet_with(CHANCEPAY_ORCHESTRATOR_URL=stub.url)
        (uuid,) = s.pay_many(1, "given-up")
        gave_up = s.wallet.wait_for_event(CALLBACK_TAG, timeout=60, uuid=uuid, deliveries=deliveries)
        assert "reconcile" in gave_up["reason"]
        assert env.wallet_sql("SELECT deliveries FROM inbox WHERE uuid = %s", (uuid,)) == [(deliveries,)]
        wait_until(lambda: env.queue_depth("chancepay.payments") == 0, 30, what="the message acked")
        calls = [c for c in stub.snapshot() if uuid in c["path"]]
        assert len(calls) == deliveries, calls
        assert pending_count(env) == 1
    code, summary = run_reconcile(env, age=0)
    assert code == 0 and summary["finalized_from_inbox"] == 1, summary
    assert_converged(s, [uuid])
