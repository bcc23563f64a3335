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
        assert statement == sql.AUDIT_CLOCK
        return (NOW,)

    async def fetchall(self, statement: str, args: Any = None) -> list[Any]:
        self.reads.append((statement, args))
        if self.fail_on is not None and statement.startswith(self.fail_on):
            raise DatabaseUnavailable("gone")
        if statement in (sql.AUDIT_NEW_REQUESTS, sql.AUDIT_NEW_INBOX):
            since, upto, limit = args
            found = sorted((r[2], u, r) for u, r in self.rows.items() if since <= r[2] <= upto)[:limit]
            return [(u, r[0], Decimal(r[1]), r[2]) for _, u, r in found]
        if statement.startswith("SELECT uuid, succeed, amount FROM"):
            return [(u, self.rows[u][0], Decimal(self.rows[u][1])) for u in args if u in self.rows]
        return []  # stale pending, stale outbox: none


def auditor(orch: FakeDatabase, wallet: FakeDatabase) -> Auditor:
    return Auditor(orch, wallet, Metrics("auditor"), grace=300, batch=100, clock=lambda: 1234.5)  # type: ignore[arg-type]


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
    assert a.requests.since == a.inbox.since == NOW - policy.SETTLE


def test_a_pass_that_fails_part_way_leaves_the_checkpoint_where_it_was() -> None:
    t = NOW - dt.timedelta(seconds=1)
    orch = FakeDatabase({"a": (1, "5.00", t)}, fail_on="SELECT uuid FROM request WHERE succeed IS NULL")
    wallet = FakeDatabase({"a": (1, "5.00", t)})
    a = auditor(orch, wallet)
    since = NOW - dt.timedelta(minutes=1)
    a.requests.since = a.inbox.since = since
    with pytest.raises(DatabaseUnavailable):
        asyncio.run(a.pass_once())
    assert a.requests.since == a.inbox.since == since
    assert a.metrics.audit_last_pass._value.get() == 0
