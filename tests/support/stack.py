"""Real ChancePay processes against the real MariaDB and RabbitMQ, isolated per test.

Each `Env` owns two fresh databases with two least-privilege users and a RabbitMQ vhost of
its own (so the contract's fixed exchange and queue names never collide between tests or
between two runs of the suite), and removes them all afterwards. Which servers: the pair
tests/support/servers.py selects (Debian 12's, or the chart's). Vhosts are pooled: creating
one costs two `rabbitmqctl` runs (~1.5 s), emptying one over AMQP a few milliseconds. Each
`Role` is a real `python -m chancepay <role>` subprocess on a free port; its JSON log lines
are collected.
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
from pamqp import commands as spec
from prometheus_client.parser import text_string_to_metric_families

from chancepay.core import signing, topology

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
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last error: {last_exc!r}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        url = f"amqp://{quote(servers.amqp_user, safe='')}:{quote(servers.amqp_password, safe='')}" \
              f"@127.0.0.1:{servers.amqp_port}/{quote(vhost, safe='')}"
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
        return (f"amqp://{quote(s.amqp_user, safe='')}:{quote(s.amqp_password, safe='')}@{host}:{port or self.amqp_port}"
                f"/{quote(self.vhost, safe='')}")

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
        with pymysql.connect(host="127.0.0.1", port=self.mysql_port, user=self.orch_user, password=self.orch_password,
                             database=self.orch_db, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def wallet_sql(self, sql: str, args: Any = None) -> list[tuple]:
        with pymysql.connect(host="127.0.0.1", port=self.mysql_port, user=self.wallet_user,
                             password=self.wallet_password, database=self.wallet_db, autocommit=True) as conn, \
                conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def amqp(self, fn: Callable[[Any], Any]) -> Any:
        """Run `await fn(channel)` on a fresh AMQP channel in this env's vhost."""
        return amqp_call(self.servers, self.vhost, fn)

    def queue_depth(self, queue: str) -> int:
        async def depth(channel: Any) -> int:
            return (await channel.queue_declare(queue, passive=True)).message_count

        return self.amqp(depth)


class Role:
    """One real `chancepay <role>` process."""

    def __init__(self, name: str, env: Env, environ: dict[str, str], port: int, *, parse_logs: bool = True) -> None:
        self.name = name
        # parse_logs=False sends stdout straight to the log file: no reader thread parsing every
        # line in this process (the benchmark must not measure its own harness).
        self.parse_logs = parse_logs
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
        if not self.parse_logs:
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "chancepay", self.name], env=self.environ, stdout=log, stderr=log
                )
            return self
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

    def __init__(self, env: Env, *, parse_logs: bool = True, **overrides: str) -> None:
        self.env = env
        self.parse_logs = parse_logs
        self.overrides = overrides
        self.roles: dict[str, Role] = {}

    def role(self, name: str, **overrides: str) -> Role:
        environ = self.env.environ(**{**self.overrides, **overrides})
        role = Role(name, self.env, environ, self.env.ports[name], parse_logs=self.parse_logs)
        self.roles[name] = role
        return role

    def start(self, *names: str, **overrides: str) -> Stack:
        for name in names or ROLES:
            self.role(name, **overrides).start()
        for name in names or ROLES:
            self.roles[name].wait_ready()
        return self

    def start_all_unready(self) -> Stack:
        """Start the three roles and wait only until each is alive (/healthz), not ready."""
        for name in ROLES:
            self.role(name).start()
        for name in ROLES:
            role = self.roles[name]
            wait_until(lambda role=role: httpx.get(role.url + "/healthz", timeout=2).status_code == 200, 30,
                       what=f"{name} /healthz")
        return self

    def start_wallet_with(self, **wallet_overrides: str) -> Stack:
        """Start the three roles, the wallet with extra settings of its own (typically a
        CHANCEPAY_ORCHESTRATOR_URL pointing at a fault), and wait until all are ready."""
        self.role("orchestrator").start()
        self.role("scanner").start()
        self.role("wallet", **wallet_overrides).start()
        for role in self.roles.values():
            role.wait_ready()
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

    def pay_many(self, count: int, prefix: str = "c") -> list[str]:
        """`count` payments (cusId prefix-0, prefix-1, ...), each asserted 202; their uuids."""
        uuids = []
        for i in range(count):
            r = self.pay(cus_id=f"{prefix}-{i}")
            assert r.status_code == 202, r.text
            uuids.append(r.json()["uuid"])
        return uuids

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


