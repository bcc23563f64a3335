"""Day 2 of the chart: `helm upgrade`, `helm uninstall` and a reinstall, run by Helm's own engine.

Helm's real Install, Upgrade and Uninstall actions (helm-sdkpy) run against the fake API server of
deploy/helm_render.py, which applies Helm's patches as an API server does and refuses what a real
one refuses for the kinds this chart renders (deploy/kube_rules.py, each rule with its source in
Kubernetes' validation code). It is Helm's engine against a strict fake, not a cluster: nothing
runs, nothing is defaulted, no admission webhook answers. The first tests plant each forbidden
change and show the fake refuses it, so every later "the upgrade passed" can fail.
"""

from __future__ import annotations

import base64
import copy
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chart import previous_release, require_helm

ROOT = Path(__file__).resolve().parents[2]
CHART = str(ROOT / "charts" / "chancepay")
sys.path.insert(0, str(ROOT / "deploy"))

import helm_render  # noqa: E402
import kube_rules  # noqa: E402

NS = "chancepay"
RELEASE = "chancepay"


@pytest.fixture(autouse=True)
def _helm() -> None:
    require_helm()


# ------------------------------------------------------------------------------------------------
# The strict fake: every rule refuses a planted violation (and allows what the real API allows).


def _request(
    api: helm_render.FakeKubeAPI,
    method: str,
    path: str,
    body: Any,
    content_type: str = "application/strategic-merge-patch+json",
) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        api.url + path, method=method, data=json.dumps(body).encode(), headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _path(kind: str, name: str) -> str:
    gv, plural = {
        "Job": ("apis/batch/v1", "jobs"),
        "CronJob": ("apis/batch/v1", "cronjobs"),
        "StatefulSet": ("apis/apps/v1", "statefulsets"),
        "Deployment": ("apis/apps/v1", "deployments"),
        "Service": ("api/v1", "services"),
        "PersistentVolumeClaim": ("api/v1", "persistentvolumeclaims"),
        "Secret": ("api/v1", "secrets"),
        "Pod": ("api/v1", "pods"),
    }[kind]
    return f"/{gv}/namespaces/{NS}/{plural}" + (f"/{name}" if name else "")


def _pvc(name: str = "data-x-0") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "standard",
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }


@pytest.fixture(scope="module")
def installed() -> Any:
    """One default install, kept for the planted-violation tests (each patches a copy)."""
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART)
        yield cluster


def _live(cluster: helm_render.Cluster, kind: str, suffix: str = "") -> dict[str, Any]:
    found = [o for o in cluster.live(kind) if o["metadata"]["name"].endswith(suffix)]
    assert found, f"no live {kind} *{suffix}"
    return found[0]


# (kind, object suffix, patch, the words of the refusal)
FORBIDDEN = {
    "job-template": (
        "Job",
        "",
        {"spec": {"template": {"metadata": {"labels": {"x": "y"}}}}},
        "spec.template: Invalid value: field is immutable",
    ),
    "job-selector": ("Job", "", {"spec": {"selector": {"matchLabels": {"x": "y"}}}}, "spec.selector"),
    "statefulset-volumeclaimtemplates": (
        "StatefulSet",
        "-mariadb",
        {
            "spec": {
                "volumeClaimTemplates": [
                    {
                        "metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "9Gi"}}},
                    }
                ]
            }
        },
        "updates to statefulset spec for fields other than",
    ),
    "statefulset-servicename": (
        "StatefulSet",
        "-rabbitmq",
        {"spec": {"serviceName": "other"}},
        "(changed: serviceName)",
    ),
    "statefulset-selector": (
        "StatefulSet",
        "-mariadb",
        {"spec": {"selector": {"matchLabels": {"x": "y"}}}},
        "(changed: selector)",
    ),
    "deployment-selector": (
        "Deployment",
        "-orchestrator",
        {"spec": {"selector": {"matchLabels": {"x": "y"}}}},
        "spec.selector",
    ),
    "service-clusterip": (
        "Service",
        "-orchestrator",
        {"spec": {"clusterIP": "10.96.9.9"}},
        "spec.clusterIP: Invalid value: field is immutable",
    ),
}


@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_strict_api_refuses_a_planted_forbidden_update(installed, case) -> None:
    kind, suffix, patch, words = FORBIDDEN[case]
    obj = _live(installed, kind, suffix)
    before = copy.deepcopy(obj)
    code, body = _request(installed.api, "PATCH", _path(kind, obj["metadata"]["name"]), patch)
    assert code == 422, (code, body)
    assert body["reason"] == "Invalid" and words in body["message"], body["message"]
    assert _live(installed, kind, suffix)["spec"] == before["spec"], "a refused update changed the object"


