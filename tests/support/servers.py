"""The database and broker a test run talks to: one of two pairs, chosen by CHANCEPAY_TEST_SERVERS.

``debian12`` (default)
    the machine's own MariaDB 10.11 and RabbitMQ 3.10 (Debian 12 packages, already running;
    `make test` starts them if not): root over the unix socket, guest/guest.
``chart``
    the MariaDB and RabbitMQ *the Helm chart ships* (11.8 and 4.0), started from the chart's
    rendered StatefulSets with podman (tests/support/pods.py): same commands, environment,
    configuration, definitions, Secret, user, read-only root and probes; images stand in for the
    official ones (tests/support/podman.py). The suite reaches them as the chart's own users:
    root with the Secret's password, the chancepay broker user.

`make test` runs the integration and fault tiers once against each pair.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pymysql

from tests.support import chart

SERVERS_VAR = "CHANCEPAY_TEST_SERVERS"


def one_pass(which: str, reason: str) -> Any:
    """A mark that runs a test in the `which` pass only ("debian12" or "chart"; `make test` runs
    tests/integration and tests/faults in both). For tests whose subject does not depend on the
    server series (a Makefile, a README command, HTTP between roles, a role's own restart), or that
    need one pair's binaries. The SQL and AMQP paths such a test drives are driven on both series
    by the tests that run in both passes; the pass is chosen to keep the two passes equally long
    (docs/contributing.md)."""
    import pytest

    return pytest.mark.skipif(os.environ.get(SERVERS_VAR, "debian12") != which, reason=f"{which} pass only: {reason}")


@dataclasses.dataclass
class Servers:
    name: str
    mysql_host: str
    mysql_port: int
    admin_user: str
    admin_password: str
    admin_socket: str | None
    amqp_port: int
    amqp_user: str
    amqp_password: str
    rabbitmqctl: Callable[..., str]
    describe: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def admin_url(self) -> str:
        """CHANCEPAY_ADMIN_DB for `chancepay migrate`."""
        if self.admin_socket:
            return f"mysql://{self.admin_user}@localhost/?unix_socket={quote(self.admin_socket, safe='')}"
        return f"mysql://{self.admin_user}:{quote(self.admin_password, safe='')}@{self.mysql_host}:{self.mysql_port}/"

    def admin_connect(self, database: str | None = None) -> pymysql.connections.Connection:
        if self.admin_socket:
            return pymysql.connect(
                unix_socket=self.admin_socket, user=self.admin_user, database=database, autocommit=True
            )
        return pymysql.connect(
            host=self.mysql_host,
            port=self.mysql_port,
            user=self.admin_user,
            password=self.admin_password,
            database=database,
            autocommit=True,
        )

    def versions(self) -> tuple[str, str]:
        with self.admin_connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT VERSION()")
            mariadb = cur.fetchone()[0]
        rabbit = self.rabbitmqctl("version").strip()
        return mariadb, rabbit


def _local_rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def debian12() -> Servers:
    return Servers(
        name="debian12",
        mysql_host="127.0.0.1",
        mysql_port=3306,
        admin_user="root",
        admin_password="",
        admin_socket=os.environ.get("CHANCEPAY_TEST_MYSQL_SOCKET", "/run/mysqld/mysqld.sock"),
        amqp_port=5672,
        amqp_user="guest",
        amqp_password="guest",
        rabbitmqctl=_local_rabbitmqctl,
        describe="Debian 12's MariaDB and RabbitMQ on this machine",
    )


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()
# Each pass of `make test` picks listening ports from a range of its own, below the kernel's
# ephemeral range (32768-60999): the two passes run side by side and pick ports in batches before
# anything binds them, so neither can be handed a port the other just picked, and no outgoing
# connection's source port can take one either. (RabbitMQ's distribution port 25672 is avoided.)
_PORT_RANGES = {"debian12": (20000, 25599), "chart": (26000, 31999)}
_PORT_RNG = random.Random()  # its own: a test seeding the global generator must not make picks repeat


def free_port() -> int:
    """A port nothing listens on now, from this pass's range, and never one this process handed
    out before (seen once with the kernel's own choice: a wallet given its database's port)."""
    low, high = _PORT_RANGES.get(os.environ.get(SERVERS_VAR, "debian12"), _PORT_RANGES["debian12"])
    with _HANDED_OUT_LOCK:
        for _ in range(1000):
            port = _PORT_RNG.randint(low, high)
            if port in _HANDED_OUT:
                continue
            try:
                with socket.socket() as s:
                    s.bind(("0.0.0.0", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port in {low}-{high} after 1000 tries")


# --------------------------------------------------------------------------- the chart's servers
SERVICE_HOSTS = (
    "chancepay-mariadb",
    "chancepay-rabbitmq",
    "chancepay-orchestrator",
    "chancepay-scanner",
    "chancepay-wallet",
)


def chart_values(ports: dict[str, int] | None = None, **more: Any) -> dict[str, Any]:
    """Values for running the chart on this machine's host network: every port a free one (the
    chart's servers listen on their Service port, the roles on theirs)."""
    p = ports or {}
    values: dict[str, Any] = {
        "mariadb": {"service": {"port": p.get("mariadb") or free_port()}},
        "rabbitmq": {
            "service": {"port": p.get("amqp") or free_port(), "metricsPort": p.get("mq_metrics") or free_port()}
        },
    }
    for role in ("orchestrator", "scanner", "wallet"):
        port = p.get(role) or free_port()
        values[role] = {"port": port, "service": {"port": port}}
    for key, value in more.items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return values


def rabbitmq_host_env() -> dict[str, str]:
    """What the broker container needs beyond the chart on a shared host network: its own epmd and
    distribution ports (a pod has its own network namespace; here Debian's broker holds 4369/25672)."""
    return {"ERL_EPMD_PORT": str(free_port()), "RABBITMQ_DIST_PORT": str(free_port())}


def local_url(url: str) -> str:
    """A URL from the Secret, with the chart's Service names resolved to this machine."""
    parts = urlsplit(url)
    if parts.hostname not in SERVICE_HOSTS:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    hostport = hostport.replace(parts.hostname, "127.0.0.1", 1)
    return parts._replace(netloc=f"{userinfo}@{hostport}" if userinfo else hostport).geturl()


class ChartServers:
    """The chart's MariaDB and RabbitMQ pods, run from one render (see the module docstring)."""

    def __init__(
        self,
        workdir: Path,
        values: dict[str, Any] | None = None,
        other_secrets: dict[str, dict[str, str]] | None = None,
    ) -> None:
        from tests.support import podman

        self.other_secrets = other_secrets or {}
        self.workdir = workdir
        self.values = values or chart_values()
        image = podman.standin_servers_image()
        self.image_for: Callable[[str], str] = lambda ref: image
        self.tag = f"{os.getpid()}-{os.urandom(3).hex()}"
        self.host_env = rabbitmq_host_env()
        self.use(chart.render(self.values))

    def use(self, rendered: Any) -> None:
        """Take the StatefulSets and Secret of this render (an install, or an upgrade's). Pods
        already running keep running until `restart()`; PVC data stays in the same directories."""
        from tests.support.pods import Pod

        self.rendered = rendered
        self.secret = chart.secret_data(rendered)
        hosts = dict.fromkeys(SERVICE_HOSTS, "127.0.0.1")
        started = {name: pod.started for name, pod in getattr(self, "_pods", {}).items()}
        self.mariadb = Pod(
            f"cptest-{self.tag}-mariadb",
            rendered.get("StatefulSet", "-mariadb"),
            rendered,
            self.workdir / "mariadb",
            image_for=self.image_for,
            add_hosts=hosts,
            other_secrets=self.other_secrets,
        )
        self.rabbitmq = Pod(
            f"cptest-{self.tag}-rabbitmq",
            rendered.get("StatefulSet", "-rabbitmq"),
            rendered,
            self.workdir / "rabbitmq",
            image_for=self.image_for,
            add_hosts=hosts,
            extra_env={"rabbitmq": self.host_env},
            other_secrets=self.other_secrets,
        )
        self._pods = {"mariadb": self.mariadb, "rabbitmq": self.rabbitmq}
        for name, names in started.items():
            self._pods[name].started = names

    def restart(self) -> None:
        """Both pods deleted and created again from the current render (a rollout)."""
        for pod in (self.mariadb, self.rabbitmq):
            pod.restart()
        self.mariadb.wait_ready()
        self.rabbitmq.wait_ready()

    def start(self) -> ChartServers:
        self.mariadb.start()
        self.rabbitmq.start()
        self.mariadb.wait_ready()
        self.rabbitmq.wait_ready()
        return self

    def stop(self) -> None:
        for pod in (self.rabbitmq, self.mariadb):
            try:
                pod.destroy()
            except Exception:
                pass

    def rabbitmqctl(self, *args: str) -> str:
        result = self.rabbitmq.exec("rabbitmqctl", "-q", *args, timeout=120)
        if result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, ["rabbitmqctl", *args], result.stdout, result.stderr)
        return result.stdout.decode()

    def servers(self) -> Servers:
        admin = urlsplit(local_url(self.secret["admin-db-url"]))
        amqp = urlsplit(local_url(self.secret["amqp-url"]))
        return Servers(
            name="chart",
            mysql_host="127.0.0.1",
            mysql_port=int(admin.port or 3306),
            admin_user=admin.username or "root",
            admin_password=admin.password or "",
            admin_socket=None,
            amqp_port=int(amqp.port or 5672),
            amqp_user=amqp.username or "chancepay",
            amqp_password=amqp.password or "",
            rabbitmqctl=self.rabbitmqctl,
            describe="the chart's MariaDB and RabbitMQ StatefulSets, run with podman",
            extra={"chart_servers": self},
        )


_current: Servers | None = None


def current() -> Servers:
    global _current
    if _current is None:
        _current = debian12()
    return _current


def set_current(servers: Servers | None) -> None:
    global _current
    _current = servers


@contextmanager
def session_servers() -> Iterator[Servers]:
    """The pair selected by CHANCEPAY_TEST_SERVERS, up for the whole test session."""
    which = os.environ.get(SERVERS_VAR, "debian12")
    if which == "debian12":
        from tests.support.cleanup import sweep_servers

        s = debian12()
        sweep_servers(s)
        set_current(s)
        try:
            yield s
        finally:
            set_current(None)
        return
    if which != "chart":
        raise RuntimeError(f"{SERVERS_VAR} must be debian12 or chart, got {which!r}")
    from tests.support.cleanup import sweep_podman

    sweep_podman()
    workdir = Path(tempfile.mkdtemp(prefix="chancepay-chart-servers-", dir="/var/tmp"))
    cs = ChartServers(workdir)
    try:
        cs.start()
        s = cs.servers()
        set_current(s)
        yield s
    finally:
        set_current(None)
        cs.stop()
        shutil.rmtree(workdir, ignore_errors=True)
