"""The orchestrator's unit of work: create a payment (request + outbox, one transaction),
read it, finalize it write-once. Receives its Database; knows nothing of HTTP."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
from decimal import Decimal
from typing import Any

from chancepay.core import sql
from chancepay.core.codec import PaymentMessage, format_amount, new_uuid
from chancepay.core.db import Database, is_duplicate_key


@dataclasses.dataclass(frozen=True)
class Payment:
    uuid: str
    cus_id: str
    amount: Decimal
    succeed: bool | None
    created_at: dt.datetime | None  # None only in the 202 answer, which does not show it
    finalized_at: dt.datetime | None

    @property
    def status(self) -> str:
        return {None: "PENDING", True: "SUCCEEDED", False: "FAILED"}[self.succeed]

    @classmethod
    def from_row(cls, row: tuple) -> Payment:
        succeed = None if row[3] is None else bool(row[3])
        return cls(row[0], row[1], row[2], succeed, row[4], row[5])

    def as_json(self) -> dict:
        return {
            "uuid": self.uuid,
            "cusId": self.cus_id,
            "amount": format_amount(self.amount),
            "status": self.status,
            "createdAt": _iso(self.created_at) if self.created_at else None,
            "finalizedAt": _iso(self.finalized_at) if self.finalized_at else None,
        }


def _iso(value: dt.datetime) -> str:
    return value.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


class IdempotencyKeyReused(Exception):
    """The key was used before with a different body."""


class FinalizeOutcome(enum.Enum):
    APPLIED = "applied"  # this call finalized the request
    REPEATED = "repeated"  # already final with the same value
    CONFLICT = "conflict"  # already final with the other value; nothing changed
    UNKNOWN = "unknown"  # no such request


def request_fingerprint(cus_id: str, amount: Decimal) -> str:
    """What "the same body" means for an Idempotency-Key: the same payment, whatever its JSON spelling."""
    return hashlib.sha256(f"{cus_id}\n{format_amount(amount)}".encode()).hexdigest()


class PaymentService:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, cus_id: str, amount: Decimal, idempotency_key: str | None) -> tuple[Payment, bool]:
        """Returns (payment, replayed). The request row and its outbox row commit together or not at all."""
        uuid = new_uuid()
        fingerprint = request_fingerprint(cus_id, amount) if idempotency_key else None
        payload = PaymentMessage(uuid, cus_id, amount).encode()
        async def insert_both(cur: Any) -> None:
            await cur.execute(sql.INSERT_REQUEST, (uuid, cus_id, amount, idempotency_key, fingerprint))
            await cur.execute(sql.INSERT_OUTBOX, (uuid, payload))

        try:
            await self.db.run(insert_both)
        except Exception as exc:
            if idempotency_key is None or not is_duplicate_key(exc):
                raise
            # Another request with this key committed first (possibly concurrently: InnoDB made
            # this insert wait for it). Answer with that payment, never create a second one.
            found = await self.db.fetchone(sql.SELECT_REQUEST_BY_IDEMPOTENCY_KEY, (idempotency_key,))
            if found is None:  # the other transaction rolled back between our insert and select
                return await self.create(cus_id, amount, idempotency_key)
            if found[6] != fingerprint:
                raise IdempotencyKeyReused(idempotency_key) from None
            return Payment.from_row(found[:6]), True
        # The 202 body needs no timestamps: no read-back round trip.
        return Payment(uuid, cus_id, amount, None, None, None), False

    async def get(self, uuid: str) -> Payment | None:
        row = await self.db.fetchone(sql.SELECT_REQUEST, (uuid,))
        return Payment.from_row(row) if row else None

    async def finalize(self, uuid: str, succeed: bool) -> tuple[FinalizeOutcome, Payment | None, float | None]:
        """Write-once: UPDATE ... AND succeed IS NULL. Returns the outcome, the row as stored, and
        for an applied finalization the create-to-final latency in seconds (database clock)."""
        async def finalize_once(cur: Any) -> tuple[bool, Any]:
            await cur.execute(sql.FINALIZE_REQUEST, (succeed, uuid))
            applied = cur.rowcount == 1
            await cur.execute(sql.SELECT_REQUEST, (uuid,))
            return applied, await cur.fetchone()

        applied, row = await self.db.run(finalize_once)
        if row is None:
            return FinalizeOutcome.UNKNOWN, None, None
        payment = Payment.from_row(row)
        if applied:
            latency = None
            if payment.finalized_at and payment.created_at:
                latency = (payment.finalized_at - payment.created_at).total_seconds()
            return FinalizeOutcome.APPLIED, payment, latency
        if payment.succeed is succeed:
            return FinalizeOutcome.REPEATED, payment, None
        return FinalizeOutcome.CONFLICT, payment, None
