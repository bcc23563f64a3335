"""ChancePay's own TCP fault proxy for fault-injection tests (stdlib asyncio only).

A ``FaultProxy`` sits between a client (a ChancePay role, a test) and one upstream
(MariaDB, RabbitMQ, the orchestrator's callback port) and can be switched at any
moment between these modes:

``pass``
    forward bytes both ways (half-close is forwarded: an EOF from one side becomes
    ``shutdown(SHUT_WR)`` towards the other, the other direction keeps flowing).
``delay`` (``seconds=float``)
    every chunk read from either side is delivered ``seconds`` later (latency, not a
    bandwidth cap; order is kept).  Applies to chunks read after the switch.
``blackhole``
    a network partition: new connections are accepted but the upstream is not even
    dialled, existing connections go silent both ways.  Bytes are *held*, not dropped
    (as TCP would retransmit them once the partition heals): the proxy stops reading,
    so the kernel buffers fill and the sender sees back-pressure.  Switching back to
    ``pass``/``delay`` resumes every connection where it stopped.
``reset``
    every existing connection is closed with a TCP RST (SO_LINGER 0) on both sides,
    every new connection is accepted and immediately RST.
``refuse`` (``reset_existing=True``)
    the listening socket is closed so connects get ECONNREFUSED (the "process is
    down" fault); existing connections are RST unless ``reset_existing=False``.  Any
    other mode listens again on the SAME port (SO_REUSEADDR).

``reset_all()`` RSTs every current connection once and keeps the mode.  If the
upstream cannot be reached, the client connection is RST (the closest a proxy can
get to the ECONNREFUSED the client would have seen).

The proxy runs its own asyncio loop in a background thread, so synchronous pytest
code, subprocess-based tests and asyncio tests (no shared loop) can all use it::

    with FaultProxy("127.0.0.1", 3306) as proxy:
        dsn = f"mysql://root@127.0.0.1:{proxy.port}/"
        proxy.set_mode("blackhole")
        ...
        proxy.set_mode("pass")

Every control call blocks until the change is in effect (for ``refuse`` the port is
closed when ``set_mode`` returns, for ``reset`` the RSTs are sent).

CLI (for soak scripts in another process), see ``python -m tests.support.faultproxy -h``::

    python -m tests.support.faultproxy --listen 127.0.0.1:13306 --upstream 127.0.0.1:3306 \
        [--control 127.0.0.1:0] [--mode pass] [--no-stdin] [--exit-on-stdin-eof]

It prints one JSON line ``{"event": "faultproxy.ready", "listen": ..., "control": ...}``
on stdout, then takes one command per stdin line (``pass``, ``delay 0.5``,
``delay seconds=0.5``, ``blackhole``, ``reset``, ``refuse``,
``refuse reset_existing=false``, ``mode <name> [k=v ...]``, ``reset_all``, ``stats``,
``ping``, ``quit``) answering each with one JSON line, and/or serves a tiny HTTP
control API on ``--control``::

    GET  /healthz                      -> {"ok": true}
    GET  /stats                        -> counters + mode
    POST /mode  {"mode": "delay", "seconds": 0.5}    (or ?mode=delay&seconds=0.5)
    POST /reset_all
    POST /shutdown

It exits 0 on SIGTERM/SIGINT, ``quit`` or ``POST /shutdown``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import errno
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FaultProxy", "MODES", "main"]

MODES = ("pass", "delay", "blackhole", "reset", "refuse")

_CHUNK = 65536
_QUEUE_CHUNKS = 8  # per direction: bounded, so back-pressure reaches the sender
_LINGER_RST = struct.pack("ii", 1, 0)
_BACKLOG = 1024
_CONTROL_TIMEOUT = 10.0


def _arm_rst(sock: Any) -> None:
    """Make the next close() of ``sock`` send a RST instead of a FIN."""
    if sock is None:
        return
    try:
        if sock.fileno() != -1:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass


def _validate(mode: str, params: dict[str, Any]) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    params = dict(params)
    if mode == "delay":
        seconds = params.pop("seconds", None)
        if seconds is None:
            raise ValueError("mode 'delay' needs seconds=<float>")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float, str)):
            raise ValueError(f"delay seconds must be a number, got {seconds!r}")
        try:
            seconds = float(seconds)
        except ValueError:
            raise ValueError(f"delay seconds must be a number, got {seconds!r}") from None
        if not (seconds >= 0.0) or seconds == float("inf"):
            raise ValueError(f"delay seconds must be finite and >= 0, got {seconds!r}")
        out: dict[str, Any] = {"seconds": seconds}
    elif mode == "refuse":
        reset_existing = params.pop("reset_existing", True)
        if isinstance(reset_existing, str):
            low = reset_existing.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"reset_existing must be a boolean, got {reset_existing!r}")
            reset_existing = low in ("true", "1", "yes")
        if not isinstance(reset_existing, (bool, int)):
            raise ValueError(f"reset_existing must be a boolean, got {reset_existing!r}")
        out = {"reset_existing": bool(reset_existing)}
    else:
        out = {}
    if params:
        raise ValueError(f"mode {mode!r} takes no parameter(s) {sorted(params)}")
    return out


class _Conn:
    """One proxied client connection and its upstream leg (lives on the proxy loop)."""

    def __init__(self, proxy: FaultProxy, csock: socket.socket) -> None:
        self.proxy = proxy
        self.csock = csock
        self.usock: Any = None
        self.c_writer: asyncio.StreamWriter | None = None
        self.u_writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task | None = None
        self.dead = False

    # -- teardown -------------------------------------------------------------
    def kill(self, rst: bool = True) -> None:
        """Abort both legs now (RST when ``rst``) and stop the connection's task."""
        if self.dead:
            return
        self.dead = True
        if rst:
            self.proxy._resets_sent += 1
            _arm_rst(self.csock)
            _arm_rst(self.usock)
        for writer in (self.c_writer, self.u_writer):
            if writer is not None:
                writer.transport.abort()
        # Without a client transport yet, the socket is closed by finalize() once the
        # task is done (closing it under a transport being built would be unsafe).
        task = self.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()

    # -- main -----------------------------------------------------------------
    async def run(self) -> None:
        proxy = self.proxy
        try:
            c_reader, self.c_writer = await asyncio.open_connection(sock=self.csock)
            # A partitioned network does not let the upstream handshake through either.
            await proxy._wait_flowing()
            try:
                u_reader, self.u_writer = await asyncio.wait_for(
                    asyncio.open_connection(proxy.upstream_host, proxy.upstream_port),
                    timeout=proxy.connect_timeout,
                )
            except (TimeoutError, OSError):
                proxy._upstream_failures += 1
                self.kill(rst=True)
                return
            self.usock = self.u_writer.get_extra_info("socket")
            if self.dead:  # reset while we were dialling
                _arm_rst(self.usock)
                self.u_writer.transport.abort()
                return
            try:
                async with asyncio.TaskGroup() as tg:
                    self._pipe(tg, c_reader, self.u_writer, "up")
                    self._pipe(tg, u_reader, self.c_writer, "down")
            except Exception:
                # One side reset or failed: propagate it as a reset to the other side.
                self.kill(rst=True)
                return
            # Both directions saw EOF and delivered it: a clean close.
            self.dead = True
            for writer in (self.c_writer, self.u_writer):
                writer.close()
            for writer in (self.c_writer, self.u_writer):
                try:
                    await writer.wait_closed()
                except OSError:
                    pass
        except OSError:
            self.kill(rst=True)

    def finalize(self, task: asyncio.Task) -> None:
        """Task done callback: runs even when the task was cancelled before starting."""
        self.dead = True
        self.proxy._conns.discard(self)
        for writer in (self.c_writer, self.u_writer):
            if writer is not None and not writer.transport.is_closing():
                writer.transport.abort()
        if self.c_writer is None:
            try:
                self.csock.close()
            except OSError:
                pass
        if not task.cancelled() and task.exception() is not None:  # a bug, not a fault
            print(f"faultproxy: connection task failed: {task.exception()!r}", file=sys.stderr)

    def _pipe(
        self,
        tg: asyncio.TaskGroup,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        tg.create_task(self._read_side(reader, queue))
        tg.create_task(self._write_side(queue, writer, direction))

    async def _read_side(self, reader: asyncio.StreamReader, queue: asyncio.Queue) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        while True:
            await proxy._wait_flowing()
            data = await reader.read(_CHUNK)
            await queue.put((loop.time() + proxy._current_delay(), data))
            if not data:
                return

    async def _write_side(self, queue: asyncio.Queue, writer: asyncio.StreamWriter, direction: str) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        while True:
            deliver_at, data = await queue.get()
            wait = deliver_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await proxy._wait_flowing()
            if not data:
                if writer.can_write_eof() and not writer.transport.is_closing():
                    writer.write_eof()  # forward the half-close
                return
            if writer.transport.is_closing():
                raise ConnectionResetError("peer connection lost")
            # count first: the peer may see the bytes before this thread runs again
            if direction == "up":
                proxy._bytes_up += len(data)
            else:
                proxy._bytes_down += len(data)
            writer.write(data)
            await writer.drain()


class FaultProxy:
    """A TCP proxy with switchable faults, running in its own thread and event loop.

    ``FaultProxy(upstream_host, upstream_port, listen_host="127.0.0.1", listen_port=0)``;
    ``start()``/``stop()`` or ``with FaultProxy(...) as proxy:``; ``proxy.port`` is the
    bound port (stable across ``refuse`` and across stop/start).
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        connect_timeout: float = 5.0,
        name: str | None = None,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = int(upstream_port)
        self.listen_host = listen_host
        self.connect_timeout = connect_timeout
        self.name = name or f"faultproxy->{upstream_host}:{upstream_port}"
        self._requested_port = int(listen_port)
        self._port: int | None = None
        self._mode = "pass"
        self._params: dict[str, Any] = {}
        # loop-thread state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping: asyncio.Event | None = None
        self._flowing: asyncio.Event | None = None
        self._lsock: socket.socket | None = None
        self._accept_retry: asyncio.TimerHandle | None = None
        self._conns: set[_Conn] = set()
        self._lifecycle = threading.Lock()
        # counters (written on the loop thread only; plain int reads are safe)
        self._accepted = 0
        self._bytes_up = 0
        self._bytes_down = 0
        self._resets_sent = 0
        self._upstream_failures = 0
        self._active = 0

    # ------------------------------------------------------------------ public API
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connections_accepted(self) -> int:
        return self._accepted

    @property
    def connections_active(self) -> int:
        return len(self._conns)

    @property
    def bytes_to_upstream(self) -> int:
        return self._bytes_up

    @property
    def bytes_to_client(self) -> int:
        return self._bytes_down

    def stats(self) -> dict[str, Any]:
        return {
            "mode": self._mode,
            "params": dict(self._params),
            "listen": f"{self.listen_host}:{self._port}" if self._port else None,
            "upstream": f"{self.upstream_host}:{self.upstream_port}",
            "listening": self._lsock is not None,
            "connections_accepted": self._accepted,
            "connections_active": len(self._conns),
            "bytes_to_upstream": self._bytes_up,
            "bytes_to_client": self._bytes_down,
            "resets_sent": self._resets_sent,
            "upstream_connect_failures": self._upstream_failures,
        }

    def start(self) -> FaultProxy:
        with self._lifecycle:
            if self._thread is not None:
                raise RuntimeError("FaultProxy already started")
            ready: concurrent.futures.Future[None] = concurrent.futures.Future()
            thread = threading.Thread(target=self._thread_main, args=(ready,), name=self.name, daemon=True)
            self._thread = thread
            thread.start()
            try:
                ready.result(timeout=_CONTROL_TIMEOUT)
            except BaseException:
                thread.join(timeout=_CONTROL_TIMEOUT)
                self._thread = None
                raise
            return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop, join the thread."""
        with self._lifecycle:
            thread, loop, stopping = self._thread, self._loop, self._stopping
            if thread is None:
                return
            if threading.current_thread() is thread:
                raise RuntimeError("FaultProxy.stop() called from the proxy's own loop")
            if loop is not None and stopping is not None:
                try:
                    loop.call_soon_threadsafe(stopping.set)
                except RuntimeError:  # loop already closed
                    pass
            thread.join(timeout=_CONTROL_TIMEOUT)
            if thread.is_alive():
                raise RuntimeError(f"{self.name}: proxy thread did not stop")
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def set_mode(self, mode: str, **params: Any) -> None:
        """Switch the fault mode; returns once it is in effect. See the module doc."""
        clean = _validate(mode, params)
        if not self.running:
            self._mode, self._params = mode, clean
            return
        self._call(self._apply_mode(mode, clean))

    def reset_all(self) -> int:
        """RST every current connection once, keep the mode; returns how many."""
        return self._call(self._reset_all_async())

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 5.0,
        interval: float = 0.01,
        what: str = "condition",
    ) -> dict[str, Any]:
        """Poll ``predicate(self.stats())`` until true; raise TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.stats()
            if predicate(snap):
                return snap
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.name}: timed out after {timeout}s waiting for {what}; stats={snap}")
            time.sleep(interval)

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> int:
        """Wait until at least ``n`` connections have been accepted in total."""
        snap = self.wait_for(lambda s: s["connections_accepted"] >= n, timeout, what=f"{n} accepted connections")
        return snap["connections_accepted"]

    def wait_for_active(self, n: int, timeout: float = 5.0) -> int:
        """Wait until exactly ``n`` connections are open through the proxy."""
        snap = self.wait_for(lambda s: s["connections_active"] == n, timeout, what=f"{n} active connections")
        return snap["connections_active"]

    def __repr__(self) -> str:
        upstream = f"{self.upstream_host}:{self.upstream_port}"
        return f"<FaultProxy {self.listen_host}:{self._port} -> {upstream} mode={self._mode}>"

    # ------------------------------------------------------------------ loop thread
    def _call(self, coro: Any) -> Any:
        loop = self._loop
        if not self.running or loop is None:
            coro.close()
            raise RuntimeError("FaultProxy not running")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FaultProxy control called from the proxy's own loop")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=_CONTROL_TIMEOUT)

    def _thread_main(self, ready: concurrent.futures.Future) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:  # pragma: no cover - surfaced through ready
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self._loop = None
            self._stopping = None
            self._flowing = None

    async def _main(self, ready: concurrent.futures.Future) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._flowing = asyncio.Event()
        if self._mode != "blackhole":
            self._flowing.set()
        try:
            await self._open_listener()
            if self._mode == "refuse":
                self._close_listener()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(None)
        await self._stopping.wait()
        # shutdown: no new connections, drop the current ones, wait for their tasks
        self._close_listener()
        conns = list(self._conns)
        for conn in conns:
            conn.kill(rst=False)
        tasks = [c.task for c in conns if c.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports' connection_lost callbacks close sockets

    def _make_listen_socket(self, port: int) -> socket.socket:
        infos = socket.getaddrinfo(self.listen_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, type_, proto, _, sockaddr = infos[0]
        deadline = time.monotonic() + 3.0
        while True:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
                sock.listen(_BACKLOG)
                sock.setblocking(False)
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE or port == 0 or time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    async def _open_listener(self) -> None:
        if self._lsock is not None:
            return
        port = self._port if self._port is not None else self._requested_port
        lsock = self._make_listen_socket(port)
        self._lsock = lsock
        self._port = lsock.getsockname()[1]
        self._loop.add_reader(lsock.fileno(), self._on_listen_readable, lsock)  # type: ignore[union-attr]

    def _close_listener(self) -> None:
        lsock, self._lsock = self._lsock, None
        if self._accept_retry is not None:
            self._accept_retry.cancel()
            self._accept_retry = None
        if lsock is not None:
            # synchronous: the selector forgets the fd before it is closed (and reused)
            self._loop.remove_reader(lsock.fileno())  # type: ignore[union-attr]
            lsock.close()

    def _on_listen_readable(self, lsock: socket.socket) -> None:
        for _ in range(128):
            if lsock is not self._lsock:
                return
            try:
                csock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                # out of fds/buffers (or worse): back off instead of spinning
                loop = self._loop
                assert loop is not None
                loop.remove_reader(lsock.fileno())
                self._accept_retry = loop.call_later(0.05, self._resume_accept, lsock)
                return
            csock.setblocking(False)
            self._accepted += 1
            if self._mode in ("reset", "refuse"):
                self._resets_sent += 1
                _arm_rst(csock)
                csock.close()
                continue
            conn = _Conn(self, csock)
            self._conns.add(conn)
            conn.task = self._loop.create_task(conn.run())  # type: ignore[union-attr]
            conn.task.add_done_callback(conn.finalize)

    def _resume_accept(self, lsock: socket.socket) -> None:
        self._accept_retry = None
        if lsock is self._lsock:
            self._loop.add_reader(lsock.fileno(), self._on_listen_readable, lsock)  # type: ignore[union-attr]

    async def _wait_flowing(self) -> None:
        flowing = self._flowing
        assert flowing is not None
        while not flowing.is_set():
            await flowing.wait()

    def _current_delay(self) -> float:
        if self._mode == "delay":
            return float(self._params.get("seconds", 0.0))
        return 0.0

    async def _apply_mode(self, mode: str, params: dict[str, Any]) -> None:
        assert self._flowing is not None
        self._mode, self._params = mode, params
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "refuse":
            self._close_listener()
            if params.get("reset_existing", True):
                self._kill_all(rst=True)
        else:
            if mode == "reset":
                self._kill_all(rst=True)
            if self._lsock is None:
                try:
                    await self._open_listener()
                except OSError:
                    self._mode, self._params = "refuse", {"reset_existing": True}
                    raise

    def _kill_all(self, rst: bool) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.kill(rst=rst)
        return len(conns)

    async def _reset_all_async(self) -> int:
        return self._kill_all(rst=True)


# ---------------------------------------------------------------------------- CLI
def _hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad port in {text!r}") from None


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _parse_command(line: str) -> tuple[str, dict[str, Any]]:
    """``delay 0.5`` / ``delay seconds=0.5`` / ``mode refuse reset_existing=false`` ..."""
    words = line.split()
    if not words:
        return "", {}
    cmd, args = words[0].lower(), words[1:]
    if cmd == "mode":
        if not args:
            raise ValueError("usage: mode <name> [key=value ...]")
        cmd, args = args[0].lower(), args[1:]
    params: dict[str, Any] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep:
            params[key] = _scalar(value)
        elif cmd == "delay" and "seconds" not in params:
            params["seconds"] = _scalar(arg)
        else:
            raise ValueError(f"unexpected argument {arg!r}")
    return cmd, params


class _Controller:
    def __init__(self, proxy: FaultProxy, stop: threading.Event) -> None:
        self.proxy = proxy
        self.stop = stop

    def _log(self, **fields: Any) -> None:
        print(json.dumps({"ts": time.time(), **fields}), file=sys.stderr, flush=True)

    def command(self, cmd: str, params: dict[str, Any]) -> dict[str, Any]:
        proxy = self.proxy
        if cmd in MODES:
            proxy.set_mode(cmd, **params)
            self._log(event="faultproxy.mode", mode=proxy.mode, params=proxy.params)
            return {"ok": True, "mode": proxy.mode, "params": proxy.params}
        if params:
            raise ValueError(f"command {cmd!r} takes no parameters")
        if cmd == "reset_all":
            n = proxy.reset_all()
            self._log(event="faultproxy.reset_all", connections=n)
            return {"ok": True, "reset": n}
        if cmd == "stats":
            return {"ok": True, "stats": proxy.stats()}
        if cmd == "ping":
            return {"ok": True}
        if cmd in ("quit", "exit", "shutdown"):
            self.stop.set()
            return {"ok": True, "bye": True}
        raise ValueError(f"unknown command {cmd!r}")

    def safe_command(self, cmd: str, params: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.command(cmd, params)
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            return {"ok": False, "error": str(exc)}


def _http_handler(controller: _Controller) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "faultproxy"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, cmd: str, params: dict[str, Any]) -> None:
            result = controller.safe_command(cmd, params)
            self._reply(200 if result.get("ok") else 400, result)

        def do_GET(self) -> None:  # noqa: N802
            path = urlsplit(self.path).path.rstrip("/")
            if path in ("/healthz", ""):
                self._reply(200, {"ok": True})
            elif path == "/stats":
                self._dispatch("stats", {})
            else:
                self._reply(404, {"ok": False, "error": f"no such resource {path}"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            path = url.path.rstrip("/")
            params: dict[str, Any] = {k: _scalar(v) for k, v in parse_qsl(url.query)}
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._reply(400, {"ok": False, "error": "body is not JSON"})
                    return
                if not isinstance(body, dict):
                    self._reply(400, {"ok": False, "error": "body must be a JSON object"})
                    return
                params.update(body)
            if path == "/mode":
                mode = params.pop("mode", None)
                if not isinstance(mode, str):
                    self._reply(400, {"ok": False, "error": "missing 'mode'"})
                    return
                self._dispatch(mode, params)
            elif path.startswith("/mode/"):
                self._dispatch(path[len("/mode/") :], params)
            elif path in ("/reset_all", "/shutdown"):
                self._dispatch(path[1:], params)
            else:
                self._reply(404, {"ok": False, "error": f"no such resource {path}"})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.faultproxy",
        description="ChancePay TCP fault proxy (pass, delay, blackhole, reset, refuse).",
    )
    parser.add_argument("--listen", type=_hostport, required=True, help="HOST:PORT to listen on (port 0: any)")
    parser.add_argument("--upstream", type=_hostport, required=True, help="HOST:PORT to forward to")
    parser.add_argument(
        "--control",
        type=_hostport,
        default=None,
        help="HOST:PORT for the HTTP control API (port 0: any); off by default",
    )
    parser.add_argument("--mode", default="pass", help="initial mode, e.g. 'pass' or 'delay seconds=0.2'")
    parser.add_argument("--no-stdin", action="store_true", help="do not read commands from stdin")
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin closes (ties the proxy's life to its parent)"
    )
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    args = parser.parse_args(argv)

    stop = threading.Event()
    proxy = FaultProxy(
        args.upstream[0], args.upstream[1], args.listen[0], args.listen[1], connect_timeout=args.connect_timeout
    )
    try:
        cmd, params = _parse_command(args.mode)
        proxy.set_mode(cmd, **params)
    except ValueError as exc:
        parser.error(str(exc))
    controller = _Controller(proxy, stop)
    out_lock = threading.Lock()

    def emit(obj: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    proxy.start()
    httpd: ThreadingHTTPServer | None = None
    http_thread: threading.Thread | None = None
    try:
        control_addr = None
        if args.control is not None:
            httpd = ThreadingHTTPServer(args.control, _http_handler(controller))
            httpd.daemon_threads = True
            control_addr = f"{args.control[0]}:{httpd.server_address[1]}"
            http_thread = threading.Thread(target=httpd.serve_forever, name="faultproxy-control", daemon=True)
            http_thread.start()

        def on_signal(signum: int, frame: Any) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        def stdin_loop() -> None:
            for line in sys.stdin:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                try:
                    cmd, params = _parse_command(line)
                except ValueError as exc:
                    emit({"ok": False, "error": str(exc), "command": line})
                    continue
                emit({**controller.safe_command(cmd, params), "command": line})
            if args.exit_on_stdin_eof:
                stop.set()

        emit(
            {
                "event": "faultproxy.ready",
                "listen": f"{proxy.listen_host}:{proxy.port}",
                "upstream": f"{proxy.upstream_host}:{proxy.upstream_port}",
                "control": control_addr,
                "mode": proxy.mode,
                "pid": os.getpid(),
            }
        )
        if not args.no_stdin:
            threading.Thread(target=stdin_loop, name="faultproxy-stdin", daemon=True).start()
        while not stop.wait(0.2):
            pass
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if http_thread is not None:
            http_thread.join(timeout=5)
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
