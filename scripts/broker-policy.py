"""`make run`: give the local broker the at-least-once dead-lettering policy of
chancepay.core.topology (the chart imports the same one at every broker boot). A broker this
machine's rabbitmqctl cannot control (a container, another host) is left alone with one line
saying what to apply; `make run` goes on either way: the policy protects dead letters, the
pipeline runs without it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

from chancepay.core import topology


def main() -> int:
    args = ["rabbitmqctl", "-q", *topology.set_policy_args("/")]
    if shutil.which("rabbitmqctl") is None:
        print(f"note: no rabbitmqctl here; apply the dead-lettering policy to your broker: {shlex.join(args)}",
              file=sys.stderr)
        return 0
    done = subprocess.run((["sudo"] if os.getuid() else []) + args, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"note: rabbitmqctl could not set the dead-lettering policy ({done.stderr.strip()[:300]}); "
              f"apply it to your broker: {shlex.join(args)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
