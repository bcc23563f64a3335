"""The operator's commands (`chancepay outbox|dlq|trace`) on the real database and broker: each does
what the README tells an operator to do, prints JSON, logs, counts, and is idempotent."""

from __future__ import annotations

import json

from pamqp import commands as spec

from chancepay.core import signing, topology
from tests.support.env import MESSAGE_KEY, wait_until
from tests.support.faults import publish_raw
from tests.support.roles import Stack


def run(env, *args: str, **environ: str) -> tuple[int, list[dict]]:
    result = env.chancepay(*args, timeout=120, **environ)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.returncode, lines


def logged(env, *args: str, **environ: str) -> list[dict]:
    result = env.chancepay(*args, timeout=120, **environ)
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def test_outbox_list_and_retry_exhausted_rows(make_stack, env) -> None:
    s = make_stack(CHANCEPAY_SCANNER_MAX_ATTEMPTS="3").start("orchestrator", "wallet")
    stuck = s.pay_many(2, "stuck")
    fresh = s.pay_many(1, "fresh")
    # What a scanner leaves after three failed publishes (the setup; operators never write this SQL).
    env.orch_sql("UPDATE outbox SET attempts = 3, last_error = 'returned: NO_ROUTE' WHERE uuid IN (%s, %s)", stuck)

    code, rows = run(env, "outbox", "list", CHANCEPAY_SCANNER_MAX_ATTEMPTS="3")
    assert code == 0 and {r["uuid"] for r in rows} == set(stuck)
    assert all(r["exhausted"] and r["attempts"] == 3 and "NO_ROUTE" in r["last_error"] for r in rows)
    code, everything = run(env, "outbox", "list", "--all", CHANCEPAY_SCANNER_MAX_ATTEMPTS="3")
    assert {r["uuid"] for r in everything} == set(stuck + fresh)

    code, out = run(env, "outbox", "retry", stuck[0], CHANCEPAY_SCANNER_MAX_ATTEMPTS="3")
    assert code == 0 and out == [{"retried": 1}]
    code, out = run(env, "outbox", "retry", "--all-exhausted", CHANCEPAY_SCANNER_MAX_ATTEMPTS="3")
    assert out == [{"retried": 1}]
    code, out = run(env, "outbox", "retry", "--all-exhausted", CHANCEPAY_SCANNER_MAX_ATTEMPTS="3")
    assert out == [{"retried": 0}], "idempotent: nothing left to retry"
    assert env.orch_sql("SELECT MAX(attempts) FROM outbox")[0][0] == 0
    s.role("scanner", CHANCEPAY_SCANNER_MAX_ATTEMPTS="3").start().wait_ready()
    s.wait_final(stuck + fresh, timeout=30)
    retry_log = logged(env, "outbox", "retry", stuck[0], CHANCEPAY_SCANNER_MAX_ATTEMPTS="3")
    assert any(line["event"] == "outbox rows back into rotation" for line in retry_log)


def dead_letters(env) -> int:
    return int(env.wallet_sql("SELECT COUNT(*) FROM dead_letter")[0][0])


def _dead_letter(stack: Stack, body: bytes, message_id: str, key: str | None) -> None:
    """Put a message straight into the DLQ (what the queue's dead-lettering does)."""
    headers = {signing.HEADER: signing.sign(body, key)} if key else {}

    async def publish(channel):
        await channel.confirm_delivery()
        await topology.declare(channel)
        return await channel.basic_publish(
            body,
            exchange="",
            routing_key=topology.DLQ,
            properties=spec.Basic.Properties(delivery_mode=2, message_id=message_id, headers=headers),
        )

    assert isinstance(stack.env.amqp(publish), spec.Basic.Ack)


