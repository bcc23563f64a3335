"""Run one pod of a rendered workload with podman, as a kubelet would, as far as podman can.

What is taken verbatim from the rendered pod template: every init container (in order, each
must exit 0) and container, their command/args, env (value, secretKeyRef, configMapKeyRef with
the rendered Secret and ConfigMaps), volume mounts (emptyDir, PVC, Secret and ConfigMap volumes
with their items and modes, subPath), the user and group (runAsUser, runAsGroup, fsGroup as a
supplementary group), readOnlyRootFilesystem, dropped capabilities, no privilege escalation,
exec probes (run with `podman exec`), and fsGroup applied to the volumes the way the kubelet
does (recursive chgrp + group rw + setgid; skipped when fsGroupChangePolicy is OnRootMismatch
and the volume's root already matches).

What is not (and the caller says so where it matters): the image (official images cannot be
pulled here: `image_for` maps each to a local stand-in of the same server series), the network
(either the host's, with the chart rendered on free ports and Service names mapped to 127.0.0.1,
or podman's bridge with a pod IP of the caller's choosing and Service names as extra hosts: no
cluster DNS, no kube-proxy), resource limits, and the kubelet's probe scheduling (wait_ready polls
the readiness command within the startup probe's budget instead).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.support import chart
from tests.support.podman import podman


def apply_fs_group(path: Path, gid: int, policy: str = "Always") -> bool:
    """The kubelet's SetVolumeOwnership: every file gets group `gid` and group read/write, every
    directory also setgid. With OnRootMismatch nothing changes if the root already matches.
    Returns whether anything was changed."""
    st = path.stat()
    if policy == "OnRootMismatch" and st.st_gid == gid and st.st_mode & stat.S_ISGID and st.st_mode & 0o070 == 0o070:
        return False
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames, None]:
            p = Path(dirpath) if name is None else Path(dirpath) / name
            if p.is_symlink():
                continue
            os.chown(p, -1, gid)
            mode = p.stat().st_mode
            if p.is_dir():
                os.chmod(p, stat.S_IMODE(mode) | 0o2770)
            else:
                os.chmod(p, stat.S_IMODE(mode) | 0o660)
    return True


class Pod:
    """One pod: `start()`, `wait_ready()`, `exec()`, `logs()`, `stop()`, `restart()` (a new pod
    of the same workload: emptyDirs start empty, PVCs keep their data)."""

    def __init__(
        self,
        name: str,
        obj: dict[str, Any],
        rendered: Any,
        workdir: Path,
        *,
        image_for: Callable[[str], str],
        add_hosts: dict[str, str] | None = None,
        extra_env: dict[str, dict[str, str]] | None = None,
        secrets: dict[str, str] | None = None,
        network: str = "host",
        ip: str | None = None,
        other_secrets: dict[str, dict[str, str]] | None = None,
        k8s_name: str | None = None,
        namespace: str = "chancepay",
    ) -> None:
        self.name = name
        self.obj = obj
        self.spec = chart.pod_spec(obj)
        self.secrets = dict(chart.secret_data(rendered) if secrets is None else secrets)
        self.other_secrets = other_secrets or {}  # Secrets the chart does not render (e.g. TLS), by name
        self.maps = chart.config_maps(rendered)
        self.workdir = workdir
        self.image_for = image_for
        self.add_hosts = add_hosts or {}
        self.extra_env = extra_env or {}
        self.claims = [t["metadata"]["name"] for t in obj.get("spec", {}).get("volumeClaimTemplates", [])]
        self.started: list[str] = []
        self.fs_group_changes: list[str] = []
        # On a bridge network the containers share one podman pod (one network namespace, one IP),
        # as a Kubernetes pod's containers do.
        self.network = network
        self.ip = ip
        self.pod_name = f"{name}-pod" if network != "host" else None
        # The pod's name in Kubernetes (its hostname; what fieldRef metadata.name reads).
        self.k8s_name = k8s_name or f"{obj['metadata']['name']}-0"
        self.namespace = namespace

    # ------------------------------------------------------------------ volumes
    def _volume_dir(self, name: str) -> Path:
        return self.workdir / "volumes" / name

    def _prepare_volumes(self) -> None:
        psc = self.spec.get("securityContext", {})
        fs_group = psc.get("fsGroup")
        policy = psc.get("fsGroupChangePolicy", "Always")
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        for claim in self.claims:
            volumes[claim] = {"name": claim, "persistentVolumeClaim": {"claimName": claim}}
        for name, v in volumes.items():
            d = self._volume_dir(name)
            if "persistentVolumeClaim" in v:
                if not d.exists():
                    d.mkdir(parents=True)
                    os.chmod(d, 0o777)  # what dynamic provisioners (kind's local-path) hand out
            else:
                shutil.rmtree(d, ignore_errors=True)
                d.mkdir(parents=True)
                os.chmod(d, 0o777)
                if "secret" in v or "configMap" in v:
                    if "secret" in v:
                        src = self.other_secrets.get(v["secret"]["secretName"], self.secrets)
                    else:
                        src = self.maps[v["configMap"]["name"]]
                    body = v.get("secret") or v.get("configMap")
                    default_mode = body.get("defaultMode", 0o644)
                    items = body.get("items") or [{"key": k, "path": k} for k in src]
                    for item in items:
                        f = d / item["path"]
                        f.parent.mkdir(parents=True, exist_ok=True)
                        f.write_text(src[item["key"]])
                        os.chmod(f, item.get("mode", default_mode))
                    os.chmod(d, 0o755)
            if fs_group is not None:
                read_only = "secret" in v or "configMap" in v
                if read_only:
                    for p in [d, *d.rglob("*")]:
                        os.chown(p, -1, fs_group)
                        if p.is_file():
                            os.chmod(p, stat.S_IMODE(p.stat().st_mode) | 0o440)
                elif apply_fs_group(d, fs_group, policy if "persistentVolumeClaim" in v else "Always"):
                    self.fs_group_changes.append(name)

    # ------------------------------------------------------------------ containers
    def container_name(self, container: str) -> str:
        return f"{self.name}-{container}"

    def _run_args(self, c: dict[str, Any], *, detach: bool) -> list[str]:
        psc = self.spec.get("securityContext", {})
        sc = c.get("securityContext", {})
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        gid = sc.get("runAsGroup", psc.get("runAsGroup", 0))
        args = ["run", "--name", self.container_name(c["name"])]
        args += ["--pod", self.pod_name] if self.pod_name else ["--network", "host"]
        args += ["-d"] if detach else ["--rm"]
        if uid is not None:
            args += ["--user", f"{uid}:{gid}"]
        for g in [psc.get("fsGroup"), *psc.get("supplementalGroups", [])]:
            if g is not None:
                args += ["--group-add", str(g)]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only", "--read-only-tmpfs=false"]
        if "ALL" in (sc.get("capabilities") or {}).get("drop", []):
            args += ["--cap-drop=ALL"]
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        if not self.pod_name:
            for host, ip in self.add_hosts.items():
                args += ["--add-host", f"{host}:{ip}"]
        env = {
            **chart.container_env(c, self.secrets, self.maps, {"name": self.k8s_name, "namespace": self.namespace}),
            **self.extra_env.get(c["name"], {}),
        }
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        for m in c.get("volumeMounts", []):
            src = self._volume_dir(m["name"])
            if m.get("subPath"):
                src = src / m["subPath"]
            args += ["-v", f"{src}:{m['mountPath']}{':ro' if m.get('readOnly') else ''}"]
        if c.get("workingDir"):
            args += ["--workdir", c["workingDir"]]
        command = c.get("command")
        if command:
            args += ["--entrypoint", json.dumps(command)]
        args.append(self.image_for(c["image"]))
        args += list(c.get("args", []))
        return args

    def start(self) -> Pod:
        self._prepare_volumes()
        if self.pod_name:
            podman("pod", "rm", "-f", self.pod_name, check=False)
            args = ["pod", "create", "--name", self.pod_name, "--network", self.network, "--hostname", self.k8s_name]
            if self.ip:
                args += ["--ip", self.ip]
            for host, ip in self.add_hosts.items():
                args += ["--add-host", f"{host}:{ip}"]
            podman(*args)
        for c in self.spec.get("initContainers", []):
            podman("rm", "-f", self.container_name(c["name"]), check=False)
            result = podman(*self._run_args(c, detach=False), check=False, timeout=600)
            if result.returncode != 0:
                raise AssertionError(
                    f"init container {c['name']} of {self.name} exited {result.returncode}:\n"
                    f"{(result.stdout + result.stderr).decode(errors='replace')[-3000:]}"
                )
        for c in self.spec["containers"]:
            podman("rm", "-f", self.container_name(c["name"]), check=False)
            podman(*self._run_args(c, detach=True))
            self.started.append(c["name"])
        return self

    def running(self, container: str | None = None) -> bool:
        name = self.container_name(container or self.spec["containers"][0]["name"])
        out = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
        return out.returncode == 0 and out.stdout.strip() == b"true"

    def exec(self, *cmd: str, container: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        name = self.container_name(container or self.spec["containers"][0]["name"])
        return podman("exec", name, *cmd, check=False, timeout=timeout)

    def probe(self, kind: str, container: str | None = None) -> bool:
        c = self._container(container)
        probe = c[kind]
        cmd = probe["exec"]["command"]
        try:
            return self.exec(*cmd, container=c["name"], timeout=probe.get("timeoutSeconds", 1) + 5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def startup_budget(self, container: str | None = None) -> float:
        c = self._container(container)
        p = c.get("startupProbe") or c["readinessProbe"]
        return p.get("initialDelaySeconds", 0) + p.get("periodSeconds", 10) * p.get("failureThreshold", 3)

    def wait_ready(self, container: str | None = None, timeout: float | None = None) -> float:
        """Poll the readiness probe until it passes, within the startup probe's budget. Returns the
        seconds it took; fails with the container's log if it exits or the budget runs out."""
        c = self._container(container)
        budget = self.startup_budget(c["name"]) if timeout is None else timeout
        start = time.monotonic()
        while True:
            if not self.running(c["name"]):
                raise AssertionError(f"{self.container_name(c['name'])} exited:\n{self.logs(c['name'])[-4000:]}")
            if self.probe("readinessProbe", c["name"]):
                return time.monotonic() - start
            if time.monotonic() - start > budget:
                raise AssertionError(
                    f"{self.container_name(c['name'])} not ready within {budget}s:\n{self.logs(c['name'])[-4000:]}"
                )
            time.sleep(0.5)

    def logs(self, container: str | None = None) -> str:
        name = self.container_name(container or self.spec["containers"][0]["name"])
        out = podman("logs", name, check=False)
        return (out.stdout + out.stderr).decode(errors="replace")

    def _container(self, name: str | None) -> dict[str, Any]:
        if name is None:
            return self.spec["containers"][0]
        return next(c for c in self.spec["containers"] if c["name"] == name)

    def stop(self) -> None:
        grace = int(self.spec.get("terminationGracePeriodSeconds", 30))
        for name in self.started:
            podman("stop", "-t", str(grace), self.container_name(name), check=False, timeout=grace + 30)
            podman("rm", "-f", self.container_name(name), check=False)
        self.started = []
        if self.pod_name:
            podman("pod", "rm", "-f", self.pod_name, check=False)

    def restart(self) -> Pod:
        """The pod is deleted and created again (a reschedule, a rollout): PVC data stays."""
        self.stop()
        return self.start()

    def destroy(self) -> None:
        """Killed, not stopped (its data is deleted next: a clean shutdown would buy nothing)."""
        for name in self.started:
            podman("rm", "-f", "-t", "0", self.container_name(name), check=False)
        self.started = []
        if self.pod_name:
            podman("pod", "rm", "-f", "-t", "0", self.pod_name, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