def publish_raw(stack: Stack, body: bytes, message_id: str = "raw", key: str | None = MESSAGE_KEY) -> None:
    """Publish `body` as the scanner would (signed with `key`; None = unsigned)."""
    headers = {signing.HEADER: signing.sign(body, key)} if key else {}

    async def publish(channel):
        await channel.confirm_delivery()
        await topology.declare(channel)
        return await channel.basic_publish(
            body,
            exchange=topology.EXCHANGE,
            routing_key=topology.ROUTING_KEY,
            properties=spec.Basic.Properties(delivery_mode=2, message_id=message_id, content_type="application/json",
                                             headers=headers),
            mandatory=True,
        )

    assert isinstance(stack.env.amqp(publish), spec.Basic.Ack)


# =========================================================================== fault-test helpers
# Added for tests/faults and tests/soak (issue 3). Nothing above this line changes behaviour.

import contextlib as _contextlib
import random as _random
from http.server import BaseHTTPRequestHandler as _BaseHandler
from http.server import ThreadingHTTPServer as _ThreadingHTTPServer


def port_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """A TCP connect to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def restart_role(stack: Stack, name: str, **overrides: str) -> Role:
    """Replace a role that is no longer running by a fresh process (with other overrides, e.g.
    without a crash point) on the same port, and wait until it is ready."""
    old = stack.roles.get(name)
    assert old is None or not old.running, f"{name} still running"
    return stack.role(name, **overrides).start().wait_ready()


def wait_exit_code(role: Role, timeout: float = 30) -> int:
    """Wait for a role to exit on its own (a crash point, a fatal error) and return its code."""
    assert role.proc is not None
    return role.proc.wait(timeout=timeout)


def env_count(env: Env, sql: str, args: Any = None, *, wallet: bool = False) -> int:
    rows = (env.wallet_sql if wallet else env.orch_sql)(sql, args)
    return int(rows[0][0])


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


def assert_converged(stack: Stack, accepted: list[str] | None = None, timeout: float = 90) -> dict[str, Any]:
    """After the faults stopped: wait until the outbox is empty and no request is pending, then check
    the contract's invariants (1, 2, 4, 5, 6 on the tables; `chancepay audit` must exit 0)."""
    env = stack.env
    wait_until(lambda: outbox_depth(env) == 0 and pending_count(env) == 0, timeout, interval=0.25,
               what=f"convergence (outbox={_safe(outbox_depth, env)}, pending={_safe(pending_count, env)})")
    requests = dict(env.orch_sql("SELECT uuid, succeed FROM request"))
    if accepted is not None:
        lost = [u for u in accepted if u not in requests]
        assert not lost, f"invariant 1: accepted payments without a request row: {lost[:5]}"
    inbox = dict(env.wallet_sql("SELECT uuid, succeed FROM inbox"))
    not_deducted = [u for u in requests if u not in inbox]
    assert not not_deducted, f"final requests the wallet never decided: {not_deducted[:5]}"
    assert all(inbox[u] == requests[u] for u in requests), "invariant 4: request != inbox"
    stack.assert_invariants()
    code, report = run_audit(env)
    assert code == 0 and report["ok"], f"chancepay audit: {report}"
    return report


def _safe(fn: Callable[[Env], Any], env: Env) -> Any:
    try:
        return fn(env)
    except Exception as exc:  # only for messages
        return repr(exc)


class Supervisor:
    """Restart roles that exit, with capped exponential back-off, like Kubernetes would.

    `with Supervisor(stack, "scanner", "wallet") as sup:`; `sup.exits[name]` lists the exit codes
    seen. Roles are restarted on the same Role object (same environment and port, log lines
    accumulate).
    """

    def __init__(self, stack: Stack, *names: str, base: float = 0.5, cap: float = 4.0) -> None:
        self.stack = stack
        self.names = names
        self.base = base
        self.cap = cap
        self.exits: dict[str, list[int]] = {n: [] for n in names}
        self.restarts: dict[str, int] = {n: 0 for n in names}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="supervisor")

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        streak = {n: 0 for n in self.names}
        due: dict[str, float] = {}
        started = {n: time.monotonic() for n in self.names}
        while not self._stop.is_set():
            now = time.monotonic()
            for name in self.names:
                role = self.stack.roles.get(name)
                if role is None or role.proc is None or role.running:
                    continue
                if name not in due:
                    self.exits[name].append(role.proc.returncode)
                    if now - started[name] > 20:
                        streak[name] = 0
                    due[name] = now + min(self.cap, self.base * 2 ** streak[name])
                    streak[name] += 1
                elif now >= due[name]:
                    del due[name]
                    role.start()
                    started[name] = now
                    self.restarts[name] += 1
            self._stop.wait(0.1)


