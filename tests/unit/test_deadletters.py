"""core/deadletters.py: what a DLQ message becomes as a `dead_letter` row (pure)."""

from __future__ import annotations

import datetime as dt
import json

from chancepay.core import deadletters, topology

BODY = b'{"uuid": "4b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "cusId": "a", "amount": "1.00"}'
WHEN = dt.datetime(2026, 12, 7, 8, 0, 0, tzinfo=dt.UTC)


def headers(**extra):
    death = {
        "reason": b"rejected",
        "queue": topology.QUEUE.encode(),
        "time": WHEN,
        "count": 1,
        "exchange": b"chancepay",
        "routing-keys": [b"payment.requested"],
    }
    return {"x-death": [death], "x-first-death-reason": b"rejected", "x-chancepay-signature": b"v1=ab", **extra}


def test_a_redelivery_is_the_same_row_and_another_death_is_not() -> None:
    first = deadletters.dedup_key(BODY, "m", headers())
    assert deadletters.dedup_key(BODY, "m", headers(**{"x-delivery-count": 3})) == first
    later = headers()
    later["x-death"][0]["time"] = WHEN + dt.timedelta(seconds=5)
    assert deadletters.dedup_key(BODY, "m", later) != first
    assert deadletters.dedup_key(BODY + b" ", "m", headers()) != first
    assert deadletters.dedup_key(BODY, "other", headers()) != first


def test_row_of_reads_uuid_death_and_count_and_keeps_headers_as_json() -> None:
    row = deadletters.row_of(BODY, b"m", headers(**{"x-delivery-count": 2, "bin": b"\xff"}))
    key, uuid, mid, reason, queue, count, when, delivery_count, hdrs, body = row
    assert len(key) == 64 and uuid == "4b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d" and mid == "m"
    assert (reason, queue, count, delivery_count, body) == ("rejected", topology.QUEUE, 1, 2, BODY)
    assert when == WHEN.replace(tzinfo=None)
    parsed = json.loads(hdrs)
    assert parsed["x-chancepay-signature"] == "v1=ab" and parsed["bin"] == {"base64": "/w=="}
    assert parsed["x-death"][0]["time"] == "2026-12-07T08:00:00Z"


def test_a_message_published_straight_into_the_dlq_has_no_death() -> None:
    _, uuid, mid, reason, queue, count, when, delivery_count, hdrs, _ = deadletters.row_of(b"junk", None, {})
    assert (uuid, mid, reason, queue, count, when, delivery_count, json.loads(hdrs)) == (
        None,
        None,
        None,
        None,
        None,
        None,
        0,
        {},
    )


def test_a_dead_letter_whose_insert_fails_is_held_and_retried_never_handed_back(monkeypatch) -> None:
    """Every requeue counts against the DLQ's delivery limit (20 by default on RabbitMQ 4.0), so a
    database that refuses the insert for a while must not cost the message its lives."""
    import asyncio
    import types

    from pamqp import commands as spec

    from chancepay.core import deadletters

    calls: list[str] = []

    class Channel:
        def __init__(self) -> None:
            self.given = False

        async def basic_get(self, queue: str, no_ack: bool) -> object:
            if self.given:
                return types.SimpleNamespace(delivery=spec.Basic.GetEmpty())
            self.given = True
            props = types.SimpleNamespace(message_id="m1", headers={"x-delivery-count": "not a count"})
            return types.SimpleNamespace(
                delivery=types.SimpleNamespace(delivery_tag=7),
                body=b'{"uuid":"x"}',
                header=types.SimpleNamespace(properties=props),
            )

        async def basic_ack(self, tag: int) -> None:
            calls.append(f"ack {tag}")

        async def basic_nack(self, tag: int, requeue: bool) -> None:
            calls.append(f"nack {tag}")

    class Db:
        failures = 2

        async def execute(self, statement: str, row: tuple) -> int:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("database read-only")
            calls.append("stored")
            return 1

    async def no_wait(delay: float) -> None:
        calls.append("wait")

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    held: list[int] = []
    moved = asyncio.run(
        deadletters.move_batch(Channel(), Db(), 10, on_store_failure=lambda exc, attempt, delay: held.append(attempt))
    )
    assert moved == 1 and held == [1, 2]
    assert calls == ["wait", "wait", "stored", "ack 7"], calls  # held, retried, stored, then acked; no nack
