"""The online audit (`chancepay auditor`): core/invariants.py's checks (the ones `chancepay audit`
runs once over a day), run every CHANCEPAY_AUDITOR_INTERVAL_SECONDS over what changed since a
checkpoint (auditor/policy.py says what a pass reads and carries). Each schema is read through its
own user, as the offline audit does; the checkpoint lives in this process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from chancepay.auditor import policy
from chancepay.auditor.policy import Finding, Row
from chancepay.core import sql
from chancepay.core.backoff import Backoff
from chancepay.core.db import Database
from chancepay.core.invariants import CHUNK, InvariantReport, compare, judge_stale
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import succeed_from_column
from chancepay.core.waiting import forever

TAG = "[FAILED TO AUDIT]"


@dataclasses.dataclass
class Cursor:
    """One side's checkpoint (its database's clock): None until the first pass reads that clock."""

    statement: str
    since: dt.datetime | None = None


@dataclasses.dataclass
class PassResult:
    checked: int
    read: int  # the larger side's rows read since the checkpoint (a full batch: go on at once)
    found: dict[str, Finding]


def _row(succeed: Any, amount: Any) -> Row:
    return Row(succeed_from_column(succeed), Decimal(amount))


class Auditor:
    def __init__(
        self,
        orch: Database,
        wallet: Database,
        metrics: Metrics,
        *,
        grace: float,
        batch: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.orch, self.wallet, self.metrics = orch, wallet, metrics
        self.grace_us, self.batch, self.clock = int(grace * 1e6), batch, clock
        self.requests = Cursor(sql.AUDIT_NEW_REQUESTS)
        self.inbox = Cursor(sql.AUDIT_NEW_INBOX)
        self.watching: set[str] = set()
        self.found: dict[str, Finding] = {}
        self.log = get_logger()

    async def _read_new(self, db: Database, cursor: Cursor) -> tuple[dict[str, Row], dt.datetime]:
        """The rows created since `cursor`'s checkpoint (one batch) and where the next read starts
        (the caller moves the checkpoint once the pass has judged them, not before)."""
        (now,) = await db.fetchone(sql.AUDIT_CLOCK)
        since = cursor.since if cursor.since is not None else policy.start(now)
        rows = await db.fetchall(cursor.statement, (since, now, self.batch))
        last = rows[-1][3] if rows else None
        following = policy.next_since(since, now, len(rows), self.batch, last)
        return {uuid: _row(succeed, amount) for uuid, succeed, amount, _ in rows}, following

    async def _among(self, db: Database, table: str, uuids: Iterable[str]) -> dict[str, Row]:
        wanted = sorted(uuids)
        found: dict[str, Row] = {}
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i : i + CHUNK]
            for uuid, succeed, amount in await db.fetchall(sql.among(sql.AUDIT_AMONG, len(chunk), table=table), chunk):
                found[uuid] = _row(succeed, amount)
        return found

    async def check_once(self) -> PassResult:
        """One pass: read, judge, remember (no metric, no log: `pass_once` does those)."""
        requests, requests_next = await self._read_new(self.orch, self.requests)
        inbox, inbox_next = await self._read_new(self.wallet, self.inbox)
        read = max(len(requests), len(inbox))
        stale_pending = [u for (u,) in await self.orch.fetchall(sql.AUDIT_STALE_PENDING, (self.grace_us, self.batch))]
        stale_outbox = {u: int(a) for u, a in await self.orch.fetchall(sql.STALE_OUTBOX, (self.grace_us,))}
        checked = {*requests, *inbox, *self.watching, *self.found, *stale_pending, *stale_outbox}
        requests.update(await self._among(self.orch, "request", checked - requests.keys()))
        inbox.update(await self._among(self.wallet, "inbox", checked - inbox.keys()))
        report = InvariantReport(checked=len(checked))
        inbox_succeed = {u: r.succeed for u, r in inbox.items()}
        compare({u: r.succeed for u, r in requests.items()}, inbox_succeed, report)
        judge_stale(stale_outbox, stale_pending, inbox_succeed, report)
        found = policy.findings(report, requests, inbox, checked)
        self.watching = policy.watch(requests)
        self.requests.since, self.inbox.since = requests_next, inbox_next  # judged: a failed pass reads them again
        return PassResult(len(checked), read, found)

    async def pass_once(self) -> int:
        """One pass with its metrics and log lines; how many new rows it read (for core/waiting.forever)."""
        started = time.monotonic()
        result = await self.check_once()
        for uuid, finding in policy.newly(self.found, result.found).items():
            self.log.error(TAG, uuid=uuid, kind=finding.kind or "unbalanced", unbalanced=str(finding.unbalanced))
        for uuid in self.found.keys() - result.found.keys():
            self.log.info("audit violation healed", uuid=uuid, kind=self.found[uuid].kind or "unbalanced")
        self.found = result.found
        counts, amount = policy.gauges(result.found)
        for kind, count in counts.items():
            self.metrics.audit_violations.labels(kind=kind).set(count)
        self.metrics.audit_unbalanced_amount.set(float(amount))
        self.metrics.audit_last_pass.set(self.clock())
        self.metrics.audit_pass_seconds.observe(time.monotonic() - started)
        self.log.debug("audit pass done", checked=result.checked, read=result.read, violations=sum(counts.values()))
        return result.read

    async def audit_forever(self, stop: asyncio.Event, *, interval: float) -> None:
        def failed(exc: BaseException, delay: float) -> None:
            self.log.error(
                "[FAILED TO REACH DATABASE]",
                step="audit pass",
                error=str(exc) or repr(exc),
                retry_in_seconds=round(delay, 2),
                **self.orch.dependency.fields(),
            )

        await forever(
            self.pass_once, stop, full=self.batch, idle=interval, backoff=Backoff(0.5, interval), on_failure=failed
        )
