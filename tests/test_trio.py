"""Starlette and FastAPI on anyio's trio backend, and client disconnects the app does not
handle: the ASGI middleware must behave as it does on asyncio."""

from __future__ import annotations

import asyncio
import gc
import threading
import warnings
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations import asgi as generic_asgi
from sentry_tracing_mw.integrations.starlette import TracingMiddleware

from .asgi_apps import starlette_app
from .sentry_server import SentryServer, transactions_by_name

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _scope(path: str, method: str = "GET") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver")],
        "client": ("10.1.2.3", 50000),
        "server": ("testserver", 80),
    }


def test_lifespan_shutdown_flushes_on_trio(sentry_server: SentryServer) -> None:
    """On trio, lifespan shutdown waits for queued transactions as on asyncio (it could
    not reach asyncio's executor there, and returned at once)."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, shutdown_timeout=10)
    sentry_server.hang()
    release = threading.Timer(1.0, sentry_server.release)
    with TestClient(starlette_app(), backend="trio") as c:
        assert c.get("/plain").status_code == 200
        assert sentry_server.wait_hanging()
        release.start()
    # Exiting ran lifespan shutdown: the transaction was delivered by then.
    delivered = [t["transaction"] for t in sentry_server.transactions()]
    release.join()
    assert delivered == ["/plain"]


def _slow_app() -> Starlette:
    async def slow(request: Request) -> Response:
        await trio.sleep(30)
        return PlainTextResponse("late")

    app = Starlette(routes=[Route("/slow", slow)])
    app.add_middleware(TracingMiddleware)
    return app


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_request_cancelled_on_trio_is_cancelled_not_an_error(
    sentry_server: SentryServer, rate: float
) -> None:
    """A request task the server cancels (trio's Cancelled, as a shutting-down server
    does) is ``cancelled`` and no error, as asyncio's CancelledError is."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate)
    app = _slow_app()

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            await trio.sleep(60)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            pass

        with trio.move_on_after(0.3) as scope:
            await app(_scope("/slow"), receive, send)
        assert scope.cancelled_caught

    trio.run(main)
    assert stm.flush(5)
    assert sentry_server.events() == []
    if rate:
        tx = transactions_by_name(sentry_server, 1)["/slow"]
        assert tx["contexts"]["trace"]["status"] == "cancelled"


def _asyncio_tasks() -> int:
    # (type(), not isinstance(): the heap may hold weak proxies to dead objects)
    return sum(1 for o in gc.get_objects() if issubclass(type(o), asyncio.Task))


def test_disconnect_watch_is_not_scheduled_on_an_idle_asyncio_loop(
    sentry_server: SentryServer,
) -> None:
    """A streamed response on trio: no watch task is left on an asyncio loop that never
    runs (one per streamed response, never collected)."""

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = generic_asgi.TracingMiddleware(streaming)
    gc.collect()  # a task an earlier test left as garbage must not count as "before"
    before = _asyncio_tasks()

    async def main() -> None:
        async def receive() -> dict[str, Any]:
            await trio.sleep(60)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await trio.sleep(0)

        for _ in range(20):
            await app(_scope("/stream"), receive, send)

    trio.run(main)
    gc.collect()
    assert _asyncio_tasks() <= before  # a leak leaves one per streamed response (20)
    assert stm.flush(5)
    sent = sentry_server.transactions()
    assert len(sent) == 20
    assert {t["contexts"]["trace"]["status"] for t in sent} == {"ok"}


