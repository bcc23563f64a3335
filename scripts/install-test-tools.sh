#!/usr/bin/env bash
# Install the Debian packages the tests need beyond Python (what `make test` runs first):
#   promtool    (package "prometheus")  `promtool check rules` / `promtool test rules`
#   ShellCheck (package "shellcheck")   lints the deploy scripts
#   podman, runc                        run the chart's MariaDB/RabbitMQ pods (tests/chart, the
#                                       `chart` pass of the integration and fault tiers)
#   catatonit                           the pause process of a podman pod (`podman pod create`,
#                                       `kube play`); podman only recommends it, so apt-get
#                                       --no-install-recommends leaves it out
#   debootstrap                         builds the stand-in image of those servers (Debian 13)
# Idempotent: installs only what is missing, and says what it installs.
#
# The Debian "prometheus" package would normally start a Prometheus server from its maintainer
# scripts. During the install a policy-rc.d that exits 101 ("action forbidden") tells
# invoke-rc.d / deb-systemd-invoke not to start anything, so no server is left running.
set -euo pipefail

declare -A package_of=([promtool]=prometheus [shellcheck]=shellcheck [podman]=podman [runc]=runc
                       [debootstrap]=debootstrap [catatonit]=catatonit)
missing=()
for tool in promtool shellcheck podman runc debootstrap catatonit; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("${package_of[$tool]}")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "test tools present: promtool shellcheck podman runc debootstrap catatonit"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env=PATH "$0" "$@"
    fi
    echo "install-test-tools: need root (or sudo) to apt-get install ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-tools: no apt-get; install ${missing[*]} by hand" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# installed by scripts/install-test-tools.sh for the duration of the install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

echo "install-test-tools: apt-get install ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "test tools installed: $(promtool --version 2>&1 | head -n1); $(podman --version); debootstrap $(dpkg-query -W -f '${Version}' debootstrap)"
