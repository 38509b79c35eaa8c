"""Test apps for the ASGI, Starlette and FastAPI tests (also run under sentry-sdk for parity).

Each factory returns a fresh app; ``traced=False`` gives the bare app (no middleware of
ours), e.g. for sentry-sdk or for "identical to no middleware" checks.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import BackgroundTasks as FastAPIBackgroundTasks
from starlette.applications import Starlette
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.endpoints import HTTPEndpoint
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

import sentry_tracing_mw as stm

from .servers import answer_lifespan

#: (method, path, headers) -> expected name under our url/route style.
STARLETTE_NAMES: list[tuple[str, str, dict[str, str], str]] = [
    ("GET", "/users/42", {}, "/users/{user_id:int}"),
    ("GET", "/api/v1/items/abc", {}, "/api/v1/items/{slug}"),
    ("GET", "/sub/things/7", {}, "/sub/things/{thing_id}"),
    ("GET", "/sub/deeper/x/leaf/3", {}, "/sub/deeper/{name}/leaf/{leaf_id}"),
    ("GET", "/host-route", {"host": "api.example.com"}, "/host-route"),
    ("GET", "/class-view", {}, "/class-view"),
    ("GET", "/nope", {}, "GET 404"),
    ("POST", "/users/42", {}, "POST 405"),
    ("GET", "/api/v1/missing", {}, "GET 404"),
    # leaf apps under a Mount are named after the mount, as sentry-sdk names them
    ("GET", "/static/__init__.py", {}, "/static"),
    ("GET", "/raw/a/b", {}, "/raw"),
    ("GET", "/empty/x", {}, "GET 404"),  # an empty router is no leaf app
]

FASTAPI_NAMES: list[tuple[str, str, dict[str, str], str]] = [
    ("GET", "/users/42", {}, "/users/{user_id}"),
    ("GET", "/api/v1/items/abc", {}, "/api/v1/items/{slug}"),
    ("GET", "/api/v1/nested/deep/9", {}, "/api/v1/nested/deep/{x}"),
    ("GET", "/sub/things/7", {}, "/sub/things/{thing_id}"),
    ("GET", "/nope", {}, "GET 404"),
    ("POST", "/users/42", {}, "POST 405"),
]

BG_DONE: list[float] = []  # monotonic end times of background tasks (in-process servers)
STREAM_SECONDS = 0.3


class HandledError(Exception):
    """Turned into a 500 by an app exception handler."""


class ClientError(Exception):
    """Turned into a 418 by an app exception handler (not an error)."""


async def _users(request: Request) -> Response:
    return JSONResponse({"user": request.path_params["user_id"], "trace": stm.get_trace_headers()})


async def _item(request: Request) -> Response:
    return PlainTextResponse(request.path_params["slug"])


async def _thing(request: Request) -> Response:
    return PlainTextResponse(str(request.path_params["thing_id"]))


async def _leaf(request: Request) -> Response:
    return PlainTextResponse("leaf")


async def _host_route(request: Request) -> Response:
    return PlainTextResponse("host")


class ClassView(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return PlainTextResponse("class")


async def _slow_chunks() -> AsyncIterator[bytes]:
    for _ in range(6):
        await asyncio.sleep(STREAM_SECONDS / 6)
        yield b"x" * 10


async def _stream(request: Request) -> Response:
    return StreamingResponse(_slow_chunks(), media_type="text/plain")


async def _endless_chunks() -> AsyncIterator[bytes]:
    for _ in range(400):
        await asyncio.sleep(0.01)
        yield b"y" * 65536


async def _endless(request: Request) -> Response:
    return StreamingResponse(_endless_chunks(), media_type="application/octet-stream")


def http_scope(path: str, host: bytes = b"x") -> dict[str, Any]:
    """A plain HTTP GET scope for ``path``, as a server gives it (ASGI 2.4)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", host)],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }


def _file_path() -> str:
    path = os.path.join(tempfile.gettempdir(), "stm_asgi_test_file.txt")
    if not os.path.exists(path):
        with open(path, "wb") as fh:
            fh.write(b"file-body\n" * 100)
    return path


