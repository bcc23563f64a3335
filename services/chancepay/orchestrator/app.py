"""The orchestrator's HTTP API (see CONTRACT.md "HTTP API")."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chancepay.core import migrations
from chancepay.core.clients import NO_CLIENT, Client, KeyCache, LookupsThrottled, RateLimiter, bearer
from chancepay.core.codec import InvalidField, InvalidPayload, parse_uuid, strict_json_loads
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database, DatabaseUnavailable, Overloaded
from chancepay.core.gauges import refresh_orchestrator_gauges
from chancepay.core.http import (
    EXCEPTION_HANDLERS,
    ApiError,
    JSONResponse,
    LatencyMiddleware,
    health_routes,
    require_bearer,
)
from chancepay.core.logging import bound, get_logger
from chancepay.core.metrics import Metrics
from chancepay.core.payment import (
    InvalidResults,
    MissingFields,
    Outcome,
    Result,
    UnknownFields,
    dump_outcomes,
    parse_details,
    parse_result,
    parse_results,
)
from chancepay.orchestrator.openapi import OPENAPI
from chancepay.orchestrator.service import IdempotencyKeyReused, PaymentService

MAX_BODY_BYTES = 16 * 1024


def _check_json_content_type(request: Request) -> None:
    media_type, _, params = request.headers.get("content-type", "").partition(";")
    if media_type.strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "Content-Type must be application/json")
    charset = params.strip().lower()
    if charset and charset.replace(" ", "") not in ("charset=utf-8", "charset=utf8"):
        raise ApiError(415, "unsupported_media_type", "the only accepted charset is utf-8")


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
        raise ApiError(413, "body_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "body_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_json_object(request: Request) -> dict[str, Any]:
    _check_json_content_type(request)
    raw = await _read_body(request)
    try:
        doc = strict_json_loads(raw)
    except InvalidPayload as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return doc


def _path_uuid(request: Request) -> str:
    try:
        return parse_uuid(request.path_params["uuid"])
    except InvalidField:
        raise ApiError(400, "invalid_uuid", "the path must hold a canonical lowercase UUID") from None


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 visible ASCII characters")
    return key


@dataclasses.dataclass(frozen=True)
class Resources:
    """What the handlers use, on app.state.orchestrator (built once per process by build_app)."""

    settings: Settings
    db: Database
    service: PaymentService
    metrics: Metrics
    crash: CrashPoints
    keys: KeyCache | None = None  # None: CHANCEPAY_API_AUTH=off, the public API is open
    limiter: RateLimiter | None = None


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.orchestrator
    return resources


async def _client(request: Request, r: Resources) -> Client | None:
    """The caller of a public route (CONTRACT.md "Clients"), None with the API open: a missing,
    unknown or revoked key is 401, a client over its rate is 429; either before anything is read."""
    if r.keys is None:
        return None
    try:
        client = await r.keys.client(bearer(request.headers.get("authorization")))
    except LookupsThrottled as exc:  # a flood of unknown key ids: no database read for them
        raise ApiError(429, "rate_limited", str(exc), {"Retry-After": str(exc.retry_after)}) from None
    if client is None:
        message = "a valid API key is required (Authorization: Bearer <key>)"
        raise ApiError(401, "unauthenticated", message, {"WWW-Authenticate": "Bearer"})
    request.state.client = client.name
    wait = r.limiter.retry_after(client) if r.limiter else 0
    if wait:
        raise ApiError(429, "rate_limited", f"client {client.name} is over its rate limit", {"Retry-After": str(wait)})
    return client


def _counted(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A public route, counted per client and answer (chancepay_api_requests_total{client,code};
    the client's name, never a uuid: bounded by the operators' `clients add`)."""

    async def counted(request: Request) -> Response:
        status = 500
        try:
            response = await handler(request)
            status = response.status_code
            return response
        except ApiError as exc:
            status = exc.status
            raise
        except DatabaseUnavailable:
            status = 503
            raise
        finally:
            client = getattr(request.state, "client", "none")
            _resources(request).metrics.api_requests.labels(client=client, code=str(status)).inc()

    return counted


