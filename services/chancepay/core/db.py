"""A small async MySQL/MariaDB access layer over an asyncmy pool.

Why a wrapper: every statement must be bounded in time (a blackholed database must turn
into a fast 503, not a hung request), a connection whose state is unknown after an error
or a cancellation must be thrown away rather than returned to the pool, and strict
sql_mode must hold whatever the server's global setting is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncmy
import asyncmy.errors

from chancepay.core import sql
from chancepay.core.backoff import capped_exponential
from chancepay.core.config import DatabaseURL
from chancepay.core.errors import ChancePayError
from chancepay.core.migrations import runs_on
from chancepay.core.waiting import STARTUP_WAIT_SECONDS, Dependency

# Forced on every session, whatever the server's global default, and verified at start-up.
STRICT_SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
T = TypeVar("T")
ER_DUP_ENTRY = 1062
# Deadlock and lock-wait timeout: the server rolled the transaction back; running it again is safe.
RETRYABLE_ERRORS = (1213, 1205)
# The server answers, but this role's database, user, grants or tables are not (yet) what the code
# needs: unknown database (1049), access denied (1044, 1045, and 1698 MariaDB's for an unknown
# user), command or column denied (1142, 1143), no such table (1146), unknown column (1054: a
# schema older than the code). On a first install the roles start before `chancepay migrate` has
# run; they must wait, not crash.
NOT_PROVISIONED_ERRORS = {
    1044: "access denied to the database",
    1045: "access denied for the user",
    1049: "unknown database",
    1054: "unknown column (schema older than the code)",
    1142: "command denied to the user",
    1143: "column access denied to the user",
    1146: "table missing",
    1698: "access denied for the user",
}
IntegrityError = asyncmy.errors.IntegrityError
# A connection is verified (`Database.verify`) when new and again after this long in use.
VERIFY_EVERY_SECONDS = 60.0


class DatabaseUnavailable(ChancePayError):
    """The database could not be reached, or did not answer within the timeout."""


class DatabaseBusy(DatabaseUnavailable):
    """Deadlock or lock-wait timeout, still there after the retries: treat like unavailable."""


class Overloaded(DatabaseUnavailable):
    """Every connection of the pool stayed busy for the acquire timeout while the database was
    answering: this process has more work than connections (the API answers `503 overloaded`,
    not `database_unavailable`). Elsewhere handled like unavailable: back off and retry."""


class SchemaNotReady(DatabaseUnavailable):
    """The server answers but the database, user, grants or tables are not there yet (run
    `chancepay migrate`). Handled like unavailable: callers back off and retry, readiness fails."""


class StrictModeError(ChancePayError, RuntimeError):
    """The session is not in strict sql_mode: refuse to run (silent truncation loses money)."""


def driver_error(exc: Exception) -> Exception:
    """What a driver DatabaseError means here: not provisioned (SchemaNotReady), retryable
    (DatabaseBusy), unreachable (DatabaseUnavailable); an SQL error (duplicate key, ...) is
    returned unchanged."""
    code = exc.args[0] if exc.args else None
    detail = exc.args[1] if len(exc.args) > 1 else str(exc)
    if code in NOT_PROVISIONED_ERRORS:
        # Access denied: the user is missing or this URL is not the one migrate provisioned.
        ask = (
            "has `chancepay migrate` (with CHANCEPAY_ADMIN_DB) created this user, with this password?"
            if code in (1044, 1045, 1698)
            else "has `chancepay migrate` run?"
        )
        return SchemaNotReady(f"{code} {NOT_PROVISIONED_ERRORS[code]} ({detail}); {ask}")
    if isinstance(exc, asyncmy.errors.OperationalError):
        if code in RETRYABLE_ERRORS:
            return DatabaseBusy(f"{code}: {detail}")
        return DatabaseUnavailable(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, asyncmy.errors.InternalError):
        # The connection's protocol state is broken ("Packet sequence number wrong"): the
        # database did not take the statement; like an outage, retried after a hold.
        return DatabaseUnavailable(f"{type(exc).__name__}: {exc}")
    return exc


def is_duplicate_key(exc: BaseException) -> bool:
    return isinstance(exc, IntegrityError) and bool(exc.args) and exc.args[0] == ER_DUP_ENTRY


def named(cur: Any, row: Any) -> dict[str, Any] | None:
    """A row as {column name: value}, from the cursor that read it. Rows that carry a payment are
    read by name (core/payment.py), so a column added or reordered cannot shift the others."""
    if row is None:
        return None
    return dict(zip((d[0] for d in cur.description), row, strict=True))


async def fetchrow(cur: Any) -> dict[str, Any] | None:
    """The next row of `cur`, by column name."""
    return named(cur, await cur.fetchone())


async def fetchrows(cur: Any) -> list[dict[str, Any]]:
    """Every remaining row of `cur`, by column name."""
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


class Database:
    def __init__(
        self,
        url: DatabaseURL,
        *,
        pool_size: int = 10,
        timeout: float = 5.0,
        wait_budget: float = STARTUP_WAIT_SECONDS,
        autocommit: bool = False,
        acquire_timeout: float | None = None,
    ) -> None:
        self.url = url
        # A free connection waited for at most this long (None: the statement timeout), then
        # Overloaded while the database answers (the last transaction reached it), else unavailable.
        self.acquire_timeout = acquire_timeout
        self._slots = asyncio.Semaphore(pool_size)
        self._answering = True
        # autocommit: every statement its own transaction and no COMMIT round trip (the scanner's
        # idle probe, a plain read); otherwise the first statement opens the transaction.
        self.autocommit = autocommit
        self.pool_size = pool_size
        self.timeout = timeout
        # Reached once work on the tables succeeded (or readiness found the schema at this code's
        # version); until then, within `wait_budget`, a failure to reach it is waiting (core/waiting.py).
        self.dependency = Dependency("database", wait_budget)
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        # Called with each new connection before its first use, and again once it has been held
        # VERIFY_EVERY_SECONDS (core/durability.py reads the server's durability settings); what
        # it raises fails the transaction like any other error, the connection closed.
        self.verify: Callable[[Any], Awaitable[None]] | None = None
        self._verified: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._schema_seen = 0  # the schema version schema_ready last found (a busy pool keeps it)

    async def _get_pool(self) -> Any:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    # minsize=0: a process starts (and reports not-ready) while the DB is down.
                    self._pool = await asyncmy.create_pool(
                        minsize=0,
                        maxsize=self.pool_size,
                        connect_timeout=max(1, int(self.timeout)),
                        autocommit=self.autocommit,
                        # asyncmy sends "SET sql_mode=<value>" verbatim: the quotes are ours.
                        sql_mode=f"'{STRICT_SQL_MODE}'",
                        init_command=sql.SESSION_ISOLATION,
                        charset="utf8mb4",
                        pool_recycle=300,
                        **self.url.connect_kwargs(),
                    )
        return self._pool

    @contextlib.asynccontextmanager
    async def transaction(self, timeout: float | None = None, *, probe: bool = False) -> AsyncIterator[Any]:
        """Yield a cursor inside one transaction, committed on success.

        Any error or cancellation closes the connection instead of returning it to the pool
        (its transaction state is unknown). Reachability problems become DatabaseUnavailable;
        SQL errors (duplicate key, ...) propagate unchanged. A committed transaction marks the
        database reached, unless it is a `probe` (a readiness check that succeeds before the
        tables exist).

        No BEGIN round trip: autocommit is off, the first statement opens the transaction. A COMMIT
        sent with the last statement (multi-statement) would leave asyncmy's in-transaction flag
        set and the pool would discard the connection; so it is one round trip of its own.
        """
        pool = await self._get_pool()
        await self._take_slot()
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                conn = await pool.acquire()
                try:
                    await self._verify_once(conn)
                    async with conn.cursor() as cur:
                        yield cur
                    if not self.autocommit:
                        await conn.commit()
                    self._answering = True
                    if not probe:
                        self.dependency.up()
                except BaseException:
                    conn.close()
                    raise
                finally:
                    pool.release(conn)
        except TimeoutError:
            self._answering = False
            raise DatabaseUnavailable(f"no answer from {self.url.host}:{self.url.port} within the timeout") from None
        except asyncmy.errors.DatabaseError as exc:
            mapped = driver_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        except (asyncmy.errors.InterfaceError, OSError) as exc:
            self._answering = False
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._slots.release()

    async def _take_slot(self) -> None:
        """One of `pool_size` slots, so that waiting for a busy pool is told apart from a
        database that does not answer (the pool itself never waits: it has a connection per slot)."""
        try:
            async with asyncio.timeout(self.timeout if self.acquire_timeout is None else self.acquire_timeout):
                await self._slots.acquire()
        except TimeoutError:
            if self._answering:
                raise Overloaded(f"no free connection within the acquire timeout ({self.pool_size} busy)") from None
            raise DatabaseUnavailable(
                f"no answer from {self.url.host}:{self.url.port}; every connection is waiting for it"
            ) from None

    async def _verify_once(self, conn: Any) -> None:
        if self.verify is None:
            return
        now = time.monotonic()
        if now - self._verified.get(conn, -VERIFY_EVERY_SECONDS) >= VERIFY_EVERY_SECONDS:
            await self.verify(conn)
            self._verified[conn] = now

    async def run(self, work: Callable[[Any], Awaitable[T]], *, attempts: int = 3) -> T:
        """Run `await work(cursor)` in one transaction; a deadlock or lock-wait timeout (the
        server already rolled it back) runs the whole transaction again, up to `attempts` times."""
        for attempt in range(1, attempts + 1):
            try:
                async with self.transaction() as cur:
                    return await work(cur)
            except DatabaseBusy:
                if attempt == attempts:
                    raise
                await asyncio.sleep(capped_exponential(attempt, 0.005, 0.05))
        raise AssertionError("unreachable")  # pragma: no cover

    async def fetchone(self, statement: str, args: Any = None) -> Any:
        async def work(cur: Any) -> Any:
            await cur.execute(statement, args)
            return await cur.fetchone()

        return await self.run(work)

    async def fetchrow(self, statement: str, args: Any = None) -> dict[str, Any] | None:
        """One row by column name, or None."""

        async def work(cur: Any) -> dict[str, Any] | None:
            await cur.execute(statement, args)
            return await fetchrow(cur)

        return await self.run(work)

    async def fetchrows(self, statement: str, args: Any = None) -> list[dict[str, Any]]:
        """Every row by column name."""

        async def work(cur: Any) -> list[dict[str, Any]]:
            await cur.execute(statement, args)
            return await fetchrows(cur)

        return await self.run(work)

    async def fetchall(self, statement: str, args: Any = None) -> list[Any]:
        async def work(cur: Any) -> list[Any]:
            await cur.execute(statement, args)
            return list(await cur.fetchall())

        return await self.run(work)

    async def execute(self, statement: str, args: Any = None) -> int:
        """One statement in its own transaction; returns the affected row count."""

        async def work(cur: Any) -> int:
            await cur.execute(statement, args)
            return int(cur.rowcount)

        return await self.run(work)

    async def ping(self) -> bool:
        """Readiness: does the database answer? A busy pool (every slot taken, Overloaded) is
        an answering database: a pod must not go NotReady because it has work, or its traffic
        moves to the other pods and makes them busy in turn (a cascade)."""
        try:
            async with self.transaction(timeout=min(self.timeout, 2.0), probe=True) as cur:
                await cur.execute(sql.PING)
                await cur.fetchone()
            return True
        except Overloaded:
            return True
        except Exception:
            return False

    async def schema_version(self) -> int:
        """The schema's version (core/migrations.py); SchemaNotReady before any migrate ran."""
        async with self.transaction(probe=True) as cur:
            await cur.execute(sql.SCHEMA_VERSION)
            row = await cur.fetchone()
        return int(row[0])

    async def schema_ready(self, required: int) -> bool:
        """Readiness: the server answers as this role's user and the schema is at the version this
        code needs, or newer with no newer version naming code past this one (this release rolled
        back onto a newer one's schema: core/migrations.py `runs_on`). A pod is not Ready (no traffic; a rolling
        update waits) until `chancepay migrate` brought it there, nor on a schema a newer release
        contracted past this code."""
        try:
            async with self.transaction(probe=True) as cur:
                await cur.execute(sql.SCHEMA_VERSION)
                (version,) = await cur.fetchone()
                floor = 0
                # A newer schema without the column cannot say who may run on it: the read fails
                # (not Ready), as migrate refuses it.
                if version > required:
                    await cur.execute(sql.SCHEMA_FLOOR_ABOVE, (required,))
                    (floor,) = await cur.fetchone()
            version, floor = int(version), int(floor)
            self._schema_seen = version if runs_on(required, version, floor) else 0
        except Overloaded:
            return self._schema_seen >= required  # busy, not down: the version it last read
        except Exception:
            return False
        ready = self._schema_seen >= required
        if ready:
            self.dependency.up()
        return ready

    async def check_strict(self) -> None:
        row = await self.fetchone(sql.STRICT_MODE_CHECK)
        mode = (row[0] or "").upper()
        if "STRICT_ALL_TABLES" not in mode and "STRICT_TRANS_TABLES" not in mode:
            raise StrictModeError(f"sql_mode is {mode!r}; ChancePay requires strict mode")

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None
