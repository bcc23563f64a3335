"""auditor/auditor.py on fake databases: what one pass reads, carries and exports; a pass that
fails part-way does not move the checkpoint (its rows are read again by the next pass)."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from chancepay.auditor import policy
from chancepay.auditor.auditor import Auditor
from chancepay.core import sql
from chancepay.core.db import DatabaseUnavailable
from chancepay.core.metrics import Metrics

NOW = dt.datetime(2026, 12, 7, 12, 0, 0)


class FakeDatabase:
    """Answers the auditor's statements from dicts: uuid -> (succeed, amount, created_at)."""

    def __init__(self, rows: dict[str, tuple[Any, str, dt.datetime]], *, fail_on: str | None = None) -> None:
        self.rows = rows
        self.fail_on = fail_on
        self.reads: list[tuple[str, Any]] = []

    async def fetchone(self, statement: str, args: Any = None) -> Any:
        assert statement == sql.AUDIT_START
        return (NOW, 50)  # NOW(6), @@innodb_lock_wait_timeout

    async def fetchall(self, statement: str, args: Any = None) -> list[Any]:
        self.reads.append((statement, args))
        if self.fail_on is not None and statement.startswith(self.fail_on):
            raise DatabaseUnavailable("gone")
        if statement in (sql.AUDIT_SCAN_REQUESTS, sql.AUDIT_SCAN_INBOX):
            created, _, uuid, limit = args
            return sorted((u, r[2]) for u, r in self.rows.items() if (r[2], u) > (created, uuid))[:limit]
        if statement.startswith("SELECT uuid, succeed, amount FROM"):
            return [(u, self.rows[u][0], Decimal(self.rows[u][1])) for u in args if u in self.rows]
        return []  # stale pending, stale outbox: none


def auditor(orch: FakeDatabase, wallet: FakeDatabase, batch: int = 100) -> Auditor:
    return Auditor(orch, wallet, Metrics("auditor"), grace=300, batch=batch, clock=lambda: 1234.5)  # type: ignore[arg-type]


def test_a_pass_judges_new_rows_watches_pending_ones_and_exports_the_gauges() -> None:
    t = NOW - dt.timedelta(seconds=1)
    orch = FakeDatabase({"ok": (1, "5.00", t), "pending": (None, "2.00", t), "paid": (1, "7.00", t)})
    wallet = FakeDatabase({"ok": (1, "5.00", t), "orphan": (1, "1.00", t)})
    a = auditor(orch, wallet)
    assert asyncio.run(a.pass_once()) == 3
    assert a.watching == {"pending"}
    assert {u: f.kind for u, f in a.found.items()} == {"orphan": "orphan_inbox", "paid": "mismatched"}
    assert a.metrics.audit_violations.labels(kind="orphan_inbox")._value.get() == 1
    assert a.metrics.audit_violations.labels(kind="mismatched")._value.get() == 1
    assert a.metrics.audit_unbalanced_amount._value.get() == pytest.approx(6.0)  # 7 paid, 1 deducted for nothing
    assert a.metrics.audit_last_pass._value.get() == 1234.5
    for cursor in (a.requests, a.inbox):
        assert cursor.checkpoint is not None and cursor.checkpoint.high == t
        assert cursor.checkpoint.span == policy.overlap(50)


def test_a_pass_that_fails_part_way_leaves_the_checkpoint_where_it_was() -> None:
    t = NOW - dt.timedelta(seconds=1)
    orch = FakeDatabase({"a": (1, "5.00", t)}, fail_on="SELECT uuid FROM request WHERE succeed IS NULL")
    wallet = FakeDatabase({"a": (1, "5.00", t)})
    a = auditor(orch, wallet)
    since = policy.Checkpoint(NOW - dt.timedelta(minutes=1), policy.overlap(50))
    a.requests.checkpoint = a.inbox.checkpoint = since
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(a.pass_once())
    assert a.requests.checkpoint == a.inbox.checkpoint == since
    assert a.metrics.audit_last_pass._value.get() == 0


def test_rows_sharing_one_instant_beyond_a_batch_are_all_judged_a_batch_per_pass() -> None:
    t = NOW - dt.timedelta(seconds=1)  # a group INSERT: one CURRENT_TIMESTAMP(6) for every row
    rows = {f"g{i}": (1, "1.00", t) for i in range(7)}
    orch, wallet = FakeDatabase(dict(rows)), FakeDatabase(dict(rows))
    a = auditor(orch, wallet, batch=3)
    assert [asyncio.run(a.pass_once()) for _ in range(4)] == [3, 3, 1, 0]
    assert a.requests.checkpoint is not None and set(a.requests.checkpoint.judged) == set(rows)
    assert a.found == {}


def test_a_row_committed_late_inside_the_overlap_is_judged_once() -> None:
    t = NOW - dt.timedelta(seconds=1)
    orch, wallet = FakeDatabase({"a": (1, "5.00", t)}), FakeDatabase({"a": (1, "5.00", t)})
    a = auditor(orch, wallet)
    assert asyncio.run(a.pass_once()) == 1
    # committed now, created 30 s before the newest row already judged
    wallet.rows["late"] = (1, "2.00", t - dt.timedelta(seconds=30))
    assert asyncio.run(a.pass_once()) == 1
    assert {u: f.kind for u, f in a.found.items()} == {"late": "orphan_inbox"}
    assert asyncio.run(a.pass_once()) == 0  # read again inside the overlap, but not judged as new again
    assert {u: f.kind for u, f in a.found.items()} == {"late": "orphan_inbox"}


class Schemas:
    """schema_ready answers False `missing` times, then True; counts the questions."""

    def __init__(self, missing: int) -> None:
        self.missing, self.asked = missing, 0

    async def schema_ready(self, required: int) -> bool:
        self.asked += 1
        return self.asked > self.missing


def test_no_pass_before_migrate_made_both_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    """An auditor started beside the migrate Job (a first install) waits for both schemas instead
    of failing its passes on missing tables (which logged [FAILED TO REACH DATABASE])."""
    monkeypatch.setattr("chancepay.auditor.auditor.SCHEMA_POLL_SECONDS", 0.001)
    orch, wallet = Schemas(missing=0), Schemas(missing=2)
    a = Auditor(orch, wallet, Metrics("auditor"), grace=300, batch=10)  # type: ignore[arg-type]
    passes: list[int] = []

    async def run() -> None:
        stop = asyncio.Event()

        async def pass_once() -> int:
            passes.append(wallet.asked)  # how often the wallet's schema was asked before this pass
            stop.set()
            return 0

        a.pass_once = pass_once  # type: ignore[method-assign]
        await asyncio.wait_for(a.audit_forever(stop, interval=0.01), 5)

    asyncio.run(run())
    assert passes == [3], "the first pass came once the wallet's schema was there, not before"


def test_a_stopped_auditor_waits_no_longer() -> None:
    a = Auditor(Schemas(missing=10**9), Schemas(missing=0), Metrics("auditor"), grace=300, batch=10)  # type: ignore[arg-type]

    async def run() -> bool:
        stop = asyncio.Event()
        stop.set()
        return await asyncio.wait_for(a.schemas_ready(stop), 5)

    assert asyncio.run(run()) is False
