"""What the chart says about its values, checked against what it renders (Helm's own engine):
the broker's memory taken from its container limit, `global` accepted, label and annotation
maps typed as the API types them, `secrets.existingSecret` checked key by key, the Prometheus
Operator objects refused without their CRDs, ERL_CRASH_DUMP on a writable volume, and NOTES that
say what `helm uninstall` leaves behind."""

from __future__ import annotations

import base64
import re
from typing import Any

import helm_render  # noqa: E402  (deploy/ is on sys.path through conftest)
import pytest

from tests.deploy.conftest import CHART, WORKLOAD_KINDS, pod_spec, render

NAMESPACE = "chancepay"


def render_in_cluster(values: dict[str, Any], existing: list[dict[str, Any]]) -> helm_render.Rendered:
    """`helm install` against the fake API holding `existing` (what `lookup` then finds)."""
    from tests.support.chart import require_helm

    require_helm()
    return helm_render.render(str(CHART), values, namespace=NAMESPACE, existing=existing)


def secret(name: str, keys: list[str] | tuple[str, ...]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "type": "Opaque",
        "data": {k: base64.b64encode(b"value").decode() for k in keys},
    }


# Kubernetes publishes this ConfigMap in every namespace: the chart takes it as the sign that its
# `lookup` talks to a real cluster (not `helm template`).
ROOT_CA = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "kube-root-ca.crt", "namespace": NAMESPACE},
    "data": {"ca.crt": "-----BEGIN CERTIFICATE-----"},
}


