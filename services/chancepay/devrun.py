"""`chancepay dev`: run roles as child processes, restart any that exits, like Kubernetes would.

Used by `make run`. Children inherit stdout/stderr, so their JSON log lines (which carry
`role`) interleave in the terminal. Ctrl-C (or SIGTERM) stops every child with SIGTERM and
waits for them. A child that keeps dying is restarted with capped exponential back-off
(CrashLoopBackOff in miniature); a child that exits with EXIT_CANNOT_START (bad configuration,
port in use) is not: the supervisor stops everything and says why, since a restart would fail
the same way. `ports` moves the roles (and points the wallet and reconciler URLs at them).

Local safety: the roles bind 127.0.0.1 unless CHANCEPAY_HOST says otherwise (the default
internal token is public: the wallet's inbox API must not be reachable from the LAN). A pod has
no supervisor and keeps the 0.0.0.0 default.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from chancepay.core.backoff import capped_exponential
from chancepay.core.logging import get_logger
from chancepay.core.runner import EXIT_CANNOT_START

ALLOWED = ("orchestrator", "scanner", "wallet", "auditor")
LOCAL_HOST = "127.0.0.1"
# What moves a role, by how the supervisor was started: `make run` ignores CHANCEPAY_PORT and
# passes its own variables as --ports; `chancepay dev` takes --ports.
MAKE_PORT_VARIABLES = {
    "orchestrator": "ORCHESTRATOR_PORT",
    "scanner": "SCANNER_PORT",
    "wallet": "WALLET_PORT",
    "auditor": "AUDITOR_PORT",
}


def port_knob(role: str, via_make: bool, example: int = 0) -> str:
    """The setting that moves `role` to another port under the command that was run."""
    example = example or {"orchestrator": 18000, "scanner": 18001, "wallet": 18002, "auditor": 18003}.get(role, 18000)
    if via_make:
        return f"make run {MAKE_PORT_VARIABLES.get(role, 'ORCHESTRATOR_PORT')}={example}"
    return f"chancepay dev --ports {role}={example}"


def parse_ports(text: str) -> dict[str, int]:
    """--ports orchestrator=8000,wallet=8002: every name a role, every port a TCP port, else ValueError."""
    ports: dict[str, int] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        role, sep, value = item.partition("=")
        role = role.strip()
        if not sep:
            raise ValueError(f"{item!r} is not ROLE=PORT")
        if role not in ALLOWED:
            raise ValueError(f"unknown role {role!r}; choose from {', '.join(ALLOWED)}")
        try:
            port = int(value)
        except ValueError:
            raise ValueError(f"{item!r}: the port must be a number") from None
        if not 0 < port < 65536:
            raise ValueError(f"{item!r}: the port must be 1-65535")
        ports[role] = port
    return ports


def role_environ(role: str, ports: dict[str, int]) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CHANCEPAY_HOST", LOCAL_HOST)
    if role in ports:
        env["CHANCEPAY_PORT"] = str(ports[role])
    if "orchestrator" in ports:
        env["CHANCEPAY_ORCHESTRATOR_URL"] = f"http://127.0.0.1:{ports['orchestrator']}"
    if "scanner" in ports:
        env["CHANCEPAY_SCANNER_URL"] = f"http://127.0.0.1:{ports['scanner']}"
    if "wallet" in ports:
        env["CHANCEPAY_WALLET_URL"] = f"http://127.0.0.1:{ports['wallet']}"
    return env


class _Children:
    """The roles' child processes and their restart back-off (CrashLoopBackOff in miniature)."""

    def __init__(self, roles: list[str], max_backoff: float, ports: dict[str, int], via_make: bool) -> None:
        self.roles, self.max_backoff, self.ports, self.via_make = roles, max_backoff, ports, via_make
        self.log = get_logger()
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts = {r: 0 for r in roles}
        self.next_start = {r: 0.0 for r in roles}
        self.started_at = {r: 0.0 for r in roles}

    def spawn(self, role: str) -> None:
        self.running[role] = subprocess.Popen(
            [sys.executable, "-m", "chancepay", role, "--port-hint", port_knob(role, self.via_make)],
            env=role_environ(role, self.ports),
        )
        self.started_at[role] = time.monotonic()
        self.log.info("supervisor started role", child=role, pid=self.running[role].pid, restarts=self.restarts[role])

    def tend(self) -> int:
        """One look at every role: reap the exited, (re)start the due. Returns EXIT_CANNOT_START
        when a role cannot start as configured (everything is to stop), else 0."""
        now = time.monotonic()
        for role in self.roles:
            child = self.running.get(role)
            if child is not None and child.poll() is not None:
                code = child.returncode
                del self.running[role]
                if code == EXIT_CANNOT_START:
                    self.log.error(
                        "[FAILED TO START]",
                        child=role,
                        exit_code=code,
                        reason="the role cannot start as configured (see its line above); "
                        "not restarting it, stopping the others",
                    )
                    return code
                if now - self.started_at[role] > 60:
                    self.restarts[role] = 0  # it ran a good while: forget earlier crashes
                delay = capped_exponential(self.restarts[role] + 1, 0.5, self.max_backoff)
                self.restarts[role] += 1
                self.next_start[role] = now + delay
                self.log.warning(
                    "supervisor: role exited, restarting", child=role, exit_code=code, restart_in_seconds=delay
                )
            if role not in self.running and now >= self.next_start[role]:
                self.spawn(role)
        return 0

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to every child, then wait for them (SIGKILL after `grace` seconds in total)."""
        self.log.info("supervisor stopping children")
        for child in self.running.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.running.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def supervise(
    roles: list[str], max_backoff: float = 30.0, ports: dict[str, int] | None = None, via_make: bool = False
) -> int:
    unknown = [r for r in roles if r not in ALLOWED]
    if unknown:
        get_logger().error("[FAILED TO START]", error=f"unknown roles {unknown}; choose from {ALLOWED}")
        return 2
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children = _Children(roles, max_backoff, ports or {}, via_make)
    for role in roles:
        children.spawn(role)
    fatal = 0
    while not stopping and not fatal:
        fatal = children.tend()
        if not fatal:
            time.sleep(0.2)
    children.stop()
    return fatal
