"""The online audit's pass time against history: one incremental pass of `chancepay auditor` (the
role's own Auditor.check_once) over a fixed window of new payments, on empty tables and on tables
holding `--rows` finalized payments of history; the issue asks for within 10 %.

Run from the repository root against the local MariaDB (root, no password, 127.0.0.1:3306):

    .venv-test/bin/python -m bench.audit_history --rows 10000000 --output docs/bench/<date>-audit-history.json

Works in two scratch databases of its own (bench_audit_<hex>_orch and _wallet, migrated by the
product's migrations, so the indexes are the product's), dropped on the way out. History is
generated inside the server (MariaDB's SEQUENCE engine, bench/sql.py PREFILL_*), in chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import secrets
import statistics
import time
from typing import Any

import pymysql

from bench import sql as bench_sql
from bench.output import emit
from chancepay.auditor import policy
from chancepay.auditor.auditor import Auditor
from chancepay.core import migrations, sql
from chancepay.core.config import DatabaseURL
from chancepay.core.db import Database
from chancepay.core.metrics import Metrics
from chancepay.core.schema import apply

HOST, PORT = "127.0.0.1", 3306


def log(msg: str) -> None:
    print(f"[audit_history] {msg}", flush=True)


def admin(database: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(host=HOST, port=PORT, user="root", password="", database=database, autocommit=True)


def run_sql(database: str, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
    with admin(database) as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())


def url(database: str) -> DatabaseURL:
    return DatabaseURL.parse(f"mysql://root@{HOST}:{PORT}/{database}")


async def migrate(orch: str, wallet: str) -> None:
    for name, steps in ((orch, migrations.ORCHESTRATOR), (wallet, migrations.WALLET)):
        db = Database(url(name), pool_size=1, timeout=60)
        try:
            await apply(db, steps)
        finally:
            await db.close()


def fill_history(orch: str, wallet: str, rows: int, chunk: int = 500_000) -> float:
    """`rows` finalized payments in both tables, a millisecond apart, ending a minute ago."""
    began = time.monotonic()
    first_ms = int(time.time() * 1000) - rows - 60_000
    for database, statement in ((orch, bench_sql.PREFILL_REQUESTS), (wallet, bench_sql.PREFILL_INBOX)):
        for first in range(1, rows + 1, chunk):
            last = min(rows, first + chunk - 1)
            run_sql(database, statement.format(first=int(first), last=int(last)), (first_ms, first_ms))
            log(f"  {database}: {last:,} rows ({time.monotonic() - began:.0f} s)")
    for database, table in ((orch, "request"), (wallet, "inbox")):
        run_sql(database, bench_sql.ANALYZE_TABLE.format(table=table))
    return time.monotonic() - began


def add_window(orch: str, wallet: str, count: int) -> Any:
    """`count` new finalized payments (request and inbox rows, created now); the instant before them."""
    run_sql(orch, bench_sql.AUDIT_WINDOW_DELETE.format(table="request"))
    run_sql(wallet, bench_sql.AUDIT_WINDOW_DELETE.format(table="inbox"))
    ((before,),) = run_sql(orch, bench_sql.AUDIT_WINDOW_START)
    run_sql(orch, bench_sql.AUDIT_WINDOW_ROWS.format(table="request", last=int(count)))
    run_sql(wallet, bench_sql.AUDIT_WINDOW_ROWS.format(table="inbox", last=int(count)))
    return before


async def time_passes(pairs: list[tuple[str, str, Any]], window: int, repeats: int) -> list[dict[str, Any]]:
    """`repeats` passes of a fresh Auditor per (orch, wallet, since) pair, the pairs taking turns
    pass by pass, so a noisy moment of a shared machine hits each pair alike (the ratio is what
    is compared). Each Auditor's checkpoint is just before its window."""
    dbs = [(Database(url(o), pool_size=2, timeout=60), Database(url(w), pool_size=2, timeout=60)) for o, w, _ in pairs]
    seconds: list[list[float]] = [[] for _ in pairs]
    try:
        for round_ in range(repeats + 1):  # the first round warms the pools
            order = range(len(pairs)) if round_ % 2 == 0 else reversed(range(len(pairs)))  # ABBA: no pair always first
            for i in order:
                (o, w), (_, _, since) = dbs[i], pairs[i]
                auditor = Auditor(o, w, Metrics("auditor"), grace=300, batch=window * 2)
                # no overlap: the window alone (a live pass also re-reads the overlap's already judged rows)
                auditor.requests.checkpoint = auditor.inbox.checkpoint = policy.Checkpoint(since, dt.timedelta(0))
                began = time.perf_counter()
                result = await auditor.check_once()
                seconds[i].append(time.perf_counter() - began)
                assert result.checked == window and not result.found, (result.checked, result.found)
    finally:
        for o, w in dbs:
            await o.close()
            await w.close()
    return [
        {
            "passes": repeats,
            "median_ms": round(statistics.median(s[1:]) * 1000, 2),
            "min_ms": round(min(s[1:]) * 1000, 2),
            "max_ms": round(max(s[1:]) * 1000, 2),
        }
        for s in seconds
    ]


