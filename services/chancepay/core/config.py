"""Configuration read from the environment.

Every variable has a default that points at a local install (see CONTRACT.md).
`Settings.from_env` takes the environ as an argument so tests and tools can pass
their own mapping; nothing is read at import time.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar, overload
from urllib.parse import parse_qs, unquote, urlsplit

from chancepay.core.errors import ChancePayError
from chancepay.core.payment import MAX_RESULTS

DEFAULT_INTERNAL_TOKEN = "dev-internal-token"
DEFAULT_MESSAGE_KEY = "dev-message-key"
MIN_MESSAGE_KEY_BYTES = 32

ROLE_PORTS = {"orchestrator": 8000, "scanner": 8001, "wallet": 8002, "auditor": 8003}


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


# --------------------------------------------------------------------------- settings
# Each setting is declared once, as a class attribute of `Settings` below: its variable, parser,
# default, help and checks. From that declaration come the attribute (typed by the parser), the
# checks, `VARIABLES` (the list of every variable the code reads) and, through
# tests/unit/test_config.py, the table in docs/operations.md and the reference in
# charts/chancepay/values.yaml (both tested against it; CHANCEPAY_UPDATE_DOCS=1 redraws them).
T = TypeVar("T")
Check = Callable[[str, Any], None]  # (variable, parsed value): raises ConfigError naming the variable


def _port(raw: str) -> int | None:
    return None if raw == "" else int(raw)


def _flag(raw: str) -> bool:
    """Empty or 0: off; 1: on; anything else is not valid (a typo must not silently mean off)."""
    if raw not in ("", "0", "1"):
        raise ValueError(raw)
    return raw == "1"


def positive(env: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{env} must be > 0, got {value}")


def non_negative(env: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{env} must be >= 0, got {value}")


def not_empty(env: str, value: str) -> None:
    if not value:
        raise ConfigError(f"{env} must not be empty")


def tcp_port(env: str, value: int | None) -> None:
    if value is not None and not 0 < value < 65536:
        raise ConfigError(f"{env} must be a TCP port, got {value}")


def between(low: float, high: float) -> Check:
    def check(env: str, value: float) -> None:
        if not low <= value <= high:
            raise ConfigError(f"{env} must be between {low:g} and {high:g}, got {value}")

    return check


def one_of(*allowed: str, fold: Callable[[str], str] = str) -> Check:
    words = ", ".join(allowed[:-1]) + " or " + allowed[-1]

    def check(env: str, value: str) -> None:
        if fold(value) not in allowed:
            raise ConfigError(f"{env} must be {words}, got {value!r}")

    return check


def at_most_chars(limit: int) -> Check:
    def check(env: str, value: str) -> None:
        if len(value) > limit:
            raise ConfigError(f"{env} must be at most {limit} characters, got {len(value)}")

    return check


def amqp_url(env: str, value: str) -> None:
    amqp_urls(value, name=env)


def database_url(env: str, value: str) -> None:
    DatabaseURL.parse(value, name=env)


def database_url_or_empty(env: str, value: str) -> None:
    if value:
        DatabaseURL.parse(value, name=env)


class Setting(Generic[T]):
    """One variable: `env` parsed by `parse` from its value or `default` (a string, as in the
    environment), then each of `checks`. `shown` is the default as the docs show it, when the bare
    value would mislead; `secret` values never appear in a repr."""

    def __init__(
        self,
        env: str,
        parse: Callable[[str], T],
        default: str,
        help: str,
        *checks: Check,
        shown: str | None = None,
        secret: bool = False,
    ) -> None:
        self.env, self.parse, self.default, self.help, self.checks = env, parse, default, help, checks
        self.shown = shown if shown is not None else f"`{default}`" if default else "(empty)"
        self.secret = secret
        self.field = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.field = name

    def read(self, environ: Mapping[str, str]) -> T:
        raw = environ.get(self.env, self.default)
        try:
            value = self.parse(raw)
        except ValueError:
            raise ConfigError(f"{self.env}={raw!r} is not valid ({self.help})") from None
        for check in self.checks:
            check(self.env, value)
        return value

    @overload
    def __get__(self, obj: None, owner: type) -> Setting[T]: ...
    @overload
    def __get__(self, obj: Settings, owner: type) -> T: ...
    def __get__(self, obj: Settings | None, owner: type) -> Setting[T] | T:
        # Only reached on the class: an instance holds its own value under the same name.
        if obj is None:
            return self
        raise AttributeError(self.field)


class Settings:
    """Every setting, read once from an environ (`from_env`) and frozen."""

    env = Setting(
        "CHANCEPAY_ENV", str, "dev", "dev or prod; prod refuses the default internal token", one_of("dev", "prod")
    )
    allow_unsafe_durability = Setting(
        "CHANCEPAY_ALLOW_UNSAFE_DURABILITY",
        _flag,
        "",
        "`1` = start under prod although a durability setting of the database or broker is unsafe (a warning; "
        "chancepay_durability_safe stays 0); otherwise prod refuses it (docs/operations.md, Durability gate)",
    )
    orchestrator_db = Setting(
        "CHANCEPAY_ORCHESTRATOR_DB",
        str,
        "mysql://chancepay_orchestrator:chancepay_orchestrator@127.0.0.1:3306/chancepay_orchestrator",
        "orchestrator schema (request, outbox); the user `make run` provisions, so a second shell needs no variable",
        database_url,
        secret=True,
    )
    wallet_db = Setting(
        "CHANCEPAY_WALLET_DB",
        str,
        "mysql://chancepay_wallet:chancepay_wallet@127.0.0.1:3306/chancepay_wallet",
        "wallet schema (inbox); the user `make run` provisions",
        database_url,
        secret=True,
    )
    admin_db = Setting(
        "CHANCEPAY_ADMIN_DB",
        str,
        "",
        "migrate only: an admin URL; when set, migrate also creates both databases and least-privilege users",
        database_url_or_empty,
        shown="(empty; `make` sets root over the unix socket)",
        secret=True,
    )
    amqp_url = Setting(
        "CHANCEPAY_AMQP_URL",
        str,
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        "RabbitMQ; several comma-separated URLs = the nodes of one cluster, tried in turn (from a random one); "
        "`amqps://` = TLS, verified (`?cafile=`)",
        amqp_url,
        secret=True,
    )
    orchestrator_url = Setting(
        "CHANCEPAY_ORCHESTRATOR_URL",
        str,
        "http://127.0.0.1:8000",
        "where the wallet and the reconciler reach the orchestrator",
    )
    wallet_url = Setting(
        "CHANCEPAY_WALLET_URL", str, "http://127.0.0.1:8002", "where the reconciler reaches the wallet"
    )
    scanner_url = Setting(
        "CHANCEPAY_SCANNER_URL",
        str,
        "http://127.0.0.1:8001",
        "orchestrator: the scanner it nudges after each commit (POST /internal/outbox/nudge) so new rows are "
        "published at once, not at the scanner's next idle poll; empty = no nudges",
    )
    internal_token = Setting(
        "CHANCEPAY_INTERNAL_TOKEN",
        str,
        DEFAULT_INTERNAL_TOKEN,
        "bearer token for `/internal/*`",
        not_empty,
        secret=True,
    )
    message_key = Setting(
        "CHANCEPAY_MESSAGE_KEY",
        str,
        DEFAULT_MESSAGE_KEY,
        "HMAC key the scanner signs messages with and the wallet verifies them with (scanner and wallet only); "
        f"refused outside dev when default or shorter than {MIN_MESSAGE_KEY_BYTES} bytes",
        not_empty,
        secret=True,
    )
    message_key_previous = Setting(
        "CHANCEPAY_MESSAGE_KEY_PREVIOUS", str, "", "a second key the wallet accepts while keys are rotated", secret=True
    )
    port = Setting(
        "CHANCEPAY_PORT",
        _port,
        "",
        "HTTP port of this role (orchestrator 8000, scanner 8001, wallet 8002, auditor 8003)",
        tcp_port,
        shown="role's port",
    )
    host = Setting(
        "CHANCEPAY_HOST",
        str,
        "0.0.0.0",
        "HTTP bind address",
        shown="`0.0.0.0` (`make run` / `chancepay dev`: `127.0.0.1` unless set)",
    )
    wallet_success_rate = Setting(
        "CHANCEPAY_WALLET_SUCCESS_RATE", float, "0.5", "probability the coin flip succeeds", between(0, 1)
    )
    log_level = Setting(
        "CHANCEPAY_LOG_LEVEL",
        str,
        "INFO",
        "DEBUG, INFO, WARNING or ERROR",
        one_of("DEBUG", "INFO", "WARNING", "ERROR", fold=str.upper),
    )
    db_pool_size = Setting("CHANCEPAY_DB_POOL_SIZE", int, "10", "max connections per process", positive)
    db_timeout = Setting("CHANCEPAY_DB_TIMEOUT_SECONDS", float, "5", "connect and statement timeout", positive)
    api_group_size = Setting(
        "CHANCEPAY_API_GROUP_SIZE",
        int,
        "32",
        "orchestrator: concurrent POST /payments committed together, one transaction (a lone payment is flushed "
        "at once; arrivals during a commit form the next group); `1` = one transaction per payment",
        between(1, 1000),
    )
    api_group_linger = Setting(
        "CHANCEPAY_API_GROUP_LINGER_SECONDS",
        float,
        "0.002",
        "orchestrator: a group not yet full waits at most this long for the commit in flight",
        non_negative,
    )
    api_auth = Setting(
        "CHANCEPAY_API_AUTH",
        str,
        "",
        "orchestrator: `required` = `POST /payments` and `GET /payments/{uuid}` need `Authorization: Bearer <key>` "
        "(keys from `chancepay clients add NAME`); `off` = the API is open (a warning at start outside dev)",
        one_of("", "off", "required"),
        shown="`off` under `CHANCEPAY_ENV=dev`, else `required`",
    )
    api_key_cache_seconds = Setting(
        "CHANCEPAY_API_KEY_CACHE_SECONDS",
        float,
        "5",
        "orchestrator: a checked API key is remembered this long (no database read per request); a revoked key "
        "is refused within this bound",
        non_negative,
    )
    api_client_rate = Setting(
        "CHANCEPAY_API_CLIENT_RATE",
        float,
        "1000",
        "orchestrator: requests per second one client may make to one orchestrator process (token bucket; over "
        "it `429 rate_limited` with `Retry-After`); `0` = no limit",
        non_negative,
    )
    api_client_burst = Setting(
        "CHANCEPAY_API_CLIENT_BURST",
        float,
        "2000",
        "orchestrator: requests a client may make at once above its rate (the bucket's size)",
        positive,
    )
    db_acquire_timeout = Setting(
        "CHANCEPAY_DB_ACQUIRE_TIMEOUT_SECONDS",
        float,
        "1",
        "orchestrator: a request waits this long for a free database connection, then `503 overloaded` with "
        "`Retry-After` (a database that does not answer is `503 database_unavailable`)",
        positive,
    )
    api_key = Setting(
        "CHANCEPAY_API_KEY",
        str,
        "",
        "`chancepay load`: sent as `Authorization: Bearer` (an API that requires keys)",
        secret=True,
    )
    bootstrap_api_key = Setting(
        "CHANCEPAY_BOOTSTRAP_API_KEY",
        str,
        "",
        "migrate only: register this key (from `chancepay clients add` or the chart's Secret) for "
        "CHANCEPAY_BOOTSTRAP_CLIENT, idempotently; empty = none",
        secret=True,
    )
    bootstrap_client = Setting(
        "CHANCEPAY_BOOTSTRAP_CLIENT",
        str,
        "default",
        "migrate only: the client CHANCEPAY_BOOTSTRAP_API_KEY belongs to",
        not_empty,
    )
    scanner_batch_size = Setting("CHANCEPAY_SCANNER_BATCH_SIZE", int, "200", "outbox rows claimed per poll", positive)
    scanner_poll_interval = Setting(
        "CHANCEPAY_SCANNER_POLL_INTERVAL_SECONDS",
        float,
        "0.02",
        "sleep between polls when the outbox had nothing due (the shortest, when "
        "CHANCEPAY_SCANNER_IDLE_MAX_SECONDS is larger)",
        positive,
    )
    scanner_idle_max = Setting(
        "CHANCEPAY_SCANNER_IDLE_MAX_SECONDS",
        float,
        "1",
        "adaptive idle: the sleep between polls doubles after an empty poll, up to this, "
        "and halves after one that found rows (no sleep after a full batch); after a poll "
        "started by a nudge, this long (nudges wake it; the poll is the safety net); at or below "
        "the poll interval, a fixed interval",
        non_negative,
    )
    scanner_batches_in_flight = Setting(
        "CHANCEPAY_SCANNER_BATCHES_IN_FLIGHT",
        int,
        "1",
        "claimed batches being published (awaiting their confirms) while the scanner claims the next; "
        "`1` = claim, publish, delete, then the next claim (on 2 shared cores more made 800/s worse: "
        "the publishes outran the wallet and took CPU from the API)",
        between(1, 64),
    )
    scanner_lease = Setting(
        "CHANCEPAY_SCANNER_LEASE_SECONDS",
        float,
        "30",
        "a claimed row is invisible to other scanners this long",
        positive,
    )
    scanner_confirm_timeout = Setting(
        "CHANCEPAY_SCANNER_CONFIRM_TIMEOUT_SECONDS",
        float,
        "5",
        "wait this long for the broker's publisher confirm",
        positive,
    )
    scanner_max_attempts = Setting(
        "CHANCEPAY_SCANNER_MAX_ATTEMPTS",
        int,
        "20",
        "failed publish attempts after which a row stays but is no longer retried",
        positive,
    )
    scanner_retry_base = Setting(
        "CHANCEPAY_SCANNER_RETRY_BASE_SECONDS",
        float,
        "1",
        "back-off after a failed attempt: base × 2^(attempts−1), capped",
    )
    scanner_retry_max = Setting("CHANCEPAY_SCANNER_RETRY_MAX_SECONDS", float, "60", "cap of the publish back-off")
    wallet_prefetch = Setting("CHANCEPAY_WALLET_PREFETCH", int, "64", "unacknowledged messages per wallet", positive)
    wallet_batch_size = Setting(
        "CHANCEPAY_WALLET_BATCH_SIZE",
        int,
        "32",
        "deliveries decided in one inbox transaction (at most the prefetch); `1` = one transaction per delivery",
        positive,
    )
    wallet_batch_linger = Setting(
        "CHANCEPAY_WALLET_BATCH_LINGER_SECONDS",
        float,
        "0.002",
        "a window of deliveries is decided when full, when no delivery joined it for two event-loop ticks, or "
        "this long after its first delivery",
        non_negative,
    )
    callback_timeout = Setting(
        "CHANCEPAY_CALLBACK_TIMEOUT_SECONDS", float, "2", "timeout of one result callback", positive
    )
    callback_attempts = Setting(
        "CHANCEPAY_CALLBACK_ATTEMPTS",
        int,
        "3",
        "callback tries per delivery (capped exponential back-off with full jitter)",
        positive,
    )
    callback_backoff = Setting("CHANCEPAY_CALLBACK_BACKOFF_SECONDS", float, "0.2", "first callback back-off")
    callback_retry_max = Setting(
        "CHANCEPAY_CALLBACK_RETRY_MAX_SECONDS",
        float,
        "30",
        "a result still undelivered after a delivery's tries is retried in the background; cap of that back-off",
        positive,
    )
    callback_batch_size = Setting(
        "CHANCEPAY_CALLBACK_BATCH_SIZE",
        int,
        "32",
        f"results per batched callback (`POST /internal/payments/results`, at most {MAX_RESULTS}); `1` = a batch "
        "of one per result",
        between(1, MAX_RESULTS),
    )
    callback_batch_linger = Setting(
        "CHANCEPAY_CALLBACK_BATCH_LINGER_SECONDS",
        float,
        "0.002",
        "a batch is sent when full or this long after its first result",
        non_negative,
    )
    reconcile_age = Setting(
        "CHANCEPAY_RECONCILE_AGE_SECONDS",
        float,
        "60",
        "reconcile only requests pending longer than this (database clock)",
    )
    reconcile_batch = Setting("CHANCEPAY_RECONCILE_BATCH", int, "500", "requests examined per reconcile pass", positive)
    auditor_interval = Setting(
        "CHANCEPAY_AUDITOR_INTERVAL_SECONDS", float, "15", "auditor: pause between two audit passes", positive
    )
    auditor_grace = Setting(
        "CHANCEPAY_AUDITOR_GRACE_SECONDS",
        float,
        "300",
        "auditor: a payment pending (or an outbox row untried) longer than this is checked as lost (database clock)",
        positive,
    )
    auditor_batch = Setting("CHANCEPAY_AUDITOR_BATCH", int, "5000", "auditor: rows read per query of a pass", positive)
    pushgateway_url = Setting(
        "CHANCEPAY_PUSHGATEWAY_URL",
        str,
        "",
        "reconcile only: push its counters to this Prometheus Pushgateway (a CronJob has no scrape endpoint)",
    )
    operator = Setting(
        "CHANCEPAY_OPERATOR",
        str,
        "",
        "operator commands that change state (outbox retry, dlq replay/purge, reconcile): who they name in the "
        "operator trail",
        at_most_chars(128),
        shown="(empty: the OS user)",
    )
    migrate_wait = Setting(
        "CHANCEPAY_MIGRATE_WAIT_SECONDS",
        float,
        "120",
        "migrate only: keep retrying this long while the database is unreachable (a server that refuses the "
        "user and no admin URL to provision it: exit 2 at once)",
        non_negative,
    )
    shutdown_grace = Setting(
        "CHANCEPAY_SHUTDOWN_GRACE_SECONDS", float, "20", "after SIGTERM, finish in-flight work for at most this long"
    )
    crash_points = Setting(
        "CHANCEPAY_CRASH_POINTS",
        str,
        "",
        "fault testing only: comma-separated crash point names at which the process SIGKILLs itself",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        settings = cls.__new__(cls)
        for setting in VARIABLES:
            object.__setattr__(settings, setting.field, setting.read(environ))
        return settings

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Settings are frozen: {name}")

    def _values(self) -> tuple[object, ...]:
        return tuple(vars(self)[s.field] for s in VARIABLES)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = (f"{s.field}={'***' if s.secret else repr(vars(self)[s.field])}" for s in VARIABLES)
        return f"Settings({', '.join(shown)})"

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
        for name, key in (
            ("CHANCEPAY_MESSAGE_KEY", self.message_key),
            ("CHANCEPAY_MESSAGE_KEY_PREVIOUS", self.message_key_previous),
        ):
            if name.endswith("PREVIOUS") and not key:
                continue
            if key == DEFAULT_MESSAGE_KEY:
                raise ConfigError(f"{name} is the public default; set a secret key (or CHANCEPAY_ENV=dev locally)")
            if len(key.encode()) < MIN_MESSAGE_KEY_BYTES:
                raise ConfigError(f"{name} must be at least {MIN_MESSAGE_KEY_BYTES} bytes outside dev")

    @property
    def api_auth_required(self) -> bool:
        """CHANCEPAY_API_AUTH, its default resolved: off under dev, required elsewhere."""
        return self.api_auth == "required" or (self.api_auth == "" and self.env != "dev")

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


# Every variable the code reads, in declaration order (the chart, docs and make defaults are
# tested against it).
VARIABLES: tuple[Setting[Any], ...] = tuple(v for v in vars(Settings).values() if isinstance(v, Setting))
