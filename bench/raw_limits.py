"""Physical limits the ChancePay pipeline sits on, measured on this machine.

    python -m bench.raw_limits [--seconds 5] [--db-connections 1,8,32,64]
                               [--publish-windows 64,256] [--prefetch 64,256] [--output FILE]

Measures, against the local MariaDB (127.0.0.1:3306, root) and RabbitMQ (127.0.0.1:5672,
guest) only, each stage a payment needs exactly once:

1. ``db_commit``        the orchestrator's per-payment transaction (INSERT_REQUEST +
                        INSERT_OUTBOX + COMMIT, same DDL, fresh uuid each) with 1..N connections;
2. ``publish_confirm``  persistent + mandatory publishes of the real payload to the same quorum
                        queue, one at a time (await each confirm) and pipelined (a window of
                        publishes in flight);
3. ``consume_ack``      consume + per-message ack from that queue with a prefetch window.

Everything happens in a scratch database and a scratch vhost (``bench_<hex>``) that are removed
on the way out (normal exit, error, Ctrl-C or SIGTERM). One JSON document goes to stdout (and to
``--output`` if given); progress goes to stderr. Durations are bounded by ``--seconds`` per
point and every loop is bounded in count (``--max-ops``) as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiormq
import asyncmy
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from bench import sql as bench_sql
from chancepay.core import sql, topology
from chancepay.core.payment import PaymentMessage

SCHEMA = "chancepay.raw_limits/1"
HOST = "127.0.0.1"  # everything talks to the local machine only
AMOUNT = Decimal("12.50")


# --------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[raw_limits {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, got {text!r}")
    return values


def int_list_or_empty(text: str) -> list[int]:
    return int_list(text) if text.strip() else []


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def latency_summary(seconds: list[float]) -> dict[str, float | None]:
    values = sorted(seconds)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000.0, 3)

    return {
        "p50": ms(percentile(values, 50)),
        "p99": ms(percentile(values, 99)),
        "max": ms(values[-1] if values else None),
    }


def rate(count: int, window: float) -> float:
    return round(count / window, 1) if window > 0 else 0.0


# --------------------------------------------------------------------------- CPU accounting
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _find_pids(names: set[str]) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as fh:
                if fh.read().strip() in names:
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def _proc_cpu(pids: list[int]) -> float | None:
    if not pids:
        return None
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return total


def _machine_busy() -> float | None:
    try:
        with open("/proc/stat") as fh:
            parts = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)  # idle + iowait
    return (sum(parts[:8]) - idle) / _CLK_TCK


class CpuMeter:
    """Cores used (CPU seconds per wall second) by this client, MariaDB, RabbitMQ, the machine."""

    def __init__(self) -> None:
        self.db_pids = _find_pids({"mariadbd", "mysqld"})
        self.mq_pids = _find_pids({"beam.smp"})

    def snapshot(self) -> dict[str, float | None]:
        return {
            "wall": time.perf_counter(),
            "client": time.process_time(),
            "mariadb": _proc_cpu(self.db_pids),
            "rabbitmq": _proc_cpu(self.mq_pids),
            "machine": _machine_busy(),
        }

    @staticmethod
    def cores_used(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float | None]:
        wall = (after["wall"] or 0.0) - (before["wall"] or 0.0)
        out: dict[str, float | None] = {}
        for key in ("client", "mariadb", "rabbitmq", "machine"):
            a, b = after[key], before[key]
            out[key] = None if a is None or b is None or wall <= 0 else round((a - b) / wall, 2)
        # Everything else on the machine (other benchmarks, the services, tests): if this is not
        # near zero the point was measured on a shared, not an idle, machine.
        if out["machine"] is not None:
            known = sum(v for k, v in out.items() if k != "machine" and v is not None)
            out["other"] = round(max(0.0, out["machine"] - known), 2)
        else:
            out["other"] = None
        return out

    def baseline(self, seconds: float) -> dict[str, float | None]:
        before = self.snapshot()
        time.sleep(seconds)
        used = self.cores_used(before, self.snapshot())
        used.pop("client", None)
        return used


# --------------------------------------------------------------------------- measurement core
@dataclass
class Window:
    """Ops count when they complete inside [start, end]; a short warm-up precedes start and ops
    still in flight at the end are not counted (standard completed-in-window throughput)."""

    start: float
    end: float
    max_ops: int
    started: int = 0
    completed: list[float] = field(default_factory=list)  # completion times inside the window
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    last_error: str | None = None

    def may_start(self) -> bool:
        return time.perf_counter() < self.end and self.started < self.max_ops

    def counts(self, t_end: float) -> bool:
        return self.start <= t_end <= self.end

    def record(self, t_start: float, t_end: float) -> None:
        if self.counts(t_end):
            self.completed.append(t_end)
            self.latencies.append(t_end - t_start)

    def fail(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]


async def run_workers(
    n: int, seconds: float, warmup: float, max_ops: int, op: Callable[[int, Window], Awaitable[None]]
) -> tuple[Window, float]:
    """Run n copies of ``while window.may_start(): await op(i, window)``; return the window and
    the measured wall span (the window, or less when --max-ops stopped it early)."""
    now = time.perf_counter()
    window = Window(start=now + warmup, end=now + warmup + seconds, max_ops=max_ops)

    async def worker(i: int) -> None:
        while window.may_start():
            window.started += 1
            try:
                await op(i, window)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - counted and reported
                window.fail(exc)
                if window.errors > 1000:
                    raise

    # Workers stop starting ops at window.end; give in-flight ops a bounded grace period.
    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(n))), timeout=warmup + seconds + 30.0)
    end = window.end if window.started < max_ops or not window.completed else max(window.completed)
    return window, max(end - window.start, 1e-9)


# --------------------------------------------------------------------------- stage 1: MariaDB
async def mysql_connect(db: str | None, port: int, autocommit: bool = False) -> Any:
    return await asyncmy.connect(
        host=HOST, port=port, user="root", password="", db=db, autocommit=autocommit, connect_timeout=10
    )


async def db_facts(port: int) -> dict[str, Any]:
    conn = await mysql_connect(None, port, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(bench_sql.SERVER_FACTS)
            row = await cur.fetchone()
    finally:
        conn.close()
    keys = (
        "version",
        "innodb_flush_log_at_trx_commit",
        "sync_binlog",
        "log_bin",
        "innodb_doublewrite",
        "innodb_flush_method",
        "innodb_buffer_pool_size",
        "innodb_log_file_size",
        "max_connections",
    )
    facts = dict(zip(keys, row, strict=True))
    for k in (
        "innodb_flush_log_at_trx_commit",
        "sync_binlog",
        "log_bin",
        "innodb_doublewrite",
        "innodb_buffer_pool_size",
        "innodb_log_file_size",
        "max_connections",
    ):
        if facts[k] is not None:
            facts[k] = int(facts[k])
    facts["log_bin"] = bool(facts["log_bin"])
    return facts


async def create_scratch_db(name: str, port: int) -> None:
    conn = await mysql_connect(None, port, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql.CREATE_DATABASE.format(db=name))
            await cur.execute(bench_sql.USE_DATABASE.format(db=name))
            for ddl in sql.ORCHESTRATOR_V1:
                await cur.execute(ddl)
    finally:
        conn.close()


async def drop_scratch_db(name: str, port: int) -> None:
    """Drop, then check it is gone (a CREATE cut short by Ctrl-C may still land; drop again)."""
    conn = await mysql_connect(None, port, autocommit=True)
    try:
        async with conn.cursor() as cur:
            for attempt in range(3):
                await cur.execute(bench_sql.DROP_DATABASE.format(db=name))
                await asyncio.sleep(0.2 * attempt)
                await cur.execute(bench_sql.DATABASE_EXISTS, (name,))
                if not await cur.fetchall():
                    return
        raise RuntimeError(f"database {name} still exists")
    finally:
        conn.close()


def make_db_op(conns: list[Any], commit_latencies: list[float]) -> Callable[[int, Window], Awaitable[None]]:
    """One payment's transaction on connection i, as the orchestrator writes it."""

    async def op(i: int, window: Window) -> None:
        conn = conns[i]
        uuid = str(uuidlib.uuid4())
        cus_id = f"bench-{i}"
        payload = PaymentMessage(uuid, {"cus_id": cus_id, "amount": AMOUNT}).encode()
        t0 = time.perf_counter()
        try:
            await conn.begin()
            async with conn.cursor() as cur:
                await cur.execute(sql.INSERT_REQUEST, (uuid, cus_id, AMOUNT, None, None))
                await cur.execute(sql.INSERT_OUTBOX, (uuid, payload))
            t1 = time.perf_counter()
            await conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.rollback()
            raise
        t2 = time.perf_counter()
        window.record(t0, t2)
        if window.counts(t2):
            commit_latencies.append(t2 - t1)

    return op


