"""core/results.py (the one results client: an Outcome or a Failure per result) and core/compat.py
(the shim for the previous release's orchestrator, which has no batch endpoint), over a fake
HTTP session. The same against the previous release's real code from git:
tests/integration/test_batched_results.py::test_a_new_wallet_with_the_previous_orchestrator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from chancepay.core import compat
from chancepay.core.payment import Failure, Outcome, Result
from chancepay.core.results import ResultsClient
from tests.support.fakes import FakeHTTP
from tests.support.recording_log import RecordingLog

A, B = "0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a60", "0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a61"
SENT = [Result(A, True), Result(B, False)]


class Log(RecordingLog):
    def warning(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))


def send(route: Any, results: list[Result] = SENT) -> tuple[list[object], FakeHTTP, Log]:
    http, log = FakeHTTP(route), Log()
    client = ResultsClient(http, "http://orchestrator:8000/", log=log)  # type: ignore[arg-type]  # FakeHTTP
    return asyncio.run(client.send(results)), http, log


def outcomes(*items: tuple[str, str]) -> bytes:
    return json.dumps({"results": [{"uuid": u, "outcome": o, "status": None} for u, o in items]}).encode()


def test_one_request_one_answer_per_result() -> None:
    answers, http, _ = send(lambda url, body: (200, outcomes((A, "applied"), (B, "conflict"))))
    assert answers == [Outcome.APPLIED, Outcome.CONFLICT]
    assert http.posts == [
        (
            "http://orchestrator:8000/internal/payments/results",
            b'{"results":[{"uuid":"%s","succeed":true},{"uuid":"%s","succeed":false}]}' % (A.encode(), B.encode()),
        )
    ]


def test_no_outcomes_is_a_failure_with_its_reason() -> None:
    answers, _, _ = send(lambda url, body: aiohttp.ClientConnectionError("refused"))
    assert answers == [Failure("ClientConnectionError: refused", retry_helps=True, unreachable=True)] * 2
    answers, _, _ = send(lambda url, body: (503, b"db down"))
    assert answers == [Failure("HTTP 503: db down", retry_helps=True, unreachable=True)] * 2
    answers, _, _ = send(lambda url, body: (200, outcomes((B, "applied"), (A, "applied"))))
    # An answer that cannot be read is as good as none: retried, and "waiting" until first reached.
    assert all(
        isinstance(a, Failure) and "do not match" in a.reason and a.retry_helps and a.unreachable for a in answers
    )


def test_the_previous_orchestrator_gets_one_request_per_result_for_a_while() -> None:
    def previous_release(url: str, body: Any) -> tuple[int, bytes]:
        if url.endswith("/results"):
            return 404, b'{"error": {"code": "not_found"}}'
        return (200, b"{}") if url.endswith(f"/{A}/result") else (409, b"{}")

    answers, http, log = send(previous_release)
    assert answers == [Outcome.APPLIED, Outcome.CONFLICT]
    assert [url.rsplit("/", 2)[-2:] for url, _ in http.posts] == [["payments", "results"], [A, "result"], [B, "result"]]
    assert http.posts[1][1] == {"succeed": True}
    assert "404" in log.tagged("batched callbacks refused; one request per result for a while")[0]["reason"]


def test_the_fallback_ends_after_its_time() -> None:
    now = [0.0]
    shim = compat.PreviousOrchestratorFallback(
        FakeHTTP(lambda url, body: (200, b"")),
        "http://o",
        Log(),  # type: ignore[arg-type]
        clock=lambda: now[0],
    )
    assert not shim.active()
    shim.switch_on("HTTP 404")
    now[0] = compat.OFF_SECONDS - 1
    assert shim.active()
    now[0] = compat.OFF_SECONDS + 1
    assert not shim.active()
    assert [s for s in (400, 401, 404, 405, 408, 422, 429, 500) if shim.refused(s)] == [400, 404, 405, 422]
