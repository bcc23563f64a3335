"""The three roles as real processes: each `Role` is a `python -m chancepay <role>` subprocess on a
free port whose JSON log lines are collected; a `Stack` is the roles of one Env; `Supervisor`
restarts exiting roles like Kubernetes would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.env import ROLES, Env, free_port, wait_until


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
        with proc.stdout, open(self.log_path, "ab") as f:  # the pipe closed at the role's exit
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
            raise AssertionError(f"{self.name} did not stop within {timeout}s of SIGTERM") from None

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

    def start_auditor(self, **overrides: str) -> Role:
        """`chancepay auditor` beside the three roles (fast passes, short grace), ready; stopped
        with the stack at teardown."""
        settings = {"CHANCEPAY_AUDITOR_INTERVAL_SECONDS": "0.2", "CHANCEPAY_AUDITOR_GRACE_SECONDS": "3", **overrides}
        environ = self.env.environ(**{**self.overrides, **settings})
        auditor = Role("auditor", self.env, environ, free_port(), parse_logs=self.parse_logs)
        self.roles["auditor"] = auditor
        return auditor.start().wait_ready()

    def start_all_unready(self) -> Stack:
        """Start the three roles and wait only until each is alive (/healthz), not ready."""
        for name in ROLES:
            self.role(name).start()
        for name in ROLES:
            role = self.roles[name]
            wait_until(
                lambda role=role: httpx.get(role.url + "/healthz", timeout=2).status_code == 200,
                30,
                what=f"{name} /healthz",
            )
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
            rows = self.env.orch_sql(
                f"SELECT COUNT(*) FROM request WHERE succeed IS NULL AND uuid IN ({placeholders})", uuids
            )
            return rows[0][0] == 0

        wait_until(all_final, timeout, interval=0.2, what=f"{len(uuids)} payments to finalize")


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