def multi_row(statement: str, rows: int) -> str:
    """`INSERT ... VALUES (...)` of one row as the same INSERT of `rows` rows (one statement)."""
    head, values = statement.split(" VALUES ", 1)
    return f"{head} VALUES " + ", ".join([values] * rows)


def make_db_batch_op(conns: list[Any], batch: int) -> Callable[[int, Window], Awaitable[None]]:
    """`batch` payments in one transaction on connection i, as a group commit at the API writes
    them: one multi-row INSERT into request, one into outbox, one COMMIT."""
    insert_request, insert_outbox = multi_row(sql.INSERT_REQUEST, batch), multi_row(sql.INSERT_OUTBOX, batch)

    async def op(i: int, window: Window) -> None:
        conn = conns[i]
        requests: list[Any] = []
        outbox: list[Any] = []
        for _ in range(batch):
            uuid, cus_id = str(uuidlib.uuid4()), f"bench-{i}"
            requests += (uuid, cus_id, AMOUNT, None, None)
            outbox += (uuid, PaymentMessage(uuid, {"cus_id": cus_id, "amount": AMOUNT}).encode())
        t0 = time.perf_counter()
        try:
            async with conn.cursor() as cur:  # autocommit off: the first statement opens the transaction
                await cur.execute(insert_request, requests)
                await cur.execute(insert_outbox, outbox)
            await conn.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.rollback()
            raise
        window.record(t0, time.perf_counter())

    return op


