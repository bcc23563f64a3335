"""The played chart through a release's life, not just its install: install → payments at 20/s →
`helm upgrade` to a new image tag and a changed value while the payments flow → `helm rollback`
to the installed revision while they flow, onto a schema a newer release expanded → `helm
uninstall` → `helm install` again, reusing the Secret and the volumes the uninstall kept → more
payments.

Every revision is what Helm's own action (Install, Upgrade, Uninstall, Install again; the rollback
as deploy/helm_render.py's Cluster.rollback applies it with Helm's Upgrade) did against
one strict fake API server that lives as long as the release (deploy/helm_render.py's Cluster:
`lookup` finds the live Secret, the upgrade guards see the live objects, the uninstall leaves what
`helm.sh/resource-policy: keep` keeps); each revision is played as tests/support/release.py plays
an install (podman). The upgrade's new migrate Job (a new name: a Job's template cannot change)
runs first, then each Deployment is rolled in the chart's order, one pod at a time as its strategy
says (maxSurge 1, maxUnavailable 0: new pod Ready, the Service moved to it, the old pod's preStop
then SIGTERM, exit 0 within its grace period). The payments go through the orchestrator's Service
(`PlayedRelease.endpoint`: round robin over the pods in its endpoints).

What a client may see during the swap, decided here: nothing is expected to fail, but a request
that fails in transport or is answered 502/503/504 may be retried by the client with the same
Idempotency-Key (tests/support/payer.py, `retry_for`, as any client of the API should); such a
payment is counted in the figures (errors during the upgrade) and must still end accepted exactly
once (one request row and one wallet row per key, one uuid per key). Any other answer, or a
payment never accepted, fails the test.

Figures (payments sent, accepted, finalized, errors during the upgrade, each phase's duration) are
printed and written to lifecycle.json in the test's tmp_path; the README quotes them.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pymysql
import pytest
import yaml

from chancepay.core.config import DatabaseURL
from tests.chart.test_played import releases  # noqa: F401  (the fixture: played releases, removed after)
from tests.support import chart
from tests.support.chart import helm_render
from tests.support.env import wait_until
from tests.support.invariants import check_urls
from tests.support.payer import Payer
from tests.support.podman import podman
from tests.support.release import NAMESPACE, ROLES, PlayedRelease

# The chart's Deployments: the three roles with images of their own, and the online auditor (on by
# default), which runs the orchestrator's image and so rolls with it.
DEPLOYMENTS = (*ROLES, "auditor")

RATE = 20.0
BEFORE_UPGRADE = 100  # payments accepted before the upgrade starts
AFTER_REINSTALL = 100  # payments sent after the reinstall


@pytest.fixture
def upgrade_tag(images: dict[str, dict[str, Any]]) -> Iterator[str]:
    """The role images under a second tag (a new image for the chart: its pod templates change);
    the tag is removed afterwards (tests/support/cleanup.py sweeps it if this run is killed)."""
    version = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())["appVersion"]
    tag = f"{version}-cpp-{os.getpid()}-upgrade"
    refs = [f"{info['ref'].rsplit(':', 1)[0]}:{tag}" for info in images.values()]
    for info, ref in zip(images.values(), refs, strict=True):
        podman("tag", info["ref"], ref)
    yield tag
    for ref in refs:
        podman("untag", ref, ref, check=False)


# --------------------------------------------------------------------------- observing the data
def _db(release: PlayedRelease, key: str) -> str:
    """A database URL of the release's Secret, its Service host replaced by the pod's address."""
    return release.service_url(key)


def _query(release: PlayedRelease, key: str, statement: str) -> list[tuple[Any, ...]]:
    url = DatabaseURL.parse(_db(release, key))
    with (
        pymysql.connect(
            host=url.host,
            port=url.port,
            user=url.user,
            password=url.password,
            database=url.database,
            connect_timeout=10,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(statement)
        rows = list(cur.fetchall())
        conn.commit()
        return rows


def _auth(release: PlayedRelease) -> dict[str, str]:
    """The chart's first API client's key (CHANCEPAY_ENV=prod: the API requires one)."""
    return {"Authorization": f"Bearer {release.secret['api-key']}"}


def _scalar(release: PlayedRelease, key: str, statement: str) -> int:
    return int(_query(release, key, statement)[0][0])


def _converged(release: PlayedRelease) -> bool:
    return (
        _scalar(release, "orchestrator-db-url", "SELECT COUNT(*) FROM outbox") == 0
        and _scalar(release, "orchestrator-db-url", "SELECT COUNT(*) FROM request WHERE succeed IS NULL") == 0
    )


def _audit(release: PlayedRelease) -> dict[str, Any]:
    """`chancepay audit` (the operator's check of a live system) against the release's databases."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("CHANCEPAY_")}
    env.update(
        {
            "CHANCEPAY_ORCHESTRATOR_DB": _db(release, "orchestrator-db-url"),
            "CHANCEPAY_WALLET_DB": _db(release, "wallet-db-url"),
        }
    )
    result = subprocess.run(
        [sys.executable, "-m", "chancepay", "audit"], env=env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and lines, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(lines[-1])
    assert report["ok"], report
    return report


def _check_payments(release: PlayedRelease, outcomes: list[dict[str, Any]], prefixes: list[str]) -> dict[str, Any]:
    """Every payment sent was accepted exactly once and finalized; no deduction twice; the
    invariants (chancepay.audit's checker over every row) and `chancepay audit` clean."""
    wait_until(lambda: _converged(release), 120, interval=0.5, what="every accepted payment finalized")
    accepted = [o for o in outcomes if o.get("status") == 202]
    refused = [o for o in outcomes if o.get("status") != 202]
    assert not refused, f"{len(refused)} payments never accepted: {refused[:5]}"
    uuids = [o["uuid"] for o in accepted]
    assert len(set(uuids)) == len(uuids), "two payments were given one uuid"
    like = " OR ".join(f"cus_id LIKE '{p}-%'" for p in prefixes)
    # One request row per Idempotency-Key (= per cusId here), and one wallet row per payment.
    requests = _query(
        release,
        "orchestrator-db-url",
        f"SELECT cus_id, COUNT(*), SUM(succeed IS NOT NULL) FROM request WHERE {like} GROUP BY cus_id",
    )
    assert len(requests) == len(outcomes), (len(requests), len(outcomes))
    assert all(n == 1 and done == 1 for _, n, done in requests), [r for r in requests if r[1] != 1 or r[2] != 1][:5]
    inbox = _query(release, "wallet-db-url", f"SELECT cus_id, COUNT(*) FROM inbox WHERE {like} GROUP BY cus_id")
    twice = [row for row in inbox if row[1] != 1]
    assert not twice, f"deducted more than once: {twice[:5]}"
    assert len(inbox) == len(outcomes), (len(inbox), len(outcomes))
    report = check_urls(_db(release, "orchestrator-db-url"), _db(release, "wallet-db-url"), uuids)
    assert report.violations == 0 and not report.awaiting_mirror, report.as_json()
    audit = _audit(release)
    redelivered = _scalar(release, "wallet-db-url", f"SELECT COUNT(*) FROM inbox WHERE ({like}) AND deliveries > 1")
    return {
        "sent": len(outcomes),
        "accepted": len(accepted),
        "finalized": sum(int(r[2]) for r in requests),
        "retried": sum(1 for o in outcomes if o.get("attempts", 1) > 1),
        "redelivered": redelivered,
        "audit_checked": audit["checked"],
    }


# --------------------------------------------------------------------------- the phases
def _install(release: PlayedRelease) -> None:
    """Helm's install order, as tests/chart/test_played.py plays it: everything at once, the roles
    Ready once migrate is done."""
    release.start_servers()
    release.play_deployments()
    migrate = release.play_job("Job")
    release.wait_servers()
    code, log = release.wait_completed(migrate, timeout=300)
    assert code == 0, log[-4000:]
    for role in DEPLOYMENTS:
        for pod in release.role_pods(role):
            release.wait_ready(pod)


def _failures_since(lines: list[str], since: float) -> list[str]:
    """The `[FAILED TO ...]` lines logged at or after `since` (epoch seconds; the roles log JSON
    with an ISO-8601 UTC timestamp)."""
    from datetime import datetime

    out = []
    for line in lines:
        if "[FAILED TO" not in line:
            continue
        try:
            stamp = datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            stamp = since  # not a JSON line with a timestamp: count it
        if stamp >= since:
            out.append(line)
    return out


def _rollback(
    release: PlayedRelease, upgrade_tag: str, new_job: str, old_job: str, figures: dict[str, Any]
) -> list[dict[str, Any]]:
    """`helm rollback` to the installed revision while payments flow: the installed revision's
    migrate Job (its old name) created and run again, then every Deployment rolled back to the
    installed images and values. The upgrade's images are this code under a new tag, so what a
    newer release's migrate would have left is recorded first: a schema version above this code's,
    an expansion (oldest_code 0). The rolled-back migrate must find nothing to do and exit 0, and
    the rolled-back roles must be Ready on that newer schema. Returns the payments' outcomes."""
    seconds = figures["seconds"]
    for key in ("orchestrator-db-url", "wallet-db-url"):
        _query(
            release,
            key,
            "INSERT INTO schema_version (version, description) "
            "SELECT MAX(version) + 1, 'an expansion of the upgraded release' FROM schema_version",
        )
    payer = Payer(
        None,
        rate=RATE,
        timeout=30,
        prefix=f"lc{os.getpid()}-r",
        url=release.endpoint,
        retry_for=15,
        api_key=release.secret["api-key"],
    )
    with payer:
        wait_until(lambda: len(payer.accepted) >= 20, 60, interval=0.2, what="payments before the rollback")
        started, wall = time.monotonic(), time.time()
        changed = release.rollback()
        assert sorted(changed["deployments"]) == sorted(DEPLOYMENTS), changed
        assert changed["job"] == (new_job, old_job), f"the installed revision's migrate Job: {changed}"
        t = time.monotonic()
        migrate = release.play_job("Job")
        code, log = release.wait_completed(migrate, timeout=180)
        assert code == 0, log[-4000:]
        assert "schema newer than this code" in log and "migration applied" not in log, log[-4000:]
        seconds["rollback_migrate"] = round(time.monotonic() - t, 1)
        release.remove(f"{new_job}-run")
        rolled = _roll_every_deployment(release, figures, "rollback")
        ended = time.monotonic()
        seconds["rollback"] = round(ended - started, 1)
        n = len(payer.snapshot())
        wait_until(lambda: len(payer.snapshot()) >= n + 40, 30, interval=0.2, what="payments after the rollback")
    outcomes = payer.snapshot()
    _assert_swapped(release, rolled, tag=upgrade_tag.split("-cpp-")[0], log_level="INFO", since=wall)
    figures["rollback"] = _swap_figures(outcomes, started, ended, rolled)
    return outcomes


def _roll_every_deployment(release: PlayedRelease, figures: dict[str, Any], phase: str) -> dict[str, Any]:
    """Each Deployment rolled in the chart's (and Helm's) order; {role: its pods' records}, also in
    figures["rolled_so_far"] while it goes (printed even if a later step fails or times out)."""
    rolled: dict[str, list[dict[str, Any]]] = {}
    figures["rolled_so_far"] = rolled
    for dep in release.rendered.of_kind("Deployment"):
        role = dep["metadata"]["name"].removeprefix(f"{release.name}-")
        t = time.monotonic()
        rolled[role] = release.roll(role)
        figures["seconds"][f"{phase}_roll_{role}"] = round(time.monotonic() - t, 1)
    del figures["rolled_so_far"]  # the whole record follows, in figures[phase]["pods"]
    return rolled


def _assert_swapped(release: PlayedRelease, rolled: dict[str, Any], *, tag: str, log_level: str, since: float) -> None:
    """Every old pod drained and exited on its own (0) within its grace period; the new pods run
    `tag` with `log_level`, never restarted; with the servers up all along, no pod, old or new,
    logged a failure from `since` on."""
    for role, records in rolled.items():
        for r in records:
            assert r["exit_code"] == 0, (role, r)
            assert not _failures_since(r.get("failed_lines", []), since), (role, r)
        for pod in release.role_pods(role):
            image = podman("inspect", "--format", "{{.ImageName}}", release.container(pod)).stdout.decode().strip()
            assert image.endswith(f":{tag}"), (pod, image)
            assert _env_of(release, pod)["CHANCEPAY_LOG_LEVEL"] == log_level, pod
            assert release.state(pod)["RestartCount"] == 0, pod
            failed = _failures_since(release.logs(pod).splitlines(), since)
            assert not failed, (pod, failed[:5])


def _swap_figures(
    outcomes: list[dict[str, Any]], started: float, ended: float, rolled: dict[str, Any]
) -> dict[str, Any]:
    """What the clients saw while the pods were swapped (between `started` and `ended`)."""
    during = [o for o in outcomes if started <= o["started"] <= ended]
    return {
        "payments_sent_during": len(during),
        "errors_during": sum(1 for o in during if o.get("first_failure") is not None or o.get("status") != 202),
        "first_failures": sorted({str(o["first_failure"]) for o in during if o.get("first_failure") is not None}),
        "max_latency_seconds": round(max(o["elapsed"] for o in during), 2),
        "pods": rolled,
    }


def _env_of(release: PlayedRelease, pod: str) -> dict[str, str]:
    out = podman("inspect", "--format", "{{json .Config.Env}}", release.container(pod))
    return dict(e.split("=", 1) for e in json.loads(out.stdout))


# Every phase waits with a deadline of its own (migrate, each pod's startup budget, its grace period,
# the payments); this is the backstop over all of them. Alone on 2 cores the test takes ~150 s
# after its fixtures (~3 min more for the first test of a pass, which starts the servers); beside
# pass 1's load, one CI run saw pod replacements ten times slower (a roll of 2 orchestrator pods
# 146 s against 14 s alone) and the suite-wide 300 s cut it off mid-upgrade.
@pytest.mark.timeout(900)
def test_install_upgrade_under_load_uninstall_reinstall(releases, upgrade_tag, tmp_path) -> None:  # noqa: F811
    figures: dict[str, Any] = {"rate_per_second": RATE, "seconds": {}}
    try:
        with helm_render.Cluster(namespace=NAMESPACE) as helm:
            _lifecycle(releases(helm=helm), upgrade_tag, figures)
    finally:
        out = tmp_path / "lifecycle.json"
        out.write_text(json.dumps(figures, indent=2))
        print(f"\nplayed lifecycle ({out}): " + json.dumps(figures), file=sys.stderr)


def _lifecycle(release: PlayedRelease, upgrade_tag: str, figures: dict[str, Any]) -> None:
    seconds = figures["seconds"]
    pid = os.getpid()

    # ---------------------------------------------------------------- install
    t = time.monotonic()
    release.create_secret()
    _install(release)
    seconds["install"] = round(time.monotonic() - t, 1)

    # ---------------------------------------------------------------- payments, then the upgrade under them
    payer = Payer(
        None,
        rate=RATE,
        timeout=30,
        prefix=f"lc{pid}-a",
        url=release.endpoint,
        retry_for=15,
        api_key=release.secret["api-key"],
    )
    with payer:
        wait_until(
            lambda: len(payer.accepted) >= BEFORE_UPGRADE,
            60,
            interval=0.2,
            what=f"{BEFORE_UPGRADE} payments accepted before the upgrade",
        )
        upgrade_started, upgrade_wall = time.monotonic(), time.time()
        values = {
            **release.values,
            "config": {"logLevel": "DEBUG"},
            "image": {role: {"tag": upgrade_tag} for role in ROLES},
        }
        values.pop("fullnameOverride")
        changed = release.upgrade(values)
        # The new tag and the log level change every role's pod template and the migrate Job
        # (a new name); the servers' pods are not touched by a role upgrade.
        assert sorted(changed["deployments"]) == sorted(DEPLOYMENTS), changed
        assert changed["statefulsets"] == [], changed
        old_job, new_job = changed["job"]
        assert old_job != new_job, f"the migrate Job kept its name {old_job}: its template cannot change in place"
        t = time.monotonic()
        migrate = release.play_job("Job")
        code, log = release.wait_completed(migrate, timeout=180)
        assert code == 0, log[-4000:]
        seconds["upgrade_migrate"] = round(time.monotonic() - t, 1)
        release.remove(f"{old_job}-run")  # Helm deletes the old Job: it is not in the new manifest
        rolled = _roll_every_deployment(release, figures, "upgrade")
        upgrade_ended = time.monotonic()
        seconds["upgrade"] = round(upgrade_ended - upgrade_started, 1)
        # Payments keep coming a moment after the last pod was replaced.
        n = len(payer.snapshot())
        wait_until(lambda: len(payer.snapshot()) >= n + 40, 30, interval=0.2, what="payments after the upgrade")
    first = payer.snapshot()

    # The new pods run the new image with the new value.
    _assert_swapped(release, rolled, tag=upgrade_tag, log_level="DEBUG", since=upgrade_wall)
    figures["upgrade"] = {
        **_swap_figures(first, upgrade_started, upgrade_ended, rolled),
        "migrate_job": [old_job, new_job],
    }
    # ---------------------------------------------------------------- helm rollback, under payments
    rolled_back = _rollback(release, upgrade_tag, new_job, old_job, figures)
    t = time.monotonic()
    figures["before_uninstall"] = _check_payments(release, first + rolled_back, [f"lc{pid}-a", f"lc{pid}-r"])
    seconds["converge_and_check"] = round(time.monotonic() - t, 1)
    kept = {u["uuid"] for u in first + rolled_back}

    # ---------------------------------------------------------------- uninstall: keep the Secret and the PVCs
    t = time.monotonic()
    kept_by_helm, stopped = release.uninstall()
    seconds["uninstall"] = round(time.monotonic() - t, 1)
    figures["uninstall"] = {"kept": kept_by_helm, "pods": stopped}
    assert all(r["exit_code"] == 0 for r in stopped.values()), stopped
    assert kept_by_helm == [f"Secret/{release.secret_name}"], kept_by_helm
    left = podman("pod", "ps", "--format", "{{.Name}}").stdout.decode().split()
    assert not [p for p in left if release.name in p], f"pods of the release left after uninstall: {left}"
    assert podman("secret", "inspect", release.secret_name, check=False).returncode == 0, "the kept Secret is gone"

    # ---------------------------------------------------------------- reinstall on what was kept
    t = time.monotonic()
    release.reinstall()  # Helm's Install; fails unless its `lookup` found the kept Secret's passwords
    _install(release)
    seconds["reinstall"] = round(time.monotonic() - t, 1)
    # The data survived: every payment of before is there, final, through the API.
    assert _scalar(
        release,
        "orchestrator-db-url",
        f"SELECT COUNT(*) FROM request WHERE cus_id LIKE 'lc{pid}-a-%' OR cus_id LIKE 'lc{pid}-r-%'",
    ) == len(kept)
    orch = release.endpoint()
    for u in list(kept)[:: max(1, len(kept) // 20)]:
        body = httpx.get(f"{orch}/payments/{u}", headers=_auth(release), timeout=10).json()
        assert body["status"] != "PENDING", body

    payer = Payer(
        None,
        rate=RATE,
        timeout=30,
        prefix=f"lc{pid}-b",
        url=release.endpoint,
        retry_for=15,
        limit=AFTER_REINSTALL,
        api_key=release.secret["api-key"],
    )
    with payer:
        wait_until(payer.done, 60, interval=0.2, what=f"{AFTER_REINSTALL} payments after the reinstall")
    second = payer.snapshot()
    t = time.monotonic()
    figures["after_reinstall"] = _check_payments(
        release, first + rolled_back + second, [f"lc{pid}-a", f"lc{pid}-r", f"lc{pid}-b"]
    )
    seconds["converge_and_check_after_reinstall"] = round(time.monotonic() - t, 1)
    assert figures["after_reinstall"]["accepted"] == len(kept) + AFTER_REINSTALL
