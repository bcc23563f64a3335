"""A small async MySQL/MariaDB access layer over an asyncmy pool.

Why a wrapper: every statement must be bounded in time (a blackholed database must turn
into a fast 503, not a hung request), a connection whose state is unknown after an error
or a cancellation must be thrown away rather than returned to the pool, and strict
sql_mode must hold whatever the server's global setting is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncmy
import asyncmy.errors

from chancepay.core.config import DatabaseURL

# Forced on every session, whatever the server's global default, and verified at start-up.
STRICT_SQL_MODE = (
    "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
)
ER_DUP_ENTRY = 1062
IntegrityError = asyncmy.errors.IntegrityError


class DatabaseUnavailable(Exception):
    """The database could not be reached, or did not answer within the timeout."""


class StrictModeError(RuntimeError):
    """The session is not in strict sql_mode: refuse to run (silent truncation loses money)."""


def is_duplicate_key(exc: BaseException) -> bool:
    return isinstance(exc, IntegrityError) and bool(exc.args) and exc.args[0] == ER_DUP_ENTRY


class Database:
    def __init__(self, url: DatabaseURL, *, pool_size: int = 10, timeout: float = 5.0) -> None:
        self.url = url
        self.pool_size = pool_size
        self.timeout = timeout
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()

    async def _get_pool(self) -> Any:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    # minsize=0: a process starts (and reports not-ready) while the DB is down.
                    self._pool = await asyncmy.create_pool(
                        minsize=0,
                        maxsize=self.pool_size,
                        connect_timeout=max(1, int(self.timeout)),
                        autocommit=False,
                        init_command=f"SET SESSION sql_mode='{STRICT_SQL_MODE}'",
                        charset="utf8mb4",
                        pool_recycle=300,
                        **self.url.connect_kwargs(),
                    )
        return self._pool

    @contextlib.asynccontextmanager
    async def transaction(self, timeout: float | None = None) -> AsyncIterator[Any]:
        """Yield a cursor inside one transaction, committed on success.

        Any error or cancellation closes the connection instead of returning it to the pool
        (its transaction state is unknown). Reachability problems become DatabaseUnavailable;
        SQL errors (duplicate key, ...) propagate unchanged.
        """
        pool = await self._get_pool()
        try:
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                conn = await pool.acquire()
                try:
                    async with conn.cursor() as cur:
                        yield cur
                    await conn.commit()
                except BaseException:
                    conn.close()
                    raise
                finally:
                    pool.release(conn)
        except TimeoutError:
            raise DatabaseUnavailable(f"no answer from {self.url.host}:{self.url.port} within the timeout") from None
        except (asyncmy.errors.OperationalError, asyncmy.errors.InterfaceError, OSError) as exc:
            if isinstance(exc, asyncmy.errors.OperationalError) and exc.args and exc.args[0] in (1205, 1213):
                raise  # lock wait timeout / deadlock: a real SQL outcome, the caller decides
            raise DatabaseUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def fetchone(self, sql: str, args: Any = None) -> Any:
        async with self.transaction() as cur:
            await cur.execute(sql, args)
            return await cur.fetchone()

    async def fetchall(self, sql: str, args: Any = None) -> list[Any]:
        async with self.transaction() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())

    async def ping(self) -> bool:
        try:
            async with self.transaction(timeout=min(self.timeout, 2.0)) as cur:
                await cur.execute("SELECT 1")
                await cur.fetchone()
            return True
        except Exception:
            return False

    async def check_strict(self) -> None:
        row = await self.fetchone("SELECT @@SESSION.sql_mode")
        mode = (row[0] or "").upper()
        if "STRICT_ALL_TABLES" not in mode and "STRICT_TRANS_TABLES" not in mode:
            raise StrictModeError(f"sql_mode is {mode!r}; ChancePay requires strict mode")

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            await self._pool.wait_closed()
            self._pool = None
