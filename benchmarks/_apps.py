"""The benchmark apps and the tracer configurations, shared by every benchmark.

One route, ``/users/<id>``, returning a tiny text body, in Flask, Django, Starlette and
FastAPI. ``install(framework, config, dsn)`` builds the app with one tracer configuration
and returns it with a ``flush`` callable:

* ``bare``: no tracing;
* ``ours-1.0`` / ``ours-0.0``: sentry-tracing-mw, the DSN pointing at the discarding sink
  (another process), so sampled transactions are serialized, gzipped and POSTed by the real
  transport on its worker thread;
* ``sdk-1.0`` / ``sdk-0.0``: sentry-sdk with its framework integration (and its default
  integrations) and a transport that, on a worker thread as sentry-sdk's HTTP transport
  does, serializes each envelope and gzips it at sentry-sdk's default level 9, then
  discards it (no network: generous to sentry-sdk);
* ``otel-on`` / ``otel-off``: OpenTelemetry SDK with the framework's instrumentation,
  ``ALWAYS_ON`` / ``TraceIdRatioBased(0)`` sampler, a ``BatchSpanProcessor`` and an exporter
  that encodes the spans to OTLP protobuf bytes and discards them.

This module is also Django's URLconf.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any

FRAMEWORKS = ("flask", "django", "starlette", "fastapi")
CONFIGS = ("bare", "ours-1.0", "ours-0.0", "sdk-1.0", "sdk-0.0", "otel-on", "otel-off")
ASGI = ("starlette", "fastapi")

TRACE_ID = "771a43a4192642f0b136d5159a501700"
PARENT_ID = "b0e6f15b45c36b12"


def sampled(config: str) -> bool:
    """Whether the configuration samples (and so what incoming decision it is sent)."""
    return config in ("bare", "ours-1.0", "sdk-1.0", "otel-on")


def incoming_headers(is_sampled: bool, i: int = 0) -> dict[str, str]:
    """The sentry-trace + baggage an upstream Sentry SDK sends, with the given decision."""
    trace_id = f"{i:08x}{TRACE_ID[8:]}"
    flag, rate, word = ("1", "1.0", "true") if is_sampled else ("0", "0.0", "false")
    return {
        "sentry-trace": f"{trace_id}-{PARENT_ID}-{flag}",
        "baggage": (
            f"sentry-trace_id={trace_id},sentry-public_key=public,sentry-sample_rate={rate},"
            f"sentry-sample_rand=0.5,sentry-sampled={word},sentry-environment=production,"
            "sentry-release=upstream%401.0,sentry-transaction=%2Fcheckout"
        ),
    }


# --------------------------------------------------------------------------- the apps

urlpatterns: list[Any] = []  # Django URLconf (this module)


def _django_view(request: Any, id: int) -> Any:
    from django.http import HttpResponse

    return HttpResponse(b"user", content_type="text/plain")


def make_flask() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.route("/users/<int:user_id>")
    def get_user(user_id: int) -> str:
        return "user"

    return app


def make_django(middleware: list[str]) -> Any:
    import django
    from django.conf import settings
    from django.urls import path

    urlpatterns[:] = [path("users/<int:id>", _django_view)]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=middleware,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_I18N=False,
        USE_TZ=True,
        LOGGING_CONFIG=None,
    )
    django.setup()


def make_starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def user(request: Request) -> Response:
        return PlainTextResponse("user")

    return Starlette(routes=[Route("/users/{id:int}", user)])


def make_fastapi() -> Any:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/users/{user_id}", response_class=PlainTextResponse)
    async def get_user(user_id: int) -> str:
        return "user"

    return app


# --------------------------------------------------------------------------- rival plumbing


def sdk_transport() -> Any:
    """A sentry-sdk transport doing the worker-side work of its HTTP transport minus I/O:
    serialize each envelope and compress it as that transport does by default (brotli at
    quality 4 when the brotli module is importable, else gzip level 9), then discard it."""
    import gzip
    import io
    import queue
    import threading

    from sentry_sdk import transport as sdk_transport_module
    from sentry_sdk.transport import Transport

    brotli = getattr(sdk_transport_module, "brotli", None)

    def compress(data: bytes) -> bytes:
        if brotli is not None:
            return bytes(brotli.compress(data, quality=4))
        return gzip.compress(data, 9)

    class SerializeCompressDiscard(Transport):
        def __init__(self, options: Any = None) -> None:
            super().__init__(options)
            self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
            self._pending = 0
            self._cond = threading.Condition()
            threading.Thread(target=self._run, daemon=True, name="bench-sdk-transport").start()

        def _run(self) -> None:
            while True:
                envelope = self._queue.get()
                buf = io.BytesIO()
                envelope.serialize_into(buf)
                compress(buf.getvalue())
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

        def capture_envelope(self, envelope: Any) -> None:
            with self._cond:
                self._pending += 1
            self._queue.put(envelope)

        def flush(self, timeout: float, callback: Any = None) -> None:
            with self._cond:
                self._cond.wait_for(lambda: self._pending == 0, timeout)

    return SerializeCompressDiscard


def sdk_compression() -> str:
    """How ``sdk_transport`` compresses, for the report."""
    from sentry_sdk import transport as sdk_transport_module

    if getattr(sdk_transport_module, "brotli", None) is not None:
        return "brotli at quality 4"
    return "gzip at level 9"


def otel_provider(on: bool, batch: bool = True) -> Any:
    """An OpenTelemetry tracer provider, made global, with an encode-and-discard exporter."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, TraceIdRatioBased

    class EncodeAndDiscard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    provider = TracerProvider(sampler=ALWAYS_ON if on else TraceIdRatioBased(0.0))
    processor = BatchSpanProcessor if batch else SimpleSpanProcessor
    provider.add_span_processor(processor(EncodeAndDiscard()))
    trace.set_tracer_provider(provider)
    return provider


