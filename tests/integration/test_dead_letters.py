"""Dead letters (issue 20, items 2 and 3), on both broker series the suite runs:

- looking never changes or loses what is looked at: 30 `dlq list` plus 10 `trace` leave every
  dead letter present with its delivery count unchanged, and a message still in the DLQ queue
  meanwhile is never delivered by them (it reaches the wallet's table with delivery count 0);
- dead-lettering from chancepay.payments is at-least-once (core/topology.py's policy): a message
  dead-lettered while the DLQ cannot take it stays in the main queue and arrives once it can.
"""

from __future__ import annotations

import contextlib
import json
import re
import time

import pytest

from chancepay.core import topology
from tests.integration.test_operator import _dead_letter, dead_letters, run
from tests.support.env import MESSAGE_KEY, wait_until
from tests.support.faults import publish_raw

ROWS = (
    "SELECT id, dedup_key, uuid, message_id, reason, source_queue, death_count, dead_lettered_at, delivery_count, "
    "headers, body, stored_at FROM dead_letter ORDER BY id"
)


def _body(uuid: str, cus: str) -> bytes:
    return json.dumps({"uuid": uuid, "cusId": cus, "amount": "12.50"}).encode()


def test_thirty_lists_and_ten_traces_leave_every_dead_letter_unchanged(make_stack, env) -> None:
    s = make_stack().start("orchestrator", "wallet")
    payments = s.pay_many(3, "looked-at")  # never published: no scanner
    for i, uuid in enumerate(payments):
        _dead_letter(s, _body(uuid, f"looked-at-{i}"), uuid, MESSAGE_KEY)
    forged = "6b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"  # dead-lettered by the broker itself (x-death)
    publish_raw(s, _body(forged, "m"), message_id=forged, key=None)
    wait_until(
        lambda: dead_letters(env) == 4 and env.queue_depth(topology.DLQ) == 0,
        30,
        what="four dead letters moved into the wallet's table",
    )
    # The count the broker gave each message when the wallet received it from the DLQ (RabbitMQ
    # 4.x carries the main queue's count over for the rejected one: its delivery to the wallet).
    counts = dict(env.wallet_sql("SELECT uuid, delivery_count FROM dead_letter"))
    assert [counts[u] for u in payments] == [0, 0, 0]

    # With no wallet running, one more dead letter waits in the queue itself during every look.
    s.wallet.stop()
    (late,) = s.pay_many(1, "late")
    _dead_letter(s, _body(late, "late-0"), late, MESSAGE_KEY)
    assert env.queue_depth(topology.DLQ) == 1
    before = env.wallet_sql(ROWS)
    expected = [*payments, forged]

    for _ in range(30):
        code, listed = run(env, "dlq", "list")
        assert code == 0 and [m["uuid"] for m in listed] == expected
        assert [m["delivery_count"] for m in listed] == [counts[u] for u in expected]
    for i in range(10):
        uuid = payments[i % len(payments)]
        code, (story,) = run(env, "trace", uuid)
        assert code == 0 and [m["uuid"] for m in story["dlq"]] == [uuid]
        assert story["dlq"][0]["delivery_count"] == counts[uuid] and "in the DLQ" in story["story"]

    assert env.wallet_sql(ROWS) == before, "every dead letter present, byte for byte, delivery count unchanged"
    assert env.queue_depth(topology.DLQ) == 1, "the queued one is still there"
    # ... and no look delivered it: it reaches the table as a first delivery (a quorum queue sets
    # x-delivery-count on every redelivery; the old browse-by-requeue made it 40, or dropped it
    # on RabbitMQ 4.0 at the default delivery limit of 20).
    s.role("wallet").start().wait_ready()
    wait_until(
        lambda: dead_letters(env) == 5 and env.queue_depth(topology.DLQ) == 0, 30, what="the queued dead letter moved"
    )
    ((count, headers),) = env.wallet_sql("SELECT delivery_count, headers FROM dead_letter WHERE uuid = %s", (late,))
    assert count == 0 and json.loads(headers).get("x-delivery-count", 0) == 0
    assert env.wallet_sql(ROWS)[:4] == before
    code, listed = run(env, "dlq", "list")
    assert [m["uuid"] for m in listed] == [*expected, late]


def test_a_redelivered_dead_letter_is_one_row(make_stack, env) -> None:
    """The wallet died between its commit and its ack: the broker redelivers, the row is not doubled."""
    from chancepay.core import deadletters

    s = make_stack().start("orchestrator")
    uuid, other = s.pay_many(2, "twice")
    _dead_letter(s, _body(uuid, "twice-0"), uuid, MESSAGE_KEY)
    _dead_letter(s, _body(other, "twice-1"), other, MESSAGE_KEY)

    async def get_both_without_ack(channel):
        from pamqp import commands as spec

        rows = []
        for _ in range(2):
            message = await channel.basic_get(topology.DLQ, no_ack=False)
            assert not isinstance(message.delivery, spec.Basic.GetEmpty)
            props = message.header.properties
            rows.append(deadletters.row_of(bytes(message.body), props.message_id, dict(props.headers or {})))
        return rows

    # The channel closes with both unacked: both go back (delivery count 1 each). The first one is
    # stored, as if the wallet died between its commit and its ack; the other one has no row.
    row, other_row = env.amqp(get_both_without_ack)
    assert (row[1], other_row[1]) == (uuid, other)
    env.wallet_sql(
        "INSERT INTO dead_letter (dedup_key, uuid, message_id, reason, source_queue, death_count, "
        "dead_lettered_at, delivery_count, headers, body) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        row,
    )
    wait_until(lambda: env.queue_depth(topology.DLQ) == 2, 10, what="the unacked messages back in the queue")
    s.role("wallet").start().wait_ready()
    wait_until(lambda: env.queue_depth(topology.DLQ) == 0, 30, what="the redelivered copies moved")
    assert dead_letters(env) == 2, "one row per dead letter"
    counts = dict(env.wallet_sql("SELECT uuid, delivery_count FROM dead_letter"))
    assert counts == {uuid: 0, other: 1}, "the row kept; a redelivery is counted where it lives"


