"""Roles started before their schema or broker exists (a first `helm install`: every pod starts at
once, the migrate Job and the broker come later). Each role must stay up, say what it waits for
with a tagged log line, report not-ready, and serve once the dependency is there: no exit, no
restart. A crash-looping pod would keep `helm install --wait` from ever finishing."""

from __future__ import annotations

import datetime
import json
import secrets
import subprocess
import sys

import httpx
import pytest

from tests.support.env import admin_connect, wait_until
from tests.support.faultproxy import FaultProxy
from tests.support.invariants import assert_converged

ROLES = ("orchestrator", "scanner", "wallet")


def readyz(role) -> tuple[int, dict]:
    r = httpx.get(role.url + "/readyz", timeout=5)
    return r.status_code, r.json()


def create_users_and_databases_without_tables(env) -> None:
    """The state the first install used to crash on: users and databases exist (an init script,
    or a DBA, made them) but no table yet (MySQL error 1146 in the scanner's first poll)."""
    with admin_connect() as conn, conn.cursor() as cur:
        for db, user, password in (
            (env.orch_db, env.orch_user, env.orch_password),
            (env.wallet_db, env.wallet_user, env.wallet_password),
        ):
            cur.execute(f"CREATE DATABASE `{db}`")
            cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
            cur.execute(f"GRANT ALL PRIVILEGES ON `{db}`.* TO %s@'%%'", (user,))


@pytest.fixture
def unmigrated_env(env_factory):
    return env_factory(migrate=False)


@pytest.mark.parametrize("state", ["nothing", "users_without_tables"])
def test_roles_started_before_migrate_wait_then_serve_without_restarting(make_stack, unmigrated_env, state) -> None:
    env = unmigrated_env
    if state == "users_without_tables":
        create_users_and_databases_without_tables(env)
    s = make_stack().start_all_unready()
    pids = {name: s.roles[name].proc.pid for name in ROLES}

    # Waiting, not crashing: the scanner polls (and fails) several times, every role stays up.
    s.scanner.wait_for_event("[FAILED TO SCAN OUTBOX]", timeout=30)
    wait_until(lambda: len(s.scanner.events("[FAILED TO SCAN OUTBOX]")) >= 3, 30, what="the scanner keeps polling")
    scan_errors = s.scanner.events("[FAILED TO SCAN OUTBOX]")
    assert all("chancepay migrate" in e["error"] for e in scan_errors), scan_errors[-1]
    assert all(e["waiting"] is True and e["waiting_for"] == "database" for e in scan_errors), scan_errors[-1]
    for name in ROLES:
        assert s.roles[name].running, f"{name} exited before migrate ran"
        code, body = readyz(s.roles[name])
        assert code == 503 and body["checks"]["schema"] is False, (name, body)
        assert httpx.get(s.roles[name].url + "/healthz", timeout=5).status_code == 200  # alive: no restart
    refused = s.pay(cus_id="too-early")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "database_unavailable"

    env.migrate()
    for name in ROLES:
        s.roles[name].wait_ready(timeout=30)
        assert s.roles[name].proc.pid == pids[name], f"{name} was restarted"
    uuids = s.pay_many(5, "after-migrate")
    s.wait_final(uuids, timeout=30)
    assert_converged(s, uuids)