# --------------------------------------------------------------------------- install


def install(framework: str, config: str, dsn: str) -> tuple[Any, Callable[[], object]]:
    """Build ``framework``'s app under ``config``; return (WSGI/ASGI callable, flush)."""
    flush: Callable[[], object] = lambda: None  # noqa: E731
    rate = 1.0 if sampled(config) else 0.0
    middleware: list[str] = []

    if config.startswith("ours"):
        import sentry_tracing_mw as stm

        stm.init(dsn=dsn, traces_sample_rate=rate)
        flush = lambda: stm.flush(30)  # noqa: E731
        middleware = ["sentry_tracing_mw.integrations.django.TracingMiddleware"]
    elif config.startswith("sdk"):
        import sentry_sdk
        from sentry_sdk.integrations.django import DjangoIntegration
        from sentry_sdk.integrations.fastapi import FastApiIntegration
        from sentry_sdk.integrations.flask import FlaskIntegration
        from sentry_sdk.integrations.starlette import StarletteIntegration

        integration: Any = {
            "flask": lambda: [FlaskIntegration(transaction_style="url")],
            "django": lambda: [DjangoIntegration(transaction_style="url")],
            "starlette": lambda: [StarletteIntegration(transaction_style="url")],
            "fastapi": lambda: [
                StarletteIntegration(),
                FastApiIntegration(transaction_style="url"),
            ],
        }[framework]()
        sentry_sdk.init(
            dsn="http://public@127.0.0.1:9/1",
            # Only the framework's integration (plus sentry-sdk's defaults): with every
            # framework in one environment, auto-enabling would add the others' integrations.
            auto_enabling_integrations=False,
            transport=sdk_transport(),
            traces_sample_rate=rate,
            integrations=integration,
        )
        flush = lambda: sentry_sdk.flush(30)  # noqa: E731
    elif config.startswith("otel"):
        provider = otel_provider(config == "otel-on")
        flush = lambda: provider.force_flush(30_000)  # noqa: E731

    if framework == "flask":
        app = make_flask()
        if config.startswith("ours"):
            from sentry_tracing_mw.integrations.flask import FlaskTracing

            FlaskTracing(app)
        elif config.startswith("otel"):
            from opentelemetry.instrumentation.flask import FlaskInstrumentor

            FlaskInstrumentor().instrument_app(app)
        return app, flush
    if framework == "django":
        make_django(middleware)
        if config.startswith("otel"):
            from opentelemetry.instrumentation.django import DjangoInstrumentor

            DjangoInstrumentor().instrument()
        from django.core.wsgi import get_wsgi_application

        return get_wsgi_application(), flush
    if framework in ASGI:
        app = make_starlette() if framework == "starlette" else make_fastapi()
        if config.startswith("ours"):
            from sentry_tracing_mw.integrations.starlette import TracingMiddleware

            app.add_middleware(TracingMiddleware)
        elif config.startswith("otel"):
            if framework == "starlette":
                from opentelemetry.instrumentation.starlette import StarletteInstrumentor

                StarletteInstrumentor.instrument_app(app)
            else:
                from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

                FastAPIInstrumentor.instrument_app(app)
        return app, flush
    raise SystemExit(f"unknown framework {framework!r}")