class Payer:
    """Posts payments from a background thread at about `rate` per second (each in its own thread,
    so a stalled API shows as latency, not as fewer requests). Records every outcome."""

    def __init__(self, stack: Stack, rate: float = 5.0, timeout: float = 30.0, prefix: str = "pay",
                 url: str | None = None) -> None:
        self.stack = stack
        self.url = url  # another orchestrator than the stack's own
        self.rate = rate
        self.timeout = timeout
        self.prefix = prefix
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._main = threading.Thread(target=self._loop, daemon=True, name="payer")

    def __enter__(self) -> Payer:
        self._main.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._main.is_alive():
            self._main.join(timeout=10)
        for t in list(self._threads):
            t.join(timeout=self.timeout + 5)

    def _one(self, i: int) -> None:
        started = time.monotonic()
        outcome: dict[str, Any] = {"i": i, "started": started}
        try:
            r = httpx.post(
                (self.url or self.stack.orchestrator.url) + "/payments",
                json={"cusId": f"{self.prefix}-{i}", "amount": f"{1 + i % 500}.{i % 100:02d}"},
                headers={"Idempotency-Key": f"{self.prefix}-{i}"},
                timeout=self.timeout,
            )
            outcome["status"] = r.status_code
            try:
                body = r.json()
            except ValueError:
                body = {}
            outcome["uuid"] = body.get("uuid") if r.status_code == 202 else None
            outcome["code"] = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        except httpx.HTTPError as exc:
            outcome["status"] = None
            outcome["error"] = type(exc).__name__
        outcome["elapsed"] = time.monotonic() - started
        with self._lock:
            self.results.append(outcome)

    def _loop(self) -> None:
        i = 0
        start = time.monotonic()
        while not self._stop.is_set():
            t = threading.Thread(target=self._one, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
            i += 1
            self._stop.wait(max(0.0, start + i / self.rate - time.monotonic()))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.results)

    @property
    def accepted(self) -> list[str]:
        return [r["uuid"] for r in self.snapshot() if r.get("status") == 202 and r.get("uuid")]


class CallbackStub:
    """A tiny HTTP server on 127.0.0.1 standing between the wallet and the orchestrator.

    `behaviour(path, calls_for_path) -> action` decides each POST:
      ("status", code)            answer `code` without forwarding;
      ("forward",)                forward to the orchestrator and answer what it answered;
      ("forward_then_delay", s)   forward (so the orchestrator commits), then hold the answer s seconds.
    Every call is recorded in `calls` (path, action, upstream status, answered status).
    """

    def __init__(self, upstream: str, behaviour: Callable[[str, int], tuple[Any, ...]]) -> None:
        self.upstream = upstream
        self.behaviour = behaviour
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(_BaseHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                with stub._lock:
                    n = sum(1 for c in stub.calls if c["path"] == self.path)
                    record: dict[str, Any] = {"path": self.path, "n": n, "at": time.monotonic()}
                    stub.calls.append(record)
                action = stub.behaviour(self.path, n)
                record["action"] = action[0]
                status, payload = 500, b'{"error": {"code": "stub", "message": "stub"}}'
                if action[0] == "status":
                    status = int(action[1])
                else:
                    try:
                        r = httpx.post(
                            stub.upstream + self.path,
                            content=body,
                            headers={k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")},
                            timeout=10,
                        )
                        status, payload = r.status_code, r.content
                        record["upstream_status"] = status
                    except httpx.HTTPError as exc:
                        record["upstream_error"] = repr(exc)
                        status = 502
                    if action[0] == "forward_then_delay":
                        time.sleep(float(action[1]))
                record["answered"] = status
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    record["answered"] = "client gone"

        self.server = _ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="callback-stub")

    def __enter__(self) -> CallbackStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self.calls]


@_contextlib.contextmanager
def rabbitmq_app_stopped() -> Iterator[None]:
    """`rabbitmqctl stop_app` for the body; ALWAYS `start_app` afterwards and wait until AMQP answers."""
    port = servers_mod.current().amqp_port
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        wait_until(lambda: port_answers("127.0.0.1", port), 120, interval=0.5, what=f"RabbitMQ port {port} after start_app")


def seeded_random(seed: int | None = None) -> tuple[int, _random.Random]:
    seed = int(os.environ.get("CHANCEPAY_SOAK_SEED") or 0) or seed or _random.SystemRandom().randrange(1, 2**31)
    return seed, _random.Random(seed)
