"""TLS to the database and the broker (issue 10), with the chart's switch: certificates made here,
the chart's MariaDB and RabbitMQ run with tls.enabled, every role, migrate and the helm test
through verified TLS; plain clients refused by the servers; a wrong CA refused by the clients;
a TLS URL never falls back to a plain connection."""

from __future__ import annotations

import asyncio
import ssl

import aiormq
import pymysql
import pytest

from chancepay.core.config import DatabaseURL
from chancepay.core.db import Database, DatabaseUnavailable
from tests.support import tls
from tests.support.servers import chart_values, local_url


@pytest.fixture
def tls_install(chart_install, tmp_path):
    files = tls.make_tls(["chancepay-mariadb", "chancepay-rabbitmq", "localhost"], ["127.0.0.1"])
    install = chart_install(
        chart_values(tls={"enabled": True, "secretName": "chancepay-tls"}), other_secrets={"chancepay-tls": files}
    )
    install.servers.start()
    install.ca_dir = tls.write({"ca.crt": files["ca.crt"]}, tmp_path / "ca")
    install.other_ca = tls.write({"ca.crt": tls.make_tls(["x"], cn="another CA")["ca.crt"]}, tmp_path / "other")
    return install


def _db_error(url: str) -> BaseException | None:
    async def go() -> BaseException | None:
        db = Database(DatabaseURL.parse(url), pool_size=1, timeout=5)
        try:
            async with db.transaction() as cur:
                await cur.execute("SELECT 1")
        except Exception as exc:
            return exc
        finally:
            await db.close()
        return None

    return asyncio.run(go())


def _amqp_error(url: str) -> BaseException | None:
    async def go() -> BaseException | None:
        try:
            connection = await asyncio.wait_for(aiormq.connect(url), timeout=10)
        except Exception as exc:
            return exc
        await connection.close()
        return None

    return asyncio.run(go())


def test_everything_over_verified_tls(tls_install) -> None:
    install = tls_install
    secret = install.servers.secret
    assert "ssl-ca=" in secret["orchestrator-db-url"] and secret["amqp-url"].startswith("amqps://")
    migrate = install.run_job("Job")
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    roles = [install.start_role(r) for r in ("orchestrator", "scanner", "wallet")]
    for role in roles:
        role.wait_ready(timeout=60)
    result = install.helm_test()
    assert result.returncode == 0, result.stdout + result.stderr
    # Connected, hence encrypted: the server refuses every plain client (next test).
    with install.servers.servers().admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM information_schema.processlist WHERE user LIKE 'chancepay\\_%'")
        sessions = cur.fetchone()[0]
    assert sessions >= 1
    ssl_url = local_url(secret["orchestrator-db-url"]).replace("/etc/chancepay/tls/", f"{install.ca_dir}/")
    assert _db_error(ssl_url) is None


def test_servers_refuse_plain_clients(tls_install) -> None:
    s = tls_install.servers.servers()
    with pytest.raises(pymysql.err.OperationalError) as plain_db:
        # ssl_disabled: PyMySQL 1.2 would otherwise upgrade on its own (its "preferred" mode).
        pymysql.connect(
            host="127.0.0.1", port=s.mysql_port, user="root", password=s.admin_password, ssl_disabled=True
        ).close()
    assert plain_db.value.args[0] in (1045, 3159), plain_db.value  # insecure transport prohibited
    assert "insecure" in str(plain_db.value).lower() or plain_db.value.args[0] == 3159
    plain_mq = local_url(tls_install.servers.secret["amqp-url"]).replace("amqps://", "amqp://", 1).split("?")[0]
    assert _amqp_error(plain_mq) is not None, "the broker has no plain listener"


def test_clients_refuse_a_server_they_cannot_verify(tls_install) -> None:
    secret = tls_install.servers.secret
    wrong = str(tls_install.other_ca / "ca.crt")
    db_wrong = local_url(secret["orchestrator-db-url"]).replace("/etc/chancepay/tls/ca.crt", wrong)
    error = _db_error(db_wrong)
    assert isinstance(error, DatabaseUnavailable) and "CERTIFICATE_VERIFY_FAILED" in str(error), error
    mq_wrong = local_url(secret["amqp-url"]).replace("/etc/chancepay/tls/ca.crt", wrong)
    error = _amqp_error(mq_wrong)
    assert error is not None and isinstance(error.__cause__ or error, (ssl.SSLError, Exception))
    assert "CERTIFICATE_VERIFY_FAILED" in repr(error) + repr(error.__cause__), repr(error)


def test_a_tls_url_never_falls_back_to_plain(tls_install, servers) -> None:
    """Against a server without TLS (this run's own plain pair), a URL with ssl-ca= or amqps://
    fails instead of connecting in the clear."""
    ca = str(tls_install.ca_dir / "ca.crt")
    plain_db = f"mysql://root@127.0.0.1:{servers.mysql_port}/?ssl-ca={ca}"
    if servers.name == "chart":
        plain_db = f"mysql://root:{servers.admin_password}@127.0.0.1:{servers.mysql_port}/?ssl-ca={ca}"
    assert _db_error(plain_db) is not None
    plain_mq = f"amqps://{servers.amqp_user}:{servers.amqp_password}@127.0.0.1:{servers.amqp_port}/%2F?cafile={ca}"
    assert _amqp_error(plain_mq) is not None