# --------------------------------------------------------------------------- the floor

#: The floor layer's per-request context (see ``FloorMiddleware``).
_FLOOR_TRACE: ContextVar[int | None] = ContextVar("bench_floor_trace", default=None)


class _FloorBody:
    """A WSGI body passed through; the floor's context ends when the server closes it."""

    __slots__ = ("_body", "_token")

    def __init__(self, body: Any, token: Token[int | None]) -> None:
        self._body = body
        self._token = token

    def __iter__(self) -> Any:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            _FLOOR_TRACE.reset(self._token)


def _floor_wsgi(app: Any) -> Any:
    """The floor as a WSGI layer (Flask's ``wsgi_app``, where ours goes)."""
    draw = random.getrandbits

    def floor(environ: dict[str, Any], start_response: Any) -> Any:
        token = _FLOOR_TRACE.set(draw(128))
        try:
            body = app(environ, start_response)
        except BaseException:
            _FLOOR_TRACE.reset(token)
            raise
        return _FloorBody(body, token)

    return floor


class FloorMiddleware:
    """The least any tracer that keeps a per-request trace context does, and nothing else:
    one layer where ours goes that sets a context variable to a new random 128-bit trace id
    for the request and resets it when the request is done (ASGI: when the app returns;
    WSGI: the body wrapped, reset at its ``close()``, see ``_floor_wsgi``). No headers
    read, no sampling, no span, no name, no wrapped ``send``. ``floor`` in the paired
    table: the part of an overhead no tracing code can remove."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._draw = random.getrandbits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _FLOOR_TRACE.set(self._draw(128))
        try:
            await self.app(scope, receive, send)
        finally:
            _FLOOR_TRACE.reset(token)


class DjangoFloorMiddleware:
    """``FloorMiddleware`` as a Django middleware (first in ``MIDDLEWARE``, where ours goes):
    reset when the response is returned."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        self._draw = random.getrandbits

    def __call__(self, request: Any) -> Any:
        token = _FLOOR_TRACE.set(self._draw(128))
        try:
            return self.get_response(request)
        finally:
            _FLOOR_TRACE.reset(token)


# --------------------------------------------------------------------------- the contract's floor


class _ContractRecord:
    """A request's trace state in the contract's floor: the trace it continues (or a new
    trace id) and its end, counted as an unsampled transaction for client reports. The
    least a request's transaction can be; ours is a full transaction object (see
    ``ContractFloorMiddleware``)."""

    __slots__ = ("incoming", "trace_id")

    def __init__(self, incoming: Any) -> None:
        self.incoming = incoming
        self.trace_id = incoming.trace_id if incoming is not None else random.getrandbits(128)

    def finish(self) -> None:
        _CLIENT_OF[0]().reports.record_unsampled(0)


#: ``get_client`` (imported by the contract's floor layers, not by this module's import).
_CLIENT_OF: list[Any] = [None]


def _contract_start(path: str, incoming: Any, origin: str) -> Any:
    """The request's trace state (see ``_ContractRecord``)."""
    return _ContractRecord(incoming)


