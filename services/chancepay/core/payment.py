"""What a payment is, in one place: its fields and their rules, its status, its message form,
its row form, and the JSON Schema of each field (the OpenAPI document is built from it); and its
result, the other half: `Result` (what the wallet decided), `Outcome` (what finalizing it did),
the batch limit, the result bodies both sides write and read, the column mapping of `succeed`,
and the result schemas.

Adding a field to a payment (README "Adding a field to a payment"):
1. declare it in FIELDS below: wire name, column, parser, JSON Schema;
2. add a migration (core/migrations.py) that adds its column to `request` and `inbox`;
3. the tests.
The API's request body, the message the scanner publishes and the wallet parses, the INSERTs and
SELECTs (core/sql.py builds their column lists from COLUMNS) and the OpenAPI document follow
from the declaration; tests/unit/test_payment.py proves it on a scratch copy.

Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from chancepay.core.codec import (
    AMOUNT_STR_RE,
    CUS_ID_RE,
    UUID_RE,
    InvalidField,
    InvalidPayload,
    format_amount,
    parse_amount,
    parse_cus_id,
    parse_uuid,
    strict_json_loads,
)


def _anchored(pattern: str) -> str:
    return f"^{pattern}$"


@dataclasses.dataclass(frozen=True)
class Field:
    """One thing a client says about a payment."""

    name: str  # the Python key and the column name in `request` and `inbox`
    wire: str  # the JSON key, in the API and in the message
    parse: Callable[[Any], Any]  # a JSON value -> the value; raises InvalidField(wire, ...)
    dump: Callable[[Any], Any]  # the value -> its JSON form (API answers and the message)
    from_column: Callable[[Any], Any]  # what the database driver returns -> the value
    schema: Mapping[str, Any]  # JSON Schema of what a client may send (OpenAPI)
    column_type: str  # the column's SQL type, for the migration that adds it
    description: str = ""
    answer_schema: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"type": "string"})  # dumped


FIELDS: tuple[Field, ...] = (
    Field(
        "cus_id",
        "cusId",
        parse_cus_id,
        str,
        str,
        {"type": "string", "pattern": _anchored(CUS_ID_RE.pattern)},
        "VARCHAR(64) CHARACTER SET ascii NOT NULL",
        "The paying customer: 1-64 characters of A-Z a-z 0-9 _ . : -",
    ),
    Field(
        "amount",
        "amount",
        parse_amount,
        format_amount,
        Decimal,
        {
            "oneOf": [
                # greater than zero: the pattern, and not all zeros ("0", "00.00")
                {"type": "string", "pattern": _anchored(AMOUNT_STR_RE.pattern), "not": {"pattern": "^0+(\\.0+)?$"}},
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e16, "multipleOf": 0.01},
            ]
        },
        "DECIMAL(18,2) NOT NULL",
        "Exact decimal > 0, at most two fraction digits, below 10^16",
    ),
)
COLUMNS: tuple[str, ...] = tuple(f.name for f in FIELDS)
WIRE_NAMES: frozenset[str] = frozenset(f.wire for f in FIELDS)
UUID_SCHEMA: dict[str, Any] = {"type": "string", "pattern": _anchored(UUID_RE.pattern)}

Details = Mapping[str, Any]  # field name -> parsed value, for every field in FIELDS


class Status(enum.Enum):
    """The three-state result: PENDING until the wallet's result is stored, then final."""

    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @classmethod
    def of(cls, succeed: bool | None) -> Status:
        return cls.PENDING if succeed is None else cls.SUCCEEDED if succeed else cls.FAILED


class MissingFields(InvalidField):
    def __init__(self, names: list[str]) -> None:
        super().__init__("*", f"missing field(s): {', '.join(names)}")
        self.names = names


class UnknownFields(InvalidField):
    def __init__(self, names: list[str]) -> None:
        super().__init__("*", f"unknown field(s): {', '.join(names)}")
        self.names = names


