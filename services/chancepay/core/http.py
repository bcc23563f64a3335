"""HTTP pieces every role shares: JSON errors, health/readiness/metrics routes, latency middleware."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chancepay.core.errors import ChancePayError
from chancepay.core.logging import get_logger
from chancepay.core.metrics import CONTENT_TYPE, Metrics


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(ChancePayError):
    """An error answered as {"error": {"code", "message"}} with its HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def require_bearer(request: Request, token: str) -> None:
    """/internal/* is for the wallet and the reconciler only: constant-time bearer token check."""
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


AUTH_TAG = "[FAILED TO AUTHORIZE REQUEST]"


def _count_refusal(request: Request, status: int, code: str) -> None:
    """Every 4xx is countable by route and code; a 401/403 also leaves a tagged log line (who,
    where; never the token)."""
    metrics = getattr(request.app.state, "metrics", None)
    route = getattr(request.scope.get("route"), "path", "unmatched")
    if metrics is not None and 400 <= status < 500:
        metrics.http_client_errors.labels(route=route, code=code).inc()
    if status in (401, 403):
        if metrics is not None:
            metrics.http_auth_failures.labels(route=route).inc()
        client = request.client.host if request.client else None
        get_logger().error(
            AUTH_TAG,
            status=status,
            route=route,
            method=request.method,
            client=client,
            reason="missing bearer token" if "authorization" not in request.headers else "wrong token",
        )


async def _api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    _count_refusal(request, exc.status, exc.code)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    _count_refusal(request, exc.status_code, code)
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}) or None)


EXCEPTION_HANDLERS: dict[Any, Any] = {ApiError: _api_error_handler, HTTPException: _http_exception_handler}


def health_routes(
    metrics: Metrics,
    ready: Callable[[], Awaitable[dict[str, bool]]],
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> list[Route]:
    """/healthz: the process is alive. /readyz: every dependency answers. /metrics: refreshed, then rendered."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = await ready()
        ok = all(checks.values())
        body = {"status": "ready" if ok else "unavailable", "checks": checks}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        if refresh is not None:
            await refresh()
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


class LatencyMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware overhead): observes chancepay_http_request_duration_seconds
    labelled by route template, never by raw path (no uuid labels)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.metrics.http_request_seconds.labels(
                route=template, method=scope["method"], status=str(status)
            ).observe(time.perf_counter() - start)
