"""Runs one role: its HTTP server and (for scanner and wallet) its worker, in one event loop.

SIGTERM or SIGINT: stop taking work, let in-flight work finish (bounded by
CHANCEPAY_SHUTDOWN_GRACE_SECONDS), then exit 0. A worker that dies of a fatal error makes the
process exit 1 so the supervisor (Kubernetes, or `make run`) restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

import uvicorn

from chancepay.core.config import Settings
from chancepay.core.errors import ChancePayError
from chancepay.core.logging import get_logger
from chancepay.core.preflight import CannotProceed

Worker = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
# A process that cannot start because of how it is set up (bad configuration, port in use) exits
# with this code; `chancepay dev` does not restart it (it would fail the same way forever).
EXIT_CANNOT_START = 2
# The setting that moves this role to another port, named in the port-in-use hint. A role run
# alone is moved by CHANCEPAY_PORT; under `chancepay dev` / `make run` the supervisor passes the
# knob that works there (--port-hint).
port_hint = "CHANCEPAY_PORT=<port>"


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound here (not by uvicorn, which would sys.exit(3) with its own
    traceback on "address already in use")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    # The runner owns signal handling: uvicorn must not install (and later re-raise) its own.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class FatalError(ChancePayError):
    """The role cannot go on; exit non-zero and let the supervisor restart it."""


async def serve(
    *,
    app: Any,
    settings: Settings,
    role: str,
    worker: Worker | None = None,
) -> int:
    """Serve `app` on the role's host and port; run `worker` beside it until SIGTERM/SIGINT."""
    host, port = settings.host, settings.port_for(role)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = _Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(settings.shutdown_grace)),
            server_header=False,
        )
    )
    started = await _start_http(server, host, port)
    if isinstance(started, int):
        return started
    worker_task = asyncio.ensure_future(worker(stop)) if worker is not None else None
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    waiting = {t for t in (started, worker_task, stop_task) if t is not None}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        get_logger().info("stopping: draining in-flight work", grace_seconds=settings.shutdown_grace)
    exit_code = 0
    if worker_task is not None:
        stop.set()
        exit_code = await _drain_worker(worker_task, settings.shutdown_grace)
    server.should_exit = True
    with contextlib.suppress(BaseException):
        await started
    stop_task.cancel()
    get_logger().info("stopped", exit_code=exit_code)
    return exit_code


async def _start_http(server: _Server, host: str, port: int) -> asyncio.Task[None] | int:
    """The running server's task, or the exit code when it cannot start."""
    log = get_logger()
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        log.error(
            "[FAILED TO START HTTP SERVER]",
            host=host,
            port=port,
            error=str(exc),
            hint=f"another process holds the port: stop it, or move this role: {port_hint}",
        )
        return EXIT_CANNOT_START
    server_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    while not server.started:
        if server_task.done():
            log.error("[FAILED TO START HTTP SERVER]", host=host, port=port, error=repr(server_task.exception()))
            return 1
        await asyncio.sleep(0.01)
    log.info("listening", host=host, port=port)
    return server_task


async def _drain_worker(worker_task: asyncio.Future[None], grace: float) -> int:
    """Wait for the stopped worker to finish its in-flight work; the exit code."""
    log = get_logger()
    try:
        await asyncio.wait_for(asyncio.shield(worker_task), timeout=grace)
    except TimeoutError:
        log.error("[FAILED TO STOP CLEANLY]", reason="worker did not drain within the grace period")
        worker_task.cancel()
        return 1
    except CannotProceed as exc:  # found by the worker at start: core/durability.py's refusal
        log.error(exc.tag, **exc.fields)
        return exc.exit_code
    except FatalError as exc:
        log.error("fatal error, exiting so the supervisor restarts this role", error=str(exc))
        return 1
    except Exception:
        log.exception("worker crashed")
        return 1
    return 0


def beside(main: Worker, background: Sequence[Worker], grace: float) -> Worker:
    """One worker: `main`, with `background` workers run beside it; main's end (a fatal error or
    a stop) stops them, each given `grace` seconds to finish."""

    async def run(stop: asyncio.Event) -> None:
        tasks = [asyncio.ensure_future(worker(stop)) for worker in background]
        try:
            await main(stop)
        finally:
            stop.set()
            for task in tasks:
                try:
                    await asyncio.wait_for(task, timeout=grace)
                except Exception:
                    task.cancel()

    return run


@dataclasses.dataclass
class Role:
    """What a role's composition root (orchestrator/main.py, scanner/main.py, wallet/main.py)
    builds: its HTTP app, its worker if any, what to close at the end, what to log at the start."""

    name: str
    app: Any
    worker: Worker | None = None
    closers: list[Callable[[], Awaitable[None]]] = dataclasses.field(default_factory=list)
    starting: dict[str, Any] = dataclasses.field(default_factory=dict)


async def run_role(settings: Settings, role: Role) -> int:
    """Serve a composed role until it stops, then close its resources (last opened, first closed)."""
    get_logger().info(f"{role.name} starting", **role.starting)
    try:
        return await serve(app=role.app, settings=settings, role=role.name, worker=role.worker)
    finally:
        for close in reversed(role.closers):
            await close()
