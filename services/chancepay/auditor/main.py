"""Entry point of `chancepay auditor`, its composition root."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette

from chancepay.auditor.auditor import Auditor
from chancepay.core import migrations
from chancepay.core.config import Settings
from chancepay.core.db import Database
from chancepay.core.durability import DurabilityGate
from chancepay.core.http import EXCEPTION_HANDLERS, health_routes
from chancepay.core.metrics import Metrics
from chancepay.core.runner import Role, run_role


def compose(settings: Settings) -> Role:
    """The auditor's parts, built and wired here (and only here). It reads both schemas, each through
    its own user, and writes nothing."""
    metrics = Metrics("auditor")
    orch = Database(settings.orchestrator_db_url, pool_size=2, timeout=settings.db_timeout)
    wallet = Database(settings.wallet_db_url, pool_size=2, timeout=settings.db_timeout)
    auditor = Auditor(orch, wallet, metrics, grace=settings.auditor_grace, batch=settings.auditor_batch)
    # Like every role (CONTRACT "Audit"): what the databases' acknowledgements rest on, exported and,
    # in prod, gating start. An audit of a database that may lose acknowledged commits proves little.
    gate = DurabilityGate.of(settings, metrics).watch(orch, "orchestrator_db").watch(wallet, "wallet_db")

    async def ready() -> dict[str, bool]:
        return {
            "orchestrator_database": await orch.ping(),
            "orchestrator_schema": await orch.schema_ready(migrations.latest(migrations.ORCHESTRATOR)),
            "wallet_database": await wallet.ping(),
            "wallet_schema": await wallet.schema_ready(migrations.latest(migrations.WALLET)),
        }

    async def work(stop: asyncio.Event) -> None:
        await auditor.audit_forever(stop, interval=settings.auditor_interval)

    app = Starlette(routes=health_routes(metrics, ready), exception_handlers=EXCEPTION_HANDLERS)
    app.state.metrics = metrics
    return Role(
        "auditor",
        app,
        gate.gated(work),
        closers=[orch.close, wallet.close],
        starting={
            "orchestrator_db": settings.orchestrator_db_url.redacted(),
            "wallet_db": settings.wallet_db_url.redacted(),
            "interval_seconds": settings.auditor_interval,
            "grace_seconds": settings.auditor_grace,
        },
    )


async def run(settings: Settings) -> int:
    return await run_role(settings, compose(settings))
