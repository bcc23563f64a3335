"""`chancepay migrate`: create (idempotently) both schemas, each through its own role's user.

With CHANCEPAY_ADMIN_DB set, first create both databases and the two users with least
privilege: the orchestrator's user gets its schema only, the wallet's user its schema only.
In Kubernetes the MySQL init script does that part and migrate runs without an admin URL.
"""

from __future__ import annotations

import re

from chancepay.core import sql
from chancepay.core.config import DatabaseURL, Settings
from chancepay.core.db import Database
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
    db = Database(DatabaseURL(admin.user, admin.password, admin.host, admin.port, "", admin.unix_socket), pool_size=1, timeout=timeout)
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


async def migrate(settings: Settings) -> None:
    log = get_logger()
    orchestrator, wallet = settings.orchestrator_db_url, settings.wallet_db_url
    if settings.admin_db:
        await provision(DatabaseURL.parse(settings.admin_db), [orchestrator, wallet], settings.db_timeout)
    for url, ddl in ((orchestrator, sql.ORCHESTRATOR_DDL), (wallet, sql.WALLET_DDL)):
        db = Database(url, pool_size=1, timeout=max(settings.db_timeout, 30))
        try:
            await db.check_strict()
            async with db.transaction() as cur:
                for statement in ddl:
                    await cur.execute(statement)
            log.info("schema up to date", database=url.database, user=url.user)
        finally:
            await db.close()
