"""Dead letters kept in the wallet's database (table `dead_letter`, wallet schema v3).

Why a table and not the queue (README "Dead letters"): RabbitMQ cannot show a quorum queue's
messages without delivering them, and every requeue after a look adds 1 to a message's delivery
count; RabbitMQ 4.0 gives quorum queues a default delivery limit of 20 (before 4.3 every requeue
counts), so ~20 looks dropped the very messages an operator was investigating. So the wallet moves
each message of chancepay.payments.dlq into `dead_letter` — insert, commit, then ack — and the
operator's commands read and change rows only: a look is a SELECT, on every broker series.

A redelivered copy (the wallet died between the commit and the ack) is the same row: the row's
key is a SHA-256 of the body, the message id and the first death (reason, queue, time, count),
none of which a redelivery changes. Messages already in the queue when this code first runs
(an upgrade) are moved the same way.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import hashlib
from typing import Any

import orjson

from chancepay.core import sql, topology
from chancepay.core.codec import readable_uuid

# A message of the DLQ could not be stored in `dead_letter` yet: it stays in the queue, moved later.
MOVE_TAG = "[FAILED TO MOVE DEAD LETTER]"


def _plain(value: Any) -> Any:
    """A header value as JSON can hold it (bytes as text when UTF-8, else base64)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        return _utc(value).isoformat() + "Z"
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def first_death(headers: dict[str, Any]) -> dict[str, Any]:
    deaths = headers.get("x-death") or []
    return dict(deaths[0]) if deaths and isinstance(deaths[0], dict) else {}


def dedup_key(body: bytes, message_id: Any, headers: dict[str, Any]) -> str:
    death = first_death(headers)
    identity = {
        "message_id": _plain(message_id),
        "death": {k: _plain(death.get(k)) for k in ("reason", "queue", "time", "count")},
        "first": {k: _plain(headers.get(k)) for k in ("x-first-death-reason", "x-first-death-queue")},
    }
    h = hashlib.sha256(body)
    h.update(b"\0" + orjson.dumps(identity, option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()


def row_of(body: bytes, message_id: Any, headers: dict[str, Any]) -> tuple[Any, ...]:
    """The STORE_DEAD_LETTER parameters for one message."""
    death = first_death(headers)
    mid = message_id.decode("utf-8", "replace") if isinstance(message_id, bytes) else message_id
    when = death.get("time")
    count = death.get("count")
    reason = death.get("reason") or headers.get("x-first-death-reason")
    queue = death.get("queue") or headers.get("x-first-death-queue")
    return (
        dedup_key(body, message_id, headers),
        readable_uuid(body, message_id),
        None if mid is None else str(mid)[:255],
        None if reason is None else str(_plain(reason))[:64],
        None if queue is None else str(_plain(queue))[:255],
        int(count) if isinstance(count, int) else None,
        _utc(when) if isinstance(when, dt.datetime) else None,
        _count(headers.get("x-delivery-count")),
        orjson.dumps(_plain(headers)).decode(),
        body,
    )


def _count(value: Any) -> int:
    """The broker's delivery count as stored; a header that is not a count (a message published
    by hand) must not make the row impossible to write."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


async def move_batch(channel: Any, db: Any, limit: int, *, on_store_failure: Any = None, stop: Any = None) -> int:
    """Move up to `limit` messages from the DLQ queue into `dead_letter`: each is inserted and
    committed, then acked. A message is never handed back because its insert failed (every
    requeue counts against the DLQ's delivery limit, 20 by default on RabbitMQ 4.0): it is held,
    unacked, and its insert retried with a capped back-off (`on_store_failure(exc, attempt,
    delay)` each time) until it is stored, or `stop` is set (then the closing channel returns it
    once). Returns the messages moved."""
    from pamqp import commands as spec

    moved = 0
    while moved < limit:
        message = await channel.basic_get(topology.DLQ, no_ack=False)
        if isinstance(message.delivery, spec.Basic.GetEmpty):
            break
        props = message.header.properties
        row = row_of(bytes(message.body), props.message_id, dict(props.headers or {}))
        attempt = 0
        while True:
            try:
                await db.execute(sql.STORE_DEAD_LETTER, row)
                break
            except Exception as exc:
                attempt += 1
                delay = min(10.0, 0.5 * 2 ** min(attempt, 6))
                if on_store_failure is not None:
                    on_store_failure(exc, attempt, delay)
                if stop is not None and stop.is_set():
                    raise
                await asyncio.sleep(delay)
        await channel.basic_ack(message.delivery.delivery_tag)
        moved += 1
    return moved
