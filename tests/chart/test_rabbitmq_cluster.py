"""A three-node RabbitMQ cluster, as the chart runs it (rabbitmq.replicas=3), under load (issue 10):
the quorum queue's leader node SIGKILLed, then a second node stopped and started again. While a
majority is up payments keep finalizing; nothing is lost or deducted twice.

Run with podman (tests/support/release.py): three broker pods from the rendered StatefulSet, each
with its own address and the stable DNS names of the others (hostAliases), the shared Erlang
cookie from the Secret, classic_config peer discovery; the roles played from their images with
every node's URL, restarted by podman when they exit on losing their broker (the seed design).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import pymysql

from tests.support.env import wait_until
from tests.support.payer import Payer
from tests.support.podman import podman
from tests.support.release import ROLES, PlayedRelease


def _rabbitmqctl(pod, *args: str) -> str:
    out = pod.exec("rabbitmqctl", "-q", *args, timeout=60)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return out.stdout.decode()


def _sql(release: PlayedRelease, query: str) -> list[tuple]:
    admin = urlsplit(release.secret["admin-db-url"])
    with (
        pymysql.connect(
            host=release.hosts[admin.hostname],
            port=admin.port,
            user=admin.username,
            password=admin.password,
            autocommit=True,
            ssl_disabled=True,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(query)
        return list(cur.fetchall())


def _final_count(release: PlayedRelease, uuids: list[str]) -> int:
    if not uuids:
        return 0
    quoted = ",".join(f"'{u}'" for u in uuids)
    return _sql(
        release, f"SELECT COUNT(*) FROM chancepay_orchestrator.request WHERE succeed IS NOT NULL AND uuid IN ({quoted})"
    )[0][0]


def test_three_node_broker_loses_its_leader_then_a_second_node(images) -> None:
    root = Path(tempfile.mkdtemp(prefix="chancepay-cluster-", dir="/var/tmp"))
    release = PlayedRelease(root, f"cpp-{os.getpid()}-{os.urandom(2).hex()}", {"rabbitmq": {"replicas": 3}})
    figures: dict[str, float] = {}
    try:
        release.create_secret()
        release.start_servers()
        release.play_deployments()
        migrate = release.play_job("Job")
        release.wait_servers()
        nodes = [release.servers["rabbitmq"], release.servers["rabbitmq-1"], release.servers["rabbitmq-2"]]
        names = {pod.k8s_name: pod for pod in nodes}
        wait_until(
            lambda: (
                _rabbitmqctl(nodes[0], "cluster_status", "--formatter", "json").count("rabbit@") >= 3
                and len(json.loads(_rabbitmqctl(nodes[0], "cluster_status", "--formatter", "json"))["running_nodes"])
                == 3
            ),
            120,
            interval=1,
            what="three running nodes in one cluster",
        )
        code, log = release.wait_completed(migrate, timeout=300)
        assert code == 0, log[-3000:]
        for role in ROLES:
            for pod in release.role_pods(role):
                release.wait_ready(pod)

        def members() -> list[str]:
            rows = json.loads(
                _rabbitmqctl(nodes[0], "list_queues", "-p", "/", "name", "leader", "members", "--formatter", "json")
            )
            return next((r["members"] for r in rows if r["name"] == "chancepay.payments"), [])

        wait_until(lambda: len(members()) == 3, 120, interval=1, what="the quorum queue on all three nodes")

        def leader() -> str:
            rows = json.loads(
                _rabbitmqctl(
                    nodes[0] if nodes[0].running() else nodes[1],
                    "list_queues",
                    "-p",
                    "/",
                    "name",
                    "leader",
                    "--formatter",
                    "json",
                )
            )
            return next(r["leader"] for r in rows if r["name"] == "chancepay.payments")

        orch = release.url(release.role_pods("orchestrator")[0], 8000)
        key = release.secret["api-key"]
        with Payer(None, rate=5, prefix="cluster", url=orch, api_key=key) as payer:  # type: ignore[arg-type]
            wait_until(lambda: _final_count(release, payer.accepted) >= 10, 60, what="payments flowing")

            # 1. SIGKILL the node that leads the quorum queue.
            lead_host = leader().split("@", 1)[1].split(".")[0]
            victim = names[lead_host]
            survivors = [p for p in nodes if p is not victim]
            killed_at = time.monotonic()
            podman("kill", "-s", "KILL", victim.container_name("rabbitmq"))
            after_kill = len(payer.accepted)
            wait_until(
                lambda: _final_count(release, payer.accepted[after_kill : after_kill + 10]) >= 10,
                120,
                interval=0.5,
                what="payments finalizing with two of three nodes",
            )
            figures["seconds_to_finalize_10_after_leader_kill"] = round(time.monotonic() - killed_at, 1)
            new_leader = leader().split("@", 1)[1].split(".")[0]
            assert new_leader != lead_host

            # 2. Stop a second node (no majority: the queue pauses, the API keeps accepting), start it again.
            second = survivors[0] if survivors[0].k8s_name != new_leader else survivors[1]
            second.stop()
            minority_at = time.monotonic()
            wait_until(lambda: time.monotonic() - minority_at >= 10, 15, interval=0.5, what="10 s in minority")
            accepted_in_minority = len(payer.accepted)
            second.start()
            second.wait_ready()
            wait_until(
                lambda: _final_count(release, payer.accepted[:accepted_in_minority]) == accepted_in_minority,
                180,
                interval=0.5,
                what="the backlog of the minority window finalized",
            )
            figures["seconds_to_drain_after_majority_back"] = round(time.monotonic() - minority_at - 10, 1)

            # 3. The killed node comes back and rejoins.
            victim.restart()
            victim.wait_ready()
            wait_until(lambda: len(members()) == 3, 120, interval=1, what="three members again")
            wait_until(lambda: len(payer.accepted) >= accepted_in_minority + 20, 60, what="more payments")
        accepted = payer.accepted
        assert all(r["status"] == 202 for r in payer.snapshot()), [r for r in payer.snapshot() if r["status"] != 202][
            :3
        ]
        wait_until(
            lambda: _final_count(release, accepted) == len(accepted),
            180,
            interval=0.5,
            what="every accepted payment final",
        )
        # Nothing lost, nothing deducted twice: one inbox row per request, same result.
        requests = dict(_sql(release, "SELECT uuid, succeed FROM chancepay_orchestrator.request"))
        inbox = dict(_sql(release, "SELECT uuid, succeed FROM chancepay_wallet.inbox"))
        assert set(accepted) <= set(requests) and set(requests) == set(inbox)
        assert all(requests[u] == inbox[u] for u in requests)
        assert _sql(release, "SELECT COUNT(*) FROM chancepay_orchestrator.outbox")[0][0] == 0
        restarts = {p: release.state(p)["RestartCount"] for r in ROLES for p in release.role_pods(r)}
        assert all(n == 0 for p, n in restarts.items() if "orchestrator" in p), restarts
        figures["payments"] = len(accepted)
        figures.update({f"restarts_{p.split('-', 3)[-1]}": n for p, n in restarts.items()})
        print("\nrabbitmq cluster: " + json.dumps(figures), file=sys.stderr)
    finally:
        release.destroy()
        shutil.rmtree(root, ignore_errors=True)
