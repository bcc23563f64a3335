"""Fixtures for tests/chart: installs of the rendered chart run as far as this machine can.

A `ChartInstall` is one rendered release: its MariaDB and RabbitMQ StatefulSets run with podman
(tests/support/pods.py, stand-in images of the same server series), and every `chancepay`
container of its Deployments, Jobs, CronJob and the helm test pod run as real processes on this
machine with exactly the environment the kubelet would give them (the Secret's values, with the
chart's Service names resolved to 127.0.0.1). Roles still run from the checkout, not from their
images (issue 9 runs the images).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import chart, podman
from tests.support.roles import Role
from tests.support.servers import ChartServers, chart_values, local_url

CHANCEPAY_ROLES = ("orchestrator", "scanner", "wallet")


@pytest.fixture(scope="session", autouse=True)
def _podman_available() -> None:
    why = podman.available()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session", autouse=True)
def _servers_up(servers) -> None:
    """This tier talks to the live MariaDB and RabbitMQ of this run (CHANCEPAY_TEST_SERVERS),
    after the check that podman is here."""


@pytest.fixture(scope="session")
def images() -> dict[str, dict[str, Any]]:
    """The three role images, built from the repository's Dockerfiles (cached by podman)."""
    from tests.support.release import build_images

    built = build_images()
    for info in built.values():
        print(
            f"\nimage {info['ref']}: {info['size_bytes'] / 1e6:.0f} MB, built (or found cached) in "
            f"{info['build_seconds']} s",
            file=sys.stderr,
        )
    return built


class ChartInstall:
    def __init__(
        self,
        workdir: Path,
        values: dict[str, Any] | None = None,
        other_secrets: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.workdir = workdir
        self.values = values or chart_values()
        self.other_secrets = other_secrets or {}
        self.servers = ChartServers(workdir / "servers", self.values, self.other_secrets)
        self.rendered = self.servers.rendered
        self.logs = types.SimpleNamespace(tmp=workdir / "logs")
        self.logs.tmp.mkdir(parents=True, exist_ok=True)
        self.roles: dict[str, Role] = {}

    # ------------------------------------------------------------------ what the kubelet would run
    def container(self, kind: str, name_suffix: str) -> dict[str, Any]:
        obj = self.rendered.get(kind, name_suffix) if kind != "Job" else self.rendered.of_kind("Job")[0]
        return chart.pod_spec(obj)["containers"][0]

    def environ(self, container: dict[str, Any], secret: dict[str, str] | None = None) -> dict[str, str]:
        """The container's environment as the kubelet builds it, Service names resolved here, and
        paths under a mounted Secret the chart does not render (TLS) pointed at a copy here."""
        env = chart.container_env(
            container, self.servers.secret if secret is None else secret, chart.config_maps(self.rendered)
        )
        env = {k: local_url(v) if "://" in v else v for k, v in env.items()}
        volumes = {v["name"]: v for v in self._pod_spec_of(container).get("volumes", [])}
        for m in container.get("volumeMounts", []):
            source = (volumes.get(m["name"]) or {}).get("secret", {}).get("secretName")
            if source in self.other_secrets:
                here = self.workdir / "mounts" / m["name"]
                here.mkdir(parents=True, exist_ok=True)
                items = volumes[m["name"]]["secret"].get("items") or [
                    {"key": k, "path": k} for k in self.other_secrets[source]
                ]
                for item in items:
                    (here / item["path"]).write_text(self.other_secrets[source][item["key"]])
                env = {k: v.replace(m["mountPath"].rstrip("/") + "/", f"{here}/") for k, v in env.items()}
        base = {k: v for k, v in os.environ.items() if not k.startswith("CHANCEPAY_")}
        return {**base, **env, "PYTHONUNBUFFERED": "1"}

    def _pod_spec_of(self, container: dict[str, Any]) -> dict[str, Any]:
        for obj in self.rendered.objects + [h["object"] for h in self.rendered.hooks]:
            if obj["kind"] in ("Deployment", "StatefulSet", "Job", "CronJob", "Pod"):
                spec = chart.pod_spec(obj)
                if any(c is container for c in spec.get("containers", [])):
                    return spec
        return {}

    def run_job(self, kind: str, name_suffix: str = "", *, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the (Cron)Job's container command to completion, as a process here."""
        c = self.container(kind, name_suffix)
        assert c["command"][0] == "chancepay", c["command"]
        return subprocess.run(
            [sys.executable, "-m", "chancepay", *c["command"][1:]],
            env=self.environ(c),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_role(self, role: str) -> Role:
        c = self.container("Deployment", f"-{role}")
        assert c["command"] == ["chancepay", role]
        env = self.environ(c)
        r = Role(role, self.logs, env, int(env["CHANCEPAY_PORT"])).start()  # type: ignore[arg-type]
        self.roles[role] = r
        return r

    def helm_test(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The `helm test` pod's own command, run here with its environment."""
        (pod,) = [h["object"] for h in self.rendered.hooks if h["events"] == ["test"]]
        c = chart.pod_spec(pod)["containers"][0]
        assert c["command"][0] == "python"
        return subprocess.run(
            [sys.executable, *c["command"][1:]], env=self.environ(c), capture_output=True, text=True, timeout=timeout
        )

    def stop(self) -> None:
        for r in self.roles.values():
            try:
                r.stop(timeout=30)
            except AssertionError:
                r.kill()
        self.servers.stop()


@pytest.fixture
def chart_install() -> Iterator[Any]:
    """`chart_install(values=None)` -> a ChartInstall (not started); all stopped and removed after."""
    made: list[ChartInstall] = []
    root = Path(tempfile.mkdtemp(prefix="chancepay-chart-", dir="/var/tmp"))

    def factory(values: dict[str, Any] | None = None, **kw: Any) -> ChartInstall:
        install = ChartInstall(root / str(len(made)), values, **kw)
        made.append(install)
        return install

    yield factory
    for install in made:
        install.stop()
    shutil.rmtree(root, ignore_errors=True)