def _contract_wsgi(app: Any) -> Any:
    """``ContractFloorMiddleware`` as a WSGI layer (Flask's ``wsgi_app``, where ours goes)."""
    from sentry_tracing_mw._client import get_client
    from sentry_tracing_mw._context import CURRENT_SPAN
    from sentry_tracing_mw._propagation import extract_environ
    from sentry_tracing_mw.integrations._common import REQUEST_TX_KEY

    _CLIENT_OF[0] = get_client

    def contract(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get(REQUEST_TX_KEY) is not None:
            return app(environ, start_response)
        incoming = (
            extract_environ(environ)
            if "HTTP_SENTRY_TRACE" in environ or "HTTP_TRACEPARENT" in environ
            else None
        )
        tx = _contract_start(environ.get("PATH_INFO") or "/", incoming, "auto.http.flask")
        environ[REQUEST_TX_KEY] = tx
        token = CURRENT_SPAN.set(tx)
        try:
            return app(environ, start_response)  # (the benchmark's bodies are complete)
        finally:
            CURRENT_SPAN.reset(token)
            del environ[REQUEST_TX_KEY]
            tx.finish()

    return contract


class ContractFloorMiddleware:
    """What the contract makes an unsampled request cost at least, where ours goes, with
    none of our tracing code but the header parsing: the trace headers read and parsed
    (to continue the trace and learn its decision), a record of the request's trace made
    current for the request (a context variable) and marked in the scope for inner
    middleware, the trace context cleared around the response's last message (a server
    may start the connection's next request inside that send), the request counted for
    client reports at its end. No transaction object (``_ContractRecord``), route name,
    request data, error capture or framework hooks; WSGI: no body wrapper (the benchmark's
    bodies are complete, which ours learns from the framework). ``contract`` in the
    paired table."""

    def __init__(self, app: Any) -> None:
        from sentry_tracing_mw._client import get_client
        from sentry_tracing_mw._context import CURRENT_SPAN
        from sentry_tracing_mw.integrations.asgi import SCOPE_KEY, _incoming

        _CLIENT_OF[0] = get_client
        self.app = app
        self._span = CURRENT_SPAN
        self._key = SCOPE_KEY
        self._incoming = _incoming

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        key = self._key
        if scope["type"] != "http" or key in scope:
            await self.app(scope, receive, send)
            return
        span = self._span
        tx = _contract_start(scope["path"], self._incoming(scope), "auto.http.starlette")
        scope[key] = tx

        async def contract_send(message: dict[str, Any]) -> None:
            if message.get("more_body") or message["type"] != "http.response.body":
                await send(message)
                return
            cleared = span.set(None)
            try:
                await send(message)
            finally:
                span.reset(cleared)

        token = span.set(tx)
        try:
            await self.app(scope, receive, contract_send)
        finally:
            span.reset(token)
            del scope[key]
            tx.finish()


class DjangoContractFloorMiddleware:
    """``ContractFloorMiddleware`` as a Django middleware (first in ``MIDDLEWARE``)."""

    def __init__(self, get_response: Any) -> None:
        from sentry_tracing_mw._client import get_client
        from sentry_tracing_mw._context import CURRENT_SPAN
        from sentry_tracing_mw._propagation import extract_environ

        _CLIENT_OF[0] = get_client
        self.get_response = get_response
        self._span = CURRENT_SPAN
        self._extract = extract_environ

    def __call__(self, request: Any) -> Any:
        meta = request.META
        incoming = (
            self._extract(meta)
            if "HTTP_SENTRY_TRACE" in meta or "HTTP_TRACEPARENT" in meta
            else None
        )
        tx = _contract_start(request.path, incoming, "auto.http.django")
        request.__dict__["sentry_tracing_mw.transaction"] = tx  # (the owner's mark)
        token = self._span.set(tx)
        try:
            return self.get_response(request)
        finally:
            self._span.reset(token)
            tx.finish()


#: ``paired_apps`` modes: the app paired with bare is ours, the floor layer, the contract's
#: floor, or bare (A/A).
PAIRED_MODES = ("ours", "floor", "contract", "bare")


def paired_apps(framework: str, mode: str = "ours") -> dict[str, Any]:
    """A bare app and, as ``ours``, the app traced by ours (``init()`` already called),
    under the floor layer (``mode="floor"``), the contract's floor (``"contract"``), or bare again (``mode="bare"``: the A/A
    control); in one process."""
    if mode not in PAIRED_MODES:
        raise SystemExit(f"unknown paired mode {mode!r}")
    if framework == "flask":
        from sentry_tracing_mw.integrations.flask import FlaskTracing

        ours = make_flask()
        if mode == "ours":
            FlaskTracing(ours)
        elif mode == "floor":
            ours.wsgi_app = _floor_wsgi(ours.wsgi_app)  # type: ignore[method-assign]
        elif mode == "contract":
            ours.wsgi_app = _contract_wsgi(ours.wsgi_app)  # type: ignore[method-assign]
        return {"bare": make_flask(), "ours": ours}
    if framework == "django":
        from django.conf import settings
        from django.core.wsgi import get_wsgi_application

        make_django([])
        bare = get_wsgi_application()
        if mode == "ours":
            settings.MIDDLEWARE = ["sentry_tracing_mw.integrations.django.TracingMiddleware"]
        elif mode == "floor":
            settings.MIDDLEWARE = [f"{__name__}.DjangoFloorMiddleware"]
        elif mode == "contract":
            settings.MIDDLEWARE = [f"{__name__}.DjangoContractFloorMiddleware"]
        return {"bare": bare, "ours": get_wsgi_application()}
    if framework in ASGI:
        from sentry_tracing_mw.integrations.starlette import TracingMiddleware

        make = make_starlette if framework == "starlette" else make_fastapi
        ours = make()
        if mode == "ours":
            ours.add_middleware(TracingMiddleware)
        elif mode == "floor":
            ours.add_middleware(FloorMiddleware)
        elif mode == "contract":
            ours.add_middleware(ContractFloorMiddleware)
        return {"bare": make(), "ours": ours}
    raise SystemExit(f"unknown framework {framework!r}")


# --------------------------------------------------------------------------- drivers


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def wsgi_environs(n: int, is_sampled: bool, start: int = 0) -> list[dict[str, Any]]:
    """``n`` fresh environs for GET /users/<id>; every second one continues a trace."""
    import io

    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_ACCEPT": "*/*",
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    out = []
    for k in range(start, start + n):
        env = dict(base)
        env["PATH_INFO"] = f"/users/{k % 1000}"
        env["wsgi.input"] = io.BytesIO(b"")
        if k % 2:
            for name, value in incoming_headers(is_sampled, k).items():
                env["HTTP_" + name.upper().replace("-", "_")] = value
        out.append(env)
    return out


def call_wsgi(app: Any, env: dict[str, Any]) -> None:
    result = app(env, _start_response)
    try:
        for _ in result:
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def asgi_scopes(n: int, is_sampled: bool, start: int = 0) -> list[dict[str, Any]]:
    base_headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"user-agent", b"bench/1.0"),
        (b"accept", b"*/*"),
    ]
    out = []
    for k in range(start, start + n):
        headers = list(base_headers)
        if k % 2:
            headers += [
                (a.encode(), b.encode()) for a, b in incoming_headers(is_sampled, k).items()
            ]
        path = f"/users/{k % 1000}"
        out.append(
            {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": b"",
                "root_path": "",
                "headers": headers,
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
                "state": {},
            }
        )
    return out


_REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> dict[str, Any]:
    return _REQUEST


async def _send(message: dict[str, Any]) -> None:
    return None


async def call_asgi(app: Any, scope: dict[str, Any]) -> None:
    await app(scope, _receive, _send)


# --------------------------------------------------------------------------- real servers


def served_app() -> Any:
    """The app a real server imports: framework/config/DSN from BENCH_* environment vars."""
    framework = os.environ["BENCH_FRAMEWORK"]
    config = os.environ["BENCH_CONFIG"]
    app, _ = install(framework, config, os.environ.get("BENCH_DSN", ""))
    return app
