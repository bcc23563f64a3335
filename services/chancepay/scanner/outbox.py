"""The scanner's database side: claim due outbox rows under a lease, delete the published ones,
record failed publishes. SQL in core/sql.py."""

from __future__ import annotations

from typing import Any

from chancepay.core import sql
from chancepay.core.db import Database
from chancepay.scanner.policy import Failure, OutboxRow, counts_as_attempt, retry_delay


class Outbox:
    def __init__(
        self,
        db: Database,
        *,
        owner: str,
        lease_seconds: float,
        max_attempts: int,
        retry_base: float,
        retry_max: float,
        probe: Database | None = None,
    ) -> None:
        self.db = db
        self.probe = probe
        self.owner = owner
        self.lease_us = int(lease_seconds * 1e6)
        self.max_attempts = max_attempts
        self.retry_base, self.retry_max = retry_base, retry_max

    async def claim(self, limit: int) -> list[OutboxRow]:
        """Due rows, selected FOR UPDATE SKIP LOCKED and leased (next_attempt_at pushed past the
        lease) in one short transaction: no row lock is held while publishing."""

        async def claim_and_lease(cur: Any) -> list[OutboxRow]:
            await cur.execute(sql.CLAIM_OUTBOX, (self.max_attempts, limit))
            rows = [OutboxRow(r[0], bytes(r[1]), int(r[2])) for r in await cur.fetchall()]
            if rows:
                await cur.execute(
                    sql.among(sql.LEASE_OUTBOX, len(rows)), (self.lease_us, self.owner, *[r.uuid for r in rows])
                )
            return rows

        return await self.db.run(claim_and_lease)

    async def due(self) -> bool:
        """Whether any row is due: one autocommit read on the probe database (no claim transaction,
        no lock), what an idle scanner asks before claiming. Without a probe: always True."""
        if self.probe is None:
            return True
        return await self.probe.fetchone(sql.OUTBOX_DUE, (self.max_attempts,)) is not None

    async def delete(self, uuids: list[str]) -> None:
        await self.db.execute(sql.among(sql.DELETE_OUTBOX, len(uuids)), uuids)

    async def record_failures(self, failures: list[Failure]) -> None:
        async def record(cur: Any) -> None:
            for f in failures:
                delay_us = int(retry_delay(f.row.attempts + 1, self.retry_base, self.retry_max) * 1e6)
                statement = sql.RECORD_OUTBOX_FAILURE if counts_as_attempt(f.reason) else sql.RECORD_OUTBOX_RETRY
                await cur.execute(statement, (f"{f.reason}: {f.detail}"[:512], delay_us, f.row.uuid))

        await self.db.run(record)
