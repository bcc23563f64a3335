"""Metric names the dashboard and the alert rules query, and the names the code can export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "chancepay-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "chancepay-rules.yaml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "chancepay-rules.test.yaml"
METRIC = re.compile(r"\b(chancepay_[a-z0-9_]+)\b")


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])] + [
        v["definition"] for v in dashboard()["templating"]["list"] if v.get("definition")
    ]


def rule_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def queried_metrics() -> set[str]:
    return {m for e in dashboard_exprs() + rule_exprs() for m in METRIC.findall(e)}


SCRAPED_ROLES = ("orchestrator", "scanner", "wallet", "auditor")  # reconcile is a CronJob: nothing scrapes it


def defined_sample_names(roles: tuple[str, ...] = SCRAPED_ROLES) -> set[str]:
    """Every sample name the scraped roles' Metrics registries can produce (labelled children too)."""
    from chancepay.core.metrics import Metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
    }
    names = set()
    for role in roles:
        for family in Metrics(role).registry.collect():
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def exported_sample_names(text: str) -> set[str]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
