"""Bad input gets a clear 4xx JSON error and writes nothing; idempotency keys; fuzzing (issue 3)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.env import TOKEN, Env
from tests.support.roles import Stack
from tests.support.servers import one_pass

ORCH_ONLY = ("orchestrator",)


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[Stack]:
    """One orchestrator for the whole module (no scanner: rows stay where a test can see them)."""
    env = Env(tmp_path_factory.mktemp("api"))
    env.create()
    stack = Stack(env).start(*ORCH_ONLY)
    try:
        yield stack
    finally:
        stack.stop_all()
        env.destroy()


def _counts(stack: Stack) -> tuple[int, int]:
    return (
        stack.env.orch_sql("SELECT COUNT(*) FROM request")[0][0],
        stack.env.orch_sql("SELECT COUNT(*) FROM outbox")[0][0],
    )


def _post(stack: Stack, raw: bytes | str, content_type: str = "application/json", **headers: str) -> httpx.Response:
    body = raw.encode() if isinstance(raw, str) else raw
    return httpx.post(
        stack.orchestrator.url + "/payments",
        content=body,
        headers={"Content-Type": content_type, **headers},
        timeout=30,
    )


BIG_INT = "9" * 5000
BAD_BODIES = [
    # (id, raw body, expected status, expected error code)
    ("negative", '{"cusId":"a","amount":-1}', 422, "invalid_field"),
    ("negative-string", '{"cusId":"a","amount":"-1.00"}', 422, "invalid_field"),
    ("zero", '{"cusId":"a","amount":0}', 422, "invalid_field"),
    ("zero-string", '{"cusId":"a","amount":"0.00"}', 422, "invalid_field"),
    ("nan-token", '{"cusId":"a","amount":NaN}', 400, "invalid_json"),
    ("nan-string", '{"cusId":"a","amount":"NaN"}', 422, "invalid_field"),
    ("infinity", '{"cusId":"a","amount":Infinity}', 400, "invalid_json"),
    ("infinity-string", '{"cusId":"a","amount":"Infinity"}', 422, "invalid_field"),
    ("1e400", '{"cusId":"a","amount":1e400}', 422, "invalid_field"),
    ("too-large", '{"cusId":"a","amount":"10000000000000000"}', 422, "invalid_field"),
    ("bool", '{"cusId":"a","amount":true}', 422, "invalid_field"),
    ("null", '{"cusId":"a","amount":null}', 422, "invalid_field"),
    ("three-fraction-digits", '{"cusId":"a","amount":"1.234"}', 422, "invalid_field"),
    ("three-fraction-digits-number", '{"cusId":"a","amount":1.234}', 422, "invalid_field"),
    ("exponent-string", '{"cusId":"a","amount":"1e3"}', 422, "invalid_field"),
    ("5000-digit-integer", '{"cusId":"a","amount":' + BIG_INT + "}", 422, "invalid_field"),
    ("duplicated-key", '{"cusId":"a","amount":1,"amount":-5}', 400, "invalid_json"),
    ("missing-amount", '{"cusId":"a"}', 422, "missing_field"),
    ("missing-all", "{}", 422, "missing_field"),
    ("unknown-field", '{"cusId":"a","amount":"1.00","currency":"EUR"}', 422, "unknown_field"),
    ("sql-cusid", json.dumps({"cusId": "a'; DROP TABLE request; --", "amount": "1"}), 422, "invalid_field"),
    ("nul-cusid", json.dumps({"cusId": "a\u0000b", "amount": "1"}), 422, "invalid_field"),
    ("newline-cusid", json.dumps({"cusId": "a\nb", "amount": "1"}), 422, "invalid_field"),
    ("trailing-newline-cusid", json.dumps({"cusId": "a\n", "amount": "1"}), 422, "invalid_field"),
    ("10000-char-cusid", json.dumps({"cusId": "a" * 10000, "amount": "1"}), 422, "invalid_field"),
    ("65-char-cusid", json.dumps({"cusId": "a" * 65, "amount": "1"}), 422, "invalid_field"),
    ("empty-cusid", json.dumps({"cusId": "", "amount": "1"}), 422, "invalid_field"),
    ("rtl-cusid", json.dumps({"cusId": "abc\u202edcba", "amount": "1"}), 422, "invalid_field"),
    ("number-cusid", '{"cusId":12,"amount":"1"}', 422, "invalid_field"),
    ("array-body", "[1,2]", 400, "invalid_json"),
    ("string-body", '"hello"', 400, "invalid_json"),
    ("empty-body", "", 400, "invalid_json"),
    ("truncated", '{"cusId":"a","amount":', 400, "invalid_json"),
    ("not-utf8", b'{"cusId":"\xff","amount":"1"}', 400, "invalid_json"),
]


@pytest.mark.parametrize("case_id,raw,status,code", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_body_is_rejected_and_writes_nothing(api: Stack, case_id: str, raw, status: int, code: str) -> None:
    before = _counts(api)
    r = _post(api, raw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert _counts(api) == before


def test_big_body_wrong_type_and_bad_headers(api: Stack) -> None:
    before = _counts(api)
    huge = b'{"cusId":"a","amount":"1","pad":"' + b"x" * (10 * 1024 * 1024) + b'"}'
    r = _post(api, huge)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield b'{"cusId":"a","amount":"1","pad":"'
        for _ in range(40):
            yield b"x" * 1024
        yield b'"}'

    r = httpx.post(api.orchestrator.url + "/payments", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413

    for ctype in ("text/plain", "application/x-www-form-urlencoded", "", "application/json; charset=latin-1"):
        r = _post(api, '{"cusId":"a","amount":"1"}', content_type=ctype)
        assert r.status_code == 415, ctype
        assert r.json()["error"]["code"] == "unsupported_media_type"

    for key in ("", "k" * 256, "spaces not allowed", "ключ"):
        r = httpx.post(
            api.orchestrator.url + "/payments",
            content=b'{"cusId":"a","amount":"1"}',
            headers={"Content-Type": "application/json", "Idempotency-Key": key.encode("utf-8")},
        )
        assert r.status_code == 400, key
        assert r.json()["error"]["code"] == "invalid_idempotency_key"
    assert _counts(api) == before


def test_accepted_amount_spellings_are_exact(api: Stack) -> None:
    for raw, expected in (
        ('"12.5"', "12.50"),
        ("12.5", "12.50"),
        ('"7"', "7.00"),
        ("0.01", "0.01"),
        ('"9999999999999999.99"', "9999999999999999.99"),
        ("12.500", "12.50"),
        ("1e2", "100.00"),
    ):
        r = _post(api, '{"cusId":"ok-1","amount":' + raw + "}")
        assert r.status_code == 202, (raw, r.text)
        uuid = r.json()["uuid"]
        assert r.json()["amount"] == expected
        assert str(api.env.orch_sql("SELECT amount FROM request WHERE uuid=%s", (uuid,))[0][0]) == expected


def test_path_and_method_errors(api: Stack) -> None:
    base = api.orchestrator.url
    r = httpx.get(base + "/payments/not-a-uuid")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_uuid"
    r = httpx.get(base + "/payments/00000000-0000-4000-8000-000000000000")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.delete(base + "/payments")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(base + "/nowhere")
    assert r.status_code == 404 and "error" in r.json()


def test_result_callback_auth_and_write_once(api: Stack) -> None:
    uuid = api.pay(cus_id="cb").json()["uuid"]
    url = f"{api.orchestrator.url}/internal/payments/{uuid}/result"
    auth = {"Authorization": f"Bearer {TOKEN}"}

    assert httpx.post(url, json={"succeed": True}).status_code == 401
    assert httpx.post(url, json={"succeed": True}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, json={"succeed": True}, headers={"Authorization": TOKEN}).status_code == 401
    assert api.status(uuid) == "PENDING"

    for bad in ({"succeed": "true"}, {"succeed": 1}, {}, {"succeed": True, "x": 1}):
        r = httpx.post(url, json=bad, headers=auth)
        assert r.status_code == 422, bad
    unknown = f"{api.orchestrator.url}/internal/payments/00000000-0000-4000-8000-000000000000/result"
    assert httpx.post(unknown, json={"succeed": True}, headers=auth).status_code == 404
    bad_uuid = f"{api.orchestrator.url}/internal/payments/xyz/result"
    assert httpx.post(bad_uuid, json={"succeed": True}, headers=auth).status_code == 400

    first = httpx.post(url, json={"succeed": True}, headers=auth)
    assert first.status_code == 200 and first.json() == {"uuid": uuid, "status": "SUCCEEDED"}
    finalized_at = api.env.orch_sql("SELECT finalized_at FROM request WHERE uuid=%s", (uuid,))[0][0]
    again = httpx.post(url, json={"succeed": True}, headers=auth)
    assert again.status_code == 200 and again.json()["status"] == "SUCCEEDED"
    conflict = httpx.post(url, json={"succeed": False}, headers=auth)
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "result_conflict"
    assert api.env.orch_sql("SELECT succeed, finalized_at FROM request WHERE uuid=%s", (uuid,)) == [(1, finalized_at)]
    assert api.orchestrator.events("RESULT CONFLICT")


def test_idempotency_key_replays_the_original_payment(api: Stack) -> None:
    before = _counts(api)
    first = api.pay(cus_id="idem", amount="5.00", **{"Idempotency-Key": "order-42"})
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    # the same payment spelled differently is the same body
    again = _post(api, '{"amount": 5, "cusId": "idem"}', **{"Idempotency-Key": "order-42"})
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["uuid"] == first.json()["uuid"]
    assert again.headers["location"] == first.headers["location"]
    reused = api.pay(cus_id="idem", amount="6.00", **{"Idempotency-Key": "order-42"})
    assert reused.status_code == 422 and reused.json()["error"]["code"] == "idempotency_key_reused"
    assert _counts(api) == (before[0] + 1, before[1] + 1)


def test_concurrent_requests_with_one_key_make_one_payment(api: Stack) -> None:
    before = _counts(api)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(
            pool.map(lambda _: api.pay(cus_id="race", amount="3.00", **{"Idempotency-Key": "race-1"}), range(32))
        )
    assert {r.status_code for r in responses} == {202}, [r.text for r in responses if r.status_code != 202]
    assert len({r.json()["uuid"] for r in responses}) == 1
    assert sum(1 for r in responses if "idempotent-replayed" not in r.headers) == 1
    assert _counts(api) == (before[0] + 1, before[1] + 1)


def test_logs_cannot_be_forged_through_input(api: Stack) -> None:
    forged = '\n{"event":"[FAILED TO SEND TO MQ]","uuid":"forged"}\n'
    httpx.post(api.orchestrator.url + "/payments", json={"cusId": forged, "amount": "1"})
    httpx.get(api.orchestrator.url + "/payments/" + "x%0A%7B%22event%22%3A%22forged%22%7D")
    for raw in api.orchestrator.raw:
        line = json.loads(raw)  # every line is exactly one JSON object
        assert line.get("uuid") != "forged" and line.get("event") != "forged"


@one_pass("chart", "the API's own input checks and document, generated from its OpenAPI schema")
def test_openapi_document_is_the_api_every_check_and_the_stateful_phase(api: Stack, tmp_path) -> None:
    spec = httpx.get(api.orchestrator.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/payments" in spec["paths"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            api.orchestrator.url + "/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "100",
            "--seed",
            "20261207",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "-H",
            f"Authorization: Bearer {TOKEN}",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.integration.openapi_hooks",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Stateful" in result.stdout and "No links point to this operation" not in result.stdout, result.stdout[
        -3000:
    ]


def test_a_trailing_slash_is_a_json_404_not_a_redirect_built_from_the_host_header(api: Stack) -> None:
    r = httpx.post(
        api.orchestrator.url + "/payments/",
        json={"cusId": "a", "amount": "1"},
        headers={"Host": "evil.example"},
        follow_redirects=False,
    )
    assert r.status_code == 404 and "location" not in r.headers, (r.status_code, r.headers)
    assert r.json()["error"]["code"] == "not_found", r.text
