"""A rendered Helm release, played on this machine with podman as far as podman goes.

What runs, and how (docs/kubernetes.md "What the suite verifies without a cluster" lists the same):
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
- day 2 (`upgrade`, `roll`, `uninstall`, `reinstall`): given a `helm` (deploy/helm_render.py's
  Cluster: Helm's own Install, Upgrade and Uninstall actions against a strict fake API server that
  lives as long as the release), each revision is what Helm's action rendered and stored, and what
  the uninstall leaves in that API is what the played uninstall keeps; without one, a revision is a
  render with the release's Secret in the fake API (what `lookup` finds). A
  Deployment is rolled as its strategy says (maxSurge 1, maxUnavailable 0): a new pod played,
  Ready, then the Service's endpoint moved to it (every running pod's /etc/hosts rewritten in
  place, what kube-proxy does for a ClusterIP) and the old pod terminated as a kubelet does
  (its preStop hook, then SIGTERM, SIGKILL at the end of terminationGracePeriodSeconds).
  `uninstall` removes what `helm uninstall` removes and keeps what it keeps: the Secret
  (`helm.sh/resource-policy: keep`, here the podman secret) and the StatefulSets' PVCs (their
  volume directories).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support import chart
from tests.support import podman as pm
from tests.support.podman import podman
from tests.support.pods import Pod

ROLES = ("orchestrator", "scanner", "wallet")
NETWORK = "podman"
NAMESPACE = "chancepay"  # helm_render's namespace
HELM_RELEASE = "chancepay"  # the release name Helm knows (the objects are named by fullnameOverride)


def pick_subnet() -> int:
    """A third octet for this release's pod addresses in podman's 10.88.0.0/16."""
    return 100 + int.from_bytes(os.urandom(1), "big") % 150


class PlayedRelease:
    def __init__(
        self,
        workdir: Path,
        name: str,
        values: dict[str, Any] | None = None,
        *,
        secret: dict[str, str] | None = None,
        extra_hosts: dict[str, str] | None = None,
        octet: int | None = None,
        helm: Any = None,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.values = {**(values or {}), "fullnameOverride": name}
        self.helm = helm  # a started helm_render.Cluster, or None
        self.rendered = (
            chart.render(self.values) if helm is None else helm.install(HELM_RELEASE, str(chart.CHART), self.values)
        )
        self.secret_name = (self.values.get("secrets") or {}).get("existingSecret") or f"{name}-secrets"
        self.secret = secret if secret is not None else chart.secret_data(self.rendered)
        self.octet = octet or pick_subnet()
        self.extra_hosts = dict(extra_hosts or {})
        self.servers: dict[str, Pod] = {}
        self.played: list[str] = []  # podman pod names
        self.started_at: dict[str, float] = {}
        self.specs: dict[str, dict[str, Any]] = {}  # played pod name -> the pod spec it was played from
        self.live: dict[str, list[str]] = {}  # role -> its Deployment's current pods, in replica order
        self.revision = 1
        self._rotation = itertools.count()
        self._containers: dict[str, str] = {}  # played pod -> its container
        self._hosts_files: dict[str, Path] = {}  # played pod -> its /etc/hosts on this machine
        self._plan()

    # ------------------------------------------------------------------ addresses
    def _address(self, pod: str) -> str:
        ip = f"10.88.{self.octet}.{self.next_host}"
        self.next_host += 1
        self.ips[pod] = ip
        return ip

    def _plan(self) -> None:
        self.next_host = 10
        self.ips: dict[str, str] = {}  # pod name -> address
        self.hosts: dict[str, str] = dict(self.extra_hosts)  # Service name -> address
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
        """The role's pods: those running now once played (a rollout replaces them), else the
        ones the render asks for."""
        if self.live.get(role):
            return list(self.live[role])
        dep = self.rendered.get("Deployment", f"{self.name}-{role}")
        return [f"{dep['metadata']['name']}-{i}" for i in range(dep["spec"]["replicas"])]

    def endpoint(self, role: str = "orchestrator", port: int = 8000) -> str:
        """A URL of one of the role's pods that are in its Service's endpoints now (round robin):
        what a client going through the Service would reach."""
        pods = self.role_pods(role)
        return self.url(pods[next(self._rotation) % len(pods)], port)

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
                pod = Pod(
                    f"cpplay-{pod_name}",
                    sts,
                    self.rendered,
                    self.workdir / pod_name,
                    image_for=lambda ref: image,
                    add_hosts=self.hosts,
                    secrets=self.secret,
                    network=NETWORK,
                    ip=self.ips[pod_name],
                    k8s_name=pod_name,
                    namespace=NAMESPACE,
                )
                key = sts["metadata"]["name"].removeprefix(f"{self.name}-")
                self.servers[key if i == 0 else f"{key}-{i}"] = pod.start()

    def wait_servers(self) -> None:
        for pod in self.servers.values():
            pod.wait_ready()

    # ------------------------------------------------------------------ kube play
    def _play(self, pod_name: str, spec: dict[str, Any], labels: dict[str, str]) -> None:
        self.specs[pod_name] = spec  # as rendered (the played copy below drops the ports)
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
        self._containers.pop(pod_name, None)
        self._hosts_files.pop(pod_name, None)
        self.played.append(pod_name)
        self.started_at[pod_name] = time.monotonic()
        ip = self.ips[pod_name] if pod_name in self.ips else self._address(pod_name)
        podman("kube", "play", "--network", NETWORK, "--ip", ip, str(path), timeout=120)

    def play_deployments(self) -> None:
        for dep in self.rendered.of_kind("Deployment"):
            tmpl = dep["spec"]["template"]
            pods = [f"{dep['metadata']['name']}-{i}" for i in range(dep["spec"]["replicas"])]
            for pod in pods:
                self._play(pod, tmpl["spec"], tmpl["metadata"]["labels"])
            self.live[dep["metadata"]["name"].removeprefix(f"{self.name}-")] = pods

    def play_job(self, kind: str) -> str:
        """Play the migrate Job's (kind="Job"), the reconcile CronJob's (kind="CronJob") or the
        helm test Pod's (kind="test") pod; returns the podman pod name."""
        if kind == "test":
            (obj,) = [h["object"] for h in self.rendered.hooks if h["events"] == ["test"]]
            spec, labels, name = obj["spec"], obj["metadata"]["labels"], obj["metadata"]["name"]
        else:
            (obj,) = self.rendered.of_kind(kind)
            spec = chart.pod_spec(obj)
            labels = (obj["spec"]["jobTemplate"]["spec"]["template"] if kind == "CronJob" else obj["spec"]["template"])[
                "metadata"
            ]["labels"]
            name = f"{obj['metadata']['name']}-run"
        self._play(name, spec, labels)
        return name

    # ------------------------------------------------------------------ observing
    def container(self, pod_name: str) -> str:
        if pod_name not in self._containers:
            names = podman("pod", "inspect", "--format", "{{range .Containers}}{{.Name}} {{end}}", pod_name)
            self._containers[pod_name] = [n for n in names.stdout.decode().split() if not n.endswith("-infra")][0]
        return self._containers[pod_name]

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
            return (
                httpx.get(
                    f"http://{self.ips[pod_name]}:{port}{p['path']}", timeout=c[kind].get("timeoutSeconds", 1)
                ).status_code
                < 400
            )
        except httpx.HTTPError:
            return False

    def _pod_spec(self, pod_name: str) -> dict[str, Any]:
        if pod_name in self.specs:
            return self.specs[pod_name]
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
                raise AssertionError(
                    f"{pod_name} not ready within its startup budget {budget}s:\n{self.logs(pod_name)[-3000:]}"
                )
            time.sleep(0.5)
        return time.monotonic() - start

    def seconds_to_alive(self, pod_name: str, timeout: float = 60) -> float:
        """From `kube play` to the first passing startupProbe (/healthz): the image's start-up time."""
        while not self.probe(pod_name, "startupProbe"):
            if time.monotonic() - self.started_at[pod_name] > timeout:
                raise AssertionError(f"{pod_name} not alive after {timeout}s:\n{self.logs(pod_name)[-3000:]}")
            time.sleep(0.1)
        return time.monotonic() - self.started_at[pod_name]

    # ------------------------------------------------------------------ day 2
    def render_again(self, values: dict[str, Any] | None = None) -> Any:
        """This release rendered with `values` (default: its own) while its Secret exists: what
        `helm upgrade` or, after an uninstall that kept the Secret, `helm install` renders."""
        values = {**(self.values if values is None else values), "fullnameOverride": self.name}
        return chart.render_with_secret(values, self.secret, secret_name=self.secret_name)

    def upgrade(self, values: dict[str, Any]) -> dict[str, Any]:
        """Take the next revision's render (nothing is replaced yet: see `roll`, `play_job`).
        Returns what changed: {"job": (old name, new name), "deployments": [roles whose pod
        template changed], "statefulsets": [StatefulSets whose pod template changed]}."""
        new = (
            self.render_again(values)
            if self.helm is None
            else self.helm.upgrade(HELM_RELEASE, str(chart.CHART), {**values, "fullnameOverride": self.name})
        )
        return self._take(new, {**values, "fullnameOverride": self.name})

    def rollback(self) -> dict[str, Any]:
        """`helm rollback` to the previous revision (Helm's engine: deploy/helm_render.py
        Cluster.rollback); like `upgrade`, nothing is replaced yet. Returns what changed."""
        assert self.helm is not None, "a rollback needs the release's Helm history"
        new = self.helm.rollback(HELM_RELEASE)
        # The new revision holds the values it was rolled back to.
        values = chart.helm_render._release_records(self.helm.api, HELM_RELEASE)[-1].get("config") or {}
        return self._take(new, values)

    def _take(self, new: Any, values: dict[str, Any]) -> dict[str, Any]:
        old = self.rendered
        if not (self.values.get("secrets") or {}).get("existingSecret"):
            assert chart.secret_data(new) == self.secret, "the upgrade rendered other passwords: lookup missed"

        def templates(r: Any, kind: str) -> dict[str, Any]:
            return {o["metadata"]["name"]: o["spec"]["template"] for o in r.of_kind(kind)}

        changed = {
            kind: [
                name.removeprefix(f"{self.name}-")
                for name, t in templates(new, kind).items()
                if templates(old, kind).get(name) != t
            ]
            for kind in ("Deployment", "StatefulSet")
        }
        jobs = [[o["metadata"]["name"] for o in r.of_kind("Job")] for r in (old, new)]
        self.values = values
        self.rendered = new
        self.revision += 1
        return {
            "job": (jobs[0][0] if jobs[0] else None, jobs[1][0] if jobs[1] else None),
            "deployments": changed["Deployment"],
            "statefulsets": changed["StatefulSet"],
        }

    def _service_of(self, role: str) -> str | None:
        dep = self.rendered.get("Deployment", f"{self.name}-{role}")
        for svc in self.rendered.of_kind("Service"):
            if svc["spec"].get("selector") == dep["spec"]["selector"]["matchLabels"]:
                return svc["metadata"]["name"]
        return None

    def _set_service(self, service: str, ip: str) -> None:
        """The Service's endpoint is now `ip`: every running played pod resolves it there (its
        /etc/hosts rewritten in place; a bind mount, so the containers see it at once)."""
        self.hosts[service] = ip
        for pod in self.played:
            if pod not in self._hosts_files:
                out = podman("inspect", "--format", "{{.HostsPath}}", self.container(pod), check=False)
                self._hosts_files[pod] = Path(out.stdout.decode().strip() if out.returncode == 0 else "/nonexistent")
            path = self._hosts_files[pod]
            if not path.is_file():  # a finished Job's pod
                continue
            lines = [line for line in path.read_text().splitlines() if line.split()[1:2] != [service]]
            with path.open("r+") as f:
                f.write("\n".join([f"{ip}\t{service}", *lines]) + "\n")
                f.truncate()

    def terminate(self, pod_name: str) -> dict[str, Any]:
        """Stop a played pod as a kubelet does: its first container's preStop hook (exec or sleep),
        then SIGTERM, SIGKILL once terminationGracePeriodSeconds (counted from the start of the
        hook) are over; then the pod is removed. Returns {"prestop_seconds", "seconds", "exit_code"}."""
        spec = self.specs[pod_name]
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        container = self.container(pod_name)
        hook = (spec["containers"][0].get("lifecycle") or {}).get("preStop") or {}
        start = time.monotonic()
        record: dict[str, Any] = {}
        if "exec" in hook:
            result = podman("exec", container, *hook["exec"]["command"], check=False, timeout=grace + 10)
            if result.returncode != 0:
                record["prestop_failed"] = (result.stdout + result.stderr).decode(errors="replace")[-500:]
        elif "sleep" in hook:
            time.sleep(min(grace, float(hook["sleep"]["seconds"])))  # the hook itself is a sleep
        prestop = time.monotonic() - start
        remaining = max(1, int(grace - prestop))
        podman("stop", "-t", str(remaining), container, check=False, timeout=remaining + 60)
        seconds = time.monotonic() - start
        code = int(self.state(pod_name)["ExitCode"])
        log = self.logs(pod_name)
        failed = [line for line in log.splitlines() if "[FAILED TO" in line]
        if failed:
            record["failed_lines"] = failed[-20:]
        if code != 0:
            record["log_tail"] = log[-3000:]
        podman("pod", "rm", "-f", "-t", "5", pod_name, check=False, timeout=120)
        self.played.remove(pod_name)
        return {"prestop_seconds": round(prestop, 2), "seconds": round(seconds, 2), "exit_code": code, **record}

    def remove(self, pod_name: str) -> None:
        """Delete a played pod that has finished (a Job's pod, when Helm deletes the Job)."""
        podman("pod", "rm", "-f", "-t", "5", pod_name, check=False, timeout=120)
        if pod_name in self.played:
            self.played.remove(pod_name)

    def roll(self, role: str) -> list[dict[str, Any]]:
        """Roll the role's Deployment to the current render, one replica at a time (maxSurge 1,
        maxUnavailable 0): the new pod played and Ready, the Service moved to it, the old pod
        terminated. Returns one record per replaced pod."""
        dep = self.rendered.get("Deployment", f"{self.name}-{role}")
        strategy = dep["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0, strategy
        tmpl = dep["spec"]["template"]
        service = self._service_of(role)
        records = []
        for i, old in enumerate(self.role_pods(role)):
            new = f"{dep['metadata']['name']}-{i}-r{self.revision}"
            started = time.monotonic()
            self._play(new, tmpl["spec"], tmpl["metadata"]["labels"])
            played = time.monotonic() - started
            ready = self.wait_ready(new)
            pods = self.role_pods(role)
            pods[i] = new
            self.live[role] = pods  # one assignment: a client reading the endpoints sees either list
            if service and i == 0:
                self._set_service(service, self.ips[new])
            stopped = self.terminate(old)
            records.append(
                {
                    "old": old,
                    "new": new,
                    "play_seconds": round(played, 2),
                    "ready_seconds": round(ready, 2),
                    "replace_seconds": round(time.monotonic() - started, 2),
                    **stopped,
                }
            )
        return records

    def uninstall(self) -> tuple[list[str], dict[str, dict[str, Any]]]:
        """`helm uninstall`: every object of the release deleted at once (pods terminated as the
        kubelet does, concurrently); kept: the Secret (resource-policy: keep) and the PVCs (made by
        the StatefulSet controller, never by Helm). With a `helm`, Helm's Uninstall action runs and
        the Secret is kept only if it is still in the API after it. Returns what Helm left
        ("Kind/name") and how each running role pod stopped (see `terminate`)."""
        kept = [f"Secret/{self.secret_name}"]
        if self.helm is not None:
            self.helm.uninstall(HELM_RELEASE)
            kept = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in self.helm.live())
        # The role pods are terminated together, then the servers' pods together: a kubelet does
        # not restart a container of a terminating pod, podman (restart policy Always) would, so
        # a role must not lose its servers while it terminates here.
        with ThreadPoolExecutor(max_workers=8) as pool:
            stopping = {pod: pool.submit(self.terminate, pod) for pod in list(self.played) if self._running(pod)}
            stopped = {pod: f.result() for pod, f in stopping.items()}
            for f in [pool.submit(pod.stop) for pod in self.servers.values()]:
                f.result()
        for pod in list(self.played):  # Job and test pods that had completed
            podman("pod", "rm", "-f", pod, check=False, timeout=120)
            self.played.remove(pod)
        self.servers = {}
        self.live = {}
        if f"Secret/{self.secret_name}" not in kept:
            podman("secret", "rm", self.secret_name, check=False)
        return kept, stopped

    def _running(self, pod_name: str) -> bool:
        try:
            return self.state(pod_name)["Status"] == "running"
        except Exception:
            return False

    def reinstall(self, values: dict[str, Any] | None = None) -> None:
        """`helm install` of the same release again after `uninstall`: its render finds the kept
        Secret; the caller plays it as an install (start_servers on the kept volumes, ...)."""
        if values is not None:
            self.values = {**values, "fullnameOverride": self.name}
        self.rendered = (
            self.render_again() if self.helm is None else self.helm.install(HELM_RELEASE, str(chart.CHART), self.values)
        )
        if not (self.values.get("secrets") or {}).get("existingSecret"):
            assert chart.secret_data(self.rendered) == self.secret, "the reinstall did not find the kept Secret"
        self.revision = 1
        self._plan()

    def destroy(self) -> None:
        """The test is over: every pod killed and removed at once, the servers' data deleted. A
        graceful stop is what `terminate` and `uninstall` test; here it only cost time (a preStop
        sleep and a server's shutdown per pod, one after the other: ~30 s per release)."""

        def remove(name: str) -> None:
            # A pod still starting can make one `pod rm` fail (a leaked pod was seen once): retry,
            # bounded, until it is gone.
            for _ in range(3):
                podman("pod", "rm", "-f", "-t", "0", name, check=False, timeout=120)
                if podman("pod", "exists", name, check=False).returncode != 0:
                    break

        with ThreadPoolExecutor(max_workers=8) as pool:
            for f in [pool.submit(remove, name) for name in self.played]:
                f.result()
            for f in [pool.submit(pod.destroy) for pod in self.servers.values()]:
                f.result()
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
