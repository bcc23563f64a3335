"""Entry point of `chancepay scanner`, its composition root."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chancepay.core import migrations
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database
from chancepay.core.durability import DurabilityGate
from chancepay.core.gauges import refresh_orchestrator_gauges
from chancepay.core.http import EXCEPTION_HANDLERS, health_routes, require_bearer
from chancepay.core.metrics import Metrics
from chancepay.core.runner import Role, run_role
from chancepay.scanner.scanner import Scanner


def compose(settings: Settings) -> Role:
    """The scanner's parts, built and wired here (and only here)."""
    settings.require_safe_message_key()
    settings.require_safe_token()  # it serves /internal/outbox/nudge
    metrics = Metrics("scanner")
    db = Database(settings.orchestrator_db_url, pool_size=min(settings.db_pool_size, 4), timeout=settings.db_timeout)
    # One autocommit connection for the idle probe (scanner/outbox.py `due`).
    probe = Database(settings.orchestrator_db_url, pool_size=1, timeout=settings.db_timeout, autocommit=True)
    scanner = Scanner(settings, db, metrics, CrashPoints(settings.crash_point_set()), probe)
    gate = DurabilityGate.of(settings, metrics).watch(db, "orchestrator_db").watch(probe, "orchestrator_db")
    scanner.publisher.on_declared = gate.publisher_declared

    async def ready() -> dict[str, bool]:
        return {
            "database": await db.ping(),
            "schema": await db.schema_ready(migrations.latest(migrations.ORCHESTRATOR)),
            "broker": scanner.broker_ready(),
        }

    async def refresh() -> None:
        await refresh_orchestrator_gauges(db, metrics, settings.scanner_max_attempts)

    async def nudge(request: Request) -> Response:
        """The orchestrator committed new outbox rows (orchestrator/nudge.py): claim them now."""
        require_bearer(request, settings.internal_token)
        scanner.nudge()
        return Response(status_code=204)

    routes = [Route("/internal/outbox/nudge", nudge, methods=["POST"]), *health_routes(metrics, ready, refresh)]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.state.metrics = metrics
    return Role(
        "scanner",
        app,
        gate.gated(scanner.scan_forever),
        closers=[db.close, probe.close],
        starting={"db": settings.orchestrator_db_url.redacted()},
    )


async def run(settings: Settings) -> int:
    return await run_role(settings, compose(settings))
