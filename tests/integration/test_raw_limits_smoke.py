"""Smoke test of ``python -m bench.raw_limits``: tiny durations, checks the shape of the JSON
and that the scratch database and vhost are gone afterwards. Never asserts on timings."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import one_pass

REPO = Path(__file__).resolve().parents[2]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.timeout(240),
    # A smoke test of the bench tool, which measures the machine's own servers (bench/README.md);
    # it does not depend on which pair the rest of the run tests.
    one_pass("debian12", "bench.raw_limits measures Debian 12's servers; run once, in the debian12 pass"),
    pytest.mark.skipif(not _port_open(3306), reason="MariaDB not listening on 127.0.0.1:3306"),
    pytest.mark.skipif(not _port_open(5672), reason="RabbitMQ not listening on 127.0.0.1:5672"),
    pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="rabbitmqctl not on PATH"),
]


def _databases() -> set[str]:
    import asyncmy

    async def query() -> set[str]:
        conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="")
        try:
            async with conn.cursor() as cur:
                await cur.execute("SHOW DATABASES")
                return {row[0] for row in await cur.fetchall()}
        finally:
            conn.close()

    return asyncio.run(query())


def _vhosts() -> set[str]:
    out = subprocess.run(
        ["rabbitmqctl", "list_vhosts", "-q", "name"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    return set(out.split())


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_raw_limits_smoke() -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(REPO / "services"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.raw_limits",
            "--seconds",
            "0.5",
            "--warmup",
            "0.1",
            "--db-connections",
            "1,4",
            "--publish-windows",
            "8",
            "--prefetch",
            "8",
            "--db-batches",
            "1,4",
            "--db-batch-connections",
            "2",
            "--ack-batches",
            "4",
            "--prefill-min",
            "200",
            "--prefill-max",
            "5000",
            "--fsync-seconds",
            "0.1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout)  # exactly one JSON document on stdout

    for key in (
        "schema",
        "config",
        "machine",
        "db_commit",
        "publish_confirm",
        "consume_ack",
        "smallest_limit",
        "warnings",
        "cleanup",
    ):
        assert key in doc, key

    machine = doc["machine"]
    assert _positive(machine["cores"])
    assert _positive(machine["memory_bytes"])
    assert machine["python"] and machine["kernel"]
    assert machine["mariadb"]["version"]
    for key in ("innodb_flush_log_at_trx_commit", "sync_binlog", "log_bin"):
        assert key in machine["mariadb"], key
    assert machine["rabbitmq"]["version"]
    assert machine["rabbitmq"]["queue_type"] == "quorum"

    db_points = doc["db_commit"]["points"]
    assert [p["connections"] for p in db_points] == [1, 4]
    for p in db_points:
        assert _positive(p["commits_per_s"]), p
        assert p["txn_latency_ms"]["p50"] is not None and p["txn_latency_ms"]["p99"] is not None

    pub_points = doc["publish_confirm"]["points"]
    assert [(p["mode"], p["window"]) for p in pub_points] == [("one_at_a_time", 1), ("pipelined", 8)]
    for p in pub_points:
        assert _positive(p["publishes_per_s"]), p
        assert p["errors"] == 0, p
    assert _positive(doc["publish_confirm"]["payload_bytes"])

    con_points = doc["consume_ack"]["points"]
    assert [p["prefetch"] for p in con_points] == [8]
    for p in con_points:
        assert _positive(p["acks_per_s"]), p

    for stage in ("db_commit", "publish_confirm", "consume_ack"):
        assert _positive(doc[stage]["best"]["rate_per_s"]), stage

    smallest = doc["smallest_limit"]
    assert smallest["stage"] in ("db_commit", "publish_confirm", "consume_ack")
    assert smallest["rate_per_s"] == min(smallest["best_rates_per_s"].values())
    assert _positive(smallest["rate_per_s"])

    # the batched forms: group commit at 1 and 4 payments per transaction, multiple-ack every 4
    assert [p["batch"] for p in doc["db_commit"]["batched"]["points"]] == [1, 4]
    assert all(_positive(p["payments_per_s"]) for p in doc["db_commit"]["batched"]["points"])
    assert [p["ack_every"] for p in doc["consume_ack"]["batched"]["points"]] == [4]
    batched = smallest["batched"]
    assert batched["rate_per_s"] == min(batched["best_rates_per_s"].values())
    assert all(batched["best_rates_per_s"][k] >= v for k, v in smallest["best_rates_per_s"].items())
    assert _positive(batched["all_stages_sharing_machine_per_s"])

    cleanup = doc["cleanup"]
    assert cleanup["database_dropped"] is True and cleanup["vhost_deleted"] is True
    assert cleanup["database"].startswith("bench_") and cleanup["vhost"].startswith("bench_")
    assert cleanup["database"] not in _databases()
    assert cleanup["vhost"] not in _vhosts()
