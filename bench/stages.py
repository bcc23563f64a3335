"""What a step's stages hold while it runs, sampled every half second from outside the roles
(bench/analysis.py turns the samples into per-stage lags and names the limiting stage):

- the outbox: rows and the oldest row's age (what the scanner has not published yet);
- the queue: messages ready (not yet delivered to the wallet) and its consumers, from a passive
  queue.declare on a connection of the sampler's own;
- requests pending (accepted, not finalized yet: everything after the API).

One MariaDB connection and one AMQP connection for the whole step; a failed sample is skipped.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import aiormq
import pymysql

from bench.deployment import AMQP_PORT, HOST, MYSQL_PORT, Deployment
from chancepay.core import sql, topology

INTERVAL_S = 0.5
NAMES = ("outbox_depth", "outbox_age_ms", "queue_ready", "queue_consumers", "pending")


class StageSampler(threading.Thread):
    def __init__(self, env: Deployment, max_attempts: int = 20) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.max_attempts = max_attempts
        self.stop_flag = threading.Event()
        self.samples: dict[str, list[float]] = {name: [] for name in NAMES}
        self.errors = 0

    def run(self) -> None:
        asyncio.run(self._run())

    def _db_sample(self, conn: Any) -> dict[str, float]:
        with conn.cursor() as cur:
            cur.execute(sql.OUTBOX_STATS, (self.max_attempts,))
            depth, age_us, _ = cur.fetchone()
            cur.execute(sql.PENDING_STATS)
            pending, _ = cur.fetchone()
        return {"outbox_depth": float(depth), "outbox_age_ms": float(age_us) / 1000.0, "pending": float(pending)}

    async def _queue_sample(self, channel: Any) -> dict[str, float]:
        ok = await channel.queue_declare(topology.QUEUE, passive=True)
        return {"queue_ready": float(ok.message_count), "queue_consumers": float(ok.consumer_count)}

    async def _run(self) -> None:
        conn = pymysql.connect(
            host=HOST,
            port=MYSQL_PORT,
            user=self.env.orch_user,
            password=self.env.orch_password,
            database=self.env.orch_db,
            autocommit=True,
        )
        amqp: Any = None
        channel: Any = None
        try:
            deadline = time.monotonic() + 3600
            while not self.stop_flag.is_set() and time.monotonic() < deadline:
                try:
                    if amqp is None or amqp.is_closed:
                        amqp = await aiormq.connect(f"amqp://guest:guest@{HOST}:{AMQP_PORT}/{self.env.vhost}")
                    if channel is None or channel.is_closed:
                        channel = await amqp.channel()
                    sample = {**self._db_sample(conn), **await self._queue_sample(channel)}
                    for name, value in sample.items():
                        self.samples[name].append(value)
                except Exception:  # noqa: BLE001 - a missed sample, counted
                    self.errors += 1
                await asyncio.sleep(INTERVAL_S)
        finally:
            conn.close()
            if amqp is not None:
                await amqp.close()

    def summary(self) -> dict[str, Any]:
        """Per sampled value its mean and max over the step, and the samples taken."""
        out: dict[str, Any] = {"samples": len(self.samples["pending"]), "errors": self.errors}
        for name, values in self.samples.items():
            out[name] = {
                "mean": round(sum(values) / len(values), 1) if values else 0.0,
                "max": round(max(values), 1) if values else 0.0,
            }
        return out

    def means(self) -> dict[str, float]:
        return {name: (sum(v) / len(v) if v else 0.0) for name, v in self.samples.items()}
