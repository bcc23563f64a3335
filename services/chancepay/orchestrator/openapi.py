"""The orchestrator's OpenAPI 3.1 document, served at /openapi.json.

The paths and status codes are written here because they *are* the contract (CONTRACT.md "HTTP
API"): schemathesis fuzzes the API from this document, so every status code the API can answer is
listed. The payment's and the result's schemas come from their declaration (core/payment.py), so
a declared field, the batch limit and the outcomes show here as the API enforces them.
"""

from __future__ import annotations

from typing import Any

from chancepay.core import payment

_ERROR = {"$ref": "#/components/schemas/Error"}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


_UUID_PARAM = {"name": "uuid", "in": "path", "required": True, "schema": payment.UUID_SCHEMA}
# The public routes: an API key when CHANCEPAY_API_AUTH=required, nothing when it is off.
_CLIENT_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}, {}]
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}, "description": "seconds to wait"}}
_CLIENT_ERRORS = {
    "401": _err("CHANCEPAY_API_AUTH=required and the API key is missing, unknown or revoked; nothing written"),
    "429": {**_err("The client is over its rate limit; nothing written"), "headers": _RETRY_AFTER},
    "503": {
        **_err(
            "`overloaded`: no database connection free in time (nothing written); `database_unavailable`: the "
            "database did not answer. Retry after Retry-After with the same Idempotency-Key"
        ),
        "headers": _RETRY_AFTER,
    },
}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "ChancePay orchestrator",
        "version": "1.0.0",
        "description": "Create payments and read their status. A payment is PENDING until the wallet's result arrives.",
    },
    "paths": {
        "/payments": {
            "post": {
                "operationId": "createPayment",
                "summary": "Accept a payment (request row and outbox row in one transaction)",
                "security": _CLIENT_SECURITY,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
                        "description": "Same key and same body: the original payment again "
                        "(Idempotent-Replayed: true). Scoped per API client.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PaymentRequest"}}},
                },
                "responses": {
                    "202": {
                        "description": "Accepted; the payment is PENDING",
                        "headers": {"Location": {"schema": {"type": "string"}}},
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PaymentAccepted"}}},
                        # create -> read -> finalize: how a client (and a stateful fuzzer) follows it
                        "links": {
                            "GetPayment": {"operationId": "getPayment", "parameters": {"uuid": "$response.body#/uuid"}},
                            "PostResult": {"operationId": "postResult", "parameters": {"uuid": "$response.body#/uuid"}},
                        },
                    },
                    "400": _err("Malformed JSON or header"),
                    "413": _err("Body over 16 KiB"),
                    "415": _err("Content-Type is not application/json"),
                    "422": _err("A field is invalid, missing or unknown, or the Idempotency-Key was reused"),
                    **_CLIENT_ERRORS,
                },
            }
        },
        "/payments/{uuid}": {
            "get": {
                "operationId": "getPayment",
                "security": _CLIENT_SECURITY,
                "parameters": [_UUID_PARAM],
                "responses": {
                    "200": {
                        "description": "The payment",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Payment"}}},
                    },
                    "400": _err("Malformed uuid"),
                    "404": _err("Unknown payment, or another API client's"),
                    **_CLIENT_ERRORS,
                },
            }
        },
        "/internal/payments/{uuid}/result": {
            "post": {
                "operationId": "postResult",
                "summary": "The wallet's result callback; finalizes write-once",
                "security": [{"bearer": []}],
                "parameters": [_UUID_PARAM],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Result"}}},
                },
                "responses": {
                    "200": {
                        "description": "Applied, or repeats the stored value",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResultApplied"}}},
                    },
                    "400": _err("Malformed JSON or uuid"),
                    "401": _err("Missing or wrong bearer token"),
                    "404": _err("Unknown payment"),
                    "409": _err("Contradicts the stored result; nothing changed"),
                    "413": _err("Body over 16 KiB"),
                    "415": _err("Content-Type is not application/json"),
                    "422": _err("Body is not {succeed: bool}"),
                    "503": _err("Database unavailable"),
                },
            }
        },
        "/internal/payments/results": {
            "post": {
                "operationId": "postResults",
                "summary": "The wallet's batched result callbacks: every item finalized write-once in one "
                "transaction, each with its own outcome",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ResultBatch"}}},
                },
                "responses": {
                    "200": {
                        "description": "One outcome per item, in the order sent: applied (finalized now), repeated "
                        "(already final with this value), conflict (already final with the other "
                        "value; unchanged), unknown (no such payment)",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ResultBatchOutcomes"}}
                        },
                    },
                    "400": _err("Malformed JSON"),
                    "401": _err("Missing or wrong bearer token"),
                    "413": _err("Body over 16 KiB"),
                    "415": _err("Content-Type is not application/json"),
                    "422": _err(
                        f"Not {{results: [{{uuid, succeed}}]}} with 1 to {payment.MAX_RESULTS} items, or a uuid twice"
                    ),
                    "503": _err("Database unavailable; nothing was finalized"),
                },
            }
        },
        "/healthz": {"get": {"operationId": "healthz", "responses": {"200": {"description": "Process alive"}}}},
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "responses": {"200": {"description": "Database reachable"}, "503": {"description": "Not ready"}},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {"200": {"description": "Prometheus text format", "content": {"text/plain": {}}}},
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer", "description": "CHANCEPAY_INTERNAL_TOKEN (/internal/*)"},
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API client's key (`chancepay clients add NAME`); required when "
                "CHANCEPAY_API_AUTH=required",
            },
        },
        "schemas": {
            "PaymentRequest": payment.request_schema(),
            "PaymentAccepted": payment.accepted_schema(),
            "Payment": payment.payment_schema(),
            "Result": payment.result_schema(),
            "ResultApplied": payment.result_applied_schema(),
            "ResultBatch": payment.results_schema(),
            "ResultBatchOutcomes": payment.outcomes_schema(),
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
        },
    },
}
