"""The orchestrator's unit of work: create a payment (request + outbox, one transaction),
read it, finalize results write-once (a batch; a single result is a batch of one), each outcome
logged and counted. Receives its Database and Metrics; knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from chancepay.core import sql
from chancepay.core.clients import NO_CLIENT
from chancepay.core.codec import new_uuid
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database, DatabaseUnavailable, fetchrows, is_duplicate_key
from chancepay.core.errors import ChancePayError
from chancepay.core.logging import bound, get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import Details, Outcome, Payment, PaymentMessage, Result, column_values, dump_details
from chancepay.orchestrator.group import GroupCommit


class IdempotencyKeyReused(ChancePayError):
    """The key was used before with a different body."""


def _replay(item: NewPayment, stored: dict[str, Any]) -> Created:
    """`item`'s key is stored: the same body replays the stored payment, another is refused."""
    if stored["request_hash"] != item.fingerprint:
        raise IdempotencyKeyReused(item.key)
    return Payment.from_row(stored), True


ScopedKey = tuple[int, str]  # (client id, Idempotency-Key): a key is its client's own


def _group_answer(
    item: NewPayment, stored: dict[ScopedKey, Any], leaders: dict[ScopedKey, NewPayment]
) -> Created | BaseException:
    """`item`'s answer once its group committed (see PaymentService.create_group)."""
    if item.scoped_key is None or leaders.get(item.scoped_key) is item:
        return item.accepted(), False
    try:
        if item.scoped_key in stored:
            return _replay(item, stored[item.scoped_key])
        leader = leaders[item.scoped_key]
        if leader.fingerprint != item.fingerprint:
            raise IdempotencyKeyReused(item.key)
        return leader.accepted(), True
    except IdempotencyKeyReused as exc:
        return exc


def request_fingerprint(details: Details) -> str:
    """What "the same body" means for an Idempotency-Key: the same payment, whatever its JSON
    spelling (each field's canonical form, in declaration order, one per line)."""
    canonical = "\n".join(str(v) for v in dump_details(details).values())
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class NewPayment:
    """One POST /payments on its way in: its new uuid, the rows' values, its key's fingerprint."""

    uuid: str
    details: Details
    key: str | None
    fingerprint: str | None
    payload: bytes
    client: int = NO_CLIENT  # its owner (core/clients.py); NO_CLIENT with the API open

    @classmethod
    def of(cls, details: Details, key: str | None, client: int = NO_CLIENT) -> NewPayment:
        uuid = new_uuid()
        fingerprint = request_fingerprint(details) if key else None
        return cls(uuid, details, key, fingerprint, PaymentMessage(uuid, details).encode(), client)

    @property
    def scoped_key(self) -> ScopedKey | None:
        return None if self.key is None else (self.client, self.key)

    def row(self) -> tuple[Any, ...]:
        """Its request row's values (sql.INSERT_OWNED_REQUEST)."""
        return (self.uuid, *column_values(self.details), self.key, self.fingerprint, self.client)

    def accepted(self) -> Payment:
        # The 202 body needs no timestamps: no read-back round trip.
        return Payment(self.uuid, dict(self.details), None, None, None)


Created = tuple[Payment, bool]  # (payment, replayed)


