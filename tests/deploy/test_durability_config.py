"""The chart's own MariaDB and RabbitMQ are safe by the durability gate's rules
(services/chancepay/core/durability.py): the rendered server options judged by the same policy
the roles apply to the live settings, and a chart value that makes them unsafe is caught."""

from __future__ import annotations

from typing import Any

from chancepay.core import topology
from chancepay.core.durability import broker_findings, database_findings
from tests.deploy.conftest import pod_spec, render

# What MariaDB 10.11 and 11.8 run with when an option is not given (--no-defaults: no config file).
SERVER_DEFAULTS = {
    "innodb_flush_log_at_trx_commit": "1",
    "sync_binlog": "0",
    "log_bin": "OFF",
    "innodb_doublewrite": "ON",
}
OPTIONS = {
    "--innodb-flush-log-at-trx-commit": "innodb_flush_log_at_trx_commit",
    "--innodb_flush_log_at_trx_commit": "innodb_flush_log_at_trx_commit",
    "--sync-binlog": "sync_binlog",
    "--sync_binlog": "sync_binlog",
    "--innodb-doublewrite": "innodb_doublewrite",
    "--innodb_doublewrite": "innodb_doublewrite",
}


def server_args(values: dict[str, Any] | None = None) -> list[str]:
    sts = render(values).get("StatefulSet", "chancepay-mariadb")
    (server,) = [c for c in pod_spec(sts)["containers"] if c["name"] == "mariadb"]
    return [*server.get("command", []), *server.get("args", [])]


def server_settings(values: dict[str, Any] | None = None) -> dict[str, str]:
    """The durability settings the chart's mariadbd starts with: its defaults, then its options
    in order (the last one wins, as in mariadbd)."""
    settings = dict(SERVER_DEFAULTS)
    for arg in server_args(values):
        name, _, value = arg.partition("=")
        if name in OPTIONS:
            settings[OPTIONS[name]] = value
        elif name in ("--log-bin", "--log_bin"):
            settings["log_bin"] = "ON"
        elif name in ("--skip-innodb-doublewrite", "--skip-innodb_doublewrite"):
            settings["innodb_doublewrite"] = "OFF"
    return settings


def unsafe(settings: dict[str, str]) -> list[str]:
    return [f.setting for f in database_findings("orchestrator_db", settings) if not f.safe]


def test_the_charts_mariadb_is_safe_and_pins_it() -> None:
    assert unsafe(server_settings()) == []
    # Pinned, not left to a default a future server series could change.
    assert {"--innodb-flush-log-at-trx-commit=1", "--innodb-doublewrite=ON"} <= set(server_args())


def test_an_unsafe_extra_arg_is_caught() -> None:
    extra = {"mariadb": {"extraArgs": ["--innodb-flush-log-at-trx-commit=2", "--log-bin=binlog"]}}
    assert unsafe(server_settings(extra)) == ["innodb_flush_log_at_trx_commit", "sync_binlog"]


def test_the_charts_rabbitmq_keeps_quorum_fsync_and_the_roles_declare_quorum_durable() -> None:
    config = render().get("ConfigMap", "chancepay-rabbitmq-config")["data"]["20-chancepay.conf"]
    # Ra's WAL fsyncs before a quorum queue confirms unless told otherwise: the chart never does.
    assert "wal_sync_method" not in config
    assert all(f.safe for f in broker_findings(topology.QUEUE_ARGUMENTS, topology.QUEUE_DURABLE, True))
