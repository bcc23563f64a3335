"""The orchestrator's HTTP API (see CONTRACT.md "HTTP API")."""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chancepay.core import migrations
from chancepay.core.codec import InvalidField, InvalidPayload, parse_uuid, strict_json_loads
from chancepay.core.config import Settings
from chancepay.core.crash import CrashPoints
from chancepay.core.db import Database, DatabaseUnavailable
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
from chancepay.core.payment import MissingFields, UnknownFields, parse_details
from chancepay.orchestrator.openapi import OPENAPI
from chancepay.orchestrator.service import Finalized, FinalizeOutcome, IdempotencyKeyReused, PaymentService

MAX_BODY_BYTES = 16 * 1024
# Items in one POST /internal/payments/results (about 62 bytes each: 200 fit the body limit).
MAX_RESULTS = 200


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


def _resources(request: Request) -> Resources:
    resources: Resources = request.app.state.orchestrator
    return resources


async def create_payment(request: Request) -> Response:
    r = _resources(request)
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
        payment, replayed = await r.service.create(details, key)
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
    uuid = _path_uuid(request)
    payment = await _resources(request).service.get(uuid)
    if payment is None:
        raise ApiError(404, "not_found", f"no payment {uuid}")
    return JSONResponse(payment.as_json())


def _record_finalized(r: Resources, item: Finalized, succeed: bool) -> None:
    """Log and count one finalization outcome (single or batched callback alike)."""
    log = get_logger()
    with bound(uuid=item.uuid):
        if item.outcome is FinalizeOutcome.UNKNOWN:
            log.warning("result for an unknown payment", succeed=succeed)
        elif item.outcome is FinalizeOutcome.CONFLICT:
            assert item.payment is not None
            log.error("[FAILED TO FINALIZE: RESULT CONFLICT]", stored=item.payment.succeed, received=succeed)
        elif item.outcome is FinalizeOutcome.APPLIED:
            assert item.payment is not None
            r.metrics.payments_finalized.labels(result="succeeded" if succeed else "failed").inc()
            if item.latency is not None:
                r.metrics.payment_e2e_seconds.observe(item.latency)
            log.info("payment finalized", status=item.payment.status.value)


async def post_result(request: Request) -> Response:
    r = _resources(request)
    require_bearer(request, r.settings.internal_token)
    uuid = _path_uuid(request)
    doc = await _read_json_object(request)
    if set(doc) != {"succeed"} or not isinstance(doc["succeed"], bool):
        raise ApiError(422, "invalid_field", 'the body must be exactly {"succeed": true|false}')
    succeed: bool = doc["succeed"]
    item = await r.service.finalize(uuid, succeed)
    _record_finalized(r, item, succeed)
    if item.outcome is FinalizeOutcome.UNKNOWN:
        raise ApiError(404, "not_found", f"no payment {uuid}")
    payment = item.payment
    assert payment is not None
    if item.outcome is FinalizeOutcome.CONFLICT:
        raise ApiError(
            409, "result_conflict", f"payment {uuid} is already {payment.status.value}; the row is unchanged"
        )
    return JSONResponse({"uuid": uuid, "status": payment.status.value})


def parse_results(doc: dict[str, Any]) -> list[tuple[str, bool]]:
    """The body of POST /internal/payments/results: {"results": [{"uuid", "succeed"}, ...]},
    1..MAX_RESULTS items, each uuid once. Raises ApiError 422 naming the first bad item."""
    items = doc.get("results")
    if set(doc) != {"results"} or not isinstance(items, list) or not 1 <= len(items) <= MAX_RESULTS:
        raise ApiError(422, "invalid_field",
                       f'the body must be exactly {{"results": [...]}} with 1 to {MAX_RESULTS} items')
    results: list[tuple[str, bool]] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"uuid", "succeed"} or not isinstance(item["succeed"], bool):
            raise ApiError(422, "invalid_field",
                           f'results[{i}] must be exactly {{"uuid": "...", "succeed": true|false}}')
        try:
            uuid = parse_uuid(item["uuid"])
        except InvalidField:
            raise ApiError(422, "invalid_field", f"results[{i}].uuid must be a canonical lowercase UUID") from None
        if uuid in seen:
            raise ApiError(422, "duplicate_uuid", f"results[{i}]: {uuid} appears twice in one batch")
        seen.add(uuid)
        results.append((uuid, item["succeed"]))
    return results


async def post_results(request: Request) -> Response:
    """Batched result callbacks: every item finalized in one transaction, write-once, each with
    its own outcome (applied, repeated, conflict, unknown). The batch as a whole answers 200; a
    conflict or an unknown uuid is an item's outcome, not an error of the request."""
    r = _resources(request)
    require_bearer(request, r.settings.internal_token)
    results = parse_results(await _read_json_object(request))
    finalized = await r.service.finalize_many(results)
    r.metrics.result_batch_size.observe(len(results))
    answer = []
    for item, (_, succeed) in zip(finalized, results, strict=True):
        _record_finalized(r, item, succeed)
        answer.append({"uuid": item.uuid, "outcome": item.outcome.value,
                       "status": item.payment.status.value if item.payment else None})
    return JSONResponse({"results": answer})


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


ROUTES = [
    Route("/payments", create_payment, methods=["POST"]),
    Route("/payments/{uuid}", get_payment, methods=["GET"]),
    Route("/internal/payments/{uuid}/result", post_result, methods=["POST"]),
    Route("/internal/payments/results", post_results, methods=["POST"]),
    Route("/openapi.json", openapi, methods=["GET"]),
]


def build_app(settings: Settings, db: Database, metrics: Metrics, crash: CrashPoints) -> Starlette:
    async def ready() -> dict[str, bool]:
        required = migrations.latest(migrations.ORCHESTRATOR)
        return {"database": await db.ping(), "schema": await db.schema_ready(required)}

    async def refresh() -> None:
        await refresh_orchestrator_gauges(db, metrics, settings.scanner_max_attempts)

    # No redirect_slashes: `POST /payments/` would get a bodiless 307 to a URL built from the
    # Host header; a JSON 404 like every other unknown path is the honest answer.
    app = Starlette(routes=[*ROUTES, *health_routes(metrics, ready, refresh)],
                    exception_handlers={**EXCEPTION_HANDLERS, DatabaseUnavailable: db_unavailable})
    app.router.redirect_slashes = False
    app.state.orchestrator = Resources(settings, db, PaymentService(db), metrics, crash)
    app.state.metrics = metrics
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app
