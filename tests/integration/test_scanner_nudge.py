"""The orchestrator nudges the scanner after each commit (orchestrator/nudge.py, POST
/internal/outbox/nudge): with the scanner's poll far longer than the deadline, a payment is
published within it only because of the nudge; without nudges the same payment waits for the poll."""

from __future__ import annotations

import time

import httpx

from tests.support.env import TOKEN, wait_until

LONG_POLL = {"CHANCEPAY_SCANNER_POLL_INTERVAL_SECONDS": "60", "CHANCEPAY_SCANNER_IDLE_MAX_SECONDS": "60"}
DEADLINE = 3.0


def _outbox(stack) -> int:
    return stack.env.orch_sql("SELECT COUNT(*) FROM outbox")[0][0]


def _started(make_stack, **orchestrator: str):
    s = make_stack(**LONG_POLL)
    s.role("scanner").start()
    s.scanner.wait_ready()
    # The scanner's first poll (at start, before any payment) is behind it once it is ready and has
    # polled: from here on it sleeps 60 s unless nudged.
    wait_until(lambda: s.scanner.events("scanner started"), 30, what="scanner started")
    s.role("orchestrator", **orchestrator).start()
    s.orchestrator.wait_ready()
    return s


def test_a_payment_is_published_at_once_because_the_orchestrator_nudges_the_scanner(make_stack) -> None:
    s = _started(make_stack)
    for _ in range(3):  # each one brings its own nudge (the scanner rests 60 s after each)
        assert s.pay().status_code == 202
        wait_until(lambda: _outbox(s) == 0, DEADLINE, interval=0.02, what="the nudged scanner published the row")
    assert s.scanner.metric("chancepay_outbox_published_total") == 3
    assert s.scanner.metric("chancepay_scanner_nudges_total") >= 3
    assert s.orchestrator.metric("chancepay_scanner_nudge_failures_total") == 0


def test_without_nudges_the_payment_waits_for_the_scanners_poll(make_stack) -> None:
    s = _started(make_stack, CHANCEPAY_SCANNER_URL="")
    assert s.pay().status_code == 202
    time.sleep(DEADLINE)  # the control of the test above: the same window, no nudge, nothing published
    assert _outbox(s) == 1
    assert s.scanner.metric("chancepay_scanner_nudges_total") == 0
    # A nudge by hand, as the orchestrator sends it, and the row goes at once.
    r = httpx.post(s.scanner.url + "/internal/outbox/nudge", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert r.status_code == 204
    wait_until(lambda: _outbox(s) == 0, DEADLINE, interval=0.02, what="published after the nudge")


def test_the_nudge_needs_the_internal_token_and_a_scanner_down_fails_no_payment(make_stack) -> None:
    s = _started(make_stack)
    r = httpx.post(s.scanner.url + "/internal/outbox/nudge", headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert s.scanner.metric("chancepay_scanner_nudges_total") == 0
    s.scanner.stop(timeout=30)

    def failures_after_a_payment() -> float:
        assert s.pay().status_code == 202  # the failed nudge is not on the 202's path
        return s.orchestrator.metric("chancepay_scanner_nudge_failures_total")

    # At least two failed nudges (nudges coalesce: a payment each until two were counted), so that
    # logging every failure, not once per run of them, would show as a second line.
    wait_until(lambda: failures_after_a_payment() >= 2, 10, interval=0.1, what="two nudge failures counted")
    assert len(s.orchestrator.events("[FAILED TO NUDGE SCANNER]")) == 1, "logged once per run of failures"
