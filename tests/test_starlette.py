"""Starlette integration: route names, lifecycle, background tasks, errors, nesting, parity."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations import asgi as generic_asgi

from . import asgi_apps
from .asgi_apps import STARLETTE_NAMES, http_scope, starlette_app
from .sentry_server import SentryServer, flushed_transactions, transactions_by_name
from .servers import pipelined, run_asgi

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

STATUS = {200: "ok", 404: "not_found", 405: "invalid_argument"}


@pytest.fixture
def client(sentry_server: SentryServer) -> Iterator[TestClient]:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(starlette_app(), raise_server_exceptions=False) as c:
        yield c


def test_route_names_test_client(sentry_server: SentryServer, client: TestClient) -> None:
    for method, path, headers, expected in STARLETTE_NAMES:
        sentry_server.clear()
        r = client.request(method, path, headers=headers)
        assert stm.flush(5)
        (tx,) = sentry_server.transactions()
        assert tx["transaction"] == expected, path
        assert tx["transaction_info"]["source"] == "route"
        trace = tx["contexts"]["trace"]
        assert trace["origin"] == "auto.http.starlette"
        assert trace["status"] == STATUS[r.status_code]
        assert tx["tags"]["http.status_code"] == str(r.status_code)


def test_route_names_uvicorn(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with run_asgi(starlette_app()) as url, httpx.Client(base_url=url, timeout=5) as http:
        for method, path, headers, _ in STARLETTE_NAMES:
            http.request(method, path, headers=headers)
        got = transactions_by_name(sentry_server, len(STARLETTE_NAMES))  # two are "GET 404"
    assert set(got) == {expected for *_, expected in STARLETTE_NAMES}


def test_endpoint_style(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(starlette_app(transaction_style="endpoint")) as c:
        for path in ("/users/1", "/sub/things/2", "/class-view", "/nope"):
            c.get(path)
    got = transactions_by_name(sentry_server, 4)
    assert got["tests.asgi_apps._users"]["transaction_info"]["source"] == "component"
    assert {"tests.asgi_apps._thing", "tests.asgi_apps.ClassView", "GET 404"} < set(got)


def test_named_before_the_view_runs(sentry_server: SentryServer, client: TestClient) -> None:
    body = client.get("/users/5").json()
    baggage = unquote(body["trace"]["baggage"])
    assert "sentry-transaction=/users/{user_id:int}" in baggage


def test_scope_changes_reach_outer_middleware(sentry_server: SentryServer) -> None:
    """Routing writes go through to the server's scope (outer user middleware sees them)."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    seen: dict[str, Any] = {}

    class Outer(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            response = await call_next(request)
            seen["route"] = getattr(request.scope.get("route"), "path", None)
            seen["params"] = dict(request.scope.get("path_params") or {})
            return response

    app = starlette_app()
    app.add_middleware(Outer)  # outside ours
    with TestClient(app) as c:
        r = c.get("/api/v1/items/zz")
    assert r.headers["x-user-mw"] == "1"  # the inner user middleware ran
    route = "/items/{slug}" if _router_records_route() else None  # older Starlette: no key
    assert seen == {"route": route, "params": {"slug": "zz"}}


def _router_records_route() -> bool:
    """Whether this Starlette's router records the matched route in ``scope["route"]``."""
    from starlette.routing import Mount, Router

    async def leaf(scope: Any, receive: Any, send: Any) -> None:
        return None

    scope: dict[str, Any] = {"type": "http", "path": "/x/y", "root_path": "", "method": "GET"}
    asyncio.run(Router([Mount("/x", app=leaf)])(scope, None, None))  # type: ignore[arg-type]
    return "route" in scope


def test_background_tasks_are_child_spans_and_do_not_delay(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    asgi_apps.BG_DONE.clear()
    with run_asgi(starlette_app()) as url:
        r = httpx.get(url + "/bg", timeout=5)
        received = time.monotonic()
        assert r.text == "bg"
        tx = transactions_by_name(sentry_server, 1)["/bg"]
    # the response arrived before the background tasks (0.3 s) finished: not delayed
    assert asgi_apps.BG_DONE and received < asgi_apps.BG_DONE[0]
    assert tx["timestamp"] - tx["start_timestamp"] >= 0.3
    spans = {s["description"]: s for s in tx["spans"]}
    assert set(spans) == {"bg_sleep", "bg_sync"}
    for span in spans.values():
        assert span["op"] == "function"
        assert span["parent_span_id"] == tx["contexts"]["trace"]["span_id"]
        assert span["timestamp"] <= tx["timestamp"]
    assert spans["bg_sleep"]["timestamp"] - spans["bg_sleep"]["start_timestamp"] >= 0.29


def test_single_background_task(sentry_server: SentryServer, client: TestClient) -> None:
    client.get("/bg-one")
    tx = transactions_by_name(sentry_server, 1)["/bg-one"]
    assert [s["description"] for s in tx["spans"]] == ["bg_sync"]


def test_streaming_and_file_responses(sentry_server: SentryServer, client: TestClient) -> None:
    r = client.get("/stream")
    assert r.content == b"x" * 60
    f = client.get("/file")
    assert f.content == b"file-body\n" * 100
    got = transactions_by_name(sentry_server, 2)
    stream = got["/stream"]
    assert stream["timestamp"] - stream["start_timestamp"] >= 0.3
    assert got["/file"]["contexts"]["trace"]["status"] == "ok"


def test_unhandled_exception(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(starlette_app()) as c, pytest.raises(ValueError, match="boom"):
        c.get("/error")
    assert stm.flush(5) and sentry_server.wait_for(2)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert tx["transaction"] == "/error"
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]
    assert event["exception"]["values"][-1]["type"] == "ValueError"
    # as sentry-sdk names it, so `error.mechanism:starlette` searches keep working (older
    # Starlette raises it inside an exception group: the mechanism then says where it sat)
    mechanism = event["exception"]["values"][-1]["mechanism"]
    assert (mechanism["type"], mechanism["handled"]) == ("starlette", False)


def test_unhandled_exception_records_the_500_sent_outside_the_middleware(
    sentry_server: SentryServer,
) -> None:
    # Starlette's ServerErrorMiddleware (outside ours) answers 500: the transaction says
    # so (data, tag, response context) as for any other response. With the app's own 500
    # handler the response is that handler's, which we cannot see: no code is made up.
    from starlette.applications import Starlette
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    async def boom(request: Request) -> Response:
        raise ValueError("boom")

    async def h500(request: Request, exc: Exception) -> Response:
        return Response("custom", status_code=503)

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    plain = Starlette(routes=[Route("/boom", boom)])
    plain.add_middleware(TracingMiddleware)
    custom = Starlette(routes=[Route("/custom", boom)], exception_handlers={500: h500})
    custom.add_middleware(TracingMiddleware)
    with run_asgi(plain) as url:
        assert httpx.get(url + "/boom", timeout=5).status_code == 500
    with run_asgi(custom) as url:
        assert httpx.get(url + "/custom", timeout=5).status_code == 503
    got = transactions_by_name(sentry_server, 2)
    sent = got["/boom"]
    assert sent["contexts"]["trace"]["status"] == "internal_error"
    assert sent["contexts"]["trace"]["data"]["http.response.status_code"] == 500
    assert sent["tags"]["http.status_code"] == "500"
    assert sent["contexts"]["response"] == {"status_code": 500}
    handled = got["/custom"]
    assert handled["contexts"]["trace"]["status"] == "internal_error"
    assert "http.response.status_code" not in handled["contexts"]["trace"].get("data", {})


def test_repeated_request_headers_are_merged(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(starlette_app()) as c:
        headers = [("X-Dup", "one"), ("x-dup", "two"), ("Accept", "text/html")]
        assert c.get("/plain", headers=headers).status_code == 200
    tx = transactions_by_name(sentry_server, 1)["/plain"]
    assert tx["request"]["headers"]["X-Dup"] == "one,two"
    assert tx["request"]["headers"]["Accept"] == "text/html"


def test_websocket_turned_away_before_routing_is_a_403(sentry_server: SentryServer) -> None:
    # A middleware (auth, rate limits) closing the handshake before the router ran: the
    # router found nothing because it never looked, so this is not "GET 404".
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    class Reject:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)

    async def ws(websocket: Any) -> None:  # pragma: no cover - never reached
        await websocket.accept()

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[WebSocketRoute("/ws/{room}", ws)])
    app.add_middleware(Reject)
    app.add_middleware(TracingMiddleware)  # outermost
    from starlette.websockets import WebSocketDisconnect

    with TestClient(app) as c:
        with pytest.raises(WebSocketDisconnect), c.websocket_connect("/ws/room1") as sock:
            sock.receive_text()
    (tx,) = flushed_transactions(sentry_server, 1)
    # the server answers the handshake 403: named like a request turned away with 403,
    # never after the raw path (one name per room)
    assert tx["transaction"] == "GET 403"
    assert tx["transaction_info"] == {"source": "route"}
    assert tx["contexts"]["trace"]["status"] == "permission_denied"


@pytest.mark.parametrize("how", ["close", "denial"])
def test_websocket_rejected_by_its_route_is_not_ok(sentry_server: SentryServer, how: str) -> None:
    # (the server answers a close before accept with 403: recorded as that response)
    # The endpoint (an auth check) turns the handshake away: the client gets an HTTP
    # response (403 for a close before accept) and never connects.
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    if how == "denial" and not hasattr(WebSocket, "send_denial_response"):
        pytest.skip("this Starlette has no websocket denial responses")

    async def ws(websocket: WebSocket) -> None:
        if how == "close":
            await websocket.close(code=1008)
        else:
            await websocket.send_denial_response(PlainTextResponse("no", status_code=403))

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[WebSocketRoute("/ws/{room}", ws)])
    app.add_middleware(TracingMiddleware)
    with TestClient(app) as c:
        with pytest.raises(Exception) as info, c.websocket_connect("/ws/room1") as sock:
            sock.receive_text()
    assert isinstance(info.value, WebSocketDisconnect) or "Denial" in type(info.value).__name__
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == "/ws/{room}"
    assert tx["contexts"]["trace"]["status"] == "permission_denied"
    assert tx["contexts"]["response"] == {"status_code": 403}
    assert tx["tags"]["http.status_code"] == "403"