def test_strict_api_allows_what_the_real_api_allows(installed) -> None:
    """StatefulSet replicas/template/updateStrategy, Deployment template, a PVC's requested size."""
    sts = _live(installed, "StatefulSet", "-rabbitmq")
    for patch in (
        {"spec": {"replicas": 3}},
        {"spec": {"updateStrategy": {"type": "OnDelete"}}},
        {"spec": {"template": {"metadata": {"annotations": {"a": "b"}}}}},
    ):
        code, body = _request(installed.api, "PATCH", _path("StatefulSet", sts["metadata"]["name"]), patch)
        assert code == 200, body
    assert _live(installed, "StatefulSet", "-rabbitmq")["spec"]["replicas"] == 3
    dep = _live(installed, "Deployment", "-wallet")
    code, body = _request(
        installed.api,
        "PATCH",
        _path("Deployment", dep["metadata"]["name"]),
        {"spec": {"replicas": 4, "template": {"spec": {"containers": [{"name": "wallet", "image": "x:1"}]}}}},
    )
    assert code == 200, body
    live = _live(installed, "Deployment", "-wallet")
    assert live["spec"]["replicas"] == 4
    (container,) = live["spec"]["template"]["spec"]["containers"]  # merged by name, not appended
    assert container["image"] == "x:1" and container["env"], container
    # Undo what the module's later tests should not see.
    _request(installed.api, "PATCH", _path("StatefulSet", sts["metadata"]["name"]), {"spec": {"replicas": 1}})


def test_strict_api_refuses_a_pvc_spec_change_and_a_shrink_but_not_a_growth(installed) -> None:
    code, body = _request(installed.api, "POST", _path("PersistentVolumeClaim", ""), _pvc())
    assert code == 201 and body["status"]["phase"] == "Bound", body
    code, body = _request(
        installed.api, "PATCH", _path("PersistentVolumeClaim", "data-x-0"), {"spec": {"storageClassName": "fast"}}
    )
    assert code == 422 and "spec is immutable after creation" in body["message"], body
    code, body = _request(
        installed.api,
        "PATCH",
        _path("PersistentVolumeClaim", "data-x-0"),
        {"spec": {"resources": {"requests": {"storage": "5Gi"}}}},
    )
    assert code == 200, body
    code, body = _request(
        installed.api,
        "PATCH",
        _path("PersistentVolumeClaim", "data-x-0"),
        {"spec": {"resources": {"requests": {"storage": "2Gi"}}}},
    )
    assert code == 422 and "can not be less than previous value" in body["message"], body


def test_strict_api_refuses_a_secret_type_change(installed) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "typed"}, "type": "Opaque", "data": {}}
    assert _request(installed.api, "POST", _path("Secret", ""), secret)[0] == 201
    code, body = _request(installed.api, "PATCH", _path("Secret", "typed"), {"type": "kubernetes.io/tls"})
    assert code == 422 and "type: Invalid value: field is immutable" in body["message"], body


def test_strict_api_refuses_immutable_secret_data_and_pod_spec_changes(installed) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "frozen"},
        "immutable": True,
        "data": {"k": base64.b64encode(b"v").decode()},
    }
    assert _request(installed.api, "POST", _path("Secret", ""), secret)[0] == 201
    code, body = _request(installed.api, "PATCH", _path("Secret", "frozen"), {"data": {"k": "eA=="}})
    assert code == 422 and "data: Invalid value: field is immutable" in body["message"], body
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "a:1"}]},
    }
    assert _request(installed.api, "POST", _path("Pod", ""), pod)[0] == 201
    assert (
        _request(installed.api, "PATCH", _path("Pod", "p"), {"spec": {"containers": [{"name": "c", "image": "a:2"}]}})[
            0
        ]
        == 200
    )
    code, body = _request(
        installed.api, "PATCH", _path("Pod", "p"), {"spec": {"containers": [{"name": "c", "command": ["x"]}]}}
    )
    assert code == 422 and "pod updates may not change fields" in body["message"], body


@pytest.mark.parametrize(
    ("kind", "name", "words"),
    [
        ("CronJob", "c" * 53, "at most 52 characters"),
        ("Job", "j" * 64, "at most 63 characters"),
        ("Service", "1-starts-with-a-digit", "a DNS-1035 label"),
        ("StatefulSet", "s" * 64, "a DNS-1123 label"),
    ],
)
def test_strict_api_refuses_names_the_real_api_refuses(installed, kind, name, words) -> None:
    obj = {
        "apiVersion": {"CronJob": "batch/v1", "Job": "batch/v1", "StatefulSet": "apps/v1"}.get(kind, "v1"),
        "kind": kind,
        "metadata": {"name": name},
        "spec": {},
    }
    code, body = _request(installed.api, "POST", _path(kind, ""), obj)
    assert code == 422 and words in body["message"], body


