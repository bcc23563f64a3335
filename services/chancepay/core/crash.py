"""Named crash points for fault tests.

`CHANCEPAY_CRASH_POINTS=wallet.after_finalize` makes the process SIGKILL itself when it
reaches that line: no clean-up, no flush of anything but the log line saying so. Empty (the
default, and always in production) makes `hit` a set lookup and nothing more.
"""

from __future__ import annotations

import os
import signal

from chancepay.core.logging import get_logger

KNOWN = frozenset(
    {
        "scanner.after_claim",
        "scanner.after_ack",
        "wallet.after_inbox_insert",
        "wallet.after_finalize",
        "wallet.after_callback",
        "orchestrator.after_commit",
        "orchestrator.mid_group",
    }
)


class CrashPoints:
    def __init__(self, names: frozenset[str]) -> None:
        unknown = names - KNOWN
        if unknown:
            raise ValueError(f"unknown crash points {sorted(unknown)}; known: {sorted(KNOWN)}")
        self.names = names

    def hit(self, name: str) -> None:
        if name in self.names:
            get_logger().warning("crash point reached, killing this process", crash_point=name)
            os.kill(os.getpid(), signal.SIGKILL)
