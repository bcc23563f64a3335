"""scripts/plain-secret.sh (the Secret for the plain manifests) run, and held to the chart's own:
the same keys, the same SQL and definitions with its passwords, URLs the code parses."""

from __future__ import annotations

import json
import subprocess

import yaml

from tests.deploy.conftest import ROOT, render


def _run() -> dict[str, str]:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "plain-secret.sh"), "payments"], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    secret = yaml.safe_load(out)
    assert secret["kind"] == "Secret" and secret["metadata"] == {"name": "chancepay-secrets", "namespace": "payments"}
    return secret["stringData"]


def test_plain_secret_matches_what_the_chart_generates() -> None:
    mine = _run()
    chart = render().get("Secret", "chancepay-secrets")["stringData"]
    assert set(mine) == set(chart)

    def normalised(data: dict[str, str]) -> dict[str, str]:
        out = dict(data)
        for key in ("internal-token", "mariadb-root-password", "orchestrator-db-password", "wallet-db-password",
                    "rabbitmq-password", "message-key", "rabbitmq-erlang-cookie"):
            for k, v in out.items():
                out[k] = v.replace(data[key], f"<{key}>")
        return out

    a, b = normalised(mine), normalised(chart)
    assert a["mariadb-init.sql"].strip() == b["mariadb-init.sql"].strip()
    assert json.loads(a["rabbitmq-definitions.json"]) == json.loads(b["rabbitmq-definitions.json"])
    for key in ("admin-db-url", "orchestrator-db-url", "wallet-db-url", "amqp-url"):
        assert a[key] == b[key], key
    assert len(mine["internal-token"]) == 40 and mine["internal-token"].isalnum()


def test_plain_secret_is_fresh_each_time() -> None:
    assert _run()["mariadb-root-password"] != _run()["mariadb-root-password"]
