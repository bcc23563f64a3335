"""Leftovers of test runs that were killed before their teardown (a CI timeout, Ctrl-C): databases,
users and vhosts on the servers, podman pods, containers and secrets. Every such object carries
the pid of the pytest process that made it (cpt_<pid>_..., cptest-<pid>-..., cpp-<pid>-...); one
whose process is gone is removed at the start of the next session. A live run's objects are never
touched."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

PID_NAME = re.compile(r"^(?:cpt_|cptest-|cpp-|cpplay-cpp-)(\d+)[_-]")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale(name: str) -> bool:
    m = PID_NAME.match(name)
    return bool(m) and not _alive(int(m.group(1)))


def sweep_servers(servers: Any) -> list[str]:
    removed: list[str] = []
    with servers.admin_connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW DATABASES LIKE 'cpt\\_%'")
        for (db,) in cur.fetchall():
            if stale(db):
                cur.execute(f"DROP DATABASE `{db}`")
                removed.append(db)
        cur.execute("SELECT user FROM mysql.user WHERE user LIKE 'cpt\\_%'")
        for (user,) in cur.fetchall():
            if stale(user):
                cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))
                removed.append(user)
    for vhost in servers.rabbitmqctl("list_vhosts").split():
        if stale(vhost):
            servers.rabbitmqctl("delete_vhost", vhost)
            removed.append(vhost)
    return removed


def sweep_podman() -> list[str]:
    if shutil.which("podman") is None:
        return []
    from tests.support.podman import podman

    removed: list[str] = []
    pods = podman("pod", "ps", "--format", "{{.Name}}", check=False).stdout.decode().split()
    for name in pods:
        if stale(name):
            podman("pod", "rm", "-f", name, check=False)
            removed.append(name)
    containers = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.decode().split()
    for name in containers:
        if stale(name):
            podman("rm", "-f", name, check=False)
            removed.append(name)
    secrets = podman("secret", "ls", "--format", "{{.Name}}", check=False).stdout.decode().split()
    for name in secrets:
        if stale(name):
            podman("secret", "rm", name, check=False)
            removed.append(name)
    # Extra tags a test put on the project's images (localhost/chancepay-wallet:<version>-cpp-<pid>-...).
    images = podman("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.decode().split()
    for ref in images:
        repo, _, tag = ref.rpartition(":")
        extra = tag.partition("-cpp-")[2]
        if repo.startswith("localhost/chancepay-") and extra and stale(f"cpp-{extra}"):
            podman("untag", ref, ref, check=False)
            removed.append(ref)
    return removed
