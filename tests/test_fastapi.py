"""FastAPI through the Starlette integration: names, origin, lifecycle, nesting, parity."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import WebSocket  # module level: FastAPI resolves the annotations here
from flask import Flask

import sentry_tracing_mw as stm

from . import asgi_apps
from .asgi_apps import FASTAPI_NAMES, fastapi_app
from .sentry_server import SentryServer, transactions_by_name
from .servers import run_asgi

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def client(sentry_server: SentryServer) -> Iterator[TestClient]:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(fastapi_app(), raise_server_exceptions=False) as c:
        yield c


def test_route_names(sentry_server: SentryServer, client: TestClient) -> None:
    for method, path, headers, expected in FASTAPI_NAMES:
        sentry_server.clear()
        client.request(method, path, headers=headers)
        assert stm.flush(5)
        (tx,) = sentry_server.transactions()
        assert (tx["transaction"], tx["transaction_info"]["source"]) == (expected, "route")
        assert tx["contexts"]["trace"]["origin"] == "auto.http.fastapi"


def test_route_names_uvicorn_and_sync_views(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with run_asgi(fastapi_app()) as url, httpx.Client(base_url=url, timeout=5) as http:
        for method, path, headers, _ in FASTAPI_NAMES:
            http.request(method, path, headers=headers)
        assert http.get("/sync/3").json() == {"x": 3}
        got = transactions_by_name(sentry_server, len(FASTAPI_NAMES) + 1)
    assert set(got) == {e for *_, e in FASTAPI_NAMES} | {"/sync/{x}"}


def test_endpoint_style(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(fastapi_app(transaction_style="endpoint")) as c:
        c.get("/users/1")
        c.get("/api/v1/nested/deep/2")
    got = transactions_by_name(sentry_server, 2)
    prefix = "tests.asgi_apps.fastapi_app.<locals>."
    assert set(got) == {prefix + "get_user", prefix + "deep"}
    assert got[prefix + "deep"]["transaction_info"]["source"] == "component"


def test_named_before_the_view_runs(client: TestClient) -> None:
    from urllib.parse import unquote

    body = client.get("/users/5").json()
    assert "sentry-transaction=/users/{user_id}" in unquote(body["trace"]["baggage"])


def test_background_task(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    asgi_apps.BG_DONE.clear()
    with run_asgi(fastapi_app()) as url:
        r = httpx.get(url + "/bg", timeout=5)
        received = time.monotonic()
        assert r.json() == {"ok": "bg"}
        tx = transactions_by_name(sentry_server, 1)["/bg"]
    assert asgi_apps.BG_DONE and received < asgi_apps.BG_DONE[0]
    (span,) = tx["spans"]
    assert (span["op"], span["description"]) == ("function", "bg_sleep")
    assert span["origin"] == tx["contexts"]["trace"]["origin"] == "auto.http.fastapi"
    assert tx["timestamp"] - tx["start_timestamp"] >= 0.3


def test_error_and_stream(sentry_server: SentryServer, client: TestClient) -> None:
    assert client.get("/error").status_code == 500
    assert client.get("/stream").content == b"x" * 60
    assert stm.flush(5) and sentry_server.wait_for(3)
    (event,) = sentry_server.events()
    txs = {t["transaction"]: t for t in sentry_server.transactions()}
    assert txs["/error"]["contexts"]["trace"]["status"] == "internal_error"
    assert event["contexts"]["trace"]["span_id"] == txs["/error"]["contexts"]["trace"]["span_id"]
    stream = txs["/stream"]
    assert stream["timestamp"] - stream["start_timestamp"] >= 0.3


def test_websocket(sentry_server: SentryServer, client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.send_text("a")
        assert ws.receive_text() == "echo:a"
    tx = transactions_by_name(sentry_server, 1)["/ws"]
    assert tx["contexts"]["trace"]["op"] == "websocket.server"


def test_traces_sampler_gets_the_route_of_router_websockets(sentry_server: SentryServer) -> None:
    from fastapi import APIRouter, FastAPI

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    seen: list[tuple[str, Any]] = []

    def sampler(ctx: Any) -> float:
        seen.append((ctx["asgi_scope"]["type"], ctx.get("route")))
        return 1.0

    stm.init(dsn=sentry_server.dsn, traces_sampler=sampler)
    app = FastAPI()
    router = APIRouter(prefix="/chat")

    @router.websocket("/rooms/{room}")
    async def room(websocket: WebSocket, room: str) -> None:
        await websocket.accept()
        await websocket.send_text(room)
        await websocket.close()

    @router.get("/rooms/{room}")
    async def room_http(room: str) -> str:
        return room

    app.include_router(router)
    app.add_middleware(TracingMiddleware)
    with TestClient(app) as c:
        assert c.get("/chat/rooms/1").status_code == 200
        with c.websocket_connect("/chat/rooms/1") as ws:
            assert ws.receive_text() == "1"
    assert seen == [("http", "/chat/rooms/{room}"), ("websocket", "/chat/rooms/{room}")]


def _flask() -> Flask:
    app = Flask("mounted")

    @app.route("/users/<int:user_id>")
    def user(user_id: int) -> str:
        span = stm.get_current_span()
        return "traced" if span is not None else "untraced"

    return app


@pytest.mark.parametrize("wrapper", ["flask_tracing", "generic_wsgi"])
def test_flask_mounted_in_fastapi_is_one_transaction(
    sentry_server: SentryServer, wrapper: str
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    flask_app = _flask()
    wsgi: Any = flask_app
    if wrapper == "flask_tracing":
        from sentry_tracing_mw.integrations.flask import FlaskTracing

        FlaskTracing(flask_app)
    else:
        from sentry_tracing_mw.integrations.wsgi import TracingMiddleware as WSGITracing

        wsgi = WSGITracing(flask_app)
    with run_asgi(fastapi_app(flask_app=wsgi)) as url:
        r = httpx.get(url + "/flask/users/3", timeout=5)
        assert r.text == "traced"
        got = transactions_by_name(sentry_server, 1)
    (name,) = got
    tx = got[name]
    assert tx["contexts"]["trace"]["origin"] == "auto.http.fastapi"  # the outermost owns it
    if wrapper == "flask_tracing":
        assert name == "/flask/users/<int:user_id>"  # the inner one named it
    else:
        assert name == "/flask"  # the mount (no route from the generic WSGI middleware)


PARITY = {
    "url": ["/users/42", "/api/v1/items/abc", "/api/v1/nested/deep/9"],
    "endpoint": ["/users/42", "/api/v1/items/abc", "/api/v1/nested/deep/9", "/sub/things/7"],
}


@pytest.mark.parametrize("style", ["url", "endpoint"])
def test_name_parity_with_sentry_sdk(sentry_server: SentryServer, style: str) -> None:
    cases = [(m, p, h) for m, p, h, _ in FASTAPI_NAMES if m == "GET"]
    theirs = asgi_apps.sdk_names("fastapi", style, cases)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    ours = []
    with TestClient(fastapi_app(transaction_style=style)) as c:
        for method, path, headers in cases:
            sentry_server.clear()
            c.request(method, path, headers=headers)
            assert stm.flush(5)
            (tx,) = sentry_server.transactions()
            ours.append((tx["transaction"], tx["transaction_info"]["source"]))
    results = dict(zip([p for _, p, _ in cases], zip(ours, theirs, strict=True), strict=True))
    for path in PARITY[style]:
        assert results[path][0] == results[path][1], path
    if style == "url":
        # sentry-sdk drops the mount prefix of app.mount("/sub", FastAPI()); we keep it.
        assert results["/sub/things/7"] == (
            ("/sub/things/{thing_id}", "route"),
            ("/things/{thing_id}", "route"),
        )


def test_a_bad_option_is_reported_when_uvicorn_starts() -> None:
    # Starlette builds its middleware in the lifespan call; uvicorn's default lifespan mode
    # reports that failure only as "unsupported", and every request then fails: the
    # option's error must be in the log before "Application startup complete".
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from .servers import free_port

    script = (
        "import sys, uvicorn\n"
        "from fastapi import FastAPI\n"
        "from sentry_tracing_mw.integrations.starlette import TracingMiddleware\n"
        "app = FastAPI()\n"
        "app.add_middleware(TracingMiddleware, traces_sample_rate=5)\n"
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[1]), log_level='info')\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(free_port())],
        cwd=root,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    watchdog = threading.Timer(20, proc.kill)  # a silent server ends the read loop too
    watchdog.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if "Application startup complete" in line:
                break
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait(10)
    before_start = "".join(lines)
    assert "Application startup complete" in before_start, before_start
    assert "traces_sample_rate" in before_start and "TracingMiddleware" in before_start


@pytest.mark.parametrize("style", ["route", "endpoint"])
def test_unsampled_error_events_are_named_as_sampled_ones(
    sentry_server: SentryServer, style: str
) -> None:
    """An unsampled request's name is resolved from the routes only when its error event
    needs it: the same name as a sampled (watched) request, in nested included routers
    and a mounted FastAPI app, for unhandled errors and handled 500s."""
    from fastapi import APIRouter, FastAPI, Request
    from fastapi.responses import PlainTextResponse

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    class Handled(Exception):
        pass

    async def on_handled(request: Request, exc: Exception) -> PlainTextResponse:
        return PlainTextResponse("handled", status_code=500)

    def build() -> Any:
        app = FastAPI(exception_handlers={Handled: on_handled})
        outer = APIRouter(prefix="/api/v1")
        inner = APIRouter(prefix="/inner")

        @app.get("/b/{x}")
        async def top_boom(x: int) -> str:
            raise RuntimeError("boom")

        @inner.get("/h/{x}")
        def inner_handled(x: str) -> str:
            raise Handled("handled")

        @outer.get("/b/{x}")
        async def outer_boom(x: str) -> str:
            raise RuntimeError("boom")

        outer.include_router(inner)
        app.include_router(outer)
        sub = FastAPI(exception_handlers={Handled: on_handled})

        @sub.get("/h/{x}")
        async def sub_handled(x: str) -> str:
            raise Handled("handled")

        app.mount("/sub", sub)
        app.add_middleware(TracingMiddleware, transaction_style=style)
        return app

    paths = ("/b/1", "/api/v1/inner/h/2", "/api/v1/b/3", "/sub/h/4")
    names: dict[float, list[tuple[str, str, str]]] = {}
    for rate in (1.0, 0.0):
        sentry_server.clear()
        stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
        with TestClient(build(), raise_server_exceptions=False) as client:
            for _ in range(2):
                for path in paths:
                    assert client.get(path).status_code == 500, path
        assert stm.flush(5)
        assert sentry_server.wait_for(len(paths) * 2 * (2 if rate else 1), 5)
        names[rate] = sorted(
            (e["request"]["url"], e["transaction"], e["transaction_info"]["source"])
            for e in sentry_server.events()
        )
        stm.close()
    assert names[0.0] == names[1.0]
    if style == "route":
        assert {n for _, n, _ in names[0.0]} == {
            "/b/{x}",
            "/api/v1/inner/h/{x}",
            "/api/v1/b/{x}",
            "/sub/h/{x}",
        }
    else:
        assert {s for _, _, s in names[0.0]} == {"component"}


def test_spans_in_sync_yield_dependencies_and_streamed_generators(
    sentry_server: SentryServer,
) -> None:
    """FastAPI runs a sync ``yield`` dependency's two halves in two thread-pool calls, and
    Starlette steps a sync generator body in fresh context copies: a span around them ends
    in another context than it started in, and must still end cleanly (no error event, the
    request not failed, the span sent)."""
    from fastapi import Depends, FastAPI
    from fastapi.responses import StreamingResponse

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    app = FastAPI()
    app.add_middleware(TracingMiddleware)

    def db_session() -> Any:
        with stm.start_span("db", "session"):
            yield "session"

    @app.get("/dep")
    def dep_route(s: str = Depends(db_session)) -> dict[str, str]:
        return {"s": s}

    def rows() -> Any:
        with stm.start_span("render", "csv rows"):
            yield b"a,b\n"
            yield b"1,2\n"

    @app.get("/stream")
    def stream_route() -> StreamingResponse:
        return StreamingResponse(rows(), media_type="text/csv")

    with TestClient(app) as client:
        assert client.get("/dep").json() == {"s": "session"}
        assert client.get("/stream").text == "a,b\n1,2\n"
    assert stm.flush(5) and sentry_server.wait_for(2)
    sent = {t["transaction"]: t for t in sentry_server.transactions()}
    assert {n: t["contexts"]["trace"]["status"] for n, t in sent.items()} == {
        "/dep": "ok",
        "/stream": "ok",
    }
    assert [s["description"] for s in sent["/dep"]["spans"]] == ["session"]
    assert [s["description"] for s in sent["/stream"]["spans"]] == ["csv rows"]
    assert sentry_server.events() == []


def test_unsampled_websocket_of_an_included_router_is_named_as_sampled(
    sentry_server: SentryServer,
) -> None:
    """FastAPI gives an included router's websocket route context no endpoint: the lazy
    name of an unsampled one takes its route's (endpoint style), as routing names it."""
    from fastapi import APIRouter, FastAPI

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    names: dict[float, list[tuple[str, str]]] = {}
    for rate in (1.0, 0.0):
        sentry_server.clear()
        stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
        app = FastAPI()
        router = APIRouter(prefix="/r")

        @router.websocket("/ws/{x}")
        async def ws_in_router(websocket: WebSocket, x: str) -> None:
            await websocket.accept()
            await websocket.send_text("hi")
            raise RuntimeError("ws boom")

        app.include_router(router)
        app.add_middleware(TracingMiddleware, transaction_style="endpoint")
        with TestClient(app) as client:
            with pytest.raises(RuntimeError):
                with client.websocket_connect("/r/ws/1") as ws:
                    assert ws.receive_text() == "hi"
                    ws.receive_text()
        assert stm.flush(5) and sentry_server.wait_for(2 if rate else 1, 5)
        names[rate] = [
            (e["transaction"], e["transaction_info"]["source"]) for e in sentry_server.events()
        ]
        stm.close()
    assert names[0.0] == names[1.0]
    assert names[0.0][0][1] == "component" and names[0.0][0][0].endswith("ws_in_router")
