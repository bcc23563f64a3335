"""scan_once / scan_forever.

Claiming: a short transaction selects due rows FOR UPDATE SKIP LOCKED and pushes their
next_attempt_at past a lease, then commits. No row lock is held while publishing; another
scanner skips the rows until the lease runs out (a crashed scanner's rows come back then).

Overlap: a claimed batch is published and settled (deleted or its failures recorded) by a task of
its own while the scanner claims the next one, up to CHANCEPAY_SCANNER_BATCHES_IN_FLIGHT batches
(1: claim, publish, settle, then the next claim, the behaviour before). A settling batch's failure
(a lost connection, the database away) surfaces in the next cycle exactly as if that cycle had
raised it. On stop, the batches in flight are settled before the channel closes.

Publishing: every claimed row is published at once (pipelined publisher confirms), persistent,
mandatory and signed (x-chancepay-signature: HMAC-SHA256 of the body with CHANCEPAY_MESSAGE_KEY).
A row is deleted only after its broker ack. Any failure (nack, return, confirm timeout,
connection) logs [FAILED TO SEND TO MQ] and schedules a retry with capped exponential back-off;
all but a confirm timeout (a slow or alarmed broker) count an attempt, and at the attempt limit
the row stays, no longer retried, and shows in chancepay_outbox_exhausted_rows. A
connection-level failure is fatal (seed design): the process exits non-zero and its supervisor
restarts it. Until the broker, and then the outbox table, were first reached, within the start-up
budget, the failure lines say `"waiting": true` (core/waiting.py).

Waking: after a group commit the orchestrator nudges the scanner (POST /internal/outbox/nudge,
orchestrator/nudge.py); a nudged scanner claims at once and then rests until the next nudge (after
finding rows, 20 ms first: scanner/policy.py hold_after), its
idle poll (CHANCEPAY_SCANNER_IDLE_MAX_SECONDS) left as the safety net for lost nudges and for the
replicas a Service did not route the nudge to. A scanner that is never nudged adapts its poll
interval as before (scanner/policy.py next_idle_sleep).

This module is the publisher and the cycle; the database side is scanner/outbox.py, the decisions
scanner/policy.py (pure, unit-tested).
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiormq
import aiormq.exceptions
from pamqp import commands as spec

from chancepay.core import signing, topology
from chancepay.core.backoff import Backoff
from chancepay.core.broker import close_quietly, connect_any, open_with_retry
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database, DatabaseUnavailable
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.runner import FatalError
from chancepay.core.waiting import STARTUP_WAIT_SECONDS, Dependency, pause, until_ok
from chancepay.scanner.outbox import Outbox
from chancepay.scanner.policy import OutboxRow, counts_as_attempt, hold_after, next_idle_sleep, sort_results

SEND_TAG = "[FAILED TO SEND TO MQ]"
SCAN_TAG = "[FAILED TO SCAN OUTBOX]"


class Publisher:
    """One confirming channel: publishes persistent, mandatory, signed messages and returns each
    one's confirm (or the exception that stands for it)."""

    def __init__(self, urls: list[str], message_key: str, confirm_timeout: float) -> None:
        # Several URLs are the nodes of one cluster: start at a random one, so replicas spread out.
        self.urls = urls
        self.start = random.randrange(len(urls))
        self.message_key = message_key
        self.confirm_timeout = confirm_timeout
        self.connection: Any = None
        self.channel: Any = None
        # Called with the confirming channel once the topology is declared (core/durability.py);
        # what it raises ends the attempt, and a refusal (CannotProceed) ends the retries too.
        self.on_declared: Callable[[Any], None] | None = None

    async def connect(self) -> None:
        """One attempt: connect, open a confirming channel, declare the topology."""
        connection = await connect_any(self.urls, start=self.start)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await topology.declare(channel)
            if self.on_declared is not None:
                self.on_declared(channel)
        except BaseException:
            await close_quietly(connection)
            raise
        self.connection, self.channel = connection, channel

    def ready(self) -> bool:
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self.channel is not None
            and not self.channel.is_closed
        )

    async def publish(self, row: OutboxRow) -> Any:
        return await self.channel.basic_publish(
            row.payload,
            exchange=topology.EXCHANGE,
            routing_key=topology.ROUTING_KEY,
            properties=spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=row.uuid,
                headers={signing.HEADER: signing.sign(row.payload, self.message_key)},
            ),
            mandatory=True,
            timeout=self.confirm_timeout,
        )

    async def publish_all(self, rows: list[OutboxRow]) -> list[Any]:
        """Every row at once (pipelined confirms); a closed connection fails them all."""
        if not self.ready():
            return [aiormq.exceptions.ConnectionClosed(320, "connection closed")] * len(rows)
        return list(await asyncio.gather(*(self.publish(r) for r in rows), return_exceptions=True))

    async def redeclare(self) -> None:
        await topology.declare(self.channel)

    async def close(self) -> None:
        await close_quietly(self.connection)


