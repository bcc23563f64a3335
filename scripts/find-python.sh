#!/usr/bin/env bash
# Print a Python >= 3.12 (3.12 preferred: the pinned wheels are tested there) on this machine (pyenv's included); the project needs 3.12
# because helm-sdkpy (the chart tests' real Helm) requires it.
set -euo pipefail
for candidate in python3.12 /root/.pyenv/versions/3.12*/bin/python3 "$HOME"/.pyenv/versions/3.12*/bin/python3 python3.13 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    command -v "$candidate"
    exit 0
  fi
done
echo "error: Python >= 3.12 not found (install python3.12, or pyenv install 3.12)" >&2
exit 1