def test_strategic_merge_patch_follows_the_directives() -> None:
    """The patch semantics Helm relies on: merge by key, $setElementOrder, $patch: delete,
    $retainKeys, null deletes, lists without a merge key replaced."""
    live = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "a",
                            "env": [
                                {"name": "X", "value": "1"},
                                {"name": "Y", "value": "2"},
                                {"name": "W", "value": "0"},
                            ],
                            "args": ["--one"],
                        }
                    ],
                    "nodeSelector": {"disk": "ssd"},
                    "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}],
                }
            }
        }
    }
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "a"}],
                    "containers": [
                        {
                            "name": "a",
                            "$setElementOrder/env": [{"name": "Z"}, {"name": "W"}, {"name": "Y"}],
                            "env": [{"name": "X", "$patch": "delete"}, {"name": "Z", "value": "3"}],
                            "args": ["--two"],
                        }
                    ],
                    "volumes": [
                        {"name": "v", "$retainKeys": ["name", "secret"], "secret": {"secretName": "s"}},
                        {"name": "w", "$patch": "delete"},
                    ],
                    "nodeSelector": None,
                }
            }
        }
    }
    out = kube_rules.apply_patch(live, patch, "application/strategic-merge-patch+json", "Deployment")
    spec = out["spec"]["template"]["spec"]
    assert spec["containers"] == [
        {
            "name": "a",
            "env": [{"name": "Z", "value": "3"}, {"name": "W", "value": "0"}, {"name": "Y", "value": "2"}],
            "args": ["--two"],
        }
    ]
    assert spec["volumes"] == [{"name": "v", "secret": {"secretName": "s"}}]
    assert "nodeSelector" not in spec


# ------------------------------------------------------------------------------------------------
# Helm's Upgrade action, one ordinary change at a time.


def _strip(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as the chart rendered it, from the live copy: what the fake API added removed,
    a Secret's stringData compared as the data the API server stores."""
    # `annotations:` with nothing under it renders as null, which the API stores as absent
    obj = helm_render.drop_nulls(copy.deepcopy(obj))
    obj.pop("status", None)
    meta = obj.get("metadata", {})
    for k in ("uid", "resourceVersion", "creationTimestamp", "generation", "namespace"):
        meta.pop(k, None)
    # Helm's ownership annotations, which it adds to what it creates
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith("meta.helm.sh/")}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    if obj.get("kind") == "Service":
        obj.get("spec", {}).pop("clusterIP", None)
    if obj.get("kind") == "Secret" and "stringData" in obj:
        data = obj.setdefault("data", {})
        for k, v in obj.pop("stringData").items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    return obj


def assert_live_is_rendered(cluster: helm_render.Cluster, rendered: helm_render.Rendered) -> None:
    """After the upgrade the cluster holds exactly what this revision rendered: every patch was
    applied as an API server applies it, nothing of the previous revision is left over."""
    live = {(o["kind"], o["metadata"]["name"]): _strip(o) for o in cluster.live()}
    for obj in rendered.manifests:
        key = (obj["kind"], obj["metadata"]["name"])
        assert key in live, f"{key} rendered but not in the cluster"
        want, got = _strip(obj), live[key]
        if obj["kind"] == "StatefulSet":  # the API server's canonical quantities
            for tpl in want["spec"].get("volumeClaimTemplates", []):
                req = tpl["spec"]["resources"]["requests"]
                req["storage"] = kube_rules.canonical_quantity(req["storage"])
        assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True), f"{key} differs from its manifest"
    ours = {(o["kind"], o["metadata"]["name"]) for o in rendered.manifests}
    leftovers = {
        k
        for k, o in live.items()
        if (o["metadata"].get("annotations") or {}).get("meta.helm.sh/release-name") == RELEASE
        and k not in ours
        and (o["metadata"].get("annotations") or {}).get("helm.sh/resource-policy") != "keep"
    }
    assert not leftovers, f"objects of an earlier revision left behind: {leftovers}"


def _migrate_job(rendered: helm_render.Rendered) -> str:
    (job,) = [o["metadata"]["name"] for o in rendered.manifests if o["kind"] == "Job"]
    return job


def _existing_secret(cluster: helm_render.Cluster, name: str) -> None:
    """A Secret made by the operator with every key the chart's own Secret holds."""
    generated = _live(cluster, "Secret", "-secrets")
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": generated["data"]}
    code, resp = _request(cluster.api, "POST", _path("Secret", ""), body)
    assert code == 201, resp


# name -> (values, does the migrate Job run again)
ORDINARY_CHANGES: dict[str, tuple[dict[str, Any], bool]] = {
    "config.logLevel": ({"config": {"logLevel": "DEBUG"}}, True),
    "config.extraEnv": ({"config": {"extraEnv": {"CHANCEPAY_CALLBACK_BATCH_SIZE": "16"}}}, True),
    "podSecurityContext": (
        {
            "podSecurityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10002,
                "runAsGroup": 10002,
                "fsGroup": 10002,
                "seccompProfile": {"type": "RuntimeDefault"},
            }
        },
        True,
    ),
    "containerSecurityContext": (
        {
            "containerSecurityContext": {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "Localhost", "localhostProfile": "chancepay.json"},
            }
        },
        True,
    ),
    "image.pullPolicy": ({"image": {"pullPolicy": "Always"}}, True),
    "image.tag": (
        {"image": {"orchestrator": {"tag": "0.3.1"}, "scanner": {"tag": "0.3.1"}, "wallet": {"tag": "0.3.1"}}},
        True,
    ),
    "image.digest": ({"image": {"orchestrator": {"digest": "sha256:" + "a" * 64}}}, True),
    "replicas": ({"orchestrator": {"replicas": 3}, "wallet": {"replicas": 2}, "scanner": {"replicas": 2}}, False),
    "tls.enabled": ({"tls": {"enabled": True, "secretName": "chancepay-tls"}}, True),
    "secrets.existingSecret": ({"secrets": {"existingSecret": "my-secrets"}}, True),
    "nothing": ({}, False),
}


