"""Fixtures for the deploy checks: the chart rendered by Helm's own engine (helm-sdkpy's Install
against the recording fake API in deploy/helm_render.py), cached per set of values."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chancepay"
sys.path.insert(0, str(ROOT / "deploy"))

import helm_render  # noqa: E402

helm_render.isolate_helm_home()

EXTERNAL = {
    "mariadb": {"enabled": False},
    "external": {
        "orchestratorDbUrl": "mysql://chancepay_orchestrator:pw@db.example:3306/chancepay_orchestrator",
        "walletDbUrl": "mysql://chancepay_wallet:pw@db.example:3306/chancepay_wallet",
    },
}

# Every on/off switch of values.yaml, flipped from its default (plus what the flip needs).
SWITCHES: dict[str, dict[str, Any]] = {
    "mariadb.enabled=false": EXTERNAL,
    "rabbitmq.enabled=false": {"rabbitmq": {"enabled": False},
                               "external": {"amqpUrl": "amqp://chancepay:pw@mq.example:5672/%2F"}},
    "networkPolicy.enabled=false": {"networkPolicy": {"enabled": False}},
    "ingress.enabled=true": {"ingress": {"enabled": True, "className": "nginx", "tls": [
        {"hosts": ["chancepay.local"], "secretName": "chancepay-tls"}]}},
    "metrics.podAnnotations=false": {"metrics": {"podAnnotations": False}},
    "metrics.serviceMonitor.enabled=true": {"metrics": {"serviceMonitor": {"enabled": True}}},
    "metrics.prometheusRule.enabled=true": {"metrics": {"prometheusRule": {"enabled": True}}},
    "grafana.dashboard.enabled=false": {"grafana": {"dashboard": {"enabled": False}}},
    "migrate.enabled=false": {"migrate": {"enabled": False}},
    "reconcile.enabled=false": {"reconcile": {"enabled": False}},
    "serviceAccount.create=false": {"serviceAccount": {"create": False}},
    "secrets.existingSecret=set": {"secrets": {"existingSecret": "my-secrets"}},
    "rabbitmq.replicas=3": {"rabbitmq": {"replicas": 3}},
    "tls.enabled=true": {"tls": {"enabled": True, "secretName": "chancepay-tls"}},
}
NEEDS_MONITORING_CRDS = {"metrics.serviceMonitor.enabled=true", "metrics.prometheusRule.enabled=true"}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


@functools.lru_cache(maxsize=64)
def _render_cached(values_json: str, monitoring_crds: bool) -> helm_render.Rendered:
    return helm_render.render(str(CHART), json.loads(values_json), monitoring_crds=monitoring_crds)


def render(values: dict[str, Any] | None = None, *, monitoring_crds: bool = False) -> helm_render.Rendered:
    """Render the chart (cached: the result must not be mutated)."""
    from tests.support.chart import require_helm

    require_helm()
    return _render_cached(json.dumps(values or {}, sort_keys=True), monitoring_crds)


def lint(chart_dir: Path) -> dict[str, Any]:
    from tests.support.chart import require_helm

    require_helm()
    import helm_sdkpy

    return asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(str(chart_dir)))


def chart_copy_with_values(tmp: Path, overrides: dict[str, Any]) -> Path:
    """A copy of the chart whose values.yaml has `overrides` merged in (helm-sdkpy's Lint takes
    no values, so a flipped switch is linted as the chart's own default)."""
    dst = tmp / "chancepay"
    shutil.copytree(CHART, dst)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    (dst / "values.yaml").write_text(yaml.safe_dump(deep_merge(values, overrides)))
    return dst


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job", "CronJob", "Pod")


@pytest.fixture(scope="session")
def default_render() -> helm_render.Rendered:
    return render()
