"""The durability gate (core/durability.py) against a real MariaDB that does not flush at commit.

A private `mariadbd` (Debian 12's binaries, the ones pass 1 runs) is started for this module with
`--innodb-flush-log-at-trx-commit=2` in a temporary data directory, on a free port; `chancepay
migrate` provisions it; the roles run as real processes against it:
- under CHANCEPAY_ENV=prod the orchestrator refuses to start: exit 2, one `[FAILED TO START]` line
  naming the setting, its value and the safe value;
- with CHANCEPAY_ALLOW_UNSAFE_DURABILITY=1 it starts (readyz 200) and /metrics says 0;
- a running role whose server turns unsafe (SET GLOBAL, then its connections dropped, so it
  reconnects) refuses the new connections (`[FAILED TO TRUST DATABASE]`, readyz 503) and takes
  work again once the setting is fixed, without a restart;
- against this run's normal servers the scanner reports every setting, database and broker, 1.

The private server is pass 1's (CHANCEPAY_TEST_SERVERS=debian12); pass 2 runs only the last test,
against the chart's own MariaDB and RabbitMQ.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest

from tests.support.env import Env, free_port, wait_until
from tests.support.roles import Role
from tests.support.servers import one_pass

pass1_only = one_pass("debian12", "starts a private mariadbd from Debian 12's binaries")

FLUSH = "innodb_flush_log_at_trx_commit"


class UnsafeMariaDB:
    """A private mariadbd that acknowledges commits before flushing them (flush=2)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> UnsafeMariaDB:
        data, log = self.workdir / "data", self.workdir / "mariadbd.log"
        install = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal"]
            + ["--skip-test-db", "--user=root"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert install.returncode == 0, install.stdout + install.stderr
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                ["mariadbd", "--no-defaults", f"--datadir={data}", f"--port={self.port}"]
                + [
                    f"--socket={self.workdir / 'sock'}",
                    f"--pid-file={self.workdir / 'pid'}",
                    "--bind-address=127.0.0.1",
                ]
                + ["--user=root", "--skip-name-resolve", "--innodb-buffer-pool-size=32M", f"--{FLUSH}=2"],
                stdout=out,
                stderr=out,
            )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, log.read_text()[-2000:]
            self.connect().close()
            return True

        wait_until(up, timeout=60, interval=0.2, what=f"private mariadbd on port {self.port}")
        return self

    def connect(self) -> pymysql.connections.Connection:
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", autocommit=True, connect_timeout=2)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(statement)
            return list(cur.fetchall())

    def set_flush(self, value: int) -> None:
        self.sql(f"SET GLOBAL {FLUSH} = {value}")  # this server is the test's own

    def drop_connections(self, user: str) -> None:
        """Every connection of `user` killed: its pool reconnects."""
        for (pid,) in self.sql(f"SELECT id FROM information_schema.processlist WHERE user = '{user}'"):
            self.sql(f"KILL CONNECTION {int(pid)}")

    @property
    def admin_url(self) -> str:
        return f"mysql://root@127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def unsafe_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UnsafeMariaDB]:
    if shutil.which("mariadbd") is None:
        pytest.fail("pass 1 runs Debian 12's MariaDB: mariadbd should be installed (make test installs it)")
    workdir = tmp_path_factory.mktemp("unsafe-mariadb")
    server = UnsafeMariaDB(workdir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def on_unsafe(unsafe_db: UnsafeMariaDB, tmp_path: Path) -> Iterator[tuple[Env, dict[str, str]]]:
    """An Env whose two databases live on the private server (migrated there), flush back at 2."""
    env = Env(tmp_path)
    urls = {
        "CHANCEPAY_ORCHESTRATOR_DB": env.orch_url(port=unsafe_db.port),
        "CHANCEPAY_WALLET_DB": env.wallet_url(port=unsafe_db.port),
    }
    unsafe_db.set_flush(2)
    migrated = env.chancepay("migrate", CHANCEPAY_ADMIN_DB=unsafe_db.admin_url, **urls)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    try:
        yield env, urls
    finally:
        unsafe_db.set_flush(2)
        unsafe_db.sql(f"DROP DATABASE IF EXISTS `{env.orch_db}`")
        unsafe_db.sql(f"DROP DATABASE IF EXISTS `{env.wallet_db}`")


def orchestrator(env: Env, urls: dict[str, str], **more: str) -> Role:
    environ = env.environ(CHANCEPAY_ENV="prod", CHANCEPAY_SCANNER_URL="", **urls, **more)
    return Role("orchestrator", env, environ, env.ports["orchestrator"])


def flush_safe(role: Role, component: str = "orchestrator_db") -> float:
    return role.metric("chancepay_durability_safe", component=component, setting=FLUSH)


@pass1_only
@pytest.mark.parametrize("name", ["orchestrator", "auditor"])
def test_prod_refuses_to_start_on_a_database_that_does_not_flush_at_commit(on_unsafe, name: str) -> None:
    env, urls = on_unsafe
    if name == "orchestrator":
        role = orchestrator(env, urls).start()
    else:  # the online auditor reads both databases: the first unsafe one named is enough
        role = Role("auditor", env, env.environ(CHANCEPAY_ENV="prod", **urls), free_port()).start()
    try:
        assert role.wait_exit(timeout=60) == 2
        line = role.wait_for_event("[FAILED TO START]", timeout=5, setting=FLUSH)
        assert (line["value"], line["safe_value"]) == ("2", "1")
        assert line["component"] in (
            {"orchestrator_db"} if name == "orchestrator" else {"orchestrator_db", "wallet_db"}
        )
        assert line["level"] == "error" and "CHANCEPAY_ALLOW_UNSAFE_DURABILITY=1" in line["hint"]
    finally:
        role.kill()


@pass1_only
def test_the_override_starts_it_with_a_warning_and_the_metric_at_0(on_unsafe) -> None:
    env, urls = on_unsafe
    role = orchestrator(env, urls, CHANCEPAY_ALLOW_UNSAFE_DURABILITY="1").start()
    try:
        role.wait_ready(timeout=60)
        assert flush_safe(role) == 0
        assert role.metric("chancepay_durability_safe", component="orchestrator_db", setting="innodb_doublewrite") == 1
        warning = role.wait_for_event("durability setting unsafe", timeout=5, setting=FLUSH)
        assert warning["level"] == "warning" and warning["allowed_by"] == "CHANCEPAY_ALLOW_UNSAFE_DURABILITY=1"
        assert role.events("[FAILED TO") == []
    finally:
        assert role.stop() == 0


@pass1_only
def test_a_running_role_refuses_a_reconnect_to_an_unsafe_server_until_it_is_fixed(on_unsafe, unsafe_db) -> None:
    env, urls = on_unsafe
    unsafe_db.set_flush(1)
    role = orchestrator(env, urls).start()
    try:
        role.wait_ready(timeout=60)
        assert flush_safe(role) == 1
        unsafe_db.set_flush(2)
        unsafe_db.drop_connections(env.orch_user)

        def refused() -> bool:
            return httpx.get(role.url + "/readyz", timeout=5).status_code == 503 and bool(
                role.events("[FAILED TO TRUST")
            )

        wait_until(refused, timeout=30, what="readyz 503 after the reconnect found flush=2")
        line = role.events("[FAILED TO TRUST DATABASE]")[0]
        assert (line["setting"], line["value"], line["safe_value"]) == (FLUSH, "2", "1")
        assert flush_safe(role) == 0 and role.running
        unsafe_db.set_flush(1)
        role.wait_ready(timeout=30)  # the next connection passes: no restart
        assert flush_safe(role) == 1 and role.running
    finally:
        assert role.stop() == 0


def test_every_setting_is_safe_on_this_runs_servers(env: Env) -> None:
    role = Role("scanner", env, env.environ(CHANCEPAY_ENV="prod"), env.ports["scanner"]).start()
    try:
        role.wait_ready(timeout=60)

        def reported() -> dict[tuple[str, str], float]:
            found = {
                (dict(labels)["component"], dict(labels)["setting"]): value
                for (name, labels), value in role.metrics().items()
                if name == "chancepay_durability_safe"
            }
            return found if len(found) == 6 else {}

        assert wait_until(reported, timeout=30, what="six durability series") == {
            ("orchestrator_db", FLUSH): 1,
            ("orchestrator_db", "sync_binlog"): 1,
            ("orchestrator_db", "innodb_doublewrite"): 1,
            ("broker", "queue_type"): 1,
            ("broker", "queue_durable"): 1,
            ("broker", "publisher_confirms"): 1,
        }
    finally:
        assert role.stop() == 0
