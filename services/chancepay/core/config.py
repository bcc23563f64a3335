"""Configuration read from the environment.

Every variable has a default that points at a local install (see CONTRACT.md).
`Settings.from_env` takes the environ as an argument so tests and tools can pass
their own mapping; nothing is read at import time.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from chancepay.core.errors import ChancePayError

DEFAULT_INTERNAL_TOKEN = "dev-internal-token"
DEFAULT_MESSAGE_KEY = "dev-message-key"
MIN_MESSAGE_KEY_BYTES = 32

ROLE_PORTS = {"orchestrator": 8000, "scanner": 8001, "wallet": 8002}


class ConfigError(ChancePayError, ValueError):
    """A configuration value is missing or malformed; the process must not start."""


SSL_MODES = ("DISABLED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
DB_URL_PARAMS = ("unix_socket", "ssl-ca", "ssl-cert", "ssl-key", "ssl-mode")


@dataclasses.dataclass(frozen=True)
class DatabaseURL:
    """mysql://user:password@host:port/database?params. TLS by the MySQL client's own option
    names: ssl-ca (a CA file: TLS with the server's certificate verified, hostname included),
    ssl-mode (DISABLED, REQUIRED = encrypted but unverified, VERIFY_CA = no hostname check,
    VERIFY_IDENTITY = the default once ssl-ca is given), ssl-cert / ssl-key (client
    certificate). With TLS on, a plain connection is never attempted. Unknown parameters are an
    error: a misspelt one must not silently turn TLS off."""

    user: str
    password: str
    host: str
    port: int
    database: str
    unix_socket: str | None = None
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None
    ssl_mode: str = "DISABLED"

    @classmethod
    def parse(cls, url: str, *, name: str = "database URL") -> DatabaseURL:
        parts = urlsplit(url)
        if parts.scheme not in ("mysql", "mariadb"):
            raise ConfigError(f"{name}: expected mysql://user:password@host:port/database, got scheme {parts.scheme!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = sorted(set(query) - set(DB_URL_PARAMS))
        if unknown:
            raise ConfigError(f"{name}: unknown parameter(s) {unknown}; known: {', '.join(DB_URL_PARAMS)}")
        ca, cert, key = query.get("ssl-ca") or None, query.get("ssl-cert") or None, query.get("ssl-key") or None
        mode = (query.get("ssl-mode") or ("VERIFY_IDENTITY" if ca else "DISABLED")).upper()
        if mode not in SSL_MODES:
            raise ConfigError(f"{name}: ssl-mode must be one of {', '.join(SSL_MODES)}, got {mode!r}")
        if mode in ("VERIFY_CA", "VERIFY_IDENTITY") and not ca:
            raise ConfigError(f"{name}: ssl-mode={mode} needs ssl-ca (the CA file to verify the server with)")
        if mode == "DISABLED" and (ca or cert):
            raise ConfigError(f"{name}: ssl-mode=DISABLED contradicts ssl-ca/ssl-cert")
        if bool(cert) != bool(key):
            raise ConfigError(f"{name}: ssl-cert and ssl-key go together")
        return cls(
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            database=unquote(parts.path.lstrip("/")),
            unix_socket=query.get("unix_socket") or None,
            ssl_ca=ca,
            ssl_cert=cert,
            ssl_key=key,
            ssl_mode=mode,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ssl_mode == "DISABLED":
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_ca)
        if self.ssl_mode == "REQUIRED":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ssl_mode == "VERIFY_CA":
            ctx.check_hostname = False
        if self.ssl_cert:
            ctx.load_cert_chain(self.ssl_cert, self.ssl_key)
        return ctx

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "user": self.user,
            "password": self.password,
            "host": self.host,
            "port": self.port,
        }
        if self.database:
            kwargs["database"] = self.database
        if self.unix_socket:
            kwargs["unix_socket"] = self.unix_socket
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl"] = context
        return kwargs

    def redacted(self) -> str:
        tls = "" if self.ssl_mode == "DISABLED" else f"?ssl-mode={self.ssl_mode}"
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}{tls}"


def amqp_urls(value: str, *, name: str = "CHANCEPAY_AMQP_URL") -> list[str]:
    """One URL, or several separated by commas: the nodes of one RabbitMQ cluster, tried in turn.
    amqps:// is TLS, verified (aiormq's cafile, certfile, keyfile parameters)."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ConfigError(f"{name} is empty")
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ("amqp", "amqps"):
            raise ConfigError(f"{name}: expected amqp:// or amqps:// URLs, got scheme {parts.scheme!r}")
        if "no_verify_ssl" in parse_qs(parts.query) and parse_qs(parts.query)["no_verify_ssl"][-1] != "0":
            raise ConfigError(f"{name}: no_verify_ssl is refused: give the broker's CA with cafile=")
    return urls


def redact_amqp(url: str) -> str:
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else (parts.hostname or "")
    return f"{parts.scheme}://{parts.username or ''}:***@{host}{parts.path}"


# (env var, field, parser, default) — the single list of every variable the code reads.
# README.md and charts/chancepay/values.yaml document the same list; tests keep them in step.
def _float(v: str) -> float:
    return float(v)


def _int(v: str) -> int:
    return int(v)


def _str(v: str) -> str:
    return v


@dataclasses.dataclass(frozen=True)
class Var:
    env: str
    field: str
    parse: Any
    default: str
    help: str


VARIABLES: tuple[Var, ...] = (
    Var("CHANCEPAY_ENV", "env", _str, "dev", "dev or prod; prod refuses the default internal token"),
    Var("CHANCEPAY_ORCHESTRATOR_DB", "orchestrator_db", _str,
        "mysql://chancepay_orchestrator:chancepay_orchestrator@127.0.0.1:3306/chancepay_orchestrator",
        "orchestrator schema (request, outbox); the default is the user `make run` provisions"),
    Var("CHANCEPAY_WALLET_DB", "wallet_db", _str,
        "mysql://chancepay_wallet:chancepay_wallet@127.0.0.1:3306/chancepay_wallet",
        "wallet schema (inbox); the default is the user `make run` provisions"),
    Var("CHANCEPAY_ADMIN_DB", "admin_db", _str, "",
        "migrate only: an admin URL; when set, migrate also creates both databases and least-privilege users"),
    Var("CHANCEPAY_AMQP_URL", "amqp_url", _str, "amqp://guest:guest@127.0.0.1:5672/%2F",
        "RabbitMQ; several comma-separated URLs = the nodes of one cluster, tried in turn; amqps:// = TLS"),
    Var("CHANCEPAY_ORCHESTRATOR_URL", "orchestrator_url", _str, "http://127.0.0.1:8000",
        "where the wallet and the reconciler reach the orchestrator"),
    Var("CHANCEPAY_WALLET_URL", "wallet_url", _str, "http://127.0.0.1:8002", "where the reconciler reaches the wallet"),
    Var("CHANCEPAY_INTERNAL_TOKEN", "internal_token", _str, DEFAULT_INTERNAL_TOKEN, "bearer token for /internal/*"),
    Var("CHANCEPAY_MESSAGE_KEY", "message_key", _str, DEFAULT_MESSAGE_KEY,
        "HMAC key the scanner signs messages with and the wallet verifies them with (scanner and wallet only)"),
    Var("CHANCEPAY_MESSAGE_KEY_PREVIOUS", "message_key_previous", _str, "",
        "a second key the wallet accepts while keys are rotated"),
    Var("CHANCEPAY_PORT", "port", _int, "",
        "HTTP port of this role (default: orchestrator 8000, scanner 8001, wallet 8002)"),
    Var("CHANCEPAY_HOST", "host", _str, "0.0.0.0",
        "HTTP bind address (`chancepay dev` and `make run`: 127.0.0.1 unless this is set)"),
    Var("CHANCEPAY_WALLET_SUCCESS_RATE", "wallet_success_rate", _float, "0.5", "probability the coin flip succeeds"),
    Var("CHANCEPAY_LOG_LEVEL", "log_level", _str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Var("CHANCEPAY_DB_POOL_SIZE", "db_pool_size", _int, "10", "max connections per process"),
    Var("CHANCEPAY_DB_TIMEOUT_SECONDS", "db_timeout", _float, "5", "connect and statement timeout"),
    Var("CHANCEPAY_SCANNER_BATCH_SIZE", "scanner_batch_size", _int, "200", "outbox rows claimed per poll"),
    Var("CHANCEPAY_SCANNER_POLL_INTERVAL_SECONDS", "scanner_poll_interval", _float, "0.02",
        "sleep between polls when the outbox had nothing due"),
    Var("CHANCEPAY_SCANNER_LEASE_SECONDS", "scanner_lease", _float, "30",
        "a claimed row is invisible to other scanners this long"),
    Var("CHANCEPAY_SCANNER_CONFIRM_TIMEOUT_SECONDS", "scanner_confirm_timeout", _float, "5",
        "wait this long for the broker's publisher confirm"),
    Var("CHANCEPAY_SCANNER_MAX_ATTEMPTS", "scanner_max_attempts", _int, "20",
        "failed publish attempts after which a row stays but is no longer retried"),
    Var("CHANCEPAY_SCANNER_RETRY_BASE_SECONDS", "scanner_retry_base", _float, "1",
        "back-off after a failed attempt: base * 2^(attempts-1), capped"),
    Var("CHANCEPAY_SCANNER_RETRY_MAX_SECONDS", "scanner_retry_max", _float, "60", "cap of the publish back-off"),
    Var("CHANCEPAY_WALLET_PREFETCH", "wallet_prefetch", _int, "64", "unacknowledged messages per wallet"),
    Var("CHANCEPAY_CALLBACK_TIMEOUT_SECONDS", "callback_timeout", _float, "2", "timeout of one result callback"),
    Var("CHANCEPAY_CALLBACK_ATTEMPTS", "callback_attempts", _int, "3",
        "callback tries per delivery (capped exponential back-off with jitter)"),
    Var("CHANCEPAY_CALLBACK_BACKOFF_SECONDS", "callback_backoff", _float, "0.2", "first callback back-off"),
    Var("CHANCEPAY_CALLBACK_RETRY_MAX_SECONDS", "callback_retry_max", _float, "30",
        "a result still undelivered after a delivery's tries is retried in the background; cap of that back-off"),
    Var("CHANCEPAY_CALLBACK_BATCH_SIZE", "callback_batch_size", _int, "32",
        "results per batched callback (POST /internal/payments/results, at most 200); 1 = one request per "
        "result on the single-result endpoint"),
    Var("CHANCEPAY_CALLBACK_BATCH_LINGER_SECONDS", "callback_batch_linger", _float, "0.002",
        "a batch is sent when full or this long after its first result"),
    Var("CHANCEPAY_RECONCILE_AGE_SECONDS", "reconcile_age", _float, "60",
        "reconcile only requests pending longer than this (database clock)"),
    Var("CHANCEPAY_RECONCILE_BATCH", "reconcile_batch", _int, "500", "requests examined per reconcile pass"),
    Var("CHANCEPAY_PUSHGATEWAY_URL", "pushgateway_url", _str, "",
        "reconcile only: push its counters to this Prometheus Pushgateway (a CronJob has no scrape endpoint)"),
    Var("CHANCEPAY_MIGRATE_WAIT_SECONDS", "migrate_wait", _float, "120",
        "migrate only: keep retrying this long while the database is unreachable (a server that refuses the "
        "user and no admin URL to provision it: exit 2 at once)"),
    Var("CHANCEPAY_SHUTDOWN_GRACE_SECONDS", "shutdown_grace", _float, "20",
        "after SIGTERM, finish in-flight work for at most this long"),
    Var("CHANCEPAY_CRASH_POINTS", "crash_points", _str, "",
        "fault testing only: comma-separated crash point names at which the process SIGKILLs itself"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    env: str
    orchestrator_db: str
    wallet_db: str
    admin_db: str
    amqp_url: str
    orchestrator_url: str
    wallet_url: str
    internal_token: str
    message_key: str
    message_key_previous: str
    port: int | None
    host: str
    wallet_success_rate: float
    log_level: str
    db_pool_size: int
    db_timeout: float
    scanner_batch_size: int
    scanner_poll_interval: float
    scanner_lease: float
    scanner_confirm_timeout: float
    scanner_max_attempts: int
    scanner_retry_base: float
    scanner_retry_max: float
    wallet_prefetch: int
    callback_timeout: float
    callback_attempts: int
    callback_backoff: float
    callback_retry_max: float
    callback_batch_size: int
    callback_batch_linger: float
    reconcile_age: float
    reconcile_batch: int
    pushgateway_url: str
    migrate_wait: float
    shutdown_grace: float
    crash_points: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = environ.get(var.env, var.default)
            if var.field == "port" and raw == "":
                values["port"] = None
                continue
            try:
                values[var.field] = var.parse(raw)
            except ValueError:
                raise ConfigError(f"{var.env}={raw!r} is not valid ({var.help})") from None
        settings = cls(**values)
        settings._check()
        return settings

    def _check(self) -> None:
        if self.env not in ("dev", "prod"):
            raise ConfigError(f"CHANCEPAY_ENV must be dev or prod, got {self.env!r}")
        if not 0.0 <= self.wallet_success_rate <= 1.0:
            raise ConfigError("CHANCEPAY_WALLET_SUCCESS_RATE must be between 0 and 1")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"CHANCEPAY_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if not self.internal_token:
            raise ConfigError("CHANCEPAY_INTERNAL_TOKEN must not be empty")
        if not self.message_key:
            raise ConfigError("CHANCEPAY_MESSAGE_KEY must not be empty")
        positive = {
            "CHANCEPAY_DB_POOL_SIZE": self.db_pool_size,
            "CHANCEPAY_DB_TIMEOUT_SECONDS": self.db_timeout,
            "CHANCEPAY_SCANNER_BATCH_SIZE": self.scanner_batch_size,
            "CHANCEPAY_SCANNER_LEASE_SECONDS": self.scanner_lease,
            "CHANCEPAY_SCANNER_CONFIRM_TIMEOUT_SECONDS": self.scanner_confirm_timeout,
            "CHANCEPAY_SCANNER_MAX_ATTEMPTS": self.scanner_max_attempts,
            "CHANCEPAY_WALLET_PREFETCH": self.wallet_prefetch,
            "CHANCEPAY_CALLBACK_RETRY_MAX_SECONDS": self.callback_retry_max,
            "CHANCEPAY_CALLBACK_TIMEOUT_SECONDS": self.callback_timeout,
            "CHANCEPAY_CALLBACK_ATTEMPTS": self.callback_attempts,
            "CHANCEPAY_RECONCILE_BATCH": self.reconcile_batch,
        }
        if not 1 <= self.callback_batch_size <= 200:
            raise ConfigError(f"CHANCEPAY_CALLBACK_BATCH_SIZE must be 1 to 200, got {self.callback_batch_size}")
        if self.callback_batch_linger < 0:
            raise ConfigError(f"CHANCEPAY_CALLBACK_BATCH_LINGER_SECONDS must be >= 0, got {self.callback_batch_linger}")
        if self.migrate_wait < 0:
            raise ConfigError(f"CHANCEPAY_MIGRATE_WAIT_SECONDS must be >= 0, got {self.migrate_wait}")
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"CHANCEPAY_PORT must be a TCP port, got {self.port}")
        amqp_urls(self.amqp_url)
        DatabaseURL.parse(self.orchestrator_db, name="CHANCEPAY_ORCHESTRATOR_DB")
        DatabaseURL.parse(self.wallet_db, name="CHANCEPAY_WALLET_DB")
        if self.admin_db:
            DatabaseURL.parse(self.admin_db, name="CHANCEPAY_ADMIN_DB")

    def require_safe_token(self) -> None:
        """Services that serve or call /internal refuse the well-known dev token outside dev."""
        if self.env != "dev" and self.internal_token == DEFAULT_INTERNAL_TOKEN:
            raise ConfigError(
                "CHANCEPAY_INTERNAL_TOKEN is the public default; set a secret token (or CHANCEPAY_ENV=dev locally)"
            )

    def require_safe_message_key(self) -> None:
        """Scanner and wallet refuse, outside dev, the public default key or a short one."""
        if self.env == "dev":
            return
        for name, key in (("CHANCEPAY_MESSAGE_KEY", self.message_key),
                          ("CHANCEPAY_MESSAGE_KEY_PREVIOUS", self.message_key_previous)):
            if name.endswith("PREVIOUS") and not key:
                continue
            if key == DEFAULT_MESSAGE_KEY:
                raise ConfigError(f"{name} is the public default; set a secret key (or CHANCEPAY_ENV=dev locally)")
            if len(key.encode()) < MIN_MESSAGE_KEY_BYTES:
                raise ConfigError(f"{name} must be at least {MIN_MESSAGE_KEY_BYTES} bytes outside dev")

    @property
    def message_keys(self) -> tuple[str, ...]:
        return (self.message_key, self.message_key_previous) if self.message_key_previous else (self.message_key,)

    def port_for(self, role: str) -> int:
        return self.port if self.port is not None else ROLE_PORTS[role]

    def crash_point_set(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.crash_points.split(",") if p.strip())

    @property
    def amqp_url_list(self) -> list[str]:
        return amqp_urls(self.amqp_url)

    @property
    def orchestrator_db_url(self) -> DatabaseURL:
        return DatabaseURL.parse(self.orchestrator_db)

    @property
    def wallet_db_url(self) -> DatabaseURL:
        return DatabaseURL.parse(self.wallet_db)
