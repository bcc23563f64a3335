"""Entry point of `chancepay orchestrator`, its composition root."""

from __future__ import annotations

from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database
from chancepay.core.durability import DurabilityGate
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.runner import Role, run_role
from chancepay.orchestrator.app import build_app
from chancepay.orchestrator.nudge import ScannerNudge


def compose(settings: Settings) -> Role:
    """The orchestrator's parts, built and wired here (and only here)."""
    settings.require_safe_token()
    metrics = Metrics("orchestrator")
    db = Database(
        settings.orchestrator_db_url,
        pool_size=settings.db_pool_size,
        timeout=settings.db_timeout,
        acquire_timeout=settings.db_acquire_timeout,
    )
    if not settings.api_auth_required and settings.env != "dev":
        get_logger().warning("CHANCEPAY_API_AUTH=off: the public API takes no key; anyone who reaches it may pay")
    nudge = ScannerNudge(settings.scanner_url, settings.internal_token, metrics)
    gate = DurabilityGate.of(settings, metrics).watch(db, "orchestrator_db")
    app = build_app(settings, db, metrics, CrashPoints(settings.crash_point_set()), on_commit=nudge)
    return Role(
        "orchestrator",
        app,
        gate.gated(None),
        closers=[nudge.close, db.close],
        starting={"db": settings.orchestrator_db_url.redacted()},
    )


async def run(settings: Settings) -> int:
    return await run_role(settings, compose(settings))
