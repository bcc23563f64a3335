"""The kind workflow (.github/workflows/kind.yaml) is linted here; it runs on GitHub, with Docker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import CHART, NEEDS_MONITORING_CRDS, SWITCH_FILES, SWITCHES

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "kind.yaml"


def actionlint() -> str:
    found = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    if not Path(found).exists():
        pytest.fail("actionlint is not installed: it comes with the test extras (pip install -e '.[test]')")
    return found


def test_workflow_passes_actionlint() -> None:
    # actionlint also runs ShellCheck over every `run:` script when shellcheck is on PATH.
    result = subprocess.run(
        [actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_can_fail(tmp_path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.evnt }}\n"
    )
    result = subprocess.run(
        [actionlint(), "-no-color", str(bad)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode != 0 and "evnt" in result.stdout


def test_workflow_runs_the_readmes_commands() -> None:
    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = flow["jobs"]["chart"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "make kind-up" in runs, "the README's one command"
    assert "helm lint charts/chancepay" in runs and "ct lint" in runs
    assert "grep -F '[FAILED TO'" in runs
    uses = [s.get("uses", "") for s in steps]
    assert any(u.startswith("helm/kind-action@") for u in uses)
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    readme = (ROOT / "README.md").read_text()
    assert "make kind-up" in readme and ".github/workflows/kind.yaml" in readme


# --- Lints of the pins and of the steps a user's fork needs to run green ------------------------
# The pins live in one place: scripts/kind-up.sh (kind, kubectl) and k8s/kind-cluster.yaml (node
# image); `scripts/kind-up.sh pins` prints them and the workflow hands its output to kind-action.

KIND_UP = ROOT / "scripts" / "kind-up.sh"
KIND_MIN = (0, 27, 0)  # kind < v0.27 cannot parse containerd 2's config version 3 (kind#3853)
VALIDATED_K8S_MINOR = 33  # the schemas the chart is validated against (test_chart_helm.K8S_VERSIONS)


def pins() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(KIND_UP), "pins"], capture_output=True, text=True, timeout=30, check=True, cwd=ROOT
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def version(text: str) -> tuple[int, ...]:
    m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", text)
    assert m, f"not a vX.Y.Z version: {text!r}"
    return tuple(int(g) for g in m.groups())


def steps() -> list[dict]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["chart"]["steps"]


def step_index(predicate, what: str) -> int:
    found = [i for i, s in enumerate(steps()) if predicate(s)]
    assert found, f"no step {what}"
    return found[0]


def kind_action() -> dict:
    return steps()[step_index(lambda s: s.get("uses", "").startswith("helm/kind-action@"), "uses helm/kind-action")]


def test_lint_kind_is_pinned_at_v0_27_or_later():
    assert version(pins()["kind"]) >= KIND_MIN, pins()


def test_lint_node_image_is_pinned_by_digest():
    image = pins()["node_image"]
    m = re.fullmatch(r"kindest/node:v1\.(\d+)\.\d+@sha256:[0-9a-f]{64}", image)
    assert m, f"the node image must carry the digest from kind's release notes: {image}"
    assert int(m.group(1)) == VALIDATED_K8S_MINOR, image
    cfg = yaml.safe_load((ROOT / "k8s" / "kind-cluster.yaml").read_text())
    assert {n["image"] for n in cfg["nodes"]} == {image}


def test_lint_kubectl_is_within_one_minor_of_the_node():
    node_minor = version(pins()["node_image"].split(":", 1)[1].split("@")[0])[1]
    kubectl = version(pins()["kubectl"])
    assert kubectl[0] == 1 and abs(kubectl[1] - node_minor) <= 1, pins()


def test_lint_workflow_and_kind_up_agree_on_the_pins():
    """The workflow holds no pin of its own: kind-action's inputs are the pins step's outputs, and that
    step runs `scripts/kind-up.sh pins`; kind-action is a release that honours those inputs."""
    action = kind_action()
    ref = action["uses"].split("@", 1)[1]
    assert version(ref) >= (1, 13, 0), action["uses"]  # v1.12.0 and older default to kind v0.26.0
    pin_step = steps()[step_index(lambda s: s.get("id") == "pins", "with id pins")]
    assert "scripts/kind-up.sh pins" in pin_step["run"] and "$GITHUB_OUTPUT" in pin_step["run"]
    assert step_index(lambda s: s.get("id") == "pins", "pins") < step_index(
        lambda s: s.get("uses", "").startswith("helm/kind-action@"), "kind-action"
    )
    assert action["with"]["version"] == "${{ steps.pins.outputs.kind }}"
    assert action["with"]["node_image"] == "${{ steps.pins.outputs.node_image }}"
    assert action["with"]["kubectl_version"] == "${{ steps.pins.outputs.kubectl }}"
    assert action["with"]["config"] == "k8s/kind-cluster.yaml"
    text = WORKFLOW.read_text()
    assert "kindest/node" not in text and not re.search(r"\bv0\.\d+\.\d+\b", text), (
        "a literal kind or node pin in the workflow could disagree with scripts/kind-up.sh"
    )
    # and what kind-up.sh checks the installed kind against is the same pin
    script = KIND_UP.read_text()
    assert f"KIND_VERSION={pins()['kind']}" in script and f"KUBECTL_VERSION={pins()['kubectl']}" in script


def test_lint_ct_install_upgrade_with_the_ci_values():
    ct = steps()[step_index(lambda s: "ct install" in s.get("run", ""), "running ct install")]["run"]
    assert "--upgrade" in ct and "--charts charts/chancepay" in ct
    assert "--target-branch" in ct and "--remote origin" in ct  # ct refuses --upgrade without them
    assert '--helm-extra-set-args "$IMAGE_SET_ARGS"' in ct  # the per-build tags of the loaded images
    checkout = steps()[step_index(lambda s: s.get("uses", "").startswith("actions/checkout@"), "checkout")]
    assert checkout["with"]["fetch-depth"] == 0  # the target branch's revision of the chart
    images = steps()[step_index(lambda s: "scripts/kind-up.sh images" in s.get("run", ""), "building images")]
    assert "IMAGE_SET_ARGS=" in images["run"] and "$GITHUB_ENV" in images["run"]
    assert sorted((CHART / "ci").glob("*-values.yaml")), "ct would install the defaults only"
    lint = steps()[step_index(lambda s: "ct lint" in s.get("run", ""), "running ct lint")]["run"]
    assert "charts/chancepay/ci/*-values.yaml" in lint and "charts/chancepay/ci/render-only/*-values.yaml" in lint
    assert 'helm lint charts/chancepay -f "$values"' in lint


def test_lint_ct_installs_only_what_a_bare_kind_cluster_can_run():
    """charts/chancepay/ci/*-values.yaml is what ct installs: nothing there may need a server, a
    Secret or CRDs that the workflow's fresh kind cluster lacks (those live in ci/render-only/)."""
    installed = {name: path for name, path in SWITCH_FILES.items() if path.parent == CHART / "ci"}
    assert installed and set(installed) < set(SWITCH_FILES)
    for name, path in installed.items():
        text = path.read_text()
        values = SWITCHES[name]
        assert ".example" not in text, path
        assert not values.get("secrets", {}).get("existingSecret"), path
        assert not values.get("tls", {}).get("enabled"), path
        assert values.get("migrate", {}).get("enabled", True), path
        assert values.get("mariadb", {}).get("enabled", True) and values.get("rabbitmq", {}).get("enabled", True)
        assert not set(NEEDS_MONITORING_CRDS) & {name}, path
    for path in SWITCH_FILES.values():
        assert path.parent in (CHART / "ci", CHART / "ci" / "render-only"), path


def test_lint_an_upgrade_step_then_a_payment_and_helm_test():
    upgrade_i = step_index(lambda s: "helm upgrade" in s.get("run", ""), "running helm upgrade")
    run = steps()[upgrade_i]["run"]
    for needed in ("--reset-then-reuse-values", "--set config.logLevel=DEBUG", "--wait", "--wait-for-jobs"):
        assert needed in run, needed
    assert "CHANCEPAY_LOG_LEVEL" in run  # the new value reached the pods' template
    install_i = step_index(lambda s: "make kind-up" in s.get("run", ""), "running make kind-up")
    ct_i = step_index(lambda s: "ct install" in s.get("run", ""), "running ct install")
    smoke_i = step_index(lambda s: "scripts/kind-up.sh smoke" in s.get("run", ""), "with a payment and helm test")
    logs_i = step_index(lambda s: "[FAILED TO" in s.get("run", ""), "grepping the logs")
    assert ct_i < install_i < upgrade_i < smoke_i < logs_i
    assert re.search(r"^smoke\(\)", KIND_UP.read_text(), re.M) and "helm test" in KIND_UP.read_text()


def test_lint_a_rollback_step_after_the_upgrade_then_a_payment_and_helm_test():
    rollback_i = step_index(lambda s: "helm rollback" in s.get("run", ""), "running helm rollback")
    run = steps()[rollback_i]["run"]
    for needed in ("--wait", "--wait-for-jobs", "CHANCEPAY_LOG_LEVEL", "!= INFO", "scripts/kind-up.sh smoke"):
        assert needed in run, needed
    upgrade_i = step_index(lambda s: "helm upgrade" in s.get("run", ""), "running helm upgrade")
    logs_i = step_index(lambda s: "[FAILED TO" in s.get("run", ""), "grepping the logs")
    assert upgrade_i < rollback_i < logs_i


def log_step() -> str:
    return steps()[step_index(lambda s: "[FAILED TO" in s.get("run", ""), "grepping the logs")]["run"]


def test_lint_log_step_reads_every_pod_and_container():
    run = log_step()
    for needed in ("--tail=-1", "--prefix", "--all-containers", "--max-log-requests=", "--previous"):
        assert needed in run, needed
    assert int(re.search(r"--max-log-requests=(\d+)", run).group(1)) >= 50  # kubectl's default is 5
    assert "broker not reachable yet" not in run and "chancepay migrate" not in run  # no excuse by text


def test_log_step_excludes_exactly_the_lines_marked_waiting(tmp_path):
    """The log step's own script, run with a kubectl that prints these lines: only the lines carrying
    the field "waiting": true, as the services' logger writes it, are excused."""
    import structlog

    from chancepay.core.logging import _dumps

    render = structlog.processors.JSONRenderer(serializer=_dumps)

    def line(pod: str, **event) -> str:
        return f"[pod/{pod}/c] " + render(None, "warning", dict(event))

    excused = [
        line("chancepay-migrate-x", event="[FAILED TO REACH DATABASE] chancepay migrate: retrying", waiting=True),
        line("chancepay-wallet-x", event="[FAILED TO CONSUME] broker not reachable yet", waiting=True),
        line("chancepay-scanner-x", event="[FAILED TO SCAN OUTBOX] db down", waiting=True, attempt=3),
    ]
    flagged = [
        line("chancepay-wallet-y", event="[FAILED TO CONSUME] broker not reachable yet"),
        line("chancepay-migrate-y", event="[FAILED TO REACH DATABASE] chancepay migrate gave up"),
        line("chancepay-scanner-y", event="[FAILED TO SCAN OUTBOX] db down", waiting=False),
        line("chancepay-orch-y", event='[FAILED TO RECONCILE] said "waiting": true in text'),
    ]
    calm = [line("chancepay-orch-x", event="payment finalized", waiting=True)]
    logs = tmp_path / "logs.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text('#!/bin/sh\ncase " $* " in *" --previous "*) exit 0;; esac\ncat "$FAKE_LOGS"\n')
    kubectl.chmod(0o755)

    def run(lines: list[str]) -> subprocess.CompletedProcess:
        logs.write_text("\n".join(lines) + "\n")
        return subprocess.run(
            ["bash", "-euo", "pipefail", "-c", log_step()],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                **os.environ,
                "PATH": f"{bin_dir}:{os.environ['PATH']}",
                "FAKE_LOGS": str(logs),
                "NAMESPACE": "ns",
                "RELEASE": "chancepay",
            },
        )

    ok = run(excused + calm)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for bad in flagged:
        result = run(excused + [bad] + calm)
        assert result.returncode != 0 and bad in result.stdout, (bad, result.stdout)
