"""Real ChancePay processes against the real MariaDB and RabbitMQ, isolated per test.

Each `Env` owns two fresh databases with two least-privilege users and a fresh RabbitMQ
vhost (so the contract's fixed exchange and queue names never collide between tests or
between two runs of the suite), and removes them all afterwards. Each `Role` is a real
`python -m chancepay <role>` subprocess on a free port; its JSON log lines are collected.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pymysql
from prometheus_client.parser import text_string_to_metric_families

ADMIN_SOCKET = os.environ.get("CHANCEPAY_TEST_MYSQL_SOCKET", "/run/mysqld/mysqld.sock")
ROLES = ("orchestrator", "scanner", "wallet")
TOKEN = "test-internal-token-" + "x" * 16


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling through transient errors, report the last one
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last error: {last_exc!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def admin_connect(database: str | None = None) -> pymysql.connections.Connection:
    return pymysql.connect(unix_socket=ADMIN_SOCKET, user="root", database=database, autocommit=True)


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60).stdout


class Env:
    """Per-test databases, users and vhost."""

    def __init__(self, tmp: Path) -> None:
        self.id = secrets.token_hex(4)
        self.tmp = tmp
        self.orch_db = f"cpt_{self.id}_orch"
        self.wallet_db = f"cpt_{self.id}_wallet"
        self.orch_user, self.orch_password = f"cpt_{self.id}_o", secrets.token_hex(8)
        self.wallet_user, self.wallet_password = f"cpt_{self.id}_w", secrets.token_hex(8)
        self.vhost = f"cpt_{self.id}"
        self.ports = {role: free_port() for role in ROLES}

    # ------------------------------------------------------------------ URLs and environment
    def orch_url(self, host: str = "127.0.0.1", port: int = 3306) -> str:
        return f"mysql://{self.orch_user}:{self.orch_password}@{host}:{port}/{self.orch_db}"

    def wallet_url(self, host: str = "127.0.0.1", port: int = 3306) -> str:
        return f"mysql://{self.wallet_user}:{self.wallet_password}@{host}:{port}/{self.wallet_db}"

    def amqp_url(self, host: str = "127.0.0.1", port: int = 5672) -> str:
        return f"amqp://guest:guest@{host}:{port}/{quote(self.vhost, safe='')}"

    def base_url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.ports[role]}"

    def environ(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHANCEPAY_")}
        env.update(
            {
                "CHANCEPAY_ENV": "dev",
                "CHANCEPAY_ORCHESTRATOR_DB": self.orch_url(),
                "CHANCEPAY_WALLET_DB": self.wallet_url(),
                "CHANCEPAY_AMQP_URL": self.amqp_url(),
                "CHANCEPAY_ORCHESTRATOR_URL": self.base_url("orchestrator"),
                "CHANCEPAY_WALLET_URL": self.base_url("wallet"),
                "CHANCEPAY_INTERNAL_TOKEN": TOKEN,
                "CHANCEPAY_HOST": "127.0.0.1",
                "CHANCEPAY_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(overrides)
        return env

    # ------------------------------------------------------------------ lifecycle
    def create(self) -> None:
        rabbitmqctl("add_vhost", self.vhost)
        rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        result = self.chancepay(
            "migrate", CHANCEPAY_ADMIN_DB=f"mysql://root@localhost/?unix_socket={quote(ADMIN_SOCKET, safe='')}"
        )
        assert result.returncode == 0, f"migrate failed: {result.stdout}\n{result.stderr}"

    def destroy(self) -> None:
        with admin_connect() as conn, conn.cursor() as cur:
            for db in (self.orch_db, self.wallet_db):
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            for user in (self.orch_user, self.wallet_user):
                cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        try:
            rabbitmqctl("delete_vhost", self.vhost)
        except subprocess.CalledProcessError:
            pass

    def chancepay(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chancepay", *args],
            env=self.environ(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    # ------------------------------------------------------------------ data access (as the roles' own users)
    def orch_sql(self, sql: str, args: Any = None) -> list[tuple]:
        with pymysql.connect(host="127.0.0.1", user=self.orch_user, password=self.orch_password,
                             database=self.orch_db, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def wallet_sql(self, sql: str, args: Any = None) -> list[tuple]:
        with pymysql.connect(host="127.0.0.1", user=self.wallet_user, password=self.wallet_password,
                             database=self.wallet_db, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def amqp(self, fn: Callable[[Any], Any]) -> Any:
        """Run `await fn(channel)` on a fresh AMQP channel in this env's vhost."""
        import aiormq

        async def go() -> Any:
            connection = await aiormq.connect(self.amqp_url())
            try:
                channel = await connection.channel()
                return await fn(channel)
            finally:
                await connection.close()

        return asyncio.run(go())

    def queue_depth(self, queue: str) -> int:
        async def depth(channel: Any) -> int:
            return (await channel.queue_declare(queue, passive=True)).message_count

        return self.amqp(depth)