def parse_details(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A client's JSON object -> details. Missing keys, then unknown keys, then each field's own
    rule; raises MissingFields, UnknownFields or the field's InvalidField."""
    missing = WIRE_NAMES - doc.keys()
    if missing:
        raise MissingFields(sorted(missing))
    unknown = doc.keys() - WIRE_NAMES
    if unknown:
        raise UnknownFields(sorted(unknown))
    return {f.name: f.parse(doc[f.wire]) for f in FIELDS}


def dump_details(details: Details) -> dict[str, Any]:
    return {f.wire: f.dump(details[f.name]) for f in FIELDS}


def details_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The declared fields of a row read by column name (see core/db.py fetchrow)."""
    return {f.name: f.from_column(row[f.name]) for f in FIELDS}


def column_values(details: Details) -> tuple[Any, ...]:
    """The details in COLUMNS order, for the statements core/sql.py builds from COLUMNS."""
    return tuple(details[name] for name in COLUMNS)


# --------------------------------------------------------------------------- the message
@dataclasses.dataclass(frozen=True)
class PaymentMessage:
    """What the scanner publishes and the wallet consumes: {"uuid": ..., <every field>}."""

    uuid: str
    details: Details

    def encode(self) -> bytes:
        return json.dumps({"uuid": self.uuid, **dump_details(self.details)}, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, body: bytes) -> PaymentMessage:
        """The wallet's parser: anything but exactly {uuid, <fields>}, each valid, is corrupt."""
        doc = strict_json_loads(body)
        if not isinstance(doc, dict):
            raise InvalidPayload("message is not a JSON object")
        expected = WIRE_NAMES | {"uuid"}
        if set(doc) != expected:
            raise InvalidPayload(f"message fields are {sorted(doc)}, expected {', '.join(sorted(expected))}")
        try:
            return cls(parse_uuid(doc["uuid"]), {f.name: f.parse(doc[f.wire]) for f in FIELDS})
        except InvalidField as exc:
            raise InvalidPayload(str(exc)) from None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PaymentMessage:
        return cls(str(row["uuid"]), details_from_row(row))


# --------------------------------------------------------------------------- the stored payment
@dataclasses.dataclass(frozen=True)
class Payment:
    uuid: str
    details: Details
    succeed: bool | None
    created_at: dt.datetime | None  # None only in the 202 answer, which does not show it
    finalized_at: dt.datetime | None

    @property
    def status(self) -> Status:
        return Status.of(self.succeed)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Payment:
        """A `request` row read by column name (core/sql.py SELECT_REQUEST)."""
        return cls(
            str(row["uuid"]),
            details_from_row(row),
            succeed_from_column(row["succeed"]),
            row["created_at"],
            row["finalized_at"],
        )

    def message(self) -> PaymentMessage:
        return PaymentMessage(self.uuid, self.details)

    def accepted_json(self) -> dict[str, Any]:
        """The 202 answer to POST /payments."""
        return {"uuid": self.uuid, **dump_details(self.details), "status": self.status.value}

    def as_json(self) -> dict[str, Any]:
        """GET /payments/{uuid}."""
        return {
            **self.accepted_json(),
            "createdAt": _iso(self.created_at) if self.created_at else None,
            "finalizedAt": _iso(self.finalized_at) if self.finalized_at else None,
        }


def _iso(value: dt.datetime) -> str:
    return value.replace(tzinfo=dt.UTC).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- the result
# Results in one batch (POST /internal/payments/results; about 62 bytes each, so 200 fit the
# 16 KiB body limit). CHANCEPAY_CALLBACK_BATCH_SIZE may not exceed it.
MAX_RESULTS = 200


def succeed_from_column(value: Any) -> bool | None:
    """The nullable `succeed` column (request, inbox, pending_callback) as the driver returns it
    (None, 0 or 1) -> None while pending, else the result."""
    return None if value is None else bool(value)


@dataclasses.dataclass(frozen=True)
class Result:
    """What the wallet decided for one payment; what the orchestrator finalizes write-once."""

    uuid: str
    succeed: bool


class Outcome(enum.Enum):
    """What finalizing a Result did. Every outcome is an answer: none gets better by retrying
    (a failure to get an answer is not an outcome: see wallet/policy.py Failure)."""

    APPLIED = "applied"  # this call finalized the request
    REPEATED = "repeated"  # already final with the same value
    CONFLICT = "conflict"  # already final with the other value; nothing changed
    UNKNOWN = "unknown"  # no such request

    @property
    def settles(self) -> bool:
        """The orchestrator holds the result as sent: the wallet's delivery is done. Conflict and
        unknown are refusals: the delivery ends too, but someone must look."""
        return self in (Outcome.APPLIED, Outcome.REPEATED)

    @property
    def retry_helps(self) -> bool:
        """Sending the same result again could change the answer: never, the row is write-once."""
        return False


@dataclasses.dataclass(frozen=True)
class Failure:
    """No outcome for a result (core/results.py): why, and whether a later try may get one."""

    reason: str
    retry_helps: bool = True
    unreachable: bool = False  # no answer or 5xx: the orchestrator (or its database) is not up

    @classmethod
    def of_status(cls, status: int | None, reason: str) -> Failure:
        """An HTTP answer that is not an outcome; None: no answer at all. Retrying helps after no
        answer, a 5xx, a 401 (a token rotation one step behind), a 408 or a 429."""
        if status is None or status >= 500:
            return cls(reason, retry_helps=True, unreachable=True)
        return cls(reason, retry_helps=status in (401, 408, 429))

    @classmethod
    def no_answer(cls, exc: BaseException) -> Failure:
        return cls.of_status(None, f"{type(exc).__name__}: {exc}")


Answer = Outcome | Failure  # what sending one result came to


class InvalidResults(InvalidField):
    """A result body the orchestrator refuses (422); `code` is the error code it answers."""

    def __init__(self, message: str, code: str = "invalid_field") -> None:
        super().__init__("results", message)
        self.code = code


def parse_result(doc: Mapping[str, Any], uuid: str) -> Result:
    """POST /internal/payments/{uuid}/result's body: exactly {"succeed": bool}."""
    if set(doc) != {"succeed"} or not isinstance(doc["succeed"], bool):
        raise InvalidResults('the body must be exactly {"succeed": true|false}')
    return Result(uuid, doc["succeed"])


def parse_results(doc: Mapping[str, Any]) -> list[Result]:
    """POST /internal/payments/results' body: {"results": [{"uuid", "succeed"}, ...]}, 1 to
    MAX_RESULTS items, each uuid once. Raises InvalidResults naming the first bad item."""
    items = doc.get("results")
    if set(doc) != {"results"} or not isinstance(items, list) or not 1 <= len(items) <= MAX_RESULTS:
        raise InvalidResults(f'the body must be exactly {{"results": [...]}} with 1 to {MAX_RESULTS} items')
    results: list[Result] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"uuid", "succeed"} or not isinstance(item["succeed"], bool):
            raise InvalidResults(f'results[{i}] must be exactly {{"uuid": "...", "succeed": true|false}}')
        try:
            uuid = parse_uuid(item["uuid"])
        except InvalidField:
            raise InvalidResults(f"results[{i}].uuid must be a canonical lowercase UUID") from None
        if uuid in seen:
            raise InvalidResults(f"results[{i}]: {uuid} appears twice in one batch", "duplicate_uuid")
        seen.add(uuid)
        results.append(Result(uuid, item["succeed"]))
    return results