async def db_batch_point(args: argparse.Namespace, conns: list[Any], batch: int, meter: CpuMeter) -> dict[str, Any]:
    n = min(args.db_batch_connections, len(conns))
    log(f"db_commit batched: {batch} payments per transaction, {n} connection(s), {args.seconds:g} s")
    before = meter.snapshot()
    window, span = await run_workers(n, args.seconds, args.warmup, args.max_ops, make_db_batch_op(conns, batch))
    after = meter.snapshot()
    commits = len(window.completed)
    point = {
        "batch": batch,
        "connections": n,
        "seconds": round(span, 3),
        "commits": commits,
        "commits_per_s": rate(commits, span),
        "payments_per_s": rate(commits * batch, span),
        "txn_latency_ms": latency_summary(window.latencies),
        "errors": window.errors,
        "last_error": window.last_error,
        "cpu_cores_used": CpuMeter.cores_used(before, after),
    }
    log(f"db_commit batched: {batch} per txn -> {point['payments_per_s']} payments/s")
    return point


async def db_point(args: argparse.Namespace, conns: list[Any], n: int, meter: CpuMeter) -> dict[str, Any]:
    commit_latencies: list[float] = []
    log(f"db_commit: {n} connection(s) for {args.seconds:g} s")
    before = meter.snapshot()
    window, span = await run_workers(n, args.seconds, args.warmup, args.max_ops, make_db_op(conns, commit_latencies))
    after = meter.snapshot()
    point = {
        "connections": n,
        "seconds": round(span, 3),
        "commits": len(window.completed),
        "commits_per_s": rate(len(window.completed), span),
        "txn_latency_ms": latency_summary(window.latencies),
        "commit_latency_ms": latency_summary(commit_latencies),
        "errors": window.errors,
        "last_error": window.last_error,
        "cpu_cores_used": CpuMeter.cores_used(before, after),
    }
    log(f"db_commit: {n} conn -> {point['commits_per_s']}/s, p99 {point['txn_latency_ms']['p99']} ms")
    return point


async def bench_db(args: argparse.Namespace, db: str, meter: CpuMeter) -> dict[str, Any]:
    max_n = max(*args.db_connections, args.db_batch_connections if args.db_batches else 1)
    log(f"db_commit: opening {max_n} connections to {db}")
    conns = list(await asyncio.gather(*(mysql_connect(db, args.mysql_port) for _ in range(max_n))))
    try:
        points = [await db_point(args, conns, n, meter) for n in args.db_connections]
        batched = [await db_batch_point(args, conns, b, meter) for b in args.db_batches]
    finally:
        for conn in conns:
            conn.close()
    best = max(points, key=lambda p: p["commits_per_s"])
    out: dict[str, Any] = {
        "transaction": "INSERT_REQUEST + INSERT_OUTBOX + COMMIT (fresh uuid, no idempotency key)",
        "points": points,
        "best": {"connections": best["connections"], "rate_per_s": best["commits_per_s"]},
    }
    if batched:
        top = max(batched, key=lambda p: p["payments_per_s"])
        out["batched"] = {
            "transaction": "multi-row INSERT_REQUEST + multi-row INSERT_OUTBOX + COMMIT, `batch` payments each",
            "points": batched,
            "best": {"batch": top["batch"], "connections": top["connections"], "rate_per_s": top["payments_per_s"]},
        }
    return out