class Role:
    """One real `chancepay <role>` process."""

    def __init__(self, name: str, env: Env, environ: dict[str, str], port: int) -> None:
        self.name = name
        self.env = env
        self.environ = {**environ, "CHANCEPAY_PORT": str(port)}
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self.log_path = env.tmp / f"{name}.log"

    def start(self) -> Role:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} already running"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chancepay", self.name],
            env=self.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with open(self.log_path, "ab") as f:
            for raw in proc.stdout:
                f.write(raw)
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._lock:
                    self.raw.append(line)
                    try:
                        self.lines.append(json.loads(line))
                    except ValueError:
                        pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 30) -> Role:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n" + "\n".join(self.raw[-30:]))
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200

        wait_until(ready, timeout, what=f"{self.name} /readyz")
        return self

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait: the graceful path."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout}s of SIGTERM")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    # ------------------------------------------------------------------ logs and metrics
    def events(self, contains: str) -> list[dict[str, Any]]:
        with self._lock:
            return [line for line in self.lines if contains in str(line.get("event", ""))]

    def wait_for_event(self, contains: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for line in self.events(contains):
                if all(line.get(k) == v for k, v in fields.items()):
                    return line
            return None

        return wait_until(found, timeout, what=f"{self.name} log {contains!r} {fields}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = httpx.get(self.url + "/metrics", timeout=5).text
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics()[(name, tuple(sorted(labels.items())))]


class Stack:
    """The three roles of one Env. Roles are started explicitly so tests can leave one out."""

    def __init__(self, env: Env, **overrides: str) -> None:
        self.env = env
        self.overrides = overrides
        self.roles: dict[str, Role] = {}

    def role(self, name: str, **overrides: str) -> Role:
        environ = self.env.environ(**{**self.overrides, **overrides})
        role = Role(name, self.env, environ, self.env.ports[name])
        self.roles[name] = role
        return role

    def start(self, *names: str, **overrides: str) -> Stack:
        for name in names or ROLES:
            self.role(name, **overrides).start()
        for name in names or ROLES:
            self.roles[name].wait_ready()
        return self

    @property
    def orchestrator(self) -> Role:
        return self.roles["orchestrator"]

    @property
    def scanner(self) -> Role:
        return self.roles["scanner"]

    @property
    def wallet(self) -> Role:
        return self.roles["wallet"]

    def all_lines(self) -> Iterator[dict[str, Any]]:
        for role in self.roles.values():
            yield from role.lines

    def stop_all(self) -> None:
        for role in self.roles.values():
            try:
                role.stop(timeout=30)
            except AssertionError:
                pass
            role.kill()

    # ------------------------------------------------------------------ API helpers
    def pay(self, cus_id: str = "alice", amount: str = "12.50", **headers: str) -> httpx.Response:
        return httpx.post(
            self.orchestrator.url + "/payments",
            json={"cusId": cus_id, "amount": amount},
            headers=headers,
            timeout=10,
        )

    def status(self, uuid: str) -> str:
        return httpx.get(f"{self.orchestrator.url}/payments/{uuid}", timeout=10).json()["status"]

    def wait_final(self, uuids: list[str], timeout: float = 60) -> None:
        def all_final() -> bool:
            placeholders = ",".join(["%s"] * len(uuids))
            rows = self.env.orch_sql(f"SELECT COUNT(*) FROM request WHERE succeed IS NULL AND uuid IN ({placeholders})", uuids)
            return rows[0][0] == 0

        wait_until(all_final, timeout, interval=0.2, what=f"{len(uuids)} payments to finalize")

    def assert_invariants(self) -> None:
        """The contract's invariants 2, 4 and 6 over everything in this env, after convergence."""
        requests = dict(self.env.orch_sql("SELECT uuid, succeed FROM request"))
        inbox = dict(self.env.wallet_sql("SELECT uuid, succeed FROM inbox"))
        orphans = set(inbox) - set(requests)
        assert not orphans, f"inbox rows without a request: {sorted(orphans)[:5]}"
        mismatched = [u for u, s in requests.items() if s is not None and inbox.get(u) != s]
        assert not mismatched, f"request differs from inbox: {mismatched[:5]}"
