"""Heal without the reconciler (issue 10): an orchestrator replica restarted during load (a rolling
update) and a long broker alarm leave nothing for `chancepay reconcile` or an operator."""

from __future__ import annotations

import time

import pytest

from tests.support.env import free_port, outbox_depth, rabbitmqctl, wait_until
from tests.support.invariants import assert_converged
from tests.support.payer import Payer
from tests.support.roles import Role
from tests.support.servers import one_pass


@one_pass("chart", "an orchestrator replica restarted: the wallet parks and redelivers its results over HTTP")
@pytest.mark.parametrize("seconds", [5, 30])
def test_orchestrator_replica_restarted_under_load_heals_without_reconcile(make_stack, env, seconds) -> None:
    """Two orchestrators, as a Deployment with 2 replicas during a rolling update: clients keep
    paying through B while A, the one the wallet calls back, is down for `seconds`. Every result
    the wallet could not deliver meanwhile is parked and delivered once A is back; nothing is
    left pending and no reconcile pass runs."""
    s = make_stack(CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05", CHANCEPAY_CALLBACK_TIMEOUT_SECONDS="1")
    s.start()  # A: the wallet's CHANCEPAY_ORCHESTRATOR_URL
    b = Role("orchestrator", env, env.environ(), free_port()).start().wait_ready()
    try:
        with Payer(s, rate=5, prefix=f"roll{seconds}", url=b.url) as payer:
            wait_until(lambda: len(payer.accepted) >= 10, 15, what="payments flowing through B")
            s.orchestrator.stop()  # SIGTERM: a rolling update takes A away
            down_at = time.monotonic()
            wait_until(
                lambda: time.monotonic() - down_at >= seconds, seconds + 5, interval=0.2, what=f"A down for {seconds} s"
            )
            s.role("orchestrator").start().wait_ready()
            wait_until(lambda: len(payer.accepted) >= 10 + 5 * seconds, seconds + 30, what="more payments after A")
        accepted = payer.accepted
        assert all(r["status"] == 202 for r in payer.snapshot()), "B kept answering"
        assert s.wallet.events("result parked"), "callbacks failed while A was down and were parked"
        s.wait_final(accepted, timeout=90)
        wait_until(
            lambda: env.wallet_sql("SELECT COUNT(*) FROM pending_callback")[0][0] == 0,
            30,
            what="every parked result delivered",
        )
        assert_converged(s, accepted)  # audit: ok; no `chancepay reconcile` ran in this test
    finally:
        b.stop()


def _disk_free_limit() -> int:
    return int(rabbitmqctl("eval", "rabbit_disk_monitor:get_disk_free_limit().").strip().strip("."))


def test_long_broker_alarm_exhausts_no_outbox_row(make_stack, env) -> None:
    """A disk alarm blocks every publisher. Time compressed by configuration: a 0.3 s confirm
    timeout and a 3-attempt limit, so 25 s of alarm are ~40 attempt windows (a 20-minute alarm
    at the defaults). Timeouts are not failed attempts: no row may reach the limit."""
    s = make_stack(
        CHANCEPAY_SCANNER_CONFIRM_TIMEOUT_SECONDS="0.3",
        CHANCEPAY_SCANNER_MAX_ATTEMPTS="3",
        CHANCEPAY_SCANNER_RETRY_BASE_SECONDS="0.1",
        CHANCEPAY_SCANNER_RETRY_MAX_SECONDS="0.3",
    ).start()
    limit = _disk_free_limit()
    uuids = s.pay_many(3, "before")
    s.wait_final(uuids, timeout=30)
    rabbitmqctl("set_disk_free_limit", str(10**15))  # 1 PB free required: the alarm is raised
    try:
        wait_until(lambda: "disk" in rabbitmqctl("eval", "rabbit_alarm:get_alarms()."), 30, what="disk alarm raised")
        during = s.pay_many(10, "alarm")
        alarm_at = time.monotonic()
        wait_until(lambda: time.monotonic() - alarm_at >= 25, 30, interval=0.5, what="25 s of alarm")
        assert outbox_depth(env) == 10, "nothing published while the broker blocks publishers"
        timeouts = [e for e in s.scanner.events("[FAILED TO SEND TO MQ]") if e["reason"] == "timeout"]
        assert len({e["uuid"] for e in timeouts}) == 10 and len(timeouts) >= 30, len(timeouts)
        exhausted = env.orch_sql("SELECT COUNT(*) FROM outbox WHERE attempts >= 3")[0][0]
        assert exhausted == 0 and not [e for e in timeouts if e["gave_up"]]
        assert s.scanner.metric("chancepay_outbox_exhausted_rows") == 0
    finally:
        rabbitmqctl("set_disk_free_limit", str(limit))
        wait_until(
            lambda: "disk" not in rabbitmqctl("eval", "rabbit_alarm:get_alarms()."), 60, what="disk alarm cleared"
        )
    s.wait_final(uuids + during, timeout=60)
    assert_converged(s, uuids + during)