# ---------------------------------------------------------------- RabbitMQ memory and WAL
def broker_conf(rendered: helm_render.Rendered) -> dict[str, str]:
    text = rendered.get("ConfigMap", "-rabbitmq-config")["data"]["20-chancepay.conf"]
    return dict(line.split(" = ", 1) for line in text.splitlines() if " = " in line and not line.startswith("#"))


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("512Mi", 512 * 2**20),
        ("1Gi", 2**30),
        ("1.5Gi", 3 * 2**29),
        ("786432Ki", 768 * 2**20),
        ("500M", 500 * 10**6),
        ("2G", 2 * 10**9),
        ("536870912", 536870912),
        (805306368, 805306368),
    ],
)
def test_broker_memory_is_its_container_limit(quantity, expected):
    """RabbitMQ 4.0 reads the host's RAM, not the cgroup limit: the chart hands it the limit in
    bytes, so the relative watermark is a fraction of what the container may really use."""
    conf = broker_conf(render({"rabbitmq": {"resources": {"limits": {"memory": quantity}}}}))
    assert int(conf["total_memory_available_override_value"]) == expected
    assert float(conf["vm_memory_high_watermark.relative"]) == 0.6
    wal = int(conf["raft.wal_max_size_bytes"])
    assert wal == max(16 * 2**20, min(512 * 2**20, expected // 8))
    # RabbitMQ's quorum-queue guide: node memory at least 3 (high throughput: 4) times the WAL,
    # here even below the alarm threshold.
    assert 0.6 * expected >= 4 * wal


def test_default_broker_limit_and_wal():
    conf = broker_conf(render())
    assert conf["total_memory_available_override_value"] == str(512 * 2**20)
    assert conf["raft.wal_max_size_bytes"] == str(64 * 2**20)


def test_wal_has_a_floor_and_rabbitmqs_default_as_ceiling():
    assert broker_conf(render({"rabbitmq": {"resources": {"limits": {"memory": "64Mi"}}}}))[
        "raft.wal_max_size_bytes"
    ] == str(16 * 2**20)
    assert broker_conf(render({"rabbitmq": {"resources": {"limits": {"memory": "16Gi"}}}}))[
        "raft.wal_max_size_bytes"
    ] == str(512 * 2**20)


@pytest.mark.parametrize("bad", ["5e8", "500m", "1GB", "512 Mi", "lots"])
def test_unreadable_memory_limit_fails_naming_it(bad):
    with pytest.raises(Exception, match=rf'rabbitmq.resources.limits.memory: cannot read "{re.escape(bad)}"'):
        render({"rabbitmq": {"resources": {"limits": {"memory": bad}}}})


def test_without_a_memory_limit_the_watermark_is_of_the_node():
    conf = broker_conf(render({"rabbitmq": {"resources": {"limits": {"memory": None}}}}))
    assert "total_memory_available_override_value" not in conf and "raft.wal_max_size_bytes" not in conf
    assert conf["vm_memory_high_watermark.relative"] == "0.6"


# ---------------------------------------------------------------- global, images
def images(rendered: helm_render.Rendered) -> set[str]:
    return {
        c["image"]
        for o in rendered.objects + [h["object"] for h in rendered.hooks]
        if o["kind"] in WORKLOAD_KINDS
        for c in pod_spec(o).get("initContainers", []) + pod_spec(o)["containers"]
    }


def test_global_is_accepted_and_its_image_registry_used():
    """A parent chart passes `global` to every subchart: the schema must take it, whatever it
    holds, and global.imageRegistry prefixes every image whose own registry is empty."""
    plain = images(render())
    assert not any("/" in i for i in plain), plain
    mirrored = images(
        render(
            {"global": {"imageRegistry": "mirror.example", "storageClass": "fast", "parentOnly": {"anything": True}}}
        )
    )
    assert mirrored == {f"mirror.example/{i}" for i in plain}
    own = images(
        render(
            {
                "global": {"imageRegistry": "mirror.example"},
                "image": {"registry": "apps.example"},
                "mariadb": {"image": {"registry": "db.example"}},
            }
        )
    )
    assert {i.split("/")[0] for i in own} == {"apps.example", "db.example", "mirror.example"}
    assert any(i.startswith("db.example/mariadb:") for i in own)
    assert any(i.startswith("mirror.example/rabbitmq:") for i in own)


# ---------------------------------------------------------------- maps of strings
@pytest.mark.parametrize(
    "values",
    [
        {"orchestrator": {"nodeSelector": {"kubernetes.io/os": True}}},
        {"mariadb": {"nodeSelector": {"disk": 1}}},
        {"rabbitmq": {"nodeSelector": {"spot": False}}},
        {"commonLabels": {"team": 7}},
        {"commonLabels": {"team": "a b"}},
        {"wallet": {"podAnnotations": {"sidecar.istio.io/inject": False}}},
        {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": 1}}},
        {"ingress": {"annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": True}}},
        {"metrics": {"serviceMonitor": {"labels": {"release": True}}}},
    ],
    ids=lambda v: next(iter(v)),
)
def test_label_and_annotation_maps_refuse_what_the_api_refuses(values):
    """Labels, annotations and node selectors are maps of strings in the API: a YAML `true` or
    `1` would render and then be refused by the API server at install; the schema refuses first."""
    with pytest.raises(Exception, match="schema"):
        render(values)


def test_string_maps_are_accepted():
    rendered = render(
        {
            "orchestrator": {
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "podAnnotations": {"sidecar.istio.io/inject": "false"},
            },
            "commonLabels": {"team": "payments", "tier": "1"},
        }
    )
    deploy = rendered.get("Deployment", "-orchestrator")
    assert pod_spec(deploy)["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert deploy["metadata"]["labels"]["tier"] == "1"


# ---------------------------------------------------------------- existingSecret
ALWAYS = ["orchestrator-db-url", "wallet-db-url", "amqp-url", "internal-token", "message-key"]
EXTERNAL = {"mariadb": {"enabled": False}, "rabbitmq": {"enabled": False}}


def referenced_keys(rendered: helm_render.Rendered, name: str) -> tuple[set[str], set[str]]:
    """(required, optional) keys of Secret `name` the rendered pods read."""
    required, optional = set(), set()
    for obj in rendered.objects:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(obj)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for env in c.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"] == name:
                    (optional if ref.get("optional") else required).add(ref["key"])
        for vol in spec.get("volumes", []):
            if (vol.get("secret") or {}).get("secretName") == name:
                required.update(item["key"] for item in vol["secret"].get("items", []))
    return required, optional


@pytest.mark.parametrize(
    "mode",
    [{}, EXTERNAL, {"migrate": {"enabled": False}}, {"mariadb": {"enabled": False}}, {"rabbitmq": {"enabled": False}}],
    ids=["in-chart-servers", "external-servers", "no-migrate", "external-db", "external-mq"],
)
def test_existing_secret_missing_keys_fail_naming_each(mode):
    """The chart reads the Secret and names every key it lacks: exactly the keys some pod reads
    without `optional`, plus admin-db-url with the in-chart MariaDB and migrate (only migrate
    creates the role users there)."""
    values = {**mode, "secrets": {"existingSecret": "mine"}}
    with pytest.raises(Exception) as failed:
        render_in_cluster(values, [secret("mine", [])])
    found = re.search(r'secrets.existingSecret "mine" lacks key\(s\): ([^(]+?) \(', str(failed.value))
    assert found, str(failed.value)
    demanded = set(found.group(1).split(", "))

    complete = render_in_cluster(values, [secret("mine", sorted(demanded))])
    required, optional = referenced_keys(complete, "mine")
    in_chart_db = mode.get("mariadb", {}).get("enabled", True)
    with_migrate = mode.get("migrate", {}).get("enabled", True)
    assert demanded == required | ({"admin-db-url"} if in_chart_db and with_migrate else set())
    assert set(ALWAYS) <= demanded
    assert ("rabbitmq-erlang-cookie" in demanded) == mode.get("rabbitmq", {}).get("enabled", True)
    assert "message-key-previous" in optional and "message-key-previous" not in demanded


def test_existing_secret_lacking_some_keys_names_only_those():
    keys = ALWAYS + ["mariadb-init.sql", "rabbitmq-definitions.json"]
    with pytest.raises(
        Exception,
        match=r'secrets.existingSecret "mine" lacks key\(s\): admin-db-url, '
        r"rabbitmq-erlang-cookie \(",
    ):
        render_in_cluster({"secrets": {"existingSecret": "mine"}}, [secret("mine", keys)])


def test_existing_secret_absent_from_a_live_cluster_must_be_created_first():
    with pytest.raises(
        Exception,
        match=r'secrets.existingSecret "mine": no such Secret in namespace "chancepay"; '
        r"create it first, with the keys orchestrator-db-url",
    ):
        render_in_cluster({"secrets": {"existingSecret": "mine"}}, [ROOT_CA])


def test_existing_secret_is_not_checked_when_nothing_can_be_looked_up():
    """`helm template` and Argo CD render without a cluster: lookup finds nothing, and the render
    must still work (the trade-off is written beside chancepay.checkExistingSecret)."""
    rendered = render({"secrets": {"existingSecret": "mine"}})
    assert not rendered.of_kind("Secret")


# ---------------------------------------------------------------- Prometheus Operator objects
@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ({"metrics": {"serviceMonitor": {"enabled": True}}}, "ServiceMonitor"),
        ({"metrics": {"prometheusRule": {"enabled": True}}}, "PrometheusRule"),
    ],
)
def test_monitoring_objects_are_refused_without_their_crd(values, kind):
    with pytest.raises(
        Exception,
        match=rf"cluster does not serve monitoring.coreos.com/v1 {kind} "
        rf"\(a CRD of the Prometheus Operator\)",
    ):
        render(values, monitoring_crds=False)
    assert render(values, monitoring_crds=True).of_kind(kind)


# ---------------------------------------------------------------- Erlang crash dump
def test_erlang_crash_dump_goes_to_a_bounded_writable_volume(default_render):
    spec = pod_spec(default_render.get("StatefulSet", "-rabbitmq"))
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    dump = env["ERL_CRASH_DUMP"]
    mount = max(
        (m for m in container["volumeMounts"] if dump.startswith(m["mountPath"].rstrip("/") + "/")),
        key=lambda m: len(m["mountPath"]),
    )
    assert not mount.get("readOnly")
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    limit = volume["emptyDir"]["sizeLimit"]
    assert limit.endswith("Mi") and int(env["ERL_CRASH_DUMP_BYTES"]) < int(limit[:-2]) * 2**20
    assert 0 < int(env["ERL_CRASH_DUMP_SECONDS"]) < 60


# ---------------------------------------------------------------- NOTES.txt
def pvc_names(rendered: helm_render.Rendered) -> list[str]:
    return [
        f"{vct['metadata']['name']}-{sts['metadata']['name']}-{i}"
        for sts in rendered.of_kind("StatefulSet")
        for vct in sts["spec"].get("volumeClaimTemplates", [])
        for i in range(sts["spec"]["replicas"])
    ]


@pytest.mark.parametrize("values", [{}, {"rabbitmq": {"replicas": 3}}], ids=["default", "three-brokers"])
def test_notes_say_what_uninstall_leaves_and_how_to_purge_it(values):
    rendered = render(values)
    notes = rendered.notes
    assert "post-install hook" not in notes and "ordinary Job" in notes
    pvcs = pvc_names(rendered)
    assert len(pvcs) == 2 + (values.get("rabbitmq", {}).get("replicas", 1) - 1)
    (kept,) = [
        s
        for s in rendered.of_kind("Secret")
        if s["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep"
    ]
    assert "helm uninstall chancepay -n chancepay" in notes
    assert f"kubectl -n chancepay delete secret {kept['metadata']['name']}" in notes
    assert f"kubectl -n chancepay delete pvc {' '.join(pvcs)}" in notes


def test_notes_never_offer_to_delete_a_secret_the_user_owns():
    notes = render({"secrets": {"existingSecret": "mine"}}).notes
    assert "delete secret" not in notes and "mine" in notes
    assert "delete pvc data-chancepay-mariadb-0 data-chancepay-rabbitmq-0" in notes
    external = render({"secrets": {"existingSecret": "mine"}, **EXTERNAL}).notes
    assert "delete pvc" not in external and "delete secret" not in external