def _settle(waiter: asyncio.Future[bool], woken: bool) -> None:
    if not waiter.done():
        waiter.set_result(woken)


class Wakeup:
    """Nudges that end the scanner's rest early. A nudge that arrives while the scanner is busy is
    kept, so the next rest returns at once: a row committed before a nudge was sent is claimed by a
    cycle that starts after the nudge arrived."""

    def __init__(self) -> None:
        self._pending = False
        self._waiter: asyncio.Future[bool] | None = None

    def nudge(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)
        else:
            self._pending = True

    def interrupt(self) -> None:
        """End a rest without a nudge (stopping)."""
        if self._waiter is not None:
            _settle(self._waiter, False)

    async def rest(self, seconds: float) -> bool:
        """Wait up to `seconds`; True when a nudge ended (or came before) the wait."""
        if self._pending:
            self._pending = False
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(seconds, _settle, waiter, False)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None


class InFlight:
    """The batches being published and settled, at most `limit`. Each failure is told to
    `on_failure` the moment its task ends (the scanner logs it and ends its rest: `failed` is
    then set); the first of them is raised by the next `room()` (so the scanning loop sees it as
    its own), the others were told and are dropped with it."""

    def __init__(self, limit: int, on_failure: Callable[[BaseException], None] | None = None) -> None:
        self.limit = max(1, limit)
        self.on_failure = on_failure
        self.tasks: set[asyncio.Task[None]] = set()
        self.failed = False  # a finished batch failed and room() has not raised it yet

    def start(self, settle: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(settle)
        task.add_done_callback(self._finished)
        self.tasks.add(task)

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.failed = True
        if self.on_failure is not None:
            self.on_failure(task.exception())  # type: ignore[arg-type]

    def reap(self) -> None:
        """Forget the finished batches; raise the first failure among them."""
        done = {t for t in self.tasks if t.done()}
        self.tasks -= done
        failures = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
        self.failed = False
        if failures:
            raise failures[0]  # type: ignore[misc]

    async def room(self) -> None:
        """Wait until fewer than `limit` batches are in flight; raise a finished one's failure."""
        self.reap()
        while len(self.tasks) >= self.limit:
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
            self.reap()

    async def drain(self) -> None:
        """Let every batch in flight finish (stopping); each failure is told to `on_failure` as it ends."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()


class Scanner:
    def __init__(
        self, settings: Settings, db: Database, metrics: Metrics, crash: CrashPoints, probe: Database | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.crash = crash
        self.log = get_logger()
        self.db = db
        # Failures to reach the broker are "waiting" until it was first reached (core/waiting.py).
        self.broker = Dependency("broker", STARTUP_WAIT_SECONDS)
        self.name = f"{socket.gethostname()}:{os.getpid()}"[:64]
        self.outbox = Outbox(
            db,
            owner=self.name,
            lease_seconds=settings.scanner_lease,
            max_attempts=settings.scanner_max_attempts,
            retry_base=settings.scanner_retry_base,
            retry_max=settings.scanner_retry_max,
            probe=probe,
        )
        self.publisher = Publisher(settings.amqp_url_list, settings.message_key, settings.scanner_confirm_timeout)
        self.wakeup = Wakeup()
        self.in_flight = InFlight(settings.scanner_batches_in_flight, on_failure=self.batch_failed)

    def nudge(self) -> None:
        """New rows were committed (POST /internal/outbox/nudge): claim now, not at the next poll."""
        self.metrics.scanner_nudges.inc()
        self.wakeup.nudge()

    def batch_failed(self, exc: BaseException) -> None:
        """A batch's publish-and-settle task failed: log it now (every one, stopping too) and end
        the rest, so the loop's next room() raises it at once rather than after the idle rest."""
        self.log.error(SCAN_TAG, step="settle", error=f"{type(exc).__name__}: {exc}")
        self.wakeup.interrupt()

    def broker_ready(self) -> bool:
        return self.publisher.ready()

    # ------------------------------------------------------------------ one pass
    async def scan_once(self) -> int:
        """Claim, publish, delete the acked rows, record the failures. Returns rows claimed."""
        rows = await self.claim()
        if rows:
            await self.settle(rows)
        return len(rows)

    async def claim(self) -> list[OutboxRow]:
        rows = await self.outbox.claim(self.settings.scanner_batch_size)
        if rows:
            self.crash.hit("scanner.after_claim")
        return rows

    async def claim_next(self) -> int:
        """Claim a batch and hand it to a task that publishes and settles it, once fewer than
        CHANCEPAY_SCANNER_BATCHES_IN_FLIGHT are in flight. Returns rows claimed."""
        await self.in_flight.room()
        rows = await self.claim()
        if rows:
            self.in_flight.start(self.settle(rows))
        return len(rows)

    async def settle(self, rows: list[OutboxRow]) -> None:
        """Publish `rows`, delete the acked ones, record the failures."""
        started = time.perf_counter()
        results = await self.publisher.publish_all(rows)
        self.metrics.outbox_publish_seconds.observe(time.perf_counter() - started)
        acked, failures = sort_results(rows, results)
        if acked:
            self.crash.hit("scanner.after_ack")
            await self.outbox.delete(acked)
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
            await self.outbox.record_failures(failures)
            if any(f.reason == "connection" for f in failures):
                raise FatalError("lost the broker connection while publishing")
            if any(f.reason == "returned" for f in failures):
                # Unroutable: the queue or binding is gone. Declare the topology again.
                await self.publisher.redeclare()

    async def rest(self, claimed: int, nudged: bool, idle: float, stop: asyncio.Event) -> tuple[float, bool]:
        """Between two cycles (scanner/policy.py): the hold after a nudged cycle that found rows,
        then the idle rest, which a nudge ends. Returns the idle sleep and whether a nudge ended it."""
        batch, base = self.settings.scanner_batch_size, self.settings.scanner_poll_interval
        hold = hold_after(claimed, batch, nudged=nudged)
        if hold:
            await pause(stop, hold)
        idle = next_idle_sleep(idle, claimed, batch, base, self.settings.scanner_idle_max, nudged=nudged)
        if not idle or stop.is_set() or self.in_flight.failed:
            return idle, False
        return idle, await self.wakeup.rest(idle)

    async def scan_forever(self, stop: asyncio.Event) -> None:
        if not await open_with_retry(
            stop,
            self.publisher.connect,
            log=self.log,
            tag=SEND_TAG,
            broker=self.broker,
            on_failure=self.metrics.broker_connect_failures.inc,
        ):
            return
        self.log.info("scanner started", scanner=self.name, batch_size=self.settings.scanner_batch_size)
        db_backoff = Backoff(0.5, 10.0, exact=True)
        idle = base = self.settings.scanner_poll_interval
        woken = False

        async def cycle() -> int:
            self.in_flight.reap()  # a batch that failed during the rest: raised here, the loop's own
            # Nudged, or polling at the base interval: claim. After an empty poll, a cheap read
            # first: claim only when something is due.
            return await self.claim_next() if woken or idle <= base or await self.outbox.due() else 0

        def database_down(exc: BaseException, delay: float) -> None:
            self.metrics.db_unavailable.inc()
            self.log.error(SCAN_TAG, error=str(exc), retry_in_seconds=delay, **self.db.dependency.fields())

        watch = asyncio.ensure_future(stop.wait())
        watch.add_done_callback(lambda _: self.wakeup.interrupt())
        try:
            while not stop.is_set():
                ok, claimed = await until_ok(
                    cycle, backoff=db_backoff, on_failure=database_down, retry_on=DatabaseUnavailable, stop=stop
                )
                if not ok:
                    break
                db_backoff.succeeded()
                if self.publisher.connection.is_closed:
                    self.log.error(SEND_TAG, reason="connection", error="broker connection closed")
                    raise FatalError("broker connection closed")
                idle, woken = await self.rest(claimed or 0, woken, idle, stop)
        finally:
            watch.cancel()
            await self.in_flight.drain()
            await self.publisher.close()
