"""wallet/callback.py: results batched into shared requests, a few quick tries each, every try
that failed logged with its reason; the results client is a fake (tests/support/fakes.py)."""

from __future__ import annotations

import asyncio

from chancepay.core.metrics import Metrics
from chancepay.core.payment import Failure, Outcome, Result
from chancepay.wallet.callback import CALLBACK_TAG, Callbacks
from tests.support.fakes import FakeResults
from tests.support.recording_log import RecordingLog

UUIDS = [f"0b7b3c0e-8a8e-4d3b-9a55-0c2f3e4d5a{i:02d}" for i in range(5)]


def callbacks(results: FakeResults, *, tries: int = 3, batch_size: int = 1) -> tuple[Callbacks, RecordingLog]:
    log = RecordingLog()
    return Callbacks(
        results, Metrics("wallet"), tries=tries, backoff=0.001, batch_size=batch_size, batch_linger=0.05, log=log
    ), log


def test_results_arriving_together_share_one_request_each_with_its_own_answer() -> None:
    results = FakeResults([[Outcome.APPLIED, Outcome.REPEATED, Outcome.APPLIED, Outcome.CONFLICT, Outcome.APPLIED]])
    cb, _ = callbacks(results, tries=1, batch_size=10)

    async def all_five() -> list[object]:
        return list(await asyncio.gather(*(cb.deliver(Result(u, True)) for u in UUIDS)))

    answers = asyncio.run(all_five())
    assert answers == [Outcome.APPLIED, Outcome.REPEATED, Outcome.APPLIED, Outcome.CONFLICT, Outcome.APPLIED]
    assert [len(r) for r in results.requests] == [5]


def test_a_retryable_failure_is_tried_again_and_logged_waiting() -> None:
    down = Failure("ConnectionRefusedError: no", unreachable=True)
    results = FakeResults([[down], [down], [Outcome.APPLIED]])
    cb, log = callbacks(results)
    assert asyncio.run(cb.deliver(Result(UUIDS[0], False))) is Outcome.APPLIED
    lines = log.tagged(CALLBACK_TAG)
    assert [(x["attempt"], x["will_retry"], x.get("waiting")) for x in lines] == [(1, True, True), (2, True, True)]
    assert cb.orchestrator.reached


def test_the_last_failure_comes_back_with_its_reason() -> None:
    cb, _ = callbacks(FakeResults(Failure("HTTP 503: busy", unreachable=True)), tries=2)
    assert asyncio.run(cb.deliver(Result(UUIDS[0], True))) == Failure("HTTP 503: busy", unreachable=True)


def test_a_refusal_is_not_retried() -> None:
    results = FakeResults(Outcome.UNKNOWN)
    cb, log = callbacks(results)
    assert asyncio.run(cb.deliver(Result(UUIDS[0], True))) is Outcome.UNKNOWN
    assert len(results.requests) == 1
    (line,) = log.tagged(CALLBACK_TAG)
    assert line["will_retry"] is False and "unknown" in line["reason"] and "waiting" not in line


def test_a_conflict_names_what_is_stored() -> None:
    cb, log = callbacks(FakeResults(Outcome.CONFLICT))
    assert asyncio.run(cb.deliver(Result(UUIDS[0], True))) is Outcome.CONFLICT
    (line,) = log.tagged(CALLBACK_TAG)
    assert line["reason"] == "batch outcome conflict (stored FAILED)" and line["will_retry"] is False


def test_a_send_that_raises_is_an_unreachable_orchestrator() -> None:
    class Raising(FakeResults):
        async def send(self, results: list[Result]) -> list[Outcome | Failure]:
            raise RuntimeError("boom")

    cb, log = callbacks(Raising([]), tries=1, batch_size=10)
    answer = asyncio.run(cb.deliver(Result(UUIDS[0], True)))
    assert isinstance(answer, Failure) and answer.unreachable and "RuntimeError: boom" in answer.reason
    assert log.tagged(CALLBACK_TAG)[0]["waiting"] is True


def test_the_callback_session_resolves_the_orchestrator_at_each_new_connection() -> None:
    """No DNS cache on the wallet's callback session (as on the orchestrator's nudge): with
    aiohttp's default 10 s cache, a callback opened just after the orchestrator moved to another
    address during a rollout went to the old one, which already refused it (a played-chart CI run
    logged `[FAILED TO CALLBACK FROM WALLET]` so)."""
    import random

    from chancepay.core.config import Settings
    from chancepay.wallet.main import _callbacks

    async def go() -> bool:
        _, http = _callbacks(Settings.from_env({}), Metrics("wallet"), random.Random(0))
        try:
            return bool(http.connector is not None and http.connector.use_dns_cache)
        finally:
            await http.close()

    assert asyncio.run(go()) is False
