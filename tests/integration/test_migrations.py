"""Versioned schema migrations (issue 12) on the real database: from empty; from what the previous
release's own `chancepay migrate` created (its code taken from git), with its roles running under
load through a rolling upgrade; two migrates at once; a schema newer than the code; a column
added under live load without losing a payment; v3 finished after a stop between its steps; a DDL
behind an open transaction giving up within the lock wait."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import pytest

from chancepay.core import migrations, sql
from chancepay.core.config import DatabaseURL
from chancepay.core.db import Database, DatabaseBusy
from chancepay.core.migrations import Migration
from chancepay.core.schema import apply
from tests.support.env import previous_release, wait_until
from tests.support.invariants import assert_converged
from tests.support.payer import Payer
from tests.support.roles import restart_role


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


def _assert_wallet_not_ready_on_its_schema(make_stack) -> None:
    """A wallet started on the schema as it is: alive, and its readyz says the schema is not one
    it may run on."""
    wallet = make_stack().role("wallet").start()
    wait_until(lambda: _get(wallet.url + "/healthz") == 200, 30, what="wallet alive")
    ready = httpx.get(wallet.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["checks"]["schema"] is False, ready.text


LATEST = {"orchestrator": migrations.latest(migrations.ORCHESTRATOR), "wallet": migrations.latest(migrations.WALLET)}


def versions(env) -> dict[str, list[int]]:
    return {
        "orchestrator": [v for (v,) in env.orch_sql("SELECT version FROM schema_version ORDER BY version")],
        "wallet": [v for (v,) in env.wallet_sql("SELECT version FROM schema_version ORDER BY version")],
    }


def test_from_empty_and_idempotent(env) -> None:
    assert versions(env) == {k: list(range(1, v + 1)) for k, v in LATEST.items()}
    again = env.migrate()
    assert "migration applied" not in again.stdout, "a second migrate changes nothing"
    assert versions(env) == {k: list(range(1, v + 1)) for k, v in LATEST.items()}


def test_upgrades_what_the_previous_release_created(env_factory, tmp_path) -> None:
    """Its migrate created request, outbox, inbox and pending_callback with CREATE TABLE IF NOT
    EXISTS and no schema_version. The rows survive; the versions are recorded."""
    env = env_factory(migrate=False)
    old = env.chancepay("migrate", CHANCEPAY_ADMIN_DB=env.servers.admin_url, PYTHONPATH=previous_release(tmp_path))
    assert old.returncode == 0, old.stdout + old.stderr
    assert "schema_version" not in {t for (t,) in env.orch_sql("SHOW TABLES")}, "the old code made it"
    uuid = "7b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    env.orch_sql("INSERT INTO request (uuid, cus_id, amount, succeed) VALUES (%s, 'old', 5.00, 1)", (uuid,))
    env.wallet_sql("INSERT INTO inbox (uuid, cus_id, amount, succeed) VALUES (%s, 'old', 5.00, 1)", (uuid,))
    result = env.migrate()
    assert result.stdout.count('"migration applied"') == sum(LATEST.values())
    assert versions(env) == {k: list(range(1, v + 1)) for k, v in LATEST.items()}
    assert env.orch_sql("SELECT cus_id, succeed FROM request WHERE uuid = %s", (uuid,)) == [("old", 1)]
    assert env.wallet_sql("SELECT cus_id FROM inbox WHERE uuid = %s", (uuid,)) == [("old",)]


def test_rolling_upgrade_from_the_previous_release_under_load(env_factory, make_stack, tmp_path) -> None:
    """The previous release's migrate and roles, payments flowing; two new migrates at once; the
    scanner and the wallet replaced by the new code while payments flow, then the orchestrator;
    more payments through the new code. Every payment accepted, final, invariants clean."""
    env = env_factory(migrate=False)
    old_code = previous_release(tmp_path)
    old = env.chancepay("migrate", CHANCEPAY_ADMIN_DB=env.servers.admin_url, PYTHONPATH=old_code)
    assert old.returncode == 0, old.stdout + old.stderr
    s = make_stack(PYTHONPATH=old_code).start()
    accepted: list[str] = []
    with Payer(s, rate=20, prefix="upgrade") as payer:
        wait_until(lambda: len(payer.accepted) >= 40, 30, what="payments through the old release")
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "chancepay", "migrate"],
                env=env.environ(CHANCEPAY_ADMIN_DB=env.servers.admin_url),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=180)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
        assert sum(o.count('"migration applied"') for o in outputs) == sum(LATEST.values()), outputs
        for name in ("scanner", "wallet"):
            assert s.roles[name].stop(timeout=25) == 0
            restart_role(s, name, PYTHONPATH="")
        before = len(payer.accepted)
        wait_until(lambda: len(payer.accepted) >= before + 40, 30, what="payments after the upgrade")
    assert all(r["status"] == 202 for r in payer.snapshot()), [r for r in payer.snapshot() if r["status"] != 202][:3]
    accepted += payer.accepted
    assert s.roles["orchestrator"].stop(timeout=25) == 0
    restart_role(s, "orchestrator", PYTHONPATH="")
    accepted += s.pay_many(20, prefix="new")
    assert versions(env) == {k: list(range(1, v + 1)) for k, v in LATEST.items()}
    assert_converged(s, accepted)
    for name, role in s.roles.items():
        failures = role.events("[FAILED TO")
        if name == "wallet":
            # The orchestrator was down for its restart: callbacks in that window fail and are retried.
            failures = [f for f in failures if not ("CALLBACK" in f["event"] and f.get("will_retry"))]
        assert role.running and not failures, failures


def test_two_migrates_at_once_take_turns(env_factory) -> None:
    env = env_factory(migrate=False)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "chancepay", "migrate"],
            env=env.environ(CHANCEPAY_ADMIN_DB=env.servers.admin_url),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert versions(env) == {k: list(range(1, v + 1)) for k, v in LATEST.items()}
    applied = sum(o.count('"migration applied"') for o in outputs)
    assert applied == sum(LATEST.values()), f"each version applied exactly once, by either process: {applied}"


def test_a_schema_contracted_past_the_code_is_refused_by_migrate_and_by_the_roles(make_stack, env) -> None:
    """A newer release dropped something this code reads (its migration's oldest_code is past
    this code): rolled back onto it, this release's migrate refuses (exit 2, nothing changed) and
    its wallet never becomes Ready."""
    floor = LATEST["wallet"] + 1
    env.wallet_sql(
        "INSERT INTO schema_version (version, description, oldest_code) VALUES (%s, 'a contraction', %s)",
        (LATEST["wallet"] + 2, floor),
    )
    before = versions(env)
    result = env.chancepay("migrate", CHANCEPAY_ADMIN_DB=env.servers.admin_url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "newer than this code knows" in result.stdout + result.stderr
    assert f"needs code that knows version {floor}" in result.stdout + result.stderr
    assert versions(env) == before
    _assert_wallet_not_ready_on_its_schema(make_stack)


def test_a_newer_schema_that_cannot_say_who_may_run_on_it_is_refused(make_stack, env) -> None:
    """A schema version above this code's and no `oldest_code` to read: refused as a contraction
    (exit 2, nothing changed), the wallet not Ready — never assumed compatible."""
    env.wallet_sql("ALTER TABLE schema_version DROP COLUMN oldest_code")
    env.wallet_sql("INSERT INTO schema_version (version, description) VALUES (%s, 'silent')", (LATEST["wallet"] + 1,))
    result = env.chancepay("migrate", CHANCEPAY_ADMIN_DB=env.servers.admin_url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "does not say which earlier release may run on it" in result.stdout + result.stderr
    _assert_wallet_not_ready_on_its_schema(make_stack)


def test_a_release_rolled_back_onto_a_schema_that_only_grew_migrates_nothing_and_runs(make_stack, env) -> None:
    """`helm rollback` after an upgrade whose release migrated further with expansions only
    (oldest_code 0): this release's migrate Job exits 0 having changed nothing, and its roles are
    Ready and move payments on the newer schema."""
    for key, run in (("orchestrator", env.orch_sql), ("wallet", env.wallet_sql)):
        run(
            "INSERT INTO schema_version (version, description) VALUES (%s, 'an expansion of a newer release')",
            (LATEST[key] + 1,),
        )
    before = versions(env)
    result = env.chancepay("migrate", CHANCEPAY_ADMIN_DB=env.servers.admin_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "migration applied" not in result.stdout
    assert result.stdout.count("schema newer than this code") == 2, result.stdout
    assert versions(env) == before
    s = make_stack().start()  # waits until every role is Ready
    accepted = s.pay_many(5, "rolled-back")
    s.wait_final(accepted, timeout=30)
    assert_converged(s, accepted)


def test_a_column_added_under_live_load_loses_no_payment(make_stack, env) -> None:
    """The example of an expand-only migration: a nullable column on the busiest table, applied
    with the runner `chancepay migrate` uses while payments flow through all three roles."""
    s = make_stack().start()
    example = migrations.ORCHESTRATOR + (
        Migration(
            LATEST["orchestrator"] + 1,
            "example: request.note (nullable)",
            ("ALTER TABLE request ADD COLUMN note VARCHAR(64) NULL",),
            unless_column=("request", "note"),
        ),
    )

    async def migrate_now() -> list[int]:
        db = Database(DatabaseURL.parse(env.orch_url()), pool_size=1, timeout=30)
        try:
            return await apply(db, example)
        finally:
            await db.close()

    with Payer(s, rate=20, prefix="ddl") as payer:
        wait_until(lambda: len(payer.accepted) >= 40, 20, what="payments flowing")
        assert asyncio.run(migrate_now()) == [LATEST["orchestrator"] + 1]
        before = len(payer.accepted)
        wait_until(lambda: len(payer.accepted) >= before + 40, 20, what="payments flowing after the migration")
    assert all(r["status"] == 202 for r in payer.snapshot()), [r for r in payer.snapshot() if r["status"] != 202][:3]
    assert env.orch_sql(sql.COLUMN_EXISTS, ("request", "note")) == [(1,)]
    assert asyncio.run(migrate_now()) == [], "applied once"
    assert_converged(s, payer.accepted)
    for name, role in s.roles.items():
        failures = role.events("[FAILED TO")
        if name == "wallet":
            # The orchestrator was down for its restart: callbacks in that window fail and are retried.
            failures = [f for f in failures if not ("CALLBACK" in f["event"] and f.get("will_retry"))]
        assert role.running and not failures, failures


def test_v3_stopped_between_its_steps_finishes_them(env) -> None:
    """v3's ALTERs are separate steps, each guarded: a migrate stopped after the column was added
    (before the per-client unique key and the old index's drop) finishes the rest next time."""
    env.orch_sql("ALTER TABLE request DROP INDEX uq_request_idempotency_key_client")
    env.orch_sql("ALTER TABLE request ADD UNIQUE KEY uq_request_idempotency_key (idempotency_key)")
    env.orch_sql("DELETE FROM schema_version WHERE version >= 3")
    assert env.orch_sql(sql.COLUMN_EXISTS, ("request", "client_id")) == [(1,)], "step 1 was done"
    result = env.migrate()
    assert result.returncode == 0, result.stdout + result.stderr
    assert env.orch_sql(sql.INDEX_EXISTS, ("request", "uq_request_idempotency_key_client")) == [(2,)]  # 2 columns
    assert env.orch_sql(sql.INDEX_EXISTS, ("request", "uq_request_idempotency_key")) == [(0,)]
    assert versions(env)["orchestrator"] == list(range(1, LATEST["orchestrator"] + 1))


def test_a_ddl_behind_an_open_transaction_gives_up_within_the_lock_wait(env) -> None:
    """A transaction holding `request` open: the DDL fails after lock_wait_timeout (DatabaseBusy,
    which migrate retries) instead of waiting with every later statement on the table queued."""
    example = migrations.ORCHESTRATOR + (
        Migration(LATEST["orchestrator"] + 1, "example: note", ("ALTER TABLE request ADD COLUMN note INT NULL",)),
    )

    async def go() -> float:
        holder = Database(DatabaseURL.parse(env.orch_url()), pool_size=1, timeout=30)
        db = Database(DatabaseURL.parse(env.orch_url()), pool_size=1, timeout=30)
        try:
            async with holder.transaction() as cur:
                await cur.execute("SELECT COUNT(*) FROM request")
                await cur.fetchone()
                started = time.monotonic()
                with pytest.raises(DatabaseBusy):
                    await apply(db, example, lock_wait_seconds=1)
                return time.monotonic() - started
        finally:
            await db.close()
            await holder.close()

    took = asyncio.run(go())
    assert took < 10, f"gave up after {took:.1f} s"
    assert env.orch_sql(sql.COLUMN_EXISTS, ("request", "note")) == [(0,)]
    assert versions(env)["orchestrator"] == list(range(1, LATEST["orchestrator"] + 1)), "nothing recorded"
