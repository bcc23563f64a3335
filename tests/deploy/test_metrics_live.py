"""Every metric the dashboard and the alert rules query is exported by a running role: the three
roles and the auditor run as real processes (the `stack` fixture from tests/conftest.py: per-test databases and
RabbitMQ vhost), one payment goes through the whole loop, then the real /metrics are scraped."""

from __future__ import annotations

import time

import httpx

from tests.deploy import observability as obs


def test_queried_metrics_are_exported_by_running_roles(stack):
    created = stack.pay(cus_id="deploy-metrics", amount="3.21")
    assert created.status_code == 202, created.text
    uuid = created.json()["uuid"]
    deadline = time.monotonic() + 60
    while stack.status(uuid) == "PENDING":
        assert time.monotonic() < deadline, f"payment {uuid} not finalized within 60 s"
        time.sleep(0.2)

    auditor = stack.start_auditor()
    exported: set[str] = set()
    for role in (stack.orchestrator, stack.scanner, stack.wallet, auditor):
        # the probe paths the chart uses answer on the real process
        assert httpx.get(role.url + "/healthz", timeout=5).status_code == 200
        assert httpx.get(role.url + "/readyz", timeout=5).status_code == 200
        response = httpx.get(role.url + "/metrics", timeout=5)
        assert response.status_code == 200
        exported |= obs.exported_sample_names(response.text)

    queried = obs.queried_metrics()
    assert len(queried) >= 10
    missing = queried - exported
    assert not missing, f"queried by the dashboard/alerts but exported by no running role: {sorted(missing)}"