# --------------------------------------------------------------------------- RabbitMQ vhost
def rabbitmqctl(args: argparse.Namespace, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([args.rabbitmqctl, *cmd], capture_output=True, text=True, timeout=120, check=check)


def amqp_url(args: argparse.Namespace, vhost: str) -> str:
    return f"amqp://guest:guest@{HOST}:{args.amqp_port}/{vhost}"


def _str(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def make_publish(channel: Any) -> Callable[[], Awaitable[tuple[bool, str | None]]]:
    """One real payment message: persistent, mandatory, message_id = uuid, JSON body."""

    async def publish() -> tuple[bool, str | None]:
        uuid = str(uuidlib.uuid4())
        body = PaymentMessage(uuid, {"cus_id": "bench-cus", "amount": AMOUNT}).encode()
        confirmation = await channel.basic_publish(
            body,
            exchange=topology.EXCHANGE,
            routing_key=topology.ROUTING_KEY,
            mandatory=True,
            properties=spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=uuid,
            ),
            timeout=30,
        )
        if isinstance(confirmation, spec.Basic.Ack):
            return True, None
        return False, type(confirmation).__name__

    return publish


async def queue_depth(channel: Any) -> int:
    ok = await channel.queue_declare(queue=topology.QUEUE, passive=True)
    return int(ok.message_count or 0)


async def publish_point(
    args: argparse.Namespace,
    publish: Callable,
    window_size: int,
    seconds: float,
    warmup: float,
    meter: CpuMeter,
    max_ops: int,
) -> dict[str, Any]:
    async def op(i: int, window: Window) -> None:
        t0 = time.perf_counter()
        ok, why = await publish()
        if not ok:
            raise RuntimeError(f"publish not confirmed: {why}")
        window.record(t0, time.perf_counter())

    before = meter.snapshot()
    window, span = await run_workers(window_size, seconds, warmup, max_ops, op)
    after = meter.snapshot()
    return {
        "mode": "one_at_a_time" if window_size == 1 else "pipelined",
        "window": window_size,
        "seconds": round(span, 3),
        "confirmed": len(window.completed),
        "publishes_per_s": rate(len(window.completed), span),
        "confirm_latency_ms": latency_summary(window.latencies),
        "errors": window.errors,
        "last_error": window.last_error,
        "cpu_cores_used": CpuMeter.cores_used(before, after),
    }


def broker_facts(conn: Any) -> dict[str, Any]:
    props = conn.server_properties or {}
    return {
        "product": _str(props.get("product")),
        "version": _str(props.get("version")),
        "platform": _str(props.get("platform")),
        "queue": topology.QUEUE,
        "queue_type": topology.QUEUE_ARGUMENTS.get("x-queue-type", "classic"),
        "queue_arguments": dict(topology.QUEUE_ARGUMENTS),
    }


async def bench_publish(args: argparse.Namespace, publish: Callable, meter: CpuMeter) -> dict[str, Any]:
    """Stage 2: publish with confirm, one at a time and pipelined."""
    payload_bytes = len(PaymentMessage(str(uuidlib.uuid4()), {"cus_id": "bench-cus", "amount": AMOUNT}).encode())
    points = []
    for w in [1, *args.publish_windows]:
        log(f"publish_confirm: window {w} for {args.seconds:g} s")
        point = await publish_point(args, publish, w, args.seconds, args.warmup, meter, args.max_ops)
        log(f"publish_confirm: window {w} -> {point['publishes_per_s']}/s, p99 {point['confirm_latency_ms']['p99']} ms")
        points.append(point)
    best = max(points, key=lambda p: p["publishes_per_s"])
    return {
        "payload_bytes": payload_bytes,
        "properties": "persistent (delivery_mode=2), mandatory, content_type=application/json, message_id=uuid",
        "points": points,
        "best": {"mode": best["mode"], "window": best["window"], "rate_per_s": best["publishes_per_s"]},
    }


async def bench_consume(
    args: argparse.Namespace, conn: Any, pub_channel: Any, publish: Callable, publish_rate: float, meter: CpuMeter
) -> dict[str, Any]:
    """Stage 3: consume + ack, the queue pre-filled before each point."""
    fill_window = max(args.publish_windows)
    fill_rate = max(publish_rate, 1.0)
    expected = 1.5 * fill_rate  # consume+ack is usually cheaper than publish+confirm
    cpoints: list[dict[str, Any]] = []

    async def measure(prefetch: int, ack_every: int) -> dict[str, Any]:
        depth = await queue_depth(pub_channel)
        need_total = int(max([expected] + [p["acks_per_s"] for p in cpoints]) * (args.seconds + args.warmup) * 1.1)
        target = min(args.prefill_max, max(args.prefill_min, need_total))
        if depth < target:
            need = target - depth
            budget = max(1.0, min(args.seconds * 3, need / fill_rate * 1.5))
            log(f"consume_ack: pre-filling {need} messages (depth {depth}, at most {budget:.1f} s)")
            await publish_point(args, publish, fill_window, budget, 0.0, meter, need)
            depth = await queue_depth(pub_channel)
        log(f"consume_ack: prefetch {prefetch}, ack every {ack_every}, depth {depth}, for {args.seconds:g} s")
        point = await consume_point(conn, prefetch, depth, args, meter, ack_every)
        point["queue_depth_before"] = depth
        log(
            f"consume_ack: prefetch {prefetch}, ack every {ack_every} -> {point['acks_per_s']}/s"
            + (" (drained the queue)" if point["drained"] else "")
        )
        return point

    for prefetch in args.prefetch:
        cpoints.append(await measure(prefetch, 1))
    cbest = max(cpoints, key=lambda p: p["acks_per_s"])
    out: dict[str, Any] = {
        "ack": "basic.ack per message (multiple=false)",
        "points": cpoints,
        "best": {"prefetch": cbest["prefetch"], "rate_per_s": cbest["acks_per_s"]},
    }
    batched = [await measure(cbest["prefetch"], k) for k in args.ack_batches if k < cbest["prefetch"]]
    if batched:
        top = max(batched, key=lambda p: p["acks_per_s"])
        out["batched"] = {
            "ack": "basic.ack multiple=true every `ack_every` messages",
            "points": batched,
            "best": {"prefetch": top["prefetch"], "ack_every": top["ack_every"], "rate_per_s": top["acks_per_s"]},
        }
    return out


async def bench_mq(args: argparse.Namespace, vhost: str, meter: CpuMeter) -> tuple[dict, dict, dict]:
    conn = await aiormq.connect(amqp_url(args, vhost))
    try:
        facts = broker_facts(conn)
        pub_channel = await conn.channel(publisher_confirms=True)
        await topology.declare(pub_channel)
        publish = make_publish(pub_channel)
        publish_result = await bench_publish(args, publish, meter)
        consume_result = await bench_consume(
            args, conn, pub_channel, publish, publish_result["best"]["rate_per_s"], meter
        )
        return facts, publish_result, consume_result
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), timeout=10)


