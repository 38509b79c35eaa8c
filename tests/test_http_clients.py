"""Outgoing HTTP instrumentation against a real recording server on 127.0.0.1.

Every client (urllib.request, http.client, urllib3, requests, httpx sync and async) is
checked on the raw header bytes the server received: injection, no duplicate headers,
baggage merging, target filtering, DSN exclusion, span timing, errors and redirects.
"""

from __future__ import annotations

import asyncio
import contextvars
import http.client
import socket
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
import urllib3

import sentry_tracing_mw as stm
from sentry_tracing_mw._client import get_client
from sentry_tracing_mw._context import PROPAGATION_CONTEXT, SUPPRESS_INSTRUMENTATION
from sentry_tracing_mw._propagation import extract
from sentry_tracing_mw._tracing import Span, Transaction, http_status_to_span_status
from sentry_tracing_mw.integrations import http_clients

from .recording_server import RecordingServer, running
from .sentry_server import SentryServer
from .servers import free_port

OnHeaders = Callable[[], None]


# --------------------------------------------------------------------------- client adapters


class Client:
    """One HTTP client library behind a common test interface."""

    name = ""
    origin = "auto.http.stdlib"
    follows_redirects = True

    def get(
        self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        raise NotImplementedError

    def stream(self, url: str, on_headers: OnHeaders) -> bytes:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class UrllibClient(Client):
    name = "urllib"

    def get(
        self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def stream(self, url: str, on_headers: OnHeaders) -> bytes:
        with urllib.request.urlopen(url, timeout=5) as resp:
            on_headers()
            return b"".join(iter(lambda: resp.read(4), b""))


class HttpClientClient(Client):
    name = "http.client"
    follows_redirects = False

    def _conn(self, url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout), target

    def get(
        self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        conn, target = self._conn(url, timeout)
        try:
            conn.request("GET", target, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def stream(self, url: str, on_headers: OnHeaders) -> bytes:
        conn, target = self._conn(url, 5)
        try:
            conn.request("GET", target)
            resp = conn.getresponse()
            on_headers()
            return b"".join(iter(lambda: resp.read1(8), b""))
        finally:
            conn.close()


class Urllib3Client(Client):
    name = "urllib3"

    def _pool(self) -> urllib3.PoolManager:
        return urllib3.PoolManager(
            retries=urllib3.Retry(total=5, connect=0, read=0, redirect=5, status=0)
        )

    def get(
        self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        with self._pool() as pool:
            resp = pool.request("GET", url, headers=headers, timeout=timeout)
            return resp.status, resp.data

    def stream(self, url: str, on_headers: OnHeaders) -> bytes:
        with self._pool() as pool:
            resp = pool.request("GET", url, preload_content=False, timeout=5)
            on_headers()
            data = b"".join(resp.stream(4))
            resp.release_conn()
            return data


class RequestsClient(Client):
    name = "requests"

    def get(
        self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        with requests.Session() as session:
            resp = session.get(url, headers=headers, timeout=timeout)
            return resp.status_code, resp.content

    def stream(self, url: str, on_headers: OnHeaders) -> bytes:
        with requests.Session() as session, session.get(url, stream=True, timeout=5) as resp:
            on_headers()
            return b"".join(resp.iter_content(4))


class HttpxClient(Client):
    """httpx.Client."""

    name = "httpx"
    origin = "auto.http.httpx"

    def _transport(self, cls: type[Any]) -> Any:
        return cls()

    def _client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(transport=self._transport(httpx.HTTPTransport), **kwargs)

    def get(
        self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        with self._client(follow_redirects=True, timeout=timeout) as client:
            resp = client.get(url, headers=headers)
            return resp.status_code, resp.content

    def stream(self, url: str, on_headers: OnHeaders) -> bytes:
        with self._client() as client, client.stream("GET", url) as resp:
            on_headers()
            return b"".join(resp.iter_raw(4))


class AsyncHttpxClient(HttpxClient):
    name = "httpx-async"

    def _async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self._transport(httpx.AsyncHTTPTransport), **kwargs)

    def get(
        self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        async def run() -> tuple[int, bytes]:
            async with self._async_client(follow_redirects=True, timeout=timeout) as client:
                resp = await client.get(url, headers=headers)
                return resp.status_code, resp.content

        return asyncio.run(run())

    def stream(self, url: str, on_headers: OnHeaders) -> bytes:
        async def run() -> bytes:
            async with self._async_client() as client, client.stream("GET", url) as resp:
                on_headers()
                return b"".join([chunk async for chunk in resp.aiter_raw(4)])

        return asyncio.run(run())


CLIENTS = [
    UrllibClient(),
    HttpClientClient(),
    Urllib3Client(),
    RequestsClient(),
    HttpxClient(),
    AsyncHttpxClient(),
]
FOLLOWING = [c for c in CLIENTS if c.follows_redirects]
TRACE_HEADERS = ("sentry-trace", "baggage", "traceparent", "tracestate")


@pytest.fixture
def recording_server() -> Iterator[RecordingServer]:
    with running() as server:
        yield server


@pytest.fixture(params=CLIENTS, ids=repr)
def client(request: pytest.FixtureRequest) -> Client:
    return request.param  # type: ignore[no-any-return]


@contextmanager
def propagation_context(headers: dict[str, str]) -> Iterator[Any]:
    """Run with a continued trace but no current span (what untraced requests get)."""
    ctx = get_client().continue_trace(extract(headers))
    token = PROPAGATION_CONTEXT.set(ctx)
    try:
        yield ctx
    finally:
        PROPAGATION_CONTEXT.reset(token)


def http_spans(tx: Transaction) -> list[Span]:
    return sorted((s for s in tx.spans if s.op == "http.client"), key=lambda s: s.start_timestamp)


def baggage_keys(value: str) -> list[str]:
    return [m.split("=", 1)[0].strip() for m in value.split(",")]


# --------------------------------------------------------------------------- injection


def test_injects_replaces_and_merges(
    client: Client, recording_server: RecordingServer, sentry_server: Any
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, release="app@1.0")
    caller = {
        "sentry-trace": "a" * 32 + "-" + "b" * 16 + "-0",
        "traceparent": "00-" + "c" * 32 + "-" + "d" * 16 + "-01",
        "tracestate": "vendor=old",
        "baggage": "own=1,sentry-trace_id=" + "e" * 32 + ",other=2",
    }
    with stm.start_transaction("outgoing", op="test") as tx:
        status, body = client.get(recording_server.url + "/echo?token=s3cret&a=1", caller)
    assert status == 200
    (rec,) = recording_server.received("/echo")
    assert body == rec.raw
    (span,) = http_spans(tx)
    assert rec.header("sentry-trace") == f"{tx.trace_id}-{span.span_id}-1"
    assert rec.header("traceparent") == f"00-{tx.trace_id}-{span.span_id}-03"
    assert rec.values("tracestate") == []
    baggage = rec.header("baggage")
    assert baggage is not None
    keys = baggage_keys(baggage)
    assert keys[:2] == ["own", "other"]
    assert len(keys) == len(set(keys))
    assert f"sentry-trace_id={tx.trace_id}" in baggage
    assert "sentry-sampled=true" in baggage and "sentry-release=app%401.0" in baggage
    assert "e" * 32 not in baggage

    assert span.origin == client.origin
    assert span.description == f"GET {recording_server.url}/echo"
    assert span.status == "ok"
    assert span.parent_span_id == tx.span_id
    assert dict(span.data) == {
        "http.method": "GET",
        "url": f"{recording_server.url}/echo",
        "server.address": "127.0.0.1",
        "http.response.status_code": 200,
    }
    assert stm.flush(5)
    assert sentry_server.wait_for(1)
    (event,) = sentry_server.transactions()
    (sent,) = [s for s in event["spans"] if s["op"] == "http.client"]
    assert sent["span_id"] == span.span_id
    assert sent["parent_span_id"] == event["contexts"]["trace"]["span_id"]
    assert "http.query" not in sent["data"] and "s3cret" not in str(event)


def test_nothing_current_leaves_request_untouched(
    client: Client, recording_server: RecordingServer
) -> None:
    stm.init(traces_sample_rate=1.0)
    caller = {"sentry-trace": "a" * 32 + "-" + "b" * 16, "baggage": "own=1"}
    client.get(recording_server.url + "/echo", caller)
    (rec,) = recording_server.received("/echo")
    assert rec.values("sentry-trace") == [caller["sentry-trace"]]
    assert rec.values("baggage") == ["own=1"]
    assert rec.values("traceparent") == []


def test_a_trace_read_outside_any_request_is_not_given_to_later_calls(
    client: Client, recording_server: RecordingServer, sentry_server: Any
) -> None:
    # get_trace_headers() or an error captured outside any request or span keeps a trace
    # for later reads there (§16), but outgoing calls made there still get no trace
    # headers (README): one trace per thread would join unrelated calls. Nor inside a
    # span started there (no transaction: as sentry-sdk sends none there).
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)

    def outside() -> tuple[str, str]:
        first = stm.get_trace_headers()["sentry-trace"]
        assert stm.capture_exception(ValueError("outside"))
        client.get(recording_server.url + "/after")
        with stm.start_span("task", "job") as span:
            client.get(recording_server.url + "/in-span")
            assert stm.get_trace_headers()["sentry-trace"].startswith(
                f"{first[:32]}-{span.span_id}"
            )
        assert span.trace_id == first[:32]
        return first, stm.get_trace_headers()["sentry-trace"]

    first, again = contextvars.copy_context().run(outside)
    assert again == first  # the same trace for every read outside
    (after,) = recording_server.received("/after")
    assert all(after.values(name) == [] for name in TRACE_HEADERS)
    (in_span,) = recording_server.received("/in-span")
    assert all(in_span.values(name) == [] for name in TRACE_HEADERS)
    assert stm.flush(5) and sentry_server.wait_for(1)
    (event,) = sentry_server.events()
    assert event["contexts"]["trace"]["trace_id"] == first[:32]


def test_failing_trace_headers_leave_the_callers_headers(
    client: Client, recording_server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: building our headers raises; the caller's own trace headers and
    # baggage still go out as the caller set them, and the call succeeds.
    from sentry_tracing_mw._tracing import PropagationContext

    def broken(self: PropagationContext, *args: object) -> dict[str, str]:
        raise RuntimeError("instrumentation bug")

    stm.init(traces_sample_rate=1.0)
    monkeypatch.setattr(PropagationContext, "headers", broken)
    caller = {"sentry-trace": "a" * 32 + "-" + "b" * 16, "baggage": "own=1"}
    with stm.start_transaction("outgoing", op="test"):
        status, _ = client.get(recording_server.url + "/echo", caller)
    assert status == 200
    (rec,) = recording_server.received("/echo")
    assert rec.values("sentry-trace") == [caller["sentry-trace"]]
    assert rec.values("baggage") == ["own=1"]


def test_unsampled_continued_trace_propagates_without_span(
    client: Client, recording_server: RecordingServer
) -> None:
    stm.init(traces_sample_rate=1.0)
    trace_id, parent = "1" * 32, "2" * 16
    incoming = {
        "sentry-trace": f"{trace_id}-{parent}-0",
        "baggage": f"vendor=v1,sentry-trace_id={trace_id},sentry-sample_rate=0.25,"
        "sentry-sample_rand=0.500000,sentry-sampled=false",
        "traceparent": f"00-{trace_id}-{parent}-02",
        "tracestate": "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7",
    }
    with propagation_context(incoming) as ctx:
        client.get(recording_server.url + "/echo", {"baggage": "own=1,vendor=mine"})
    (rec,) = recording_server.received("/echo")
    assert rec.header("sentry-trace") == f"{trace_id}-{ctx.span_id}-0"
    assert rec.header("traceparent") == f"00-{trace_id}-{ctx.span_id}-02"
    assert rec.header("tracestate") == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    baggage = rec.header("baggage") or ""
    assert baggage_keys(baggage)[:2] == ["own", "vendor"]
    assert "vendor=mine" in baggage and "vendor=v1" not in baggage
    assert "sentry-sampled=false" in baggage and "sentry-sample_rate=0.25" in baggage


def test_deferred_trace_and_unsampled_transaction(recording_server: RecordingServer) -> None:
    client = RequestsClient()
    stm.init()  # no rate: tracing without performance
    with propagation_context({"sentry-trace": "3" * 32 + "-" + "4" * 16}) as ctx:
        client.get(recording_server.url + "/echo")
    assert recording_server.received()[-1].header("sentry-trace") == f"{'3' * 32}-{ctx.span_id}"
    assert "sentry-sampled" not in (recording_server.received()[-1].header("baggage") or "")

    stm.init(traces_sample_rate=0.0)
    with stm.start_transaction("zero") as tx:
        client.get(recording_server.url + "/echo")
    assert tx.spans == ()
    assert recording_server.received()[-1].header("sentry-trace") == (
        f"{tx.trace_id}-{tx.span_id}-0"
    )
    assert recording_server.received()[-1].header("traceparent") == (
        f"00-{tx.trace_id}-{tx.span_id}-02"
    )


def test_traceparent_disabled_keeps_callers(recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0, propagate_traceparent=False)
    theirs = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    for client in (RequestsClient(), HttpxClient()):
        recording_server.clear()
        with stm.start_transaction("t") as tx:
            client.get(recording_server.url + "/echo", {"traceparent": theirs})
        (rec,) = recording_server.received()
        assert rec.values("traceparent") == [theirs]
        assert (rec.header("sentry-trace") or "").startswith(tx.trace_id)


# --------------------------------------------------------------------------- targets and DSN


def test_propagation_targets(client: Client, recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0, trace_propagation_targets=[r"127\.0\.0\.1:\d+/allowed"])
    with stm.start_transaction("t") as tx:
        client.get(recording_server.url + "/allowed/x")
        client.get(recording_server.url + "/other/x?to=/allowed")
    allowed, other = recording_server.received()
    assert allowed.header("sentry-trace") is not None and allowed.header("baggage") is not None
    for name in TRACE_HEADERS:
        assert other.values(name) == []
    assert len(http_spans(tx)) == 2  # spans are made either way


def test_kept_alive_connection_follows_new_options(recording_server: RecordingServer) -> None:
    # The destination worked out for a kept-alive connection belongs to the options it
    # was worked out with: a new init() (other targets, or the DSN now on that host) wins.
    host = recording_server.url.rsplit("/", 1)[-1]
    with requests.Session() as session:
        stm.init(traces_sample_rate=1.0)
        with stm.start_transaction("t"):
            session.get(recording_server.url + "/echo")
        stm.init(traces_sample_rate=1.0, trace_propagation_targets=["nowhere.invalid"])
        with stm.start_transaction("t"):
            session.get(recording_server.url + "/echo")
        stm.init(dsn=f"http://k@{host}/1", traces_sample_rate=1.0)
        with stm.start_transaction("t"):
            session.get(recording_server.url + "/echo")
    first, second, third = [r for r in recording_server.received() if r.path == "/echo"]
    assert first.header("sentry-trace") is not None
    assert second.values("sentry-trace") == [] and third.values("sentry-trace") == []


def test_never_toward_dsn(client: Client, recording_server: RecordingServer) -> None:
    stm.init(dsn=f"http://key@127.0.0.1:{recording_server.port}/1", traces_sample_rate=1.0)
    with running() as other, stm.start_transaction("t") as tx:
        client.get(recording_server.url + "/echo")
        client.get(other.url + "/echo")
        (to_other,) = other.received()
    (to_dsn,) = recording_server.received("/echo")
    for name in TRACE_HEADERS:
        assert to_dsn.values(name) == []
    assert to_other.header("sentry-trace") is not None
    assert len(http_spans(tx)) == 2


def test_never_toward_an_internationalized_dsn_host(
    client: Client, recording_server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DSN's host in Unicode (``bücher.example``) is kept in its IDNA form: a URL with
    either form is the DSN's host for every client (some pass the Unicode form on)."""
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in ("bücher.example", "xn--bcher-kva.example"):
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    port = recording_server.port
    stm.init(dsn=f"http://key@bücher.example:{port}/1", traces_sample_rate=1.0)
    with stm.start_transaction("t"):
        client.get(f"http://bücher.example:{port}/echo")
        client.get(f"http://xn--bcher-kva.example:{port}/echo")
    received = recording_server.received("/echo")
    assert len(received) == 2
    for rec in received:
        for name in TRACE_HEADERS:
            assert rec.values(name) == [], (client, name)


def test_transport_requests_carry_no_trace_headers(
    recording_server: RecordingServer, sentry_server: Any
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("t"):
        RequestsClient().get(recording_server.url + "/echo")
        stm.capture_exception(ValueError("boom"))
    assert stm.flush(5)
    assert sentry_server.wait_for(2)
    assert recording_server.received()[0].header("sentry-trace") is not None
    for rec in sentry_server.received:
        assert not {k.lower() for k in rec.headers} & set(TRACE_HEADERS)


@dataclass
class ProxiedRequest:
    method: str
    target: str  # as sent to the proxy: absolute form
    headers: list[tuple[str, str]]  # every header line, duplicates included


_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te"}


class _ProxyHandler(BaseHTTPRequestHandler):
    """Records each request, forwards it to the absolute URL it names, relays the answer."""

    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        SUPPRESS_INSTRUMENTATION.set(True)  # the proxy's own http.client calls
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            self.server.received.append(
                ProxiedRequest(self.command, self.path, list(self.headers.items()))
            )
        target = urlsplit(self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=10)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            conn.request(self.command, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP | {"content-length", "transfer-encoding"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.lock = threading.Lock()
        self.received: list[ProxiedRequest] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def forwarding_proxy() -> Iterator[_ProxyServer]:
    """A recording HTTP forward proxy on 127.0.0.1 (plain HTTP, absolute-form requests)."""
    proxy = _ProxyServer()
    thread = threading.Thread(
        target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join(5)


def test_transport_requests_through_a_proxy_carry_no_trace_headers(
    recording_server: RecordingServer, sentry_server: SentryServer
) -> None:
    """Through a proxy the transport's POSTs go through urllib3 and the instrumented
    http.client (without one it writes to its own socket): still no trace headers, while
    the app's own request through the same proxy gets them."""
    with forwarding_proxy() as proxy:
        stm.init(
            dsn=sentry_server.dsn,
            http_proxy=proxy.url,
            instrument_http_clients=True,
            traces_sample_rate=1.0,
        )
        with stm.start_transaction("t") as tx:
            stm.capture_exception(ValueError("boom"))  # starts the worker inside the trace
            control = urllib3.ProxyManager(proxy.url)
            assert control.request("GET", recording_server.url + "/echo").status == 200
            control.clear()
        assert stm.flush(5)
        assert sentry_server.wait_for(2)  # the error and the transaction, forwarded
    with proxy.lock:
        received = list(proxy.received)
    posts = [r for r in received if r.method == "POST"]
    for rec in posts:
        sent = {name.lower() for name, _ in rec.headers}
        assert "x-sentry-auth" in sent
        assert not sent & set(TRACE_HEADERS), rec.headers
    assert [r.target for r in posts] == [sentry_server.url + "/api/1/envelope/"] * 2
    # The control: the app's request through the same proxy is traced and carries headers.
    (get,) = [r for r in received if r.method == "GET"]
    assert get.target == recording_server.url + "/echo"
    trace_values = [v for name, v in get.headers if name.lower() == "sentry-trace"]
    assert len(trace_values) == 1 and trace_values[0].startswith(tx.trace_id + "-")
    assert recording_server.received("/echo")[0].header("sentry-trace") == trace_values[0]
    assert {s.description for s in http_spans(tx)} == {f"GET {recording_server.url}/echo"}


# --------------------------------------------------------------------------- span lifetime


def test_span_ends_with_the_body(client: Client, recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    seen_before_body: list[int] = []
    with stm.start_transaction("t") as tx:
        body = client.stream(
            recording_server.url + "/stream?chunks=3&delay=0.12",
            lambda: seen_before_body.append(len(http_spans(tx))),
        )
    assert body == b"chunk 0\nchunk 1\nchunk 2\n"
    assert seen_before_body == [0]  # headers arrived, span still open
    (span,) = http_spans(tx)
    assert span.timestamp is not None
    assert span.timestamp - span.start_timestamp >= 0.3
    assert span.status == "ok"


def test_in_process_httpx_transports_get_spans_and_headers() -> None:
    """``MockTransport`` (tests), ``WSGITransport`` / ``ASGITransport`` (an app called
    in-process): each request is a span and carries its headers, as over the network;
    nothing when no trace is current."""
    seen: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(503 if request.url.path == "/down" else 200, text="ok")

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(httpx.Headers({"sentry-trace": environ.get("HTTP_SENTRY_TRACE", "")}))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        seen.append(httpx.Headers({"sentry-trace": headers.get("sentry-trace", "")}))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def async_calls() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            await c.get("http://mock.test/async")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi_app)) as c:
            await c.get("http://asgi.test/in-process")

    stm.init(traces_sample_rate=1.0)
    httpx.Client(transport=httpx.MockTransport(handler)).get("http://mock.test/untraced")
    with stm.start_transaction("t") as tx:
        with httpx.Client(transport=httpx.MockTransport(handler)) as c:
            c.get("http://mock.test/down?q=1", headers={"sentry-trace": "caller's"})
        with httpx.Client(transport=httpx.WSGITransport(app=wsgi_app)) as c:
            c.get("http://wsgi.test/in-process")
        asyncio.run(async_calls())
    assert "sentry-trace" not in seen[0]
    spans = http_spans(tx)
    assert [(s.description, s.status) for s in spans] == [
        ("GET http://mock.test/down", "unavailable"),
        ("GET http://wsgi.test/in-process", "ok"),
        ("GET http://mock.test/async", "ok"),
        ("GET http://asgi.test/in-process", "ok"),
    ]
    assert [h.get_list("sentry-trace") for h in seen[1:]] == [
        [f"{tx.trace_id}-{s.span_id}-1"] for s in spans
    ]
    assert all(s.timestamp is not None for s in spans)


def test_in_process_transports_keep_request_bodies_and_call_apps_as_services(
    sentry_server: SentryServer,
) -> None:
    """The in-process transport reads the copy it is given: the body goes back to the
    caller's request (a redirect re-sends it, ``response.request.content`` reads it). A
    traced WSGI app called through ``WSGITransport`` is another service: its own
    transaction, child of the call's span, not a part of the caller's request."""
    from sentry_tracing_mw.integrations.wsgi import TracingMiddleware

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/a":
            return httpx.Response(307, headers={"Location": "/b"})
        return httpx.Response(200, content=request.content)

    def body() -> Iterator[bytes]:
        yield b"hello "
        yield b"world"

    async def abody() -> Any:
        yield b"hello "
        yield b"world"

    def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"inner"]

    async def async_call() -> tuple[bytes, bytes]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            r = await c.post("http://mock.test/a", content=abody(), follow_redirects=True)
            return r.content, r.request.content

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("outer") as tx:
        with httpx.Client(transport=httpx.MockTransport(handler)) as c:
            r = c.post("http://mock.test/a", content=body(), follow_redirects=True)
            assert (r.content, r.request.content) == (b"hello world", b"hello world")
        assert asyncio.run(async_call()) == (b"hello world", b"hello world")
        inner = httpx.Client(transport=httpx.WSGITransport(app=TracingMiddleware(wsgi_app)))
        assert inner.get("http://wsgi.test/inner").text == "inner"
    assert tx.name == "outer"
    assert stm.flush(5) and sentry_server.wait_for(2, 5)
    by_name = {t["transaction"]: t for t in sentry_server.transactions()}
    assert set(by_name) == {"outer", "/inner"}
    (call,) = [s for s in by_name["outer"]["spans"] if "wsgi.test" in s["description"]]
    assert by_name["/inner"]["contexts"]["trace"]["parent_span_id"] == call["span_id"]
    assert by_name["/inner"]["contexts"]["trace"]["trace_id"] == tx.trace_id


def test_head_and_status_codes(recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        requests.head(recording_server.url + "/echo", timeout=5)
        RequestsClient().get(recording_server.url + "/status/404")
        HttpxClient().get(recording_server.url + "/status/503")
        UrllibClient().get(recording_server.url + "/status/500")
    assert [(s.data["http.response.status_code"], s.status) for s in http_spans(tx)] == [
        (200, "ok"),
        (404, "not_found"),
        (503, "unavailable"),
        (500, "internal_error"),
    ]
    assert http_spans(tx)[0].description == f"HEAD {recording_server.url}/echo"


def test_query_and_fragment_only_with_pii(recording_server: RecordingServer) -> None:
    url = recording_server.url + "/echo?a=1&token=s3cret#frag"
    for pii in (False, True):
        stm.init(traces_sample_rate=1.0, send_default_pii=pii)
        with stm.start_transaction("t") as tx:
            HttpxClient().get(url)
            RequestsClient().get(url)
        httpx_span, requests_span = http_spans(tx)
        if pii:
            assert httpx_span.data["http.query"] == "a=1&token=s3cret"
            assert httpx_span.data["http.fragment"] == "frag"
            assert requests_span.data["http.query"] == "a=1&token=s3cret"
        else:
            for span in (httpx_span, requests_span):
                assert "http.query" not in span.data and "http.fragment" not in span.data
        assert httpx_span.description == f"GET {recording_server.url}/echo"


# --------------------------------------------------------------------------- errors


def _raised(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("no exception")


def _plain_then_traced(
    client: Client, url: str, timeout: float
) -> tuple[BaseException, BaseException, Transaction]:
    """The exception ``client.get`` raises uninstrumented, then instrumented inside a
    sampled transaction (returned for its spans)."""
    http_clients.uninstrument()
    plain = _raised(lambda: client.get(url, timeout=timeout))
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        traced = _raised(lambda: client.get(url, timeout=timeout))
    return plain, traced, tx


@pytest.mark.parametrize("kind", ["refused", "timeout"])
def test_errors_keep_the_exception(
    client: Client, kind: str, recording_server: RecordingServer
) -> None:
    if kind == "refused":
        url, timeout, status = f"http://127.0.0.1:{free_port()}/x", 5.0, "internal_error"
    else:
        url, timeout, status = recording_server.url + "/slow?delay=1.5", 0.3, "deadline_exceeded"
    plain, traced, tx = _plain_then_traced(client, url, timeout)
    assert type(traced) is type(plain)
    spans = http_spans(tx)
    assert spans and all(s.status == status for s in spans)
    assert all(s.timestamp is not None for s in spans)


@pytest.mark.parametrize(
    "then", ["close", "stall", "chunked-close", "chunked-stall", "chunked-garbage"]
)
def test_body_read_failure_fails_the_span(
    client: Client, then: str, recording_server: RecordingServer
) -> None:
    # Headers arrive, then the body breaks off (connection closed), stalls past the read
    # timeout or has a garbage chunk size: the span ends with the failure's status, not
    # "ok". urllib3 reads chunked bodies from the socket itself, past http.client.
    chunked, _, then = then.rpartition("-")
    url = f"{recording_server.url}/truncated?then={then}&chunked={chunked}"
    status = "deadline_exceeded" if then == "stall" else "internal_error"
    plain, traced, tx = _plain_then_traced(client, url, 0.5)
    assert type(traced) is type(plain)
    spans = http_spans(tx)
    assert spans
    for span in spans:
        assert span.status == status, (span.status, span.data, repr(traced))
        assert span.data["http.response.status_code"] == 200 and span.data["error.type"]


def test_body_read_inside_an_unrelated_except_block_stays_ok(
    client: Client, recording_server: RecordingServer
) -> None:
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        try:
            raise LookupError("the caller's own, handled")
        except LookupError:
            client.get(recording_server.url + "/echo")  # read to the end while handling it
    (span,) = http_spans(tx)
    assert span.status == "ok" and "error.type" not in span.data


def test_a_response_closed_while_another_request_fails_stays_ok(
    recording_server: RecordingServer,
) -> None:
    # The second request's URLError propagates while the first response is closed (the
    # with block exits): that failure is not the first body's.
    stm.init(traces_sample_rate=1.0)
    refused = f"http://127.0.0.1:{free_port()}/x"
    with stm.start_transaction("t") as tx:
        with pytest.raises(urllib.error.URLError):
            with urllib.request.urlopen(recording_server.url + "/echo", timeout=5) as first:
                first.read(4)
                urllib.request.urlopen(refused, timeout=5)
    ok, failed = sorted(http_spans(tx), key=lambda s: not (s.description or "").endswith("/echo"))
    assert ok.description == f"GET {recording_server.url}/echo"
    assert ok.status == "ok" and "error.type" not in ok.data
    assert failed.status == "internal_error"


@pytest.mark.parametrize("how", ["readlines", "lines", "read1"])
def test_body_read_by_lines_or_read1_ends_the_span(
    recording_server: RecordingServer, how: str
) -> None:
    # readline()/read1() never close a Content-Length response at its end (read() does):
    # the span still ends when the last byte is read, without close() or GC.
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        response = urllib.request.urlopen(recording_server.url + "/echo", timeout=5)
        if how == "readlines":
            body = b"".join(response.readlines())
        elif how == "lines":
            body = b"".join(line for line in response)
        else:
            body = b"".join(iter(lambda: response.read1(7), b""))
        (span,) = http_spans(tx)
        assert span.timestamp is not None and span.status == "ok"
    assert body.startswith(b"GET /echo")
    response.close()
    assert len(http_spans(tx)) == 1


def test_credentials_given_as_the_host_stay_out_of_the_span(
    recording_server: RecordingServer,
) -> None:
    # HTTPConnection("user:pass@host") (urllib passes URL credentials so): the span names
    # the host only. The socket is connected beforehand: no name lookup of that "host".
    stm.init(traces_sample_rate=1.0)
    conn = http.client.HTTPConnection(f"bob:hunter2@127.0.0.1:{recording_server.port}")
    conn.sock = socket.create_connection(("127.0.0.1", recording_server.port), timeout=5)
    with stm.start_transaction("t") as tx:
        conn.request("GET", "/echo")
        conn.getresponse().read()
    conn.close()
    (span,) = http_spans(tx)
    assert span.description == f"GET {recording_server.url}/echo"
    assert span.data["server.address"] == "127.0.0.1"
    assert "hunter2" not in str(span.data)


def test_response_not_ready_keeps_the_request_waiting(recording_server: RecordingServer) -> None:
    # Two requests on one connection; asking for the second response before the first was
    # read raises ResponseNotReady: the second request still gets its span, ended by its
    # own response (200, ok), not failed by the caller's early call. OPTIONS * is named
    # after the server (the URL's empty path).
    stm.init(traces_sample_rate=1.0)
    conn = http.client.HTTPConnection("127.0.0.1", recording_server.port, timeout=5)
    with stm.start_transaction("t") as tx:
        conn.request("GET", "/echo")
        first = conn.getresponse()
        conn.request("OPTIONS", "*")
        with pytest.raises(http.client.ResponseNotReady):
            conn.getresponse()
        first.read()
        second = conn.getresponse()
        second.read()
    conn.close()
    spans = http_spans(tx)
    assert [(s.description, s.status) for s in spans] == [
        (f"GET {recording_server.url}/echo", "ok"),
        (f"OPTIONS {recording_server.url}", http_status_to_span_status(second.status)),
    ]


def test_error_response_body_read_in_its_except_block_is_not_a_failure(
    recording_server: RecordingServer,
) -> None:
    # urllib raises HTTPError for a 404 after the response arrived; reading the error body
    # in the except block (the usual pattern) is a normal read, not a failed one.
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        try:
            urllib.request.urlopen(recording_server.url + "/status/404", timeout=5)
        except urllib.error.HTTPError as exc:
            assert exc.read() == b"status"
        try:
            raise ValueError("the caller's own")
        except ValueError:
            with urllib.request.urlopen(recording_server.url + "/echo", timeout=5) as resp:
                resp.read()
    missing, fine = http_spans(tx)
    assert missing.status == "not_found" and "error.type" not in missing.data
    assert fine.status == "ok" and "error.type" not in fine.data


def _answer_garbage(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(b"HTTP/1.1 400 Not TLS\r\n\r\n")


@pytest.mark.parametrize("client", [c for c in CLIENTS if c.name != "http.client"], ids=repr)
@pytest.mark.parametrize("kind", ["refused", "tls-error", "tls-timeout"])
def test_https_connection_failures_get_a_span(client: Client, kind: str) -> None:
    # urllib3 (requests) connects an HTTPS pool before http.client's putrequest: a refused
    # connection or a failed / hung TLS handshake must still give a span with a status.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP (kernel backlog) and never answers the TLS hello
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen(8)
    threading.Thread(target=_answer_garbage, args=(garbage,), daemon=True).start()
    try:
        port = {
            "refused": free_port(),
            "tls-error": garbage.getsockname()[1],
            "tls-timeout": silent.getsockname()[1],
        }[kind]
        url = f"https://127.0.0.1:{port}/secure?q=1"
        status = "deadline_exceeded" if kind == "tls-timeout" else "internal_error"
        plain, traced, tx = _plain_then_traced(client, url, 0.5)
    finally:
        silent.close()
        garbage.close()
    assert type(traced) is type(plain)
    spans = http_spans(tx)  # one per attempt (urllib3 retries a TLS error by default)
    assert spans
    for span in spans:
        assert span.status == status, (span.status, span.data)
        assert span.description == f"GET https://127.0.0.1:{port}/secure"
        assert span.timestamp is not None and span.data["error.type"]


def _slow_tls_server(listener: socket.socket, context: Any, delay: float) -> None:
    """Waits ``delay`` before each TLS handshake, then answers one request."""
    import ssl
    import time

    while True:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        time.sleep(delay)
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except (OSError, ssl.SSLError):
            pass


@pytest.mark.parametrize("library", ["requests", "urllib3"])
def test_https_span_covers_the_connection_made_for_it(library: str, tmp_path: Any) -> None:
    # urllib3 (requests) connects an HTTPS pool, TLS handshake included, before
    # http.client's putrequest starts the span: the span must still cover that time.
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    threading.Thread(target=_slow_tls_server, args=(listener, context, 0.4), daemon=True).start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}/secure"
    stm.init(traces_sample_rate=1.0)
    try:
        with stm.start_transaction("t") as tx:
            if library == "requests":
                assert requests.get(url, verify=str(ca_file), timeout=5).text == "ok"
            else:
                with urllib3.PoolManager(ca_certs=str(ca_file), retries=False) as pool:
                    assert pool.request("GET", url, timeout=5).data == b"ok"
    finally:
        listener.close()
    (span,) = http_spans(tx)
    assert span.status == "ok"
    assert span.timestamp is not None and span.timestamp - span.start_timestamp >= 0.4


def test_a_kept_alive_https_connection_dates_no_later_span_back(tmp_path: Any) -> None:
    # urllib3 validates a pooled connection before every request: the time noted there
    # belongs to that request only, traced or not, never to a later one.
    import ssl
    import time

    import trustme

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/"
    stm.init(traces_sample_rate=1.0)
    try:
        with requests.Session() as session:
            assert session.get(url, verify=str(ca_file), timeout=5).text == "ok"  # untraced
            with stm.start_transaction("unsampled", sampled=False):
                assert session.get(url, verify=str(ca_file), timeout=5).text == "ok"
            time.sleep(0.3)
            with stm.start_transaction("t") as tx:
                assert session.get(url, verify=str(ca_file), timeout=5).text == "ok"
    finally:
        server.shutdown()
        server.server_close()
    (span,) = http_spans(tx)
    assert span.timestamp is not None and span.timestamp - span.start_timestamp < 0.25
    assert span.start_timestamp >= tx.start_timestamp


def test_a_response_sent_before_the_whole_body_gives_the_span_its_status() -> None:
    # The server answers 413 after the headers and closes: sending the body fails, yet the
    # response is there to read (urllib3 1.26 reads it; so can an http.client caller).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    import time

    def early() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig"
            )
            time.sleep(0.05)

    threading.Thread(target=early, daemon=True).start()
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        conn = http.client.HTTPConnection("127.0.0.1", listener.getsockname()[1], timeout=5)
        with pytest.raises(OSError):
            conn.request("POST", "/upload", body=b"x" * (8 << 20))
        response = conn.getresponse()
        assert (response.status, response.read()) == (413, b"big")
        conn.close()
    listener.close()
    (span,) = http_spans(tx)
    assert span.status == "failed_precondition", (span.status, span.data)
    assert span.data["http.response.status_code"] == 413 and "error.type" not in span.data
    assert span.timestamp is not None


@pytest.mark.parametrize("library", ["requests", "urllib3"])
@pytest.mark.parametrize("kind", ["proxy-refused", "connect-unanswered"])
def test_https_through_a_failing_proxy_gets_a_span(library: str, kind: str) -> None:
    # Through an HTTPS proxy urllib3 opens the tunnel (CONNECT, then TLS) before it
    # validates the connection: a proxy that is down or never answers CONNECT must still
    # give the request a span with a status, as without a proxy.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP (kernel backlog) and never answers the CONNECT
    try:
        port = free_port() if kind == "proxy-refused" else silent.getsockname()[1]
        proxy = f"http://user:secret@127.0.0.1:{port}"
        target = f"https://127.0.0.1:{free_port()}/secure?q=1"
        stm.init(traces_sample_rate=1.0)
        with stm.start_transaction("t") as tx:
            if library == "requests":
                proxies = {"https": proxy}
                exc = _raised(lambda: requests.get(target, proxies=proxies, timeout=0.5))
            else:
                pool = urllib3.ProxyManager(proxy, timeout=0.5, retries=False)
                exc = _raised(lambda: pool.request("GET", target))
    finally:
        silent.close()
    assert exc is not None
    (span,) = http_spans(tx)
    status = "internal_error" if kind == "proxy-refused" else "deadline_exceeded"
    assert span.status == status, (span.status, span.data)
    assert span.description == f"GET {target.partition('?')[0]}"  # the target, not the proxy
    assert span.timestamp is not None and span.data["error.type"]
    assert "secret" not in repr(span.data)


@pytest.mark.parametrize("reader", ["read", "read-amt", "readinto", "readline", "read1"])
@pytest.mark.parametrize("closed", ["never", "after-handling"])
def test_http_client_body_timeout_fails_the_span(
    reader: str, closed: str, recording_server: RecordingServer
) -> None:
    # http.client closes a response only on a short read: a read timeout (or a reset)
    # leaves it open. The span still fails with the timeout, whether the caller never
    # closes the response or closes it after handling the error.
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        conn = http.client.HTTPConnection("127.0.0.1", recording_server.port, timeout=0.25)
        conn.request("GET", "/stream?chunks=2&delay=0.6")  # headers now, body late
        response = conn.getresponse()
        read: Callable[[], object] = {
            "read": response.read,
            "read-amt": lambda: response.read(1 << 16),
            "readinto": lambda: response.readinto(bytearray(1 << 16)),
            "readline": lambda: [response.readline() for _ in range(100)],
            "read1": lambda: [response.read1(1 << 16) for _ in range(100)],
        }[reader]
        exc = _raised(read)
        if closed == "after-handling":
            response.close()
            conn.close()
    assert isinstance(exc, TimeoutError), exc
    (span,) = http_spans(tx)
    assert span.timestamp is not None
    assert span.status == "deadline_exceeded" and span.data["error.type"] == "TimeoutError"


@pytest.mark.parametrize("client", [HttpxClient(), AsyncHttpxClient()], ids=repr)
def test_httpx_body_timeout_fails_the_span(
    client: Client, recording_server: RecordingServer
) -> None:
    stm.init(traces_sample_rate=1.0)
    url = recording_server.url + "/stream?chunks=2&delay=0.6"  # headers now, body late
    with stm.start_transaction("t") as tx:
        exc = _raised(lambda: client.get(url, timeout=0.25))
    assert isinstance(exc, httpx.ReadTimeout)
    (span,) = http_spans(tx)
    assert span.status == "deadline_exceeded" and span.data["error.type"] == "ReadTimeout"


def test_httpx_span_ok_inside_an_unrelated_except_block(recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx, httpx.Client() as client:
        try:
            client.get(f"http://127.0.0.1:{free_port()}/x")
        except httpx.ConnectError:
            client.get(recording_server.url + "/echo").read()  # the usual fallback pattern
    failed, fallback = http_spans(tx)
    assert failed.status == "internal_error"
    assert fallback.status == "ok" and "error.type" not in fallback.data


@pytest.mark.parametrize("client", [HttpxClient(), AsyncHttpxClient()], ids=repr)
def test_httpx_span_ok_while_an_earlier_error_or_exit_is_handled(
    client: Client, recording_server: RecordingServer
) -> None:
    """A retry of the same request inside the handler of its failed attempt, and a call in
    cleanup code while a SystemExit or a cancellation propagates, read their response
    whole: the span says what the response said, not the exception around the call."""
    stm.init(traces_sample_rate=1.0)
    url = recording_server.url + "/echo"
    with stm.start_transaction("t") as tx:
        request = httpx.Request("GET", url)
        try:
            raise httpx.RemoteProtocolError("the first attempt failed", request=request)
        except httpx.RemoteProtocolError:
            with httpx.Client() as retrying:
                assert retrying.send(request).status_code == 200
        try:
            raise SystemExit(0)
        except SystemExit:
            status, _ = client.get(url)
            assert status == 200
    spans = http_spans(tx)
    assert len(spans) == 2
    for span in spans:
        assert span.status == "ok" and "error.type" not in span.data, span.data
        assert span.data["http.response.status_code"] == 200


def test_http_client_raises_the_socket_error_itself() -> None:
    stm.init(traces_sample_rate=1.0)
    conn = http.client.HTTPConnection("127.0.0.1", free_port(), timeout=5)
    with stm.start_transaction("t") as tx, pytest.raises(ConnectionRefusedError):
        conn.request("GET", "/")
    (span,) = http_spans(tx)
    assert span.status == "internal_error" and span.data["error.type"] == "ConnectionRefusedError"


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("client", FOLLOWING, ids=repr)
def test_redirects_one_span_per_request(client: Client, recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        status, _ = client.get(recording_server.url + "/redirect/2", {"baggage": "own=1"})
    assert status == 200
    received = recording_server.received()
    assert [r.path for r in received] == ["/redirect/2", "/redirect/1", "/echo"]
    spans = http_spans(tx)
    assert [s.description for s in spans] == [
        f"GET {recording_server.url}{p}" for p in ("/redirect/2", "/redirect/1", "/echo")
    ]
    assert [s.data["http.response.status_code"] for s in spans] == [302, 302, 200]
    for rec, span in zip(received, spans, strict=True):
        assert rec.header("sentry-trace") == f"{tx.trace_id}-{span.span_id}-1"
        assert rec.header("traceparent") == f"00-{tx.trace_id}-{span.span_id}-03"
        baggage = rec.header("baggage") or ""
        assert baggage.startswith("own=1,sentry-") and baggage.count("own=1") == 1


def test_callers_own_tracestate_is_kept(client: Client, recording_server: RecordingServer) -> None:
    # Vendor state the app adds without a traceparent of its own is not ours to drop
    # (sentry-sdk never touches tracestate; OpenTelemetry's propagator keeps it).
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        client.get(recording_server.url + "/echo", {"tracestate": "app=2", "baggage": "own=1"})
    (rec,) = recording_server.received("/echo")
    (span,) = http_spans(tx)
    assert rec.values("tracestate") == ["app=2"]
    assert rec.header("traceparent") == f"00-{tx.trace_id}-{span.span_id}-03"
    # Continuing a W3C trace with its own tracestate: one header, the caller's members
    # first, then the upstream ones whose keys the caller did not set.
    recording_server.clear()
    incoming = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "up=1,app=0"}
    with stm.start_transaction("t", headers=incoming):
        client.get(recording_server.url + "/echo", {"TraceState": "app=2"})
    (rec,) = recording_server.received("/echo")
    assert rec.values("tracestate") == ["app=2,up=1"]
    recording_server.clear()
    with stm.start_transaction("t", headers=incoming):
        client.get(recording_server.url + "/echo")
    (rec,) = recording_server.received("/echo")
    assert rec.values("tracestate") == ["up=1,app=0"]


def test_callers_tracestate_given_in_parts_to_http_client(
    recording_server: RecordingServer,
) -> None:
    # putheader(name, *values) folds the parts into one header line: each member is
    # read, so the caller's key wins once over the continued trace's.
    stm.init(traces_sample_rate=1.0)
    incoming = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "up=1,app=0"}
    with stm.start_transaction("t", headers=incoming):
        conn = http.client.HTTPConnection("127.0.0.1", recording_server.port, timeout=5)
        conn.putrequest("GET", "/echo")
        conn.putheader("tracestate", "app=2", "up=9")
        conn.endheaders()
        conn.getresponse().read()
        conn.close()
    (rec,) = recording_server.received("/echo")
    assert rec.values("tracestate") == ["app=2,up=9"]


@pytest.mark.parametrize("client", FOLLOWING, ids=repr)
def test_redirect_to_non_target_gets_no_headers(
    client: Client, recording_server: RecordingServer
) -> None:
    stm.init(traces_sample_rate=1.0, trace_propagation_targets=[r"//127\.0\.0\.1:"])
    target = f"http://localhost:{recording_server.port}/echo"
    with stm.start_transaction("t") as tx:
        client.get(f"{recording_server.url}/redirect-to?url={target}", {"baggage": "own=1"})
    first, second = recording_server.received()
    assert first.header("sentry-trace") is not None
    assert second.path == "/echo"
    for name in ("sentry-trace", "traceparent", "tracestate"):
        assert second.values(name) == []
    assert second.values("baggage") == ["own=1"]
    assert len(http_spans(tx)) == 2


# --------------------------------------------------------------------------- retries, limits


def test_retries_never_grow_baggage(recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    session = requests.Session()
    retry = urllib3.Retry(total=2, status_forcelist=[503], backoff_factor=0, raise_on_status=False)
    session.mount("http://", requests.adapters.HTTPAdapter(max_retries=retry))
    headers = {"baggage": "own=1", "sentry-trace": "x"}
    with stm.start_transaction("t") as tx:
        resp = session.get(recording_server.url + "/status/503", headers=headers, timeout=5)
        with httpx.Client() as client:
            request = client.build_request(
                "GET", recording_server.url + "/echo", headers={"baggage": "own=2"}
            )
            client.send(request).read()
            client.send(request).read()
    session.close()
    assert resp.status_code == 503
    retried = recording_server.received("/status")
    assert len(retried) == 3
    bags = [r.header("baggage") for r in retried]
    assert len(set(bags)) == 1 and (bags[0] or "").startswith("own=1,sentry-")
    assert len({r.header("sentry-trace") for r in retried}) == 3  # one span per attempt
    resent = recording_server.received("/echo")
    first, second = (r.header("baggage") for r in resent)
    assert first == second
    assert (resent[0].header("baggage") or "").startswith("own=2,sentry-")
    assert len(http_spans(tx)) == 5
    assert headers == {"baggage": "own=1", "sentry-trace": "x"}  # caller's dict untouched


def test_httpx_request_object_left_as_built(recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    transport = httpx.HTTPTransport()
    with stm.start_transaction("t") as tx, httpx.Client(transport=transport) as client:
        request = client.build_request(
            "POST", recording_server.url + "/echo", headers={"x-own": "1"}, content=b"payload"
        )
        before = list(request.headers.raw)
        response = client.send(request)
        response.read()
    assert response.request is request
    assert list(request.headers.raw) == before  # nothing of ours left on the request
    (rec,) = recording_server.received()
    (span,) = http_spans(tx)
    assert rec.body == b"payload"
    assert rec.values("x-own") == ["1"]
    assert rec.values("sentry-trace") == [f"{tx.trace_id}-{span.span_id}-1"]
    assert len(rec.values("baggage")) == 1 and len(rec.values("traceparent")) == 1
    assert rec.raw.endswith(b"\r\n\r\n") and rec.raw.count(b"\r\n\r\n") == 1


def test_httpx_request_sent_concurrently_is_never_changed(
    recording_server: RecordingServer,
) -> None:
    # One Request object sent from several threads and tasks at once, each in its own
    # continued trace with its own third-party baggage member: every send carries its own
    # trace's headers and members once (never another send's), and the caller's request
    # never keeps any of ours, so a later send outside a trace carries none.
    stm.init(traces_sample_rate=1.0)
    request = httpx.Request(
        "GET", recording_server.url + "/slow?delay=0.01", headers={"baggage": "own=1"}
    )
    before = list(request.headers.raw)
    sync_client = httpx.Client()
    barrier = threading.Barrier(8)

    def incoming(n: int) -> dict[str, str]:
        return {"sentry-trace": f"{n + 1:032x}-{'b' * 16}-1", "baggage": f"user=u{n}"}

    def in_thread(n: int) -> None:
        with stm.start_transaction("t", headers=incoming(n)):
            barrier.wait(5)
            for _ in range(5):
                sync_client.send(request).read()

    async def in_task(async_client: httpx.AsyncClient, n: int) -> None:
        with stm.start_transaction("a", headers=incoming(n)):
            for _ in range(5):
                await (await async_client.send(request)).aread()

    async def tasks() -> None:
        async with httpx.AsyncClient() as async_client:
            await asyncio.gather(*(in_task(async_client, n) for n in range(8, 16)))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(in_thread, range(8)))
    asyncio.run(tasks())
    assert list(request.headers.raw) == before
    sync_client.send(request).read()  # no trace current: nothing of ours on the wire
    sync_client.close()
    received = recording_server.received("/slow")
    assert len(received) == 16 * 5 + 1
    per_trace: Counter[int] = Counter()
    for rec in received[:-1]:
        (sentry_trace,) = rec.values("sentry-trace")
        (baggage,) = rec.values("baggage")
        n = int(sentry_trace[:32], 16) - 1
        per_trace[n] += 1
        members = [m.split("=")[0] + "=" + m.split("=")[1] for m in baggage.split(",")]
        assert members[:2] == ["own=1", f"user=u{n}"], baggage
        assert sum(m.startswith("user=") for m in members) == 1
        assert len(rec.values("traceparent")) == 1
    assert per_trace == dict.fromkeys(range(16), 5)
    last = received[-1]
    assert last.values("sentry-trace") == [] and last.values("baggage") == ["own=1"]


def test_httpx_request_subclass_keeps_its_body(recording_server: RecordingServer) -> None:
    class MyRequest(httpx.Request):
        pass

    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx, httpx.Client() as client:
        request = MyRequest("POST", recording_server.url + "/echo", content=b"payload")
        response = client.send(request)
        response.read()
    assert response.request is request and "sentry-trace" not in request.headers
    (rec,) = recording_server.received("/echo")
    (span,) = http_spans(tx)
    assert rec.body == b"payload"
    assert rec.values("sentry-trace") == [f"{tx.trace_id}-{span.span_id}-1"]


def test_http_client_multi_value_baggage_is_merged(recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    conn = http.client.HTTPConnection("127.0.0.1", recording_server.port, timeout=5)
    with stm.start_transaction("t") as tx:
        conn.putrequest("GET", "/echo")
        conn.putheader("Baggage", "a=1", "b=2")  # one header line folded over two
        conn.putheader("TE", "trailers")  # not ours, though it starts like one
        conn.endheaders()
        conn.getresponse().read()
    conn.close()
    (rec,) = recording_server.received()
    (baggage,) = rec.values("baggage")
    assert baggage.startswith("a=1,b=2,sentry-") and f"sentry-trace_id={tx.trace_id}" in baggage
    assert rec.values("te") == ["trailers"] and len(rec.values("sentry-trace")) == 1


def test_baggage_size_limit(recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    own = ",".join(f"k{i}={'v' * 200}" for i in range(60))  # ~12 KB
    with stm.start_transaction("t") as tx:
        RequestsClient().get(recording_server.url + "/echo", {"baggage": own})
    baggage = recording_server.received()[0].header("baggage") or ""
    assert len(baggage.encode()) <= 8192
    assert baggage.startswith("k0=") and f"sentry-trace_id={tx.trace_id}" in baggage


# --------------------------------------------------------------------------- concurrency


def test_async_httpx_spans_parented_under_concurrency(recording_server: RecordingServer) -> None:
    stm.init(traces_sample_rate=1.0)
    results: list[tuple[Transaction, str]] = []

    async def one(client: httpx.AsyncClient, i: int) -> None:
        with stm.start_transaction(f"task {i}") as tx:
            await asyncio.sleep(0.001 * (i % 7))
            resp = await client.get(f"{recording_server.url}/slow?delay=0.05&i={i}")
            sent = resp.content.decode("latin-1")
        results.append((tx, sent))

    async def main() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.gather(*(one(client, i) for i in range(50)))

    asyncio.run(main())
    assert len(results) == 50
    assert len({tx.trace_id for tx, _ in results}) == 50
    for tx, sent in results:
        (span,) = http_spans(tx)
        assert span.parent_span_id == tx.span_id
        assert f"sentry-trace: {tx.trace_id}-{span.span_id}-1\r\n" in sent
        assert f"i={tx.name.split()[1]} " in sent


# --------------------------------------------------------------------------- install / uninstall


def _patched() -> dict[str, Any]:
    conn = http.client.HTTPConnection.__dict__
    names = ("putrequest", "endheaders", "getresponse", "close")
    found = {name: conn[name] for name in names}
    found["_close_conn"] = http.client.HTTPResponse.__dict__["_close_conn"]
    found["httpx"] = httpx.HTTPTransport.__dict__["handle_request"]
    found["httpx-async"] = httpx.AsyncHTTPTransport.__dict__["handle_async_request"]
    found["httpx-mock"] = httpx.MockTransport.__dict__["handle_request"]
    found["httpx-asgi"] = httpx.ASGITransport.__dict__["handle_async_request"]
    found["urllib3"] = urllib3.connectionpool.HTTPSConnectionPool.__dict__["_validate_conn"]
    return found


def test_uninstrument_restores_originals(recording_server: RecordingServer) -> None:
    http_clients.uninstrument()
    originals = _patched()
    http_clients.instrument()
    http_clients.instrument()
    assert http_clients.is_instrumented()
    patched = _patched()
    assert all(patched[k] is not originals[k] for k in originals)
    assert all(patched[k].__wrapped__ is originals[k] for k in originals)
    http_clients.uninstrument()
    http_clients.uninstrument()
    assert _patched() == originals
    # the inert class defaults stay for threads still inside a wrapper
    assert http.client.HTTPConnection._stm_outgoing is None  # type: ignore[attr-defined]
    with stm.start_transaction("t", sampled=True) as tx:
        RequestsClient().get(recording_server.url + "/echo")
        HttpxClient().get(recording_server.url + "/echo")
    assert tx.spans == ()
    assert all(r.values("sentry-trace") == [] for r in recording_server.received())
    http_clients.instrument()


def test_a_wrapper_held_across_uninstrument_keeps_working(
    recording_server: RecordingServer,
) -> None:
    # A thread already inside a wrapper (or a library that kept a bound one) when another
    # thread uninstruments must not fail: the wrappers' class defaults stay.
    stm.init(traces_sample_rate=1.0)
    conn = http.client.HTTPConnection("127.0.0.1", int(recording_server.url.rsplit(":", 1)[1]))
    putrequest, getresponse = conn.putrequest, conn.getresponse
    http_clients.uninstrument()
    try:
        with stm.start_transaction("t"):
            putrequest("GET", "/echo")
            conn.endheaders()
            response = getresponse()
            assert response.status == 200
            response.read()
            response.close()
        conn.close()
    finally:
        http_clients.instrument()


def test_a_span_left_open_by_uninstrument_is_counted(recording_server: RecordingServer) -> None:
    # uninstrument() while a response is unread: the original close never ends the span;
    # the transaction does not send it and counts it (nothing lost silently).
    events: list[dict[str, Any]] = []
    stm.init(
        dsn="http://public@127.0.0.1:9/1",
        traces_sample_rate=1.0,
        before_send_transaction=lambda e: events.append(e),
    )
    try:
        pool = urllib3.PoolManager()
        with stm.start_transaction("job", op="task") as tx:
            response = pool.request("GET", recording_server.url + "/echo", preload_content=False)
            http_clients.uninstrument()
            response.read()
            response.release_conn()
        stm.flush(5)
        assert recording_server.received()[-1].values("sentry-trace")  # it was traced
        assert events[0]["spans"] == []
        assert tx._n_children == 1
        assert get_client().reports.snapshot()[("buffer_overflow", "span")] == 1
    finally:
        http_clients.instrument()


def test_instrument_is_idempotent_across_threads(recording_server: RecordingServer) -> None:
    http_clients.uninstrument()
    originals = _patched()
    barrier = threading.Barrier(16)

    def race() -> None:
        barrier.wait()
        http_clients.instrument()

    threads = [threading.Thread(target=race) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    patched = _patched()
    assert all(patched[k].__wrapped__ is originals[k] for k in originals)
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        Urllib3Client().get(recording_server.url + "/echo")
    (rec,) = recording_server.received()
    assert len(rec.values("sentry-trace")) == 1 and len(http_spans(tx)) == 1


def test_connections_created_before_instrumenting_are_covered(
    recording_server: RecordingServer,
) -> None:
    http_clients.uninstrument()
    conn = http.client.HTTPConnection("127.0.0.1", recording_server.port, timeout=5)
    session = requests.Session()
    session.get(recording_server.url + "/warm", timeout=5)  # pooled connection exists now
    client = httpx.Client()
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        conn.request("GET", "/a")
        conn.getresponse().read()
        session.get(recording_server.url + "/b", timeout=5)
        client.get(recording_server.url + "/c")
    conn.close()
    session.close()
    client.close()
    assert len(http_spans(tx)) == 3
    for path in ("/a", "/b", "/c"):
        (rec,) = recording_server.received(path)
        assert (rec.header("sentry-trace") or "").startswith(tx.trace_id)


def test_endheaders_called_twice_leaves_the_next_request_alone(
    recording_server: RecordingServer,
) -> None:
    """A second ``endheaders()`` is refused by http.client (``CannotSendHeader``, caught by
    the caller): our headers are not written again into the connection's buffer (they
    went out in front of the next request on the connection), and the first request's
    span still gets its response."""
    stm.init(traces_sample_rate=1.0)
    with stm.start_transaction("t") as tx:
        conn = http.client.HTTPConnection("127.0.0.1", recording_server.port, timeout=5)
        conn.putrequest("GET", "/first")
        conn.endheaders()
        with pytest.raises(http.client.CannotSendHeader):
            conn.endheaders()
        first = conn.getresponse()
        assert first.status == 200
        first.read()
        conn.request("GET", "/second")
        second = conn.getresponse()
        assert second.status == 200
        second.read()
        conn.close()
    got = recording_server.received()
    assert [r.path for r in got] == ["/first", "/second"]
    assert got[1].raw.startswith(b"GET /second HTTP/1.1\r\n")
    assert all(len(r.values("sentry-trace")) == 1 for r in got)
    spans = http_spans(tx)
    assert [(s.status, s.data.get("http.response.status_code")) for s in spans] == [
        ("ok", 200),
        ("ok", 200),
    ]


@pytest.mark.parametrize("lib", ["requests", "urllib3"])
def test_plain_http_connect_timeout_is_deadline_exceeded(lib: str) -> None:
    """urllib3 connects inside ``endheaders()`` for plain HTTP and wraps the socket
    timeout as its ``ConnectTimeoutError``: a timeout, as over HTTPS and with httpx."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue: the next connect waits
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        stm.init(traces_sample_rate=1.0)
        url = f"http://127.0.0.1:{port}/x"
        with stm.start_transaction("t") as tx:
            if lib == "requests":
                with pytest.raises(requests.exceptions.ConnectTimeout):
                    requests.get(url, timeout=(0.3, 1))
            else:
                with pytest.raises(urllib3.exceptions.ConnectTimeoutError):
                    urllib3.PoolManager(retries=False).request(
                        "GET", url, timeout=urllib3.Timeout(connect=0.3)
                    )
    finally:
        for filler in fillers:
            filler.close()
        listener.close()
    (span,) = http_spans(tx)
    assert span.status == "deadline_exceeded", span.data


class _InstanceWrapper:
    """A method wrapper as OpenTelemetry's and ddtrace's (``wrapt``): a descriptor that must
    be bound to its instance; called unbound, it has none (as a ``FunctionWrapper`` called
    straight from the class ``__dict__``)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.calls = 0

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self

        def bound(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return self.fn(obj, *args, **kwargs)

        return bound

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AttributeError("called without its instance")


_WRAPPED_BEFORE_US = (
    (http.client.HTTPConnection, "putrequest"),
    (http.client.HTTPConnection, "putheader"),
    (http.client.HTTPConnection, "endheaders"),
    (http.client.HTTPConnection, "getresponse"),
    (http.client.HTTPConnection, "close"),
    (http.client.HTTPResponse, "_close_conn"),
    (http.client.HTTPResponse, "readline"),
    (http.client.HTTPResponse, "read1"),
    (httpx.HTTPTransport, "handle_request"),
    (httpx.AsyncHTTPTransport, "handle_async_request"),
)


def test_another_instrumentation_installed_first_keeps_working(
    recording_server: RecordingServer,
) -> None:
    """Another library wrapped the same methods first (with descriptors, as ``wrapt``
    does): calling them from the class ``__dict__`` unbound broke every call (httpx:
    ``AttributeError``), traced or not. They are bound to their instance, and restored."""
    http_clients.uninstrument()
    saved = {(cls, name): cls.__dict__[name] for cls, name in _WRAPPED_BEFORE_US}
    wrappers = {key: _InstanceWrapper(fn) for key, fn in saved.items()}
    try:
        for (cls, name), wrapper in wrappers.items():
            setattr(cls, name, wrapper)
        stm.init(traces_sample_rate=1.0)  # instruments over the wrappers
        url = recording_server.url + "/x"
        assert requests.get(url, timeout=5).status_code == 200  # no trace: passes through
        with stm.start_transaction("t") as tx:
            assert requests.get(url, timeout=5).status_code == 200
            assert httpx.get(url).status_code == 200

            async def both() -> int:
                async with httpx.AsyncClient() as client:
                    return (await client.get(url)).status_code

            assert asyncio.run(both()) == 200
        assert len(http_spans(tx)) == 3
        assert all(len(r.values("sentry-trace")) == 1 for r in recording_server.received()[1:])
        used = {name for (_, name), w in wrappers.items() if w.calls}
        assert {"putrequest", "endheaders", "getresponse", "handle_request"} <= used
        assert "handle_async_request" in used
        http_clients.uninstrument()
        for (cls, name), wrapper in wrappers.items():
            assert cls.__dict__[name] is wrapper  # restored: theirs, not ours
    finally:
        http_clients.uninstrument()
        for (cls, name), fn in saved.items():
            setattr(cls, name, fn)


@pytest.mark.parametrize("lib", ["requests", "http.client"])
def test_refused_inside_the_apps_own_timeout_handler_is_not_a_timeout(lib: str) -> None:
    """The app calls out while handling a TimeoutError of its own: that exception is the
    implicit context of the refused connect, not its cause (``internal_error``)."""
    stm.init(traces_sample_rate=1.0)
    port = free_port()
    with stm.start_transaction("t") as tx:
        try:
            raise TimeoutError("the app's own")
        except TimeoutError:
            with pytest.raises(OSError):
                if lib == "requests":
                    requests.get(f"http://127.0.0.1:{port}/x", timeout=5)
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/x")
    (span,) = http_spans(tx)
    assert span.status == "internal_error", span.data


def test_as_function_calls_an_original_as_attribute_lookup_would() -> None:
    import functools

    from sentry_tracing_mw.integrations.http_clients import as_function

    def plain(self: Any, x: int) -> tuple[Any, int]:
        return self, x

    class Host:
        f = plain
        s = staticmethod(lambda x: ("static", x))
        p = functools.partial(lambda x: ("partial", x))
        w = _InstanceWrapper(plain)

    host = Host()
    for name in ("f", "s", "p", "w"):
        original = Host.__dict__[name]
        assert as_function(original)(host, 7) == getattr(host, name)(7), name
    assert as_function(plain) is plain


def test_opentelemetry_httpx_instrumentation_installed_first(
    recording_server: RecordingServer,
) -> None:
    """``opentelemetry-instrument`` instruments httpx at startup, before the app's
    ``init()``: its wrapper rewrites a request's ``traceparent`` and ``baggage`` before the
    request is sent, so ours must run inside it (next to the transport), as when ours comes
    first: our trace's ``traceparent``, its baggage members kept beside our ``sentry-``
    ones. Uninstalling either restores the other."""
    from opentelemetry import baggage, context, trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    http_clients.uninstrument()
    originals = (
        httpx.HTTPTransport.__dict__["handle_request"],
        httpx.AsyncHTTPTransport.__dict__["handle_async_request"],
    )
    provider = TracerProvider()
    otel = HTTPXClientInstrumentor()
    otel.instrument(tracer_provider=provider)
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        stm.init(traces_sample_rate=1.0)
        url = recording_server.url + "/x"
        tracer = trace.get_tracer("t", tracer_provider=provider)
        with stm.start_transaction("t") as tx, tracer.start_as_current_span("otel"):
            assert httpx.get(url).status_code == 200

            async def call() -> int:
                async with httpx.AsyncClient() as client:
                    return (await client.get(url)).status_code

            assert asyncio.run(call()) == 200
        spans = http_spans(tx)
        assert len(spans) == 2
        for got, span in zip(recording_server.received(), spans, strict=True):
            assert got.values("traceparent") == [f"00-{tx.trace_id}-{span.span_id}-03"]
            (bag,) = got.values("baggage")
            members = [m.split("=", 1)[0] for m in bag.split(",")]
            assert members[0] == "tenant" and f"sentry-trace_id={tx.trace_id}" in bag
            assert got.values("sentry-trace") == [f"{tx.trace_id}-{span.span_id}-1"]
        http_clients.uninstrument()
        assert httpx.HTTPTransport.__dict__["handle_request"].__wrapped__ is originals[0]
    finally:
        context.detach(token)
        http_clients.uninstrument()
        otel.uninstrument()
    assert httpx.HTTPTransport.__dict__["handle_request"] is originals[0]
    assert httpx.AsyncHTTPTransport.__dict__["handle_async_request"] is originals[1]


def test_opentelemetry_uninstrumented_first_leaves_no_layer_of_ours() -> None:
    """OpenTelemetry's uninstrument puts what its proxy wraps (ours) on the class: ours
    then puts the original back, cycle after cycle (no dead layers stacking up)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    http_clients.uninstrument()
    original = httpx.HTTPTransport.__dict__["handle_request"]
    otel = HTTPXClientInstrumentor()
    try:
        for _ in range(3):
            otel.instrument(tracer_provider=TracerProvider())
            http_clients.instrument()
            otel.uninstrument()
            http_clients.uninstrument()
            assert httpx.HTTPTransport.__dict__["handle_request"] is original
    finally:
        otel.uninstrument()
        http_clients.uninstrument()


def test_opentelemetry_installed_after_ours_and_removed_after_ours_leaves_no_layer(
    recording_server: RecordingServer,
) -> None:
    """Ours, then OpenTelemetry's (around ours), then ours removed, then theirs: theirs gives
    back what it wrapped. No switched-off layer of ours may stay behind, cycle after cycle
    (1000 cycles made every httpx call fail with a RecursionError)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider

    http_clients.uninstrument()
    originals = {
        m: getattr(httpx, c).__dict__[m]
        for c, m in (
            ("HTTPTransport", "handle_request"),
            ("AsyncHTTPTransport", "handle_async_request"),
        )
    }
    otel = HTTPXClientInstrumentor()
    try:
        for _ in range(3):
            http_clients.instrument()
            otel.instrument(tracer_provider=TracerProvider())
            http_clients.uninstrument()
            otel.uninstrument()
        assert httpx.HTTPTransport.__dict__["handle_request"] is originals["handle_request"]
        assert (
            httpx.AsyncHTTPTransport.__dict__["handle_async_request"]
            is originals["handle_async_request"]
        )
        # a switched-off layer of ours put back on the class (by another tracer's unwrap,
        # ddtrace's say) is dropped by the next install
        http_clients.instrument()
        ours = httpx.HTTPTransport.__dict__["handle_request"]
        http_clients.uninstrument()
        httpx.HTTPTransport.handle_request = ours  # type: ignore[method-assign]
        stm.init(traces_sample_rate=1.0)
        assert (
            httpx.HTTPTransport.__dict__["handle_request"].__wrapped__
            is originals["handle_request"]
        )
        with stm.start_transaction("t", op="test") as tx:
            assert httpx.get(recording_server.url + "/after").status_code == 200
        (rec,) = recording_server.received("/after")
        assert rec.values("sentry-trace") == [f"{tx.trace_id}-{http_spans(tx)[0].span_id}-1"]
    finally:
        otel.uninstrument()
        http_clients.uninstrument()


def test_another_tracers_wrapper_made_with_functools_wraps_is_kept(
    recording_server: RecordingServer,
) -> None:
    """A wrapper another tracer made with ``functools.wraps(ours)`` copies our attributes:
    ours must not take it for a switched-off layer of its own and drop it."""
    import functools

    stm.init(traces_sample_rate=1.0)
    ours = httpx.HTTPTransport.__dict__["handle_request"]
    calls: list[int] = []

    @functools.wraps(ours)
    def theirs(self: Any, request: Any) -> Any:
        calls.append(1)
        return ours(self, request)

    httpx.HTTPTransport.handle_request = theirs  # type: ignore[method-assign]
    try:
        http_clients.uninstrument()  # ours, inside theirs, switched off
        http_clients.instrument()
        with stm.start_transaction("t", op="test") as tx:
            assert httpx.get(recording_server.url + "/kept").status_code == 200
        assert calls == [1]  # theirs still runs
        (rec,) = recording_server.received("/kept")
        assert rec.values("sentry-trace") == [f"{tx.trace_id}-{http_spans(tx)[0].span_id}-1"]
    finally:
        http_clients.uninstrument()
        if httpx.HTTPTransport.__dict__.get("handle_request") is theirs:
            httpx.HTTPTransport.handle_request = ours.__wrapped__  # type: ignore[method-assign]


def test_a_wrapt_proxy_around_a_switched_off_wrapper_of_ours_is_kept() -> None:
    """A ``wrapt`` proxy hashes and compares as what it wraps: one around a switched-off
    wrapper of ours (left by an older order of uninstrumenting) is another tracer's
    layer, not ours to drop."""
    import wrapt

    http_clients.uninstrument()
    original = httpx.HTTPTransport.__dict__["handle_request"]
    http_clients.instrument()
    ours = httpx.HTTPTransport.__dict__["handle_request"]
    http_clients.uninstrument()  # ours switched off, the original back on the class
    theirs = wrapt.FunctionWrapper(
        ours, lambda wrapped, instance, args, kwargs: wrapped(*args, **kwargs)
    )
    httpx.HTTPTransport.handle_request = theirs  # type: ignore[method-assign]
    try:
        http_clients.instrument()
        assert httpx.HTTPTransport.__dict__["handle_request"] is theirs  # still theirs
    finally:
        http_clients.uninstrument()
        httpx.HTTPTransport.handle_request = original  # type: ignore[method-assign]
