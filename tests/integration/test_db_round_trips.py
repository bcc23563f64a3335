"""core/db.py's transaction helper: no BEGIN round trip (the pool's connections run with autocommit
off, so the first statement opens the transaction) and one COMMIT per transaction."""

from __future__ import annotations

import asyncio


def test_a_transaction_sends_no_begin_and_one_commit(env) -> None:
    from chancepay.core.config import DatabaseURL
    from chancepay.core.db import Database

    async def counts() -> tuple[dict[str, int], dict[str, int]]:
        db = Database(DatabaseURL.parse(env.orch_url()), pool_size=1)  # one connection: one session's counters
        try:

            async def status() -> dict[str, int]:
                rows = await db.fetchall("SHOW SESSION STATUS WHERE Variable_name IN ('Com_begin', 'Com_commit')")
                return {name: int(value) for name, value in rows}

            before = await status()
            for _ in range(5):
                await db.fetchone("SELECT 1")
            return before, await status()
        finally:
            await db.close()

    before, after = asyncio.run(counts())
    assert after["Com_begin"] == before["Com_begin"] == 0
    assert after["Com_commit"] - before["Com_commit"] == 6  # the five, and the first status read's own