def ack_window(
    acked_times: list[float], start: float, end: float, warmup: float, limit: int
) -> tuple[list[float], float, bool]:
    """The acks counted, the span they are counted over, and whether the queue was drained. The
    warm-up (the first acks while the prefetch window fills) is skipped like in the other stages,
    unless the queue was drained so fast that nothing would be left."""
    measure_from = start + warmup
    counted = [t for t in acked_times if t >= measure_from]
    if len(counted) < max(10, len(acked_times) // 2):
        measure_from, counted = start, acked_times
    drained = len(acked_times) >= limit
    stop = counted[-1] if (drained and counted) else end
    return counted, max(stop - measure_from, 1e-9), drained


async def consume_point(
    conn: Any, prefetch: int, available: int, args: argparse.Namespace, meter: CpuMeter, ack_every: int = 1
) -> dict[str, Any]:
    channel = await conn.channel(publisher_confirms=False)
    limit = min(available, args.max_ops)
    done = asyncio.Event()
    acked_times: list[float] = []
    state = {"acked": 0, "errors": 0, "last_error": None, "start": None}

    async def on_message(message: DeliveredMessage) -> None:
        if done.is_set():
            return  # left unacked: requeued when the channel closes
        try:
            if ack_every == 1 or (state["acked"] + 1) % ack_every == 0 or state["acked"] + 1 >= limit:
                await message.channel.basic_ack(message.delivery.delivery_tag, multiple=ack_every > 1)
        except Exception as exc:  # noqa: BLE001
            state["errors"] += 1
            state["last_error"] = f"{type(exc).__name__}: {exc}"[:300]
            return
        state["acked"] += 1
        acked_times.append(time.perf_counter())
        if state["acked"] >= limit:
            done.set()

    before = meter.snapshot()
    try:
        await channel.basic_qos(prefetch_count=prefetch)
        start = time.perf_counter()
        ok = await channel.basic_consume(topology.QUEUE, on_message)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=args.seconds + args.warmup)
        done.set()
        end = time.perf_counter()
        with contextlib.suppress(Exception):
            await channel.basic_cancel(ok.consumer_tag)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(channel.close(), timeout=10)
    after = meter.snapshot()
    counted, span, drained = ack_window(acked_times, start, end, args.warmup, limit)
    return {
        "prefetch": prefetch,
        **({"ack_every": ack_every} if ack_every > 1 else {}),
        "seconds": round(span, 3),
        "acked": len(counted),
        "acks_per_s": rate(len(counted), span),
        "drained": drained,
        "errors": state["errors"],
        "last_error": state["last_error"],
        "cpu_cores_used": CpuMeter.cores_used(before, after),
    }


