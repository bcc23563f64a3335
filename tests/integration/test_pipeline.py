"""The seed's four phases between real processes, on the real MariaDB and RabbitMQ (issue 2)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import pymysql
import pytest

from tests.support.env import TOKEN, dead_lettered, free_port, wait_until
from tests.support.faults import publish_raw
from tests.support.invariants import assert_invariants
from tests.support.roles import Role, Stack


def test_happy_path_50_payments_all_final_and_mirrored(stack: Stack) -> None:
    uuids = []
    for i in range(50):
        r = stack.pay(cus_id=f"cus-{i}", amount=f"{i + 1}.25")
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "PENDING" and body["amount"] == f"{i + 1}.25"
        assert r.headers["location"] == f"/payments/{body['uuid']}"
        uuids.append(body["uuid"])

    stack.wait_final(uuids)
    requests = dict(stack.env.orch_sql("SELECT uuid, succeed FROM request"))
    inbox = dict(stack.env.wallet_sql("SELECT uuid, succeed FROM inbox"))
    assert set(requests) == set(inbox) == set(uuids)
    assert all(requests[u] == inbox[u] for u in uuids)
    assert {requests[u] for u in uuids} == {0, 1}, "both results must occur at a 0.5 success rate"
    wait_until(lambda: stack.env.orch_sql("SELECT COUNT(*) FROM outbox")[0][0] == 0, 10, what="outbox empty")

    got = httpx.get(f"{stack.orchestrator.url}/payments/{uuids[0]}").json()
    assert got["status"] in ("SUCCEEDED", "FAILED") and got["finalizedAt"] and got["createdAt"]
    assert got["cusId"] == "cus-0" and got["amount"] == "1.25"

    assert stack.orchestrator.metric("chancepay_payments_created_total") == 50
    finalized = sum(
        stack.orchestrator.metric("chancepay_payments_finalized_total", result=r) for r in ("succeeded", "failed")
    )
    assert finalized == 50
    assert stack.scanner.metric("chancepay_outbox_published_total") == 50
    wallet_total = sum(
        stack.wallet.metric("chancepay_wallet_messages_total", outcome=o) for o in ("succeeded", "failed")
    )
    assert wallet_total == 50
    assert stack.scanner.metric("chancepay_outbox_depth") == 0
    # every log line is one JSON object carrying its role; payment lines carry the uuid
    accepted = stack.orchestrator.events("payment accepted")
    assert {line["uuid"] for line in accepted} == set(uuids)
    assert all(line["role"] == "orchestrator" for line in stack.orchestrator.lines)
    assert all(line["role"] == "wallet" for line in stack.wallet.lines)
    assert not [r for r in stack.orchestrator.raw if r and not r.startswith("{")], "non-JSON log line"


def test_corrupt_message_is_dead_lettered_and_wallet_keeps_serving(stack: Stack) -> None:
    publish_raw(stack, b'{"uuid": "not-a-uuid", "amount": "NaN"', message_id="corrupt-1")
    alert = stack.wallet.wait_for_event("[PAYLOAD_CORRUPTION_ALERT]")
    assert alert["message_id"] == "corrupt-1"
    assert stack.env.wallet_sql("SELECT COUNT(*) FROM inbox")[0][0] == 0
    wait_until(lambda: dead_lettered(stack.env) == 1, 10, what="message in the DLQ")
    assert stack.wallet.metric("chancepay_wallet_messages_total", outcome="corrupt") == 1
    wait_until(lambda: stack.wallet.metric("chancepay_dlq_messages") == 1, 10, what="DLQ gauge")

    # the wallet keeps serving: a real payment still goes through, and the bad one is not retried
    uuid = stack.pay().json()["uuid"]
    stack.wait_final([uuid], timeout=30)
    assert len(stack.wallet.events("[PAYLOAD_CORRUPTION_ALERT]")) == 1
    assert stack.wallet.running


def test_callback_failure_keeps_request_pending_then_heals(make_stack) -> None:
    # The wallet's callback goes to a port where nothing listens: connection refused.
    s = make_stack(CHANCEPAY_CALLBACK_ATTEMPTS="2", CHANCEPAY_CALLBACK_BACKOFF_SECONDS="0.05")
    s.start_wallet_with(CHANCEPAY_ORCHESTRATOR_URL="http://127.0.0.1:1")
    uuid = s.pay().json()["uuid"]

    failure = s.wallet.wait_for_event("[FAILED TO CALLBACK FROM WALLET]", uuid=uuid)
    assert "reason" in failure
    inbox = wait_until(lambda: s.env.wallet_sql("SELECT succeed FROM inbox WHERE uuid=%s", (uuid,)), 10)
    assert inbox[0][0] in (0, 1), "the inbox holds the final truth"
    assert s.status(uuid) == "PENDING"
    assert s.wallet.metric("chancepay_wallet_callback_failures_total") >= 1
    got = httpx.get(f"{s.wallet.url}/internal/inbox/{uuid}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert got == {"uuid": uuid, "succeed": bool(inbox[0][0])}
    # Parked for background retries, the message itself acked (no prefetch slot held meanwhile).
    s.wallet.wait_for_event("result parked for background retries", uuid=uuid)
    wait_until(
        lambda: s.env.wallet_sql("SELECT COUNT(*) FROM pending_callback WHERE uuid=%s", (uuid,))[0][0] == 1,
        10,
        what="the pending_callback row",
    )
    wait_until(lambda: s.wallet.metric("chancepay_wallet_callbacks_pending") == 1, 10, what="pending gauge")

    # The orchestrator becomes reachable for the wallet: the parked result is delivered.
    s.wallet.stop()
    s.role("wallet").start().wait_ready()
    s.wait_final([uuid], timeout=30)
    wait_until(
        lambda: s.env.wallet_sql("SELECT COUNT(*) FROM pending_callback")[0][0] == 0,
        10,
        what="the parked row deleted once delivered",
    )
    assert s.env.orch_sql("SELECT succeed FROM request WHERE uuid=%s", (uuid,))[0][0] == inbox[0][0]
    assert s.env.wallet_sql("SELECT COUNT(*) FROM inbox")[0][0] == 1
    assert_invariants(s.env)


def test_same_message_twice_is_deducted_once(stack: Stack) -> None:
    uuid = stack.pay(cus_id="bob", amount="7.00").json()["uuid"]
    stack.wait_final([uuid])
    first = stack.env.wallet_sql("SELECT succeed, finalized_at FROM inbox WHERE uuid=%s", (uuid,))[0]

    body = json.dumps({"uuid": uuid, "cusId": "bob", "amount": "7.00"}).encode()
    publish_raw(stack, body, message_id=uuid)
    wait_until(
        lambda: stack.wallet.metric("chancepay_wallet_messages_total", outcome="duplicate") == 1,
        15,
        what="duplicate counted",
    )
    assert stack.env.wallet_sql("SELECT succeed, finalized_at, deliveries FROM inbox WHERE uuid=%s", (uuid,)) == [
        (first[0], first[1], 2)
    ]
    assert stack.env.orch_sql("SELECT succeed FROM request WHERE uuid=%s", (uuid,))[0][0] == first[0]
    # the stored result was sent again and the orchestrator answered 200 (repeat), no error logged
    wait_until(lambda: stack.wallet.metric("chancepay_wallet_callbacks_total") == 2, 10, what="second callback")
    assert not stack.wallet.events("[FAILED")
    assert not stack.orchestrator.events("[FAILED")
    assert (
        sum(stack.orchestrator.metric("chancepay_payments_finalized_total", result=r) for r in ("succeeded", "failed"))
        == 1
    )


def test_scanner_stopped_outbox_grows_then_drains(make_stack) -> None:
    s = make_stack().start("orchestrator", "wallet")
    uuids = s.pay_many(20)
    assert s.orchestrator.metric("chancepay_outbox_depth") == 20
    assert s.orchestrator.metric("chancepay_outbox_oldest_age_seconds") > 0
    assert s.orchestrator.metric("chancepay_payments_pending") == 20
    assert all(s.status(u) == "PENDING" for u in uuids)

    s.role("scanner").start().wait_ready()
    wait_until(lambda: s.orchestrator.metric("chancepay_outbox_depth") == 0, 30, what="outbox drained")
    s.wait_final(uuids)
    assert s.scanner.metric("chancepay_outbox_depth") == 0
    assert_invariants(s.env)


def test_two_scanners_publish_each_row_once(make_stack) -> None:
    s = make_stack().start("orchestrator", "wallet")
    uuids = s.pay_many(100)
    a = s.role("scanner")
    b = Role("scanner", s.env, s.env.environ(), free_port())
    s.roles["scanner-b"] = b
    a.start()
    b.start()
    a.wait_ready()
    b.wait_ready()
    s.wait_final(uuids)
    published = a.metric("chancepay_outbox_published_total") + b.metric("chancepay_outbox_published_total")
    assert published == 100, f"published {published} for 100 rows: a row went out twice"
    assert s.wallet.metric("chancepay_wallet_messages_total", outcome="duplicate") == 0


@pytest.mark.slow
def test_load_10_per_second_for_30_seconds_converges(stack: Stack) -> None:
    result = stack.env.chancepay(
        "load",
        "--rate",
        "10",
        "--duration",
        "30",
        "--converge-timeout",
        "60",
        CHANCEPAY_ORCHESTRATOR_URL=stack.orchestrator.url,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["sent"] == 300 and summary["accepted"] == 300
    assert summary["converged"] and summary["pending"] == 0 and summary["outbox_depth"] == 0
    assert summary["succeeded"] + summary["failed"] == 300
    assert summary["invariants"] == {
        "checked": 300,
        "ok": True,
        "lost": 0,
        "duplicated": 0,
        "mismatched": 0,
        "orphan_inbox": 0,
        "unexplained_outbox": 0,
        "awaiting_mirror": 0,
    }
    assert summary["api_latency_ms"]["p99"] is not None and summary["e2e_latency_ms"]["p99"] is not None
    print("load summary:", json.dumps(summary))


def test_wallet_user_cannot_touch_the_orchestrator_schema(env) -> None:
    with pymysql.connect(
        host="127.0.0.1", port=env.mysql_port, user=env.wallet_user, password=env.wallet_password
    ) as conn:
        with conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError) as denied:
            cur.execute(f"SELECT COUNT(*) FROM `{env.orch_db}`.request")
    assert denied.value.args[0] in (1044, 1142), denied.value


def test_migrate_is_idempotent_and_requires_strict_mode(env) -> None:
    again = env.chancepay("migrate")
    assert again.returncode == 0, again.stdout + again.stderr
    tables = {r[0] for r in env.orch_sql("SHOW TABLES")}
    assert tables == {
        "request",
        "outbox",
        "schema_version",
        "operator_action",
        "operator_action_uuid",
        "api_client",
        "api_key",
    }
    assert {r[0] for r in env.wallet_sql("SHOW TABLES")} == {
        "inbox",
        "pending_callback",
        "dead_letter",
        "schema_version",
    }
    # The server's global sql_mode may be anything: every session of the roles forces strict mode,
    # so an amount that does not fit is an error, never a silently clamped value.
    import asyncio

    from chancepay.core.config import DatabaseURL
    from chancepay.core.db import Database

    async def overflow() -> BaseException | None:
        db = Database(DatabaseURL.parse(env.orch_url()))
        try:
            await db.check_strict()
            await db.execute(
                "INSERT INTO request (uuid, cus_id, amount) VALUES (%s, %s, %s)",
                ("00000000-0000-4000-8000-000000000001", "strict", "99999999999999999999.99"),
            )
        except Exception as exc:
            return exc
        finally:
            await db.close()
        return None

    error = asyncio.run(overflow())
    assert error is not None and error.args[0] == 1264, f"out-of-range amount was not refused: {error!r}"
    assert env.orch_sql("SELECT COUNT(*) FROM request")[0][0] == 0


def test_roles_stop_cleanly_on_sigterm(stack: Stack) -> None:
    for name in ("wallet", "scanner", "orchestrator"):
        assert stack.roles[name].stop(timeout=25) == 0, "\n".join(stack.roles[name].raw[-20:])


def test_bad_configuration_refuses_to_start(env) -> None:
    bad = env.chancepay("orchestrator", CHANCEPAY_WALLET_SUCCESS_RATE="1.5", timeout=30)
    # one tagged JSON line on stdout, like every other line (issue 20), naming the variable
    (line,) = [json.loads(x) for x in bad.stdout.splitlines() if x.startswith("{")]
    assert bad.returncode == 2 and line["event"] == "[FAILED TO START]", bad.stdout + bad.stderr
    assert "CHANCEPAY_WALLET_SUCCESS_RATE" in bad.stdout
    prod_default_token = env.chancepay(
        "wallet", CHANCEPAY_ENV="prod", CHANCEPAY_INTERNAL_TOKEN="dev-internal-token", timeout=30
    )
    assert prod_default_token.returncode == 2
    assert "CHANCEPAY_INTERNAL_TOKEN" in prod_default_token.stdout


def _listener_pid(port: int) -> int | None:
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    match = re.search(r"pid=(\d+)", out)
    return int(match.group(1)) if match else None


def test_make_run_supervisor_restarts_a_role_that_exits(env) -> None:
    port = env.ports["orchestrator"]
    url = env.base_url("orchestrator")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chancepay", "dev", "--roles", "orchestrator"],
        env=env.environ(CHANCEPAY_PORT=str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 30, what="orchestrator up")
        first = wait_until(lambda: _listener_pid(port), 10, what="listener pid")
        assert first != proc.pid, "the supervisor runs the role as a child process"
        os.kill(first, signal.SIGKILL)
        second = wait_until(lambda: (pid := _listener_pid(port)) != first and pid, 30, what="restarted orchestrator")
        assert second != first
        wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, 30, what="orchestrator back")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=40)
    assert code == 0
    assert _listener_pid(port) is None, "Ctrl-C/SIGTERM to the supervisor stops its children"


def test_every_session_is_strict_and_read_committed(env) -> None:
    import asyncio

    from chancepay.core.config import DatabaseURL
    from chancepay.core.db import Database

    async def read() -> tuple:
        db = Database(DatabaseURL.parse(env.orch_url()), pool_size=1)
        try:
            return await db.fetchone("SELECT @@SESSION.sql_mode, @@SESSION.tx_isolation")
        finally:
            await db.close()

    mode, isolation = asyncio.run(read())
    assert "STRICT_ALL_TABLES" in mode and isolation == "READ-COMMITTED"
