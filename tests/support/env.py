"""The environment of one test: its own databases, least-privilege users and RabbitMQ vhost on
the servers of this run (tests/support/servers.py), and the helpers that read and change them.

Each `Env` owns two fresh databases with two least-privilege users and a RabbitMQ vhost of its
own (so the contract's fixed exchange and queue names never collide between tests or between two
runs of the suite), and removes them all afterwards. Vhosts are pooled: creating one costs two
`rabbitmqctl` runs (~1.5 s), emptying one over AMQP a few milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pymysql

from chancepay.core import topology
from tests.support import servers as servers_mod
from tests.support.servers import Servers

ROLES = ("orchestrator", "scanner", "wallet")
TOKEN = "test-internal-token-" + "x" * 16
MESSAGE_KEY = "test-message-key-" + "k" * 32


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
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or predicate}; last error: {last_exc!r}"
            )
        time.sleep(interval)


free_port = servers_mod.free_port  # one registry of handed-out ports per process


def admin_connect(database: str | None = None) -> pymysql.connections.Connection:
    return servers_mod.current().admin_connect(database)


def rabbitmqctl(*args: str) -> str:
    return servers_mod.current().rabbitmqctl(*args)


class VhostPool:
    """RabbitMQ vhosts for tests, reused: a released vhost is emptied over AMQP (the contract's
    queues and exchange deleted) and handed to the next test. `close()` deletes them all."""

    def __init__(self) -> None:
        self.free: list[str] = []
        self.all: list[str] = []
        self.lock = threading.Lock()

    def acquire(self, servers: Servers) -> str:
        with self.lock:
            if self.free:
                return self.free.pop()
        vhost = f"cpt_{os.getpid()}_{secrets.token_hex(3)}"
        servers.rabbitmqctl("add_vhost", vhost)
        servers.rabbitmqctl("set_permissions", "-p", vhost, servers.amqp_user, ".*", ".*", ".*")
        # What the chart's definitions give "/" (core/topology.py): at-least-once dead-lettering.
        servers.rabbitmqctl(*topology.set_policy_args(vhost))
        with self.lock:
            self.all.append(vhost)
        return vhost

    def release(self, servers: Servers, vhost: str) -> None:
        async def empty(channel: Any) -> None:
            for queue in (topology.QUEUE, topology.DLQ):
                await channel.queue_delete(queue)
            await channel.exchange_delete(topology.EXCHANGE)

        try:
            amqp_call(servers, vhost, empty)
        except Exception:  # the broker is restarting or gone: do not reuse this one
            return
        with self.lock:
            self.free.append(vhost)

    def close(self, servers: Servers) -> None:
        with self.lock:
            vhosts, self.all, self.free = list(self.all), [], []
        for vhost in vhosts:

            def gone(vhost: str = vhost) -> bool:
                try:
                    servers.rabbitmqctl("delete_vhost", vhost)
                    return True
                except subprocess.CalledProcessError:  # already gone, or the broker is restarting
                    return vhost not in servers.rabbitmqctl("list_vhosts").split()

            # Retried: a broker restarted by a test must not leak a vhost.
            wait_until(gone, 60, interval=1.0, what=f"vhost {vhost} deleted")


VHOSTS = VhostPool()


def amqp_call(servers: Servers, vhost: str, fn: Callable[[Any], Any]) -> Any:
    """Run `await fn(channel)` on a fresh AMQP channel in `vhost`, as the pair's broker user."""
    import aiormq

    async def go() -> Any:
        url = (
            f"amqp://{quote(servers.amqp_user, safe='')}:{quote(servers.amqp_password, safe='')}"
            f"@127.0.0.1:{servers.amqp_port}/{quote(vhost, safe='')}"
        )
        connection = await aiormq.connect(url)
        try:
            channel = await connection.channel()
            return await fn(channel)
        finally:
            await connection.close()

    return asyncio.run(go())