class PaymentService:
    def __init__(
        self,
        db: Database,
        metrics: Metrics,
        *,
        crash: CrashPoints | None = None,
        group_size: int = 1,
        group_linger: float = 0.0,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.on_commit = on_commit  # new outbox rows committed (orchestrator/nudge.py); must not block
        self.metrics = metrics
        self.crash = crash or CrashPoints(frozenset())
        # Size 1: no grouping at all, each create is its own transaction (the behaviour before groups).
        self.group: GroupCommit[NewPayment, Created] | None = None
        if group_size > 1:
            self.group = GroupCommit(
                self.create_group, group_size, group_linger, observe=metrics.api_group_size.observe
            )

    async def create(self, details: Details, idempotency_key: str | None, client: int = NO_CLIENT) -> Created:
        """Returns (payment, replayed). The request row and its outbox row commit together or not at
        all, alone or with the rows of a group (orchestrator/group.py); either way, only once
        committed does this return. `client` owns the payment and scopes its idempotency key."""
        item = NewPayment.of(details, idempotency_key, client)
        if self.group is not None:
            return await self.group.submit(item)
        return await self.create_one(item)

    async def create_one(self, item: NewPayment) -> Created:
        """One payment, its own transaction."""

        async def insert_both(cur: Any) -> None:
            await cur.execute(sql.INSERT_OWNED_REQUEST, item.row())
            await cur.execute(sql.INSERT_OUTBOX, (item.uuid, item.payload))

        try:
            await self.db.run(insert_both)
        except Exception as exc:
            if item.key is None or not is_duplicate_key(exc):
                raise
            # Another request with this key committed first (possibly concurrently: InnoDB made
            # this insert wait for it). Answer with that payment, never create a second one.
            found = await self.db.fetchrow(sql.SELECT_REQUEST_BY_CLIENT_KEY, (item.key, item.client))
            if found is None:  # the other transaction rolled back between our insert and select
                return await self.create_one(NewPayment.of(item.details, item.key, item.client))
            return _replay(item, found)
        self.on_commit()
        return item.accepted(), False

    async def create_group(self, items: list[NewPayment]) -> list[Created | BaseException]:
        """A group in one transaction: the stored rows of its keys read, the new rows inserted (one
        multi-row INSERT per table), one COMMIT; then one answer per item, in order. A key
        stored already, or used earlier in the group, is answered as across groups (replayed or
        refused), never inserted. A database failure fails every item (nothing committed); any
        other failure (one bad item: a key committed meanwhile by another request) rolls the
        group back and runs each item alone, so it fails no neighbour."""
        if len(items) == 1:  # alone (the API was idle): the per-payment transaction, no look-up first
            return [await self.create_one(items[0])]
        try:
            stored, leaders = await self.db.run(lambda cur: self._insert_group(cur, items))
        except DatabaseUnavailable:
            raise
        except Exception:
            return list(await asyncio.gather(*(self.create_one(i) for i in items), return_exceptions=True))
        self.on_commit()
        return [_group_answer(item, stored, leaders) for item in items]

    async def _insert_group(
        self, cur: Any, items: list[NewPayment]
    ) -> tuple[dict[ScopedKey, Any], dict[ScopedKey, NewPayment]]:
        keys = sorted({i.key for i in items if i.key is not None})
        stored: dict[ScopedKey, Any] = {}
        if keys:  # read by key (the unique index's prefix), kept for the group's clients only
            await cur.execute(sql.among(sql.SELECT_REQUESTS_BY_CLIENT_KEYS, len(keys)), keys)
            scoped = {i.scoped_key for i in items}
            rows = {(int(r["client_id"]), r["idempotency_key"]): r for r in await fetchrows(cur)}
            stored = {k: r for k, r in rows.items() if k in scoped}
        leaders: dict[ScopedKey, NewPayment] = {}  # the first item of each key not stored: it is inserted
        for item in items:
            if item.scoped_key is not None and item.scoped_key not in stored:
                leaders.setdefault(item.scoped_key, item)
        new = [i for i in items if i.key is None] + [leaders[k] for k in sorted(leaders)]  # keys in one order
        if new:
            await cur.execute(sql.owned_request_rows(len(new)), [v for i in new for v in i.row()])
            await cur.execute(sql.outbox_rows(len(new)), [v for i in new for v in (i.uuid, i.payload)])
        self.crash.hit("orchestrator.mid_group")  # inserted, not committed
        return stored, leaders

    async def get(self, uuid: str, client: int | None = None) -> Payment | None:
        """The payment, None when unknown or (with `client` given) another client's."""
        row = await self.db.fetchrow(sql.SELECT_OWNED_REQUEST, (uuid,))
        if row is None or (client is not None and int(row["client_id"]) != client):
            return None
        return Payment.from_row(row)

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
