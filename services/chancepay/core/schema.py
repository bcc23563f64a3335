"""`chancepay migrate`: bring both schemas to their latest version (core/migrations.py), each
through its own role's user, idempotently and safely from several pods at once.

With CHANCEPAY_ADMIN_DB set, first create both databases and the two users with least
privilege (the orchestrator's user gets its schema only, the wallet's user its schema only) and
(re)apply their passwords from the two role URLs. That is the chart's only database
initialisation: no entrypoint script, the same code the suite runs, and a regenerated Secret
heals on the next migrate instead of locking the roles out.

The database may not answer yet (a first install starts everything at once): migrate waits for
it, up to CHANCEPAY_MIGRATE_WAIT_SECONDS, logging every attempt as [FAILED TO REACH DATABASE]
with `"waiting": true` until the database was first reached (core/waiting.py); past the budget it
logs the tag without `waiting` (`gave_up: true`) and exits 1.

Waiting is for a server that does not answer yet. A server that answers "access denied" (or
"unknown database") to a migrate that has no admin URL will not change its mind by itself: migrate
says so in one line and exits 2 at once. So does an admin URL the server refuses.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from chancepay.core import migrations, sql
from chancepay.core.backoff import Backoff
from chancepay.core.clients import register_bootstrap_key
from chancepay.core.config import DatabaseURL, Settings
from chancepay.core.db import Database, DatabaseUnavailable, SchemaNotReady
from chancepay.core.logging import get_logger
from chancepay.core.migrations import Migration, Step, latest, pending
from chancepay.core.preflight import ACCESS_DENIED, UNKNOWN_DATABASE, CannotProceed, error_code, server_answer
from chancepay.core.waiting import Dependency, retry_until_up

DATABASE_TAG = "[FAILED TO REACH DATABASE]"
# A DDL waits at most this long for its table's metadata lock (an open transaction on the table
# holds it), then fails (1205) and migrate retries with back-off; meanwhile every statement on the
# table would queue behind the waiting DDL, so the wait is bounded, not the server's default year.
MIGRATE_LOCK_WAIT_SECONDS = 30
# ER_ALTER_OPERATION_NOT_SUPPORTED(_REASON): the ALGORITHM asked for cannot do this change here.
ALGORITHM_REFUSED = (1845, 1846)
# What `make run` provisions with (MariaDB's root over its unix socket, as Debian installs it).
LOCAL_ADMIN_URL = "mysql://root@localhost/?unix_socket=/run/mysqld/mysqld.sock"


def _refused(exc: SchemaNotReady, url: DatabaseURL, variable: str, codes: tuple[int, ...], hint: str) -> None:
    """An answer that waiting will not change: one line, exit 2 (CannotProceed)."""
    if error_code(exc) in codes:
        raise CannotProceed(
            DATABASE_TAG, exit_code=2, variable=variable, url=url.redacted(), answer=server_answer(exc), hint=hint
        ) from None


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


async def waiting_for_database(
    step: Callable[[], Awaitable[None]], what: str, database: Dependency, wait_seconds: float
) -> None:
    """Run `step`; while the database is unreachable (or the users are not there yet), retry with
    a capped, jittered back-off (core/waiting.py: each line `"waiting": true` until the database
    was reached) until `wait_seconds` have passed, then give up with the last error."""
    await retry_until_up(
        step,
        database,
        log=get_logger(),
        tag=DATABASE_TAG,
        backoff=Backoff(0.5, 5.0),
        retry_on=DatabaseUnavailable,
        describe=lambda exc: {"step": what, "error": str(exc)},
        give_up_after=wait_seconds,
    )


async def _exists(cur: Any, query: str, what: tuple[str, str] | None) -> bool:
    """Whether the (table, column) or (table, index) `what` exists; False for None (no guard)."""
    if what is None:
        return False
    await cur.execute(query, what)
    return bool((await cur.fetchone())[0] > 0)


async def _run_step(cur: Any, step: str | Step) -> None:
    """One statement of a migration, unless its own guard says it is done already."""
    if isinstance(step, str):
        await cur.execute(step)
        return
    if await _exists(cur, sql.COLUMN_EXISTS, step.unless_column):
        return
    if await _exists(cur, sql.INDEX_EXISTS, step.unless_index):
        return
    if step.if_index is not None and not await _exists(cur, sql.INDEX_EXISTS, step.if_index):
        return
    try:
        await cur.execute(step.statement)
    except Exception as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else error_code(exc)
        if step.otherwise is None or code not in ALGORITHM_REFUSED:
            raise
        get_logger().info("the server refused the online algorithm; the fallback form runs", error=str(exc))
        await cur.execute(step.otherwise)


async def _todo(cur: Any, current: int, migrations: tuple[Migration, ...]) -> list[Migration]:
    """The migrations to apply to a schema at `current` (core/migrations.py `pending`), reading
    what a schema newer than this code says of the earlier releases that may run on it."""
    mine, newer_floor = latest(migrations), None
    if current > mine and await _exists(cur, sql.COLUMN_EXISTS, ("schema_version", "oldest_code")):
        await cur.execute(sql.SCHEMA_FLOOR_ABOVE, (mine,))
        (newer_floor,) = await cur.fetchone()
    todo = pending(current, migrations, None if newer_floor is None else int(newer_floor))
    if current > mine:
        get_logger().info(
            "schema newer than this code: no newer version dropped what this release uses, so it "
            "runs on it (a rollback); nothing to do",
            version=current,
            code_knows=mine,
        )
    return todo


async def apply(
    db: Database,
    migrations: tuple[Migration, ...],
    *,
    lock_seconds: float = 300,
    lock_wait_seconds: int = MIGRATE_LOCK_WAIT_SECONDS,
) -> list[int]:
    """Bring one schema to the latest of `migrations`, under a named lock (several pods may run
    migrate at once: they take turns, and the later ones find nothing to do). Returns the
    versions applied here."""
    log = get_logger()
    applied: list[int] = []
    async with db.transaction(timeout=max(db.timeout, lock_seconds + 600)) as cur:
        await cur.execute(sql.MIGRATE_LOCK, (int(lock_seconds),))
        (locked,) = await cur.fetchone()
        if locked != 1:
            raise RuntimeError(f"another migrate held the lock for more than {lock_seconds} s")
        try:
            await cur.execute(sql.CREATE_SCHEMA_VERSION)
            await cur.execute(sql.SCHEMA_VERSION)
            (current,) = await cur.fetchone()
            await cur.execute(sql.MIGRATE_LOCK_WAIT, (lock_wait_seconds,))
            for m in await _todo(cur, int(current), migrations):
                skip = await _exists(cur, sql.COLUMN_EXISTS, m.unless_column)
                skip = skip or await _exists(cur, sql.INDEX_EXISTS, m.unless_index)
                if not skip:
                    for step in m.statements:
                        await _run_step(cur, step)
                if m.oldest_code:
                    await cur.execute(sql.RECORD_SCHEMA_VERSION_WITH_FLOOR, (m.version, m.description, m.oldest_code))
                else:  # before version 5 there is no oldest_code column; its default is 0
                    await cur.execute(sql.RECORD_SCHEMA_VERSION, (m.version, m.description))
                await cur.connection.commit()
                applied.append(m.version)
                log.info("migration applied", version=m.version, description=m.description)
        finally:
            await cur.execute(sql.MIGRATE_UNLOCK)
            await cur.fetchone()
    return applied


async def _provision(settings: Settings, database: Dependency, budget: float) -> None:
    """With CHANCEPAY_ADMIN_DB: create both databases and users, waiting for the server."""
    admin = DatabaseURL.parse(settings.admin_db)

    async def provision_once() -> None:
        try:
            await provision(admin, [settings.orchestrator_db_url, settings.wallet_db_url], settings.db_timeout)
        except SchemaNotReady as exc:
            _refused(
                exc,
                admin,
                "CHANCEPAY_ADMIN_DB",
                ACCESS_DENIED,
                "the admin URL's user is refused or may not create databases and users: give an admin "
                f"URL that can (locally: {LOCAL_ADMIN_URL} as a user allowed to use that socket, "
                "e.g. under sudo), or provision them yourself and migrate without it",
            )
            raise

    await waiting_for_database(provision_once, "provision databases and users", database, budget)


async def _bring_up(settings: Settings, url: DatabaseURL, steps: tuple[Migration, ...], variable: str) -> None:
    """One schema to its latest version through its role's user; a refusal no wait can cure exits 2."""
    db = Database(url, pool_size=1, timeout=max(settings.db_timeout, 30))
    try:
        await db.check_strict()
        await apply(db, steps)
    except SchemaNotReady as exc:
        if not settings.admin_db:
            _refused(
                exc,
                url,
                variable,
                (*ACCESS_DENIED, UNKNOWN_DATABASE),
                "no admin rights (CHANCEPAY_ADMIN_DB is not set) and this user or its database is "
                "missing: run `make migrate` (or `make run`), or set CHANCEPAY_ADMIN_DB to an admin "
                f"URL (locally: {LOCAL_ADMIN_URL}), or set {variable} to the URL it was "
                "provisioned with",
            )
        raise
    finally:
        await db.close()


