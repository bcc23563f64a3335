"""The chart under real Helm: lint, render with every switch flipped, validate every object
against the Kubernetes schemas, and the pod hardening the issue asks for."""

from __future__ import annotations

import base64

import kubernetes_validate
import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    NEEDS_MONITORING_CRDS,
    SWITCHES,
    WORKLOAD_KINDS,
    chart_copy_with_values,
    lint,
    pod_spec,
    render,
)

K8S_VERSIONS = ("1.29", "1.33")  # the oldest we care about and kind's node image (k8s/kind-cluster.yaml)
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # no upstream schema; checked in test_observability


def lint_errors(result: dict) -> list[dict]:
    # Severity: 1 info, 2 warning, 3 error (helm's support.Severity). Warnings fail too.
    return [m for m in result.get("Messages") or [] if m["Severity"] >= 2]


def test_lint_default_values_is_clean():
    result = lint(CHART)
    assert result["TotalChartsLinted"] == 1
    assert lint_errors(result) == [] and not result.get("Errors")


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_lint_with_switch_flipped(switch, tmp_path):
    result = lint(chart_copy_with_values(tmp_path, SWITCHES[switch]))
    assert lint_errors(result) == [] and not result.get("Errors"), result


def test_lint_catches_a_broken_template(tmp_path):
    """The lint check can fail: a template referencing a missing value is reported."""
    broken = chart_copy_with_values(tmp_path, {})
    (broken / "templates" / "broken.yaml").write_text("data: {{ .Values.nope.missing }}\n")
    assert lint_errors(lint(broken))


def validate_all(objects):
    problems = []
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except Exception as exc:  # ValidationError, SchemaNotFoundError, ...
                problems.append(f"{obj['kind']}/{obj['metadata']['name']} @ {version}: {exc}")
    return problems


def test_default_render_objects_validate(default_render):
    everything = default_render.objects + [h["object"] for h in default_render.hooks]
    assert validate_all(everything) == []
    kinds = {o["kind"] for o in default_render.objects}
    assert {
        "Deployment",
        "StatefulSet",
        "Service",
        "Secret",
        "CronJob",
        "Job",
        "NetworkPolicy",
        "ConfigMap",
        "ServiceAccount",
    } <= kinds


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_render_with_switch_flipped_validates(switch):
    rendered = render(SWITCHES[switch], monitoring_crds=switch in NEEDS_MONITORING_CRDS)
    assert validate_all(rendered.objects + [h["object"] for h in rendered.hooks]) == []


def test_validation_can_fail(default_render):
    deployment = yaml.safe_load(yaml.safe_dump(default_render.get("Deployment", "-orchestrator")))
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight-thousand"
    deployment["spec"]["replicaz"] = 1
    assert validate_all([deployment])


def test_switches_change_what_is_rendered():
    def names(values, crds=False):
        return {(o["kind"], o["metadata"]["name"]) for o in render(values, monitoring_crds=crds).objects}

    default = names({})
    assert ("StatefulSet", "chancepay-mariadb") not in names(SWITCHES["mariadb.enabled=false"])
    assert ("StatefulSet", "chancepay-rabbitmq") not in names(SWITCHES["rabbitmq.enabled=false"])
    assert not {n for n in names(SWITCHES["networkPolicy.enabled=false"]) if n[0] == "NetworkPolicy"}
    assert ("Ingress", "chancepay-orchestrator") in names(SWITCHES["ingress.enabled=true"])
    assert ("ServiceMonitor", "chancepay") in names(SWITCHES["metrics.serviceMonitor.enabled=true"], True)
    assert ("PrometheusRule", "chancepay") in names(SWITCHES["metrics.prometheusRule.enabled=true"], True)
    assert ("ConfigMap", "chancepay-dashboard") in default
    assert ("ConfigMap", "chancepay-dashboard") not in names(SWITCHES["grafana.dashboard.enabled=false"])
    assert ("CronJob", "chancepay-reconcile") not in names(SWITCHES["reconcile.enabled=false"])
    assert ("Secret", "chancepay-secrets") not in names(SWITCHES["secrets.existingSecret=set"])
    assert not [n for n in names(SWITCHES["migrate.enabled=false"]) if n[0] == "Job"]


def test_monitoring_objects_need_the_operator_crds():
    """Without the Prometheus Operator, enabling a ServiceMonitor fails the install loudly."""
    with pytest.raises(Exception, match="ServiceMonitor"):
        render(SWITCHES["metrics.serviceMonitor.enabled=true"], monitoring_crds=False)


def test_schema_rejects_bad_values():
    for bad in (
        {"config": {"env": "staging"}},
        {"orchestrator": {"replicas": "two"}},
        {"secrets": {"internalToken": "has spaces and @"}},
        {"unknownTopLevel": 1},
        {"orchestrator": {"extraEnv": {"NOT_CHANCEPAY": "x"}}},
    ):
        with pytest.raises(Exception, match="schema"):
            render(bad)