def test_stream_on_a_server_that_refuses_a_second_concurrent_receive(
    sentry_server: SentryServer,
) -> None:
    # Under ASGI < 2.4 Starlette's StreamingResponse listens for the disconnect itself.
    # Granian answers a second receive() made while one is pending with http.disconnect:
    # our disconnect watcher must not make one (it cut the stream short).
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    async def chunks() -> Any:
        for _ in range(6):
            await asyncio.sleep(0.01)
            yield b"x" * 10

    async def stream(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="text/plain")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[Route("/stream", stream)])  # no BaseHTTPMiddleware: it receives
    app.add_middleware(TracingMiddleware)  # concurrently itself in old Starlette versions
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/stream",
        "raw_path": b"/stream",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"example.com")],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []

    async def drive() -> None:
        pending = 0
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal pending, delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if pending:  # granian's answer to a concurrent receive
                return {"type": "http.disconnect"}
            pending += 1
            try:
                await asyncio.sleep(3600)  # the client stays: until cancelled
            finally:
                pending -= 1
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(drive())
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert bodies and not bodies[-1].get("more_body", False)  # the whole stream
    assert b"".join(m.get("body", b"") for m in bodies) == b"x" * 60
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["contexts"]["trace"]["status"] == "ok"


@pytest.mark.parametrize("nested", [False, True])
def test_unmatched_websocket_is_named_like_an_unmatched_request(
    sentry_server: SentryServer, nested: bool
) -> None:
    """Also when a generic ASGI middleware outside owns the transaction (it only names)."""
    from starlette.websockets import WebSocketDisconnect

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app: Any = starlette_app()
    if nested:
        app = generic_asgi.TracingMiddleware(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in ("/nope/1", "/nope/2"):
            with pytest.raises(WebSocketDisconnect), client.websocket_connect(path) as ws:
                ws.receive_text()
    assert stm.flush(5) and sentry_server.wait_for(2)
    txs = sentry_server.transactions()
    assert [t["transaction"] for t in txs] == ["GET 404", "GET 404"]  # never the raw path
    for tx in txs:
        assert tx["transaction_info"]["source"] == "route"
        assert tx["contexts"]["trace"]["op"] == "websocket.server"
        assert tx["contexts"]["trace"]["status"] == "not_found"
        assert tx["contexts"]["response"] == {"status_code": 404}  # as unmatched requests


def test_exceptions_handled_into_5xx_are_captured_once(
    sentry_server: SentryServer, client: TestClient
) -> None:
    assert client.get("/handled").status_code == 500
    assert client.get("/http503").status_code == 503
    assert client.get("/client-error").status_code == 418
    assert client.get("/http403").status_code == 403
    assert stm.flush(5) and sentry_server.wait_for(6)
    events = sentry_server.events()
    assert sorted(e["exception"]["values"][-1]["type"] for e in events) == [
        "HTTPException",
        "HandledError",
    ]
    txs = {t["transaction"]: t for t in sentry_server.transactions()}
    handled = next(e for e in events if e["exception"]["values"][-1]["type"] == "HandledError")
    raised = next(e for e in events if e["exception"]["values"][-1]["type"] == "HTTPException")
    # an HTTPException(5xx) is raised on purpose: handled, its detail as the message (as
    # sentry-sdk sends it); an exception a handler turned into a 500 is not
    raised_mechanism = raised["exception"]["values"][-1]["mechanism"]
    assert (raised_mechanism["type"], raised_mechanism["handled"]) == ("starlette", True)
    assert raised["exception"]["values"][-1]["value"] == "down"  # not "503: down"
    handled_mechanism = handled["exception"]["values"][-1]["mechanism"]
    assert (handled_mechanism["type"], handled_mechanism["handled"]) == ("starlette", False)
    trace = txs["/handled"]["contexts"]["trace"]
    assert handled["contexts"]["trace"]["trace_id"] == trace["trace_id"]
    assert trace["status"] == "internal_error"


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_exception_handler_added_at_runtime_is_called_and_captured(
    sentry_server: SentryServer, rate: float
) -> None:
    # The scope's handler tables are live views of the app's: a handler added to the app's
    # ExceptionMiddleware after the first request must still run (and its 5xx be captured,
    # in an unsampled request too); the views read as the tables they show.
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    class Late(Exception):
        pass

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    seen: list[tuple[int, bool, bool, bool]] = []

    async def late(request: Request) -> Response:
        exc_table, status_table = request.scope["starlette.exception_handlers"]
        seen.append(
            (len(exc_table), Late in exc_table, Late in set(exc_table), 418 in status_table)
        )
        status_table[419] = teapot  # a write reaches the app's table, as without us
        raise Late("late")

    async def on_late(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("late handler", status_code=503)

    def teapot(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("teapot", status_code=418)

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate)
    app = Starlette(
        routes=[Route("/ok", ok), Route("/late", late)], exception_handlers={418: teapot}
    )
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(TracingMiddleware)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/ok").status_code == 200
        layer = _exception_middleware(app)
        layer.add_exception_handler(Late, on_late)
        r = c.get("/late")
    assert (r.status_code, r.text) == (503, "late handler")
    assert seen == [(len(layer._exception_handlers), True, True, True)]
    # (the layer's tables may be capturing views: the handler under the view is teapot)
    assert inspect.unwrap(layer._status_handlers[419]) is teapot
    assert stm.flush(5) and sentry_server.wait_for(3 if rate else 1)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"].endswith("Late")
    assert len(sentry_server.transactions()) == (2 if rate else 0)


def test_websocket(sentry_server: SentryServer, client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        ws.send_text("x")
        assert ws.receive_text() == "echo:x"
    tx = transactions_by_name(sentry_server, 1)["/ws"]
    assert tx["contexts"]["trace"]["op"] == "websocket.server"
    assert tx["transaction_info"]["source"] == "route"


def test_traces_sampler_gets_route(sentry_server: SentryServer) -> None:
    seen: list[tuple[Any, Any]] = []

    def sampler(ctx: Any) -> float:
        seen.append((ctx["route"], ctx["asgi_scope"]["path"]))
        return 1.0

    stm.init(dsn=sentry_server.dsn, traces_sampler=sampler)
    with TestClient(starlette_app()) as c:
        for path in ("/users/3", "/sub/deeper/a/leaf/4", "/api/v1/items/q", "/nope"):
            c.get(path)
    assert seen == [
        ("/users/{user_id:int}", "/users/3"),
        ("/sub/deeper/{name}/leaf/{leaf_id}", "/sub/deeper/a/leaf/4"),
        ("/api/v1/items/{slug}", "/api/v1/items/q"),
        (None, "/nope"),
    ]


def test_privacy_rules(sentry_server: SentryServer, client: TestClient) -> None:
    client.get(
        "/plain?password=x&q=1",
        headers={"Authorization": "a", "Cookie": "b=1", "X-Forwarded-For": "1.2.3.4"},
    )
    req = transactions_by_name(sentry_server, 1)["/plain"]["request"]
    assert req["query_string"] == "password=[Filtered]&q=1"
    assert not {"Authorization", "Cookie", "X-Forwarded-For"} & set(req["headers"])
    assert req["url"] == "http://testserver/plain"


def test_client_disconnect_mid_stream(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with run_asgi(starlette_app()) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        tx = transactions_by_name(sentry_server, 1)["/endless"]
    assert tx["contexts"]["trace"]["status"] == "cancelled"
    assert sentry_server.events() == []


def test_lifespan_runs_once_with_middleware(sentry_server: SentryServer) -> None:
    calls: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        calls.append("startup")
        yield
        calls.append("shutdown")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(starlette_app(lifespan=lifespan)) as c:
        c.get("/plain")
        assert calls == ["startup"]
    assert calls == ["startup", "shutdown"]
    assert len(sentry_server.transactions()) == 1  # flushed at shutdown, no explicit flush


def test_generic_asgi_around_starlette_is_one_transaction(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = generic_asgi.TracingMiddleware(starlette_app())
    with TestClient(app) as c:
        c.get("/sub/things/9")
        c.get("/nope")
    got = transactions_by_name(sentry_server, 2)
    assert set(got) == {"/sub/things/{thing_id}", "GET 404"}
    assert got["GET 404"]["contexts"]["trace"]["origin"] == "auto.http.asgi"  # outer owns it


def test_sub_app_with_its_own_middleware_is_one_transaction(sentry_server: SentryServer) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    inner = starlette_app()  # has our middleware
    outer = Starlette(
        routes=[Mount("/outer/{tenant}", app=inner), Route("/x", lambda r: Response("x"))]
    )
    outer.add_middleware(TracingMiddleware)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(outer) as c:
        assert c.get("/outer/acme/sub/things/1").status_code == 200
    got = transactions_by_name(sentry_server, 1)
    assert list(got) == ["/outer/{tenant}/sub/things/{thing_id}"]


def test_constructed_the_way_every_starlette_release_does(sentry_server: SentryServer) -> None:
    """Starlette < 0.41.3 builds middleware as ``cls(app=app, **options)``, newer ones as
    ``cls(app, **options)``: both wrap the app (the keyword form is what old releases use)."""
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    keyword = TracingMiddleware(app=starlette_app(traced=False), transaction_style="endpoint")
    positional = TracingMiddleware(starlette_app(traced=False), transaction_style="endpoint")
    for mw in (keyword, positional):
        with TestClient(mw) as c:
            assert c.get("/users/3").status_code == 200
    got = [t["transaction"] for t in flushed_transactions(sentry_server, 2)]
    assert got == ["tests.asgi_apps._users"] * 2, got  # options reached both
    with pytest.raises(TypeError, match="ASGI app"):
        TracingMiddleware(transaction_style="endpoint")


# sentry-sdk names these exactly as we do; for the others it loses mount prefixes
# ("generic Starlette request" for anything under a Mount in url style), names unmatched
# requests after the raw URL (source url), names a 405 after the route, and names
# class-based endpoints after Starlette's ExceptionMiddleware in endpoint style.
PARITY = {
    "url": ["/users/42", "/host-route", "/class-view"],
    "endpoint": [
        "/users/42",
        "/api/v1/items/abc",
        "/sub/things/7",
        "/sub/deeper/x/leaf/3",
        "/host-route",
    ],
}


@pytest.mark.parametrize("style", ["url", "endpoint"])
def test_name_parity_with_sentry_sdk(sentry_server: SentryServer, style: str) -> None:
    cases = [(m, p, h) for m, p, h, _ in STARLETTE_NAMES if m == "GET"]
    theirs = asgi_apps.sdk_names("starlette", style, cases)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    ours: list[tuple[str, str]] = []
    with TestClient(starlette_app(transaction_style=style)) as c:
        for method, path, headers in cases:
            sentry_server.clear()
            c.request(method, path, headers=headers)
            assert stm.flush(5)
            (tx,) = sentry_server.transactions()
            ours.append((tx["transaction"], tx["transaction_info"]["source"]))
    expected = {p: name for m, p, _, name in STARLETTE_NAMES if m == "GET"}
    compared = 0
    for (_, path, _), mine, sdk in zip(cases, ours, theirs, strict=True):
        if path in PARITY[style] and style == "url" and sdk[1] == "url":
            # sentry-sdk fell back to the raw URL (it finds no Host route on older
            # Starlette): nothing to compare with; ours is still the route template.
            assert mine == (expected[path], "route"), path
            compared += 1
        elif path in PARITY[style]:
            assert mine == sdk, path
            compared += 1
        elif style == "url" and path.startswith(("/sub/", "/api/v1/items")):
            assert sdk == ("generic Starlette request", "route")  # sentry-sdk loses it
            assert mine[0].startswith("/" + path.split("/")[1] + "/")  # we keep the prefix
    assert compared == len(PARITY[style])


def test_unsampled_error_events_carry_the_request(sentry_server: SentryServer) -> None:
    """Error events do not depend on the sampling decision, their request data neither (as
    sentry-sdk sends it): an unhandled error and one a handler answers with a 500."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0)
    with TestClient(starlette_app(), raise_server_exceptions=False) as client:
        assert client.get("/error?q=1").status_code == 500
        assert client.get("/handled").status_code == 500
    assert stm.flush(5) and sentry_server.wait_for(2)
    urls = sorted(e["request"]["url"] for e in sentry_server.events())
    assert urls == ["http://testserver/error", "http://testserver/handled"]
    by_url = {e["request"]["url"]: e["request"] for e in sentry_server.events()}
    assert by_url["http://testserver/error"]["query_string"] == "q=1"
    assert sentry_server.transactions() == []


def test_unsampled_request_still_named_for_propagation(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0)
    with TestClient(starlette_app()) as c:
        body = c.get("/users/8").json()
    assert "sentry-sampled=false" in body["trace"]["baggage"]
    assert "sentry-transaction=/users/{user_id:int}" in unquote(body["trace"]["baggage"])
    assert stm.flush(5)
    assert sentry_server.transactions() == []


def test_instrumentation_failure_does_not_break_requests(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sentry_tracing_mw.integrations import starlette as integration

    def broken(self: Any, route: Any) -> None:
        raise RuntimeError("instrumentation bug")

    monkeypatch.setattr(integration._RoutingScope, "_leaf", broken)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(starlette_app()) as c:
        assert c.get("/users/2").status_code == 200
    assert list(transactions_by_name(sentry_server, 1)) == ["GET 200"]


def test_direct_asgi_call_leaves_no_span() -> None:
    stm.init(traces_sample_rate=1.0)
    app = starlette_app()

    async def go() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            r = await http.get("/users/1")
            assert r.status_code == 200
        assert stm.get_current_span() is None

    asyncio.run(go())


@pytest.mark.parametrize("broken", ["__enter__", "__exit__"])
def test_a_failing_background_task_span_never_skips_the_task(
    sentry_server: SentryServer, client: TestClient, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    # Fault injection: starting or ending the task's span raises; the task still runs once.
    from sentry_tracing_mw._tracing import Span

    def fail(self: Span, *args: object) -> None:
        raise RuntimeError("instrumentation bug")

    asgi_apps.BG_DONE.clear()
    monkeypatch.setattr(Span, broken, fail)
    assert client.get("/bg").text == "bg"  # the test client waits for the tasks
    assert len(asgi_apps.BG_DONE) == 1


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_finished_transactions_are_not_kept_alive_by_the_scope(
    sentry_server: SentryServer, rate: float
) -> None:
    """A caller that keeps the scope after the response (a test harness, a server's
    request log) does not keep the transaction alive: it leaves the scope when it ends."""
    import gc

    from sentry_tracing_mw._client import get_client
    from sentry_tracing_mw._tracing import Transaction

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
    app = starlette_app()
    kept: list[dict[str, Any]] = []

    async def serve(path: str) -> None:
        scope = http_scope(path, b"testserver")
        kept.append(scope)
        messages = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        await app(scope, receive, send)

    async def main() -> None:
        for path in ["/users/1", "/plain", "/nope"]:
            await serve(path)

    asyncio.run(main())
    assert stm.flush(5)
    gc.collect()
    client = get_client()  # only this test's (an earlier test's server may hold its own)
    assert [o for o in gc.get_objects() if type(o) is Transaction and o._client is client] == []
    assert len(kept) == 3
    if rate:
        names = {t["transaction"] for t in flushed_transactions(sentry_server, 3)}
        assert names == {"/users/{user_id:int}", "/plain", "GET 404"}


class _FailingBeforeRouting(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if "boom" in request.query_params:
            raise RuntimeError("middleware boom")
        return await call_next(request)


def _failing_pure_asgi(app: Any) -> Any:
    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and b"crash" in scope.get("query_string", b""):
            raise KeyError("pure middleware boom")
        await app(scope, receive, send)

    return middleware


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_middleware_failing_before_routing_is_not_named_after_the_raw_path(
    sentry_server: SentryServer, rate: float, nested: bool
) -> None:
    """Issue 4: never the raw path. A user middleware that raises before the router runs
    gives "GET 500" (route) to the transaction and its error event, also when a generic
    ASGI middleware outside owns the transaction."""
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
    app = starlette_app(traced=False)
    app.add_middleware(_FailingBeforeRouting)
    app.add_middleware(_failing_pure_asgi)
    app.add_middleware(TracingMiddleware)  # outermost
    served: Any = generic_asgi.TracingMiddleware(app) if nested else app
    with TestClient(served, raise_server_exceptions=False) as client:
        for n in (1, 2):
            assert client.get(f"/users/{n}?boom=1").status_code == 500
        assert client.get("/users/3?crash=1").status_code == 500
        assert client.get("/users/4").status_code == 200
    assert stm.flush(5)
    assert sentry_server.wait_for(7 if rate else 3, 5)
    events = sentry_server.events()
    assert sorted(e["transaction"] for e in events) == ["GET 500"] * 3
    assert all(e["transaction_info"] == {"source": "route"} for e in events)
    if rate:
        names = sorted(t["transaction"] for t in sentry_server.transactions())
        assert names == ["/users/{user_id:int}", "GET 500", "GET 500", "GET 500"]


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_pipelined_requests_each_get_their_own_trace(
    sentry_server: SentryServer, rate: float
) -> None:
    # uvicorn starts a buffered request inside the previous response's last send: its task
    # starts with a copy of that request's context, whose transaction is still open
    # (its background task runs). Each request must still get its own transaction.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate)
    paths = [("GET", "/bg-one"), ("GET", "/users/1"), ("HEAD", "/users/2"), ("GET", "/users/3")]
    with run_asgi(starlette_app()) as url:
        responses = pipelined(url, paths)
        assert [r.status for r in responses] == [200, 200, 200, 200]
        traces = [json.loads(r.body)["trace"] for r in responses if r.body.startswith(b"{")]
        ids = [t["sentry-trace"].split("-")[:2] for t in traces]
        if rate:
            txs = flushed_transactions(sentry_server, 3)  # HEAD is not traced
            assert sorted(t["transaction"] for t in txs) == [
                "/bg-one",
                "/users/{user_id:int}",
                "/users/{user_id:int}",
            ]
            by_span = {t["contexts"]["trace"]["span_id"]: t for t in txs}
            for trace_id, span_id in ids:  # each view ran inside its own transaction
                assert by_span[span_id]["contexts"]["trace"]["trace_id"] == trace_id
        else:
            assert stm.flush(5)
            assert sentry_server.transactions() == []
    assert len(ids) == 2 and len({trace_id for trace_id, _ in ids}) == 2
    assert all("sentry-transaction=/users/" in unquote(t["baggage"]) for t in traces)


def test_an_app_called_in_process_keeps_its_own_name_and_continues_the_trace(
    sentry_server: SentryServer,
) -> None:
    # A view calls another traced app in-process (httpx.ASGITransport): not a nested
    # middleware (its own scope), so its own transaction; the call is an http.client
    # span whose headers the inner app continues (as over the network), and headers the
    # caller passes itself are replaced by the span's; the caller keeps its own name.
    from starlette.applications import Starlette
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    async def inner_view(request: Request) -> Response:
        return PlainTextResponse(request.path_params["x"])

    inner = Starlette(routes=[Route("/inner/{x}", inner_view)])
    inner.add_middleware(TracingMiddleware)

    async def outer_view(request: Request) -> Response:
        transport = httpx.ASGITransport(app=inner)
        async with httpx.AsyncClient(transport=transport, base_url="http://inner") as client:
            plain = (await client.get("/inner/7")).text
            with stm.start_span("call", "inner"):
                linked = (await client.get("/inner/8", headers=stm.get_trace_headers())).text
        return JSONResponse({"text": plain + linked})

    outer = Starlette(routes=[Route("/outer", outer_view)])
    outer.add_middleware(TracingMiddleware)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(outer) as c:
        body = c.get("/outer").json()
    assert body["text"] == "78"
    txs = flushed_transactions(sentry_server, 3)
    assert sorted(t["transaction"] for t in txs) == ["/inner/{x}", "/inner/{x}", "/outer"]
    (outer_tx,) = [t for t in txs if t["transaction"] == "/outer"]
    calls = {s["description"]: s["span_id"] for s in outer_tx["spans"] if s["op"] == "http.client"}
    assert set(calls) == {"GET http://inner/inner/7", "GET http://inner/inner/8"}
    trace_id = outer_tx["contexts"]["trace"]["trace_id"]
    inner_parents = sorted(
        t["contexts"]["trace"]["parent_span_id"] for t in txs if t["transaction"] == "/inner/{x}"
    )
    assert inner_parents == sorted(calls.values())
    assert all(t["contexts"]["trace"]["trace_id"] == trace_id for t in txs)


def test_copies_of_the_scope_are_plain_and_do_not_write_through(
    sentry_server: SentryServer,
) -> None:
    # The app's scope writes through to the server's; a copy of it must not (an app that
    # builds a child scope with copy.copy() and edits its path), and deep copies and
    # pickles of it work as they do with a server's plain scope.
    import copy
    import pickle

    from starlette.applications import Starlette
    from starlette.routing import Route

    seen: dict[str, Any] = {}

    async def view(request: Request) -> Response:
        scope = request.scope
        shallow = copy.copy(scope)
        shallow["path"] = "/changed"
        shallow["added"] = 1
        seen["types"] = {type(shallow), type(copy.deepcopy({**scope, "app": None}))}
        app_objects = ("app", "router", "route", "endpoint", "starlette.exception_handlers")
        safe = {k: v for k, v in scope.items() if k not in app_objects}
        seen["pickled"] = pickle.loads(pickle.dumps(safe)).get("sentry_tracing_mw.transaction")
        seen["deep"] = copy.deepcopy(safe).get("sentry_tracing_mw.transaction")
        seen["tx"] = stm.get_current_span()
        looped = {k: v for k, v in safe.items()}
        scope["me"] = scope  # a scope that holds itself copies and pickles as a plain one
        keep = {id(scope[k]): scope[k] for k in app_objects if k in scope}  # not copied
        deep = copy.deepcopy(scope, keep)
        seen["loop"] = deep["me"] is deep and type(deep) is dict
        del scope["me"]
        looped["me"] = looped
        again = pickle.loads(pickle.dumps(looped))
        seen["loop"] = seen["loop"] and again["me"] is again
        return PlainTextResponse("ok")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[Route("/x", view)])
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(TracingMiddleware)
    server_scope: dict[str, Any] = {}

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        server_scope.update(scope=scope)
        await app(scope, receive, send)

    with TestClient(outer) as c:
        assert c.get("/x").text == "ok"
    assert server_scope["scope"]["path"] == "/x" and "added" not in server_scope["scope"]
    assert seen["types"] == {dict}
    assert seen["loop"] is True
    assert seen["pickled"] is None  # a live transaction pickles as None
    assert seen["deep"] is seen["tx"] is not None  # deep copies share it
    (tx,) = transactions_by_name(sentry_server, 1).values()
    assert tx["transaction"] == "/x"


@pytest.mark.parametrize("kind", ["asyncio-marked", "async-callable", "partial"])
def test_exception_handlers_run_as_starlette_would_run_them(
    sentry_server: SentryServer, kind: str
) -> None:
    # Our capturing wrapper must be async exactly when Starlette would await the handler:
    # a handler Starlette awaits but we took for sync answered a 500 (on Python < 3.13,
    # Starlette checks asyncio's marker, as Cython-compiled coroutine functions carry).
    import functools

    from starlette.applications import Starlette
    from starlette.routing import Route

    class Boom(Exception):
        pass

    async def respond(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("handled", status_code=503)

    class AsyncCallable:
        async def __call__(self, request: Request, exc: Exception) -> Response:
            return await respond(request, exc)

    def marked(request: Request, exc: Exception) -> Any:
        return respond(request, exc)

    marked._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine", None)  # type: ignore[attr-defined]
    handler = {
        "asyncio-marked": marked,
        "async-callable": AsyncCallable(),
        "partial": functools.partial(respond),
    }[kind]
    from starlette._utils import is_async_callable

    if not is_async_callable(handler):
        pytest.skip("this Starlette runs such a handler in a thread: nothing to compare")

    async def boom(request: Request) -> Response:
        raise Boom("x")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[Route("/x", boom)], exception_handlers={Boom: handler})
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(TracingMiddleware)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/x")
    assert (r.status_code, r.text) == (503, "handled")
    assert stm.flush(5) and sentry_server.wait_for(2)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"].endswith("Boom")


def test_a_replaced_exception_handler_is_used(sentry_server: SentryServer) -> None:
    # The wrapped handler tables are cached: replacing a handler (same table size) must
    # still take effect, as it does without the middleware.
    from starlette.applications import Starlette
    from starlette.routing import Route

    class Boom(Exception):
        pass

    async def boom(request: Request) -> Response:
        raise Boom("x")

    class Handler:  # handlers that call each other equal: the cache must not believe it
        def __init__(self, text: str) -> None:
            self.text = text

        def __call__(self, request: Request, exc: Exception) -> Response:
            return PlainTextResponse(self.text, status_code=409)

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Handler)

        __hash__ = object.__hash__

    old, new = Handler("old"), Handler("new")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[Route("/x", boom)], exception_handlers={Boom: old})
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(TracingMiddleware)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/x").text == "old"
        layer = _exception_middleware(app)
        layer.add_exception_handler(Boom, new)
        assert c.get("/x").text == "new"


def test_a_handler_we_cannot_wrap_still_answers(sentry_server: SentryServer) -> None:
    # Wrapping happens when Starlette looks the handler up, inside its error handling: a
    # handler object that refuses our attribute check is used as it is, never an error.
    from starlette.applications import Starlette
    from starlette.routing import Route

    class Boom(Exception):
        pass

    async def boom(request: Request) -> Response:
        raise Boom("x")

    class Odd:
        def __getattribute__(self, name: str) -> Any:
            if name == "_stm_capturing":
                raise RuntimeError("no attributes here")
            return object.__getattribute__(self, name)

        def __call__(self, request: Request, exc: Exception) -> Response:
            return PlainTextResponse("odd", status_code=503)

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[Route("/x", boom)], exception_handlers={Boom: Odd()})
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(TracingMiddleware)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/x")
    assert (r.status_code, r.text) == (503, "odd")
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["contexts"]["trace"]["status"] == "unavailable"


def test_a_handler_added_during_the_request_answers_it(sentry_server: SentryServer) -> None:
    # A handler the endpoint itself adds before raising answers that very request, as
    # without us (wrapped copies of the tables made at the request's start missed it).
    from starlette.applications import Starlette
    from starlette.routing import Route

    class Boom(Exception):
        pass

    def on_boom(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("answered", status_code=500)

    async def boom(request: Request) -> Response:
        layer = _exception_middleware(app)
        layer.add_exception_handler(Boom, on_boom)
        raise Boom("x")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[Route("/x", boom)])
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(TracingMiddleware)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/x")
    assert (r.status_code, r.text) == (500, "answered")
    assert stm.flush(5) and sentry_server.wait_for(2)
    (tx,) = sentry_server.transactions()
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 500
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"].endswith("Boom")


def test_a_handler_that_answers_nothing_is_an_error(sentry_server: SentryServer) -> None:
    # An exception handler that returns None sends no response (uvicorn then answers 500):
    # the transaction is an error (it said "ok" before).
    from starlette.applications import Starlette
    from starlette.routing import Route

    class Boom(Exception):
        pass

    async def boom(request: Request) -> Response:
        raise Boom("x")

    async def on_boom(request: Request, exc: Exception) -> None:
        return None

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[Route("/x/{n}", boom)], exception_handlers={Boom: on_boom})
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app.add_middleware(TracingMiddleware)
    with run_asgi(app) as url:
        r = httpx.get(url + "/x/1", timeout=5)
    assert r.status_code == 500
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["transaction"] == "/x/{n}"
    assert tx["contexts"]["trace"]["status"] == "internal_error"


def _exception_middleware(app: Any) -> Any:
    """The ExceptionMiddleware in a built Starlette app's middleware stack."""
    from starlette.middleware.exceptions import ExceptionMiddleware

    layer = app.middleware_stack
    while not isinstance(layer, ExceptionMiddleware):
        layer = layer.app
    return layer


class _Handled(Exception):
    pass


def _naming_parity_app(style: str) -> Any:
    """Failing endpoints at every kind of routing position: an unhandled error, and one a
    handler of the app (or of a mounted app) answers with a 500."""
    from starlette.applications import Starlette
    from starlette.routing import Host, Mount, Route, Router

    async def boom(request: Request) -> Response:
        raise RuntimeError("boom")

    async def handled(request: Request) -> Response:
        raise _Handled("handled")

    async def on_handled(request: Request, exc: Exception) -> Response:
        return PlainTextResponse("handled", status_code=500)

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    sub = Starlette(
        routes=[Route("/b/{x}", boom), Route("/h/{x}", handled)],
        exception_handlers={_Handled: on_handled},
    )
    app = Starlette(
        routes=[
            Route("/b/{x:int}", boom),
            Route("/h/{x}", handled),
            Mount("/m/{tenant}", routes=[Route("/b/{x}", boom), Route("/h/{x}", handled)]),
            Mount("/sub", app=sub),
            Host("api.example.com", app=Router([Route("/hb/{x}", boom)])),
        ],
        exception_handlers={_Handled: on_handled},
    )
    app.add_middleware(TracingMiddleware, transaction_style=style)
    return app


_PARITY_PATHS = ("/b/1", "/h/1", "/m/t1/b/2", "/m/t1/h/2", "/sub/b/3", "/sub/h/3", "/hb/4")


@pytest.mark.parametrize("style", ["route", "endpoint"])
def test_unsampled_error_events_are_named_as_sampled_ones(
    sentry_server: SentryServer, style: str
) -> None:
    """An unsampled request's routing is not watched (it costs per request): its name is
    resolved from the routes when an error event needs it, and must be the name the watched
    (sampled) request gets, for unhandled errors and handled 500s, in mounts, mounted apps
    (also on the first request, before the mounted app built its middleware) and hosts."""
    names: dict[float, list[tuple[str, str, str]]] = {}
    for rate in (1.0, 0.0):
        sentry_server.clear()
        stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
        app = _naming_parity_app(style)
        with TestClient(app, raise_server_exceptions=False) as client:
            for _ in range(2):  # the first request into /sub builds its middleware
                for path in _PARITY_PATHS:
                    host = "api.example.com" if path == "/hb/4" else "testserver"
                    r = client.get(path, headers={"host": host})
                    assert r.status_code == 500, path
        assert stm.flush(5)
        assert sentry_server.wait_for(len(_PARITY_PATHS) * 2 * (2 if rate else 1), 5)
        names[rate] = sorted(
            (
                e["request"]["url"].split("/", 3)[3],
                e["transaction"],
                e["transaction_info"]["source"],
            )
            for e in sentry_server.events()
        )
        stm.close()
    assert names[0.0] == names[1.0]
    assert len(names[0.0]) == 2 * len(_PARITY_PATHS)
    if style == "route":
        assert {(n, s) for _, n, s in names[0.0]} == {
            ("/b/{x:int}", "route"),
            ("/h/{x}", "route"),
            ("/m/{tenant}/b/{x}", "route"),
            ("/m/{tenant}/h/{x}", "route"),
            ("/sub/b/{x}", "route"),
            ("/sub/h/{x}", "route"),
            ("/hb/{x}", "route"),
        }
    else:
        assert {s for _, _, s in names[0.0]} == {"component"}
        assert all(n.endswith((".boom", ".handled")) for _, n, _ in names[0.0])


def test_unsampled_requests_get_the_servers_scope(sentry_server: SentryServer) -> None:
    """The unsampled fast path: once every handler table captures on its own, the app gets
    the server's scope (no watching copy); before (a mounted app not built yet), a watching
    one, so that the mounted app's handled 500s are still captured."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    kinds: list[tuple[str, bool]] = []

    async def view(request: Request) -> Response:
        kinds.append((request.url.path, type(request.scope) is dict))
        return PlainTextResponse("ok")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0, instrument_http_clients=False)
    plain = Starlette(routes=[Route("/v", view)])
    plain.add_middleware(TracingMiddleware)
    with TestClient(plain) as client:
        assert client.get("/v").status_code == 200
    mounted = Starlette(routes=[Mount("/sub", app=Starlette(routes=[Route("/v", view)]))])
    mounted.add_middleware(TracingMiddleware)
    with TestClient(mounted) as client:
        for _ in range(2):
            assert client.get("/sub/v").status_code == 200
    assert kinds == [("/v", True), ("/sub/v", False), ("/sub/v", True)]


def _baggage_transaction() -> str | None:
    baggage = stm.get_trace_headers().get("baggage") or ""
    for member in baggage.split(","):
        key, _, value = member.partition("=")
        if key.strip() == "sentry-transaction":
            return unquote(value)
    return None


def _shape_outer_wrap() -> tuple[Any, list[str]]:
    """Wrapped from outside, around another middleware: the app is not known on entry."""
    from starlette.applications import Starlette
    from starlette.middleware.cors import CORSMiddleware
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app = Starlette(routes=[Route("/b/{x}", _parity_boom), Route("/h/{x}", _parity_headers)])
    return TracingMiddleware(CORSMiddleware(app, allow_origins=["*"])), ["/b/1", "/h/1"]


class _StripVersion:
    """A pure ASGI middleware that rewrites the path before routing ("/v1/x" -> "/x")."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            scope["path"] = scope["path"][3:]
        await self.app(scope, receive, send)


def _shape_path_rewrite() -> tuple[Any, list[str]]:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app = Starlette(
        routes=[Route("/b/{x}", _parity_boom), Route("/h/{x}", _parity_headers)],
        middleware=[Middleware(_StripVersion)],
        exception_handlers={_Handled: _parity_on_handled},
    )
    app.add_middleware(TracingMiddleware)
    return app, ["/v1/b/1", "/v1/h/1", "/v1/b/2?handled=1"]


def _shape_nested_integration() -> tuple[Any, list[str]]:
    """A mounted app with its own integration inside an app with one."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    sub = Starlette(routes=[Route("/b/{x}", _parity_boom), Route("/h/{x}", _parity_headers)])
    sub.add_middleware(TracingMiddleware)
    app = Starlette(routes=[Mount("/sub", app=sub)])
    app.add_middleware(TracingMiddleware)
    return app, ["/sub/b/1", "/sub/h/1"]


def _closure_wrapped(app: Any) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    return wrapped


def _shape_closure_mount() -> tuple[Any, list[str]]:
    """A mounted app behind a closure-style middleware."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    sub = Starlette(
        routes=[Route("/b/{x}", _parity_boom)], exception_handlers={_Handled: _parity_on_handled}
    )
    app = Starlette(routes=[Route("/h/{x}", _parity_headers), Mount("/sub", _closure_wrapped(sub))])
    app.add_middleware(TracingMiddleware)
    return app, ["/h/0", "/sub/b/1?handled=1", "/sub/b/2?handled=1", "/sub/b/3"]


class _KeepsApp:
    """A wrapper keeping the app it wraps under a name of its own."""

    def __init__(self, inner: Any) -> None:
        self.asgi_app = inner

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.asgi_app(scope, receive, send)


def _shape_attribute_wrapped_mount() -> tuple[Any, list[str]]:
    """A mounted app behind a wrapper that keeps it under another attribute than app."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    sub = Starlette(
        routes=[Route("/b/{x}", _parity_boom), Route("/h/{x}", _parity_headers)],
        exception_handlers={_Handled: _parity_on_handled},
    )
    app = Starlette(routes=[Mount("/sub", _KeepsApp(sub))])
    app.add_middleware(TracingMiddleware)
    return app, ["/sub/b/1?handled=1", "/sub/h/2", "/sub/b/3"]


class _MountLater:
    """Mounts a sub-app on the app after its first request (a plugin system)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self) -> None:
        from starlette.applications import Starlette
        from starlette.routing import Route

        sub = Starlette(
            routes=[Route("/b/{x}", _parity_boom)],
            exception_handlers={_Handled: _parity_on_handled},
        )
        self.app.mount("/plugin", sub)


def _shape_mounted_later() -> tuple[Any, list[str]]:
    """A mounted app added after the app served requests: its handler tables are not
    known until a request used them (the first handled 500 in it is still captured)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app = Starlette(routes=[Route("/h/{x}", _parity_headers)])
    app.add_middleware(TracingMiddleware)
    mount = _MountLater(app)

    async def plugin(request: Request) -> Response:
        if not any(getattr(r, "path", "") == "/plugin" for r in app.routes):
            mount()
        return PlainTextResponse("mounted")

    app.add_route("/mount", plugin)
    return app, ["/h/0", "/mount", "/plugin/b/1?handled=1", "/plugin/b/2?handled=1"]


async def _parity_boom(request: Request) -> Response:
    if request.query_params.get("handled"):
        raise _Handled("handled")
    raise RuntimeError("boom")


async def _parity_headers(request: Request) -> Response:
    return PlainTextResponse(str(_baggage_transaction()))


async def _parity_on_handled(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("handled", status_code=500)


@pytest.mark.parametrize(
    "shape",
    [
        _shape_outer_wrap,
        _shape_path_rewrite,
        _shape_nested_integration,
        _shape_closure_mount,
        _shape_mounted_later,
    ],
)
def test_unsampled_requests_named_and_captured_as_sampled_ones(
    sentry_server: SentryServer, shape: Any
) -> None:
    """Setups where resolving an unsampled request's name lazily, or capturing its handled
    500s without watching its scope, cannot work as is: wrapped from outside (no app in the
    scope yet), a middleware rewriting the path before routing, a mounted app with its own
    integration, a mounted app the walk of the app cannot reach (its first requests). The
    names propagated and on error events, and the events, are those of sampled requests."""
    seen: dict[float, tuple[list[str], list[tuple[str, str, str]]]] = {}
    for rate in (1.0, 0.0):
        sentry_server.clear()
        stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
        app, paths = shape()
        with TestClient(app, raise_server_exceptions=False) as client:
            bodies = [client.get(p).text for _ in range(2) for p in paths]
        assert stm.flush(5)
        errors = sum(1 for p in paths if "/b/" in p) * 2
        assert sentry_server.wait_for(errors + (len(paths) * 2 if rate else 0), 5)
        events = sorted(
            (
                e["exception"]["values"][-1]["type"],
                e["transaction"],
                e["transaction_info"]["source"],
            )
            for e in sentry_server.events()
        )
        seen[rate] = (bodies, events)
        stm.close()
    assert seen[0.0] == seen[1.0]
    assert all(source == "route" for _, _, source in seen[0.0][1])
    assert "None" not in seen[0.0][0]


def test_handled_500_on_an_ignored_path_is_no_event(sentry_server: SentryServer) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    for rate in (1.0, 0.0):
        sentry_server.clear()
        stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)

        async def health(request: Request) -> Response:
            stm.trace_meta_tags()  # a trace of this request only: still no event
            raise _Handled("health")

        app = Starlette(
            routes=[Route("/health", health), Route("/b", _parity_boom)],
            exception_handlers={_Handled: _parity_on_handled},
        )
        app.add_middleware(TracingMiddleware, ignore_paths=["/health"])
        with TestClient(app, raise_server_exceptions=False) as client:
            assert client.get("/health?handled=1").status_code == 500
            assert client.get("/b?handled=1").status_code == 500
        assert stm.flush(5) and sentry_server.wait_for(1 + (1 if rate else 0), 5)
        time.sleep(0.2)
        assert [e["transaction"] for e in sentry_server.events()] == ["/b"]
        stm.close()


def test_a_finished_unsampled_transaction_does_not_hold_its_scope() -> None:
    """What outlives a request (a stored span, a task) must not keep its scope alive
    (``request.state``, the app's per-request objects) through the deferred naming."""
    import gc
    import weakref

    from starlette.applications import Starlette
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    kept: list[Any] = []
    states: list[Any] = []

    class Big:
        pass

    async def view(request: Request) -> Response:
        big = Big()
        request.state.big = big
        states.append(weakref.ref(big))
        kept.append(stm.get_current_span())
        return PlainTextResponse("ok")

    stm.init(traces_sample_rate=0.0, instrument_http_clients=False)
    app = Starlette(routes=[Route("/v", view)])
    app.add_middleware(TracingMiddleware)
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/v").status_code == 200
    gc.collect()
    assert len(kept) == 3 and all(tx is not None for tx in kept)
    assert [ref() for ref in states] == [None, None, None]


def test_an_error_captured_after_an_unsampled_request_ended_has_its_name(
    sentry_server: SentryServer,
) -> None:
    """A task the request started captures an error after the response: its event is
    named after the route, as a sampled request's (the deferred name outlives the
    request with the transaction, without its scope)."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    later: list[Any] = []

    async def fail_later() -> None:
        await asyncio.sleep(0.05)
        try:
            raise ValueError("later")
        except ValueError as exc:
            stm.capture_exception(exc)

    async def view(request: Request) -> Response:
        later.append(asyncio.get_running_loop().create_task(fail_later()))
        return PlainTextResponse("ok")

    names = {}
    for rate in (1.0, 0.0):
        sentry_server.clear()
        stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
        app = Starlette(routes=[Route("/items/{item_id}", view)])
        app.add_middleware(TracingMiddleware)

        async def go(app: Any = app) -> None:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                assert (await http.get("/items/4")).status_code == 200
            await asyncio.gather(*later)
            later.clear()

        asyncio.run(go())
        assert stm.flush(5) and sentry_server.wait_for(2 if rate else 1, 5)
        (event,) = sentry_server.events()
        names[rate] = (event["transaction"], event["transaction_info"]["source"])
        stm.close()
    assert names[0.0] == names[1.0] == ("/items/{item_id}", "route")


def test_a_mount_behind_a_wrapper_of_unknown_shape_is_watched_after_its_first_request(
    sentry_server: SentryServer,
) -> None:
    """A mounted app behind a wrapper keeping it under an attribute of its own: nothing
    shows where routing went in it, so its first unsampled request whose name is read is
    named after its URL (its handled 500 is still captured); from then on routing is
    watched and names are those of sampled requests."""
    paths = ["/sub/b/1?handled=1", "/sub/b/2?handled=1", "/sub/h/3"]
    runs: dict[float, tuple[list[tuple[str, str]], list[str], Any]] = {}
    for rate in (1.0, 0.0):
        sentry_server.clear()
        stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
        app, _ = _shape_attribute_wrapped_mount()
        with TestClient(app, raise_server_exceptions=False) as client:
            bodies = [client.get(path).text for path in paths]
        assert stm.flush(5) and sentry_server.wait_for(2 + (3 if rate else 0), 5)
        names = [
            (e["transaction"], e["transaction_info"]["source"]) for e in sentry_server.events()
        ]
        runs[rate] = (names, bodies, _tracing_layer(app))
        stm.close()
    unsampled, sampled = runs[0.0], runs[1.0]
    assert unsampled[0][0] == ("/sub/b/1", "url")
    assert unsampled[0][1:] == sampled[0][1:] and unsampled[1][2] == sampled[1][2]
    assert unsampled[2]._watch_unsampled is True


def _tracing_layer(app: Any) -> Any:
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    layer = app.middleware_stack
    while not isinstance(layer, TracingMiddleware):
        layer = layer.app
    return layer


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_common_apps_keep_the_unsampled_fast_path(framework: str) -> None:
    """Routers, included routers, mounts of routers and of static files, 404s, 405s,
    redirects, HEAD: none of it makes the middleware watch unsampled requests' routing."""
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    stm.init(traces_sample_rate=0.0, instrument_http_clients=False)
    if framework == "fastapi":
        from fastapi import APIRouter, FastAPI

        app = FastAPI()
        router = APIRouter(prefix="/api")

        @router.get("/items/{x}")
        async def item(x: str) -> str:
            return x

        app.include_router(router)
        paths = ["/api/items/1", "/nope", "/api/items/"]
    else:
        app = starlette_app(traced=False)
        paths = ["/", "/nope", "/users/1", "/static/", "/api/v1/items/x", "/sub/things/1"]
    app.add_middleware(TracingMiddleware)
    with TestClient(app, raise_server_exceptions=False) as client:
        for path in paths:
            client.get(path)
            client.head(path)
            client.post(path)
    assert _tracing_layer(app)._watch_unsampled is False


@pytest.mark.parametrize("style", ["route", "endpoint"])
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_flat_apps_are_named_from_the_routed_scope_as_when_routing_is_watched(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch, framework: str, style: str
) -> None:
    # An app that mounts nothing gets the scope itself, and its sampled requests are named
    # from the route routing leaves in it; the watching copy of the scope, which follows
    # every routing write, is the reference: names, sources and error events agree.
    from sentry_tracing_mw.integrations import starlette as integration

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    make = asgi_apps.flat_starlette_app if framework == "starlette" else asgi_apps.flat_fastapi_app
    ws_path = "/ws/lobby" if framework == "starlette" else "/api/v1/nested/ws/lobby"

    def names(kinds: list[type]) -> list[tuple[str, str, list[str]]]:
        got = []
        with TestClient(make(kinds, transaction_style=style), raise_server_exceptions=False) as c:
            for method, path, headers in asgi_apps.FLAT_REQUESTS:
                sentry_server.clear()
                c.request(method, path, headers=headers)
                assert stm.flush(5)
                (tx,) = sentry_server.transactions()
                errors = [e["transaction"] for e in sentry_server.events()]
                got.append((tx["transaction"], tx["transaction_info"]["source"], errors))
            sentry_server.clear()
            with c.websocket_connect(ws_path) as ws:
                assert ws.receive_text() == "lobby"
            assert stm.flush(5)
            (tx,) = sentry_server.transactions()
            got.append((tx["transaction"], tx["transaction_info"]["source"], []))
        return got

    # (a Starlette whose router does not record the route, as 0.31 does not, watches)
    fast_kind = dict if integration._ROUTER_SETS_ROUTE else integration._RoutingScope
    fast_kinds: list[type] = []
    fast = names(fast_kinds)
    monkeypatch.setattr(integration, "_ROUTER_SETS_ROUTE", False)
    watched_kinds: list[type] = []
    watched = names(watched_kinds)
    assert fast == watched
    assert set(fast_kinds) == {fast_kind}
    assert set(watched_kinds) == {integration._RoutingScope}
    by_request = dict(zip(asgi_apps.FLAT_REQUESTS_KEYS, fast, strict=False))
    if style == "route":
        user = "/users/{user_id:int}" if framework == "starlette" else "/users/{user_id}"
        assert by_request["GET /users/42"][:2] == (user, "route")
        assert by_request["GET /old/7"][:2] == (user, "route")  # the path routed
        assert by_request["GET /api/v1/nested/deep/9"][:2] == ("/api/v1/nested/deep/{x}", "route")
        assert by_request["GET /boom/3"] == ("/boom/{n}", "route", ["/boom/{n}"])
    else:
        assert by_request["GET /users/42"][1] == "component"
        assert by_request["GET /users/42"][0].endswith(".user")
    assert by_request["POST /users/42"][:2] == ("POST 405", "route")
    assert by_request["POST /api/v1/nested/deep/9"][:2] == ("POST 405", "route")
    assert by_request["GET /nope"][:2] == ("GET 404", "route")


def test_an_app_that_mounts_an_app_later_is_watched_from_then_on(
    sentry_server: SentryServer,
) -> None:
    from starlette.routing import Mount, Route

    from sentry_tracing_mw.integrations import starlette as integration

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    kinds: list[type] = []
    app = asgi_apps.flat_starlette_app(kinds)

    async def thing(request: Request) -> Response:
        return PlainTextResponse("thing")

    with TestClient(app) as c:
        c.get("/users/1")
        app.router.routes.append(Mount("/sub", routes=[Route("/things/{thing_id}", thing)]))
        assert c.get("/sub/things/7").text == "thing"
    got = transactions_by_name(sentry_server, 2)
    assert set(got) == {"/users/{user_id:int}", "/sub/things/{thing_id}"}
    first = dict if integration._ROUTER_SETS_ROUTE else integration._RoutingScope
    assert kinds == [first, integration._RoutingScope]


def test_a_root_path_set_before_routing_keeps_the_route_name(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy-prefix middleware sets root_path (the path keeps the prefix, as ASGI has it):
    # the route in the scope is still one of the app's own, named as when watched.
    import starlette.routing

    from sentry_tracing_mw.integrations import starlette as integration

    if not hasattr(starlette.routing, "get_route_path"):
        pytest.skip("this Starlette routes on the whole path: a root_path in front is a 404")

    class ForwardedPrefix:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/pfx/"):
                scope["root_path"] = "/pfx"
            await self.app(scope, receive, send)

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)

    def names() -> tuple[list[str], list[type]]:
        kinds: list[type] = []
        app = asgi_apps.flat_starlette_app(kinds, inner=(ForwardedPrefix,))  # inside ours
        with TestClient(app, raise_server_exceptions=False) as c:
            assert c.get("/pfx/users/1").status_code == 200
            assert c.get("/pfx/boom/2").status_code == 500
        assert stm.flush(5)
        got = [t["transaction"] for t in sentry_server.transactions()]
        got += [e["transaction"] for e in sentry_server.events()]
        sentry_server.clear()
        return got, kinds

    fast_kind = dict if integration._ROUTER_SETS_ROUTE else integration._RoutingScope
    fast, fast_kinds = names()
    monkeypatch.setattr(integration, "_ROUTER_SETS_ROUTE", False)
    watched, _ = names()
    assert fast == watched == ["/users/{user_id:int}", "/boom/{n}", "/boom/{n}"]
    assert fast_kinds == [fast_kind, fast_kind]


def test_a_request_routed_below_a_host_is_named_and_the_app_watched_from_then_on(
    sentry_server: SentryServer,
) -> None:
    # Below a Host the route in the scope is the Host's router's, not the app's own: the
    # request is named from the app's routes, and later sampled requests are watched.
    from sentry_tracing_mw.integrations import starlette as integration

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    kinds: list[type] = []
    with TestClient(asgi_apps.flat_starlette_app(kinds)) as c:
        c.get("/users/1")
        c.get("/host-route/5", headers={"host": "api.example.com"})
        c.get("/users/2")
    assert stm.flush(5)
    got = [t["transaction"] for t in sentry_server.transactions()]
    assert got == ["/users/{user_id:int}", "/host-route/{x}", "/users/{user_id:int}"]
    first = dict if integration._ROUTER_SETS_ROUTE else integration._RoutingScope
    assert kinds == [first, first, integration._RoutingScope]


@pytest.mark.parametrize("watched", [False, True])
def test_a_method_override_before_routing_names_the_route_it_reaches(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch, watched: bool
) -> None:
    # X-HTTP-Method-Override turns a POST into the PUT routing serves: named after the
    # route, whether routing is watched or read from the scope (was "POST 200" watched).
    from starlette.applications import Starlette
    from starlette.routing import Route

    from sentry_tracing_mw.integrations import starlette as integration
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    class MethodOverride:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            for name, value in scope.get("headers") or ():
                if name == b"x-http-method-override":
                    scope["method"] = value.decode()
            await self.app(scope, receive, send)

    async def put_item(request: Request) -> Response:
        return PlainTextResponse("put")

    if watched:
        monkeypatch.setattr(integration, "_ROUTER_SETS_ROUTE", False)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[Route("/items/{id}", put_item, methods=["PUT"])])
    app.add_middleware(MethodOverride)
    app.add_middleware(TracingMiddleware)
    with TestClient(app) as c:
        assert c.post("/items/1", headers={"x-http-method-override": "PUT"}).text == "put"
        assert c.post("/items/1").status_code == 405
    got = [t["transaction"] for t in flushed_transactions(sentry_server, 2)]
    assert got == ["/items/{id}", "POST 405"]


@pytest.mark.parametrize("style", ["route", "endpoint"])
@pytest.mark.parametrize("watched", [False, True])
def test_a_starlette_route_in_an_included_router_is_named_with_its_prefix(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch, watched: bool, style: str
) -> None:
    # A plain Starlette Route in an APIRouter (FastAPI's route context has no path or
    # endpoint of its own for it): named with the prefix, never "" (was, watched).
    from fastapi import APIRouter, FastAPI
    from starlette.routing import Route

    from sentry_tracing_mw.integrations import starlette as integration
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    async def star(request: Request) -> Response:
        return PlainTextResponse("star")

    if watched:
        monkeypatch.setattr(integration, "_ROUTER_SETS_ROUTE", False)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = FastAPI()
    router = APIRouter()
    router.routes.append(Route("/star/{x}", star))
    app.include_router(router, prefix="/api")
    app.add_middleware(TracingMiddleware, transaction_style=style)
    with TestClient(app) as c:
        assert c.get("/api/star/1").text == "star"
    (tx,) = flushed_transactions(sentry_server, 1)
    if style == "route":
        assert (tx["transaction"], tx["transaction_info"]["source"]) == ("/api/star/{x}", "route")
    else:
        assert tx["transaction"].endswith(".star")
        assert tx["transaction_info"]["source"] == "component"
