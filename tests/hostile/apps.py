"""Echo apps for every integration, bare and traced, and drivers that send a corpus case.

Each app answers ``GET /echo`` with a digest of the request headers and query string *as
the framework hands them to the view*, so "same status and body as the bare app" also
proves that the middleware changed nothing the application sees.

Drivers: :func:`call_wsgi` / :func:`call_asgi` go through the WSGI/ASGI callable in-process;
:func:`send_raw` writes the case's bytes verbatim on a socket to a real server (no client
library that would validate or normalise headers).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import socket
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request  # module level: FastAPI resolves annotations here

from ..servers import answer_lifespan, wsgi_body
from .corpus import Case

INTEGRATIONS = ("wsgi", "flask", "django_wsgi", "django_asgi", "asgi", "starlette", "fastapi")
WSGI_KINDS = frozenset({"wsgi", "flask", "django_wsgi"})
MIB = 1 << 20


def digest(pairs: Iterable[tuple[str, Any]]) -> bytes:
    """``<count>:<sha256>`` over the (name, value) pairs, values as str or bytes."""
    h = hashlib.sha256()
    n = 0
    for name, value in pairs:
        n += 1
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
        h.update(name.encode("utf-8", "surrogatepass") + b"\0" + raw + b"\0")
    return f"{n}:{h.hexdigest()}".encode()


_DIGEST = re.compile(rb"[0-9]+:[0-9a-f]{64}")


def from_echo(outcome: tuple[int, bytes]) -> bool:
    """True when the response came from the echo view (the request reached the app)."""
    return outcome[0] == 200 and _DIGEST.fullmatch(outcome[1]) is not None


def _environ_pairs(environ: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs = sorted((k, v) for k, v in environ.items() if k.startswith("HTTP_"))
    pairs.append(("QUERY_STRING", environ.get("QUERY_STRING", "")))
    return pairs


# --------------------------------------------------------------------------- WSGI apps


def echo_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = digest(_environ_pairs(environ))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def flask_echo() -> Any:
    from flask import Flask, request

    app = Flask("hostile_echo")

    @app.route("/echo")
    def echo() -> bytes:
        pairs: list[tuple[str, Any]] = sorted(request.headers.items())
        pairs.append(("query", request.query_string))
        return digest(pairs)

    return app


def django_echo_view(request: Any) -> Any:
    from django.http import HttpResponse

    return HttpResponse(digest(_environ_pairs(request.META)), content_type="text/plain")


DJANGO_URLCONF = "tests.hostile.django_urls"
DJANGO_MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DJANGO_TRACED = ["sentry_tracing_mw.integrations.django.TracingMiddleware", *DJANGO_MIDDLEWARE]


# --------------------------------------------------------------------------- ASGI apps


def _scope_pairs(scope: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = [
        (bytes(k).decode("latin-1"), bytes(v)) for k, v in scope.get("headers") or ()
    ]
    pairs.append(("query", bytes(scope.get("query_string") or b"")))
    return pairs


async def echo_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    body = digest(_scope_pairs(scope))
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def starlette_echo() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request: Request) -> Response:
        return Response(digest(_scope_pairs(request.scope)), media_type="text/plain")

    return Starlette(routes=[Route("/echo", echo)])


def fastapi_echo() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import Response

    app = FastAPI()

    @app.get("/echo")
    async def echo(request: Request) -> Response:
        return Response(digest(_scope_pairs(request.scope)), media_type="text/plain")

    return app


def build(kind: str, traced: bool) -> Any:
    """The echo app of integration ``kind`` (call ``stm.init`` first when ``traced``)."""
    if kind == "wsgi":
        from sentry_tracing_mw.integrations.wsgi import TracingMiddleware

        return TracingMiddleware(echo_wsgi) if traced else echo_wsgi
    if kind == "asgi":
        from sentry_tracing_mw.integrations.asgi import TracingMiddleware as AsgiMiddleware

        return AsgiMiddleware(echo_asgi) if traced else echo_asgi
    if kind == "flask":
        from sentry_tracing_mw.integrations.flask import FlaskTracing

        app = flask_echo()
        if traced:
            FlaskTracing(app)
        return app
    if kind in ("starlette", "fastapi"):
        from sentry_tracing_mw.integrations.starlette import TracingMiddleware as Mw

        app = starlette_echo() if kind == "starlette" else fastapi_echo()
        if traced:
            app.add_middleware(Mw)
        return app
    if kind in ("django_wsgi", "django_asgi"):
        from django.core.handlers.asgi import ASGIHandler
        from django.core.handlers.wsgi import WSGIHandler
        from django.test import override_settings

        # The middleware chain is built when the handler is created.
        with override_settings(MIDDLEWARE=DJANGO_TRACED if traced else DJANGO_MIDDLEWARE):
            return WSGIHandler() if kind == "django_wsgi" else ASGIHandler()
    raise ValueError(kind)


@contextmanager
def django_urls() -> Iterator[None]:
    """Route Django requests to the echo view for the duration (all threads)."""
    from django.test import override_settings

    with override_settings(ROOT_URLCONF=DJANGO_URLCONF):
        yield


# --------------------------------------------------------------------------- in-process


def wsgi_environ(case: Case) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/echo",
        "QUERY_STRING": case.query.decode("latin-1"),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    environ.update(case.environ())
    return environ


def call_wsgi(app: Any, case: Case, environ: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """One request through a WSGI callable: (status code, body); ``environ`` prebuilt."""
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    environ = wsgi_environ(case) if environ is None else dict(environ)
    environ["wsgi.input"] = io.BytesIO(b"")
    result = app(environ, start_response)
    body = wsgi_body(result)
    return int(status[-1][:3]), body


def asgi_scope(case: Case) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": case.query,
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *case.asgi_headers()],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def _call_asgi(
    app: Any, case: Case, scope: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    done = asyncio.Event()
    sent_request = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                done.set()

    scope = asgi_scope(case) if scope is None else {**scope, "state": {}}
    await app(scope, receive, send)
    done.set()
    return status, b"".join(chunks)


class AsgiCaller:
    """Calls an ASGI app in-process on one long-lived event loop."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()  # (asyncio.Runner is 3.11+)

    def __call__(
        self, app: Any, case: Case, scope: dict[str, Any] | None = None
    ) -> tuple[int, bytes]:
        return self._loop.run_until_complete(_call_asgi(app, case, scope))

    def close(self) -> None:
        self._loop.close()


def prebuilt(kind: str, case: Case) -> dict[str, Any]:
    """The environ or scope for ``case``, built once (drivers copy it per call)."""
    return wsgi_environ(case) if kind in WSGI_KINDS else asgi_scope(case)


def caller(kind: str) -> tuple[Callable[[Any, Case], tuple[int, bytes]], Callable[[], None]]:
    """The in-process driver for ``kind`` and its cleanup."""
    if kind in WSGI_KINDS:
        return call_wsgi, lambda: None
    runner = AsgiCaller()
    return runner, runner.close


# --------------------------------------------------------------------------- real servers


def raw_request(case: Case) -> bytes:
    target = b"/echo" + (b"?" + case.query if case.query else b"")
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in case.headers]
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def send_raw(base_url: str, case: Case, timeout: float = 30.0) -> tuple[int, bytes]:
    """Write the case verbatim to the server; (status, body), status 0 if none came back."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        try:
            sock.sendall(raw_request(case))
        except OSError:
            pass  # the server may answer (and close) before reading everything
        received = bytearray()
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/"):
        return 0, b""
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body
