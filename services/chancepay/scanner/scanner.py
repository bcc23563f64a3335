"""scan_once / scan_forever.

Claiming: a short transaction selects due rows FOR UPDATE SKIP LOCKED and pushes their
next_attempt_at past a lease, then commits. No row lock is held while publishing; another
scanner skips the rows until the lease runs out (a crashed scanner's rows come back then).

Publishing: every claimed row is published at once (pipelined publisher confirms), persistent,
mandatory and signed (x-chancepay-signature: HMAC-SHA256 of the body with CHANCEPAY_MESSAGE_KEY).
A row is deleted only after its broker ack. Any failure (nack, return, confirm timeout,
connection) logs [FAILED TO SEND TO MQ] and schedules a retry with capped exponential back-off;
all but a confirm timeout (a slow or alarmed broker) count an attempt, and at the attempt limit
the row stays, no longer retried, and shows in chancepay_outbox_exhausted_rows. A
connection-level failure is fatal (seed design): the process exits non-zero and its supervisor
restarts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import socket
import time
from typing import Any

import aiormq
import aiormq.exceptions
from pamqp import commands as spec

from chancepay.core import signing, sql, topology
from chancepay.core.broker import close_quietly, connect_any, open_with_retry
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database, DatabaseUnavailable
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.runner import FatalError, sleep_or_stop

SEND_TAG = "[FAILED TO SEND TO MQ]"


@dataclasses.dataclass(frozen=True)
class OutboxRow:
    uuid: str
    payload: bytes
    attempts: int


@dataclasses.dataclass(frozen=True)
class Failure:
    row: OutboxRow
    reason: str  # nack | returned | timeout | connection
    detail: str


def classify_publish_error(exc: BaseException) -> str:
    if isinstance(exc, aiormq.exceptions.PublishError):
        return "returned"
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return "nack"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "timeout"
    return "connection"


def counts_as_attempt(reason: str) -> bool:
    """Whether a failed publish uses up one of CHANCEPAY_SCANNER_MAX_ATTEMPTS. A confirm timeout
    does not: the broker is slow or blocking publishers (a memory or disk alarm) and the message
    may well have been stored; a long alarm must not exhaust rows that will go through once it
    clears. A nack, a return (unroutable) or a lost connection do count."""
    return reason != "timeout"


def retry_delay(attempts: int, base: float, cap: float) -> float:
    """Back-off after the n-th failed attempt (n >= 1): base * 2^(n-1), capped."""
    return min(cap, base * (2 ** max(0, attempts - 1)))


class Scanner:
    def __init__(self, settings: Settings, db: Database, metrics: Metrics, crash: CrashPoints) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.crash = crash
        self.log = get_logger()
        self.name = f"{socket.gethostname()}:{os.getpid()}"[:64]
        self.connection: Any = None
        self.channel: Any = None
        # Several URLs are the nodes of one cluster: start at a random one, so replicas spread out.
        self.broker_urls = settings.amqp_url_list
        self.broker_start = random.randrange(len(self.broker_urls))

    # ------------------------------------------------------------------ broker
    async def connect(self) -> None:
        """One attempt: connect, open a confirming channel, declare the topology."""
        connection = await connect_any(self.broker_urls, start=self.broker_start)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await topology.declare(channel)
        except BaseException:
            await close_quietly(connection)
            raise
        self.connection, self.channel = connection, channel

    def broker_ready(self) -> bool:
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self.channel is not None
            and not self.channel.is_closed
        )

    async def close(self) -> None:
        await close_quietly(self.connection)

    # ------------------------------------------------------------------ database steps
    async def claim(self) -> list[OutboxRow]:
        lease_us = int(self.settings.scanner_lease * 1e6)

        async def claim_and_lease(cur: Any) -> list[OutboxRow]:
            await cur.execute(sql.CLAIM_OUTBOX, (self.settings.scanner_max_attempts, self.settings.scanner_batch_size))
            rows = [OutboxRow(r[0], bytes(r[1]), int(r[2])) for r in await cur.fetchall()]
            if rows:
                placeholders = ",".join(["%s"] * len(rows))
                await cur.execute(
                    sql.LEASE_OUTBOX.format(placeholders=placeholders), (lease_us, self.name, *[r.uuid for r in rows])
                )
            return rows

        return await self.db.run(claim_and_lease)

    async def delete(self, uuids: list[str]) -> None:
        placeholders = ",".join(["%s"] * len(uuids))
        await self.db.execute(sql.DELETE_OUTBOX.format(placeholders=placeholders), uuids)

    async def record_failures(self, failures: list[Failure]) -> None:
        s = self.settings

        async def record(cur: Any) -> None:
            for f in failures:
                delay_us = int(retry_delay(f.row.attempts + 1, s.scanner_retry_base, s.scanner_retry_max) * 1e6)
                statement = sql.RECORD_OUTBOX_FAILURE if counts_as_attempt(f.reason) else sql.RECORD_OUTBOX_RETRY
                await cur.execute(statement, (f"{f.reason}: {f.detail}"[:512], delay_us, f.row.uuid))

        await self.db.run(record)

    # ------------------------------------------------------------------ one pass
    async def _publish(self, row: OutboxRow) -> Any:
        return await self.channel.basic_publish(
            row.payload,
            exchange=topology.EXCHANGE,
            routing_key=topology.ROUTING_KEY,
            properties=spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=row.uuid,
                headers={signing.HEADER: signing.sign(row.payload, self.settings.message_key)},
            ),
            mandatory=True,
            timeout=self.settings.scanner_confirm_timeout,
        )

    async def scan_once(self) -> int:
        """Claim, publish, delete the acked rows, record the failures. Returns rows claimed."""
        rows = await self.claim()
        if not rows:
            return 0
        self.crash.hit("scanner.after_claim")
        started = time.perf_counter()
        if self.broker_ready():
            results = await asyncio.gather(*(self._publish(r) for r in rows), return_exceptions=True)
        else:
            results = [aiormq.exceptions.ConnectionClosed(320, "connection closed")] * len(rows)
        self.metrics.outbox_publish_seconds.observe(time.perf_counter() - started)

        acked: list[str] = []
        failures: list[Failure] = []
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(Failure(row, classify_publish_error(result), repr(result)[:300]))
            elif isinstance(result, spec.Basic.Ack):
                acked.append(row.uuid)
            else:  # a returned message resolves to the message itself when returns do not raise
                failures.append(Failure(row, "returned", repr(result)[:300]))
        if acked:
            self.crash.hit("scanner.after_ack")
            await self.delete(acked)
            self.metrics.outbox_published.inc(len(acked))
        if failures:
            for f in failures:
                attempt = f.row.attempts + (1 if counts_as_attempt(f.reason) else 0)
                self.metrics.outbox_publish_failures.labels(reason=f.reason).inc()
                self.log.error(
                    SEND_TAG,
                    uuid=f.row.uuid,
                    reason=f.reason,
                    error=f.detail,
                    attempt=attempt,
                    max_attempts=self.settings.scanner_max_attempts,
                    gave_up=attempt >= self.settings.scanner_max_attempts,
                )
            await self.record_failures(failures)
            if any(f.reason == "connection" for f in failures):
                raise FatalError("lost the broker connection while publishing")
            if any(f.reason == "returned" for f in failures):
                # Unroutable: the queue or binding is gone. Declare the topology again.
                await topology.declare(self.channel)
        return len(rows)

    async def scan_forever(self, stop: asyncio.Event) -> None:
        if not await open_with_retry(stop, self.connect, log=self.log, tag=SEND_TAG,
                                     on_failure=self.metrics.broker_connect_failures.inc):
            return
        self.log.info("scanner started", scanner=self.name, batch_size=self.settings.scanner_batch_size)
        db_backoff = 0.0
        try:
            while not stop.is_set():
                try:
                    claimed = await self.scan_once()
                    db_backoff = 0.0
                except DatabaseUnavailable as exc:
                    db_backoff = min(10.0, max(0.5, db_backoff * 2))
                    self.metrics.db_unavailable.inc()
                    self.log.error("[FAILED TO SCAN OUTBOX]", error=str(exc), retry_in_seconds=db_backoff)
                    await sleep_or_stop(stop, db_backoff)
                    continue
                if self.connection.is_closed:
                    self.log.error(SEND_TAG, reason="connection", error="broker connection closed")
                    raise FatalError("broker connection closed")
                if claimed < self.settings.scanner_batch_size:
                    await sleep_or_stop(stop, self.settings.scanner_poll_interval)
        finally:
            await self.close()

