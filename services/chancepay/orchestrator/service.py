"""The orchestrator's unit of work: create a payment (request + outbox, one transaction),
read it, finalize results write-once (a batch; a single result is a batch of one), each outcome
logged and counted. Receives its Database and Metrics; knows nothing of HTTP."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

from chancepay.core import sql
from chancepay.core.codec import new_uuid
from chancepay.core.db import Database, fetchrows, is_duplicate_key
from chancepay.core.errors import ChancePayError
from chancepay.core.logging import bound, get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import Details, Outcome, Payment, PaymentMessage, Result, column_values, dump_details


class IdempotencyKeyReused(ChancePayError):
    """The key was used before with a different body."""


def request_fingerprint(details: Details) -> str:
    """What "the same body" means for an Idempotency-Key: the same payment, whatever its JSON
    spelling (each field's canonical form, in declaration order, one per line)."""
    canonical = "\n".join(str(v) for v in dump_details(details).values())
    return hashlib.sha256(canonical.encode()).hexdigest()


class PaymentService:
    def __init__(self, db: Database, metrics: Metrics) -> None:
        self.db = db
        self.metrics = metrics

    async def create(self, details: Details, idempotency_key: str | None) -> tuple[Payment, bool]:
        """Returns (payment, replayed). The request row and its outbox row commit together or not at all."""
        uuid = new_uuid()
        fingerprint = request_fingerprint(details) if idempotency_key else None
        payload = PaymentMessage(uuid, details).encode()

        async def insert_both(cur: Any) -> None:
            await cur.execute(sql.INSERT_REQUEST, (uuid, *column_values(details), idempotency_key, fingerprint))
            await cur.execute(sql.INSERT_OUTBOX, (uuid, payload))

        try:
            await self.db.run(insert_both)
        except Exception as exc:
            if idempotency_key is None or not is_duplicate_key(exc):
                raise
            # Another request with this key committed first (possibly concurrently: InnoDB made
            # this insert wait for it). Answer with that payment, never create a second one.
            found = await self.db.fetchrow(sql.SELECT_REQUEST_BY_IDEMPOTENCY_KEY, (idempotency_key,))
            if found is None:  # the other transaction rolled back between our insert and select
                return await self.create(details, idempotency_key)
            if found["request_hash"] != fingerprint:
                raise IdempotencyKeyReused(idempotency_key) from None
            return Payment.from_row(found), True
        # The 202 body needs no timestamps: no read-back round trip.
        return Payment(uuid, dict(details), None, None, None), False

    async def get(self, uuid: str) -> Payment | None:
        row = await self.db.fetchrow(sql.SELECT_REQUEST, (uuid,))
        return Payment.from_row(row) if row else None

    async def finalize(self, results: Sequence[Result]) -> list[Finalized]:
        """Write-once, in one transaction: the batch's rows are locked, the pending ones finalized
        (UPDATE ... AND succeed IS NULL, one per value), the stored rows read back. One Finalized
        per result, in the order given; uuids must be distinct."""
        uuids = [r.uuid for r in results]

        async def finalize_batch(cur: Any) -> tuple[set[str], dict[str, Any]]:
            await cur.execute(sql.among(sql.LOCK_REQUESTS, len(uuids)), uuids)
            pending = {uuid for uuid, stored in await cur.fetchall() if stored is None}
            applied: set[str] = set()
            for value in (True, False):
                chosen = [r.uuid for r in results if r.succeed is value and r.uuid in pending]
                if chosen:
                    await cur.execute(sql.among(sql.FINALIZE_REQUESTS, len(chosen)), (value, *chosen))
                    applied.update(chosen)
            await cur.execute(sql.among(sql.SELECT_REQUESTS, len(uuids)), uuids)
            rows = {row["uuid"]: row for row in await fetchrows(cur)}
            return applied, rows

        applied, rows = await self.db.run(finalize_batch)
        finalized = [_finalized(r, rows.get(r.uuid), r.uuid in applied) for r in results]
        for item in finalized:
            self._record(item)
        return finalized

    def _record(self, item: Finalized) -> None:
        """Log and count one finalization outcome."""
        log = get_logger()
        succeed = item.result.succeed
        with bound(uuid=item.result.uuid):
            if item.outcome is Outcome.UNKNOWN:
                log.warning("result for an unknown payment", succeed=succeed)
            elif item.outcome is Outcome.CONFLICT:
                assert item.payment is not None
                log.error("[FAILED TO FINALIZE: RESULT CONFLICT]", stored=item.payment.succeed, received=succeed)
            elif item.outcome is Outcome.APPLIED:
                assert item.payment is not None
                self.metrics.payments_finalized.labels(result="succeeded" if succeed else "failed").inc()
                if item.latency is not None:
                    self.metrics.payment_e2e_seconds.observe(item.latency)
                log.info("payment finalized", status=item.payment.status.value)


@dataclasses.dataclass(frozen=True)
class Finalized:
    """What finalizing one result did."""

    result: Result
    outcome: Outcome
    payment: Payment | None  # the row as stored; None when unknown
    latency: float | None  # create-to-final seconds (database clock) when applied here


def _finalized(result: Result, row: dict[str, Any] | None, applied: bool) -> Finalized:
    """The outcome of finalizing `result`, from the row as stored afterwards and whether this
    transaction's write-once UPDATE changed it."""
    if row is None:
        return Finalized(result, Outcome.UNKNOWN, None, None)
    payment = Payment.from_row(row)
    if applied:
        latency = None
        if payment.finalized_at and payment.created_at:
            latency = (payment.finalized_at - payment.created_at).total_seconds()
        return Finalized(result, Outcome.APPLIED, payment, latency)
    if payment.succeed is result.succeed:
        return Finalized(result, Outcome.REPEATED, payment, None)
    return Finalized(result, Outcome.CONFLICT, payment, None)