async def _file(request: Request) -> Response:
    return FileResponse(_file_path())


async def bg_sleep() -> None:
    await asyncio.sleep(STREAM_SECONDS)
    BG_DONE.append(time.monotonic())


def bg_sync() -> None:
    time.sleep(0.01)


async def _bg(request: Request) -> Response:
    tasks = BackgroundTasks()
    tasks.add_task(bg_sleep)
    tasks.add_task(bg_sync)
    return PlainTextResponse("bg", background=tasks)


async def _bg_one(request: Request) -> Response:
    return PlainTextResponse("bg1", background=BackgroundTask(bg_sync))


async def _error(request: Request) -> Response:
    raise ValueError("boom")


async def _handled(request: Request) -> Response:
    raise HandledError("handled")


async def _client_error(request: Request) -> Response:
    raise ClientError("teapot")


async def _http503(request: Request) -> Response:
    raise HTTPException(503, "down")


async def _http403(request: Request) -> Response:
    raise HTTPException(403, "no")


async def _on_handled(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("handled", status_code=500)


def _on_client_error(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("teapot", status_code=418)


async def _echo_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo:{text}")
    await websocket.close()


async def _plain(request: Request) -> Response:
    return PlainTextResponse("ok", headers={"set-cookie": "a=b"})


class HeaderMiddleware(BaseHTTPMiddleware):
    """A user BaseHTTPMiddleware: reads what the view set in request.state."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-user-mw"] = "1"
        route = request.scope.get("route")
        if route is not None:
            response.headers["x-route-seen"] = str(getattr(route, "path", ""))
        return response


async def raw_asgi_leaf(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI function mounted as a leaf app."""
    await PlainTextResponse("raw")(scope, receive, send)


def starlette_app(traced: bool = True, lifespan: Any = None, **options: Any) -> Starlette:
    """The Starlette test app (our middleware added unless ``traced=False``)."""
    sub = Starlette(
        routes=[
            Route("/things/{thing_id}", _thing),
            Mount("/deeper/{name}", routes=[Route("/leaf/{leaf_id}", _leaf)]),
        ]
    )
    routes = [
        Route("/users/{user_id:int}", _users),
        Route("/class-view", ClassView),
        Route("/plain", _plain),
        Route("/stream", _stream),
        Route("/endless", _endless),
        Route("/file", _file),
        Route("/bg", _bg),
        Route("/bg-one", _bg_one),
        Route("/error", _error),
        Route("/handled", _handled),
        Route("/client-error", _client_error),
        Route("/http503", _http503),
        Route("/http403", _http403),
        WebSocketRoute("/ws", _echo_ws),
        Mount("/api/v1", routes=[Route("/items/{slug}", _item)]),
        Mount("/sub", app=sub),
        Mount("/static", app=StaticFiles(directory=os.path.dirname(__file__))),
        Mount("/raw", app=raw_asgi_leaf),
        Mount("/empty", routes=[]),
        Host("api.example.com", app=Router([Route("/host-route", _host_route)])),
    ]
    middleware = [Middleware(HeaderMiddleware)]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HandledError: _on_handled, ClientError: _on_client_error},
        lifespan=lifespan,
    )
    if traced:
        from sentry_tracing_mw.integrations.starlette import TracingMiddleware

        app.add_middleware(TracingMiddleware, **options)
    return app


