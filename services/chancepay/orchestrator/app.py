"""The orchestrator's HTTP API (see CONTRACT.md "HTTP API")."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from chancepay.core import sql
from chancepay.core.codec import (
    InvalidField,
    InvalidPayload,
    parse_amount,
    parse_cus_id,
    parse_uuid,
    strict_json_loads,
)
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
from chancepay.orchestrator.openapi import OPENAPI
from chancepay.orchestrator.service import FinalizeOutcome, IdempotencyKeyReused, PaymentService

MAX_BODY_BYTES = 16 * 1024
PAYMENT_FIELDS = {"cusId", "amount"}


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


def build_app(settings: Settings, db: Database, metrics: Metrics, crash: CrashPoints) -> Starlette:
    service = PaymentService(db)
    log = get_logger()

    async def create_payment(request: Request) -> Response:
        key = _idempotency_key(request)
        doc = await _read_json_object(request)
        missing = PAYMENT_FIELDS - doc.keys()
        if missing:
            raise ApiError(422, "missing_field", f"missing field(s): {', '.join(sorted(missing))}")
        unknown = doc.keys() - PAYMENT_FIELDS
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown field(s): {', '.join(sorted(unknown))}")
        try:
            cus_id = parse_cus_id(doc["cusId"])
            amount = parse_amount(doc["amount"])
        except InvalidField as exc:
            raise ApiError(422, "invalid_field", str(exc)) from None
        try:
            payment, replayed = await service.create(cus_id, amount, key)
        except IdempotencyKeyReused:
            raise ApiError(
                422, "idempotency_key_reused", "this Idempotency-Key was used with a different body"
            ) from None
        with bound(uuid=payment.uuid):
            if replayed:
                log.info("idempotent replay", idempotency_key=key)
            else:
                metrics.payments_created.inc()
                log.info("payment accepted", cus_id=cus_id, amount=str(amount))
                crash.hit("orchestrator.after_commit")
        body = payment.as_json()
        headers = {"Location": f"/payments/{payment.uuid}"}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        body = {k: body[k] for k in ("uuid", "cusId", "amount", "status")}
        return JSONResponse(body, status_code=202, headers=headers)

    async def get_payment(request: Request) -> Response:
        uuid = _path_uuid(request)
        payment = await service.get(uuid)
        if payment is None:
            raise ApiError(404, "not_found", f"no payment {uuid}")
        return JSONResponse(payment.as_json())

    async def post_result(request: Request) -> Response:
        require_bearer(request, settings.internal_token)
        uuid = _path_uuid(request)
        doc = await _read_json_object(request)
        if set(doc) != {"succeed"} or not isinstance(doc["succeed"], bool):
            raise ApiError(422, "invalid_field", 'the body must be exactly {"succeed": true|false}')
        succeed: bool = doc["succeed"]
        with bound(uuid=uuid):
            outcome, payment, latency = await service.finalize(uuid, succeed)
            if outcome is FinalizeOutcome.UNKNOWN:
                log.warning("result for an unknown payment", succeed=succeed)
                raise ApiError(404, "not_found", f"no payment {uuid}")
            assert payment is not None
            if outcome is FinalizeOutcome.CONFLICT:
                log.error(
                    "[FAILED TO FINALIZE: RESULT CONFLICT]", stored=payment.succeed, received=succeed
                )
                raise ApiError(
                    409, "result_conflict", f"payment {uuid} is already {payment.status}; the row is unchanged"
                )
            if outcome is FinalizeOutcome.APPLIED:
                metrics.payments_finalized.labels(result="succeeded" if succeed else "failed").inc()
                if latency is not None:
                    metrics.payment_e2e_seconds.observe(latency)
                log.info("payment finalized", status=payment.status)
        return JSONResponse({"uuid": uuid, "status": payment.status})

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    async def ready() -> dict[str, bool]:
        return {"database": await db.ping(), "schema": await db.schema_ready(sql.ORCHESTRATOR_TABLES)}

    async def refresh() -> None:
        await refresh_orchestrator_gauges(db, metrics, settings.scanner_max_attempts)

    async def db_unavailable(request: Request, exc: Exception) -> Response:
        metrics.db_unavailable.inc()
        log.error("[FAILED TO REACH DATABASE]", path=request.url.path, error=str(exc))
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

    routes = [
        Route("/payments", create_payment, methods=["POST"]),
        Route("/payments/{uuid}", get_payment, methods=["GET"]),
        Route("/internal/payments/{uuid}/result", post_result, methods=["POST"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *health_routes(metrics, ready, refresh),
    ]
    app = Starlette(routes=routes, exception_handlers={**EXCEPTION_HANDLERS, DatabaseUnavailable: db_unavailable})
    app.state.metrics = metrics
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app
