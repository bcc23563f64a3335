"""The chart's MariaDB and RabbitMQ across the events that used to break them: a Secret generated
anew over volumes that outlived it, a kubelet that applies fsGroup to the broker's volume, a pod
restarted over an initialised volume. Pods restarted here are deleted and created again, as a
rollout does; their PersistentVolumeClaim directories are kept."""

from __future__ import annotations

import os
import stat

import pytest

from tests.support import chart
from tests.support.env import wait_until
from tests.support.pods import Pod
from tests.support.servers import chart_values


def _move_a_payment(install) -> None:
    roles = {name: install.start_role(name) for name in ("orchestrator", "scanner", "wallet")}
    for role in roles.values():
        role.wait_ready(timeout=60)
    result = install.helm_test()
    assert result.returncode == 0, result.stdout + result.stderr
    for role in roles.values():
        role.stop()
    install.roles.clear()


def test_a_regenerated_secret_heals_instead_of_locking_everyone_out(chart_install) -> None:
    """Argo CD renders without `lookup`, a deleted Secret is recreated: new random passwords meet
    data volumes initialised with the old ones. MariaDB re-applies root's password from the Secret
    at start (--init-file), migrate re-applies the role users' passwords, RabbitMQ re-imports its
    user from the definitions at boot: after the rollout the new credentials work."""
    install = chart_install()
    install.servers.start()
    assert install.run_job("Job").returncode == 0
    _move_a_payment(install)
    old = dict(install.servers.secret)

    # The same release rendered again with no Secret to look up: every password is new.
    again = chart.render({**install.values, "commonLabels": {"render": "second"}})
    new = chart.secret_data(again)
    assert all(new[k] != old[k] for k in ("mariadb-root-password", "orchestrator-db-password", "rabbitmq-password"))
    for kind in ("StatefulSet",):
        for o_old, o_new in zip(install.rendered.of_kind(kind), again.of_kind(kind), strict=True):
            before = o_old["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
            after = o_new["spec"]["template"]["metadata"]["annotations"]["checksum/secret"]
            assert before != after, f"{o_old['metadata']['name']} would not roll with a new password"
    install.rendered = again
    install.servers.use(again)
    install.servers.restart()
    migrate = install.run_job("Job")
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    _move_a_payment(install)


def test_a_reinstall_finds_its_secret_and_its_data(chart_install) -> None:
    """`helm uninstall` keeps the Secret (resource-policy: keep) and the PVCs; the next install's
    `lookup` finds the Secret, so every password matches the data again without any repair."""
    install = chart_install()
    install.servers.start()
    assert install.run_job("Job").returncode == 0
    kept = dict(install.servers.secret)
    reinstall = chart.render_upgrade(install.values, kept)
    assert chart.secret_data(reinstall) == kept
    install.rendered = reinstall
    install.servers.use(reinstall)
    install.servers.restart()
    assert install.run_job("Job").returncode == 0
    _move_a_payment(install)


def _cookie_mode(pod: Pod, home: str) -> int:
    path = pod.workdir / "volumes" / "data" / ".erlang.cookie" if home == "/var/lib/rabbitmq" else None
    return stat.S_IMODE(path.stat().st_mode) if path and path.exists() else -1


@pytest.mark.parametrize("layout", ["chart", "cookie-on-data-volume"])
def test_broker_restarts_on_a_volume_whose_group_the_kubelet_changed(chart_install, layout) -> None:
    """Kubelets that apply fsGroup make every file of the volume group-readable at each mount;
    Erlang refuses a cookie file that is. The chart keeps the cookie in $HOME=/tmp (an emptyDir)
    and asks for OnRootMismatch. `cookie-on-data-volume` is the layout before the fix, run to show
    this test can fail: there the second start must die on the cookie's mode."""
    install = chart_install()
    sts = install.rendered.get("StatefulSet", "-rabbitmq")
    if layout == "cookie-on-data-volume":
        import copy

        sts = copy.deepcopy(sts)
        spec = chart.pod_spec(sts)
        spec["securityContext"]["fsGroupChangePolicy"] = "Always"
        for e in spec["containers"][0]["env"]:
            if e["name"] == "HOME":
                e["value"] = "/var/lib/rabbitmq"
    pod = Pod(
        f"cptest-{os.getpid()}-cookie-{layout}",
        sts,
        install.rendered,
        install.workdir / "rabbitmq",
        image_for=install.servers.image_for,
        extra_env={"rabbitmq": install.servers.host_env},
    )
    try:
        pod.start()
        pod.wait_ready()
        pod.stop()
        # The kubelet of the next start applies fsGroup to the whole volume (policy permitting).
        pod.fs_group_changes.clear()
        pod.start()
        if layout == "chart":
            pod.wait_ready()
            assert "data" not in pod.fs_group_changes, "OnRootMismatch: the volume was not walked again"
        else:
            assert "data" in pod.fs_group_changes
            assert _cookie_mode(pod, "/var/lib/rabbitmq") & 0o060, "the cookie became group-accessible"
            wait_until(lambda: not pod.running(), 120, what="the node refusing its cookie")
            assert "erlang.cookie" in pod.logs() or "Cookie file" in pod.logs(), pod.logs()[-2000:]
    finally:
        pod.destroy()


def test_the_chart_pins_server_series_the_suite_runs(chart_install) -> None:
    """The in-chart image tags are of the MariaDB and RabbitMQ series these tests (and the `chart`
    pass of the integration and fault tiers) ran; a bump of either tag fails here until the
    stand-in image carries that series too."""
    values = chart_values()
    rendered = chart.render(values)
    install = chart_install(values)
    install.servers.start()
    mariadb_version, rabbitmq_version = install.servers.servers().versions()
    tags = {}
    for name in ("-mariadb", "-rabbitmq"):
        image = chart.pod_spec(rendered.get("StatefulSet", name))["containers"][0]["image"]
        repo, tag = image.rsplit(":", 1)
        tags[repo] = tag
    assert set(tags) == {"mariadb", "rabbitmq"}

    def series(v: str) -> str:
        return ".".join(v.split("-")[0].split(".")[:2])

    assert series(tags["mariadb"]) == series(mariadb_version), (tags["mariadb"], mariadb_version)
    assert series(tags["rabbitmq"]) == series(rabbitmq_version), (tags["rabbitmq"], rabbitmq_version)
