"""The orchestrator's unit of work: create a payment (request + outbox, one transaction),
read it, finalize it write-once. Receives its Database; knows nothing of HTTP."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from typing import Any

from chancepay.core import sql
from chancepay.core.codec import new_uuid
from chancepay.core.db import Database, fetchrow, fetchrows, is_duplicate_key
from chancepay.core.payment import Details, Payment, PaymentMessage, column_values, dump_details


class IdempotencyKeyReused(Exception):
    """The key was used before with a different body."""


class FinalizeOutcome(enum.Enum):
    APPLIED = "applied"  # this call finalized the request
    REPEATED = "repeated"  # already final with the same value
    CONFLICT = "conflict"  # already final with the other value; nothing changed
    UNKNOWN = "unknown"  # no such request


def request_fingerprint(details: Details) -> str:
    """What "the same body" means for an Idempotency-Key: the same payment, whatever its JSON
    spelling (each field's canonical form, in declaration order, one per line)."""
    canonical = "\n".join(str(v) for v in dump_details(details).values())
    return hashlib.sha256(canonical.encode()).hexdigest()


class PaymentService:
    def __init__(self, db: Database) -> None:
        self.db = db

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

    async def finalize(self, uuid: str, succeed: bool) -> Finalized:
        """Write-once: UPDATE ... AND succeed IS NULL. Returns the outcome, the row as stored, and
        for an applied finalization the create-to-final latency in seconds (database clock)."""
        async def finalize_once(cur: Any) -> tuple[bool, Any]:
            await cur.execute(sql.FINALIZE_REQUEST, (succeed, uuid))
            applied = cur.rowcount == 1
            await cur.execute(sql.SELECT_REQUEST, (uuid,))
            return applied, await fetchrow(cur)

        applied, row = await self.db.run(finalize_once)
        return _finalized(uuid, succeed, row, applied)

    async def finalize_many(self, results: list[tuple[str, bool]]) -> list[Finalized]:
        """The batched form of finalize(), in one transaction with the same write-once guard: the
        batch's rows are locked, the pending ones finalized (one UPDATE per value), the stored rows
        read back. One Finalized per item, in the order given; uuids must be distinct."""
        uuids = [uuid for uuid, _ in results]

        async def finalize_batch(cur: Any) -> tuple[set[str], dict[str, Any]]:
            await cur.execute(sql.among(sql.LOCK_REQUESTS, len(uuids)), uuids)
            pending = {uuid for uuid, stored in await cur.fetchall() if stored is None}
            applied: set[str] = set()
            for value in (True, False):
                chosen = [uuid for uuid, succeed in results if succeed is value and uuid in pending]
                if chosen:
                    await cur.execute(sql.among(sql.FINALIZE_REQUESTS, len(chosen)), (value, *chosen))
                    applied.update(chosen)
            await cur.execute(sql.among(sql.SELECT_REQUESTS, len(uuids)), uuids)
            rows = {row["uuid"]: row for row in await fetchrows(cur)}
            return applied, rows

        applied, rows = await self.db.run(finalize_batch)
        return [_finalized(uuid, succeed, rows.get(uuid), uuid in applied) for uuid, succeed in results]


@dataclasses.dataclass(frozen=True)
class Finalized:
    """What one finalization did (single or one item of a batch)."""

    uuid: str
    outcome: FinalizeOutcome
    payment: Payment | None  # the row as stored; None when unknown
    latency: float | None  # create-to-final seconds (database clock) when applied here


def _finalized(uuid: str, succeed: bool, row: dict[str, Any] | None, applied: bool) -> Finalized:
    """The outcome of finalizing `uuid` with `succeed`, from the row as stored afterwards and
    whether this transaction's write-once UPDATE changed it."""
    if row is None:
        return Finalized(uuid, FinalizeOutcome.UNKNOWN, None, None)
    payment = Payment.from_row(row)
    if applied:
        latency = None
        if payment.finalized_at and payment.created_at:
            latency = (payment.finalized_at - payment.created_at).total_seconds()
        return Finalized(uuid, FinalizeOutcome.APPLIED, payment, latency)
    if payment.succeed is succeed:
        return Finalized(uuid, FinalizeOutcome.REPEATED, payment, None)
    return Finalized(uuid, FinalizeOutcome.CONFLICT, payment, None)
