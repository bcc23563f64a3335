#!/usr/bin/env bash
# Install the command-line tools the deploy checks need (tests/deploy/):
#   promtool   (Debian package "prometheus")  - `promtool check rules` / `promtool test rules`
#   ShellCheck (Debian package "shellcheck")  - lints the deploy scripts
# Idempotent: does nothing when both are already on PATH.
#
# The Debian "prometheus" package would normally start a Prometheus server from its maintainer
# scripts. We only want promtool, so during the install a policy-rc.d that exits 101 ("action
# forbidden") tells invoke-rc.d / deb-systemd-invoke not to start anything, and no server is
# left running afterwards.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
if [ "${#missing[@]}" -eq 0 ]; then
    echo "deploy tools present: $(command -v promtool) $(command -v shellcheck)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo --preserve-env=PATH "$0" "$@"
    fi
    echo "install-deploy-tools: need root (or sudo) to apt-get install ${missing[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-deploy-tools: no apt-get; install promtool and shellcheck by hand" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# installed by scripts/install-deploy-tools.sh for the duration of the install\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

command -v promtool >/dev/null
command -v shellcheck >/dev/null
echo "deploy tools installed: $(promtool --version 2>&1 | head -n1); shellcheck $(shellcheck --version | sed -n 's/^version: //p')"
