"""`chancepay audit`: the invariant check of CONTRACT.md over a live system, one shot (the checks
themselves are core/invariants.py, shared with `chancepay load` and the online `chancepay auditor`).
"""

from __future__ import annotations

import sys

import orjson

from chancepay.core.config import Settings
from chancepay.core.db import Database
from chancepay.core.invariants import InvariantReport, check_live, check_uuids, compare

__all__ = ["InvariantReport", "audit_main", "check_live", "check_uuids", "compare"]


async def audit_main(settings: Settings, window_hours: float = 24.0) -> int:
    orch = Database(settings.orchestrator_db_url, pool_size=2, timeout=settings.db_timeout)
    wallet = Database(settings.wallet_db_url, pool_size=2, timeout=settings.db_timeout)
    try:
        report = await check_live(orch, wallet, window_hours=window_hours, stale_seconds=settings.reconcile_age)
    finally:
        await orch.close()
        await wallet.close()
    sys.stdout.write(orjson.dumps(report.as_json()).decode() + "\n")
    return 0 if report.violations == 0 else 1