def _ws_app(rate: float, sentry_server: SentryServer) -> Starlette:
    async def chat(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:  # no handling of WebSocketDisconnect: it leaves the app
            text = await websocket.receive_text()
            await websocket.send_text(text)

    async def group(websocket: WebSocket) -> None:
        await websocket.accept()

        async def pump() -> None:
            while True:
                await websocket.send_text(await websocket.receive_text())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(pump)

    async def upload(request: Request) -> Response:
        await request.body()
        return PlainTextResponse("ok")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate)
    app = Starlette(
        routes=[
            WebSocketRoute("/chat", chat),
            WebSocketRoute("/group", group),
            Route("/up", upload, methods=["POST"]),
        ]
    )
    app.add_middleware(TracingMiddleware)
    return app


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions an exception group holds (the exception itself if not a group)."""
    inner = getattr(exc, "exceptions", None)
    if not isinstance(inner, (list, tuple)):
        return [exc]
    return [leaf for sub in inner for leaf in _leaves(sub)]


@pytest.mark.parametrize("path", ["/chat", "/group"])
@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_websocket_closed_by_the_client_is_no_application_error(
    sentry_server: SentryServer, rate: float, path: str
) -> None:
    """A chat loop that lets WebSocketDisconnect out when the client leaves (also from a
    task group, as an exception group): the client ended it, not a failure of the app (no
    error event; sampled: ``cancelled``)."""
    app = _ws_app(rate, sentry_server)
    with TestClient(app) as c:
        try:
            with c.websocket_connect(path) as ws:
                ws.send_text("hi")
                assert ws.receive_text() == "hi"
        except BaseException as exc:  # newer test clients re-raise it, older ones do not
            if not all(isinstance(leaf, WebSocketDisconnect) for leaf in _leaves(exc)):
                raise
    assert stm.flush(5)
    assert sentry_server.events() == []
    if rate:
        tx = transactions_by_name(sentry_server, 1)[path]
        assert tx["contexts"]["trace"]["status"] == "cancelled"
        assert tx["contexts"]["trace"]["op"] == "websocket.server"


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_upload_the_client_abandoned_is_no_application_error(
    sentry_server: SentryServer, rate: float
) -> None:
    """Starlette raises ClientDisconnect reading a body whose client went away: no error
    event, sampled or not."""
    app = _ws_app(rate, sentry_server)
    messages = [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        pass

    with pytest.raises(Exception) as raised:
        asyncio.run(app(_scope("/up", "POST"), receive, send))
    assert type(raised.value).__name__ == "ClientDisconnect"
    assert stm.flush(5)
    assert sentry_server.events() == []
    if rate:
        tx = transactions_by_name(sentry_server, 1)["/up"]
        assert tx["contexts"]["trace"]["status"] == "cancelled"


def test_an_application_error_on_a_websocket_is_still_captured(
    sentry_server: SentryServer,
) -> None:
    """Only the client's leaving is spared: an exception of the app's own is an error."""

    async def broken(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        raise KeyError("app bug")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = Starlette(routes=[WebSocketRoute("/broken", broken)])
    app.add_middleware(TracingMiddleware)

    with TestClient(app) as c:
        with pytest.raises(KeyError):
            with c.websocket_connect("/broken") as ws:
                ws.send_text("x")
                ws.receive_text()
    assert stm.flush(5) and sentry_server.wait_for(2)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    tx = transactions_by_name(sentry_server, 1)["/broken"]
    assert tx["contexts"]["trace"]["status"] == "internal_error"


def test_generic_middleware_captures_an_error_raised_after_a_websocket_closed(
    sentry_server: SentryServer,
) -> None:
    """The generic middleware knows no framework's disconnect exception: an exception the
    app raises after the client closed (its cleanup failing) is still an application error."""

    async def ws_app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        raise KeyError("cleanup failed")

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = generic_asgi.TracingMiddleware(ws_app)
    messages = [{"type": "websocket.connect"}, {"type": "websocket.disconnect", "code": 1000}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {**_scope("/ws"), "type": "websocket", "scheme": "ws"}
    with pytest.raises(KeyError):
        asyncio.run(app(scope, receive, send))
    assert stm.flush(5) and sentry_server.wait_for(2)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == "KeyError"


def test_lifespan_cancelled_on_trio_still_flushes(sentry_server: SentryServer) -> None:
    """A server that cancels the lifespan task (the app's shutdown outlived the server's
    patience): the flush that follows runs shielded, as it does on asyncio."""

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        await trio.sleep(30)  # a shutdown that never ends by itself

    app = Starlette(routes=[], lifespan=lifespan)
    app.add_middleware(TracingMiddleware)
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, shutdown_timeout=10)
    sentry_server.hang()
    release = threading.Timer(1.0, sentry_server.release)

    async def main() -> None:
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                with stm.start_transaction("queued", op="task"):
                    pass

        with trio.move_on_after(0.5):
            await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    release.start()
    trio.run(main)
    delivered = [t["transaction"] for t in sentry_server.transactions()]
    release.join()
    assert delivered == ["queued"]
