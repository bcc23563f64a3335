"""`chancepay reconcile` heals what the pipeline gave up on; `chancepay audit` tells a healthy system
(exit 0) from a violated one (exit 1)."""

from __future__ import annotations

import uuid as uuidlib

from chancepay.core import topology
from tests.support.env import outbox_depth, purge_queue, run_audit, run_reconcile, wait_until
from tests.support.invariants import assert_converged
from tests.support.roles import restart_role


def test_reconcile_finalizes_from_inbox_and_reenqueues_lost_messages_audit_detects_violation(make_stack, env) -> None:
    s = make_stack(CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05")
    # Kind 1: decided but never mirrored: the wallet parked 3 results (unreachable orchestrator) and
    # is then gone for good, with a database of its own that nobody replays (as if its retries were
    # lost): only the reconciler can finalize these.
    s.start_wallet_with(CHANCEPAY_ORCHESTRATOR_URL="http://127.0.0.1:1", CHANCEPAY_CALLBACK_ATTEMPTS="1")
    stuck = s.pay_many(3, "stuck")
    wait_until(
        lambda: {e["uuid"] for e in s.wallet.events("result parked")} == set(stuck),
        30,
        what="the wallet parked 3 callbacks",
    )
    assert len(s.env.wallet_sql("SELECT uuid FROM inbox WHERE succeed IS NOT NULL")) == 3
    assert s.env.orch_sql("SELECT COUNT(*) FROM request WHERE succeed IS NULL")[0][0] == 3
    s.wallet.stop()
    s.env.wallet_sql("DELETE FROM pending_callback")

    # Kind 2: lost messages. One published and then purged from the queue (the broker lost it);
    # one whose outbox row disappeared before any publish.
    r = s.pay(cus_id="lost-in-queue")
    lost_queue = r.json()["uuid"]
    wait_until(lambda: outbox_depth(env) == 0, 30, what="published")
    assert purge_queue(env, topology.QUEUE) == 1
    s.scanner.stop()
    r = s.pay(cus_id="lost-outbox")
    lost_outbox = r.json()["uuid"]
    env.orch_sql("DELETE FROM outbox WHERE uuid=%s", (lost_outbox,))
    assert outbox_depth(env) == 0 and env.queue_depth(topology.QUEUE) == 0

    restart_role(s, "wallet")  # the reconciler looks up the inbox through the wallet's API
    code, summary = run_reconcile(env, age=0)
    assert code == 0, summary
    assert summary["event"] == "reconcile pass done"
    assert summary["examined"] == 5
    assert summary["finalized_from_inbox"] == 3
    assert summary["reenqueued"] == 2
    assert summary["failures"] == 0 and summary["conflicts"] == 0
    assert {u for (u,) in env.orch_sql("SELECT uuid FROM outbox")} == {lost_queue, lost_outbox}
    inbox = dict(env.wallet_sql("SELECT uuid, succeed FROM inbox"))
    assert dict(env.orch_sql("SELECT uuid, succeed FROM request WHERE uuid IN (%s,%s,%s)", stuck)) == {
        u: inbox[u] for u in stuck
    }

    restart_role(s, "scanner")  # the pipeline finishes the re-enqueued ones
    s.wait_final([lost_queue, lost_outbox], timeout=30)
    code, again = run_reconcile(env, age=0)
    assert code == 0 and again["examined"] == 0, again
    assert_converged(s, stuck + [lost_queue, lost_outbox])
    code, report = run_audit(env)
    assert code == 0 and report["ok"] and report["checked"] == 5

    # A manufactured violation: an inbox row whose uuid has no request (written as the wallet user).
    orphan = str(uuidlib.uuid4())
    env.wallet_sql("INSERT INTO inbox (uuid, cus_id, amount, succeed) VALUES (%s, 'ghost', 1.00, 1)", (orphan,))
    code, report = run_audit(env)
    assert code == 1 and not report["ok"]
    assert report["orphan_inbox"] == 1 and report["orphan_inbox_sample"] == [orphan]
