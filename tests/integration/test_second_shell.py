"""The second terminal (issue 20): after the roles run the way `make run` runs them (the default
databases and users provisioned by `chancepay migrate` with the local admin URL, then `chancepay dev`
on the default ports), every operator command works in a shell with NO CHANCEPAY_* variable set:
`load --rate 10 --duration 5`, `audit`, `outbox list`, `trace <uuid>`, `reconcile`, `dlq list`.

This test uses what a newcomer's machine has after `make run`: the databases `chancepay_orchestrator`
and `chancepay_wallet` with their users, the broker's default vhost, ports 8000-8002. It creates the
databases and users when they were not there, and drops them again afterwards (ones that were there
before are left as they were)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.support import servers as servers_mod
from tests.support.env import wait_until
from tests.support.servers import one_pass

pytestmark = one_pass(
    "debian12",
    "the defaults point at this machine's own MariaDB and RabbitMQ (127.0.0.1:3306, :5672): the debian12 pass runs it",
)
DEFAULT_PORTS = {"orchestrator": 8000, "scanner": 8001, "wallet": 8002}
DEFAULT_DATABASES = ("chancepay_orchestrator", "chancepay_wallet")  # and users of the same names


def bare_environ(**extra: str) -> dict[str, str]:
    """A shell with no CHANCEPAY_* variable at all (then `extra`)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CHANCEPAY_")}, **extra}


def cli(*args: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chancepay", *args],
        env=bare_environ(**extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def requests_count() -> int:
    with servers_mod.current().admin_connect("chancepay_orchestrator") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM request")
        return int(cur.fetchone()[0])


def chancepay_queues(servers) -> set[str]:
    listing = servers.rabbitmqctl("list_queues", "-p", "/", "--quiet", "--no-table-headers", "name")
    return {line.strip() for line in listing.splitlines() if line.strip().startswith("chancepay.")}


@pytest.fixture
def default_install():
    """The default databases and users, as `make run` provisions them (`chancepay migrate` with the
    local admin URL and otherwise the defaults); removed afterwards if this test made them."""
    servers = servers_mod.current()
    with servers.admin_connect() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN (%s, %s)", DEFAULT_DATABASES
        )
        existed = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT User FROM mysql.user WHERE User IN (%s, %s)", DEFAULT_DATABASES)
        users_existed = {row[0] for row in cur.fetchall()}
    queues_before = chancepay_queues(servers)
    made = cli("migrate", CHANCEPAY_ADMIN_DB=servers.admin_url)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-2000:]
    try:
        yield
    finally:
        for queue in chancepay_queues(servers) - queues_before:  # what the roles declared on the default vhost
            servers.rabbitmqctl("delete_queue", "-p", "/", queue)
        with servers.admin_connect() as conn, conn.cursor() as cur:
            for name in DEFAULT_DATABASES:
                if name not in existed:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                if name not in users_existed:
                    cur.execute("DROP USER IF EXISTS %s@'%%'", (name,))


@pytest.fixture
def roles_on_default_ports(default_install, tmp_path):
    """`chancepay dev` with no variable and no --ports: the three roles on 8000-8002."""
    wait_until(
        lambda: all(port_free(p) for p in DEFAULT_PORTS.values()),
        60,
        interval=0.5,
        what=f"ports {sorted(DEFAULT_PORTS.values())} free for the roles' defaults",
    )
    log_path = tmp_path / "dev.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chancepay", "dev"],
        env=bare_environ(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def output() -> str:
        return log_path.read_text(errors="replace")

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"chancepay dev exited {proc.returncode}:\n{output()[-4000:]}")
        return all(
            httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=2).status_code == 200 for p in DEFAULT_PORTS.values()
        )

    try:
        try:
            wait_until(ready, 120, interval=0.5, what="the three roles ready on 8000-8002")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{output()[-4000:]}") from None
        yield output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        proc.wait(timeout=60)
        log.close()


def test_every_command_works_in_a_second_shell_with_no_variable(roles_on_default_ports) -> None:
    output = roles_on_default_ports
    # Local safety: what `chancepay dev` runs listens on the loopback only.
    listening = [line for line in json_lines(output()) if line.get("event") == "listening"]
    assert {line["role"] for line in listening} == set(DEFAULT_PORTS), listening
    assert {line["host"] for line in listening} == {"127.0.0.1"}, listening

    started = time.monotonic()
    load = cli("load", "--rate", "10", "--duration", "5", timeout=180)
    assert load.returncode == 0, load.stdout[-2000:] + load.stderr[-3000:]
    (summary,) = json_lines(load.stdout)
    assert summary["ok"] and summary["accepted"] == summary["sent"] == 50, summary
    print(f"\nsecond-shell load: {time.monotonic() - started:.1f} s", file=sys.stderr)

    r = httpx.post("http://127.0.0.1:8000/payments", json={"cusId": "second-shell", "amount": "3.00"}, timeout=10)
    assert r.status_code == 202, r.text
    uuid = r.json()["uuid"]
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:8000/payments/{uuid}", timeout=5).json()["status"] != "PENDING",
        30,
        what="the payment finalized",
    )

    audit = cli("audit")
    assert audit.returncode == 0, audit.stdout[-2000:] + audit.stderr[-2000:]
    assert json_lines(audit.stdout)[0]["ok"] is True

    outbox = cli("outbox", "list")
    assert outbox.returncode == 0, outbox.stderr[-2000:]

    trace = cli("trace", uuid)
    assert trace.returncode == 0, trace.stdout[-2000:] + trace.stderr[-2000:]
    (story,) = json_lines(trace.stdout)
    assert story["request"]["status"] in ("SUCCEEDED", "FAILED"), story

    reconcile = cli("reconcile", "--age", "0")
    assert reconcile.returncode == 0, reconcile.stdout[-3000:] + reconcile.stderr[-2000:]

    dlq = cli("dlq", "list")
    assert dlq.returncode == 0, dlq.stdout[-2000:] + dlq.stderr[-2000:]

    for result in (load, audit, outbox, trace, reconcile, dlq):
        everything = result.stdout + result.stderr
        assert "Traceback" not in everything and "Access denied" not in everything, everything[-2000:]


def test_load_checks_the_databases_before_sending_anything(roles_on_default_ports) -> None:
    """The API answers but the databases the convergence check reads refuse this shell's user:
    `load` says so before a single payment is sent (never after a whole run)."""
    before = requests_count()
    started = time.monotonic()
    wrong = "mysql://chancepay_orchestrator:not-the-password@127.0.0.1:3306/chancepay_orchestrator"
    result = cli("load", "--rate", "10", "--duration", "5", CHANCEPAY_ORCHESTRATOR_DB=wrong, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1 and elapsed < 5, (result.returncode, elapsed, result.stderr[-2000:])
    assert result.stdout == "", "no summary: no load was run"
    (line,) = [x for x in json_lines(result.stderr) if x.get("level") == "error"]
    assert line["event"] == "[FAILED TO REACH DATABASE]" and line["variable"] == "CHANCEPAY_ORCHESTRATOR_DB"
    assert line["url"] == "mysql://chancepay_orchestrator:***@127.0.0.1:3306/chancepay_orchestrator"
    assert "1045" in line["answer"] and "make run" in line["hint"]
    assert "not-the-password" not in result.stderr and "Traceback" not in result.stderr
    assert requests_count() == before, "no payment was created"