def fastapi_app(traced: bool = True, flask_app: Any = None, **options: Any) -> Any:
    """The FastAPI test app (APIRouter prefixes, nested routers, a mounted sub-app)."""
    from fastapi import APIRouter, FastAPI

    app = FastAPI()

    @app.get("/users/{user_id}")
    async def get_user(user_id: int) -> dict[str, Any]:
        return {"user": user_id, "trace": stm.get_trace_headers()}

    @app.get("/sync/{x}")
    def sync_view(x: int) -> dict[str, int]:
        return {"x": x}

    @app.get("/bg")
    async def with_bg(background_tasks: FastAPIBackgroundTasks) -> dict[str, str]:
        background_tasks.add_task(bg_sleep)
        return {"ok": "bg"}

    @app.get("/error")
    async def error() -> None:
        raise ValueError("fastapi boom")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        return StreamingResponse(_slow_chunks(), media_type="text/plain")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await _echo_ws(websocket)

    router = APIRouter(prefix="/api/v1")
    nested = APIRouter(prefix="/nested")

    @router.get("/items/{slug}")
    async def get_item(slug: str) -> dict[str, str]:
        return {"slug": slug}

    @nested.get("/deep/{x}")
    async def deep(x: int) -> dict[str, int]:
        return {"x": x}

    router.include_router(nested)
    app.include_router(router)

    sub = FastAPI()

    @sub.get("/things/{thing_id}")
    async def thing(thing_id: int) -> dict[str, int]:
        return {"thing": thing_id}

    app.mount("/sub", sub)
    if flask_app is not None:
        from starlette.middleware.wsgi import WSGIMiddleware

        app.mount("/flask", WSGIMiddleware(flask_app))
    if traced:
        from sentry_tracing_mw.integrations.starlette import TracingMiddleware

        app.add_middleware(TracingMiddleware, **options)
    return app


async def raw_asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A framework-free ASGI app for the generic middleware tests."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        msg = await receive()
        await send({"type": "websocket.send", "text": "echo:" + (msg.get("text") or "")})
        await send({"type": "websocket.close", "code": 1000})
        return
    path = scope["path"]
    if path == "/error":
        raise KeyError("raw boom")
    if path == "/rename":
        span = stm.get_current_span()
        tx = span.containing_transaction if span is not None else None
        if tx is not None:
            tx.set_name("renamed-by-app", "custom")
    if path == "/stream" or path == "/endless":
        n = 6 if path == "/stream" else 400
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(n):
            await asyncio.sleep(STREAM_SECONDS / 6 if path == "/stream" else 0.01)
            await send({"type": "http.response.body", "body": b"z" * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    status = 404 if path == "/missing" else 200
    body = repr(stm.get_current_span() is not None).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain"), (b"set-cookie", b"s=1")],
        }
    )
    await send({"type": "http.response.body", "body": body})


SDK_SCRIPT = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import sentry_sdk
from sentry_sdk.integrations.fastapi import FastApiIntegration
from sentry_sdk.integrations.starlette import StarletteIntegration

kind, style, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sentry_sdk.init(
    dsn="http://public@127.0.0.1:9/1", traces_sample_rate=1.0, transport=Capture,
    auto_enabling_integrations=False, default_integrations=False,
    integrations=[StarletteIntegration(transaction_style=style),
                  FastApiIntegration(transaction_style=style)],
)
from starlette.testclient import TestClient
from tests import asgi_apps
app = getattr(asgi_apps, kind + "_app")(traced=False)
out = []
with TestClient(app, raise_server_exceptions=False) as client:
    for method, path, headers in cases:
        transactions.clear()
        client.request(method, path, headers=headers)
        sentry_sdk.flush(2)
        p = transactions[0] if transactions else None
        out.append([p["transaction"], p["transaction_info"]["source"]] if p else None)
