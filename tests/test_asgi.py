"""The generic ASGI middleware: lifecycle, propagation, lifespan and shutdown flush."""

from __future__ import annotations

import asyncio
import socket
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations.asgi import TracingMiddleware, flush_client

from .asgi_apps import http_scope, raw_asgi_app
from .sentry_server import SentryServer, flushed_transactions
from .servers import answer_lifespan, run_asgi, sigterm_with_queued_transactions

TRACE = "771a43a4192642f0b136d5159a501700"
PARENT = "b0e6f15b45c36b12"
BAGGAGE = (
    f"sentry-trace_id={TRACE},sentry-public_key=upstream,sentry-sample_rate=1.0,"
    "sentry-sample_rand=0.25,sentry-sampled=true,sentry-environment=up,other=keep"
)


async def call(
    app: Any,
    method: str = "GET",
    path: str = "/plain",
    headers: dict[str, str] | None = None,
    query: bytes = b"",
    kind: str = "http",
) -> tuple[int, bytes]:
    """Drive an ASGI app directly (no server): returns (status, body)."""
    scope = {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": ("10.1.2.3", 50000),
        "server": ("testserver", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def one_tx(server: SentryServer) -> dict[str, Any]:
    assert stm.flush(5)
    txs = server.transactions()
    assert len(txs) == 1, [t["transaction"] for t in txs]
    return txs[0]


def test_http_transaction_status_and_request_data(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = TracingMiddleware(raw_asgi_app)
    status, body = asyncio.run(
        call(
            app,
            path="/plain",
            query=b"a=1&token=secret",
            headers={
                "Authorization": "Bearer x",
                "Cookie": "c=1",
                "X-Forwarded-For": "1.1.1.1",
                "X-Real-IP": "1.1.1.2",
                "X-Api-Key": "k",
                "Accept": "text/plain",
                "Host": "example.org",
            },
        )
    )
    assert (status, body) == (200, b"True")  # the app saw a current span
    tx = one_tx(sentry_server)
    assert tx["transaction"] == "/plain"
    assert tx["transaction_info"] == {"source": "url"}
    trace = tx["contexts"]["trace"]
    assert (trace["op"], trace["origin"], trace["status"]) == (
        "http.server",
        "auto.http.asgi",
        "ok",
    )
    assert trace["data"]["http.response.status_code"] == 200
    assert tx["contexts"]["response"] == {"status_code": 200}
    assert tx["tags"]["http.status_code"] == "200"
    req = tx["request"]
    assert req["method"] == "GET"
    assert req["url"] == "http://example.org/plain"
    assert req["query_string"] == "a=1&token=[Filtered]"
    assert req["headers"] == {"Accept": "text/plain", "Host": "example.org"}
    assert "REMOTE_ADDR" not in req.get("env", {})
    assert "cookies" not in req


def test_request_data_with_pii(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, send_default_pii=True)
    app = TracingMiddleware(raw_asgi_app)
    asyncio.run(
        call(app, headers={"Authorization": "Bearer x", "Cookie": "c=1"}, query=b"token=secret")
    )
    req = one_tx(sentry_server)["request"]
    assert req["headers"]["Authorization"] == "Bearer x"
    assert req["cookies"] == "c=1"
    assert req["query_string"] == "token=secret"
    assert req["env"]["REMOTE_ADDR"] == "10.1.2.3"


def test_split_cookie_headers_are_joined_and_bounded() -> None:
    # HTTP/2 clients may send one Cookie header per cookie; many of them (hostile or not)
    # still give one bounded cookies string (PII only) and a bounded Cookie header value.
    from sentry_tracing_mw.integrations.asgi import asgi_request_info

    few = {"type": "http", "headers": [(b"cookie", b"a=1"), (b"cookie", b"b=2")]}
    assert asgi_request_info(few, True)["cookies"] == "a=1; b=2"
    assert asgi_request_info(few, True)["headers"]["Cookie"] == "a=1; b=2"
    assert "cookies" not in asgi_request_info(few, False)
    many = {
        "type": "http",
        "headers": [(b"cookie", b"c%d=%s" % (i, b"x" * 8000)) for i in range(300)],
    }
    info = asgi_request_info(many, True)
    assert info["cookies"].startswith("c0=x") and len(info["cookies"]) <= 8192
    assert len(info["headers"]["Cookie"]) <= 2048


@pytest.mark.parametrize(("kind", "scheme"), [("http", "http"), ("websocket", "ws")])
def test_scheme_left_out_by_the_server_is_the_asgi_default(kind: str, scheme: str) -> None:
    # daphne sends websocket scopes without "scheme": the ASGI spec's default is "ws".
    from sentry_tracing_mw.integrations.asgi import asgi_request_info

    scope = {"type": kind, "path": "/ws/lobby", "headers": [(b"host", b"example.com")]}
    assert asgi_request_info(scope, False)["url"] == f"{scheme}://example.com/ws/lobby"


def test_trace_headers_read_the_same_through_every_header_shape() -> None:
    # The one-pass dict read (unique names in a list) and the general reader (repeats,
    # tuples, odd pairs, values of other types) give what the generic extract() gives,
    # and never raise.
    from sentry_tracing_mw._propagation import ASGI_GETTER, extract
    from sentry_tracing_mw.integrations.asgi import _incoming

    def read(headers: Any) -> Any:
        incoming = _incoming({"headers": headers})
        assert incoming == extract({"headers": headers}, ASGI_GETTER, lazy=True)
        return incoming

    st = b"0123456789abcdef0123456789abcdef-0123456789abcdef-1"
    tid = st[:32].decode()
    plain = [(b"host", b"h"), (b"sentry-trace", st), (b"baggage", b"a=1")]
    found = read(plain)
    assert found is not None and found.trace_id == tid and found.baggage == "a=1"
    assert read(tuple(plain)) == found == read([list(p) for p in plain])
    assert read([(b"host", b"h"), (b"accept", b"*/*")]) is None
    assert read([(b"accept", b"a"), (b"accept", b"b")]) is None  # repeats, none of ours
    assert read([]) is None and read(None) is None
    repeated = read([*plain, (b"baggage", b"b=2"), (b"accept", b"x")])
    assert repeated is not None and repeated.baggage == "a=1,b=2"  # joined, kept unparsed
    assert repeated.parent_sampled is True
    # Shapes no ASGI server sends: the header that can be read is read, the rest skipped.
    for odd in (
        [(b"sentry-trace", st), (b"sentry-trace", None)],
        [(b"sentry-trace", 1), (b"sentry-trace", st)],
        [(b"sentry-trace", st), (b"baggage",)],
        [(b"sentry-trace", st), None],
        [(b"sentry-trace", st), 5],
        [(bytearray(b"x-other"), b"1"), (b"sentry-trace", st)],
        [(b"x",), (b"sentry-trace", st)],
        [(b"sentry-trace", st.decode())],
        [(b"sentry-trace", memoryview(st))],
    ):
        got = read(odd)
        assert got is not None and got.trace_id == tid, odd
    assert read([(b"sentry-trace", st, b"z")]) is None  # not a pair
    assert read(3) is None and read(b"sentry-trace") is None
    # Any iterable is read once (a generator too: the generic reader would read it again).
    assert _incoming({"headers": iter(plain)}) == found


def test_app_renames_and_unmatched_keeps_url(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = TracingMiddleware(raw_asgi_app)
    asyncio.run(call(app, path="/rename"))
    asyncio.run(call(app, path="/missing"))
    assert stm.flush(5)
    by_name = {t["transaction"]: t for t in sentry_server.transactions()}
    assert by_name["renamed-by-app"]["transaction_info"]["source"] == "custom"
    missing = by_name["/missing"]
    assert missing["transaction_info"]["source"] == "url"
    assert missing["contexts"]["trace"]["status"] == "not_found"


def test_streamed_body_duration(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = TracingMiddleware(raw_asgi_app)
    with run_asgi(app) as url:
        r = httpx.get(url + "/stream", timeout=10)
    assert r.status_code == 200 and len(r.content) == 6 * 65536
    tx = one_tx(sentry_server)
    assert tx["timestamp"] - tx["start_timestamp"] >= 0.3


def test_exception_linked_and_reraised_unchanged(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = TracingMiddleware(raw_asgi_app)
    with pytest.raises(KeyError) as info:
        asyncio.run(call(app, path="/error"))
    assert info.value.args == ("raw boom",)
    assert stm.flush(5)
    assert sentry_server.wait_for(2)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    # no response had started: the server answers 500, and the transaction says so
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 500
    assert tx["contexts"]["response"] == {"status_code": 500}
    assert event["contexts"]["trace"]["trace_id"] == tx["contexts"]["trace"]["trace_id"]
    assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]
    exc = event["exception"]["values"][-1]
    assert exc["type"] == "KeyError"
    assert exc["mechanism"]["handled"] is False


def test_app_returning_without_a_response_is_an_error(sentry_server: SentryServer) -> None:
    # An app that returns without starting a response failed (uvicorn answers 500): the
    # transaction says so, not "ok", and claims no status code it did not see.
    async def silent(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with run_asgi(TracingMiddleware(silent)) as url:
        r = httpx.get(url + "/quiet", timeout=5)
    assert r.status_code == 500
    tx = one_tx(sentry_server)
    assert tx["transaction"] == "/quiet"  # the generic middleware keeps the URL
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert "http.response.status_code" not in tx["contexts"]["trace"].get("data", {})
    assert "response" not in tx["contexts"]


def test_untraced_method_still_reports_errors_ignored_path_does_not(
    sentry_server: SentryServer,
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with pytest.raises(KeyError):  # OPTIONS is not traced by default: its error is reported
        asyncio.run(
            call(
                TracingMiddleware(raw_asgi_app),
                method="OPTIONS",
                path="/error",
                headers={"authorization": "Bearer x", "x-custom": "visible"},
            )
        )
    with pytest.raises(KeyError):  # an ignored path: nothing at all
        asyncio.run(call(TracingMiddleware(raw_asgi_app, ignore_paths=["/error"]), path="/error"))
    assert stm.flush(5) and sentry_server.wait_for(1)
    assert stm.flush(1) and sentry_server.transactions() == []
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "asgi", "handled": False}
    # its request data, as a traced request's events carry it (privacy rules applied)
    request = event["request"]
    assert request["method"] == "OPTIONS" and request["url"].endswith("/error")
    headers = {k.lower(): v for k, v in dict(request["headers"]).items()}
    assert headers.get("x-custom") == "visible" and "authorization" not in headers


def test_ignore_paths_and_untraced_methods_get_own_trace(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(stm.get_trace_headers()["sentry-trace"].split("-")[0])
        await raw_asgi_app(scope, receive, send)

    mw = TracingMiddleware(app, ignore_paths=["/health", "/static/*"])
    for method, path in [
        ("GET", "/health"),
        ("GET", "/static/a.css"),
        ("HEAD", "/plain"),
        ("OPTIONS", "/plain"),
        ("HEAD", "/plain"),
    ]:
        asyncio.run(call(mw, method=method, path=path))
    assert stm.flush(5)
    assert sentry_server.transactions() == []
    assert len(set(seen)) == len(seen) == 5  # every request its own trace


def test_ignore_paths_below_a_root_path(sentry_server: SentryServer) -> None:
    """Under ``uvicorn --root-path /api`` the scope's path includes the root path: the
    app's paths are ignored as they are under WSGI (``PATH_INFO`` below ``SCRIPT_NAME``),
    the full path too."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    mw = TracingMiddleware(raw_asgi_app, ignore_paths=["/health", "/api/ready"])
    with run_asgi(mw, root_path="/api") as base:
        for path in ("/health", "/ready", "/plain"):
            assert httpx.get(f"{base}{path}", timeout=5).status_code == 200
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["request"]["url"].endswith("/api/plain")


def test_methods_to_capture_option(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    mw = TracingMiddleware(raw_asgi_app, http_methods_to_capture=("HEAD",))
    asyncio.run(call(mw, method="GET"))
    asyncio.run(call(mw, method="HEAD"))
    tx = one_tx(sentry_server)
    assert tx["request"]["method"] == "HEAD"


@pytest.mark.parametrize("style", ["sentry", "traceparent"])
def test_continues_incoming_trace(sentry_server: SentryServer, style: str) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0)  # the parent decides
    if style == "sentry":
        headers = {"sentry-trace": f"{TRACE}-{PARENT}-1", "baggage": BAGGAGE}
    else:
        headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    asyncio.run(call(TracingMiddleware(raw_asgi_app), headers=headers))
    assert stm.flush(5)
    (tx,) = sentry_server.transactions()
    trace = tx["contexts"]["trace"]
    assert (trace["trace_id"], trace["parent_span_id"]) == (TRACE, PARENT)
    dsc = sentry_server.envelopes()[0].headers["trace"]
    assert dsc["trace_id"] == TRACE
    if style == "sentry":
        assert dsc["public_key"] == "upstream" and dsc["environment"] == "up"


def test_websocket_one_transaction(sentry_server: SentryServer) -> None:
    from starlette.testclient import TestClient

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with TestClient(TracingMiddleware(raw_asgi_app)) as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "echo:hi"
    tx = one_tx(sentry_server)
    assert tx["contexts"]["trace"]["op"] == "websocket.server"
    assert tx["contexts"]["trace"]["status"] == "ok"
    assert tx["transaction"] == "/ws"


def _lifespan_run(app: Any) -> list[str]:
    """Run a full lifespan cycle; returns the messages the app sent."""
    sent: list[str] = []
    inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    return sent


def test_lifespan_passthrough_identical() -> None:
    from starlette.applications import Starlette

    calls: list[str] = []

    async def lifespan(app: Any) -> Any:
        calls.append("startup")
        yield
        calls.append("shutdown")

    from contextlib import asynccontextmanager

    bare = _lifespan_run(Starlette(lifespan=asynccontextmanager(lifespan)))
    assert calls == ["startup", "shutdown"]
    calls.clear()
    traced = _lifespan_run(TracingMiddleware(Starlette(lifespan=asynccontextmanager(lifespan))))
    assert calls == ["startup", "shutdown"]
    assert traced == bare == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_app_without_lifespan_support_behaves_the_same() -> None:
    error = RuntimeError("no lifespan here")

    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise error
        await raw_asgi_app(scope, receive, send)

    with pytest.raises(RuntimeError) as info:
        _lifespan_run(TracingMiddleware(http_only))
    assert info.value is error
    # uvicorn's "auto" lifespan mode: serves requests as without us.
    with run_asgi(TracingMiddleware(http_only)) as url:
        assert httpx.get(url + "/plain", timeout=5).status_code == 200


SHUTDOWN_SCRIPT = textwrap.dedent(
    """
    import sys
    import uvicorn
    import sentry_tracing_mw as stm
    from sentry_tracing_mw.integrations.asgi import TracingMiddleware
    from tests.asgi_apps import raw_asgi_app

    stm.init(dsn=sys.argv[1], traces_sample_rate=1.0, shutdown_timeout=10)
    app = TracingMiddleware(raw_asgi_app)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                lifespan="on")
    """
)


def test_lifespan_shutdown_flushes_queued_transactions(sentry_server: SentryServer) -> None:
    names = sigterm_with_queued_transactions(
        sentry_server, SHUTDOWN_SCRIPT, ("/warmup", "/first", "/queued")
    )
    assert names == ["/first", "/queued", "/warmup"]


GRACEFUL_TIMEOUT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route
    import sentry_tracing_mw as stm
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    async def stream(request):
        async def chunks():
            for _ in range(200):
                yield b"x" * 100
                await asyncio.sleep(0.05)
        return StreamingResponse(chunks())

    async def slow(request):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # cleaning up (a rollback, say) before it ends
            raise
        return PlainTextResponse("late")

    stm.init(dsn=sys.argv[1], traces_sample_rate=1.0, shutdown_timeout=5)
    app = Starlette(routes=[Route("/stream", stream), Route("/slow", slow)])
    app.add_middleware(TracingMiddleware)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="critical",
                timeout_graceful_shutdown=0.5)
    """
)


def test_requests_cancelled_by_the_servers_graceful_timeout_are_flushed(
    sentry_server: SentryServer, tmp_path: Any
) -> None:
    # uvicorn cancels the requests still running when timeout_graceful_shutdown expires,
    # then runs lifespan shutdown at once: their transactions end while the tasks unwind,
    # after the flush started, and must still be sent before the process exits.
    import os
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from .servers import free_port, wait_listening

    port = free_port()
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen(
        [sys.executable, "-c", GRACEFUL_TIMEOUT_SCRIPT, sentry_server.dsn, str(port)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    base = f"http://127.0.0.1:{port}"
    started = threading.Event()

    def read_stream() -> None:
        try:
            with httpx.stream("GET", base + "/stream", timeout=20) as response:
                for _ in response.iter_bytes():
                    started.set()
        except httpx.HTTPError:
            pass

    def wait_slow() -> None:
        try:
            httpx.get(base + "/slow", timeout=20)
        except httpx.HTTPError:
            pass

    threads = [threading.Thread(target=read_stream), threading.Thread(target=wait_slow)]
    try:
        wait_listening(port, proc)
        for thread in threads:
            thread.start()
        assert started.wait(10)
        time.sleep(0.3)  # /slow is in the app too
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for thread in threads:
            thread.join(20)
    # (no wait: whatever the process sent before it exited is all there is)
    statuses = {
        t["transaction"]: t["contexts"]["trace"].get("status") for t in sentry_server.transactions()
    }
    if sys.version_info < (3, 11):
        # No Task.cancelling(): cancelled requests get a few turns of the loop, enough to
        # unwind, not to clean up for 0.3 s.
        statuses.pop("/slow", None)
        assert statuses == {"/stream": "cancelled"}, statuses
    else:
        assert statuses == {"/stream": "cancelled", "/slow": "cancelled"}, statuses


def test_lifespan_flush_waits_for_no_task_that_serves_no_request(
    sentry_server: SentryServer,
) -> None:
    # Only tasks serving a sampled request of ours are waited for: not an app's task that
    # swallowed a cancellation (Task.cancelling() stays 1), nor the server's own task
    # waiting for lifespan shutdown (hypercorn's, on Python 3.11 and 3.12).
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, shutdown_timeout=5)

    async def main() -> float:
        stop = False

        async def stubborn() -> None:
            while not stop:
                try:
                    await asyncio.sleep(10)
                except asyncio.CancelledError:
                    continue  # woken early, and carries on

        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        started = time.monotonic()
        await flush_client()
        elapsed = time.monotonic() - started
        stop = True
        task.cancel()
        await task
        return elapsed

    assert asyncio.run(main()) < 1.0


def test_lifespan_flush_waits_for_no_request_the_server_left_open(
    sentry_server: SentryServer,
) -> None:
    # A request the server did not cancel (granian leaves websockets open through lifespan
    # shutdown) is not waited for: only those cancelled and unwinding are.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, shutdown_timeout=5)

    async def main() -> float:
        release = asyncio.Event()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await release.wait()
            await send({"type": "http.response.body", "body": b"late"})

        async def receive() -> dict[str, Any]:
            await asyncio.sleep(60)
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            pass

        scope = http_scope("/open")
        request = asyncio.create_task(TracingMiddleware(app)(scope, receive, send))
        await asyncio.sleep(0.05)  # the request is in the app
        started = time.monotonic()
        await flush_client()
        elapsed = time.monotonic() - started
        release.set()
        await request
        return elapsed

    assert asyncio.run(main()) < 1.0


def test_lifespan_flush_that_times_out_says_what_may_be_lost(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    # A server may end the process right after lifespan shutdown (uvicorn, granian): what
    # is still queued then is lost where no client report can count it, so it is logged.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, shutdown_timeout=1.0)
    app = TracingMiddleware(TracingMiddleware(raw_asgi_app))  # nested: flushed once
    sentry_server.hang()
    try:
        for path in ("/first", "/queued"):
            with stm.start_transaction(path, op="task"):
                pass
        assert sentry_server.wait_hanging()  # the first is in flight, the second queued

        async def lifespan() -> list[str]:
            messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
            sent: list[str] = []

            async def receive() -> dict[str, Any]:
                return next(messages)

            async def send(message: dict[str, Any]) -> None:
                sent.append(message["type"])

            await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
            return sent

        with caplog.at_level("WARNING", logger="sentry_tracing_mw"):
            started = time.monotonic()
            sent = asyncio.run(lifespan())
            flushed = time.monotonic() - started
            # A server that exits normally then runs atexit's close() (hypercorn): the
            # shutdown budget is spent, so it does not wait a second shutdown_timeout.
            started = time.monotonic()
            stm.close()
            closed = time.monotonic() - started
    finally:
        sentry_server.release()
    assert flushed >= 1.0 and closed < 0.5, (flushed, closed)
    assert sent[-1] == "lifespan.shutdown.complete"
    (record,) = [r for r in caplog.records if "lifespan shutdown" in r.getMessage()]
    assert "1 transaction(s) (1 span(s)) and 0 error event(s)" in record.getMessage()
    assert "one more envelope still being sent" in record.getMessage()


def _leaving_client(gone: asyncio.Event) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI ``receive``: the (empty) request body, then a disconnect once ``gone`` is set."""
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


def test_disconnect_seen_after_the_app_stops_listening(sentry_server: SentryServer) -> None:
    # The app waits in receive() (with a timeout) while its stream starts, so the watch is
    # skipped for it; when it stops listening, the watch starts in its place. The server
    # (ASGI < 2.4, like uvicorn) drops sends to the gone client silently.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        pending = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"y", "more_body": True})
        try:
            await asyncio.wait_for(pending, 0.05)
        except asyncio.TimeoutError:
            pass
        for _ in range(20):
            await send({"type": "http.response.body", "body": b"y", "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})

    async def drive() -> None:
        gone = asyncio.Event()
        receive = _leaving_client(gone)

        chunks = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal chunks
            chunks += bool(message.get("more_body"))
            if chunks == 5:
                gone.set()  # the client leaves once the app stopped listening: sends go nowhere

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "method": "GET", "path": "/peek", "headers": []}  # fmt: skip
        await TracingMiddleware(app)(scope, receive, send)

    asyncio.run(drive())
    assert stm.flush(5) and sentry_server.wait_for(1)
    (tx,) = sentry_server.transactions()
    assert tx["contexts"]["trace"]["status"] == "cancelled"


def test_a_head_request_is_complete_once_its_response_starts(sentry_server: SentryServer) -> None:
    """A HEAD response has no body (the server sends none): a client that leaves once it
    has the headers got all of it, while the app goes on with a streamed body it is
    listening for the disconnect to stop. It was ``cancelled``."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        listener = asyncio.ensure_future(receive())  # as Starlette's StreamingResponse
        for _ in range(50):
            if listener.done():
                return
            await send({"type": "http.response.body", "body": b"y", "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})

    async def drive() -> None:
        started = asyncio.Event()
        receive = _leaving_client(started)

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.set()  # the client has the headers: all of a HEAD response

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "method": "HEAD", "path": "/feed", "headers": []}  # fmt: skip
        await TracingMiddleware(app, http_methods_to_capture=("GET", "HEAD"))(scope, receive, send)

    asyncio.run(drive())
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["contexts"]["trace"]["status"] == "ok"
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 200


def test_a_head_request_whose_client_left_is_no_error(sentry_server: SentryServer) -> None:
    """An ASGI 2.4 server raises OSError at a send once the client left (uvicorn's
    ClientDisconnected): for a HEAD response as for a GET, that is the client's leaving,
    re-raised to the app, not an error of the app's."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(3):
            await send({"type": "http.response.body", "body": b"y", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def drive() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] != "http.response.start":
                raise ConnectionResetError("the client left")

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
                 "method": "HEAD", "path": "/feed", "headers": []}  # fmt: skip
        with pytest.raises(ConnectionResetError):
            await TracingMiddleware(app, http_methods_to_capture=("HEAD",))(scope, receive, send)

    asyncio.run(drive())
    (tx,) = flushed_transactions(sentry_server, 1)
    assert tx["contexts"]["trace"]["status"] == "cancelled"
    assert sentry_server.events() == []


def test_client_disconnect_mid_stream_is_cancelled(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = TracingMiddleware(raw_asgi_app)
    with run_asgi(app) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert sentry_server.wait_for(1, timeout=10)
    tx = one_tx(sentry_server)
    assert tx["contexts"]["trace"]["status"] == "cancelled"
    assert sentry_server.events() == []


def test_concurrent_requests_are_isolated(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    seen: list[tuple[str, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            span = stm.get_current_span()
            assert span is not None
            await asyncio.sleep(0.05)
            assert stm.get_current_span() is span  # nobody else's span leaked in
            seen.append((scope["path"], span.trace_id))
        await raw_asgi_app(scope, receive, send)

    with run_asgi(TracingMiddleware(app)) as url:

        async def many() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                await asyncio.gather(*(client.get(f"/r{i}") for i in range(10)))

        asyncio.run(many())
    assert len({trace for _, trace in seen}) == 10
    assert stm.flush(5)
    txs = sentry_server.transactions()
    assert {t["transaction"]: t["contexts"]["trace"]["trace_id"] for t in txs} == dict(seen)


def test_nested_generic_around_generic_is_one_transaction(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    app = TracingMiddleware(TracingMiddleware(raw_asgi_app))
    asyncio.run(call(app, path="/plain"))
    one_tx(sentry_server)


def test_unsampled_sends_nothing_but_propagates(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0)
    status, _ = asyncio.run(call(TracingMiddleware(raw_asgi_app)))
    assert status == 200
    assert stm.flush(5)
    assert sentry_server.transactions() == []


def test_unsampled_request_still_captures_errors_but_not_disconnects(
    sentry_server: SentryServer,
) -> None:
    """Error events do not depend on sampling; a send to a gone client is no app error."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0)
    app = TracingMiddleware(raw_asgi_app)
    with pytest.raises(KeyError):
        asyncio.run(call(app, path="/error"))
    assert stm.flush(5)
    assert sentry_server.wait_for(1)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == "KeyError"
    assert sentry_server.transactions() == []

    async def gone(message: dict[str, Any]) -> None:
        raise ConnectionResetError("client went away")

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/plain", "headers": []}
    with pytest.raises(ConnectionResetError):
        asyncio.run(app(scope, receive, gone))
    assert stm.flush(5)
    assert len(sentry_server.events()) == 1  # nothing new
    assert stm.get_current_span() is None


@pytest.mark.parametrize("rate", [1.0, 0.0])
@pytest.mark.parametrize("method", ["GET", "OPTIONS"])  # traced, untraced
def test_a_responses_last_message_is_sent_with_no_trace_context(
    sentry_server: SentryServer, rate: float, method: str
) -> None:
    # The server may start the connection's next request inside the last send (uvicorn,
    # for a request already buffered): that request's task must not start with this
    # request's span. Trailers, when announced, are the last message.
    from sentry_tracing_mw._context import CURRENT_SPAN, PROPAGATION_CONTEXT

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate)
    seen: list[tuple[str, bool, bool]] = []

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"].rpartition(".")[2]
        seen.append((kind, CURRENT_SPAN.get() is not None, PROPAGATION_CONTEXT.get() is not None))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": method, "path": "/t", "headers": [], "asgi": {}}
    asyncio.run(TracingMiddleware(app)(scope, receive, send))
    traced = method == "GET"
    assert seen == [
        ("start", traced, not traced),
        ("body", traced, not traced),
        ("body", False, False),
        ("trailers", False, False),
    ]


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_the_trace_context_after_the_last_send_is_the_requests_whatever_the_send_did(
    sentry_server: SentryServer, rate: float
) -> None:
    # The send may fail, and code inside it may keep a trace context of its own (our API
    # called where no span is current): the app's context afterwards is its request's.
    from sentry_tracing_mw._context import CURRENT_SPAN, PROPAGATION_CONTEXT

    after: list[tuple[bool, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        span = CURRENT_SPAN.get()
        await send({"type": "http.response.start", "status": 200})
        with pytest.raises(ConnectionResetError):
            await send({"type": "http.response.body", "body": b"x"})
        after.append((span is not None and CURRENT_SPAN.get() is span, PROPAGATION_CONTEXT.get()))

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate)

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            assert stm.get_trace_headers()  # no span current here: an ambient trace is kept
            raise ConnectionResetError

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/t", "headers": [], "asgi": {}}
    asyncio.run(TracingMiddleware(app)(scope, receive, send))
    assert after == [(True, None)]


def test_keep_alive_requests_after_a_large_upload_get_their_own_traces(
    sentry_server: SentryServer,
) -> None:
    # A body over uvicorn's high-water mark pauses reading; the app's receive() resumes it
    # inside the request's context, so the connection's later request tasks start with a
    # copy of that context (the request's span current). They are still their own.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        span = stm.get_current_span()
        body = f"{span.trace_id if span else None}".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def read_response(sock: socket.socket, data: bytes) -> tuple[str, bytes]:
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += sock.recv(65536)
        return rest[:length].decode(), rest[length:]

    big = b"x" * 100_000  # over the high-water mark (64 KiB), its last part under it
    with run_asgi(TracingMiddleware(app), http="h11", loop="asyncio") as url:
        port = int(url.rpartition(":")[2])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big) + big
            )
            seen = [read_response(sock, b"")[0]]
            for path in (b"/second", b"/third"):
                time.sleep(0.05)
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                seen.append(read_response(sock, b"")[0])
        txs = flushed_transactions(sentry_server, 3)
    assert len(set(seen)) == 3, seen
    assert {t["contexts"]["trace"]["trace_id"] for t in txs} == set(seen)
    assert all("parent_span_id" not in t["contexts"]["trace"] for t in txs)


def test_scope_holding_the_transaction_deep_copies_and_pickles() -> None:
    # The transaction lives in the scope for inner integrations; an app that deep-copies
    # or pickles its scope (to hand it to a worker) must keep working.
    import copy
    import pickle

    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        plain = {k: v for k, v in scope.items() if k != "app"}
        seen["deep"] = copy.deepcopy(plain)
        seen["pickled"] = pickle.loads(pickle.dumps(plain))
        seen["tx"] = stm.get_current_span()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    stm.init(dsn=None, traces_sample_rate=1.0)
    assert asyncio.run(call(TracingMiddleware(app))) == (200, b"ok")
    assert seen["tx"] is not None
    assert seen["deep"]["sentry_tracing_mw.transaction"] is seen["tx"]
    assert seen["pickled"]["sentry_tracing_mw.transaction"] is None
    assert seen["pickled"]["path"] == "/plain"