async def create_payment(request: Request) -> Response:
    r = _resources(request)
    client = await _client(request, r)
    key = _idempotency_key(request)
    doc = await _read_json_object(request)
    try:
        details = parse_details(doc)
    except MissingFields as exc:
        raise ApiError(422, "missing_field", exc.message) from None
    except UnknownFields as exc:
        raise ApiError(422, "unknown_field", exc.message) from None
    except InvalidField as exc:
        raise ApiError(422, "invalid_field", str(exc)) from None
    try:
        payment, replayed = await r.service.create(details, key, client.id if client else NO_CLIENT)
    except IdempotencyKeyReused:
        raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different body") from None
    log = get_logger()
    with bound(uuid=payment.uuid):
        if replayed:
            log.info("idempotent replay", idempotency_key=key)
        else:
            r.metrics.payments_created.inc()
            log.info("payment accepted", **{k: str(v) for k, v in details.items()})
            r.crash.hit("orchestrator.after_commit")
    headers = {"Location": f"/payments/{payment.uuid}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(payment.accepted_json(), status_code=202, headers=headers)


async def get_payment(request: Request) -> Response:
    r = _resources(request)
    client = await _client(request, r)
    uuid = _path_uuid(request)
    payment = await r.service.get(uuid, client.id if client else None)  # another client's: 404
    if payment is None:
        raise ApiError(404, "not_found", f"no payment {uuid}")
    return JSONResponse(payment.as_json())


async def _read_results(request: Request, parse: Callable[[dict[str, Any]], Result | list[Result]]) -> list[Result]:
    doc = await _read_json_object(request)
    try:
        parsed = parse(doc)
    except InvalidResults as exc:
        raise ApiError(422, exc.code, exc.message) from None
    return parsed if isinstance(parsed, list) else [parsed]


async def post_result(request: Request) -> Response:
    """The single-result endpoint of the contract: a batch of one, its outcome answered as the
    HTTP status this endpoint always gave (200 applied or repeated, 409 conflict, 404 unknown)."""
    r = _resources(request)
    require_bearer(request, r.settings.internal_token)
    uuid = _path_uuid(request)
    (item,) = await r.service.finalize(await _read_results(request, lambda doc: parse_result(doc, uuid)))
    if item.outcome is Outcome.UNKNOWN:
        raise ApiError(404, "not_found", f"no payment {uuid}")
    assert item.payment is not None
    if item.outcome is Outcome.CONFLICT:
        raise ApiError(
            409, "result_conflict", f"payment {uuid} is already {item.payment.status.value}; the row is unchanged"
        )
    return JSONResponse({"uuid": uuid, "status": item.payment.status.value})


async def post_results(request: Request) -> Response:
    """Batched result callbacks: every item finalized in one transaction, write-once, each with
    its own outcome (applied, repeated, conflict, unknown). The batch as a whole answers 200; a
    conflict or an unknown uuid is an item's outcome, not an error of the request."""
    r = _resources(request)
    require_bearer(request, r.settings.internal_token)
    results = await _read_results(request, parse_results)
    finalized = await r.service.finalize(results)
    r.metrics.result_batch_size.observe(len(results))
    return JSONResponse(
        dump_outcomes([(f.result.uuid, f.outcome, f.payment.status if f.payment else None) for f in finalized])
    )


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


async def db_unavailable(request: Request, exc: Exception) -> Response:
    r = _resources(request)
    r.metrics.db_unavailable.inc()
    # `"waiting": true` until the database was first reached since start (core/waiting.py).
    get_logger().error("[FAILED TO REACH DATABASE]", path=request.url.path, error=str(exc), **r.db.dependency.fields())
    return JSONResponse(
        {
            "error": {
                "code": "database_unavailable",
                # Honest: if the connection died during COMMIT the outcome is unknown here.
                "message": "the database is unavailable; retry later with the same Idempotency-Key",
            }
        },
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def overloaded(request: Request, exc: Exception) -> Response:
    """No connection free within CHANCEPAY_DB_ACQUIRE_TIMEOUT_SECONDS while the database answers:
    shed the request (nothing written), tell the client when to come back."""
    _resources(request).metrics.api_overloaded.inc()
    message = "the API is overloaded; retry later with the same Idempotency-Key"
    return JSONResponse(
        {"error": {"code": "overloaded", "message": message}},
        status_code=503,
        headers={"Retry-After": "1"},
    )


ROUTES = [
    Route("/payments", _counted(create_payment), methods=["POST"]),
    Route("/payments/{uuid}", _counted(get_payment), methods=["GET"]),
    Route("/internal/payments/{uuid}/result", post_result, methods=["POST"]),
    Route("/internal/payments/results", post_results, methods=["POST"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]


def build_app(
    settings: Settings,
    db: Database,
    metrics: Metrics,
    crash: CrashPoints,
    on_commit: Callable[[], None] = lambda: None,
) -> Starlette:
    async def ready() -> dict[str, bool]:
        required = migrations.latest(migrations.ORCHESTRATOR)
        return {"database": await db.ping(), "schema": await db.schema_ready(required)}

    service = PaymentService(
        db,
        metrics,
        crash=crash,
        group_size=settings.api_group_size,
        group_linger=settings.api_group_linger,
        on_commit=on_commit,
    )

    async def refresh() -> None:
        metrics.api_group_waiting.set(service.group.waiting if service.group else 0)
        await refresh_orchestrator_gauges(db, metrics, settings.scanner_max_attempts)

    # No redirect_slashes: `POST /payments/` would get a bodiless 307 to a URL built from the
    # Host header; a JSON 404 like every other unknown path is the honest answer.
    app = Starlette(
        routes=[*ROUTES, *health_routes(metrics, ready, refresh)],
        exception_handlers={**EXCEPTION_HANDLERS, DatabaseUnavailable: db_unavailable, Overloaded: overloaded},
    )
    app.router.redirect_slashes = False
    keys, limiter = None, None
    if settings.api_auth_required:
        keys = KeyCache(db, settings.api_key_cache_seconds)
        limiter = RateLimiter(settings.api_client_rate, settings.api_client_burst)
    app.state.orchestrator = Resources(settings, db, service, metrics, crash, keys, limiter)
    app.state.metrics = metrics
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app
