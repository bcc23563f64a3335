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
from chancepay.core import migrations, sql
from chancepay.core.backoff import Backoff
from chancepay.core.db import Database
from chancepay.core.invariants import CHUNK, InvariantReport, compare, judge_stale
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import succeed_from_column
from chancepay.core.waiting import forever, pause

# How often an auditor started before `chancepay migrate` finished looks at the schemas again.
SCHEMA_POLL_SECONDS = 1.0

TAG = "[FAILED TO AUDIT]"


@dataclasses.dataclass
class Cursor:
    """One side's checkpoint (its database's clock): None until the first pass reads that clock and
    that server's lock wait timeout (the overlap re-read for late commits)."""

    statement: str
    checkpoint: policy.Checkpoint | None = None


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
        self.requests = Cursor(sql.AUDIT_SCAN_REQUESTS)
        self.inbox = Cursor(sql.AUDIT_SCAN_INBOX)
        self.watching: set[str] = set()
        self.found: dict[str, Finding] = {}
        self.log = get_logger()

    async def _read_new(self, db: Database, cursor: Cursor) -> tuple[list[tuple[str, dt.datetime]], policy.Checkpoint]:
        """The rows not judged yet from `cursor`'s checkpoint less the overlap on (at most a batch),
        and its checkpoint (the caller advances it once the pass has judged them, not before).
        Judged rows inside the overlap are paged past, so they never use up the batch."""
        if cursor.checkpoint is None:
            now, lock_wait = await db.fetchone(sql.AUDIT_START)
            cursor.checkpoint = policy.start(now, policy.overlap(float(lock_wait)))
        checkpoint = cursor.checkpoint
        taken: list[tuple[str, dt.datetime]] = []
        created, uuid = checkpoint.low(), ""
        while len(taken) < self.batch:
            page = [(u, c) for u, c in await db.fetchall(cursor.statement, (created, created, uuid, self.batch))]
            taken += checkpoint.unjudged(page)
            if len(page) < self.batch:
                break
            uuid, created = page[-1]
        return taken[: self.batch], checkpoint

    async def _among(self, db: Database, statement: str, uuids: Iterable[str], **identifiers: str) -> list[Any]:
        wanted = sorted(uuids)
        rows: list[Any] = []
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i : i + CHUNK]
            rows += await db.fetchall(sql.among(statement, len(chunk), **identifiers), chunk)
        return rows

    async def _rows(self, db: Database, table: str, uuids: Iterable[str]) -> dict[str, Row]:
        rows = await self._among(db, sql.AUDIT_AMONG, uuids, table=table)
        return {uuid: _row(succeed, amount) for uuid, succeed, amount in rows}

    async def _stale(self) -> tuple[list[str], dict[str, int]]:
        """The pending requests and the untried outbox rows past the grace age, a batch of each; the
        outbox rows of those requests and of the unexplained ones known before are read by uuid too,
        so a bounded outbox read never makes a request look lost nor a known violation look healed."""
        pending = [u for (u,) in await self.orch.fetchall(sql.AUDIT_STALE_PENDING, (self.grace_us, self.batch))]
        outbox = {u: int(a) for u, a in await self.orch.fetchall(sql.AUDIT_STALE_OUTBOX, (self.grace_us, self.batch))}
        known = {u for u, f in self.found.items() if f.kind == "unexplained_outbox"}
        wanted = (set(pending) | known) - outbox.keys()
        outbox.update({u: int(a) for u, a in await self._among(self.orch, sql.AUDIT_OUTBOX_AMONG, wanted)})
        return pending, outbox

    async def check_once(self) -> PassResult:
        """One pass: read, judge, remember (no metric, no log: `pass_once` does those)."""
        new_requests, requests_at = await self._read_new(self.orch, self.requests)
        new_inbox, inbox_at = await self._read_new(self.wallet, self.inbox)
        stale_pending, stale_outbox = await self._stale()
        new = {u for u, _ in new_requests} | {u for u, _ in new_inbox}
        checked = {*new, *self.watching, *self.found, *stale_pending, *stale_outbox}
        requests = await self._rows(self.orch, "request", checked)
        inbox = await self._rows(self.wallet, "inbox", checked)
        report = InvariantReport(checked=len(checked))
        inbox_succeed = {u: r.succeed for u, r in inbox.items()}
        compare({u: r.succeed for u, r in requests.items()}, inbox_succeed, report)
        judge_stale(stale_outbox, stale_pending, inbox_succeed, report)
        found = policy.findings(report, requests, inbox, checked)
        self.watching = policy.watch(requests)
        # judged: a failed pass reads them again
        self.requests.checkpoint, self.inbox.checkpoint = (
            requests_at.advanced(new_requests),
            inbox_at.advanced(new_inbox),
        )
        return PassResult(len(checked), max(len(new_requests), len(new_inbox)), found)

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

    async def schemas_ready(self, stop: asyncio.Event) -> bool:
        """Wait until `chancepay migrate` brought both schemas to this code's versions (on a first
        install the roles start beside the migrate Job): until then a pass could only fail on a
        missing table, so none is tried and nothing is logged as a failure — /readyz says which
        schema is missing, and ChancePayAuditStalled fires if migrate never comes. False: stopped."""
        told = False
        while not stop.is_set():
            orch_ready = await self.orch.schema_ready(migrations.latest(migrations.ORCHESTRATOR))
            if orch_ready and await self.wallet.schema_ready(migrations.latest(migrations.WALLET)):
                return True
            if not told:
                self.log.info("waiting for the schemas (chancepay migrate) before the first audit pass")
                told = True
            await pause(stop, SCHEMA_POLL_SECONDS)
        return False

    async def audit_forever(self, stop: asyncio.Event, *, interval: float) -> None:
        if not await self.schemas_ready(stop):
            return

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