def measure(schemas: list[tuple[str, str]], window: int, repeats: int) -> list[dict[str, Any]]:
    pairs = [(orch, wallet, add_window(orch, wallet, window)) for orch, wallet in schemas]
    results = asyncio.run(time_passes(pairs, window, repeats))
    for (orch, wallet), out in zip(schemas, results, strict=True):
        out["request_rows"] = run_sql(orch, bench_sql.COUNT_ROWS.format(table="request"))[0][0]
        out["inbox_rows"] = run_sql(wallet, bench_sql.COUNT_ROWS.format(table="inbox"))[0][0]
    return results


def plans(orch: str, wallet: str) -> dict[str, list[Any]]:
    """EXPLAIN of the pass's two range reads (which index serves them)."""
    now = run_sql(orch, bench_sql.AUDIT_WINDOW_START)[0][0]

    def explain(database: str, statement: str) -> list[Any]:
        rows = run_sql(database, bench_sql.EXPLAIN.format(statement=statement), (now, now, "", 10))
        return [list(map(str, r)) for r in rows]

    return {"new_requests": explain(orch, sql.AUDIT_SCAN_REQUESTS), "new_inbox": explain(wallet, sql.AUDIT_SCAN_INBOX)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.audit_history", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="finalized payments of history")
    p.add_argument("--window", type=int, default=2_000, help="new payments one pass checks")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--output", default="")
    args = p.parse_args(argv)
    tag = secrets.token_hex(6)
    empty_pair = (f"bench_audit_{tag}_e_orch", f"bench_audit_{tag}_e_wallet")
    full_pair = (f"bench_audit_{tag}_orch", f"bench_audit_{tag}_wallet")
    databases = [*empty_pair, *full_pair]
    try:
        for database in databases:
            run_sql("mysql", bench_sql.CREATE_DATABASE.format(db=database))
        for orch, wallet in (empty_pair, full_pair):
            asyncio.run(migrate(orch, wallet))
        log(f"filling {args.rows:,} payments of history (one pair of schemas; the other stays empty)")
        prefill = fill_history(*full_pair, args.rows)
        log(f"{args.repeats} passes over {args.window:,} new payments each, empty and full taking turns")
        empty, full = measure([empty_pair, full_pair], args.window, args.repeats)
        log(f"  -> empty {empty}\n  -> full {full}")
        doc = {
            "what": "one incremental chancepay auditor pass (Auditor.check_once) over a fixed window of new payments; "
            "empty and full tables measured in turns, pass by pass",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
            "server": run_sql(full_pair[0], bench_sql.SERVER_FACTS)[0][0],
            # the history's pages beyond the buffer pool are what a pass's look-ups pay for
            "innodb_buffer_pool_size_bytes": run_sql(full_pair[0], bench_sql.BUFFER_POOL_SIZE)[0][0],
            "window": args.window,
            "history_rows": args.rows,
            "prefill_seconds": round(prefill, 1),
            "empty": empty,
            "history": full,
            "ratio_median": round(full["median_ms"] / empty["median_ms"], 3),
            "within_10_percent": full["median_ms"] <= empty["median_ms"] * 1.10,
            "plans": plans(*full_pair),
        }
    finally:
        for database in databases:
            run_sql("mysql", bench_sql.DROP_DATABASE.format(db=database))
    emit(doc, args.output, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
