"""The chart against the code: env vars, ports, probe paths, commands."""

from __future__ import annotations

import pytest

from chancepay.core.config import ROLE_PORTS, VARIABLES
from tests.deploy import codeinfo
from tests.deploy.conftest import SWITCHES, pod_spec, render

ROLES = ("orchestrator", "scanner", "wallet", "auditor")
EXPECTED_CONTRACT_COMMANDS = {"orchestrator", "scanner", "wallet", "auditor", "migrate", "reconcile", "load"}


def chancepay_containers(rendered):
    """(role, container) for every container that runs `chancepay <role>`."""
    out = []
    for obj in rendered.objects:
        if obj["kind"] not in ("Deployment", "Job", "CronJob"):
            continue
        for c in pod_spec(obj)["containers"]:
            cmd = c.get("command") or []
            if cmd[:1] == ["chancepay"]:
                out.append((cmd[1], c))
    return out


def env_names(container):
    names = [e["name"] for e in container.get("env", [])]
    assert len(names) == len(set(names)), f"duplicate env vars in {container['name']}: {names}"
    return set(names)


@pytest.mark.parametrize(
    "values",
    [{}, SWITCHES["mariadb.enabled=false"], SWITCHES["secrets.existingSecret=set"]],
    ids=["default", "external-database", "existing-secret"],
)
def test_every_role_runs_with_what_it_needs_and_nothing_else(values):
    rendered = render(values)
    env_field = codeinfo.env_to_field()
    containers = chancepay_containers(rendered)
    assert sorted(role for role, _ in containers) == [
        "auditor",
        "migrate",
        "orchestrator",
        "reconcile",
        "scanner",
        "wallet",
    ]
    for role, c in containers:
        names = env_names(c)
        unknown = names - set(env_field)
        assert not unknown, f"{role} sets variables the code never reads: {unknown}"
        read = codeinfo.fields_read(role)
        unused = {n for n in names if env_field[n] not in read}
        assert not unused, f"{role} sets {unused}, which its code does not read"
        missing = {v.env for v in VARIABLES if v.field in read & codeinfo.MUST_SET_IN_CLUSTER} - names
        assert not missing, f"{role} reads {missing} but the chart leaves them at their local defaults"
        env = {e["name"]: e for e in c["env"]}
        assert env["CHANCEPAY_ENV"]["value"] == "prod"  # so the public dev token is refused
        assert "CHANCEPAY_CRASH_POINTS" not in names
        # The admin credentials reach migrate only (least privilege for the long-running roles).
        assert ("CHANCEPAY_ADMIN_DB" in names) == (role == "migrate"), role
        for name in (
            "CHANCEPAY_ORCHESTRATOR_DB",
            "CHANCEPAY_WALLET_DB",
            "CHANCEPAY_AMQP_URL",
            "CHANCEPAY_INTERNAL_TOKEN",
            "CHANCEPAY_ADMIN_DB",
        ):
            if name in env:
                assert "secretKeyRef" in env[name]["valueFrom"], f"{role}: {name} must come from the Secret"


def test_the_code_analysis_can_fail():
    """Sanity of the static analysis: it sees what each role really reads."""
    assert "amqp_url" in codeinfo.fields_read("scanner") and "amqp_url" in codeinfo.fields_read("wallet")
    assert "amqp_url" not in codeinfo.fields_read("orchestrator")
    assert {"wallet_url", "orchestrator_url", "internal_token"} <= codeinfo.fields_read("reconcile")
    assert "wallet_db" in codeinfo.fields_read("migrate") and "orchestrator_db" in codeinfo.fields_read("migrate")


def test_internal_urls_point_at_the_services():
    rendered = render()
    services = {o["metadata"]["name"]: o for o in rendered.of_kind("Service")}
    for role, c in chancepay_containers(rendered):
        env = {e["name"]: e.get("value") for e in c["env"]}
        for var, target in (("CHANCEPAY_ORCHESTRATOR_URL", "orchestrator"), ("CHANCEPAY_WALLET_URL", "wallet")):
            if var in env:
                svc = services[f"chancepay-{target}"]
                assert env[var] == f"http://chancepay-{target}:{svc['spec']['ports'][0]['port']}", (role, var)


