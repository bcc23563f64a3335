"""`make render-k8s`: regenerate k8s/manifests/ from the chart, and the by-hand copies of the
dashboard and alert rules in deploy/.

    python scripts/render-k8s.py           # write
    python scripts/render-k8s.py --check   # exit 1 if anything on disk differs (what the test does)

Rendering runs Helm's own engine (helm-sdkpy's Install against a recording fake API server, see
deploy/helm_render.py) with k8s/render-values.yaml, release "chancepay", namespace "chancepay".
One file per object, numbered in Helm's install order; the migrate hook Job is included (kubectl
apply runs it at once; it waits for MySQL), the helm test pod is not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

import helm_render  # noqa: E402

CHART = ROOT / "charts" / "chancepay"
MANIFESTS = ROOT / "k8s" / "manifests"
COPIES = {
    CHART / "files" / "chancepay-dashboard.json": ROOT / "deploy" / "grafana" / "chancepay-dashboard.json",
    CHART / "files" / "chancepay-rules.yaml": ROOT / "deploy" / "prometheus" / "chancepay-rules.yaml",
}
HEADER = "# Rendered from charts/chancepay by `make render-k8s` (scripts/render-k8s.py). Do not edit.\n"


def expected_files() -> dict[Path, str]:
    values = yaml.safe_load((ROOT / "k8s" / "render-values.yaml").read_text())
    rendered = helm_render.render(str(CHART), values, release="chancepay", namespace="chancepay")
    files: dict[Path, str] = {}
    for i, obj in enumerate(rendered.objects, start=1):
        name = f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        files[MANIFESTS / name] = HEADER + yaml.safe_dump(obj, sort_keys=False, width=120)
    for src, dst in COPIES.items():
        files[dst] = src.read_text()
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report drift instead of writing")
    args = ap.parse_args(argv)
    files = expected_files()
    stale = sorted(set(MANIFESTS.glob("*.yaml")) - set(files))
    changed = sorted(p for p, text in files.items() if not p.exists() or p.read_text() != text)
    if args.check:
        for p in changed + stale:
            print(f"drift: {p.relative_to(ROOT)}", file=sys.stderr)
        return 1 if changed or stale else 0
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    for p in stale:
        p.unlink()
    for p in changed:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[p])
    print(f"render-k8s: {len(changed)} written, {len(stale)} removed, {len(files)} total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
