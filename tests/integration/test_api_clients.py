"""API clients (CONTRACT.md "Clients") between real processes: keys made by `chancepay clients`,
checked by a real orchestrator against its real database; ownership, per-client idempotency keys,
the per-client rate limit, and shedding with `503 overloaded` under 1,500 concurrent clients."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any

import httpx

from tests.support.env import Env, wait_until
from tests.support.roles import Stack

AUTH = {"CHANCEPAY_API_AUTH": "required", "CHANCEPAY_API_KEY_CACHE_SECONDS": "0.5"}


def add(env: Env, name: str) -> dict[str, str]:
    result = env.chancepay("clients", "add", name)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    return json.loads(line)


def pay(s: Stack, key: str | None, cus_id: str = "alice", amount: str = "12.50", **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return s.pay(cus_id, amount, **headers)


def get(s: Stack, uuid: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{s.orchestrator.url}/payments/{uuid}", headers=headers, timeout=10)


def rows(s: Stack) -> int:
    return s.env.orch_sql("SELECT COUNT(*) FROM request")[0][0] + s.env.orch_sql("SELECT COUNT(*) FROM outbox")[0][0]


def refused(r: httpx.Response, status: int, code: str) -> bool:
    return r.status_code == status and r.json()["error"]["code"] == code


def test_without_a_valid_key_the_api_answers_401_and_writes_nothing(make_stack) -> None:
    s = make_stack(**AUTH).start("orchestrator")
    alice, bob = add(s.env, "alice"), add(s.env, "bob")
    ok = pay(s, alice["key"])
    assert ok.status_code == 202, ok.text
    before = rows(s)
    unknown = f"cpk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    wrong_secret = f"cpk_{alice['keyId']}_{secrets.token_urlsafe(32)}"
    for key in (None, "not-a-key", unknown, wrong_secret):
        r = pay(s, key, **{"Idempotency-Key": "k"})
        assert refused(r, 401, "unauthenticated") and r.headers["www-authenticate"] == "Bearer", (key, r.text)
        assert refused(get(s, ok.json()["uuid"], key), 401, "unauthenticated")
    assert rows(s) == before, "a refused request writes nothing"
    assert pay(s, bob["key"]).status_code == 202

    revoked = s.env.chancepay("clients", "revoke", "bob", bob["keyId"])
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout) == {"client": "bob", "keyId": bob["keyId"], "revoked": 1}
    start = time.monotonic()
    wait_until(lambda: refused(pay(s, bob["key"]), 401, "unauthenticated"), 10, what="the revoked key refused")
    assert time.monotonic() - start < 0.5 + 2, "revocation visible within CHANCEPAY_API_KEY_CACHE_SECONDS"
    settled = rows(s)
    assert refused(pay(s, bob["key"]), 401, "unauthenticated") and rows(s) == settled
    assert pay(s, alice["key"]).status_code == 202, "the other client is untouched"
    assert s.orchestrator.metric("chancepay_api_requests_total", client="none", code="401") >= 8
    assert s.orchestrator.metric("chancepay_api_requests_total", client="alice", code="202") >= 2


def test_a_payment_and_its_idempotency_key_belong_to_its_client(make_stack) -> None:
    s = make_stack(**AUTH).start("orchestrator")
    alice, bob = add(s.env, "alice")["key"], add(s.env, "bob")["key"]
    a = pay(s, alice, **{"Idempotency-Key": "order-1"})
    b = pay(s, bob, **{"Idempotency-Key": "order-1"})
    assert a.status_code == b.status_code == 202
    assert a.json()["uuid"] != b.json()["uuid"] and "idempotent-replayed" not in b.headers, "independent payments"
    again = pay(s, alice, **{"Idempotency-Key": "order-1"})
    assert again.json()["uuid"] == a.json()["uuid"] and again.headers["idempotent-replayed"] == "true"
    assert refused(pay(s, bob, amount="1.00", **{"Idempotency-Key": "order-1"}), 422, "idempotency_key_reused")
    assert get(s, a.json()["uuid"], alice).status_code == 200
    assert refused(get(s, a.json()["uuid"], bob), 404, "not_found"), "another client's uuid is unknown to it"
    assert get(s, b.json()["uuid"], bob).json()["status"] == "PENDING"
    stored = s.env.orch_sql("SELECT client_id, uuid FROM request WHERE idempotency_key = 'order-1' ORDER BY client_id")
    assert [u for _, u in stored] == [a.json()["uuid"], b.json()["uuid"]] and stored[0][0] != stored[1][0]


def test_over_its_rate_a_client_gets_429_with_retry_after_and_nothing_is_written(make_stack) -> None:
    s = make_stack(**AUTH, CHANCEPAY_API_CLIENT_RATE="0.2", CHANCEPAY_API_CLIENT_BURST="2").start("orchestrator")
    alice, bob = add(s.env, "alice")["key"], add(s.env, "bob")["key"]
    assert [pay(s, alice, cus_id=f"a{i}").status_code for i in range(2)] == [202, 202]
    before = rows(s)
    r = pay(s, alice, cus_id="a2", **{"Idempotency-Key": "over"})
    assert refused(r, 429, "rate_limited") and 1 <= int(r.headers["retry-after"]) <= 5, r.headers
    assert rows(s) == before and not s.env.orch_sql("SELECT uuid FROM request WHERE idempotency_key = 'over'")
    assert pay(s, bob).status_code == 202, "the bucket is per client"
    assert s.orchestrator.metric("chancepay_api_requests_total", client="alice", code="429") == 1


def test_with_auth_off_the_api_is_open_as_before(make_stack) -> None:
    s = make_stack().start("orchestrator")  # CHANCEPAY_ENV=dev: off by default
    r = pay(s, None, **{"Idempotency-Key": "open"})
    assert r.status_code == 202
    assert pay(s, "anything", **{"Idempotency-Key": "open"}).headers["idempotent-replayed"] == "true"
    assert get(s, r.json()["uuid"], None).json()["status"] == "PENDING"
    assert s.env.orch_sql("SELECT client_id FROM request") == [(0,)]
    assert s.orchestrator.metric("chancepay_api_requests_total", client="none", code="202") == 2


def test_clients_add_list_revoke_end_to_end(env: Env) -> None:
    env.create()
    # The commands docs/operations.md shows, exactly as written there.
    first = env.chancepay("clients", "add", "shop")
    second = env.chancepay("clients", "add", "shop")
    assert first.returncode == second.returncode == 0, first.stderr
    keys = [json.loads(r.stdout) for r in (first, second)]
    for k in keys:
        assert set(k) == {"client", "keyId", "key"} and k["client"] == "shop"
        assert k["key"].startswith(f"cpk_{k['keyId']}_") and len(k["key"]) == 4 + 12 + 1 + 43
    assert keys[0]["keyId"] != keys[1]["keyId"], "a second key for the same client"
    assert env.chancepay("clients", "add", "other").returncode == 0

    listed = env.chancepay("clients", "list")
    assert listed.returncode == 0
    clients = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [c["client"] for c in clients] == ["other", "shop"]
    assert {k["keyId"] for k in clients[1]["keys"]} == {k["keyId"] for k in keys}
    assert all(k["revokedAt"] is None for k in clients[1]["keys"])
    assert not any(k["key"] in listed.stdout + listed.stderr for k in keys), "list never shows a key"
    hashes = env.orch_sql("SELECT key_hash FROM api_key")
    assert not any(k["key"] in str(hashes) for k in keys), "only the hash is stored"

    one = env.chancepay("clients", "revoke", "shop", keys[0]["keyId"])
    assert one.returncode == 0 and json.loads(one.stdout)["revoked"] == 1
    for args in (("revoke", "shop", "000000000000"), ("revoke", "nobody"), ("add", "bad name!")):
        failed = env.chancepay("clients", *args)
        assert failed.returncode == 1 and "[FAILED TO MANAGE CLIENTS]" in failed.stderr, (args, failed.stderr)
        assert failed.stdout == ""
    everything = env.chancepay("clients", "revoke", "shop")
    assert everything.returncode == 0 and json.loads(everything.stdout)["revoked"] == 1, "the one left"
    assert env.orch_sql("SELECT COUNT(*) FROM api_key WHERE revoked_at IS NULL") == [(1,)], "other's key only"

    # Each add and revoke that changed state, and each refused one, left an operator-trail row.
    trail = env.orch_sql("SELECT command, result FROM operator_action ORDER BY id")
    assert trail == [
        ("clients add", "ok"),
        ("clients add", "ok"),
        ("clients add", "ok"),
        ("clients revoke", "ok"),
        ("clients revoke", "error"),
        ("clients revoke", "error"),
        ("clients add", "error"),
        ("clients revoke", "ok"),
    ]
    details = " ".join(str(r) for r in env.orch_sql("SELECT arguments, detail FROM operator_action"))
    assert not any(k["key"] in details for k in keys), "the trail names key ids, never a key"


async def _flood(url: str, key: str, count: int, prefix: str) -> list[tuple[str, int, dict[str, str], Any]]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(i: int) -> tuple[str, int, dict[str, str], Any]:
            idem = f"{prefix}-{i}"
            r = await client.post(
                f"{url}/payments",
                json={"cusId": prefix, "amount": "1.00"},
                headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem},
            )
            return idem, r.status_code, dict(r.headers), r.json()

        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), 150)


def test_1500_concurrent_clients_are_shed_with_503_overloaded_and_none_is_lost(make_stack) -> None:
    s = make_stack(
        **AUTH,
        CHANCEPAY_DB_POOL_SIZE="2",
        CHANCEPAY_DB_ACQUIRE_TIMEOUT_SECONDS="0.5",
        CHANCEPAY_API_GROUP_SIZE="1",
        CHANCEPAY_API_CLIENT_RATE="0",
    ).start("orchestrator")
    key = add(s.env, "flood")["key"]
    answers = asyncio.run(_flood(s.orchestrator.url, key, 1500, "flood"))
    statuses = sorted({status for _, status, _, _ in answers})
    shed = [a for a in answers if a[1] == 503]
    accepted = {idem for idem, status, _, _ in answers if status == 202}
    print(f"\n1500 concurrent: {len(accepted)} accepted, {len(shed)} shed 503 overloaded")
    assert set(statuses) <= {202, 503}, statuses
    assert shed and accepted, statuses
    assert all(body["error"]["code"] == "overloaded" and headers["retry-after"] == "1" for _, _, headers, body in shed)
    stored = {k for (k,) in s.env.orch_sql("SELECT idempotency_key FROM request WHERE cus_id = 'flood'")}
    assert stored == accepted, "every 202 has its row, and a shed request wrote none"
    assert s.orchestrator.metric("chancepay_api_overloaded_total") == len(shed)
    assert not s.orchestrator.events("Traceback") and not s.orchestrator.events("[FAILED TO REACH DATABASE]")


def test_migrate_registers_the_bootstrap_key_once_and_leaves_a_revocation_alone(make_stack) -> None:
    """What the chart's migrate Job does with the Secret's api-key: register it for its client;
    running migrate again changes nothing, and a key an operator revoked stays revoked."""
    key = f"cpk_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
    s = make_stack(**AUTH)
    s.env.migrate(CHANCEPAY_BOOTSTRAP_API_KEY=key, CHANCEPAY_BOOTSTRAP_CLIENT="first")
    s.start("orchestrator")
    assert pay(s, key).status_code == 202
    again = s.env.migrate(CHANCEPAY_BOOTSTRAP_API_KEY=key, CHANCEPAY_BOOTSTRAP_CLIENT="first")
    assert "bootstrap API key already there" in again.stdout
    assert s.env.orch_sql("SELECT COUNT(*) FROM api_key") == [(1,)]
    assert s.env.chancepay("clients", "revoke", "first").returncode == 0
    s.env.migrate(CHANCEPAY_BOOTSTRAP_API_KEY=key, CHANCEPAY_BOOTSTRAP_CLIENT="first")
    wait_until(lambda: refused(pay(s, key), 401, "unauthenticated"), 10, what="the revoked bootstrap key refused")
    bad = s.env.chancepay("migrate", CHANCEPAY_BOOTSTRAP_API_KEY="not-a-key")
    assert bad.returncode != 0 and "not a ChancePay API key" in bad.stdout + bad.stderr


def test_load_sends_its_key_to_an_api_that_requires_one(make_stack) -> None:
    """`chancepay load` against CHANCEPAY_API_AUTH=required: with CHANCEPAY_API_KEY every payment is
    accepted and converges; without it none is (401) and the exit code says so."""
    s = make_stack(**AUTH).start()
    key = add(s.env, "loader")["key"]
    with_key = s.env.chancepay("load", "--rate", "10", "--duration", "2", CHANCEPAY_API_KEY=key, timeout=180)
    summary = json.loads(with_key.stdout)
    assert with_key.returncode == 0 and summary["responses"] == {"202": 20}, summary
    without = s.env.chancepay("load", "--rate", "10", "--duration", "1", "--converge-timeout", "5", timeout=180)
    assert without.returncode == 1 and json.loads(without.stdout)["responses"] == {"401": 10}
    assert s.orchestrator.metric("chancepay_api_requests_total", client="loader", code="202") == 20