def dump_results(results: Sequence[Result]) -> bytes:
    """The wallet's batch body (parse_results reads it)."""
    return json.dumps(
        {"results": [{"uuid": r.uuid, "succeed": r.succeed} for r in results]}, separators=(",", ":")
    ).encode()


def dump_outcomes(outcomes: Sequence[tuple[str, Outcome, Status | None]]) -> dict[str, Any]:
    """The orchestrator's answer to a batch: (uuid, outcome, stored status or None if unknown)
    per item, in the order sent."""
    return {
        "results": [
            {"uuid": uuid, "outcome": outcome.value, "status": status.value if status else None}
            for uuid, outcome, status in outcomes
        ]
    }


def load_outcomes(body: bytes, sent: Sequence[Result]) -> list[Outcome]:
    """The wallet's reading of dump_outcomes' answer to the batch `sent`; InvalidPayload if it is
    not one known outcome per result sent, in the order sent."""
    try:
        items = json.loads(body)["results"]
        if [item["uuid"] for item in items] != [r.uuid for r in sent]:
            raise ValueError("the outcomes do not match the results sent")
        return [Outcome(item["outcome"]) for item in items]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidPayload(f"unreadable batch answer: {exc}") from None


def inbox_json(uuid: str, succeed: bool | None) -> dict[str, Any]:
    """The wallet's GET /internal/inbox/{uuid} answer (the reconciler reads it with inbox_succeed)."""
    return {"uuid": uuid, "succeed": succeed}


