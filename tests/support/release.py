"""A rendered Helm release, played on this machine with podman as far as podman goes.

What runs, and how (README "What is verified here" lists the same):
- Deployments: each replica's pod template played as a Pod with `podman kube play` (podman 4.3
  runs one pod per Deployment and cannot give replicas addresses of their own), from the images
  built here from the repository's Dockerfiles; env from the rendered Secret through a podman
  secret (what kube play reads for secretKeyRef), securityContext, the /tmp emptyDir, restart
  policy Always (podman restarts an exited container, as the kubelet would).
- the migrate Job, the reconcile CronJob's job and the helm test Pod: their pod templates played
  as Pods (restartPolicy Never), run to completion.
- StatefulSets (MariaDB, RabbitMQ): kube play cannot run them (no StatefulSet kind, and 4.3 crashes
  on Secret volumes), so tests/support/pods.py runs their pod templates verbatim with podman.
- network: podman's bridge; every pod gets an address of its own (10.88.N.x, chosen here), and
  Service names are resolved by hostAliases added to each pod: no cluster DNS, no kube-proxy (a
  Service with several replicas resolves to its first replica). The played copy drops the
  containers' `ports` lists, which podman 4.3 would publish on the host.
- probes: podman 4.3 turns livenessProbes into healthchecks that need curl and systemd timers,
  neither of which is here; the harness evaluates the probes itself, from outside the pod, the
  way a kubelet does (HTTP GET pod-ip:port/path).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import chart, podman as pm
from tests.support.podman import podman
from tests.support.pods import Pod

ROLES = ("orchestrator", "scanner", "wallet")
NETWORK = "podman"
NAMESPACE = "chancepay"  # helm_render's namespace


def pick_subnet() -> int:
    """A third octet for this release's pod addresses in podman's 10.88.0.0/16."""
    return 100 + int.from_bytes(os.urandom(1), "big") % 150


class PlayedRelease:
    def __init__(self, workdir: Path, name: str, values: dict[str, Any] | None = None, *,
                 secret: dict[str, str] | None = None, extra_hosts: dict[str, str] | None = None,
                 octet: int | None = None) -> None:
        self.workdir = workdir
        self.name = name
        self.values = {**(values or {}), "fullnameOverride": name}
        self.rendered = chart.render(self.values)
        self.secret_name = (self.values.get("secrets") or {}).get("existingSecret") or f"{name}-secrets"
        self.secret = secret if secret is not None else chart.secret_data(self.rendered)
        self.octet = octet or pick_subnet()
        self.next_host = 10
        self.ips: dict[str, str] = {}  # pod name -> address
        self.hosts: dict[str, str] = dict(extra_hosts or {})  # Service name -> address
        self.servers: dict[str, Pod] = {}
        self.played: list[str] = []  # podman pod names
        self.started_at: dict[str, float] = {}
        self._plan()

    # ------------------------------------------------------------------ addresses
    def _address(self, pod: str) -> str:
        ip = f"10.88.{self.octet}.{self.next_host}"
        self.next_host += 1
        self.ips[pod] = ip
        return ip

    def _plan(self) -> None:
        for sts in self.rendered.of_kind("StatefulSet"):
            svc = sts["spec"]["serviceName"]
            for i in range(sts["spec"]["replicas"]):
                pod = f"{sts['metadata']['name']}-{i}"
                ip = self._address(pod)
                # The pod's stable DNS name (what the broker nodes and the roles' URLs use)...
                self.hosts[f"{pod}.{svc}.{NAMESPACE}.svc.cluster.local"] = ip
                if i == 0:  # ...and the headless Service's name, here resolving to the first pod.
                    self.hosts[svc] = ip
        for dep in self.rendered.of_kind("Deployment"):
            for i in range(dep["spec"]["replicas"]):
                ip = self._address(f"{dep['metadata']['name']}-{i}")
                if i == 0:
                    for svc in self.rendered.of_kind("Service"):
                        if svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]:
                            self.hosts[svc["metadata"]["name"]] = ip

    def role_pods(self, role: str) -> list[str]:
        dep = self.rendered.get("Deployment", f"{self.name}-{role}")
        return [f"{dep['metadata']['name']}-{i}" for i in range(dep["spec"]["replicas"])]

    def url(self, pod: str, port: int) -> str:
        return f"http://{self.ips[pod]}:{port}"

    def service_url(self, secret_key: str) -> str:
        """A URL from the Secret with its Service host replaced by the pod address (for the test
        itself, which is outside the pods' /etc/hosts)."""
        from urllib.parse import urlsplit

        url = self.secret[secret_key].split(",")[0]  # a broker cluster: its first node
        host = urlsplit(url).hostname
        return url.replace(f"@{host}:", f"@{self.hosts.get(host, host)}:", 1)

    # ------------------------------------------------------------------ the Secret
    def create_secret(self) -> None:
        """The Secret as a podman secret: its data map as JSON, base64 values (what kube play reads)."""
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secret.items()}
        podman("secret", "rm", self.secret_name, check=False)
        podman("secret", "create", self.secret_name, "-", input=json.dumps(data).encode())

    # ------------------------------------------------------------------ StatefulSets
    def start_servers(self) -> None:
        image = pm.standin_servers_image()
        for sts in self.rendered.of_kind("StatefulSet"):
            for i in range(sts["spec"]["replicas"]):
                pod_name = f"{sts['metadata']['name']}-{i}"
                pod = Pod(f"cpplay-{pod_name}", sts, self.rendered, self.workdir / pod_name,
                          image_for=lambda ref: image, add_hosts=self.hosts, secrets=self.secret, network=NETWORK,
                          ip=self.ips[pod_name], k8s_name=pod_name, namespace=NAMESPACE)
                key = sts["metadata"]["name"].removeprefix(f"{self.name}-")
                self.servers[key if i == 0 else f"{key}-{i}"] = pod.start()

    def wait_servers(self) -> None:
        for pod in self.servers.values():
            pod.wait_ready()

    # ------------------------------------------------------------------ kube play
    def _play(self, pod_name: str, spec: dict[str, Any], labels: dict[str, str]) -> None:
        spec = copy.deepcopy(spec)
        spec["hostAliases"] = [{"ip": ip, "hostnames": [h]} for h, ip in sorted(self.hosts.items())]
        # podman 4.3 publishes every containerPort on the host (a Kubernetes pod does not): the
        # ports list is informational in Kubernetes, so the played copy drops it.
        for c in spec.get("initContainers", []) + spec["containers"]:
            c.pop("ports", None)
        doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name, "labels": labels}, "spec": spec}
        path = self.workdir / "played" / f"{pod_name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        podman("pod", "rm", "-f", pod_name, check=False)
        self.played.append(pod_name)
        self.started_at[pod_name] = time.monotonic()
        ip = self.ips[pod_name] if pod_name in self.ips else self._address(pod_name)
        podman("kube", "play", "--network", NETWORK, "--ip", ip, str(path), timeout=120)

    def play_deployments(self) -> None:
        for dep in self.rendered.of_kind("Deployment"):
            tmpl = dep["spec"]["template"]
            for i in range(dep["spec"]["replicas"]):
                self._play(f"{dep['metadata']['name']}-{i}", tmpl["spec"], tmpl["metadata"]["labels"])

    def play_job(self, kind: str) -> str:
        """Play the migrate Job's (kind="Job"), the reconcile CronJob's (kind="CronJob") or the
        helm test Pod's (kind="test") pod; returns the podman pod name."""
        if kind == "test":
            (obj,) = [h["object"] for h in self.rendered.hooks if h["events"] == ["test"]]
            spec, labels, name = obj["spec"], obj["metadata"]["labels"], obj["metadata"]["name"]
        else:
            (obj,) = self.rendered.of_kind(kind)
            spec = chart.pod_spec(obj)
            labels = (obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob"
                      else obj["spec"]["template"])["metadata"]["labels"]
            name = f"{obj['metadata']['name']}-run"
        self._play(name, spec, labels)
        return name

    # ------------------------------------------------------------------ observing
    def container(self, pod_name: str) -> str:
        names = podman("pod", "inspect", "--format", "{{range .Containers}}{{.Name}} {{end}}", pod_name)
        return [n for n in names.stdout.decode().split() if not n.endswith("-infra")][0]

    def state(self, pod_name: str) -> dict[str, Any]:
        out = podman("inspect", "--format", "{{json .State}}|{{.RestartCount}}", self.container(pod_name))
        state, restarts = out.stdout.decode().strip().rsplit("|", 1)
        return {**json.loads(state), "RestartCount": int(restarts)}

    def logs(self, pod_name: str) -> str:
        out = podman("logs", self.container(pod_name), check=False)
        return (out.stdout + out.stderr).decode(errors="replace")

    def wait_completed(self, pod_name: str, timeout: float) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(pod_name)
            if st["Status"] == "exited":
                return int(st["ExitCode"]), self.logs(pod_name)
            if time.monotonic() > deadline:
                raise AssertionError(f"{pod_name} still running after {timeout}s:\n{self.logs(pod_name)[-3000:]}")
            time.sleep(0.5)

    def probe(self, pod_name: str, kind: str) -> bool:
        """One probe of the pod's first container, from outside, as the kubelet does it."""
        c = self._pod_spec(pod_name)["containers"][0]
        p = c[kind]["httpGet"]
        port = p["port"]
        if not isinstance(port, int):
            port = next(cp["containerPort"] for cp in c["ports"] if cp["name"] == port)
        try:
            return httpx.get(f"http://{self.ips[pod_name]}:{port}{p['path']}",
                             timeout=c[kind].get("timeoutSeconds", 1)).status_code < 400
        except httpx.HTTPError:
            return False

    def _pod_spec(self, pod_name: str) -> dict[str, Any]:
        for dep in self.rendered.of_kind("Deployment"):
            if pod_name.startswith(dep["metadata"]["name"] + "-"):
                return chart.pod_spec(dep)
        raise KeyError(pod_name)

    def startup_budget(self, pod_name: str) -> float:
        p = self._pod_spec(pod_name)["containers"][0]["startupProbe"]
        return p.get("initialDelaySeconds", 0) + p["periodSeconds"] * p["failureThreshold"]

    def wait_ready(self, pod_name: str) -> float:
        """Ready (readinessProbe passes) within the startup probe's budget; returns the seconds."""
        budget = self.startup_budget(pod_name)
        start = time.monotonic()
        while not self.probe(pod_name, "readinessProbe"):
            if time.monotonic() - start > budget:
                raise AssertionError(f"{pod_name} not ready within its startup budget {budget}s:\n"
                                     f"{self.logs(pod_name)[-3000:]}")
            time.sleep(0.5)
        return time.monotonic() - start

    def seconds_to_alive(self, pod_name: str, timeout: float = 60) -> float:
        """From `kube play` to the first passing startupProbe (/healthz): the image's start-up time."""
        while not self.probe(pod_name, "startupProbe"):
            if time.monotonic() - self.started_at[pod_name] > timeout:
                raise AssertionError(f"{pod_name} not alive after {timeout}s:\n{self.logs(pod_name)[-3000:]}")
            time.sleep(0.1)
        return time.monotonic() - self.started_at[pod_name]

    def destroy(self) -> None:
        for name in self.played:
            # A pod still starting can make one `pod rm` fail (a leaked pod was seen once): retry,
            # bounded, until it is gone.
            for _ in range(3):
                podman("pod", "rm", "-f", "-t", "5", name, check=False, timeout=120)
                if podman("pod", "exists", name, check=False).returncode != 0:
                    break
        for pod in self.servers.values():
            pod.destroy()
        podman("secret", "rm", self.secret_name, check=False)


def build_images() -> dict[str, dict[str, Any]]:
    """The three role images, built from the repository's Dockerfiles (tag = the chart's
    appVersion): {role: {"ref", "build_seconds", "size_bytes"}}."""
    version = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())["appVersion"]
    out = {}
    for role in ROLES:
        ref, seconds = pm.build_role_image(role, version)
        out[role] = {"ref": ref, "build_seconds": round(seconds, 1), "size_bytes": pm.image_size(ref)}
    return out