# --------------------------------------------------------------------------- machine facts
def fsync_probe(seconds: float) -> dict[str, Any]:
    """4 KiB write + fdatasync in a loop in a temp file (same device as the datadirs here?)."""
    fd, path = tempfile.mkstemp(prefix="chancepay-fsync-")
    latencies = []
    try:
        block = os.urandom(4096)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline and len(latencies) < 100_000:
            t0 = time.perf_counter()
            os.pwrite(fd, block, (len(latencies) % 256) * 4096)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - t0)
        dev = os.fstat(fd).st_dev
    finally:
        os.close(fd)
        os.unlink(path)
    span = sum(latencies)
    return {
        "path_dir": os.path.dirname(path),
        "same_device_as_mariadb_datadir": _same_device(dev, "/var/lib/mysql"),
        "fdatasyncs_per_s": rate(len(latencies), span),
        "latency_ms": latency_summary(latencies),
    }


def _same_device(dev: int, path: str) -> bool | None:
    try:
        return os.stat(path).st_dev == dev
    except OSError:
        return None


def host_facts() -> dict[str, Any]:
    mem_kib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    cpu_model = None
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "memory_bytes": mem_kib * 1024 if mem_kib else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "event_loop": None,  # filled in by run()
        "libraries": _library_versions(),
    }


