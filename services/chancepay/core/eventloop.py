"""The event loop every command runs on (uvloop when installed). A module of its own so that the
CLI sets it up without importing the HTTP server (chancepay.core.runner imports uvicorn): an
operator's command starts in a fraction of the time a role does."""

from __future__ import annotations

import asyncio


def install_event_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a pinned dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
