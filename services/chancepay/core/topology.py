"""RabbitMQ names and arguments, declared identically by every process that uses them.

A quorum queue refuses a redeclaration with different arguments (PRECONDITION_FAILED),
so the arguments live here and nowhere else.
"""

from __future__ import annotations

import json
from typing import Any

EXCHANGE = "chancepay"
QUEUE = "chancepay.payments"
DLQ = "chancepay.payments.dlq"
ROUTING_KEY = "payment.requested"

# A message that keeps crashing its consumer is dead-lettered after this many deliveries,
# so one poison message cannot wedge the queue.
DELIVERY_LIMIT = 50

QUEUE_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": DLQ,
    "x-delivery-limit": DELIVERY_LIMIT,
}
DLQ_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}
# Every queue and the exchange survive a broker restart (core/durability.py reports it).
QUEUE_DURABLE = True

# At-least-once dead-lettering from the main queue into the DLQ: a message the DLQ cannot take yet
# (full, its leader down) stays in the main queue until it can, instead of being dropped (the
# quorum default is at-most-once). RabbitMQ uses this strategy only with `overflow: reject-publish`
# on the source queue (supported since 3.10). A *policy*, not an x-argument: a policy reaches
# existing queues on upgrade, while redeclaring a quorum queue with different x-arguments is
# PRECONDITION_FAILED. One definition, applied by: the chart (rabbitmq-definitions.json, imported at
# every broker boot; tests/deploy compare it with this one), scripts/plain-secret.sh, the test
# servers (tests/support/env.py), and `rabbitmqctl` for a broker of your own (README "Dead letters").
# A queue follows only its highest-priority matching policy: a policy of yours that matches
# chancepay.payments needs these two keys too, or a priority below this one.
POLICY_NAME = "chancepay-payments-dead-lettering"
POLICY_PATTERN = r"^chancepay\.payments$"
POLICY_PRIORITY = 10
POLICY_DEFINITION: dict[str, Any] = {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}


def policy(vhost: str = "/") -> dict[str, Any]:
    """The policy as an entry of a RabbitMQ definitions file's "policies"."""
    return {
        "vhost": vhost,
        "name": POLICY_NAME,
        "pattern": POLICY_PATTERN,
        "apply-to": "queues",
        "priority": POLICY_PRIORITY,
        "definition": dict(POLICY_DEFINITION),
    }


def set_policy_args(vhost: str = "/") -> list[str]:
    """`rabbitmqctl` arguments that apply the policy to `vhost`."""
    return [
        "set_policy",
        "-p",
        vhost,
        "--apply-to",
        "queues",
        "--priority",
        str(POLICY_PRIORITY),
        POLICY_NAME,
        POLICY_PATTERN,
        json.dumps(POLICY_DEFINITION, sort_keys=True),
    ]


async def declare(channel: Any) -> None:
    """Declare the exchange, the queue, its dead-letter queue and the binding (idempotent)."""
    await channel.exchange_declare(exchange=EXCHANGE, exchange_type="direct", durable=True)
    await channel.queue_declare(queue=DLQ, durable=True, arguments=DLQ_ARGUMENTS)
    await channel.queue_declare(queue=QUEUE, durable=QUEUE_DURABLE, arguments=QUEUE_ARGUMENTS)
    await channel.queue_bind(queue=QUEUE, exchange=EXCHANGE, routing_key=ROUTING_KEY)
