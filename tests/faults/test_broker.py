"""RabbitMQ faults: unreachable for 30 s, really restarted, the queue deleted under the scanner."""

from __future__ import annotations

import time

from chancepay.core import topology
from tests.support.env import delete_queue, outbox_depth, port_answers, wait_until
from tests.support.faultproxy import FaultProxy
from tests.support.faults import rabbitmq_app_stopped
from tests.support.invariants import assert_converged
from tests.support.payer import Payer
from tests.support.roles import Supervisor

FAST = {
    "CHANCEPAY_SCANNER_RETRY_BASE_SECONDS": "0.2",
    "CHANCEPAY_SCANNER_RETRY_MAX_SECONDS": "2",
    "CHANCEPAY_SCANNER_CONFIRM_TIMEOUT_SECONDS": "2",
    "CHANCEPAY_CALLBACK_BACKOFF_SECONDS": "0.05",
}
OUTAGE_SECONDS = 30


def test_rabbitmq_unreachable_for_30s_api_keeps_accepting_then_drains(make_stack, env) -> None:
    proxy = FaultProxy("127.0.0.1", env.amqp_port).start()
    try:
        via_proxy = env.amqp_url(port=proxy.port)
        s = make_stack(**FAST)
        s.role("orchestrator").start()
        s.role("scanner", CHANCEPAY_AMQP_URL=via_proxy).start()
        s.role("wallet", CHANCEPAY_AMQP_URL=via_proxy).start()
        for r in s.roles.values():
            r.wait_ready()
        with Supervisor(s, "scanner", "wallet") as sup, Payer(s, rate=4, timeout=10, prefix="mqdown") as payer:
            wait_until(lambda: len(payer.accepted) >= 4, 10, what="payments flowing")
            before = len(payer.accepted)
            proxy.set_mode("refuse")  # the broker is gone: no connect, established connections RST
            fault_start = time.monotonic()
            wait_until(
                lambda: sup.exits["scanner"] and sup.exits["wallet"],
                15,
                what="scanner and wallet exit on losing the broker",
            )
            deepest = 0
            while time.monotonic() - fault_start < OUTAGE_SECONDS:
                deepest = max(deepest, outbox_depth(env))
                time.sleep(0.5)
            during = [r for r in payer.snapshot() if r["started"] >= fault_start]
            proxy.set_mode("pass")
            # every payment taken during the outage was accepted, promptly
            assert len(during) >= OUTAGE_SECONDS * 3, len(during)
            assert all(r["status"] == 202 for r in during), [r for r in during if r["status"] != 202][:3]
            assert max(r["elapsed"] for r in during) < 5
            assert deepest >= OUTAGE_SECONDS * 3, f"the outbox must grow while the broker is away ({deepest})"
            assert len(payer.accepted) > before
            # restarted by the supervisor; once the broker is back they stay up and drain
            wait_until(
                lambda: s.scanner.running and s.wallet.running and outbox_depth(env) == 0,
                60,
                what="outbox drained after the broker came back",
            )
        assert all(code != 0 for code in sup.exits["scanner"]), sup.exits
        assert sup.restarts["scanner"] >= 1 and sup.restarts["wallet"] >= 1
        failed = s.scanner.events("[FAILED TO SEND TO MQ]")
        assert failed and all(f["reason"] == "connection" for f in failed)
        s.scanner.wait_ready()
        s.wallet.wait_ready()
        assert_converged(s, payer.accepted)
    finally:
        proxy.stop()


def test_rabbitmq_restarted_with_confirmed_unconsumed_messages_loses_none(make_stack, env) -> None:
    s = make_stack(**FAST).start("orchestrator", "scanner")
    uuids = s.pay_many(20, "restart")
    wait_until(lambda: outbox_depth(env) == 0, 30, what="all 20 confirmed by the broker")
    assert env.queue_depth(topology.QUEUE) == 20
    with Supervisor(s, "scanner") as sup:
        with rabbitmq_app_stopped():
            assert not port_answers("127.0.0.1", env.amqp_port)
            wait_until(lambda: sup.exits["scanner"], 15, what="the scanner exits when the broker goes away")
        # the vhost, the durable quorum queue and its persistent messages survived
        depth = wait_until(
            lambda: env.queue_depth(topology.QUEUE) == 20 and 20,
            90,
            interval=0.5,
            what="queue usable again with 20 messages",
        )
        assert depth == 20
        wait_until(lambda: s.scanner.running, 30, what="scanner restarted")
        s.scanner.wait_ready(timeout=60)
    assert sup.exits["scanner"] and all(code != 0 for code in sup.exits["scanner"])
    s.role("wallet").start().wait_ready()
    s.wait_final(uuids, timeout=60)
    assert env.queue_depth(topology.QUEUE) == 0
    assert_converged(s, uuids)


def test_queue_deleted_under_the_scanner_publish_returned_row_kept_topology_redeclared(make_stack, env) -> None:
    s = make_stack(**FAST).start("orchestrator", "scanner")
    delete_queue(env, topology.QUEUE)
    r = s.pay(cus_id="orphaned-route")
    assert r.status_code == 202
    uuid = r.json()["uuid"]
    returned = s.scanner.wait_for_event("[FAILED TO SEND TO MQ]", uuid=uuid, reason="returned")
    assert returned["attempt"] == 1
    # the row was kept, then the topology was declared again and the next attempt succeeded
    wait_until(lambda: outbox_depth(env) == 0, 30, what="second attempt published")
    assert env.queue_depth(topology.QUEUE) == 1
    assert s.scanner.metric("chancepay_outbox_publish_failures_total", reason="returned") == 1
    assert s.scanner.metric("chancepay_outbox_published_total") == 1
    assert s.scanner.running
    s.role("wallet").start().wait_ready()
    s.wait_final([uuid], timeout=30)
    assert_converged(s, [uuid])
