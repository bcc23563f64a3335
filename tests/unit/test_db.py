"""core/db.py's transaction helper, over a fake pool: which driver errors are the database being
unavailable (held and retried by every caller) and which propagate unchanged (SQL errors a caller
handles, e.g. a duplicate key)."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncmy.errors
import pytest

from chancepay.core.config import DatabaseURL
from chancepay.core.db import Database, DatabaseUnavailable, Overloaded


class Cursor:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def __aenter__(self) -> Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def execute(self, statement: str, args: Any = None) -> None:
        raise self.error


class Connection:
    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.closed = False

    def cursor(self) -> Cursor:
        return Cursor(self.error)

    async def commit(self) -> None:
        raise AssertionError("a failed transaction must not commit")

    def close(self) -> None:
        self.closed = True


class Pool:
    def __init__(self, error: BaseException) -> None:
        self.connection = Connection(error)
        self.released: list[Connection] = []

    async def acquire(self) -> Connection:
        return self.connection

    def release(self, connection: Connection) -> None:
        self.released.append(connection)


def run_with(error: BaseException) -> tuple[BaseException, Pool]:
    db = Database(DatabaseURL.parse("mysql://u:p@db.invalid:3306/x"))
    pool = Pool(error)
    db._pool = pool

    async def work(cur: Any) -> None:
        await cur.execute("SELECT 1")

    with pytest.raises(Exception) as caught:
        asyncio.run(db.run(work))
    return caught.value, pool


def test_a_broken_protocol_state_is_the_database_unavailable() -> None:
    raised, pool = run_with(asyncmy.errors.InternalError(2014, "Packet sequence number wrong"))
    assert isinstance(raised, DatabaseUnavailable) and "InternalError" in str(raised)
    assert pool.connection.closed and pool.released == [pool.connection]  # never reused


def test_a_lost_connection_is_the_database_unavailable() -> None:
    raised, _ = run_with(asyncmy.errors.OperationalError(2013, "Lost connection to MySQL server"))
    assert isinstance(raised, DatabaseUnavailable)


def test_an_sql_error_propagates_unchanged() -> None:
    duplicate = asyncmy.errors.IntegrityError(1062, "Duplicate entry 'k' for key 'idempotency_key'")
    raised, pool = run_with(duplicate)
    assert raised is duplicate and pool.connection.closed


class HeldPool:
    """A pool whose connections answer at once; the test holds slots by keeping transactions open."""

    class Conn:
        closed = False

        def cursor(self) -> Cursor:
            return Cursor(AssertionError("not used"))

        async def commit(self) -> None:
            return None

        def close(self) -> None:
            self.closed = True

    async def acquire(self) -> HeldPool.Conn:
        return HeldPool.Conn()

    def release(self, connection: Any) -> None:
        return None


async def _hold(db: Database, held: asyncio.Event, release: asyncio.Event) -> None:
    async with db.transaction():
        held.set()
        await release.wait()


def _second_transaction(answering: bool) -> BaseException:
    """A pool of one, its connection held by a transaction: what a second transaction raises."""
    db = Database(DatabaseURL.parse("mysql://u:p@db.invalid:3306/x"), pool_size=1, acquire_timeout=0.05)
    db._pool = HeldPool()
    db._answering = answering

    async def go() -> BaseException:
        held, release = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(_hold(db, held, release))
        await held.wait()
        try:
            async with db.transaction():
                raise AssertionError("no connection was free")
        except DatabaseUnavailable as exc:
            return exc
        finally:
            release.set()
            await holder

    return asyncio.run(go())


def test_no_free_connection_while_the_database_answers_is_overloaded() -> None:
    raised = _second_transaction(answering=True)
    assert isinstance(raised, Overloaded) and "acquire timeout" in str(raised)


def test_no_free_connection_while_the_database_does_not_answer_is_unavailable() -> None:
    raised = _second_transaction(answering=False)
    assert type(raised) is DatabaseUnavailable, "every connection waits on the database: it is the database"


def test_a_free_connection_is_taken_at_once() -> None:
    db = Database(DatabaseURL.parse("mysql://u:p@db.invalid:3306/x"), pool_size=2, acquire_timeout=0.05)
    db._pool = HeldPool()

    async def go() -> None:
        held, release = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(_hold(db, held, release))
        await held.wait()
        async with db.transaction():
            pass
        release.set()
        await holder

    asyncio.run(go())


class VersionPool(HeldPool):
    """HeldPool whose cursor answers every statement with one row (7,): PING and the schema version."""

    class Conn(HeldPool.Conn):
        def cursor(self) -> Cursor:
            return VersionPool.Answer(AssertionError("not raised"))

    class Answer(Cursor):
        async def execute(self, statement: str, args: Any = None) -> None:
            return None

        async def fetchone(self) -> tuple[int]:
            return (7,)

    async def acquire(self) -> HeldPool.Conn:
        return VersionPool.Conn()


def _readiness_while_busy(answering: bool, checked_before: bool) -> tuple[bool, bool]:
    """(ping, schema_ready(7)) while the only connection is held by a transaction."""
    db = Database(DatabaseURL.parse("mysql://u:p@db.invalid:3306/x"), pool_size=1, acquire_timeout=0.05)
    db._pool = VersionPool()

    async def go() -> tuple[bool, bool]:
        if checked_before:
            assert await db.ping() and await db.schema_ready(7)  # a free pool: both read
        db._answering = answering
        held, release = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(_hold(db, held, release))
        await held.wait()
        try:
            return await db.ping(), await db.schema_ready(7)
        finally:
            release.set()
            await holder

    return asyncio.run(go())


def test_a_busy_pool_keeps_the_pod_ready() -> None:
    """/readyz must not fail because every connection is busy (Overloaded): NotReady would move
    the traffic to the other pods, overloading them in turn."""
    assert _readiness_while_busy(answering=True, checked_before=True) == (True, True)


def test_a_busy_pool_never_seen_at_the_schema_version_is_not_ready() -> None:
    ping, schema = _readiness_while_busy(answering=True, checked_before=False)
    assert ping and not schema, "no version read yet: busy does not prove the schema is there"


def test_every_connection_waiting_on_a_silent_database_is_not_ready() -> None:
    assert _readiness_while_busy(answering=False, checked_before=True) == (False, False)
