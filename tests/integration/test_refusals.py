"""Refused requests leave a trace (issue 11): a tagged line for every 401 on /internal/*, a
count of every 4xx by route and code; uvicorn's own lines are not named "error"."""

from __future__ import annotations

import httpx

from tests.support.env import TOKEN, wait_until
from tests.support.roles import Stack


def test_unauthorized_internal_calls_are_logged_and_counted(stack: Stack) -> None:
    uuid = "6b1e2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    no_token = httpx.post(f"{stack.orchestrator.url}/internal/payments/{uuid}/result", json={"succeed": True})
    wrong = httpx.get(f"{stack.wallet.url}/internal/inbox/{uuid}", headers={"Authorization": "Bearer not-the-token"})
    assert no_token.status_code == 401 and wrong.status_code == 401
    line = stack.orchestrator.wait_for_event("[FAILED TO AUTHORIZE REQUEST]")
    assert line["route"] == "/internal/payments/{uuid}/result" and line["client"] == "127.0.0.1"
    assert line["reason"] == "missing bearer token" and line["status"] == 401
    wallet_line = stack.wallet.wait_for_event("[FAILED TO AUTHORIZE REQUEST]")
    assert wallet_line["reason"] == "wrong token"
    everything = "\n".join(stack.orchestrator.raw + stack.wallet.raw)
    assert TOKEN not in everything and "not-the-token" not in everything, "a token in the logs"
    assert (
        stack.orchestrator.metric("chancepay_http_auth_failures_total", route="/internal/payments/{uuid}/result") == 1
    )
    assert stack.wallet.metric("chancepay_http_auth_failures_total", route="/internal/inbox/{uuid}") == 1


def test_client_errors_are_countable_by_route_and_code(stack: Stack) -> None:
    api = stack.orchestrator.url
    httpx.post(f"{api}/payments", content=b"{not json", headers={"Content-Type": "application/json"})
    httpx.post(f"{api}/payments", json={"cusId": "a", "amount": "1.234"})
    httpx.get(f"{api}/payments/not-a-uuid")
    httpx.get(f"{api}/no-such-route")

    def counted() -> bool:
        m = stack.orchestrator.metrics()
        return all(
            m.get(("chancepay_http_client_errors_total", key)) == 1
            for key in (
                (("code", "invalid_json"), ("route", "/payments")),
                (("code", "invalid_field"), ("route", "/payments")),
                (("code", "invalid_uuid"), ("route", "/payments/{uuid}")),
                (("code", "not_found"), ("route", "unmatched")),
            )
        )

    wait_until(counted, 10, what="4xx counted by route and code")


def test_uvicorns_own_lines_are_not_named_error(stack: Stack) -> None:
    names = {line.get("logger") for line in stack.orchestrator.lines if line.get("logger", "").startswith("uvicorn")}
    assert names and "uvicorn.error" not in names, names
