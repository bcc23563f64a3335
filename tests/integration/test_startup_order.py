"""Roles started before their schema or broker exists (a first `helm install`: every pod starts at
once, the migrate Job and the broker come later). Each role must stay up, say what it waits for
with a tagged log line, report not-ready, and serve once the dependency is there: no exit, no
restart. A crash-looping pod would keep `helm install --wait` from ever finishing."""

from __future__ import annotations

import httpx
import pytest

from tests.support.faultproxy import FaultProxy
from tests.support.env import admin_connect, wait_until
from tests.support.invariants import assert_converged

ROLES = ("orchestrator", "scanner", "wallet")


def readyz(role) -> tuple[int, dict]:
    r = httpx.get(role.url + "/readyz", timeout=5)
    return r.status_code, r.json()


def create_users_and_databases_without_tables(env) -> None:
    """The state the first install used to crash on: users and databases exist (an init script,
    or a DBA, made them) but no table yet (MySQL error 1146 in the scanner's first poll)."""
    with admin_connect() as conn, conn.cursor() as cur:
        for db, user, password in ((env.orch_db, env.orch_user, env.orch_password),
                                   (env.wallet_db, env.wallet_user, env.wallet_password)):
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