def test_dlq_list_show_replay_purge(make_stack, env) -> None:
    s = make_stack().start("orchestrator", "wallet")
    (pending,) = s.pay_many(1, "dead-lettered")  # never published: no scanner
    body = json.dumps({"uuid": pending, "cusId": "dead-lettered-0", "amount": "12.50"}).encode()
    _dead_letter(s, body, pending, MESSAGE_KEY)  # a valid payment dead-lettered (e.g. a long outage)
    forged = "4b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    publish_raw(s, json.dumps({"uuid": forged, "cusId": "m", "amount": "1.00"}).encode(), message_id=forged, key=None)
    s.wallet.wait_for_event("[PAYLOAD_CORRUPTION_ALERT]", uuid=forged)
    # The wallet moves the DLQ's messages into its dead_letter table (README "Dead letters").
    wait_until(
        lambda: dead_letters(env) == 2 and env.queue_depth(topology.DLQ) == 0,
        15,
        what="two dead letters moved into the wallet's table",
    )

    code, listed = run(env, "dlq", "list")
    assert code == 0 and [m["uuid"] for m in listed] == [pending, forged]
    by_uuid = {m["uuid"]: m for m in listed}
    assert by_uuid[pending]["signature"] == "ok" and by_uuid[pending]["parse"] == "ok"
    assert "no x-chancepay-signature" in by_uuid[forged]["signature"]
    assert by_uuid[forged]["dead_lettered"]["reason"] == "rejected"
    assert by_uuid[forged]["dead_lettered"]["queue"] == topology.QUEUE
    assert dead_letters(env) == 2, "listing takes nothing away"

    code, shown = run(env, "dlq", "show", forged)
    assert code == 0 and shown[0]["uuid"] == forged and "body_base64" in shown[0]
    assert run(env, "dlq", "show", "#1")[1][0]["uuid"] == pending
    assert run(env, "dlq", "show", "no-such-message")[0] == 1

    code, replay = run(env, "dlq", "replay", "--all")
    # It replayed one, but could not replay the forgery: non-zero, per the contract.
    assert code == 1 and replay == [{"replayed": 1, "already_final": 0, "not_a_payment": 1}]
    assert env.orch_sql("SELECT COUNT(*) FROM outbox WHERE uuid = %s", (pending,))[0][0] == 1
    s.role("scanner").start().wait_ready()
    s.wait_final([pending], timeout=30)  # through the normal path: outbox, signed by the scanner, wallet
    assert dead_letters(env) == 1  # the forgery stays for an operator
    code, again = run(env, "dlq", "replay", "--all")
    assert code == 1 and again == [{"replayed": 0, "already_final": 0, "not_a_payment": 1}], "idempotent"
    code, unknown = run(env, "dlq", "replay", "no-such-message")
    assert code == 1 and unknown == [
        {"replayed": 0, "already_final": 0, "not_a_payment": 0, "not_in_dlq": ["no-such-message"]}
    ]

    assert run(env, "dlq", "purge", "no-such-message") == (1, [{"purged": 0, "not_in_dlq": ["no-such-message"]}])
    code, purged = run(env, "dlq", "purge", forged)
    assert code == 0 and purged == [{"purged": 1}]
    assert run(env, "dlq", "purge", "--all") == (0, [{"purged": 0}])  # an empty DLQ is what was asked
    assert run(env, "dlq", "replay", "--all")[0] == 1  # nothing to replay
    assert dead_letters(env) == 0 and env.queue_depth(topology.DLQ) == 0
    assert env.wallet_sql("SELECT COUNT(*) FROM inbox WHERE uuid = %s", (forged,))[0][0] == 0


def test_trace_tells_one_payments_story(stack: Stack, env) -> None:
    (uuid,) = stack.pay_many(1, "traced")
    stack.wait_final([uuid])
    code, (story,) = run(env, "trace", uuid)
    assert code == 0
    assert story["request"]["status"] in ("SUCCEEDED", "FAILED") and story["outbox"] is None
    assert story["inbox"]["succeed"] == (story["request"]["status"] == "SUCCEEDED")
    assert story["inbox"]["deliveries"] == 1 and story["parked_callback"] is None and story["dlq"] == []
    assert "decided by the wallet" in story["story"] and story["request"]["status"] in story["story"]
    code, (unknown,) = run(env, "trace", "5b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
    assert code == 1 and unknown["story"] == "no payment with this uuid"
    assert run(env, "trace", "not-a-uuid")[0] != 0
