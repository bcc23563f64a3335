"""Print the chart's own Secret (charts/chancepay/templates/secret.yaml) for release "chancepay" in
NAMESPACE, rendered by Helm's engine without a cluster (deploy/helm_render.py, helm-sdkpy), as
`helm template chancepay charts/chancepay -n NAMESPACE --show-only templates/secret.yaml` prints
it: fresh random passwords (no cluster, so the chart's lookup finds none to keep).

    python scripts/chart-secret.py NAMESPACE

scripts/plain-secret.sh runs this when the helm CLI is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

import helm_render  # noqa: E402


class _Dumper(yaml.SafeDumper):
    """Multi-line values (mariadb-init.sql) as literal blocks, readable in the file an operator keeps."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def main(argv: list[str]) -> int:
    namespace = argv[0] if argv else "chancepay"
    rendered = helm_render.render(str(ROOT / "charts" / "chancepay"), {}, release="chancepay", namespace=namespace)
    secret = rendered.get("Secret", "chancepay-secrets")
    sys.stdout.write(yaml.dump(secret, Dumper=_Dumper, sort_keys=False, width=1 << 16))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