def test_external_services_required_when_in_chart_ones_are_off():
    with pytest.raises(Exception, match="external.orchestratorDbUrl is required"):
        render({"mariadb": {"enabled": False}})
    with pytest.raises(Exception, match="external.amqpUrl is required"):
        render({"rabbitmq": {"enabled": False}})


def all_pods(rendered):
    return [o for o in rendered.objects + [h["object"] for h in rendered.hooks] if o["kind"] in WORKLOAD_KINDS]


def test_every_pod_is_hardened(default_render):
    for obj in all_pods(default_render):
        spec = pod_spec(obj)
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            assert c["resources"]["requests"] and c["resources"]["limits"], (where, c["name"])
            assert ":" in c["image"] and not c["image"].endswith(":latest"), (where, c["image"])


def test_long_running_containers_have_probes(default_render):
    for obj in default_render.objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in pod_spec(obj)["containers"]:
            assert c.get("livenessProbe") and c.get("readinessProbe"), (obj["metadata"]["name"], c["name"])


def test_backing_services_are_statefulsets_with_volumes(default_render):
    for name, image in (("chancepay-mariadb", "mariadb:11.8."), ("chancepay-rabbitmq", "rabbitmq:4.0.")):
        sts = default_render.get("StatefulSet", name)
        assert pod_spec(sts)["containers"][0]["image"].startswith(image)
        assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        assert sts["spec"]["serviceName"] == name


def test_no_init_script_and_no_image_entrypoint(default_render):
    """The chart initialises its servers with the servers' own programs and `chancepay migrate`
    (both run by tests/chart), never with a script only an image's entrypoint would execute."""
    assert not [o for o in default_render.of_kind("ConfigMap") if "initdb" in o["metadata"]["name"]]
    for name in ("chancepay-mariadb", "chancepay-rabbitmq"):
        spec = pod_spec(default_render.get("StatefulSet", name))
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c.get("command"), f"{name}/{c['name']} would run the image's entrypoint"
            assert c["command"][0] in ("mariadb-install-db", "mariadbd", "rabbitmq-server"), c["command"]
            assert not any(part in ("sh", "bash", "-c") for part in c["command"]), c["command"]
            for v in c.get("volumeMounts", []):
                assert "docker-entrypoint" not in v["mountPath"], v


def test_generated_secrets_are_kept_on_uninstall(default_render):
    """`helm uninstall` keeps the PVCs; it must keep the passwords the data was initialised with."""
    secret = default_render.get("Secret", "chancepay-secrets")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_checksums_are_computed_from_the_secret_itself(default_render):
    """One set of generated passwords per render: each pod's checksum/secret is the hash of the
    very values in the Secret (a second random draw would restart every pod on the first upgrade)."""
    import hashlib

    data = default_render.get("Secret", "chancepay-secrets")["stringData"]
    wanted = {
        "chancepay-orchestrator": ["orchestrator-db-url", "internal-token"],
        "chancepay-scanner": ["orchestrator-db-url", "amqp-url", "message-key", "internal-token"],
        "chancepay-wallet": ["wallet-db-url", "amqp-url", "internal-token", "message-key", "message-key-previous"],
        "chancepay-auditor": ["orchestrator-db-url", "wallet-db-url"],
        "chancepay-mariadb": ["mariadb-init.sql"],
        "chancepay-rabbitmq": ["rabbitmq-definitions.json", "rabbitmq-erlang-cookie"],
    }
    for obj in default_render.of_kind("Deployment") + default_render.of_kind("StatefulSet"):
        keys = wanted[obj["metadata"]["name"]]
        expected = hashlib.sha256("\n".join(f"{k}={data.get(k, '')}" for k in keys).encode()).hexdigest()
        assert obj["spec"]["template"]["metadata"]["annotations"]["checksum/secret"] == expected, obj["metadata"][
            "name"
        ]


def test_broker_definitions_carry_the_dead_lettering_policy_of_topology(default_render):
    """The policy the chart's RabbitMQ imports at every boot is the one core/topology.py defines
    (and the test servers apply): at-least-once dead-lettering of chancepay.payments."""
    import json

    from chancepay.core import topology

    data = default_render.get("Secret", "chancepay-secrets")["stringData"]
    policies = json.loads(data["rabbitmq-definitions.json"])["policies"]
    assert policies == [topology.policy("/")]
    assert topology.policy()["definition"] == {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"}


def test_checksums_are_stable_when_the_secret_already_exists(default_render):
    """The upgrade render (lookup finds the Secret) annotates every pod exactly as the install did."""
    first = default_render.get("Secret", "chancepay-secrets")["stringData"]
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "chancepay-secrets",
            "namespace": "chancepay",
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "other", "meta.helm.sh/release-namespace": "chancepay"},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in first.items()},
    }
    import helm_render

    again = helm_render.render(str(CHART), {"fullnameOverride": "chancepay"}, release="other", existing=[existing])

    def annotations(r):
        return {
            o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"].get("checksum/secret")
            for o in r.of_kind("Deployment") + r.of_kind("StatefulSet")
        }

    assert annotations(again) == annotations(default_render)
    # The migrate Job's name is checked across real upgrades (Helm's Upgrade action, same release)
    # in test_chart_upgrade.py: here the release name differs, and so do its pods' labels.


