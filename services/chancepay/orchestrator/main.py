"""Entry point of `chancepay orchestrator`."""

from __future__ import annotations

from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database
from chancepay.core.logging import get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.runner import serve
from chancepay.orchestrator.app import build_app


async def run(settings: Settings) -> int:
    settings.require_safe_token()
    metrics = Metrics("orchestrator")
    db = Database(settings.orchestrator_db_url, pool_size=settings.db_pool_size, timeout=settings.db_timeout)
    app = build_app(settings, db, metrics, CrashPoints(settings.crash_point_set()))
    get_logger().info("orchestrator starting", db=settings.orchestrator_db_url.redacted())
    try:
        return await serve(app=app, settings=settings, role="orchestrator")
    finally:
        await db.close()