def test_scanner_and_wallet_wait_for_a_broker_that_is_not_there_yet(make_stack, env) -> None:
    proxy = FaultProxy("127.0.0.1", env.amqp_port).start()
    try:
        proxy.set_mode("refuse")
        via_proxy = env.amqp_url(port=proxy.port)
        s = make_stack()
        s.role("orchestrator").start().wait_ready()
        s.role("scanner", CHANCEPAY_AMQP_URL=via_proxy).start()
        s.role("wallet", CHANCEPAY_AMQP_URL=via_proxy).start()
        for name, tag in (("scanner", "[FAILED TO SEND TO MQ]"), ("wallet", "[FAILED TO CONSUME FROM MQ]")):
            role = s.roles[name]
            wait_until(lambda role=role, tag=tag: len(role.events(tag)) >= 3, 30, what=f"{name} retrying the broker")
            waiting = role.events(tag)
            assert all("broker not reachable yet" in e["error"] and e["reason"] == "connection" for e in waiting)
            assert all(e["waiting"] is True and e["waiting_for"] == "broker" for e in waiting)
            assert [e["attempt"] for e in waiting[:3]] == [1, 2, 3]
            assert role.running, f"{name} exited instead of waiting for the broker"
            code, body = readyz(role)
            assert code == 503 and body["checks"]["broker"] is False
        uuids = s.pay_many(3, "queued")  # accepted meanwhile: they wait in the outbox
        pids = {name: s.roles[name].proc.pid for name in ("scanner", "wallet")}
        proxy.set_mode("pass")
        s.scanner.wait_ready(timeout=30)
        s.wallet.wait_ready(timeout=30)
        assert {name: s.roles[name].proc.pid for name in pids} == pids, "no restart"
        s.wait_final(uuids, timeout=30)
        assert_converged(s, uuids)
    finally:
        proxy.stop()


# ---------------------------------------------------------------------------------------------
# Waiting is not failing: everything started before the servers, as a cluster starts them.

FAILED = "[FAILED TO"
WAITING_MARK = '"waiting":true'  # what README's grep recipe leaves out (the renderer's exact bytes)


class Process:
    """A one-shot `chancepay <command>` (migrate, reconcile) in the background, its JSON log lines
    read from its output file."""

    def __init__(self, env, command: list[str], environ: dict[str, str]) -> None:
        self.name = command[0]
        self.path = env.tmp / f"{self.name}.log"
        with open(self.path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "chancepay", *command], env=environ, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def raw(self) -> list[str]:
        return self.path.read_text(errors="replace").splitlines()

    @property
    def lines(self) -> list[dict]:
        parsed = []
        for line in self.raw:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                pass
        return parsed

    def events(self, contains: str) -> list[dict]:
        return [line for line in self.lines if contains in str(line.get("event", ""))]

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def logged_at(line: dict) -> datetime.datetime:
    return datetime.datetime.fromisoformat(line["timestamp"])


