"""A default `helm install`, run: the rendered chart's servers, migrate Job, roles, reconcile
CronJob and helm test pod, in the order Kubernetes starts them (everything at once)."""

from __future__ import annotations

import httpx

from tests.support.env import wait_until


def _grants(install, user: str) -> list[str]:
    with install.servers.servers().admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW GRANTS FOR %s@'%%'", (user,))
        return [row[0] for row in cur.fetchall()]


def test_default_install_starts_migrates_and_moves_a_payment(chart_install) -> None:
    install = chart_install()
    # Kubernetes starts every object of the release together: the roles come up before the
    # databases have users or tables and before the broker answers.
    install.servers.mariadb.start()
    install.servers.rabbitmq.start()
    roles = {name: install.start_role(name) for name in ("orchestrator", "scanner", "wallet")}
    for role in roles.values():
        wait_until(
            lambda role=role: httpx.get(role.url + "/healthz", timeout=2).status_code == 200,
            30,
            what=f"{role.name} alive",
        )
    pids = {name: role.proc.pid for name, role in roles.items()}
    install.servers.mariadb.wait_ready()
    install.servers.rabbitmq.wait_ready()
    for role in roles.values():
        assert httpx.get(role.url + "/readyz", timeout=5).status_code == 503, f"{role.name} ready before migrate"

    # The migrate Job, with exactly its rendered environment (the admin URL from the Secret).
    migrate = install.run_job("Job")
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    assert "provisioned database and user" in migrate.stdout
    for role in roles.values():
        role.wait_ready(timeout=60)
    assert {name: role.proc.pid for name, role in roles.items()} == pids, "a role restarted"

    # Least privilege: each role's user sees only its own schema.
    for user, db in (("chancepay_orchestrator", "chancepay_orchestrator"), ("chancepay_wallet", "chancepay_wallet")):
        grants = _grants(install, user)
        assert any(f"ON `{db}`.*" in g for g in grants), grants
        assert not any("ON *.*" in g and "USAGE" not in g for g in grants), grants

    # The helm test pod's own script, then the reconcile CronJob's job once.
    helm_test = install.helm_test()
    assert helm_test.returncode == 0, helm_test.stdout + helm_test.stderr
    assert "finalized" in helm_test.stdout
    reconcile = install.run_job("CronJob", "-reconcile")
    assert reconcile.returncode == 0, reconcile.stdout[-3000:] + reconcile.stderr[-3000:]

    # Nothing logged a failure tag but the start-up order at work, which says so ("waiting": true):
    # the same rule the kind workflow's log step applies. Which waiting lines appear depends on
    # timing (a retrier's first read may land while MariaDB still refuses connections).
    for role in roles.values():
        tagged = [e for e in role.events("[FAILED TO") if e.get("waiting") is not True]
        assert not tagged, (role.name, tagged[:3])


def test_migrate_job_waits_for_a_database_that_is_not_up_yet(chart_install) -> None:
    """The Job starts with the StatefulSet; MariaDB takes seconds to initialise its volume."""
    import subprocess
    import sys

    install = chart_install()
    c = install.container("Job", "")
    env = install.environ(c)
    job = subprocess.Popen(
        [sys.executable, "-m", "chancepay", "migrate"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        install.servers.mariadb.start()
        out, _ = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-3000:]
    assert "[FAILED TO REACH DATABASE]" in out and "schema up to date" in out