@pytest.mark.parametrize("apply", ["client-side", "server-side"])
@pytest.mark.parametrize("change", sorted(ORDINARY_CHANGES))
def test_helm_upgrade_with_an_ordinary_change(change, apply) -> None:
    """Client-side apply (Helm 3, and helm-sdkpy's default) sends three-way strategic merge
    patches; server-side apply (the Helm 4 CLI's default for a new release) sends the object."""
    values, migrate_reruns = ORDINARY_CHANGES[change]
    with helm_render.Cluster(namespace=NS, server_side=apply == "server-side") as cluster:
        first = cluster.install(RELEASE, CHART)
        if change == "secrets.existingSecret":
            _existing_secret(cluster, "my-secrets")
        n_updates = len(cluster.api.updates)
        second = cluster.upgrade(RELEASE, CHART, values)
        assert not cluster.api.refused, cluster.api.refused
        assert_live_is_rendered(cluster, second)
        assert (_migrate_job(second) != _migrate_job(first)) is migrate_reruns, (
            "the migrate Job must run again exactly when what it runs changed"
        )
        if change != "nothing":
            assert cluster.api.updates[n_updates:], "the upgrade patched nothing"
        # The same upgrade again is a no-op for every workload (no pod would restart).
        n_updates = len(cluster.api.updates)
        third = cluster.upgrade(RELEASE, CHART, values)
        assert _migrate_job(third) == _migrate_job(second)
        patched = {(k, n) for k, n, _ in cluster.api.updates[n_updates:] if k in helm_render_workloads()}
        assert not patched, f"a repeated upgrade changed {patched}"


def helm_render_workloads() -> set[str]:
    return {"Deployment", "StatefulSet", "Job", "CronJob"}


def test_log_level_upgrade_reaches_every_role_and_migrate() -> None:
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART)
        cluster.upgrade(RELEASE, CHART, {"config": {"logLevel": "DEBUG"}})
        for kind in ("Deployment", "Job"):
            for obj in cluster.live(kind):
                spec = obj["spec"]["template"]["spec"]
                env = {e["name"]: e.get("value") for c in spec["containers"] for e in c.get("env", [])}
                assert env["CHANCEPAY_LOG_LEVEL"] == "DEBUG", obj["metadata"]["name"]


def test_a_failed_migrate_job_runs_again_with_a_new_run_id() -> None:
    with helm_render.Cluster(namespace=NS) as cluster:
        first = _migrate_job(cluster.install(RELEASE, CHART))
        same = _migrate_job(cluster.upgrade(RELEASE, CHART, {}))
        again = _migrate_job(cluster.upgrade(RELEASE, CHART, {"migrate": {"runId": "2"}}))
        assert first == same != again
        assert [o["metadata"]["name"] for o in cluster.live("Job")] == [again]


def test_the_previous_chart_release_could_not_take_an_ordinary_upgrade(tmp_path) -> None:
    """The negative control of issue 19: 0.2.0's migrate Job kept its name when the log level
    changed, and the API refused the patch of its template."""
    _, old_chart = previous_release(tmp_path)
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, str(old_chart))
        with pytest.raises(helm_render.HelmError, match="spec.template: Invalid value: field is immutable"):
            cluster.upgrade(RELEASE, str(old_chart), {"config": {"logLevel": "DEBUG"}})


def test_the_previous_release_upgrades_with_reuse_values(tmp_path) -> None:
    """`--reuse-values` from the previous release keeps that release's defaults for every value
    this chart added: the templates must fall back on their own."""
    _, old_chart = previous_release(tmp_path)
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, str(old_chart))
        new = cluster.upgrade(RELEASE, CHART, {"config": {"logLevel": "DEBUG"}}, reuse_values=True)
        assert not cluster.api.refused, cluster.api.refused
        (job,) = [o for o in new.manifests if o["kind"] == "Job"]
        assert job["metadata"]["annotations"]["chancepay.io/migrate-run-id"] == "1"
        assert "nil" not in json.dumps(new.manifests)


