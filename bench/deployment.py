"""The benchmark's own deployment: the three roles as real processes on this machine's MariaDB and
RabbitMQ, set up the way an operator would (independent of tests/).

One `Deployment` is a fresh vhost (`rabbitmqctl`), two databases and two least-privilege users
(`chancepay migrate` with CHANCEPAY_ADMIN_DB: the product provisions them itself), and any number
of `Process`es (`python -m chancepay <role>`, logs to files, no parsing in this process: the
benchmark must not measure its own harness). Everything is removed at the end; names carry the
pid (cpb_<pid>_...) so a run that was killed can be told apart and swept.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pymysql
from prometheus_client.parser import text_string_to_metric_families

from bench import sql

HOST = "127.0.0.1"
MYSQL_PORT = int(os.environ.get("CHANCEPAY_BENCH_MYSQL_PORT", "3306"))
AMQP_PORT = int(os.environ.get("CHANCEPAY_BENCH_AMQP_PORT", "5672"))
ADMIN_URL = f"mysql://root@{HOST}:{MYSQL_PORT}/"
TOKEN = "bench-internal-token-" + "x" * 16
MESSAGE_KEY = "bench-message-key-" + "k" * 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Process:
    """One `chancepay <role>` process."""

    def __init__(self, deployment: Deployment, role: str, name: str, port: int, **overrides: str) -> None:
        self.role, self.name, self.port = role, name, port
        self.url = f"http://{HOST}:{port}"
        self.environ = deployment.environ(CHANCEPAY_PORT=str(port), **overrides)
        self.log_path = deployment.tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chancepay", self.role], env=self.environ, stdout=log, stderr=subprocess.STDOUT
            )
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60) -> Process:
        def ready() -> bool:
            if not self.running:
                raise RuntimeError(f"{self.name} exited; see {self.log_path}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, f"{self.name} ready")
        return self

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total

    def stop(self, timeout: float = 30) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Deployment:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.id = f"{os.getpid()}_{secrets.token_hex(3)}"
        self.orch_db, self.wallet_db = f"cpb_{self.id}_orch", f"cpb_{self.id}_wallet"
        self.orch_user, self.wallet_user = f"cpb_{self.id}_o", f"cpb_{self.id}_w"
        self.orch_password, self.wallet_password = secrets.token_hex(8), secrets.token_hex(8)
        self.vhost = f"cpb_{self.id}"
        self.orchestrator_port = free_port()
        self.wallet_port = free_port()
        self.scanner_port = free_port()
        self.processes: dict[str, Process] = {}
        self.created = False

    def orch_url(self) -> str:
        return f"mysql://{self.orch_user}:{self.orch_password}@{HOST}:{MYSQL_PORT}/{self.orch_db}"

    def wallet_url(self) -> str:
        return f"mysql://{self.wallet_user}:{self.wallet_password}@{HOST}:{MYSQL_PORT}/{self.wallet_db}"

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHANCEPAY_")}
        env.update(
            {
                "CHANCEPAY_ENV": "dev",
                "CHANCEPAY_ORCHESTRATOR_DB": self.orch_url(),
                "CHANCEPAY_WALLET_DB": self.wallet_url(),
                "CHANCEPAY_AMQP_URL": f"amqp://guest:guest@{HOST}:{AMQP_PORT}/{self.vhost}",
                "CHANCEPAY_ORCHESTRATOR_URL": f"http://{HOST}:{self.orchestrator_port}",
                "CHANCEPAY_WALLET_URL": f"http://{HOST}:{self.wallet_port}",
                "CHANCEPAY_SCANNER_URL": f"http://{HOST}:{self.scanner_port}",
                "CHANCEPAY_INTERNAL_TOKEN": TOKEN,
                "CHANCEPAY_MESSAGE_KEY": MESSAGE_KEY,
                "CHANCEPAY_HOST": HOST,
                "CHANCEPAY_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(overrides)
        return env

    # ------------------------------------------------------------------ lifecycle
    def create(self) -> Deployment:
        self.created = True
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.vhost], check=True, capture_output=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        migrate = subprocess.run(
            [sys.executable, "-m", "chancepay", "migrate"],
            env=self.environ(CHANCEPAY_ADMIN_DB=ADMIN_URL),
            capture_output=True,
            text=True,
            timeout=300,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"chancepay migrate failed: {migrate.stdout[-2000:]}{migrate.stderr[-2000:]}")
        return self

    def add(self, role: str, name: str | None = None, port: int | None = None, **overrides: str) -> Process:
        """A process of `role` (not started). The first orchestrator and wallet take the ports the
        others are pointed at."""
        name = name or role
        if port is None:
            port = {
                "orchestrator": self.orchestrator_port,
                "wallet": self.wallet_port,
                "scanner": self.scanner_port,
            }.get(role, 0) or free_port()
            if any(p.port == port for p in self.processes.values()):
                port = free_port()
        process = Process(self, role, name, port, **overrides)
        self.processes[name] = process
        return process

    def start_all(self) -> Deployment:
        for p in self.processes.values():
            p.start()
        for p in self.processes.values():
            p.wait_ready()
        return self

    def orch_sql(self, statement: str, args: Any = None) -> list[tuple[Any, ...]]:
        with (
            pymysql.connect(
                host=HOST,
                port=MYSQL_PORT,
                user=self.orch_user,
                password=self.orch_password,
                database=self.orch_db,
                autocommit=True,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(statement, args)
            return list(cur.fetchall())

    def prefill_history(self, rows: int, chunk: int = 250_000) -> dict[str, Any]:
        """`rows` finalized payments (request and inbox rows with UUIDv7 keys older than any new
        payment's), inserted by the server itself in chunks of `chunk` rows per transaction.
        Returns the seconds it took and the tables' sizes afterwards."""
        began = time.monotonic()
        first_ms = int(time.time() * 1000) - rows - 60_000  # one payment per millisecond, ending a minute ago
        for db in (self.orch_db, self.wallet_db):
            statement = sql.PREFILL_REQUESTS if db == self.orch_db else sql.PREFILL_INBOX
            with (
                pymysql.connect(
                    host=HOST, port=MYSQL_PORT, user="root", password="", database=db, autocommit=True
                ) as conn,
                conn.cursor() as cur,
            ):
                for first in range(1, rows + 1, chunk):
                    last = min(rows, first + chunk - 1)
                    cur.execute(statement.format(first=int(first), last=int(last)), (first_ms, first_ms))
        seconds = time.monotonic() - began
        sizes: dict[str, int] = {}
        for db in (self.orch_db, self.wallet_db):
            with (
                pymysql.connect(
                    host=HOST, port=MYSQL_PORT, user="root", password="", database=db, autocommit=True
                ) as conn,
                conn.cursor() as cur,
            ):
                cur.execute(sql.ANALYZE_TABLE.format(table="request" if db == self.orch_db else "inbox"))
                cur.fetchall()
                cur.execute(sql.TABLE_BYTES)
                sizes.update({name: int(size) for name, size in cur.fetchall()})
        return {"rows": rows, "prefill_seconds": round(seconds, 1), "table_bytes": sizes}

    def destroy(self) -> None:
        for p in self.processes.values():
            p.stop()
        if not self.created:
            return
        with (
            pymysql.connect(host=HOST, port=MYSQL_PORT, user="root", password="", autocommit=True) as conn,
            conn.cursor() as cur,
        ):
            for db in (self.orch_db, self.wallet_db):
                cur.execute(sql.DROP_DATABASE.format(db=db))
            for user in (self.orch_user, self.wallet_user):
                cur.execute(sql.DROP_USER, (user,))
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], capture_output=True, timeout=60)