print(json.dumps(out))
"""


def sdk_names(
    kind: str, style: str, cases: list[tuple[str, str, dict[str, str]]]
) -> list[tuple[str, str] | None]:
    """(name, source) that sentry-sdk gives each request, run in a fresh subprocess."""
    import json

    from .sdk_peer import run_sdk_script

    return [
        tuple(x) if x else None for x in run_sdk_script(SDK_SCRIPT, kind, style, json.dumps(cases))
    ]


# --------------------------------------------------------------------------- flat apps

#: (method, path, headers) requests for the flat apps below, named from ``scope["route"]``
#: (no mount: the route routing leaves in the scope is the whole template).
FLAT_REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/users/42", {}),
    ("POST", "/users/42", {}),  # a partial match: "POST 405"
    ("GET", "/items", {}),
    ("POST", "/items", {}),
    ("GET", "/nope", {}),
    ("GET", "/old/7", {}),  # rewritten to /users/7 before routing
    ("GET", "/boom/3", {}),
    ("GET", "/refused/3", {}),
    ("GET", "/api/v1/items/abc", {}),
    ("GET", "/api/v1/nested/deep/9", {}),
    ("POST", "/api/v1/nested/deep/9", {}),
    # (last: below a Host, the route in the scope is not the app's; watched from then on)
    ("GET", "/host-route/5", {"host": "api.example.com"}),
]
#: ``FLAT_REQUESTS`` as "METHOD /path" keys.
FLAT_REQUESTS_KEYS = [f"{method} {path}" for method, path, _ in FLAT_REQUESTS]


class ScopeKinds:
    """A pure ASGI layer recording the type of each scope it is given."""

    def __init__(self, app: Any, kinds: list[type]) -> None:
        self.app = app
        self.kinds = kinds

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.kinds.append(type(scope))
            if scope["path"].startswith("/old/"):
                scope["path"] = "/users/" + scope["path"][5:]
        await self.app(scope, receive, send)


def flat_starlette_app(
    kinds: list[type], inner: tuple[type, ...] = (), **options: Any
) -> Starlette:
    """A Starlette app that mounts nothing; ``inner``: pure ASGI middleware to add inside
    ours (``ScopeKinds`` records the scope each request gets below them)."""

    async def user(request: Request) -> Response:
        return PlainTextResponse(str(request.path_params["user_id"]))

    async def item(request: Request) -> Response:
        return PlainTextResponse(request.url.path)

    async def boom(request: Request) -> Response:
        raise ValueError("boom")

    async def refused(request: Request) -> Response:
        raise HTTPException(403)

    async def room(ws: WebSocket) -> None:
        await ws.accept()
        await ws.send_text(ws.path_params["room"])
        await ws.close()

    app = Starlette(
        routes=[
            Route("/users/{user_id:int}", user),
            Route("/items", item, methods=["POST"]),
            Route("/api/v1/items/{slug}", item),
            Route("/api/v1/nested/deep/{x}", item, methods=["GET"]),
            Route("/boom/{n}", boom),
            Route("/refused/{n}", refused),
            WebSocketRoute("/ws/{room}", room),
            Host("api.example.com", app=Router([Route("/host-route/{x}", item)])),
        ]
    )
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(ScopeKinds, kinds=kinds)
    for middleware in inner:
        app.add_middleware(middleware)
    app.add_middleware(TracingMiddleware, **options)
    return app


def flat_fastapi_app(kinds: list[type], **options: Any) -> Any:
    from fastapi import APIRouter, FastAPI
    from fastapi import HTTPException as FastAPIHTTPException

    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, int]:
        return {"user": user_id}

    @app.post("/items")
    async def items() -> dict[str, str]:
        return {"ok": "items"}

    @app.get("/boom/{n}")
    async def boom(n: int) -> None:
        raise ValueError("boom")

    @app.get("/refused/{n}")
    async def refused(n: int) -> None:
        raise FastAPIHTTPException(403)

    @app.get("/host-route/{x}")
    async def host_route(x: int) -> dict[str, int]:
        return {"x": x}

    api = APIRouter(prefix="/api/v1")
    nested = APIRouter(prefix="/nested")

    @api.get("/items/{slug}")
    async def item(slug: str) -> dict[str, str]:
        return {"slug": slug}

    @nested.get("/deep/{x}")
    async def deep(x: int) -> dict[str, int]:
        return {"x": x}

    @nested.websocket("/ws/{room}")
    async def room(ws: WebSocket, room: str) -> None:
        await ws.accept()
        await ws.send_text(room)
        await ws.close()

    api.include_router(nested)
    app.include_router(api)
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(ScopeKinds, kinds=kinds)
    app.add_middleware(TracingMiddleware, **options)
    return app