def test_every_failure_line_before_the_servers_came_up_is_marked_waiting(make_stack, env_factory) -> None:
    """The roles, `chancepay migrate` and a reconcile pass all start before MariaDB and RabbitMQ
    can be reached (MariaDB blackholed, RabbitMQ refusing; no database, user or table exists yet),
    as Kubernetes starts them. Every `[FAILED TO` line they log until everything is up and settled
    carries `"waiting": true`; then a real outage of a database that was up is logged without it;
    payments flow, nothing restarted."""
    env = env_factory(migrate=False)
    db_proxy = FaultProxy("127.0.0.1", env.mysql_port).start()
    mq_proxy = FaultProxy("127.0.0.1", env.amqp_port).start()
    admin_user, admin_password = f"cpt_{env.id}_a", secrets.token_hex(8)
    with admin_connect() as conn, conn.cursor() as cur:  # what the chart's admin URL is: a user of its own
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (admin_user, admin_password))
        cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@'%%' WITH GRANT OPTION", (admin_user,))
    processes: list[Process] = []
    s = None
    try:
        db_proxy.set_mode("blackhole")
        mq_proxy.set_mode("refuse")
        via_proxies = {
            "CHANCEPAY_ORCHESTRATOR_DB": env.orch_url(port=db_proxy.port),
            "CHANCEPAY_WALLET_DB": env.wallet_url(port=db_proxy.port),
            "CHANCEPAY_AMQP_URL": env.amqp_url(port=mq_proxy.port),
            "CHANCEPAY_DB_TIMEOUT_SECONDS": "2",  # a blackholed connect gives up after 2 s, then retries
        }
        s = make_stack(**via_proxies).start_all_unready()
        pids = {name: s.roles[name].proc.pid for name in ROLES}
        migrate = Process(
            env,
            ["migrate"],
            env.environ(
                **via_proxies, CHANCEPAY_ADMIN_DB=f"mysql://{admin_user}:{admin_password}@127.0.0.1:{db_proxy.port}/"
            ),
        )
        reconcile = Process(env, ["reconcile", "--age", "0"], env.environ(**via_proxies))
        processes += [migrate, reconcile]

        # Before the servers are up: every process fails to reach them, and says it is waiting.
        refused = s.pay(cus_id="too-early")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "database_unavailable"
        expected = [
            (s.scanner, "[FAILED TO SEND TO MQ]", 2),
            (s.wallet, "[FAILED TO CONSUME FROM MQ]", 2),
            (s.wallet, "[FAILED TO REACH DATABASE]", 2),
            (s.orchestrator, "[FAILED TO REACH DATABASE]", 1),
            (migrate, "[FAILED TO REACH DATABASE]", 2),
            (reconcile, "[FAILED TO RECONCILE]", 2),
        ]
        for source, tag, count in expected:
            wait_until(
                lambda source=source, tag=tag, count=count: len(source.events(tag)) >= count,
                60,
                what=f"{source.name} logging {tag} while the servers are down",
            )
        up_at = datetime.datetime.now(datetime.UTC)
        db_proxy.set_mode("pass")
        mq_proxy.set_mode("pass")

        # Up: migrate provisions and migrates, the reconcile pass runs, every role turns ready.
        assert migrate.wait_exit(timeout=120) == 0, "\n".join(migrate.raw[-20:])
        assert reconcile.wait_exit(timeout=120) == 0, "\n".join(reconcile.raw[-20:])
        for name in ROLES:
            s.roles[name].wait_ready(timeout=60)
        settled_at = datetime.datetime.now(datetime.UTC)
        assert {name: s.roles[name].proc.pid for name in ROLES} == pids, "no role was restarted"

        def failures(since=None, until=None) -> list[dict]:
            lines = [line for source in (*s.roles.values(), *processes) for line in source.lines]
            return [
                line
                for line in lines
                if FAILED in str(line.get("event", ""))
                and (since is None or logged_at(line) >= since)
                and (until is None or logged_at(line) < until)
            ]

        before_up = failures(until=up_at)
        assert {line["role"] for line in before_up} == {"orchestrator", "scanner", "wallet", "migrate", "reconcile"}
        unmarked = [line for line in failures(until=settled_at) if line.get("waiting") is not True]
        assert not unmarked, unmarked[:5]
        assert {line["waiting_for"] for line in before_up} == {"database", "broker"}
        assert all(e.get("waiting") is True for e in migrate.events(FAILED)), "migrate's wait ended in time"
        assert migrate.events("schema up to date") and reconcile.events("reconcile pass done")
        # The same, as the README's grep recipe sees it: every raw failure line says it waited.
        raw = [line for source in (*s.roles.values(), *processes) for line in source.raw if FAILED in line]
        assert raw and all(WAITING_MARK in line for line in raw), [line for line in raw if WAITING_MARK not in line]

        # Settled: a database that was up and goes away is an outage, logged without `waiting`.
        db_proxy.set_mode("refuse")
        assert s.pay(cus_id="outage").status_code == 503
        wait_until(
            lambda: any(line["role"] == "scanner" for line in failures(since=settled_at)),
            30,
            what="the scanner logging the outage",
        )
        db_proxy.set_mode("pass")
        for name in ROLES:
            s.roles[name].wait_ready(timeout=60)
        after = failures(since=settled_at)
        assert {line["role"] for line in after} >= {"orchestrator", "scanner"}, after
        assert all("waiting" not in line for line in after), [line for line in after if "waiting" in line][:5]

        # And payments flow.
        uuids = s.pay_many(5, "after-start")
        s.wait_final(uuids, timeout=60)
        assert_converged(s, uuids)
        assert {name: s.roles[name].proc.pid for name in ROLES} == pids, "no role was restarted"
    finally:
        for p in processes:
            p.kill()
        if s is not None:
            s.stop_all()  # before the proxies go: a role losing its broker at teardown is not this test's
        db_proxy.stop()
        mq_proxy.stop()
        with admin_connect() as conn, conn.cursor() as cur:
            cur.execute("DROP USER IF EXISTS %s@'%%'", (admin_user,))