async def migrate(settings: Settings) -> None:
    log = get_logger()
    orchestrator, wallet = settings.orchestrator_db_url, settings.wallet_db_url
    # Waiting until the database was first reached, for at most CHANCEPAY_MIGRATE_WAIT_SECONDS.
    database = Dependency("database", settings.migrate_wait)
    # One budget for every phase (provision, then each schema), not one each.
    deadline = time.monotonic() + settings.migrate_wait

    def remaining() -> float:
        return max(0.0, deadline - time.monotonic())

    if settings.admin_db:
        await _provision(settings, database, remaining())
    schemas = (
        (orchestrator, migrations.ORCHESTRATOR, "CHANCEPAY_ORCHESTRATOR_DB"),
        (wallet, migrations.WALLET, "CHANCEPAY_WALLET_DB"),
    )
    for url, steps, variable in schemas:

        async def bring_up(
            url: DatabaseURL = url, steps: tuple[Migration, ...] = steps, variable: str = variable
        ) -> None:
            await _bring_up(settings, url, steps, variable)

        await waiting_for_database(bring_up, f"migrate {url.database}", database, remaining())
        log.info("schema up to date", database=url.database, user=url.user, code_version=latest(steps))
    if settings.bootstrap_api_key:  # the chart's first API client (core/clients.py)
        await register_bootstrap_key(settings)
