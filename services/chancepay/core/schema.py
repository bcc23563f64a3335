"""`chancepay migrate`: create (idempotently) both schemas, each through its own role's user.

With CHANCEPAY_ADMIN_DB set, first create both databases and the two users with least
privilege (the orchestrator's user gets its schema only, the wallet's user its schema only) and
(re)apply their passwords from the two role URLs. That is the chart's only database
initialisation: no entrypoint script, the same code the suite runs, and a regenerated Secret
heals on the next migrate instead of locking the roles out.

The database may not answer yet (a first install starts everything at once): migrate waits for
it, up to CHANCEPAY_MIGRATE_WAIT_SECONDS, logging every attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import time
from collections.abc import Awaitable, Callable

from chancepay.core import sql
from chancepay.core.backoff import capped_exponential, half_jitter
from chancepay.core.config import DatabaseURL, Settings
from chancepay.core.db import Database, DatabaseUnavailable
from chancepay.core.logging import get_logger

IDENTIFIER = re.compile(r"[A-Za-z0-9_]{1,64}")


def _identifier(value: str, what: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} {value!r} must be 1-64 characters of A-Z a-z 0-9 _")
    return value


async def provision(admin: DatabaseURL, targets: list[DatabaseURL], timeout: float) -> None:
    log = get_logger()
    users = {t.user for t in targets}
    if len(users) < len(targets):
        log.warning(
            "the orchestrator and the wallet share one database user: least privilege needs distinct users",
            user=sorted(users),
        )
    # The admin URL's database part is ignored (there may be none yet); everything else, TLS included, kept.
    db = Database(dataclasses.replace(admin, database=""), pool_size=1, timeout=timeout)
    try:
        async with db.transaction() as cur:
            for t in targets:
                name = _identifier(t.database, "database name")
                user = _identifier(t.user, "database user")
                await cur.execute(sql.CREATE_DATABASE.format(db=name))
                await cur.execute(sql.CREATE_USER, (user, t.password))
                await cur.execute(sql.ALTER_USER_PASSWORD, (user, t.password))
                await cur.execute(sql.GRANT_ALL_ON_DB.format(db=name), (user,))
                log.info("provisioned database and user", database=name, user=user)
    finally:
        await db.close()


async def waiting_for_database(step: Callable[[], Awaitable[None]], what: str, wait_seconds: float) -> None:
    """Run `step`; while the database is unreachable (or the users are not there yet), retry with
    a capped, jittered back-off until `wait_seconds` have passed, then give up with the last error."""
    log = get_logger()
    deadline = time.monotonic() + wait_seconds
    rng = random.Random()
    attempt = 0
    while True:
        try:
            await step()
            return
        except DatabaseUnavailable as exc:
            attempt += 1
            delay = half_jitter(capped_exponential(attempt, 0.5, 5.0), rng)
            if time.monotonic() + delay > deadline:
                raise
            log.error("[FAILED TO REACH DATABASE]", step=what, error=str(exc), attempt=attempt,
                      retry_in_seconds=round(delay, 2))
            await asyncio.sleep(delay)


async def migrate(settings: Settings) -> None:
    log = get_logger()
    orchestrator, wallet = settings.orchestrator_db_url, settings.wallet_db_url
    if settings.admin_db:
        admin = DatabaseURL.parse(settings.admin_db)
        await waiting_for_database(
            lambda: provision(admin, [orchestrator, wallet], settings.db_timeout),
            "provision databases and users", settings.migrate_wait,
        )
    for url, ddl in ((orchestrator, sql.ORCHESTRATOR_DDL), (wallet, sql.WALLET_DDL)):
        db = Database(url, pool_size=1, timeout=max(settings.db_timeout, 30))

        async def create_tables(db: Database = db, ddl: tuple[str, ...] = ddl) -> None:
            await db.check_strict()
            async with db.transaction() as cur:
                for statement in ddl:
                    await cur.execute(statement)

        try:
            await waiting_for_database(create_tables, f"create tables in {url.database}", settings.migrate_wait)
            log.info("schema up to date", database=url.database, user=url.user)
        finally:
            await db.close()