def test_the_documented_upgrade_from_the_previous_release_takes_this_ones_new_defaults(tmp_path) -> None:
    """The README's ordinary upgrade (`--reset-then-reuse-values --set config.logLevel=DEBUG`) run
    on a release of the previous chart: the values its operator set are kept, the log level
    changes, and what this release adds with a default takes that default (the auditor runs) —
    which plain `--reuse-values` does not do (the test above: the old chart's defaults)."""
    _, old_chart = previous_release(tmp_path)
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, str(old_chart), {"orchestrator": {"replicas": 3}})
        (command,) = [c for d, c in documented_helm_commands() if d == "README.md" and " upgrade " in c]
        assert "--reset-then-reuse-values" in command and "config.logLevel=DEBUG" in command, command
        run_helm_command(cluster, command)
        assert not cluster.api.refused, cluster.api.refused
        deployments = {o["metadata"]["name"]: o for o in cluster.live("Deployment")}
        assert f"{RELEASE}-auditor" in deployments, sorted(deployments)
        assert deployments[f"{RELEASE}-orchestrator"]["spec"]["replicas"] == 3, "the operator's value kept"
        for name in (f"{RELEASE}-orchestrator", f"{RELEASE}-auditor"):
            spec = deployments[name]["spec"]["template"]["spec"]
            env = {e["name"]: e.get("value") for c in spec["containers"] for e in c.get("env", [])}
            assert env["CHANCEPAY_LOG_LEVEL"] == "DEBUG", name
        # plain --reuse-values on the same old release would have left the auditor out
        cluster.uninstall(RELEASE)
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, str(old_chart), {"orchestrator": {"replicas": 3}})
        cluster.upgrade(RELEASE, CHART, {"config": {"logLevel": "DEBUG"}}, reuse_values=True)
        assert f"{RELEASE}-auditor" not in {o["metadata"]["name"] for o in cluster.live("Deployment")}


def test_coalesce_tables_is_helms() -> None:
    """deploy/helm_render.coalesce_tables, which stands in for Helm's CoalesceTables where
    helm-sdkpy has no `--reset-then-reuse-values`: the values given now win, tables merge, a key
    only in the release's values is kept, a null given now drops a reused value."""
    now = {"config": {"logLevel": "DEBUG"}, "wallet": None, "orchestrator": {"resources": None}}
    before = {
        "config": {"logLevel": "INFO", "env": "prod"},
        "wallet": {"replicas": 4},
        "orchestrator": {"replicas": 3, "resources": {"limits": {"cpu": 1}}},
    }
    assert helm_render.coalesce_tables(now, before) == {
        "config": {"logLevel": "DEBUG", "env": "prod"},
        "orchestrator": {"replicas": 3},
    }


def test_the_previous_chart_release_upgrades_to_this_one(tmp_path) -> None:
    version, old_chart = previous_release(tmp_path)
    current = yaml.safe_load((Path(CHART) / "Chart.yaml").read_text())["version"]
    assert version != current
    with helm_render.Cluster(namespace=NS) as cluster:
        old = cluster.install(RELEASE, str(old_chart), {"orchestrator": {"replicas": 2}})
        old_secret = _live(cluster, "Secret", "-secrets")["data"]
        new = cluster.upgrade(RELEASE, CHART, {"orchestrator": {"replicas": 2}})
        assert not cluster.api.refused, cluster.api.refused
        assert_live_is_rendered(cluster, new)
        # Passwords, tokens, keys, URLs: kept. The files derived from them (the broker's
        # definitions, MariaDB's init file) may gain content in a new release.
        derived = {"rabbitmq-definitions.json", "mariadb-init.sql"}
        live_secret = _live(cluster, "Secret", "-secrets")["data"]
        # A key new in this release (the first API client's) is generated by the upgrade, then kept.
        assert set(live_secret) - set(old_secret) <= {"api-key"}, set(live_secret) - set(old_secret)
        kept = {k: v for k, v in live_secret.items() if k not in derived and k in old_secret}
        assert kept == {k: v for k, v in old_secret.items() if k not in derived}, "the upgrade changed a password"
        assert {o["metadata"]["name"] for o in old.manifests if o["kind"] == "StatefulSet"} == {
            o["metadata"]["name"] for o in new.manifests if o["kind"] == "StatefulSet"
        }
        # and an ordinary change right after
        cluster.upgrade(RELEASE, CHART, {"orchestrator": {"replicas": 2}, "config": {"logLevel": "DEBUG"}})
        assert not cluster.api.refused, cluster.api.refused


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"mariadb": {"persistence": {"size": "20Gi"}}}, "mariadb.persistence.size"),
        ({"mariadb": {"persistence": {"storageClass": "fast"}}}, "mariadb.persistence.storageClass"),
        ({"rabbitmq": {"persistence": {"size": "5Gi"}}}, "rabbitmq.persistence.size"),
        ({"rabbitmq": {"persistence": {"storageClass": "fast"}}}, "rabbitmq.persistence.storageClass"),
        (
            {"rabbitmq": {"replicas": 3}},
            "rabbitmq.replicas: this upgrade would turn a single-node broker into a cluster",
        ),
        ({"mariadb": {"image": {"tag": "12.0.2"}}}, "mariadb.image.tag: the running MariaDB is series 11.8"),
    ],
)
def test_an_install_time_value_changed_on_upgrade_is_refused_naming_it(values, named) -> None:
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART)
        before = {(o["kind"], o["metadata"]["name"]): o for o in cluster.live()}
        with pytest.raises(helm_render.HelmError) as refused:
            cluster.upgrade(RELEASE, CHART, values)
        assert named in str(refused.value), str(refused.value)
        assert "CHANGELOG.md" in str(refused.value)
        after = {(o["kind"], o["metadata"]["name"]): o for o in cluster.live()}
        assert after == before, "a refused upgrade changed the cluster"


