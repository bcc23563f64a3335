"""Every Prometheus metric ChancePay exports, each declared once, in one place.

A metric is one class attribute of `Metrics`: its name, help, labels and the roles that export it
(a scanner reporting chancepay_payments_created_total 0 would only mislead a dashboard that sums
across pods). Each process builds one `Metrics(role)` (its own registry) at start-up: every
metric is built, so shared code may count on any of them, and only the role's are registered.
Nothing is registered at import time. One process per pod, so no multiprocess mode. No uuid
labels, ever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from chancepay.core.invariants import VIOLATION_KINDS
from chancepay.core.payment import MAX_RESULTS

CONTENT_TYPE: str = CONTENT_TYPE_LATEST  # of Metrics.render()
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# Who exports what. "operator" is `chancepay outbox/dlq/trace` (pushed, like reconcile's).
ROLES = ("orchestrator", "scanner", "wallet", "auditor", "reconcile", "operator")
SERVING = ("orchestrator", "scanner", "wallet")
OUTBOX_READERS = ("orchestrator", "scanner")  # read from the outbox/request tables at scrape time
BROKER_USERS = ("scanner", "wallet")

M = TypeVar("M", Counter, Gauge, Histogram)


class Declared(Generic[M]):
    """One metric's declaration: how to build it, which roles register it, which label values
    exist from the start (so a dashboard sees 0, not no series)."""

    def __init__(self, build: Callable[[], M], roles: tuple[str, ...], preset: dict[str, tuple[str, ...]]) -> None:
        self.build: Callable[[], M] = build
        self.roles = roles
        self.preset = preset
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def create(self) -> M:
        metric: M = self.build()
        for label, values in self.preset.items():
            for value in values:
                metric.labels(**{label: value})
        return metric

    @overload
    def __get__(self, obj: None, owner: type) -> Declared[M]: ...
    @overload
    def __get__(self, obj: Metrics, owner: type) -> M: ...
    def __get__(self, obj: Metrics | None, owner: type) -> Declared[M] | M:
        # Only reached on the class: an instance holds its own built metric under the same name.
        if obj is None:
            return self
        raise AttributeError(self.attr)


def counter(
    name: str,
    doc: str,
    labels: tuple[str, ...] = (),
    *,
    roles: tuple[str, ...],
    preset: dict[str, tuple[str, ...]] | None = None,
) -> Declared[Counter]:
    return Declared(lambda: Counter(name, doc, labels, registry=None), roles, preset or {})


def gauge(name: str, doc: str, *, roles: tuple[str, ...]) -> Declared[Gauge]:
    return Declared(lambda: Gauge(name, doc, registry=None), roles, {})


def gauge_labelled(
    name: str,
    doc: str,
    labels: tuple[str, ...],
    *,
    roles: tuple[str, ...],
    preset: dict[str, tuple[str, ...]] | None = None,
) -> Declared[Gauge]:
    return Declared(lambda: Gauge(name, doc, labels, registry=None), roles, preset or {})


def histogram(
    name: str,
    doc: str,
    labels: tuple[str, ...] = (),
    *,
    roles: tuple[str, ...],
    buckets: tuple[float, ...] = LATENCY_BUCKETS,
) -> Declared[Histogram]:
    return Declared(lambda: Histogram(name, doc, labels, buckets=buckets, registry=None), roles, {})


class Metrics:
    # outbox and pending requests — read from the tables themselves at scrape time
    outbox_depth = gauge("chancepay_outbox_depth", "Rows in the outbox table.", roles=OUTBOX_READERS)
    outbox_oldest_age = gauge(
        "chancepay_outbox_oldest_age_seconds", "Age of the oldest outbox row (database clock).", roles=OUTBOX_READERS
    )
    outbox_exhausted = gauge(
        "chancepay_outbox_exhausted_rows",
        "Outbox rows that reached the attempt limit: kept, no longer retried, need an operator.",
        roles=OUTBOX_READERS,
    )
    payments_pending = gauge(
        "chancepay_payments_pending", "Requests not finalized yet (succeed IS NULL).", roles=OUTBOX_READERS
    )
    payments_pending_oldest_age = gauge(
        "chancepay_payments_pending_oldest_age_seconds",
        "Age of the oldest pending request (database clock).",
        roles=OUTBOX_READERS,
    )

    # scanner
    outbox_published = counter(
        "chancepay_outbox_published_total", "Outbox messages confirmed by the broker.", roles=("scanner",)
    )
    outbox_publish_failures = counter(
        "chancepay_outbox_publish_failures_total",
        "Failed publish attempts ([FAILED TO SEND TO MQ]); the outbox row stays.",
        ("reason",),
        roles=("scanner",),
        preset={"reason": ("nack", "returned", "timeout", "connection")},
    )
    outbox_publish_seconds = histogram(
        "chancepay_outbox_publish_seconds", "Time from publish to broker confirm, per batch.", roles=("scanner",)
    )
    scanner_nudges = counter(
        "chancepay_scanner_nudges_total",
        "POST /internal/outbox/nudge received: new outbox rows, claimed at once instead of at the next poll.",
        roles=("scanner",),
    )
    scanner_nudge_failures = counter(
        "chancepay_scanner_nudge_failures_total",
        "Nudges of the scanner that failed ([FAILED TO NUDGE SCANNER]); the rows wait for its idle poll.",
        roles=("orchestrator",),
    )

    # orchestrator
    payments_created = counter("chancepay_payments_created_total", "Payments accepted (202).", roles=("orchestrator",))
    payments_finalized = counter(
        "chancepay_payments_finalized_total",
        "Requests finalized write-once.",
        ("result",),
        roles=("orchestrator",),
        preset={"result": ("succeeded", "failed")},
    )
    payment_e2e_seconds = histogram(
        "chancepay_payment_e2e_seconds",
        "Create to finalization of a request (database clock).",
        roles=("orchestrator",),
    )
    result_batch_size = histogram(
        "chancepay_result_batch_size",
        "Results per POST /internal/payments/results (the wallet's batched callbacks).",
        roles=("orchestrator",),
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, MAX_RESULTS),
    )
    api_group_size = histogram(
        "chancepay_api_group_size",
        "Payments per group commit of POST /payments (one transaction; CHANCEPAY_API_GROUP_SIZE).",
        roles=("orchestrator",),
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    )
    api_group_waiting = gauge(
        "chancepay_api_group_waiting",
        "POST /payments waiting for their group to be flushed (at scrape time).",
        roles=("orchestrator",),
    )
    api_requests = counter(
        "chancepay_api_requests_total",
        "Public API requests (POST /payments, GET /payments/{uuid}) by client name (`none`: the API open, or "
        "no valid key) and HTTP status; no uuid labels.",
        ("client", "code"),
        roles=("orchestrator",),
    )
    api_overloaded = counter(
        "chancepay_api_overloaded_total",
        "Requests shed with 503 overloaded: no database connection free within CHANCEPAY_DB_ACQUIRE_TIMEOUT_SECONDS.",
        roles=("orchestrator",),
    )
    http_request_seconds = histogram(
        "chancepay_http_request_duration_seconds",
        "HTTP request latency.",
        ("route", "method", "status"),
        roles=("orchestrator",),
    )

    # every serving role
    broker_connect_failures = counter(
        "chancepay_broker_connect_failures_total",
        "Attempts to open the broker connection that failed (broker not reachable yet, or gone).",
        roles=BROKER_USERS,
    )
    http_client_errors = counter(
        "chancepay_http_client_errors_total",
        "Requests answered 4xx, by route template and error code (no uuid labels).",
        ("route", "code"),
        roles=SERVING,
    )
    http_auth_failures = counter(
        "chancepay_http_auth_failures_total",
        "Requests to /internal/* refused for a missing or wrong bearer token ([FAILED TO AUTHORIZE REQUEST]).",
        ("route",),
        roles=SERVING,
    )
    db_unavailable = counter(
        "chancepay_db_unavailable_total",
        "Requests or polls that failed because the database was unreachable or timed out.",
        roles=SERVING,
    )

    # wallet
    wallet_messages = counter(
        "chancepay_wallet_messages_total",
        "Messages handled by the wallet.",
        ("outcome",),
        roles=("wallet",),
        preset={"outcome": ("succeeded", "failed", "duplicate", "corrupt")},
    )
    wallet_callback_failures = counter(
        "chancepay_wallet_callback_failures_total",
        "Result callbacks that failed ([FAILED TO CALLBACK FROM WALLET]).",
        roles=("wallet",),
    )
    wallet_callbacks = counter(
        "chancepay_wallet_callbacks_total", "Result callbacks the orchestrator accepted.", roles=("wallet",)
    )
    dlq_messages = gauge(
        "chancepay_dlq_messages",
        "Dead letters: rows of the wallet's dead_letter table plus messages still in chancepay.payments.dlq "
        "(read at scrape).",
        roles=("wallet",),
    )
    wallet_callbacks_pending = gauge(
        "chancepay_wallet_callbacks_pending",
        "Decided payments whose result the wallet still has to deliver (pending_callback rows, read at scrape).",
        roles=("wallet",),
    )
    wallet_callbacks_pending_oldest_age = gauge(
        "chancepay_wallet_callbacks_pending_oldest_age_seconds",
        "Age of the oldest pending_callback row (database clock).",
        roles=("wallet",),
    )

    # auditor (the online audit, auditor/auditor.py)
    audit_violations = gauge_labelled(
        "chancepay_audit_violations",
        "Payments currently violating an invariant, by kind ([FAILED TO AUDIT]); re-checked every pass, expected 0.",
        ("kind",),
        roles=("auditor",),
        preset={"kind": VIOLATION_KINDS},
    )
    audit_unbalanced_amount = gauge(
        "chancepay_audit_unbalanced_amount",
        "Sum of amounts of SUCCEEDED requests minus sum of amounts of succeeded inbox rows over the audited "
        "payments; expected 0.",
        roles=("auditor",),
    )
    audit_last_pass = gauge(
        "chancepay_audit_last_pass_timestamp_seconds",
        "When the auditor's last complete pass ended (Unix time).",
        roles=("auditor",),
    )
    audit_pass_seconds = histogram("chancepay_audit_pass_seconds", "Duration of one audit pass.", roles=("auditor",))

    # every serving role: what its guarantees rest on (core/durability.py)
    durability_safe = gauge_labelled(
        "chancepay_durability_safe",
        "1 when a setting this role's guarantees rest on is safe, 0 when not (core/durability.py); read at start "
        "and on each new database connection. No series before the first reading.",
        ("component", "setting"),
        roles=SERVING,
    )

    # reconciler and operator commands (pushed to a Pushgateway when one is configured)
    reconcile_repairs = counter(
        "chancepay_reconcile_repairs_total", "Repairs made by chancepay reconcile.", ("kind",), roles=("reconcile",)
    )
    reconcile_failures = counter(
        "chancepay_reconcile_failures_total",
        "Reconcile steps that failed ([FAILED TO RECONCILE]).",
        roles=("reconcile",),
    )
    operator_actions = counter(
        "chancepay_operator_actions_total",
        "Operator actions, by action (rows or messages).",
        ("action",),
        roles=("operator",),
    )

    def __init__(self, role: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double the scrape
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        for declared in declarations():
            metric = declared.create()
            setattr(self, declared.attr, metric)
            if role in declared.roles:
                self.registry.register(metric)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def declarations() -> list[Declared[Any]]:
    """Every metric's declaration, in the order of the class body."""
    return [v for v in vars(Metrics).values() if isinstance(v, Declared)]
