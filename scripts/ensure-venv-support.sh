#!/usr/bin/env bash
# Make sure PYTHON can create a virtualenv with pip in it. Debian splits that out of python3
# (package python3-venv, or python3.X-venv): install it when missing, saying so.
set -euo pipefail
python="${1:?usage: ensure-venv-support.sh PYTHON}"
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
if "$python" -m venv "$probe/v" >/dev/null 2>&1 && [ -x "$probe/v/bin/pip" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: $python cannot create a virtualenv (python3 -m venv) and there is no apt-get to install it" >&2
  exit 1
fi
version="$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
echo "ensure-venv-support: apt-get install python3-venv python${version}-venv (for $python)"
as_root apt-get update -qq
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python${version}-venv" >/dev/null
