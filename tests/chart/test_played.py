"""The rendered chart played with podman: the three images built from the repository's Dockerfiles
and run as the chart runs them (uid 10001, read-only root, /tmp the only writable mount, no
capabilities), the Deployments, Jobs and the helm test pod through `podman kube play`, the
StatefulSets through tests/support/pods.py, each pod with an address of its own on podman's bridge
network. See tests/support/release.py for what is converted and why."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.env import wait_until
from tests.support.release import ROLES, PlayedRelease


@pytest.fixture
def releases() -> Iterator[Any]:
    made: list[PlayedRelease] = []
    root = Path(tempfile.mkdtemp(prefix="chancepay-played-", dir="/var/tmp"))

    def factory(values: dict[str, Any] | None = None, **kw: Any) -> PlayedRelease:
        r = PlayedRelease(root / str(len(made)), f"cpp-{os.getpid()}-{os.urandom(2).hex()}", values, **kw)
        made.append(r)
        return r

    yield factory
    for r in made:
        r.destroy()
    shutil.rmtree(root, ignore_errors=True)


def publish_corrupt(release: PlayedRelease) -> None:
    """Inject a fault a wallet must tag: a body that is not a payment, straight onto the queue."""
    import aiormq

    async def go() -> None:
        connection = await aiormq.connect(release.service_url("amqp-url"))
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.basic_publish(b'{"not": "a payment"}', exchange="chancepay", routing_key="payment.requested")
        finally:
            await connection.close()

    asyncio.run(go())


def install_and_check(release: PlayedRelease, images: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Helm's install order (every release object at once), then the helm test pod, then the
    reconcile CronJob's job once; the assertions the chart promises. Returns measurements."""
    release.create_secret()
    release.start_servers()
    release.play_deployments()
    migrate = release.play_job("Job")
    role_pods = {role: release.role_pods(role) for role in ROLES}
    # Start-up time of each image: from `kube play` to its first passing startupProbe (/healthz).
    alive = {pod: release.seconds_to_alive(pod) for pods in role_pods.values() for pod in pods}
    release.wait_servers()
    code, log = release.wait_completed(migrate, timeout=300)
    assert code == 0, log[-4000:]
    assert "schema up to date" in log

    ready = {pod: release.wait_ready(pod) for pods in role_pods.values() for pod in pods}
    # The online auditor (on by default) runs the orchestrator's image as a Deployment of its own:
    # Ready too, and held to the same no-restart, no-failure-line checks below.
    ready.update({pod: release.wait_ready(pod) for pod in release.role_pods("auditor")})
    for pod in ready:
        st = release.state(pod)
        assert st["Status"] == "running" and st["RestartCount"] == 0, (pod, st, release.logs(pod)[-2000:])

    # A payment through every orchestrator replica finalizes.
    uuids = []
    auth = {"Authorization": f"Bearer {release.secret['api-key']}"}  # CHANCEPAY_ENV=prod: the API requires a key
    for pod in role_pods["orchestrator"]:
        r = httpx.post(
            release.url(pod, 8000) + "/payments",
            json={"cusId": f"played-{pod}", "amount": "3.00"},
            headers=auth,
            timeout=10,
        )
        assert r.status_code == 202, r.text
        uuids.append(r.json()["uuid"])
    orch = release.url(role_pods["orchestrator"][0], 8000)
    wait_until(
        lambda: all(
            httpx.get(f"{orch}/payments/{u}", headers=auth, timeout=5).json()["status"] != "PENDING" for u in uuids
        ),
        60,
        interval=0.5,
        what="played payments finalized",
    )

    test_pod = release.play_job("test")
    code, log = release.wait_completed(test_pod, timeout=180)
    assert code == 0 and "finalized" in log, log[-3000:]
    reconcile = release.play_job("CronJob")
    code, log = release.wait_completed(reconcile, timeout=120)
    assert code == 0, log[-3000:]

    # A fault injected, found by grepping the pods' logs for the tag, as an operator would.
    publish_corrupt(release)
    wallets = role_pods["wallet"]
    wait_until(
        lambda: any("[PAYLOAD_CORRUPTION_ALERT]" in release.logs(p) for p in wallets),
        30,
        what="the corruption alert in `podman logs` of a wallet",
    )
    # Every other failure line is the start-up order at work, and says so ("waiting":true), exactly
    # what the README's recipe and the kind workflow leave out.
    tagged = [
        line
        for p in ready
        for line in release.logs(p).splitlines()
        if "[FAILED TO" in line and '"waiting":true' not in line
    ]
    assert not tagged, tagged[:5]
    for pod in ready:  # no restart happened on the way
        assert release.state(pod)["RestartCount"] == 0, pod
    return {
        "ready_seconds_after_migrate": {p: round(s, 1) for p, s in ready.items()},
        "start_seconds": {p: round(s, 2) for p, s in alive.items()},
    }


def test_default_install_played(releases, images) -> None:
    release = releases()
    measured = install_and_check(release, images)
    print("\nplayed default install: " + json.dumps(measured), file=sys.stderr)
    # The image runs as the chart says: uid 10001, read-only root.
    pod = release.role_pods("orchestrator")[0]
    out = release.logs(pod)
    assert '"role":"orchestrator"' in out


def test_two_replicas_of_every_role_played(releases, images) -> None:
    release = releases({"orchestrator": {"replicas": 2}, "scanner": {"replicas": 2}, "wallet": {"replicas": 2}})
    install_and_check(release, images)
    # Both scanners and both wallets took part, nothing was deducted twice.
    audit = release.play_job("CronJob")  # reconcile again: nothing left to repair
    code, log = release.wait_completed(audit, timeout=120)
    assert code == 0, log


def test_external_database_and_broker_with_an_existing_secret_played(releases, images) -> None:
    """mariadb.enabled=false, rabbitmq.enabled=false and secrets.existingSecret: the release runs
    against servers it does not manage (here: the chart's own StatefulSets from another release)
    with a Secret it did not create."""
    backing = releases()
    backing.start_servers()
    backing.wait_servers()
    db_ip, mq_ip = backing.ips[f"{backing.name}-mariadb-0"], backing.ips[f"{backing.name}-rabbitmq-0"]
    hosts = {"db.external.test": db_ip, "mq.external.test": mq_ip}

    def external(url: str) -> str:
        return url.replace(f"@{backing.name}-mariadb:", "@db.external.test:").replace(
            f"@{backing.name}-rabbitmq:", "@mq.external.test:"
        )

    secret = {
        k: external(backing.secret[k])
        for k in (
            "orchestrator-db-url",
            "wallet-db-url",
            "admin-db-url",
            "amqp-url",
            "internal-token",
            "message-key",
            "api-key",
        )
    }
    release = releases(
        {
            "mariadb": {"enabled": False},
            "rabbitmq": {"enabled": False},
            "secrets": {"existingSecret": f"cpp-{os.getpid()}-{os.urandom(2).hex()}-ext"},
        },
        secret=secret,
        extra_hosts=hosts,
    )
    assert not release.rendered.of_kind("StatefulSet") and not release.rendered.of_kind("Secret")
    release.hosts.update(hosts)
    install_and_check(release, images)
