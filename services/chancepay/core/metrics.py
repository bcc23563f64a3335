"""Every Prometheus metric ChancePay exports, defined in one place.

Each process builds one `Metrics` (its own registry) at start-up; nothing is registered at
import time. One process per pod, so no multiprocess mode. No uuid labels, ever.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

CONTENT_TYPE: str = CONTENT_TYPE_LATEST  # of render()'s output
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


# Which metrics each process exports: a scanner reporting chancepay_payments_created_total 0
# would only mislead a dashboard that sums across pods.
ROLE_METRICS: dict[str, tuple[str, ...]] = {
    "orchestrator": (
        "outbox_depth", "outbox_oldest_age", "outbox_exhausted", "payments_pending", "payments_pending_oldest_age",
        "payments_created", "payments_finalized", "payment_e2e_seconds", "http_request_seconds", "db_unavailable",
        "http_client_errors", "http_auth_failures", "result_batch_size",
    ),
    "scanner": (
        "outbox_depth", "outbox_oldest_age", "outbox_exhausted", "payments_pending", "payments_pending_oldest_age",
        "outbox_published", "outbox_publish_failures", "outbox_publish_seconds", "db_unavailable",
        "http_client_errors", "http_auth_failures", "broker_connect_failures",
    ),
    "wallet": (
        "wallet_messages", "wallet_callback_failures", "wallet_callbacks", "dlq_messages", "db_unavailable",
        "wallet_callbacks_pending", "wallet_callbacks_pending_oldest_age", "http_client_errors", "http_auth_failures",
        "broker_connect_failures",
    ),
    "reconcile": ("reconcile_repairs", "reconcile_failures"),
}


class Metrics:
    def __init__(self, role: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double the scrape size
        self.role = role
        self.registry = CollectorRegistry(auto_describe=True)
        r = None  # built unregistered; the role's own ones are registered below

        # outbox — read from the outbox table itself at scrape time (orchestrator and scanner)
        self.outbox_depth = Gauge("chancepay_outbox_depth", "Rows in the outbox table.", registry=r)
        self.outbox_oldest_age = Gauge(
            "chancepay_outbox_oldest_age_seconds", "Age of the oldest outbox row (database clock).", registry=r
        )
        self.outbox_exhausted = Gauge(
            "chancepay_outbox_exhausted_rows",
            "Outbox rows that reached the attempt limit: kept, no longer retried, need an operator.",
            registry=r,
        )
        self.payments_pending = Gauge(
            "chancepay_payments_pending", "Requests not finalized yet (succeed IS NULL).", registry=r
        )
        self.payments_pending_oldest_age = Gauge(
            "chancepay_payments_pending_oldest_age_seconds",
            "Age of the oldest pending request (database clock).",
            registry=r,
        )

        # scanner
        self.outbox_published = Counter(
            "chancepay_outbox_published_total", "Outbox messages confirmed by the broker.", registry=r
        )
        self.outbox_publish_failures = Counter(
            "chancepay_outbox_publish_failures_total",
            "Failed publish attempts ([FAILED TO SEND TO MQ]); the outbox row stays.",
            ["reason"],
            registry=r,
        )
        self.outbox_publish_seconds = Histogram(
            "chancepay_outbox_publish_seconds",
            "Time from publish to broker confirm, per batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

        # orchestrator
        self.payments_created = Counter("chancepay_payments_created_total", "Payments accepted (202).", registry=r)
        self.payments_finalized = Counter(
            "chancepay_payments_finalized_total", "Requests finalized write-once.", ["result"], registry=r
        )
        self.payment_e2e_seconds = Histogram(
            "chancepay_payment_e2e_seconds",
            "Create to finalization of a request (database clock).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.result_batch_size = Histogram(
            "chancepay_result_batch_size",
            "Results per POST /internal/payments/results (the wallet's batched callbacks).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 200),
            registry=r,
        )
        self.broker_connect_failures = Counter(
            "chancepay_broker_connect_failures_total",
            "Attempts to open the broker connection that failed (broker not reachable yet, or gone).",
            registry=r,
        )
        self.http_client_errors = Counter(
            "chancepay_http_client_errors_total",
            "Requests answered 4xx, by route template and error code (no uuid labels).",
            ["route", "code"],
            registry=r,
        )
        self.http_auth_failures = Counter(
            "chancepay_http_auth_failures_total",
            "Requests to /internal/* refused for a missing or wrong bearer token ([FAILED TO AUTHORIZE REQUEST]).",
            ["route"],
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "chancepay_http_request_duration_seconds",
            "HTTP request latency.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.db_unavailable = Counter(
            "chancepay_db_unavailable_total",
            "Requests or polls that failed because the database was unreachable or timed out.",
            registry=r,
        )

        # wallet
        self.wallet_messages = Counter(
            "chancepay_wallet_messages_total", "Messages handled by the wallet.", ["outcome"], registry=r
        )
        self.wallet_callback_failures = Counter(
            "chancepay_wallet_callback_failures_total",
            "Result callbacks that failed ([FAILED TO CALLBACK FROM WALLET]).",
            registry=r,
        )
        self.wallet_callbacks = Counter(
            "chancepay_wallet_callbacks_total", "Result callbacks the orchestrator accepted.", registry=r
        )
        self.dlq_messages = Gauge(
            "chancepay_dlq_messages",
            "Dead letters: rows of the wallet's dead_letter table plus messages still in chancepay.payments.dlq "
            "(read at scrape).", registry=r
        )
        self.wallet_callbacks_pending = Gauge(
            "chancepay_wallet_callbacks_pending",
            "Decided payments whose result the wallet still has to deliver (pending_callback rows, read at scrape).",
            registry=r,
        )
        self.wallet_callbacks_pending_oldest_age = Gauge(
            "chancepay_wallet_callbacks_pending_oldest_age_seconds",
            "Age of the oldest pending_callback row (database clock).",
            registry=r,
        )

        # reconciler
        self.reconcile_repairs = Counter(
            "chancepay_reconcile_repairs_total", "Repairs made by chancepay reconcile.", ["kind"], registry=r
        )
        self.reconcile_failures = Counter(
            "chancepay_reconcile_failures_total", "Reconcile steps that failed ([FAILED TO RECONCILE]).", registry=r
        )

        for name in ROLE_METRICS.get(role, ()):
            self.registry.register(getattr(self, name))

        for outcome in ("succeeded", "failed", "duplicate", "corrupt"):
            self.wallet_messages.labels(outcome=outcome)
        for result in ("succeeded", "failed"):
            self.payments_finalized.labels(result=result)
        for reason in ("nack", "returned", "timeout", "connection"):
            self.outbox_publish_failures.labels(reason=reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)
