"""The wallet's database: the inbox (one row per payment, decided once) and the parked callbacks
(results decided but not delivered yet). SQL in core/sql.py; the decisions in wallet/policy.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from chancepay.core import sql
from chancepay.core.db import Database, fetchrow
from chancepay.core.payment import PaymentMessage, column_values, details_from_row, succeed_from_column
from chancepay.wallet.policy import Decision, Deduction, redelivery


@dataclasses.dataclass(frozen=True)
class ParkedCallback:
    uuid: str
    succeed: bool
    attempts: int  # failed background tries so far


class Inbox:
    def __init__(self, db: Database, *, on_inserted: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.on_inserted = on_inserted  # a crash point, between the insert and the commit

    async def deduct(self, msg: PaymentMessage, flipped: bool) -> Decision:
        """Decide once, durably. The coin was flipped (`flipped`) and the row is inserted already
        final, in one statement; the flip only counts if that insert created the row. If the uuid
        is already there (a redelivery), policy.redelivery says what the stored row means."""
        return await self.db.run(lambda cur: self._decide(cur, msg, flipped))

    async def deduct_many(self, window: Sequence[tuple[PaymentMessage, bool]]) -> list[Decision]:
        """A window of deliveries decided in one transaction, one Decision each, in order: one
        multi-row INSERT IGNORE of rows already final (uuids distinct, sorted: one lock order for
        every wallet). If it created every row, each is NEW. Otherwise (a uuid already there, or
        twice in the window) nothing of it stays (ROLLBACK) and each delivery is decided as
        `deduct` decides it, in uuid order and, for one uuid, in arrival order, in the same
        transaction: exactly what one transaction per delivery would have decided."""
        order = sorted(range(len(window)), key=lambda i: window[i][0].uuid)

        async def decide(cur: Any) -> list[Decision]:
            decisions: list[Decision | None] = [None] * len(window)
            if len({msg.uuid for msg, _ in window}) == len(window):
                args = [
                    v for i in order for v in (window[i][0].uuid, *column_values(window[i][0].details), window[i][1])
                ]
                await cur.execute(sql.inbox_decided_rows(len(window)), args)
                self.on_inserted()
                if cur.rowcount == len(window):
                    return [Decision(Deduction.NEW, flipped, 1) for _, flipped in window]
                await cur.execute(sql.ROLLBACK)
            for i in order:
                decisions[i] = await self._decide(cur, *window[i])
            return [d for d in decisions if d is not None]

        return await self.db.run(decide)

    async def _decide(self, cur: Any, msg: PaymentMessage, flipped: bool) -> Decision:
        await cur.execute(sql.INSERT_INBOX_DECIDED, (msg.uuid, *column_values(msg.details), flipped))
        self.on_inserted()
        if cur.rowcount == 1:
            return Decision(Deduction.NEW, flipped, 1)
        await cur.execute(sql.LOCK_INBOX, (msg.uuid,))
        row = await fetchrow(cur)
        assert row is not None  # INSERT IGNORE found it; FOR UPDATE holds it
        decision = redelivery(
            details_from_row(row), succeed_from_column(row["succeed"]), int(row["deliveries"]), msg.details, flipped
        )
        if decision.kind is not Deduction.CONFLICT:
            await cur.execute(sql.COUNT_INBOX_DELIVERY, (msg.uuid,))
        if decision.kind is Deduction.NEW:
            await cur.execute(sql.FINALIZE_INBOX, (flipped, msg.uuid))
        return decision

    async def park(self, uuid: str, succeed: bool, delay: float, reason: str) -> None:
        """INSERT IGNORE: a redelivery of a message already parked changes nothing."""
        await self.db.execute(sql.PARK_CALLBACK, (uuid, succeed, int(delay * 1e6), reason[:512]))

    async def claim_parked(self, limit: int, lease_seconds: float) -> list[ParkedCallback]:
        """Due parked callbacks, hidden from other wallets for `lease_seconds` (SKIP LOCKED + a
        lease, like the scanner's outbox claim)."""

        async def claim(cur: Any) -> list[ParkedCallback]:
            await cur.execute(sql.CLAIM_CALLBACKS, (limit,))
            rows = [ParkedCallback(r[0], bool(r[1]), int(r[2])) for r in await cur.fetchall()]
            if rows:
                await cur.execute(
                    sql.among(sql.LEASE_CALLBACKS, len(rows)), (int(lease_seconds * 1e6), *[r.uuid for r in rows])
                )
            return rows

        return await self.db.run(claim)

    async def forget_parked(self, uuids: list[str]) -> None:
        if uuids:
            await self.db.execute(sql.among(sql.DELETE_CALLBACKS, len(uuids)), uuids)

    async def reschedule_parked(self, retries: list[tuple[str, float, str]]) -> None:
        """(uuid, delay in seconds, reason) for each parked callback that failed again."""
        if not retries:
            return

        async def reschedule(cur: Any) -> None:
            for uuid, delay, reason in retries:
                await cur.execute(sql.RESCHEDULE_CALLBACK, (reason[:512], int(delay * 1e6), uuid))

        await self.db.run(reschedule)

    async def parked_stats(self) -> tuple[int, float]:
        """(parked callbacks, age of the oldest in seconds)."""
        pending, oldest_us = await self.db.fetchone(sql.PENDING_CALLBACK_STATS)
        return int(pending), int(oldest_us) / 1e6
