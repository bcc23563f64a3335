"""scripts/plain-secret.sh (the Secret for the plain manifests) run, and held to the chart's own:
it renders the chart's Secret template (helm CLI, else Helm's engine in the test venv), so the
same keys, the same SQL and definitions with its passwords, URLs the code parses; only Helm's
labels and annotations are left out."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.deploy.conftest import ROOT, render

SCRIPT = ROOT / "scripts" / "plain-secret.sh"


def _run(env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "payments"], check=check, capture_output=True, text=True, timeout=120, env=env
    )


def _secret(out: str) -> dict[str, str]:
    secret = yaml.safe_load(out)
    assert secret["kind"] == "Secret" and secret["metadata"] == {"name": "chancepay-secrets", "namespace": "payments"}
    return secret["stringData"]


def _without_helm(tmp_path: Path) -> dict[str, str]:
    """PATH with bash and the tools the script uses, and no helm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "awk", "dirname", "env"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return {**os.environ, "PATH": str(bin_dir), "CHANCEPAY_PYTHON": sys.executable}


def test_plain_secret_matches_what_the_chart_generates(tmp_path: Path) -> None:
    mine = _secret(_run(_without_helm(tmp_path)).stdout)
    chart = render().get("Secret", "chancepay-secrets")["stringData"]
    assert set(mine) == set(chart)

    def normalised(data: dict[str, str]) -> dict[str, str]:
        out = dict(data)
        for key in (
            "internal-token",
            "mariadb-root-password",
            "orchestrator-db-password",
            "wallet-db-password",
            "rabbitmq-password",
            "message-key",
            "rabbitmq-erlang-cookie",
        ):
            for k, v in out.items():
                out[k] = v.replace(data[key], f"<{key}>")
        return out

    a, b = normalised(mine), normalised(chart)
    assert a["mariadb-init.sql"].strip() == b["mariadb-init.sql"].strip()
    assert json.loads(a["rabbitmq-definitions.json"]) == json.loads(b["rabbitmq-definitions.json"])
    for key in ("admin-db-url", "orchestrator-db-url", "wallet-db-url", "amqp-url"):
        assert a[key] == b[key], key
    assert len(mine["internal-token"]) == 40 and mine["internal-token"].isalnum()


def test_plain_secret_is_fresh_each_time(tmp_path: Path) -> None:
    env = _without_helm(tmp_path)
    assert _secret(_run(env).stdout)["mariadb-root-password"] != _secret(_run(env).stdout)["mariadb-root-password"]


def test_plain_secret_uses_the_helm_cli_when_there_is_one(tmp_path: Path) -> None:
    """With helm on PATH: `helm template ... --show-only templates/secret.yaml`, its `---` and
    `# Source:` lines and Helm's metadata dropped (a stand-in helm prints what the engine renders)."""
    env = _without_helm(tmp_path)
    rendered = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart-secret.py"), "payments"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    (tmp_path / "rendered.yaml").write_text("---\n# Source: chancepay/templates/secret.yaml\n" + rendered)
    helm = tmp_path / "bin" / "helm"
    helm.write_text(
        f'#!{shutil.which("bash")}\necho "$@" > {tmp_path}/args\nexec < {tmp_path}/rendered.yaml\n'
        'while IFS= read -r line; do printf "%s\\n" "$line"; done\n'
    )
    helm.chmod(0o755)
    data = _secret(_run({**env, "CHANCEPAY_PYTHON": "/nonexistent"}).stdout)
    assert data == yaml.safe_load(rendered)["stringData"]
    assert (tmp_path / "args").read_text().split() == [
        "template",
        "chancepay",
        str(ROOT / "charts" / "chancepay"),
        "--namespace",
        "payments",
        "--show-only",
        "templates/secret.yaml",
    ]


def test_plain_secret_says_what_it_needs(tmp_path: Path) -> None:
    result = _run({**_without_helm(tmp_path), "CHANCEPAY_PYTHON": "/nonexistent"}, check=False)
    assert result.returncode == 2 and "needs the helm CLI" in result.stderr and not result.stdout
