"""The wallet's result callback fails: 500 for 30 s; a timeout after the orchestrator committed."""

from __future__ import annotations

import time

from tests.support.env import pending_count, run_reconcile, wait_until
from tests.support.faults import CallbackStub
from tests.support.invariants import assert_converged
from tests.support.payer import Payer
from tests.support.servers import one_pass

OUTAGE_SECONDS = 30
CALLBACK_TAG = "[FAILED TO CALLBACK FROM WALLET]"


@one_pass("debian12", "the orchestrator answering 500: HTTP between wallet and orchestrator")
def test_callback_answering_500_for_30s_healed_by_the_wallet_without_the_reconciler(make_stack, env) -> None:
    """Half a minute of 500s (a broken orchestrator rollout): the wallet parks each result it could
    not deliver and keeps retrying it; when the orchestrator is healthy again every payment is
    final, and the reconciler finds nothing to repair."""
    fault_end = [float("inf")]

    def behaviour(path: str, n: int) -> tuple:
        return ("status", 500) if time.monotonic() < fault_end[0] else ("forward",)

    with CallbackStub(env.base_url("orchestrator"), behaviour) as stub:
        s = make_stack(
            CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05",
            CHANCEPAY_CALLBACK_TIMEOUT_SECONDS="1",
            CHANCEPAY_CALLBACK_RETRY_MAX_SECONDS="5",
        )
        s.start_wallet_with(CHANCEPAY_ORCHESTRATOR_URL=stub.url)
        fault_end[0] = time.monotonic() + OUTAGE_SECONDS
        with Payer(s, rate=2, prefix="cb500") as payer:
            s.wallet.wait_for_event(CALLBACK_TAG, timeout=15)
            wait_until(
                lambda: time.monotonic() >= fault_end[0], OUTAGE_SECONDS + 5, interval=0.5, what="end of the 500 window"
            )
        accepted = payer.accepted
        assert len(accepted) >= OUTAGE_SECONDS
        assert all(r["status"] == 202 for r in payer.snapshot())
        parked = {e["uuid"] for e in s.wallet.events("result parked")}
        assert len(parked) >= OUTAGE_SECONDS, "each payment of the window was parked, not given up"
        # no message was looped through the broker meanwhile: one delivery each
        assert all(d == 1 for (d,) in env.wallet_sql("SELECT deliveries FROM inbox"))
        s.wait_final(accepted, timeout=60)
        wait_until(
            lambda: env.wallet_sql("SELECT COUNT(*) FROM pending_callback")[0][0] == 0,
            30,
            what="every parked result delivered",
        )
        assert any("HTTP 500" in e.get("reason", "") for e in s.wallet.events(CALLBACK_TAG))
        assert s.wallet.metric("chancepay_wallet_callback_failures_total") > 0
        code, summary = run_reconcile(env, age=0)
        assert code == 0 and summary["examined"] == 0, summary
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
            mine = [c for c in calls if uuid in c["uuids"]]
            assert len(mine) == 2, mine
            assert mine[0]["action"] == "forward_then_delay" and mine[0]["upstream_status"] == 200
            assert mine[1]["upstream_status"] == 200 and mine[1]["answered"] == 200, "the retry is a 200 repeat"
        timeouts = s.wallet.events(CALLBACK_TAG)
        assert len(timeouts) == 3 and all("Timeout" in e["reason"] and e["will_retry"] for e in timeouts), timeouts
        # finalized once each, never contradicted, the message acked on its first delivery
        assert (
            sum(s.orchestrator.metric("chancepay_payments_finalized_total", result=r) for r in ("succeeded", "failed"))
            == 3
        )
        assert not s.orchestrator.events("[FAILED TO FINALIZE")
        assert all(d == 1 for (d,) in env.wallet_sql("SELECT deliveries FROM inbox"))
        assert_converged(s, uuids)


def test_a_parked_result_outlives_the_wallet_process(make_stack, env) -> None:
    """The wallet is killed while a result waits to be delivered: the next wallet process (any
    replica) delivers it from the pending_callback table. The message is not redelivered: the
    broker plays no part in the retry, whatever its x-delivery-count does."""
    deliver = [False]
    with CallbackStub(
        env.base_url("orchestrator"), lambda path, n: ("forward",) if deliver[0] else ("status", 503)
    ) as stub:
        s = make_stack(CHANCEPAY_CALLBACK_ATTEMPTS="1", CHANCEPAY_CALLBACK_RETRY_MAX_SECONDS="1")
        s.start_wallet_with(CHANCEPAY_ORCHESTRATOR_URL=stub.url)
        (uuid,) = s.pay_many(1, "outlives")
        s.wallet.wait_for_event("result parked", uuid=uuid)
        wait_until(lambda: len([c for c in stub.snapshot() if uuid in c["uuids"]]) >= 3, 30, what="background retries")
        s.wallet.kill()
        assert pending_count(env) == 1 and env.queue_depth("chancepay.payments") == 0
        deliver[0] = True
        s.role("wallet", CHANCEPAY_ORCHESTRATOR_URL=stub.url, CHANCEPAY_CALLBACK_ATTEMPTS="1").start().wait_ready()
        s.wait_final([uuid], timeout=30)
        assert env.wallet_sql("SELECT deliveries FROM inbox WHERE uuid = %s", (uuid,)) == [(1,)]
        wait_until(lambda: env.wallet_sql("SELECT COUNT(*) FROM pending_callback")[0][0] == 0, 10, what="row deleted")
    assert_converged(s, [uuid])
