"""Podman, as the container tests use it: one configuration file, images the project makes itself.

No image can be pulled here, so the images stand in for the chart's: `standin_servers_image()`
is a Debian 13 root (debootstrap) holding the MariaDB and RabbitMQ series the chart pins, with
the same program names on PATH as the official images. Every image is tagged with a hash of its
recipe and built only when that tag is missing (a lock keeps two test runs from building it
twice).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = ROOT / "deploy" / "podman" / "containers.conf"
LOCK = Path(os.environ.get("CHANCEPAY_IMAGE_LOCK", "/var/tmp/chancepay-images.lock"))
MIRROR = os.environ.get("CHANCEPAY_DEBIAN_MIRROR", "http://deb.debian.org/debian")

# The servers the chart ships, from Debian 13 ("trixie"): MariaDB 11.8 and RabbitMQ 4.0.
STANDIN_SUITE = "trixie"
STANDIN_PACKAGES = ("mariadb-server", "rabbitmq-server")
# The official images put these programs on PATH; Debian keeps rabbitmq-server's real script
# (not the wrapper that insists on uid "rabbitmq") under /usr/lib/rabbitmq/bin.
STANDIN_PATH = "/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The official mariadb image runs its server as mysql, uid/gid 999 (the chart's runAsUser): so
# does the stand-in, so the unix-socket probe user 'mysql'@'localhost' means the same in both.
STANDIN_USERS = (("mysql", 999),)
STANDIN_RECIPE_VERSION = "2"


def environ() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(
    *args: str, check: bool = True, timeout: float = 300, input: bytes | None = None, capture: bool = True
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        ["podman", *args],
        env=environ(),
        input=input,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"podman {' '.join(args[:6])} ... exited {result.returncode}: "
            f"{(result.stderr or b'').decode(errors='replace')[-2000:]}"
        )
    return result


def available() -> str | None:
    """None if podman, runc and debootstrap are usable; else why not (and the fix)."""
    for tool in ("podman", "runc", "debootstrap", "catatonit"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make test installs it: scripts/install-test-tools.sh)"
    return None


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def debootstrap_image(
    ref: str, suite: str, packages: Sequence[str], changes: Sequence[str], users: Sequence[tuple[str, int]] = ()
) -> str:
    """Make `ref` from a minimal Debian root with `packages`, unless it exists. Returns `ref`."""
    if image_exists(ref):
        return ref
    with _build_lock():
        if image_exists(ref):
            return ref
        with tempfile.TemporaryDirectory(prefix="chancepay-rootfs-", dir="/var/tmp") as tmp:
            root = Path(tmp) / "root"
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(root), MIRROR],
                check=True,
                stdout=subprocess.DEVNULL,
                timeout=1200,
            )
            for name, uid in users:
                subprocess.run(["chroot", str(root), "groupmod", "-g", str(uid), name], check=True)
                subprocess.run(["chroot", str(root), "usermod", "-u", str(uid), "-g", str(uid), name], check=True)
            # apt's caches are not part of what the image runs.
            for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
                shutil.rmtree(root / cache, ignore_errors=True)
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            args = ["import"]
            for change in changes:
                args += ["--change", change]
            result = subprocess.run(
                ["podman", *args, "-", ref], stdin=tar.stdout, env=environ(), capture_output=True, timeout=900
            )
            assert tar.stdout is not None
            tar.stdout.close()
            tar.wait()
            if result.returncode != 0 or tar.returncode != 0:
                raise RuntimeError(f"podman import {ref} failed: {result.stderr.decode(errors='replace')[-2000:]}")
    return ref


def standin_servers_image() -> str:
    recipe = "|".join((STANDIN_RECIPE_VERSION, STANDIN_SUITE, *STANDIN_PACKAGES, STANDIN_PATH, repr(STANDIN_USERS)))
    ref = f"localhost/chancepay-standin-servers:{STANDIN_SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    return debootstrap_image(
        ref, STANDIN_SUITE, STANDIN_PACKAGES, [f"ENV PATH={STANDIN_PATH}", "ENV LANG=C.UTF-8"], STANDIN_USERS
    )


# The ChancePay images' base here: Debian 12 with its own Python 3.11 (the Dockerfiles' default is
# the public python:3.11.x-slim-bookworm, the same Debian and Python minor).
PYTHON_BASE_SUITE = "bookworm"
PYTHON_BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
PYTHON_BASE_RECIPE_VERSION = "1"
# A TLS-intercepting proxy's CA (this machine has one): handed to pip as a build secret.
HOST_CA_BUNDLE = Path(os.environ.get("CHANCEPAY_BUILD_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
ROLES = ("orchestrator", "scanner", "wallet")


def python_base_image() -> str:
    recipe = "|".join((PYTHON_BASE_RECIPE_VERSION, PYTHON_BASE_SUITE, *PYTHON_BASE_PACKAGES))
    ref = f"localhost/chancepay-python-base:{PYTHON_BASE_SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"
    return debootstrap_image(ref, PYTHON_BASE_SUITE, PYTHON_BASE_PACKAGES, ["ENV LANG=C.UTF-8"])


def build_role_image(role: str, tag: str) -> tuple[str, float]:
    """`podman build -f Dockerfile.<role>` from the local base; returns (image, seconds). Layers
    are cached by podman: an unchanged pyproject.toml reuses the dependency layer."""
    import time

    ref = f"localhost/chancepay-{role}:{tag}"
    args = [
        "build",
        "--network",
        "host",
        "-f",
        str(ROOT / f"Dockerfile.{role}"),
        "--build-arg",
        f"PYTHON_IMAGE={python_base_image()}",
        "-t",
        ref,
    ]
    if HOST_CA_BUNDLE.exists():
        args += ["--secret", f"id=pip_cert,src={HOST_CA_BUNDLE}"]
    started = time.monotonic()
    with _build_lock():
        podman(*args, str(ROOT), timeout=1800)
    return ref, time.monotonic() - started


def image_size(ref: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.decode().strip())