def _library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("asyncmy", "aiormq", "pamqp", "uvloop", "orjson"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------- orchestration
async def run(args: argparse.Namespace, db: str, vhost: str, created: dict[str, bool]) -> dict[str, Any]:
    # SIGTERM inside the loop cancels the run like Ctrl-C does; main() then cleans up.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    meter = CpuMeter()
    facts = host_facts()
    facts["busy_cores_before_run"] = await asyncio.to_thread(meter.baseline, 0.5)
    if (facts["busy_cores_before_run"].get("machine") or 0.0) > 0.25:
        log(f"WARNING: machine not idle before the run: {facts['busy_cores_before_run']} cores busy")
    facts["event_loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
    facts["mariadb"] = await db_facts(args.mysql_port)
    log(f"fsync probe for {args.fsync_seconds:g} s")
    facts["fsync_probe"] = await asyncio.to_thread(fsync_probe, args.fsync_seconds)

    result: dict[str, Any] = {}
    if "db" in args.stages:
        log(f"creating scratch database {db}")
        created["db"] = True
        await create_scratch_db(db, args.mysql_port)
        result["db_commit"] = await bench_db(args, db, meter)
    if "mq" in args.stages:
        log(f"creating scratch vhost {vhost}")
        created["vhost"] = True
        await asyncio.to_thread(rabbitmqctl, args, "add_vhost", vhost)
        await asyncio.to_thread(rabbitmqctl, args, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        mq_facts, result["publish_confirm"], result["consume_ack"] = await bench_mq(args, vhost, meter)
        facts["rabbitmq"] = mq_facts
    result["machine"] = facts
    return result


def cleanup(args: argparse.Namespace, db: str, vhost: str, created: dict[str, bool]) -> dict[str, Any]:
    """Remove the scratch database and vhost; never interrupted by a second Ctrl-C."""
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    status: dict[str, Any] = {"database": db, "vhost": vhost}
    try:
        if created.get("db"):
            try:
                asyncio.run(asyncio.wait_for(drop_scratch_db(db, args.mysql_port), timeout=60))
                status["database_dropped"] = True
                log(f"dropped scratch database {db}")
            except Exception as exc:  # noqa: BLE001
                status["database_dropped"] = False
                log(f"FAILED to drop scratch database {db}: {exc!r} (DROP DATABASE `{db}` by hand)")
        if created.get("vhost"):
            try:
                ok = False
                for _ in range(3):
                    proc = rabbitmqctl(args, "delete_vhost", vhost, check=False)
                    listed = rabbitmqctl(args, "list_vhosts", "-q", "name", check=False)
                    if listed.returncode == 0 and vhost not in listed.stdout.split():
                        ok = True
                        break
                status["vhost_deleted"] = ok
                log(
                    f"deleted scratch vhost {vhost}"
                    if ok
                    else f"FAILED to delete vhost {vhost}: {proc.stderr.strip()[:300]}"
                )
            except Exception as exc:  # noqa: BLE001
                status["vhost_deleted"] = False
                log(f"FAILED to delete scratch vhost {vhost}: {exc!r} (rabbitmqctl delete_vhost {vhost})")
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return status


def summarize(result: dict[str, Any]) -> dict[str, Any] | None:
    stages = {
        "db_commit": "request+outbox transaction commit (MariaDB)",
        "publish_confirm": "publish with confirm to the quorum queue (RabbitMQ)",
        "consume_ack": "consume + ack from the quorum queue (RabbitMQ)",
    }
    bests = {k: result[k]["best"]["rate_per_s"] for k in stages if k in result}
    if not bests:
        return None
    stage = min(bests, key=bests.get)
    out: dict[str, Any] = {
        "stage": stage,
        "description": stages[stage],
        "rate_per_s": bests[stage],
        "best_rates_per_s": bests,
    }
    if len(bests) == len(stages) and all(v > 0 for v in bests.values()):
        # Each payment needs every stage once; if the stages shared the machine's CPU perfectly
        # (they do, on one host), a payment costs the sum of the per-stage times.
        out["all_stages_sharing_machine_per_s"] = round(1.0 / sum(1.0 / v for v in bests.values()), 1)
        out["batched"] = batched_limit(result, bests)
    return out


def batched_limit(result: dict[str, Any], single: dict[str, float]) -> dict[str, Any]:
    """The limits once each stage is batched (group commit, pipelined confirms, multiple-ack): per
    stage the best of its single-payment and batched points, so batching can only raise it."""
    bests = {
        k: max(v, (result[k].get("batched") or {}).get("best", {}).get("rate_per_s") or 0.0) for k, v in single.items()
    }
    stage = min(bests, key=lambda k: bests[k])
    return {
        "stage": stage,
        "rate_per_s": bests[stage],
        "best_rates_per_s": bests,
        # publish_confirm's own points are its batched form (a window of publishes per confirm wait)
        "best_batch": {k: (result[k].get("batched") or {}).get("best") or result[k]["best"] for k in single},
        "all_stages_sharing_machine_per_s": round(1.0 / sum(1.0 / v for v in bests.values()), 1),
    }


def contention_warnings(result: dict[str, Any], cores: int | None) -> list[str]:
    """Point out measurements taken while other processes were using the CPU."""
    warnings = []
    before = (result.get("machine", {}).get("busy_cores_before_run") or {}).get("machine")
    if before is not None and before > 0.25:
        warnings.append(f"machine was not idle before the run ({before} cores busy)")
    for stage in ("db_commit", "publish_confirm", "consume_ack"):
        for point in result.get(stage, {}).get("points", []):
            other = point["cpu_cores_used"].get("other")
            if other is not None and other > 0.25:
                label = {k: point[k] for k in ("connections", "window", "prefetch") if k in point}
                warnings.append(
                    f"{stage} {label}: other processes used {other} of {cores} cores; "
                    "this rate understates the idle machine"
                )
    return warnings


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.raw_limits", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=positive_float, default=4.0, help="measured duration of each point (default 4)")
    p.add_argument(
        "--warmup", type=float, default=None, help="un-measured warm-up before each point (default min(0.5, seconds/5))"
    )
    p.add_argument(
        "--db-connections",
        type=int_list,
        default=[1, 8, 32, 64],
        help="MariaDB connection counts to measure (default 1,8,32,64)",
    )
    p.add_argument(
        "--db-batches",
        type=int_list_or_empty,
        default=[1, 4, 16, 64],
        help="payments per transaction for the batched db_commit points (default 1,4,16,64; empty string: none)",
    )
    p.add_argument(
        "--db-batch-connections", type=int, default=8, help="connections for the batched db_commit points (default 8)"
    )
    p.add_argument(
        "--ack-batches",
        type=int_list_or_empty,
        default=[16],
        help="messages per multiple-ack for the batched consume_ack points, at the best prefetch "
        "(default 16; empty string: none)",
    )
    p.add_argument(
        "--publish-windows",
        type=int_list,
        default=[64, 256],
        help="publishes in flight for the pipelined points; one-at-a-time is always measured (default 64,256)",
    )
    p.add_argument("--prefetch", type=int_list, default=[64, 256], help="consumer prefetch counts (default 64,256)")
    p.add_argument("--prefill-min", type=int, default=2000, help="messages queued at least before a consume point")
    p.add_argument("--prefill-max", type=int, default=100_000, help="messages queued at most before a consume point")
    p.add_argument("--max-ops", type=int, default=2_000_000, help="cap on operations per point")
    p.add_argument("--fsync-seconds", type=float, default=None, help="fsync probe duration (default min(1, seconds/4))")
    p.add_argument("--stages", default="db,mq", help="db, mq or db,mq (default)")
    p.add_argument("--mysql-port", type=int, default=3306)
    p.add_argument("--amqp-port", type=int, default=5672)
    p.add_argument("--rabbitmqctl", default="rabbitmqctl", help="rabbitmqctl executable")
    p.add_argument("--no-uvloop", action="store_true", help="use the stdlib asyncio loop")
    p.add_argument("--output", help="also write the JSON document to this file")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(0.5, args.seconds / 5)
    if args.fsync_seconds is None:
        args.fsync_seconds = min(1.0, args.seconds / 4)
    args.stages = {s.strip() for s in args.stages.split(",") if s.strip()}
    if not args.stages or not args.stages <= {"db", "mq"}:
        p.error("--stages takes db, mq or db,mq")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    token = uuidlib.uuid4().hex[:12]
    db = f"bench_{token}"
    vhost = f"bench_{token}"
    created: dict[str, bool] = {}
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    try:
        if args.no_uvloop:
            result = asyncio.run(run(args, db, vhost, created))
        else:
            import uvloop

            result = uvloop.run(run(args, db, vhost, created))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        error = KeyboardInterrupt()
    except Exception as exc:  # noqa: BLE001 - reported after cleanup
        error = exc
        log(f"failed: {exc!r}")
    finally:
        status = cleanup(args, db, vhost, created)

    if isinstance(error, KeyboardInterrupt):
        return 130
    if error is not None or result is None:
        return 1
    doc = result_document(args, result, started, time.perf_counter() - t0, status)
    for warning in doc["warnings"]:
        log(f"WARNING: {warning}")
    text = json.dumps(doc, indent=2, default=str)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    print(text, flush=True)
    return 0 if status.get("database_dropped", True) and status.get("vhost_deleted", True) else 1


def result_document(
    args: argparse.Namespace, result: dict[str, Any], started: dt.datetime, duration: float, status: dict[str, Any]
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "started_at": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "config": {
            "seconds_per_point": args.seconds,
            "warmup_s": args.warmup,
            "db_connections": args.db_connections,
            "db_batches": args.db_batches,
            "db_batch_connections": args.db_batch_connections,
            "ack_batches": args.ack_batches,
            "publish_windows": [1, *args.publish_windows],
            "prefetch": args.prefetch,
            "stages": sorted(args.stages),
        },
        "machine": result["machine"],
        **{k: result[k] for k in ("db_commit", "publish_confirm", "consume_ack") if k in result},
        "smallest_limit": summarize(result),
        "warnings": contention_warnings(result, result["machine"].get("cores")),
        "cleanup": status,
    }


if __name__ == "__main__":
    sys.exit(main())
