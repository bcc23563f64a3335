"""A steady stream of payments through the real API while a test injects faults."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx

from tests.support.roles import Stack


class Payer:
    """Posts payments from a background thread at about `rate` per second (each in its own thread,
    so a stalled API shows as latency, not as fewer requests). Records every outcome."""

    def __init__(self, stack: Stack, rate: float = 5.0, timeout: float = 30.0, prefix: str = "pay",
                 url: str | None = None) -> None:
        self.stack = stack
        self.url = url  # another orchestrator than the stack's own
        self.rate = rate
        self.timeout = timeout
        self.prefix = prefix
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

    def _one(self, i: int) -> None:
        started = time.monotonic()
        outcome: dict[str, Any] = {"i": i, "started": started}
        try:
            r = httpx.post(
                (self.url or self.stack.orchestrator.url) + "/payments",
                json={"cusId": f"{self.prefix}-{i}", "amount": f"{1 + i % 500}.{i % 100:02d}"},
                headers={"Idempotency-Key": f"{self.prefix}-{i}"},
                timeout=self.timeout,
            )
            outcome["status"] = r.status_code
            try:
                body = r.json()
            except ValueError:
                body = {}
            outcome["uuid"] = body.get("uuid") if r.status_code == 202 else None
            outcome["code"] = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        except httpx.HTTPError as exc:
            outcome["status"] = None
            outcome["error"] = type(exc).__name__
        outcome["elapsed"] = time.monotonic() - started
        with self._lock:
            self.results.append(outcome)

    def _loop(self) -> None:
        i = 0
        start = time.monotonic()
        while not self._stop.is_set():
            t = threading.Thread(target=self._one, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
            i += 1
            self._stop.wait(max(0.0, start + i / self.rate - time.monotonic()))

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.results)

    @property
    def accepted(self) -> list[str]:
        return [r["uuid"] for r in self.snapshot() if r.get("status") == 202 and r.get("uuid")]