def inbox_succeed(doc: Mapping[str, Any]) -> bool | None:
    succeed = doc["succeed"]
    if succeed is not None and not isinstance(succeed, bool):
        raise InvalidPayload(f"inbox answer: succeed is {succeed!r}")
    return succeed


# --------------------------------------------------------------------------- JSON Schemas
def request_schema() -> dict[str, Any]:
    """POST /payments' body."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [f.wire for f in FIELDS],
        "properties": {
            f.wire: {**f.schema, **({"description": f.description} if f.description else {})} for f in FIELDS
        },
    }


def _answer_properties() -> dict[str, Any]:
    return {
        "uuid": {"type": "string", "format": "uuid"},
        **{f.wire: dict(f.answer_schema) for f in FIELDS},
        "status": {"type": "string", "enum": [s.value for s in Status]},
    }


def accepted_schema() -> dict[str, Any]:
    """The 202 answer."""
    return {
        "type": "object",
        "required": ["uuid", *(f.wire for f in FIELDS), "status"],
        "properties": _answer_properties(),
    }


def payment_schema() -> dict[str, Any]:
    """GET /payments/{uuid}."""
    return {
        "type": "object",
        "required": ["uuid", *(f.wire for f in FIELDS), "status", "createdAt", "finalizedAt"],
        "properties": {
            **_answer_properties(),
            "createdAt": {"type": "string", "format": "date-time"},
            "finalizedAt": {"type": ["string", "null"], "format": "date-time"},
        },
    }


_FINAL_STATUS = [Status.SUCCEEDED.value, Status.FAILED.value]


def result_schema() -> dict[str, Any]:
    """POST /internal/payments/{uuid}/result's body."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["succeed"],
        "properties": {"succeed": {"type": "boolean"}},
    }


def result_applied_schema() -> dict[str, Any]:
    """Its 200 answer."""
    return {
        "type": "object",
        "required": ["uuid", "status"],
        "properties": {"uuid": {"type": "string"}, "status": {"type": "string", "enum": _FINAL_STATUS}},
    }


def results_schema() -> dict[str, Any]:
    """POST /internal/payments/results' body."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_RESULTS,
                # Each uuid once (the contract). JSON Schema can say "no two items alike", not "no two
                # items with the same uuid": tests/integration/openapi_hooks.py tells the fuzzer the rest.
                "uniqueItems": True,
                "description": f"1 to {MAX_RESULTS} results, each uuid at most once (422 duplicate_uuid otherwise)",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["uuid", "succeed"],
                    "properties": {"uuid": UUID_SCHEMA, "succeed": {"type": "boolean"}},
                },
            }
        },
    }


def outcomes_schema() -> dict[str, Any]:
    """Its 200 answer (dump_outcomes)."""
    item = {
        "type": "object",
        "required": ["uuid", "outcome", "status"],
        "properties": {
            "uuid": {"type": "string"},
            "outcome": {"type": "string", "enum": [o.value for o in Outcome]},
            "status": {"type": ["string", "null"], "enum": [*_FINAL_STATUS, None]},
        },
    }
    return {"type": "object", "required": ["results"], "properties": {"results": {"type": "array", "items": item}}}
