"""RabbitMQ names and arguments, declared identically by every process that uses them.

A quorum queue refuses a redeclaration with different arguments (PRECONDITION_FAILED),
so the arguments live here and nowhere else.
"""

from __future__ import annotations

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


async def declare(channel: Any) -> None:
    """Declare the exchange, the queue, its dead-letter queue and the binding (idempotent)."""
    await channel.exchange_declare(exchange=EXCHANGE, exchange_type="direct", durable=True)
    await channel.queue_declare(queue=DLQ, durable=True, arguments=DLQ_ARGUMENTS)
    await channel.queue_declare(queue=QUEUE, durable=True, arguments=QUEUE_ARGUMENTS)
    await channel.queue_bind(queue=QUEUE, exchange=EXCHANGE, routing_key=ROUTING_KEY)
