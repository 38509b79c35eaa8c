"""Real HTTP servers on 127.0.0.1 for tests: threaded WSGI (werkzeug), uvicorn (ASGI) and
gunicorn (a subprocess with sync workers)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

__all__ = [
    "answer_lifespan",
    "free_port",
    "pipelined",
    "run_asgi",
    "run_gunicorn",
    "run_wsgi",
    "wsgi_body",
]


async def answer_lifespan(receive: Any, send: Any) -> None:
    """Answer an ASGI lifespan scope for a bare test app: startup, then shutdown, then return."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def wsgi_body(result: Any) -> bytes:
    """Join a WSGI app's response iterable and close it, as a server does."""
    try:
        return b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def run_wsgi(app: Any, *, threaded: bool = True) -> Iterator[str]:
    """Serve a WSGI app with werkzeug's threaded server; yields the base URL.

    On exit it waits (up to 5 s) until every request has been handled completely, the body
    iterable's ``close()`` included. A client has the whole response before the server thread
    closes the iterable, and werkzeug's request threads are daemons that ``server_close()``
    does not join, so without this wait a test could flush before the last transaction ended.
    """
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=threaded)
    in_flight = _InFlight()
    handler = server.RequestHandlerClass

    class _Tracked(handler):  # type: ignore[misc, valid-type]
        def run_wsgi(self) -> None:
            with in_flight:
                super().run_wsgi()

    server.RequestHandlerClass = _Tracked
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        idle = in_flight.wait_idle(5)
    # (after the finally: only when the test body itself passed)
    assert idle, "the WSGI server was still handling a request 5 s after shutdown"


@contextmanager
def run_waitress(app: Any) -> Iterator[int]:
    """Serve a WSGI app with waitress (2 threads) on 127.0.0.1; yields the port."""
    from waitress.server import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield int(server.effective_port)
    finally:
        server.close()
        thread.join(5)


class _InFlight:
    """Counts requests being handled; ``wait_idle`` blocks until none is."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)


@contextmanager
def run_asgi(app: Any, **config: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a background thread; yields the base URL."""
    import uvicorn

    port = free_port()
    cfg = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="auto", **config
    )
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
    assert not thread.is_alive(), "uvicorn did not shut down within 10 s"


@contextmanager
def run_gunicorn(
    app: str,
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    ready_path: str,
    workers: int = 1,
    preload: bool = False,
    worker_class: str = "sync",
) -> Iterator[tuple[str, int]]:
    """Serve ``app`` (``module:attr``) with gunicorn (sync workers unless ``worker_class``
    says otherwise) in a new session.

    Yields (base URL, master pid) once ``ready_path`` answers; the output goes to
    ``log_path`` (a file never blocks the server). On exit the whole process group gets
    SIGTERM, then SIGKILL if it does not stop in time.
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "gunicorn",
        "-w", str(workers), "-k", worker_class,
        "-b", f"127.0.0.1:{port}",
        "--graceful-timeout", "5",
        "--log-level", "warning",
    ]  # fmt: skip
    if preload:
        cmd.append("--preload")
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [*cmd, app],
        cwd=cwd,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + ready_path, timeout=(1, 10))  # a busy machine boots slowly
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = log_path.read_text(errors="replace")
                    raise RuntimeError(f"gunicorn did not start: {out}") from None
                time.sleep(0.1)
        yield base, proc.pid
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
        log.close()


def wait_listening(port: int, proc: subprocess.Popen[Any], limit: float = 20) -> None:
    """Wait until a server process started on ``port`` accepts connections (fails if it
    exits or ``limit`` seconds pass first)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, "no server"
            time.sleep(0.05)


def sigterm_with_queued_transactions(
    sentry: Any, script: str, paths: tuple[str, str, str], env: dict[str, str] | None = None
) -> list[str]:
    """Serve from ``script`` (``python -c script DSN PORT``) and check its SIGTERM flush.

    ``paths``: a warm-up request whose transaction arrives, then one whose envelope hangs
    in the local Sentry (blocking the sender) and one that stays queued behind it. The
    server gets SIGTERM and Sentry is released half a second later; returns the names of
    the transactions Sentry received (sorted).
    """
    port = free_port()
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, sentry.dsn, str(port)],
        cwd=root,
        env={**(os.environ if env is None else env), "PYTHONPATH": root},
    )
    base = f"http://127.0.0.1:{port}"
    warmup, first, queued = paths
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(base + warmup, timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "no server"
                time.sleep(0.05)
        assert sentry.wait_for(1, timeout=5)
        sentry.hang()  # the next envelope blocks the worker; later ones stay queued
        requests.get(base + first, timeout=5)
        assert sentry.wait_hanging(5)
        requests.get(base + queued, timeout=5)
        proc.send_signal(signal.SIGTERM)
        threading.Timer(0.5, sentry.release).start()
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert sentry.wait_for(3, timeout=5)
    return sorted(t["transaction"] for t in sentry.transactions())


def pipelined(base: str, requests_: list[tuple[str, str]], timeout: float = 10) -> list[Any]:
    """Send every request on one connection in one write (HTTP/1.1 pipelining), then read
    the responses in order: the server finds each next request already buffered when it
    completes a response. Returns ``http.client.HTTPResponse`` objects, bodies read."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(
            b"".join(
                f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
                for method, path in requests_
            )
        )
        fp = sock.makefile("rb")

        class _Shared:  # the connection's one buffered reader; a response may not close it
            def __getattr__(self, name: str) -> Any:
                return getattr(fp, name)

            def close(self) -> None:
                pass

        class _Sock:
            def makefile(self, *_: Any, **__: Any) -> Any:
                return _Shared()

        out = []
        for method, _ in requests_:
            response = http.client.HTTPResponse(_Sock(), method=method)  # type: ignore[arg-type]
            response.begin()
            response.body = response.read()  # type: ignore[attr-defined]
            out.append(response)
        return out
