"""Alert rules (promtool), the Grafana dashboard, and their place in the chart."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.deploy import observability as obs
from tests.deploy.conftest import CHART, SWITCHES, render


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is not installed: run `make test-tools` (scripts/install-test-tools.sh)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=obs.RULES.parent)


def test_promtool_check_rules():
    r = run(promtool(), "check", "rules", obs.RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_promtool_unit_tests_of_every_alert():
    r = run(promtool(), "test", "rules", obs.RULES_TEST.name)
    assert r.returncode == 0, r.stdout + r.stderr
    tested = {
        t["alertname"]
        for case in yaml.safe_load(obs.RULES_TEST.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    alerts = {r["alert"] for g in yaml.safe_load(obs.RULES.read_text())["groups"] for r in g["rules"]}
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}"


def test_promtool_can_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n- name: x\n  rules:\n  - alert: Broken\n    expr: sum(rate(chancepay_outbox_depth[5m])\n")
    assert subprocess.run([promtool(), "check", "rules", str(bad)], capture_output=True, timeout=60).returncode != 0


def test_alerts_cover_the_issue():
    exprs = " ".join(obs.rule_exprs())
    for needed in (
        "chancepay_outbox_depth",
        "chancepay_outbox_oldest_age_seconds",
        "chancepay_outbox_publish_failures_total",
        "chancepay_wallet_callback_failures_total",
        'outcome="corrupt"',
        "chancepay_payments_pending_oldest_age_seconds",
        "chancepay_audit_violations",
        "chancepay_audit_unbalanced_amount",
        "chancepay_audit_last_pass_timestamp_seconds",
        "chancepay_dlq_messages",
    ):
        assert needed in exprs, needed


def test_every_queried_metric_is_defined_in_the_metrics_module():
    """Static twin of test_metrics_live: catches a typo even without a running stack."""
    missing = obs.queried_metrics() - obs.defined_sample_names()
    assert not missing, f"queried but never defined in chancepay.core.metrics: {sorted(missing)}"


def test_dashboard_backlog_panel_first_then_the_rest():
    d = obs.dashboard()
    panels = sorted(d["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    first = panels[0]
    assert first["id"] == 1 and "outbox backlog" in first["title"].lower()
    assert [t["expr"] for t in first["targets"]] and all(
        "chancepay_outbox_depth" in t["expr"] for t in first["targets"]
    )
    exprs = " ".join(obs.dashboard_exprs())
    for needed in (
        "chancepay_payments_created_total",
        "chancepay_payments_finalized_total",
        "chancepay_outbox_publish_failures_total",
        "chancepay_wallet_callback_failures_total",
        "chancepay_payment_e2e_seconds_bucket",
    ):
        assert needed in exprs, needed
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert d["uid"] == "chancepay" and all(p["datasource"]["uid"] == "${datasource}" for p in d["panels"])


def test_chart_ships_the_same_dashboard_and_rules():
    assert (CHART / "files" / "chancepay-dashboard.json").read_text() == obs.DASHBOARD.read_text()
    assert (CHART / "files" / "chancepay-rules.yaml").read_text() == obs.RULES.read_text()
    cm = render().get("ConfigMap", "chancepay-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["chancepay-dashboard.json"]) == obs.dashboard()
    rule = render(SWITCHES["metrics.prometheusRule.enabled=true"], monitoring_crds=True).get(
        "PrometheusRule", "chancepay"
    )
    assert rule["spec"] == yaml.safe_load(obs.RULES.read_text())


def test_service_monitor_scrapes_the_four_roles():
    sm = render(SWITCHES["metrics.serviceMonitor.enabled=true"], monitoring_crds=True).get(
        "ServiceMonitor", "chancepay"
    )
    assert sm["spec"]["endpoints"][0]["port"] == "http" and sm["spec"]["endpoints"][0]["path"] == "/metrics"
    expr = sm["spec"]["selector"]["matchExpressions"][0]
    assert expr["key"] == "app.kubernetes.io/component" and sorted(expr["values"]) == [
        "auditor",
        "orchestrator",
        "scanner",
        "wallet",
    ]
    off = render(
        {**SWITCHES["metrics.serviceMonitor.enabled=true"], **SWITCHES["auditor.enabled=false"]}, monitoring_crds=True
    ).get("ServiceMonitor", "chancepay")
    assert off["spec"]["selector"]["matchExpressions"][0]["values"] == ["orchestrator", "scanner", "wallet"]


def test_static_metric_check_can_fail():
    assert "chancepay_reconcile_failures_total" not in obs.defined_sample_names()  # CronJob, never scraped
    assert "chancepay_outbox_depth" in obs.defined_sample_names(("orchestrator",))