def test_a_size_the_api_stored_in_canonical_form_is_the_same_size() -> None:
    """Installed as 2048Mi, stored by the API server as 2Gi: an ordinary upgrade is not a resize."""
    values = {"mariadb": {"persistence": {"size": "2048Mi"}}, "rabbitmq": {"persistence": {"size": "1024Mi"}}}
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART, values)
        sizes = {
            o["metadata"]["name"]: o["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            for o in cluster.live("StatefulSet")
        }
        assert sorted(sizes.values()) == ["1Gi", "2Gi"], sizes
        cluster.upgrade(RELEASE, CHART, {**values, "config": {"logLevel": "DEBUG"}})
        assert not cluster.api.refused
        with pytest.raises(helm_render.HelmError, match="mariadb.persistence.size: the installed data volume is 2Gi"):
            cluster.upgrade(RELEASE, CHART, {**values, "mariadb": {"persistence": {"size": "3Gi"}}})


def test_a_broker_scaled_by_hand_is_judged_by_its_node_names_not_its_replica_count() -> None:
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART, {"rabbitmq": {"replicas": 3}})
        sts = _live(cluster, "StatefulSet", "-rabbitmq")
        code, body = _request(
            cluster.api, "PATCH", _path("StatefulSet", sts["metadata"]["name"]), {"spec": {"replicas": 0}}
        )
        assert code == 200, body  # kubectl scale --replicas=0, for maintenance
        cluster.upgrade(RELEASE, CHART, {"rabbitmq": {"replicas": 3}, "config": {"logLevel": "DEBUG"}})
        assert not cluster.api.refused


def _claims_as_the_statefulset_controller_made_them(cluster: helm_render.Cluster) -> None:
    for sts in cluster.live("StatefulSet"):
        tpl = sts["spec"]["volumeClaimTemplates"][0]
        for i in range(int(sts["spec"].get("replicas", 1))):
            pvc = {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"{tpl['metadata']['name']}-{sts['metadata']['name']}-{i}"},
                "spec": {**tpl["spec"], "storageClassName": tpl["spec"].get("storageClassName", "standard")},
            }
            code, body = _request(cluster.api, "POST", _path("PersistentVolumeClaim", ""), pvc)
            assert code == 201, body


@pytest.mark.parametrize(
    ("first", "again", "named"),
    [
        (
            {},
            {"rabbitmq": {"replicas": 3}},
            "a reinstall over the volumes kept by `helm uninstall` would turn a single-node",
        ),
        ({"rabbitmq": {"replicas": 3}}, {}, "would turn a clustered broker into a single node"),
        (
            {},
            {"mariadb": {"persistence": {"size": "5Gi"}}},
            "mariadb.persistence.size: the volume claim data-chancepay-mariadb-0",
        ),
        (
            {},
            {"rabbitmq": {"persistence": {"storageClass": "fast"}}},
            "rabbitmq.persistence.storageClass: the volume claim",
        ),
    ],
)
def test_a_reinstall_over_kept_volumes_is_held_to_what_they_hold(first, again, named) -> None:
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART, first)
        _claims_as_the_statefulset_controller_made_them(cluster)
        cluster.uninstall(RELEASE)
        with pytest.raises(helm_render.HelmError) as refused:
            cluster.install(RELEASE, CHART, again)
        assert named in str(refused.value), str(refused.value)
        cluster.install(RELEASE, CHART, first)  # the same values reuse the data
        assert not cluster.api.refused


def test_a_password_rotated_in_an_existing_secret_reruns_migrate() -> None:
    values = {"secrets": {"existingSecret": "my-secrets"}}
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART)
        _existing_secret(cluster, "my-secrets")
        first = _migrate_job(cluster.upgrade(RELEASE, CHART, values))
        assert _migrate_job(cluster.upgrade(RELEASE, CHART, values)) == first
        secret = _live(cluster, "Secret", "my-secrets")
        data = {**secret["data"], "wallet-db-url": base64.b64encode(b"mysql://chancepay_wallet:new@h/w").decode()}
        code, body = _request(cluster.api, "PATCH", _path("Secret", "my-secrets"), {"data": data})
        assert code == 200, body
        assert _migrate_job(cluster.upgrade(RELEASE, CHART, values)) != first


def test_a_mariadb_series_change_goes_through_when_acknowledged() -> None:
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART)
        cluster.upgrade(RELEASE, CHART, {"mariadb": {"image": {"tag": "12.0.2"}, "allowSeriesChange": True}})
        assert not cluster.api.refused
        # a patch release of the same series needs nothing
        cluster.upgrade(RELEASE, CHART, {"mariadb": {"image": {"tag": "12.0.3"}}})


def test_a_rabbitmq_cluster_grows_by_odd_sizes_shrinks_only_when_allowed_and_two_is_refused() -> None:
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART, {"rabbitmq": {"replicas": 3}})
        new = cluster.upgrade(RELEASE, CHART, {"rabbitmq": {"replicas": 5}})
        assert not cluster.api.refused
        assert_live_is_rendered(cluster, new)
        with pytest.raises(helm_render.HelmError, match="replicas"):
            cluster.upgrade(RELEASE, CHART, {"rabbitmq": {"replicas": 2}})
        with pytest.raises(helm_render.HelmError, match="would turn a clustered broker into a single node"):
            cluster.upgrade(RELEASE, CHART, {"rabbitmq": {"replicas": 1}})
        with pytest.raises(helm_render.HelmError, match="5 -> 3 is refused unless rabbitmq.allowShrink=true"):
            cluster.upgrade(RELEASE, CHART, {"rabbitmq": {"replicas": 3}})
        cluster.upgrade(RELEASE, CHART, {"rabbitmq": {"replicas": 3, "allowShrink": True}})
        assert not cluster.api.refused


