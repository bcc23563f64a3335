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

# The test scenarios are the chart's CI values files, shared with `helm lint -f` and chart-testing
# (.github/workflows/kind.yaml): charts/chancepay/ci/*-values.yaml are the ones `ct install`
# installs on the workflow's bare kind cluster; charts/chancepay/ci/render-only/*-values.yaml are
# linted and rendered only (external servers that do not exist there, CRDs kind lacks, a Secret
# nobody made, or a switch that only removes objects). Each file names its switch on a
# "# switch: <name>" line.
CI_VALUES_DIR = CHART / "ci"
CT_INSTALLED_DIR = CI_VALUES_DIR
RENDER_ONLY_DIR = CI_VALUES_DIR / "render-only"


def ci_values_files() -> list[Path]:
    """Every scenario file: the ones ct installs, then the render-only ones."""
    return sorted(CT_INSTALLED_DIR.glob("*-values.yaml")) + sorted(RENDER_ONLY_DIR.glob("*-values.yaml"))


def switch_name(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# switch:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path.relative_to(ROOT)} has no '# switch: <name>' line")


def _load_switches() -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    switches: dict[str, dict[str, Any]] = {}
    files: dict[str, Path] = {}
    for path in ci_values_files():
        name = switch_name(path)
        assert name not in switches, f"switch {name} appears in {files.get(name)} and {path}"
        values = yaml.safe_load(path.read_text())
        assert isinstance(values, dict) and values, f"{path} holds no values"
        switches[name], files[name] = values, path
    return switches, files


# Every on/off switch of values.yaml, flipped from its default (plus what the flip needs).
SWITCHES, SWITCH_FILES = _load_switches()
EXTERNAL = SWITCHES["mariadb.enabled=false"]
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
