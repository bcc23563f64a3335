"""A steady stream of payments through the real API while a test injects faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.support.roles import Stack


class Payer:
    """Posts payments from a background thread at about `rate` per second (each in its own thread,
    so a stalled API shows as latency, not as fewer requests). Records every outcome.

    url: another orchestrator than the stack's own, or a function giving one per request (a
    client behind a Service). api_key: sent as `Authorization: Bearer` (an API that requires keys,
    e.g. the chart's, CHANCEPAY_ENV=prod). limit: stop after that many payments. retry_for: a payment whose
    request failed in transport or was answered 502/503/504 is sent again with the same
    Idempotency-Key until that many seconds passed (each outcome then records its `attempts`
    and `first_failure`); 0 = one attempt, as before."""

    def __init__(
        self,
        stack: Stack | None,
        rate: float = 5.0,
        timeout: float = 30.0,
        prefix: str = "pay",
        url: str | Callable[[], str] | None = None,
        limit: int | None = None,
        retry_for: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        self.stack = stack
        self.url = url
        self.rate = rate
        self.timeout = timeout
        self.prefix = prefix
        self.limit = limit
        self.retry_for = retry_for
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.results: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._main = threading.Thread(target=self._loop, daemon=True, name="payer")

    def __enter__(self) -> Payer:
        self._main.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._main.is_alive():
            self._main.join(timeout=10)
        for t in list(self._threads):
            t.join(timeout=self.timeout + 5)

    def _base_url(self) -> str:
        if callable(self.url):
            return self.url()
        return self.url or self.stack.orchestrator.url  # type: ignore[union-attr]

    def _attempt(self, i: int) -> dict[str, Any]:
        outcome: dict[str, Any] = {}
        try:
            r = httpx.post(
                self._base_url() + "/payments",
                json={"cusId": f"{self.prefix}-{i}", "amount": f"{1 + i % 500}.{i % 100:02d}"},
                headers={"Idempotency-Key": f"{self.prefix}-{i}", **self.auth},
                timeout=self.timeout,
            )
            outcome["status"] = r.status_code
            try:
                body = r.json()
            except ValueError:
                body = {}
            outcome["uuid"] = body.get("uuid") if r.status_code == 202 else None
            outcome["code"] = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
            outcome["replayed"] = r.headers.get("Idempotent-Replayed") == "true"
        except httpx.HTTPError as exc:
            outcome["status"] = None
            outcome["error"] = type(exc).__name__
        return outcome

    def _one(self, i: int) -> None:
        started = time.monotonic()
        outcome: dict[str, Any] = {"i": i, "started": started, **self._attempt(i)}
        attempts = 1
        while (
            self.retry_for
            and outcome["status"] in (None, 502, 503, 504)
            and time.monotonic() - started < self.retry_for
        ):
            outcome.setdefault("first_failure", outcome.get("status") or outcome.get("error"))
            time.sleep(0.2)
            outcome.update(self._attempt(i))
            attempts += 1
        outcome["attempts"] = attempts
        outcome["elapsed"] = time.monotonic() - started
        with self._lock:
            self.results.append(outcome)

    def _loop(self) -> None:
        i = 0
        start = time.monotonic()
        while not self._stop.is_set() and (self.limit is None or i < self.limit):
            t = threading.Thread(target=self._one, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
            i += 1
            self._stop.wait(max(0.0, start + i / self.rate - time.monotonic()))

    def done(self) -> bool:
        """Every payment of a `limit` sent and answered."""
        return not self._main.is_alive() and all(not t.is_alive() for t in self._threads)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.results)

    @property
    def accepted(self) -> list[str]:
        return [r["uuid"] for r in self.snapshot() if r.get("status") == 202 and r.get("uuid")]
