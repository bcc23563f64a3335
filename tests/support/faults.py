"""Faults and fakes the fault tests inject: raw (corrupt, unsigned) messages, a callback stub in
front of the orchestrator, a stopped RabbitMQ application, the soak's seeded randomness."""

from __future__ import annotations

import contextlib as _contextlib
import json
import os
import random as _random
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler as _BaseHandler
from http.server import ThreadingHTTPServer as _ThreadingHTTPServer
from typing import Any

import httpx
from pamqp import commands as spec

from chancepay.core import signing, topology
from tests.support import servers as servers_mod
from tests.support.env import MESSAGE_KEY, port_answers, rabbitmqctl, wait_until
from tests.support.roles import Stack


def publish_raw(stack: Stack, body: bytes, message_id: str = "raw", key: str | None = MESSAGE_KEY) -> None:
    """Publish `body` as the scanner would (signed with `key`; None = unsigned)."""
    headers = {signing.HEADER: signing.sign(body, key)} if key else {}

    async def publish(channel):
        await channel.confirm_delivery()
        await topology.declare(channel)
        return await channel.basic_publish(
            body,
            exchange=topology.EXCHANGE,
            routing_key=topology.ROUTING_KEY,
            properties=spec.Basic.Properties(
                delivery_mode=2, message_id=message_id, content_type="application/json", headers=headers
            ),
            mandatory=True,
        )

    assert isinstance(stack.env.amqp(publish), spec.Basic.Ack)


def _callback_uuids(path: str, body: bytes) -> list[str]:
    """The payments one result callback carries: the uuid in a single-result path, or every
    item's uuid in a batch body."""
    parts = path.strip("/").split("/")
    if len(parts) == 4 and parts[:2] == ["internal", "payments"] and parts[3] == "result":
        return [parts[2]]
    try:
        return [str(item["uuid"]) for item in json.loads(body)["results"]]
    except (ValueError, KeyError, TypeError):
        return []


class CallbackStub:
    """A tiny HTTP server on 127.0.0.1 standing between the wallet and the orchestrator.

    It serves both result endpoints: one result per request (/internal/payments/{uuid}/result) and
    the wallet's batches (/internal/payments/results); each call records the payments it carried
    (`uuids`). `behaviour(path, n) -> action` decides each POST, `n` being how many earlier calls
    carried the same payment (for a batch, the most among its payments):
      ("status", code)            answer `code` without forwarding;
      ("forward",)                forward to the orchestrator and answer what it answered;
      ("forward_then_delay", s)   forward (so the orchestrator commits), then hold the answer s seconds.
    Every call is recorded in `calls` (path, action, upstream status, answered status).
    """

    def __init__(self, upstream: str, behaviour: Callable[[str, int], tuple[Any, ...]]) -> None:
        self.upstream = upstream
        self.behaviour = behaviour
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(_BaseHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                uuids = _callback_uuids(self.path, body)
                with stub._lock:
                    # per payment: how many earlier calls carried it (the most among a batch's)
                    n = max((sum(1 for c in stub.calls if u in c["uuids"]) for u in uuids), default=0)
                    record: dict[str, Any] = {"path": self.path, "uuids": uuids, "n": n, "at": time.monotonic()}
                    stub.calls.append(record)
                action = stub.behaviour(self.path, n)
                record["action"] = action[0]
                status, payload = 500, b'{"error": {"code": "stub", "message": "stub"}}'
                if action[0] == "status":
                    status = int(action[1])
                else:
                    try:
                        r = httpx.post(
                            stub.upstream + self.path,
                            content=body,
                            headers={
                                k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")
                            },
                            timeout=10,
                        )
                        status, payload = r.status_code, r.content
                        record["upstream_status"] = status
                    except httpx.HTTPError as exc:
                        record["upstream_error"] = repr(exc)
                        status = 502
                    if action[0] == "forward_then_delay":
                        time.sleep(float(action[1]))
                record["answered"] = status
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    record["answered"] = "client gone"

        self.server = _ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="callback-stub")

    def __enter__(self) -> CallbackStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(c) for c in self.calls]


@_contextlib.contextmanager
def rabbitmq_app_stopped() -> Iterator[None]:
    """`rabbitmqctl stop_app` for the body; ALWAYS `start_app` afterwards and wait until AMQP answers."""
    port = servers_mod.current().amqp_port
    rabbitmqctl("stop_app")
    try:
        yield
    finally:
        rabbitmqctl("start_app")
        wait_until(
            lambda: port_answers("127.0.0.1", port), 120, interval=0.5, what=f"RabbitMQ port {port} after start_app"
        )


def seeded_random(seed: int | None = None) -> tuple[int, _random.Random]:
    seed = int(os.environ.get("CHANCEPAY_SOAK_SEED") or 0) or seed or _random.SystemRandom().randrange(1, 2**31)
    return seed, _random.Random(seed)