def test_a_long_release_name_keeps_the_hash_and_the_api_name_limits() -> None:
    release = "payments-eu-west-1-production-blue-2026-rel-ab"  # 46 characters
    assert len(release) == 46
    with helm_render.Cluster(namespace=NS) as cluster:
        rendered = cluster.install(release, CHART)
        job = _migrate_job(rendered)
        assert len(job) <= 63 and job.rsplit("-", 1)[1].isalnum() and len(job.rsplit("-", 1)[1]) == 8, job
        (cron,) = [o["metadata"]["name"] for o in rendered.manifests if o["kind"] == "CronJob"]
        assert len(cron) <= 52
        for sts in (o for o in rendered.manifests if o["kind"] == "StatefulSet"):
            assert len(sts["metadata"]["name"]) <= 52, sts["metadata"]["name"]
        upgraded = cluster.upgrade(release, CHART, {"config": {"logLevel": "DEBUG"}})
        assert _migrate_job(upgraded) != job and not cluster.api.refused


def test_uninstall_keeps_the_secret_and_a_reinstall_reuses_it() -> None:
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART)
        secret = _live(cluster, "Secret", "-secrets")
        cluster.uninstall(RELEASE)
        left = cluster.live()
        assert [(o["kind"], o["metadata"]["name"]) for o in left] == [("Secret", secret["metadata"]["name"])], left
        again = cluster.install(RELEASE, CHART)
        assert _live(cluster, "Secret", "-secrets")["data"] == secret["data"], "the reinstall made new passwords"
        assert_live_is_rendered(cluster, again)


# ------------------------------------------------------------------------------------------------
# Every `helm install|upgrade|uninstall` the docs tell an operator to run, run as written (Helm's
# engine, the strict fake: what a cluster would add — pods, waiting — is not here).

DOCS = (
    "README.md",
    "docs/kubernetes.md",
    "docs/operations.md",
    "charts/chancepay/CHANGELOG.md",
    "charts/chancepay/values.yaml",
    "charts/chancepay/templates/NOTES.txt",
)


def documented_helm_commands() -> list[tuple[str, str]]:
    """(document, command) for every helm install/upgrade/uninstall/rollback that names its release (and
    chart): in inline code, possibly broken over lines, and in code blocks with backslash
    continuations. Prose mentions (`helm upgrade --set x=y`) name no release and are not commands."""
    import re

    found: list[tuple[str, str]] = []
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        text = text.replace("{{ .Release.Name }}", RELEASE).replace("{{ .Release.Namespace }}", NS)
        lines, in_block, block = text.splitlines(), False, []
        candidates = []
        for line in lines:
            if line.lstrip().startswith("```"):
                if in_block:
                    joined = re.sub(r"\\\n\s*", " ", "\n".join(block))
                    candidates += [x.strip() for x in joined.splitlines()]
                in_block, block = not in_block, []
            elif in_block:
                block.append(line)
        flat = re.sub(r"\n\s*(#\s*)?", " ", text)
        candidates += re.findall(r"`(helm (?:install|upgrade|uninstall|rollback) [^`]*)`", flat)
        for cmd in candidates:
            cmd = cmd.split(" #")[0].strip()
            m = re.match(r"helm (install|upgrade|uninstall|rollback) (--install )?([a-z0-9][a-z0-9-]*)( |$)", cmd)
            if m and (m.group(1) in ("uninstall", "rollback") or " charts/" in cmd):
                found.append((doc, cmd))
    return sorted(set(found))


def _set(values: dict[str, Any], assignment: str, *, as_string: bool) -> None:
    key, _, raw = assignment.partition("=")
    parts = [p.replace("\x00", ".") for p in key.replace("\\.", "\x00").split(".")]
    value: Any = raw
    if not as_string:
        if raw in ("true", "false"):
            value = raw == "true"
        elif raw.isdigit():
            value = int(raw)
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def run_helm_command(cluster: helm_render.Cluster, command: str) -> None:
    import shlex

    args = shlex.split(command)
    assert args[0] == "helm"
    verb, rest = args[1], args[2:]
    positional: list[str] = []
    values: dict[str, Any] = {}
    reuse = reset_then_reuse = install = False
    i = 0
    while i < len(rest):
        a = rest[i]
        if a in ("--set", "--set-string"):
            _set(values, rest[i + 1], as_string=a == "--set-string")
            i += 2
        elif a in ("-n", "--namespace", "--timeout"):
            i += 2
        elif a in ("--reuse-values",):
            reuse = True
            i += 1
        elif a == "--reset-then-reuse-values":
            reset_then_reuse = True
            i += 1
        elif a == "--install":
            install = True
            i += 1
        elif a in ("--create-namespace", "--wait", "--wait-for-jobs", "--atomic"):
            i += 1
        else:
            assert not a.startswith("-"), f"the docs use {a}, which this runner does not know: {command}"
            positional.append(a)
            i += 1
    if verb == "rollback":
        # REVISION (a placeholder in the docs' prose): the installed one, 1
        revision = positional[1] if len(positional) > 1 else "0"
        cluster.rollback(positional[0], 1 if revision == "REVISION" else int(revision))
        return
    chart = str(ROOT / positional[1]) if len(positional) > 1 else ""
    if verb == "install":
        cluster.install(positional[0], chart, values)
    elif verb == "upgrade":
        if install and not helm_render._release_records(cluster.api, positional[0]):
            cluster.install(positional[0], chart, values)
        else:
            cluster.upgrade(positional[0], chart, values, reuse_values=reuse, reset_then_reuse_values=reset_then_reuse)
    else:
        cluster.uninstall(positional[0])