def test_secret_urls_match_the_in_chart_backends():
    s = render().get("Secret", "chancepay-secrets")["stringData"]
    assert s["orchestrator-db-url"] == (
        f"mysql://chancepay_orchestrator:{s['orchestrator-db-password']}@chancepay-mariadb:3306/chancepay_orchestrator"
    )
    assert (
        s["wallet-db-url"]
        == f"mysql://chancepay_wallet:{s['wallet-db-password']}@chancepay-mariadb:3306/chancepay_wallet"
    )
    assert s["amqp-url"] == f"amqp://chancepay:{s['rabbitmq-password']}@chancepay-rabbitmq:5672/%2F"
    from chancepay.core.config import DatabaseURL, Settings

    settings = Settings.from_env(
        {
            "CHANCEPAY_ENV": "prod",
            "CHANCEPAY_ORCHESTRATOR_DB": s["orchestrator-db-url"],
            "CHANCEPAY_WALLET_DB": s["wallet-db-url"],
            "CHANCEPAY_AMQP_URL": s["amqp-url"],
            "CHANCEPAY_INTERNAL_TOKEN": s["internal-token"],
        }
    )
    settings.require_safe_token()
    assert DatabaseURL.parse(s["wallet-db-url"]).database == "chancepay_wallet"


@pytest.mark.parametrize("role", ROLES)
def test_ports_and_probes_match_what_the_role_serves(role):
    rendered = render()
    deployment = rendered.get("Deployment", f"chancepay-{role}")
    service = rendered.get("Service", f"chancepay-{role}")
    c = pod_spec(deployment)["containers"][0]
    assert c["command"] == ["chancepay", role]
    port = c["ports"][0]
    assert port["name"] == "http" and port["containerPort"] == ROLE_PORTS[role]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["CHANCEPAY_PORT"] == str(ROLE_PORTS[role])
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    served = codeinfo.routes(role)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
        assert path in served, f"{role} does not serve {path}: {sorted(served)}"
    assert "/metrics" in served
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (
        annotations["prometheus.io/port"] == str(ROLE_PORTS[role]) and annotations["prometheus.io/path"] == "/metrics"
    )


def test_ingress_routes_only_public_orchestrator_paths():
    ingress = render(SWITCHES["ingress.enabled=true"]).get("Ingress", "chancepay-orchestrator")
    paths = [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]]
    assert paths == ["/payments", "/openapi.json"]
    served = codeinfo.routes("orchestrator")
    assert "/payments" in served and "/openapi.json" in served
    assert not any(p.startswith("/internal") for p in paths)


def test_chart_commands_are_real_subcommands():
    commands = codeinfo.cli_subcommands()
    assert EXPECTED_CONTRACT_COMMANDS <= commands, commands
    rendered = render()
    used = {role for role, _ in chancepay_containers(rendered)}
    assert used <= commands


def test_network_policies_restrict_internal_and_broker_access():
    rendered = render()
    policies = {o["metadata"]["name"]: o for o in rendered.of_kind("NetworkPolicy")}

    def components(policy):
        peers = [p for rule in policy["spec"].get("ingress", []) for p in rule.get("from", [])]
        return {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers if "podSelector" in p}

    assert components(policies["chancepay-rabbitmq"]) == {"scanner", "wallet"}
    assert components(policies["chancepay-wallet"]) == {"reconcile"}
    assert components(policies["chancepay-orchestrator"]) == {"wallet", "reconcile", "test"}
    assert components(policies["chancepay-scanner"]) == {"orchestrator"}  # its nudge
    database_clients = {"orchestrator", "scanner", "wallet", "auditor", "migrate", "reconcile"}
    assert components(policies["chancepay-mariadb"]) == database_clients
    assert components(policies["chancepay-auditor"]) == set()  # health and metrics only: scrapers
    # the batch pods (migrate, reconcile, helm test) accept no ingress at all
    batch = policies.pop("chancepay-batch")
    assert batch["spec"]["ingress"] == [] and batch["spec"]["policyTypes"] == ["Ingress"]
    assert batch["spec"]["podSelector"]["matchExpressions"][0]["values"] == ["migrate", "reconcile", "test"]
    # every policy selects pods that exist, by their real labels
    pods = {
        o["metadata"]["name"]: pod_spec and o for o in rendered.objects if o["kind"] in ("Deployment", "StatefulSet")
    }
    for name, policy in policies.items():
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector == pods[name]["spec"]["selector"]["matchLabels"], name
    # the pods the peers name carry those labels
    labels = [
        pod_spec and o["spec"]["template"]["metadata"]["labels"]
        for o in rendered.objects
        if o["kind"] in ("Deployment", "StatefulSet")
    ]
    labels.append(
        rendered.get("CronJob", "chancepay-reconcile")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    )
    labels += [h["object"]["metadata"]["labels"] for h in rendered.hooks if h["object"]["kind"] == "Pod"]
    labels += [o["spec"]["template"]["metadata"]["labels"] for o in rendered.of_kind("Job")]
    seen = {lab["app.kubernetes.io/component"] for lab in labels}
    assert database_clients | {"test", "mariadb", "rabbitmq"} <= seen
