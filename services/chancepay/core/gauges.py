"""Gauges read from the orchestrator's tables at scrape time.

The outbox backlog is a fact of the outbox table, not of any process's memory: whichever role
is scraped (orchestrator or scanner, any replica) reports the same numbers, even while every
scanner is down. Dashboards therefore use max(), not sum(), across replicas.
"""

from __future__ import annotations

from chancepay.core import sql
from chancepay.core.db import Database
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics


async def refresh_orchestrator_gauges(db: Database, metrics: Metrics, max_attempts: int) -> None:
    try:
        async with db.transaction(timeout=min(db.timeout, 2.0)) as cur:
            await cur.execute(sql.OUTBOX_STATS, (max_attempts,))
            depth, oldest_us, exhausted = await cur.fetchone()
            await cur.execute(sql.PENDING_STATS)
            pending, pending_oldest_us = await cur.fetchone()
    except Exception as exc:  # a scrape must never fail because the DB is down; readyz says so
        get_logger().warning("could not refresh table gauges", error=str(exc))
        return
    metrics.outbox_depth.set(int(depth))
    metrics.outbox_oldest_age.set(int(oldest_us) / 1e6)
    metrics.outbox_exhausted.set(int(exhausted))
    metrics.payments_pending.set(int(pending))
    metrics.payments_pending_oldest_age.set(int(pending_oldest_us) / 1e6)