def test_the_docs_show_helm_commands() -> None:
    verbs = {cmd.split()[1] for _, cmd in documented_helm_commands()}
    assert {"install", "upgrade", "uninstall", "rollback"} <= verbs, documented_helm_commands()


@pytest.mark.parametrize(("doc", "command"), documented_helm_commands())
def test_every_documented_helm_command_runs_as_written(doc, command) -> None:
    """Each against a release installed with the defaults (what the docs assume), except an
    install, which starts from an empty namespace, and a rollback, which follows an upgrade (the
    log level's) and must bring the installed revision's objects back."""
    with helm_render.Cluster(namespace=NS) as cluster:
        verb = command.split()[1]
        if verb != "install":
            installed = cluster.install(RELEASE, CHART)
        if verb == "rollback":
            cluster.upgrade(RELEASE, CHART, {"config": {"logLevel": "DEBUG"}})
            assert _log_levels(cluster) == {"DEBUG"}
        run_helm_command(cluster, command)
        assert not cluster.api.refused, cluster.api.refused
        if verb == "rollback":
            assert _log_levels(cluster) == {"INFO"}
            assert _migrate_job(cluster.rendered(RELEASE)) == _migrate_job(installed), "the installed revision's Job"


def test_a_rollback_is_helms_stored_revision_or_refused() -> None:
    """Cluster.rollback stands in for Helm's Rollback (helm-sdkpy's cannot run): it must apply the
    target revision's stored manifest exactly, and refuse what `helm rollback` refuses."""
    with helm_render.Cluster(namespace=NS) as cluster:
        cluster.install(RELEASE, CHART)
        with pytest.raises(helm_render.HelmError, match="no revision 0"):
            cluster.rollback(RELEASE)  # nothing before the first revision
        cluster.upgrade(RELEASE, CHART, {"orchestrator": {"replicas": 3}, "config": {"logLevel": "DEBUG"}})
        cluster.upgrade(RELEASE, CHART, {"config": {"logLevel": "WARNING"}}, reuse_values=True)
        cluster.rollback(RELEASE, 2)
        records = helm_render._release_records(cluster.api, RELEASE)
        assert [r["version"] for r in records] == [1, 2, 3, 4]
        assert records[-1]["manifest"] == records[1]["manifest"]
        assert _log_levels(cluster) == {"DEBUG"}
        assert _live(cluster, "Deployment", "-orchestrator")["spec"]["replicas"] == 3
        assert not cluster.api.refused, cluster.api.refused


def _log_levels(cluster: helm_render.Cluster) -> set[str]:
    """CHANCEPAY_LOG_LEVEL of every live Deployment's containers."""
    return {
        e.get("value")
        for o in cluster.live("Deployment")
        for c in o["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if e["name"] == "CHANCEPAY_LOG_LEVEL"
    }


def test_lint_every_documented_label_selector_selects_pods() -> None:
    """A lint (nothing runs): each `kubectl ... -l SELECTOR` the README and NOTES show matches the
    labels of at least one pod template the chart renders. A selector that matches nothing makes
    `kubectl logs -l ... | grep` print nothing, which reads as "no failure"."""
    import re

    with helm_render.Cluster(namespace=NS) as cluster:
        rendered = cluster.install(RELEASE, CHART)
    pods = []
    for obj in rendered.objects:
        spec = obj.get("spec") or {}
        tpl = (spec.get("jobTemplate") or {}).get("spec", {}).get("template") or spec.get("template")
        if tpl:
            pods.append((tpl.get("metadata") or {}).get("labels") or {})
    text = "".join((ROOT / doc).read_text() for doc in DOCS).replace("{{ .Release.Name }}", RELEASE)
    selectors = set(re.findall(r"(?:kubectl|\$L)[^\n|]*? -l ([\w./-]+=[\w.,/=-]+)", text))
    assert len(selectors) >= 3, selectors
    for selector in selectors:
        wanted = dict(term.split("=", 1) for term in selector.split(","))
        assert any(all(labels.get(k) == v for k, v in wanted.items()) for labels in pods), (
            f"`-l {selector}` selects no pod the chart renders"
        )
