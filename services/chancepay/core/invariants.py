"""The invariant checks of CONTRACT.md, one implementation for `chancepay audit` (a live system, one
shot), `chancepay load` (the payments of one load run) and `chancepay auditor` (the online audit,
incremental: auditor/auditor.py gathers what changed since its checkpoint and judges it here).

The two schemas are read through their own users (least privilege: no cross-schema join), so
the check reads (uuid, succeed) from each side and compares in memory, in chunks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from chancepay.core import sql
from chancepay.core.db import Database
from chancepay.core.payment import succeed_from_column

CHUNK = 1000
# The kinds of violation (InvariantReport's fields), the label values of chancepay_audit_violations.
VIOLATION_KINDS = ("lost", "duplicated", "mismatched", "orphan_inbox", "unexplained_outbox")


@dataclasses.dataclass
class InvariantReport:
    checked: int = 0
    lost: list[str] = dataclasses.field(default_factory=list)  # 2xx but no request row / nobody holds the message
    duplicated: list[str] = dataclasses.field(default_factory=list)  # more than one row for one payment
    mismatched: list[str] = dataclasses.field(default_factory=list)  # request final != inbox final
    orphan_inbox: list[str] = dataclasses.field(default_factory=list)  # inbox row without a request
    unexplained_outbox: list[str] = dataclasses.field(default_factory=list)  # stuck row with no failure recorded
    awaiting_mirror: list[str] = dataclasses.field(default_factory=list)  # inbox final, request pending (heals)

    @property
    def violations(self) -> int:
        return sum(len(getattr(self, kind)) for kind in VIOLATION_KINDS)

    def as_json(self, sample: int = 10) -> dict[str, Any]:
        out: dict[str, Any] = {"checked": self.checked, "ok": self.violations == 0}
        for name in (*VIOLATION_KINDS, "awaiting_mirror"):
            values = getattr(self, name)
            out[name] = len(values)
            if values:
                out[f"{name}_sample"] = values[:sample]
        return out


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


async def _succeed_by_uuid(db: Database, table: str, uuids: Sequence[str]) -> dict[str, bool | None]:
    assert table in ("request", "inbox")
    found: dict[str, bool | None] = {}
    for chunk in _chunks(uuids):
        rows = await db.fetchall(sql.among(sql.SUCCEED_BY_UUID, len(chunk), table=table), list(chunk))
        for uuid, succeed in rows:
            found[uuid] = succeed_from_column(succeed)
    return found


def compare(requests: dict[str, bool | None], inbox: dict[str, bool | None], report: InvariantReport) -> None:
    """Invariants 4 and 6 on (uuid -> succeed) maps of both sides."""
    for uuid, inbox_succeed in inbox.items():
        if uuid not in requests:
            report.orphan_inbox.append(uuid)
            continue
        req = requests[uuid]
        if req is not None and inbox_succeed is not None and req != inbox_succeed:
            report.mismatched.append(uuid)
        elif req is None and inbox_succeed is not None:
            report.awaiting_mirror.append(uuid)
    for uuid, req in requests.items():
        if req is not None and uuid not in inbox:
            report.mismatched.append(uuid)  # final without the wallet ever deciding it


async def check_uuids(
    orch: Database, wallet: Database, accepted: Sequence[str], *, also: Sequence[str] = ()
) -> InvariantReport:
    """The invariants for a known set of accepted payments (a load run), each of which must have
    a request row; `also`: more uuids to compare that need not have been accepted (the test suite
    passes every uuid of both tables, so an orphan inbox row is found too)."""
    uuids = list(dict.fromkeys([*accepted, *also]))
    report = InvariantReport(checked=len(uuids))
    requests = await _succeed_by_uuid(orch, "request", uuids)
    inbox = await _succeed_by_uuid(wallet, "inbox", uuids)
    report.lost = [u for u in accepted if u not in requests]
    compare(requests, inbox, report)
    return report


async def check_live(orch: Database, wallet: Database, *, window_hours: float, stale_seconds: float) -> InvariantReport:
    """The invariants over every payment created in the last `window_hours` (database clock)."""
    window_us = int(window_hours * 3600e6)
    stale_us = int(stale_seconds * 1e6)
    requests = {u: succeed_from_column(s) for u, s in await orch.fetchall(sql.RECENT_REQUESTS, (window_us,))}
    inbox_rows = await wallet.fetchall(sql.RECENT_INBOX, (window_us,))
    inbox = {u: succeed_from_column(s) for u, s in inbox_rows}
    # An inbox row just inside the window may belong to a request just outside it.
    missing = [u for u in inbox if u not in requests]
    requests.update(await _succeed_by_uuid(orch, "request", missing))
    report = InvariantReport(checked=len(requests))
    compare(requests, inbox, report)
    outbox = {u: int(a) for u, a in await orch.fetchall(sql.STALE_OUTBOX, (stale_us,))}
    stale_pending = [u for (u,) in await orch.fetchall(sql.STALE_PENDING_IN_WINDOW, (stale_us, window_us))]
    judge_stale(outbox, stale_pending, inbox, report)
    return report


def judge_stale(
    stale_outbox: dict[str, int], stale_pending: Sequence[str], inbox: dict[str, bool | None], report: InvariantReport
) -> None:
    """Invariants 1 and 5 on what is older than the grace age: an outbox row never tried and with no
    failure recorded is unexplained; a pending request held by neither the outbox nor the inbox is
    lost (only the queue could still hold it)."""
    report.unexplained_outbox = [u for u, attempts in stale_outbox.items() if attempts == 0]
    report.lost = [u for u in stale_pending if u not in stale_outbox and u not in inbox]