def _publish_to_dlq(env, body: bytes) -> bool:
    """Publish straight into the DLQ; True when the broker took it (confirmed), False if refused."""
    from aiormq.exceptions import DeliveryError
    from pamqp import commands as spec

    async def publish(channel):
        await channel.confirm_delivery()
        await topology.declare(channel)
        try:
            return await channel.basic_publish(
                body, exchange="", routing_key=topology.DLQ, properties=spec.Basic.Properties(delivery_mode=2)
            )
        except DeliveryError:  # nacked: refused
            return None

    return isinstance(env.amqp(publish), spec.Basic.Ack)


def _reject_one(env, uuid: str) -> None:
    """What the wallet does with a message it cannot accept: reject without requeue (dead-letter)."""
    from pamqp import commands as spec

    async def reject(channel):
        message = await channel.basic_get(topology.QUEUE, no_ack=False)
        assert not isinstance(message.delivery, spec.Basic.GetEmpty)
        assert message.header.properties.message_id == uuid
        await channel.basic_reject(message.delivery.delivery_tag, requeue=False)

    env.amqp(reject)


SETTLE_KEY = "dead_letter_worker_publisher_confirm_timeout"


@contextlib.contextmanager
def quick_dead_letter_retries(env, ms: int = 1000):
    """The broker's at-least-once dead-letter worker re-publishes a message its target refused
    after `dead_letter_worker_publisher_confirm_timeout` (3 min by default; up to twice that in
    practice, it checks on a timer of the same period). Shortened on the test broker for the
    workers started meanwhile (each reads it when its queue gets a leader); restored afterwards."""
    before = env.servers.rabbitmqctl("eval", f"application:get_env(rabbit, {SETTLE_KEY}).").strip()
    match = re.fullmatch(r"\{ok,(\d+)\}", before)
    assert match, before
    env.servers.rabbitmqctl("eval", f"application:set_env(rabbit, {SETTLE_KEY}, {ms}).")
    try:
        yield
    finally:
        env.servers.rabbitmqctl("eval", f"application:set_env(rabbit, {SETTLE_KEY}, {match.group(1)}).")


@pytest.mark.parametrize("at_least_once", [True, False], ids=["policy", "without-policy-negative-control"])
def test_a_message_dead_lettered_while_the_dlq_is_full_is_kept_until_it_has_room(
    make_stack, env, at_least_once
) -> None:
    if not at_least_once:  # the quorum default, at-most-once: what the policy fixes
        env.servers.rabbitmqctl("clear_policy", "-p", env.vhost, topology.POLICY_NAME)
    # Test only: a DLQ that is full and refuses more (max-length 1, reject-publish). The main queue's
    # at-least-once policy is what tests/support/env.py applies to every test vhost, as the chart
    # does to "/" (core/topology.py).
    env.servers.rabbitmqctl(
        "set_policy",
        "-p",
        env.vhost,
        "--apply-to",
        "queues",
        "--priority",
        "20",
        "test-dlq-full",
        r"^chancepay\.payments\.dlq$",
        '{"max-length": 1, "overflow": "reject-publish"}',
    )
    assert (topology.POLICY_NAME in env.servers.rabbitmqctl("list_policies", "-p", env.vhost)) == at_least_once
    with quick_dead_letter_retries(env):
        s = make_stack().start("orchestrator")  # no wallet yet: it would empty the DLQ into its table
        try:
            taken = [_publish_to_dlq(env, b"filler") for _ in range(3)]
            assert taken[0] and not taken[-1], f"the DLQ is full and refuses more: {taken}"
            fillers = env.queue_depth(topology.DLQ)
            kept = "7b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
            publish_raw(s, _body(kept, "kept"), message_id=kept, key=None)
            _reject_one(env, kept)  # dead-lettered now, while the DLQ cannot take it
            time.sleep(3)  # the broker retried meanwhile (every second here)
            if not at_least_once:
                # The control: without the policy the broker dead-letters once, fire-and-forget,
                # without asking the DLQ (here it lands past the limit; with the DLQ's leader down
                # it is gone). The test below tells the two strategies apart.
                assert env.queue_depth(topology.DLQ) == fillers + 1
                return
            assert env.queue_depth(topology.DLQ) == fillers, "the DLQ did not take it"
            # The wallet empties the DLQ into its table: the DLQ has room again.
            s.role("wallet").start().wait_ready()
            # The message the main queue kept arrives.
            wait_until(lambda: dead_letters(env) == fillers + 1, 60, interval=0.5, what="the kept message")
            ((uuid, reason, queue),) = env.wallet_sql(
                "SELECT uuid, reason, source_queue FROM dead_letter WHERE uuid = %s", (kept,)
            )
            assert (uuid, reason, queue) == (kept, "rejected", topology.QUEUE)
            assert env.queue_depth(topology.QUEUE) == 0 and env.queue_depth(topology.DLQ) == 0
        finally:
            env.servers.rabbitmqctl("clear_policy", "-p", env.vhost, "test-dlq-full")
