"""The chart as Helm renders it, for tests that run what it describes (not just inspect it)."""

from __future__ import annotations

import base64
import functools
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chancepay"
sys.path.insert(0, str(ROOT / "deploy"))

import helm_render  # noqa: E402

HELM_SKIP = (
    "helm-sdkpy (Helm's own engine) needs Python >= 3.12 and this test venv has "
    f"{sys.version_info[0]}.{sys.version_info[1]}: give make test a python3.12 (TEST_PYTHON=..., "
    "or any python3.12 on PATH or under pyenv) and run it again"
)


def require_helm() -> None:
    """Skip (with the fix named) where Helm's engine cannot run: Python < 3.12."""
    try:
        import helm_sdkpy  # noqa: F401
    except ImportError:
        import pytest

        pytest.skip(HELM_SKIP)


@functools.lru_cache(maxsize=32)
def _render(values_json: str) -> helm_render.Rendered:
    return helm_render.render(str(CHART), json.loads(values_json))


def render(values: dict[str, Any] | None = None) -> helm_render.Rendered:
    """`helm install` with these values, rendered by Helm's engine (cached; do not mutate)."""
    require_helm()
    return _render(json.dumps(values or {}, sort_keys=True))


def render_upgrade(values: dict[str, Any], secret: dict[str, str]) -> helm_render.Rendered:
    """What Helm renders when a release's Secret already exists (its `lookup` finds `secret`)."""
    return render_with_secret(
        {**values, "fullnameOverride": "chancepay"}, secret, secret_name="chancepay-secrets", release="other"
    )


def render_with_secret(
    values: dict[str, Any], secret: dict[str, str], *, secret_name: str, release: str = "chancepay"
) -> helm_render.Rendered:
    """`helm install` of `release` into a namespace that still holds its Secret `secret_name`
    (Helm's ownership annotations of that release, as `helm uninstall` leaves a resource-policy:
    keep object): the chart's `lookup` finds `secret`. What a reinstall renders, and the objects
    an upgrade to these values renders (Helm's upgrade sees the same lookup)."""
    require_helm()
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name,
            "namespace": "chancepay",
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": "chancepay"},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
    }
    return helm_render.render(str(CHART), values, release=release, existing=[existing])


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def secret_data(rendered: helm_render.Rendered) -> dict[str, str]:
    secret = rendered.get("Secret", "-secrets")
    data = dict(secret.get("stringData") or {})
    for k, v in (secret.get("data") or {}).items():
        data[k] = base64.b64decode(v).decode()
    return data


def config_maps(rendered: helm_render.Rendered) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: dict(o.get("data") or {}) for o in rendered.of_kind("ConfigMap")}


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' dependent variables: $(NAME) becomes an earlier variable's value ($$ escapes)."""
    import re

    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def container_env(
    container: dict[str, Any],
    secrets: dict[str, str],
    maps: dict[str, dict[str, str]],
    pod: dict[str, str] | None = None,
) -> dict[str, str]:
    """The environment a kubelet would give `container` (value with $(VAR) expansion, secretKeyRef,
    configMapKeyRef, fieldRef metadata.name/namespace from `pod`). An optional key that is missing
    is left out, as Kubernetes does."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = _expand(str(e["value"]), env)
            continue
        ref = e["valueFrom"]
        if "fieldRef" in ref:
            field = ref["fieldRef"]["fieldPath"]
            env[e["name"]] = (pod or {})[{"metadata.name": "name", "metadata.namespace": "namespace"}[field]]
            continue
        if "secretKeyRef" in ref:
            key, source = ref["secretKeyRef"]["key"], secrets
            optional = ref["secretKeyRef"].get("optional", False)
        else:
            key, source = ref["configMapKeyRef"]["key"], maps[ref["configMapKeyRef"]["name"]]
            optional = ref["configMapKeyRef"].get("optional", False)
        if key in source:
            env[e["name"]] = source[key]
        elif not optional:
            raise KeyError(f"{container['name']}: {e['name']} refers to missing key {key!r}")
    return env


def previous_release(dest: Path) -> tuple[str, Path]:
    """The chart's previous release, from git: the chart as of the newest commit that changed it
    and whose Chart.yaml carries another version than the working tree's, extracted under `dest`.
    Returns (its version, its chart dir). Needs the repository's history (a full clone; CI clones
    main whole)."""
    import subprocess

    import yaml

    current = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    commits = subprocess.run(
        ["git", "-C", str(ROOT), "rev-list", "HEAD", "--", "charts/chancepay"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for commit in commits:
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{commit}:charts/chancepay/Chart.yaml"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        version = yaml.safe_load(text)["version"]
        if version != current:
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", commit, "charts/chancepay"], check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
            return version, dest / "charts" / "chancepay"
    raise RuntimeError(
        f"no commit of charts/chancepay/Chart.yaml with a version other than {current} "
        "(a shallow clone? the upgrade tests need the history: git fetch --unshallow)"
    )
