"""Batched result callbacks (issue 13): POST /internal/payments/results finalizes every item in one
transaction, write-once, with one outcome per item; the wallet sends its results that way; a
wallet facing an orchestrator that does not serve it (the previous release, during a rolling
update) falls back to one request per result and loses nothing."""

from __future__ import annotations

import concurrent.futures

import httpx

from tests.support.env import TOKEN, previous_release
from tests.support.invariants import assert_converged

AUTH = {"Authorization": f"Bearer {TOKEN}"}
UNKNOWN = "00000000-0000-4000-8000-000000000000"


def _results(stack, items, headers=AUTH) -> httpx.Response:
    return httpx.post(f"{stack.orchestrator.url}/internal/payments/results", json={"results": items}, headers=headers)


def _rows(stack, uuids):
    marks = ", ".join(["%s"] * len(uuids))
    return stack.env.orch_sql(
        f"SELECT uuid, succeed, finalized_at FROM request WHERE uuid IN ({marks}) ORDER BY uuid", tuple(uuids)
    )


def test_batch_outcomes_are_per_item_and_write_once(make_stack) -> None:
    s = make_stack().start("orchestrator")  # no scanner: nothing but this test finalizes
    a, b, c = (s.pay(cus_id=f"batch-{i}").json()["uuid"] for i in range(3))
    single = httpx.post(f"{s.orchestrator.url}/internal/payments/{c}/result", json={"succeed": True}, headers=AUTH)
    assert single.status_code == 200

    r = _results(
        s,
        [
            {"uuid": a, "succeed": True},
            {"uuid": b, "succeed": False},
            {"uuid": c, "succeed": False},
            {"uuid": UNKNOWN, "succeed": True},
        ],
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "results": [
            {"uuid": a, "outcome": "applied", "status": "SUCCEEDED"},
            {"uuid": b, "outcome": "applied", "status": "FAILED"},
            {"uuid": c, "outcome": "conflict", "status": "SUCCEEDED"},
            {"uuid": UNKNOWN, "outcome": "unknown", "status": None},
        ]
    }
    stored = _rows(s, [a, b, c])
    assert {u: v for u, v, _ in stored} == {a: 1, b: 0, c: 1}, "the conflicting item left its row unchanged"

    again = _results(s, [{"uuid": b, "succeed": False}, {"uuid": a, "succeed": True}])
    assert [(i["outcome"], i["status"]) for i in again.json()["results"]] == [
        ("repeated", "FAILED"),
        ("repeated", "SUCCEEDED"),
    ]
    assert _rows(s, [a, b, c]) == stored, "a repeat changes nothing, finalized_at included"
    assert s.orchestrator.events("RESULT CONFLICT")[-1]["uuid"] == c
    assert s.orchestrator.metric("chancepay_payments_finalized_total", result="succeeded") == 2  # c single, a batch
    assert s.orchestrator.metric("chancepay_result_batch_size_count") == 2


def test_bad_batches_are_refused_and_change_nothing(make_stack) -> None:
    s = make_stack().start("orchestrator")
    uuid = s.pay(cus_id="batch-bad").json()["uuid"]
    ok = {"uuid": uuid, "succeed": True}
    assert _results(s, [ok], headers={}).status_code == 401
    assert _results(s, [ok], headers={"Authorization": "Bearer wrong"}).status_code == 401
    refused = {
        "empty": [],
        "a uuid twice": [ok, {"uuid": uuid, "succeed": False}],
        "not a bool": [{"uuid": uuid, "succeed": "true"}],
        "extra key": [{**ok, "amount": "1"}],
        "bad uuid": [{"uuid": uuid.upper(), "succeed": True}],
        "too many": [{"uuid": f"00000000-0000-4000-8000-{i:012d}", "succeed": True} for i in range(201)],
    }
    for why, items in refused.items():
        r = _results(s, items)
        assert r.status_code == 422, (why, r.status_code, r.text)
        assert r.json()["error"]["code"] == ("duplicate_uuid" if why == "a uuid twice" else "invalid_field"), why
    r = httpx.post(f"{s.orchestrator.url}/internal/payments/results", json={"results": [ok], "x": 1}, headers=AUTH)
    assert r.status_code == 422
    assert _rows(s, [uuid])[0][1] is None, "the payment is still pending"


def test_the_wallet_batches_its_results(make_stack) -> None:
    """Payments arriving together are finalized in shared batches: fewer requests than results,
    and nothing on the single-result endpoint."""
    s = make_stack().start()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        uuids = list(pool.map(lambda i: s.pay(cus_id=f"burst-{i}").json()["uuid"], range(300)))
    assert_converged(s, uuids)
    batches = s.orchestrator.metric("chancepay_result_batch_size_count")
    results = s.orchestrator.metric("chancepay_result_batch_size_sum")
    assert results == 300, "each result delivered exactly once, all through the batch endpoint"
    assert batches < results, f"{batches} batches for {results} results: nothing was batched"
    single = sum(
        v
        for (name, labels), v in s.orchestrator.metrics().items()
        if name == "chancepay_http_request_duration_seconds_count"
        and ("route", "/internal/payments/{uuid}/result") in labels
    )
    assert single == 0


def test_a_new_wallet_with_the_previous_orchestrator(make_stack, tmp_path) -> None:
    """During a rolling update the wallet may be new and the orchestrator old (no batch endpoint):
    the wallet notices, sends one request per result, and every payment finalizes."""
    s = make_stack()
    s.start("orchestrator", PYTHONPATH=previous_release(tmp_path))
    s.start("scanner", "wallet")
    uuids = s.pay_many(30, prefix="old-orch")
    assert_converged(s, uuids)
    line = s.wallet.wait_for_event("batched callbacks refused", timeout=10)
    assert "404" in line["reason"]
    assert not s.wallet.events("[FAILED TO CALLBACK FROM WALLET]"), "the fallback is not a failure"
