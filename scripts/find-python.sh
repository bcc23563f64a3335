#!/usr/bin/env bash
# Print a Python interpreter of at least version MIN (default 3.11) on this machine: python3 on
# PATH first (Debian 12's own is 3.11), then python3.12 / python3.13, then pyenv's. With MIN=3.12
# (the test venv: helm-sdkpy needs it) exactly that minor is preferred, the one the pins are tested on.
set -euo pipefail
min="${1:-3.11}"
major="${min%%.*}"
minor="${min#*.}"
if [ "$min" = "3.12" ]; then
  candidates=(python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3 /root/.pyenv/versions/3.12*/bin/python3 python3.13 python3)
else
  candidates=(python3 /usr/bin/python3 python3.12 python3.13 "$HOME"/.pyenv/versions/3.1[1-9]*/bin/python3)
fi
for candidate in "${candidates[@]}"; do
  if command -v "$candidate" >/dev/null 2>&1 \
      && "$candidate" -c "import sys; sys.exit(sys.version_info[:2] < ($major, $minor))" 2>/dev/null; then
    command -v "$candidate"
    exit 0
  fi
done
echo "error: no Python >= $min found (Debian 12: apt-get install python3; for the chart tests: a python3.12)" >&2
exit 1