def test_data_volumes_change_ownership_once_and_the_erlang_cookie_is_off_the_volume(default_render):
    for name in ("chancepay-mariadb", "chancepay-rabbitmq"):
        assert (
            pod_spec(default_render.get("StatefulSet", name))["securityContext"]["fsGroupChangePolicy"]
            == "OnRootMismatch"
        )
    rabbit = pod_spec(default_render.get("StatefulSet", "chancepay-rabbitmq"))["containers"][0]
    home = {e["name"]: e.get("value") for e in rabbit["env"]}["HOME"]
    data = [v["mountPath"] for v in rabbit["volumeMounts"] if v["name"] == "data"][0]
    assert not home.startswith(data), "the Erlang cookie ($HOME/.erlang.cookie) must not live on the data volume"


def test_roles_behind_a_service_keep_serving_while_their_endpoint_is_removed(default_render):
    # the scanner too: the orchestrator's nudges reach it through its Service
    for role in ("orchestrator", "scanner", "wallet"):
        spec = pod_spec(default_render.get("Deployment", f"chancepay-{role}"))
        c = spec["containers"][0]
        assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
        assert spec["terminationGracePeriodSeconds"] >= 5 + 25


def test_image_digest_pins_and_rolls_the_pods():
    r = render({"image": {"wallet": {"digest": "sha256:" + "a" * 64}}})
    image = pod_spec(r.get("Deployment", "chancepay-wallet"))["containers"][0]["image"]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert image == f"chancepay-wallet:{app_version}@sha256:" + "a" * 64


def test_generated_secrets_are_kept_on_upgrade(default_render):
    """`lookup` finds the Secret of an earlier install and reuses its values."""
    first = default_render.get("Secret", "chancepay-secrets")["stringData"]
    assert len(first["internal-token"]) == 40 and first["internal-token"] != "dev-internal-token"
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "chancepay-secrets",
            "namespace": "chancepay",
            "labels": {"app.kubernetes.io/managed-by": "Helm"},
            "annotations": {"meta.helm.sh/release-name": "other", "meta.helm.sh/release-namespace": "chancepay"},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in first.items()},
    }
    # a new release name so Helm does not refuse an install over an existing release
    again = render_with_existing(existing)
    assert again == first


def render_with_existing(existing):
    import helm_render

    r = helm_render.render(str(CHART), {"fullnameOverride": "chancepay"}, release="other", existing=[existing])
    return r.get("Secret", "chancepay-secrets")["stringData"]


def test_notes_tell_how_to_reach_api_and_dashboard(default_render):
    notes = default_render.notes
    assert "port-forward svc/chancepay-orchestrator" in notes
    assert "POST" in notes and "/payments" in notes
    assert "helm test chancepay" in notes
    assert "dashboard" in notes.lower() and "deploy/grafana/chancepay-dashboard.json" in notes


def test_helm_test_pod_posts_a_payment_and_waits(default_render):
    tests = [h["object"] for h in default_render.hooks if h["events"] == ["test"]]
    assert len(tests) == 1
    script = "\n".join(tests[0]["spec"]["containers"][0]["command"])
    assert '"/payments"' in script and "SUCCEEDED" in script and "FAILED" in script
    compile(tests[0]["spec"]["containers"][0]["command"][2], "helm-test", "exec")


def test_migrate_is_a_plain_job_whose_name_follows_what_it_runs(default_render):
    """Not a post-install hook: `helm install --wait` and Argo CD would wait for Ready pods before
    running it, and no role is Ready before its schema exists."""
    assert not [h for h in default_render.hooks if h["object"]["kind"] == "Job"]
    (job,) = default_render.of_kind("Job")
    assert "helm.sh/hook" not in (job["metadata"].get("annotations") or {})
    assert pod_spec(job)["containers"][0]["command"] == ["chancepay", "migrate"]
    env = {e["name"]: e for e in pod_spec(job)["containers"][0]["env"]}
    assert env["CHANCEPAY_ADMIN_DB"]["valueFrom"]["secretKeyRef"]["key"] == "admin-db-url"
    other = render({"image": {"orchestrator": {"tag": "9.9.9"}}}).of_kind("Job")[0]
    assert other["metadata"]["name"] != job["metadata"]["name"], "a new image must make a new Job"
