"""Settings come from an injected environ; bad values stop the process before it starts."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from chancepay.core.config import VARIABLES, ConfigError, DatabaseURL, Settings


def test_defaults_are_the_contract() -> None:
    s = Settings.from_env({})
    assert (
        s.orchestrator_db
        == "mysql://chancepay_orchestrator:chancepay_orchestrator@127.0.0.1:3306/chancepay_orchestrator"
    )
    assert s.wallet_db == "mysql://chancepay_wallet:chancepay_wallet@127.0.0.1:3306/chancepay_wallet"
    assert s.amqp_url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert s.orchestrator_url == "http://127.0.0.1:8000" and s.wallet_url == "http://127.0.0.1:8002"
    assert s.internal_token == "dev-internal-token" and s.env == "dev"
    assert s.wallet_success_rate == 0.5 and s.log_level == "INFO"
    assert [s.port_for(r) for r in ("orchestrator", "scanner", "wallet")] == [8000, 8001, 8002]
    assert Settings.from_env({"CHANCEPAY_PORT": "9000"}).port_for("wallet") == 9000


def test_every_variable_is_a_settings_field() -> None:
    s = Settings.from_env({})
    assert set(vars(s)) == {v.field for v in VARIABLES} and len(VARIABLES) == len({v.env for v in VARIABLES})
    assert all(v.env.startswith("CHANCEPAY_") and v.help for v in VARIABLES)
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
    assert s == Settings.from_env({}) and "dev-internal-token" not in repr(s)


def test_each_check_names_its_variable() -> None:
    for env, bad in (
        ("CHANCEPAY_SCANNER_LEASE_SECONDS", "0"),
        ("CHANCEPAY_CALLBACK_BATCH_SIZE", "201"),
        ("CHANCEPAY_MIGRATE_WAIT_SECONDS", "-1"),
        ("CHANCEPAY_PORT", "0"),
        ("CHANCEPAY_ENV", "qa"),
        ("CHANCEPAY_WALLET_DB", "x"),
        ("CHANCEPAY_ADMIN_DB", "x"),
        ("CHANCEPAY_MESSAGE_KEY", ""),
        ("CHANCEPAY_DB_TIMEOUT_SECONDS", "soon"),
    ):
        with pytest.raises(ConfigError, match=env):
            Settings.from_env({env: bad})
    assert Settings.from_env({"CHANCEPAY_LOG_LEVEL": "debug", "CHANCEPAY_CALLBACK_BATCH_LINGER_SECONDS": "0"})


@pytest.mark.parametrize(
    "env",
    [
        {"CHANCEPAY_WALLET_SUCCESS_RATE": "1.5"},
        {"CHANCEPAY_WALLET_SUCCESS_RATE": "half"},
        {"CHANCEPAY_PORT": "70000"},
        {"CHANCEPAY_ENV": "staging"},
        {"CHANCEPAY_LOG_LEVEL": "LOUD"},
        {"CHANCEPAY_DB_POOL_SIZE": "0"},
        {"CHANCEPAY_ORCHESTRATOR_DB": "postgres://x@y/z"},
        {"CHANCEPAY_INTERNAL_TOKEN": ""},
    ],
)
def test_bad_values_are_refused(env) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_prod_refuses_the_public_default_token() -> None:
    with pytest.raises(ConfigError):
        Settings.from_env({"CHANCEPAY_ENV": "prod"}).require_safe_token()
    Settings.from_env({"CHANCEPAY_ENV": "prod", "CHANCEPAY_INTERNAL_TOKEN": "s3cret"}).require_safe_token()
    Settings.from_env({}).require_safe_token()  # dev is the local default


def test_database_url_parsing() -> None:
    url = DatabaseURL.parse("mysql://u%40x:p%2Fw@db.example:3307/orch")
    assert (url.user, url.password, url.host, url.port, url.database) == ("u@x", "p/w", "db.example", 3307, "orch")
    sock = DatabaseURL.parse("mysql://root@localhost/?unix_socket=/run/mysqld/mysqld.sock")
    assert sock.unix_socket == "/run/mysqld/mysqld.sock" and sock.database == ""
    assert "p/w" not in url.redacted()


# The docs' table and the chart's reference are drawn from the declarations (core/config.py
# Settings): a change there fails these two until CHANCEPAY_UPDATE_DOCS=1 redraws the files.
ROOT = Path(__file__).resolve().parents[2]


def docs_table() -> str:
    rows = [f"| `{v.env}` | {v.shown} | {v.help} |" for v in VARIABLES]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows]) + "\n"


def values_reference() -> str:
    return "".join(f"#   {v.env} (default {v.default or chr(34) * 2}): {v.help.replace('`', '')}\n" for v in VARIABLES)


def _redraw(path: Path, pattern: str, drawn: str) -> None:
    text = path.read_text()
    match = re.search(pattern, text, flags=re.M)
    assert match, f"{path.relative_to(ROOT)}: no settings block ({pattern})"
    if os.environ.get("CHANCEPAY_UPDATE_DOCS") == "1":
        path.write_text(text[: match.start()] + drawn + text[match.end() :])
        return
    assert match.group(0) == drawn, (
        f"{path.relative_to(ROOT)} is not what core/config.py declares; "
        "CHANCEPAY_UPDATE_DOCS=1 pytest tests/unit/test_config.py redraws it"
    )


def test_the_docs_table_is_drawn_from_the_declarations() -> None:
    """docs/operations.md "Configuration" (the README's Configuration links there)."""
    _redraw(ROOT / "docs" / "operations.md", r"^\| variable \| default \| meaning \|\n(?:\|.*\n)+", docs_table())


def test_the_chart_reference_is_drawn_from_the_declarations() -> None:
    _redraw(ROOT / "charts" / "chancepay" / "values.yaml", r"^(?:#   CHANCEPAY_.*\n)+", values_reference())


def test_the_readme_and_contract_name_only_declared_defaults() -> None:
    """The README's short table and CONTRACT.md repeat a few defaults: they must be the declared ones."""
    declared = {v.env: v.default for v in VARIABLES}
    shown = {v.env: v.shown for v in VARIABLES}  # a default that depends on another (CHANCEPAY_API_AUTH)
    for page in ("README.md", "docs/CONTRACT.md"):
        rows = re.findall(r"^\| `(CHANCEPAY_[A-Z_]+)` \| `([^`]*)`", (ROOT / page).read_text(), flags=re.M)
        for env, default in rows:
            if env in declared and not shown[env].startswith(f"`{default}` under "):
                assert declared[env] == default, f"{page}: {env} default {default!r}, declared {declared[env]!r}"


def test_message_key_refused_outside_dev_when_default_or_short() -> None:
    base = {"CHANCEPAY_ENV": "prod", "CHANCEPAY_INTERNAL_TOKEN": "t" * 40}
    for bad in (
        {},
        {"CHANCEPAY_MESSAGE_KEY": "short-key"},
        {"CHANCEPAY_MESSAGE_KEY": "k" * 40, "CHANCEPAY_MESSAGE_KEY_PREVIOUS": "dev-message-key"},
    ):
        with pytest.raises(ConfigError, match="CHANCEPAY_MESSAGE_KEY"):
            Settings.from_env({**base, **bad}).require_safe_message_key()
    ok = Settings.from_env({**base, "CHANCEPAY_MESSAGE_KEY": "k" * 32})
    ok.require_safe_message_key()
    assert ok.message_keys == ("k" * 32,)
    Settings.from_env({"CHANCEPAY_ENV": "dev"}).require_safe_message_key()  # dev: the default is fine


def test_signature_policy() -> None:
    from chancepay.core import signing

    body = b'{"uuid":"x"}'
    sig = signing.sign(body, "key-one")
    assert sig.startswith("v1=") and len(sig) == 3 + 64
    assert signing.verify(body, {signing.HEADER: sig}, ("key-one",)) is None
    assert signing.verify(body, {signing.HEADER: sig.encode()}, ("key-two", "key-one")) is None  # rotation
    assert "does not match" in signing.verify(body + b" ", {signing.HEADER: sig}, ("key-one",))
    assert "no x-chancepay-signature" in signing.verify(body, {}, ("key-one",))
    assert "not a v1=" in signing.verify(body, {signing.HEADER: "sha256=abc"}, ("key-one",))


def test_database_url_tls_parameters() -> None:
    plain = DatabaseURL.parse("mysql://u:p@db:3306/x")
    assert plain.ssl_mode == "DISABLED" and "ssl" not in plain.connect_kwargs()
    verified = DatabaseURL.parse("mysql://u:p@db:3306/x?ssl-ca=/etc/ssl/certs/ca-certificates.crt")
    assert verified.ssl_mode == "VERIFY_IDENTITY"
    ctx = verified.connect_kwargs()["ssl"]
    import ssl

    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    no_host = DatabaseURL.parse("mysql://u:p@db/x?ssl-ca=/etc/ssl/certs/ca-certificates.crt&ssl-mode=verify_ca")
    assert not no_host.ssl_context().check_hostname and no_host.ssl_context().verify_mode == ssl.CERT_REQUIRED
    encrypted_only = DatabaseURL.parse("mysql://u:p@db/x?ssl-mode=REQUIRED").ssl_context()
    assert encrypted_only.verify_mode == ssl.CERT_NONE
    assert "ssl-mode=VERIFY_IDENTITY" in verified.redacted() and "p@" not in verified.redacted()
    for bad, why in (
        ("?ssl_ca=/x", "unknown parameter"),
        ("?sslmode=require", "unknown parameter"),
        ("?ssl-mode=VERIFY_IDENTITY", "needs ssl-ca"),
        ("?ssl-mode=bogus", "ssl-mode must be"),
        ("?ssl-ca=/x&ssl-mode=DISABLED", "contradicts"),
        ("?ssl-ca=/x&ssl-cert=/c", "go together"),
    ):
        with pytest.raises(ConfigError, match=why):
            DatabaseURL.parse("mysql://u:p@db/x" + bad)


def test_amqp_urls_several_nodes_and_tls() -> None:
    from chancepay.core.config import amqp_urls, redact_amqp

    assert amqp_urls("amqp://a/%2F") == ["amqp://a/%2F"]
    assert amqp_urls(" amqp://a:5672/v , amqps://b:5671/v?cafile=/ca.pem,") == [
        "amqp://a:5672/v",
        "amqps://b:5671/v?cafile=/ca.pem",
    ]
    for bad in ("", " , ", "http://a/", "amqps://b/?no_verify_ssl=1"):
        with pytest.raises(ConfigError):
            amqp_urls(bad)
    assert redact_amqp("amqps://user:secret@mq:5671/%2F?cafile=/x") == "amqps://user:***@mq:5671/%2F"
    s = Settings.from_env({"CHANCEPAY_AMQP_URL": "amqp://g:g@n1:5672/,amqp://g:g@n2:5672/"})
    assert len(s.amqp_url_list) == 2
    with pytest.raises(ConfigError):
        Settings.from_env({"CHANCEPAY_AMQP_URL": "amqp://a/,ftp://b/"})


def test_one_exception_tree() -> None:
    """A class deriving from a built-in exception also derives from core/errors.py ChancePayError."""
    import ast
    import builtins
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "services" / "chancepay"
    builtin_errors = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    roots = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ClassDef) or node.name == "ChancePayError":
                continue
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if bases & builtin_errors and "ChancePayError" not in bases:
                roots.append(f"{path.relative_to(package)}:{node.name}")
    assert not roots, f"exception roots outside chancepay.core.errors.ChancePayError: {roots}"


def test_every_metric_is_declared_in_the_metrics_module() -> None:
    """One home per metric (issue 21): no Prometheus metric is built outside core/metrics.py, and
    each declared one is exported by at least one role."""
    import re
    from pathlib import Path

    from chancepay.core.metrics import ROLES, Metrics, declarations

    package = Path(__file__).resolve().parents[2] / "services" / "chancepay"
    outside = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if p.name != "metrics.py" and re.search(r"\b(Counter|Gauge|Histogram|Summary|Info|Enum)\(", p.read_text())
    ]
    assert not outside, f"metrics built outside core/metrics.py: {outside}"
    assert all(d.roles and set(d.roles) <= set(ROLES) for d in declarations())
    registered = {d.attr for role in ROLES for d in declarations() if role in d.roles}
    assert registered == {d.attr for d in declarations()}
    assert Metrics("operator").registry.get_sample_value("chancepay_operator_actions_total", {"action": "x"}) is None