class Env:
    """Per-test databases, users and vhost, on the pair of servers this run uses."""

    def __init__(self, tmp: Path) -> None:
        self.servers = servers_mod.current()
        self.id = f"{os.getpid()}_{secrets.token_hex(3)}"  # the pid lets cleanup.py find leftovers
        self.tmp = tmp
        self.orch_db = f"cpt_{self.id}_orch"
        self.wallet_db = f"cpt_{self.id}_wallet"
        self.orch_user, self.orch_password = f"cpt_{self.id}_o", secrets.token_hex(8)
        self.wallet_user, self.wallet_password = f"cpt_{self.id}_w", secrets.token_hex(8)
        self.vhost = ""
        self.ports = {role: free_port() for role in ROLES}

    # ------------------------------------------------------------------ URLs and environment
    @property
    def mysql_port(self) -> int:
        return self.servers.mysql_port

    @property
    def amqp_port(self) -> int:
        return self.servers.amqp_port

    def orch_url(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        return f"mysql://{self.orch_user}:{self.orch_password}@{host}:{port or self.mysql_port}/{self.orch_db}"

    def wallet_url(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        return f"mysql://{self.wallet_user}:{self.wallet_password}@{host}:{port or self.mysql_port}/{self.wallet_db}"

    def amqp_url(self, host: str = "127.0.0.1", port: int | None = None) -> str:
        s = self.servers
        return (
            f"amqp://{quote(s.amqp_user, safe='')}:{quote(s.amqp_password, safe='')}@{host}:{port or self.amqp_port}"
            f"/{quote(self.vhost, safe='')}"
        )

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
                "CHANCEPAY_SCANNER_URL": self.base_url("scanner"),
                "CHANCEPAY_INTERNAL_TOKEN": TOKEN,
                "CHANCEPAY_MESSAGE_KEY": MESSAGE_KEY,
                "CHANCEPAY_HOST": "127.0.0.1",
                "CHANCEPAY_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(overrides)
        return env

    # ------------------------------------------------------------------ lifecycle
    def create(self, *, migrate: bool = True) -> None:
        """A vhost; with `migrate`, also both databases, users and schemas (`chancepay migrate`
        with the pair's admin URL). Without it the databases are left to the test."""
        self.vhost = VHOSTS.acquire(self.servers)
        if migrate:
            self.migrate()

    def migrate(self, **env: str) -> subprocess.CompletedProcess[str]:
        result = self.chancepay("migrate", CHANCEPAY_ADMIN_DB=self.servers.admin_url, **env)
        assert result.returncode == 0, f"migrate failed: {result.stdout}\n{result.stderr}"
        return result

    def destroy(self) -> None:
        with admin_connect() as conn, conn.cursor() as cur:
            for db in (self.orch_db, self.wallet_db):
                cur.execute(f"DROP DATABASE IF EXISTS `{db}`")
            for user in (self.orch_user, self.wallet_user):
                cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
        if self.vhost:
            VHOSTS.release(self.servers, self.vhost)

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
        with (
            pymysql.connect(
                host="127.0.0.1",
                port=self.mysql_port,
                user=self.orch_user,
                password=self.orch_password,
                database=self.orch_db,
                autocommit=True,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(sql, args)
            return list(cur.fetchall())

    def wallet_sql(self, sql: str, args: Any = None) -> list[tuple]:
        with (
            pymysql.connect(
                host="127.0.0.1",
                port=self.mysql_port,
                user=self.wallet_user,
                password=self.wallet_password,
                database=self.wallet_db,
                autocommit=True,
            ) as conn,
            conn.cursor() as cur,
        ):
            cur.execute(sql, args)
            return list(cur.fetchall())

    def amqp(self, fn: Callable[[Any], Any]) -> Any:
        """Run `await fn(channel)` on a fresh AMQP channel in this env's vhost."""
        return amqp_call(self.servers, self.vhost, fn)

    def queue_depth(self, queue: str) -> int:
        async def depth(channel: Any) -> int:
            return (await channel.queue_declare(queue, passive=True)).message_count

        return self.amqp(depth)


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """A TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def env_count(env: Env, sql: str, args: Any = None, *, wallet: bool = False) -> int:
    rows = (env.wallet_sql if wallet else env.orch_sql)(sql, args)
    return int(rows[0][0])


def dead_lettered(env: Env) -> int:
    """Dead letters wherever they are: still in the DLQ queue, or already moved by the wallet into
    its `dead_letter` table (core/deadletters.py)."""
    return env.queue_depth(topology.DLQ) + env_count(env, "SELECT COUNT(*) FROM dead_letter", wallet=True)


def outbox_depth(env: Env) -> int:
    return env_count(env, "SELECT COUNT(*) FROM outbox")


def pending_count(env: Env) -> int:
    return env_count(env, "SELECT COUNT(*) FROM request WHERE succeed IS NULL")


def delete_queue(env: Env, queue: str) -> None:
    async def go(channel: Any) -> None:
        await channel.queue_delete(queue)

    env.amqp(go)


def purge_queue(env: Env, queue: str) -> int:
    async def go(channel: Any) -> int:
        return (await channel.queue_purge(queue)).message_count

    return env.amqp(go)


def run_audit(env: Env, **overrides: str) -> tuple[int, dict[str, Any]]:
    """`chancepay audit` against this env: (exit code, its JSON report)."""
    result = env.chancepay("audit", timeout=120, **overrides)
    lines = [line for line in result.stdout.strip().splitlines() if line.startswith("{")]
    assert lines, f"audit printed no JSON: {result.stdout}\n{result.stderr[-2000:]}"
    return result.returncode, json.loads(lines[-1])


def run_reconcile(env: Env, age: float = 0, **overrides: str) -> tuple[int, dict[str, Any]]:
    """One `chancepay reconcile --age AGE` pass: (exit code, its last JSON log line)."""
    result = env.chancepay("reconcile", "--age", str(age), timeout=120, **overrides)
    lines = []
    for raw in result.stdout.strip().splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            pass
    assert lines, f"reconcile logged nothing: {result.stdout}\n{result.stderr[-2000:]}"
    return result.returncode, lines[-1]


# The last commit before versioned migrations and batched result callbacks (its migrate made
# tables with CREATE TABLE IF NOT EXISTS only; its orchestrator serves single-result callbacks only).
PREVIOUS_RELEASE = "6989ec1a8842bee013a31acb0ed3c8f071fdd4e0"


def previous_release(tmp_path: Path) -> str:
    """The package as the previous release shipped it (from git), for a role's PYTHONPATH: what
    is running when the new code arrives during a rolling update."""
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "previous-release"
    if not out.exists():
        out.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", PREVIOUS_RELEASE, "services/chancepay"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True, timeout=60)
    return str(out / "services")
