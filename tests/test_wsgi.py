"""The generic WSGI middleware: naming, request data, lifecycle, propagation, isolation."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from wsgiref.util import FileWrapper, setup_testing_defaults

import pytest
import requests

import sentry_tracing_mw as stm
from sentry_tracing_mw._context import CURRENT_SPAN, PROPAGATION_CONTEXT
from sentry_tracing_mw.integrations.wsgi import TracingMiddleware

from .sentry_server import SentryServer, init_traced
from .servers import run_waitress, run_wsgi, wsgi_body

TRACE_ID = "771a43a4192642f0b136d5159a501700"
PARENT_ID = "b7ad6b7169203331"


pytestmark = pytest.mark.usefixtures("no_outgoing_headers")  # the test thread's own calls


def _json(start_response: Any, data: Any, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def plain_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A framework-free WSGI app."""
    path = environ.get("PATH_INFO", "")
    if path == "/headers":
        return _json(start_response, stm.get_trace_headers())
    if path == "/span":
        time.sleep(0.05)
        span = stm.get_current_span()
        return _json(start_response, {"trace_id": span.trace_id if span else None})
    if path == "/named":
        stm.set_transaction_name("/named/{id}", "route")
        return _json(start_response, "named")
    if path == "/boom":
        raise KeyError("boom")
    if path == "/missing":
        return _json(start_response, "no", "404 Not Found")
    if path == "/stream":

        def body() -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            for _ in range(3):
                time.sleep(0.1)
                yield b"chunk\n"

        return body()
    if path == "/stream-fail":

        def failing() -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"first\n"
            raise RuntimeError("mid-stream")

        return failing()
    if path == "/endless":

        def endless() -> Iterator[bytes]:
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            for _ in range(300):
                yield b"x" * 65536
                time.sleep(0.01)

        return endless()
    return _json(start_response, {"path": path})


def _environ(path: str = "/", method: str = "GET", **extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": method}
    setup_testing_defaults(environ)
    environ.update(extra)
    return environ


def _call(app: Any, environ: dict[str, Any]) -> tuple[str, bytes]:
    status: list[str] = []

    def start_response(s: str, headers: Any, exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    result = app(environ, start_response)
    body = wsgi_body(result)
    return status[-1], body


def wait_transactions(
    server: SentryServer, n: int, events: int = 0, timeout: float = 5.0
) -> list[dict[str, Any]]:
    """Wait until ``n`` transactions (and ``events`` error events) arrived; return them."""
    deadline = time.monotonic() + timeout
    while True:
        txs = server.transactions()
        if len(txs) >= n and len(server.events()) >= events:
            return txs
        if time.monotonic() > deadline:
            return txs
        time.sleep(0.02)


def _one_tx(server: SentryServer, n: int = 1) -> list[dict[str, Any]]:
    assert stm.flush(5)
    txs = wait_transactions(server, n)
    assert len(txs) == n, [t["transaction"] for t in txs]
    return txs


# -- naming, response and request data ------------------------------------------------------


def test_real_server_transaction_shape_and_privacy(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    with run_wsgi(app) as base:
        resp = requests.get(
            f"{base}/users/42?page=2&token=s3cret&password=hunter2",
            headers={
                "Authorization": "Bearer abc",
                "Cookie": "session=1",
                "X-Api-Key": "k",
                "X-Forwarded-For": "1.2.3.4",
                "X-Real-IP": "1.2.3.4",
                "Proxy-Authorization": "Basic x",
                "Set-Cookie": "a=b",
                "X-Custom": "kept",
            },
            timeout=5,
        )
    assert resp.status_code == 200
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/users/42"
    assert tx["transaction_info"] == {"source": "url"}
    trace = tx["contexts"]["trace"]
    assert trace["op"] == "http.server"
    assert trace["origin"] == "auto.http.wsgi"
    assert trace["status"] == "ok"
    assert trace["data"]["http.response.status_code"] == 200
    assert "parent_span_id" not in trace
    assert tx["tags"]["http.status_code"] == "200"
    assert tx["contexts"]["response"] == {"status_code": 200}
    req = tx["request"]
    assert req["method"] == "GET"
    assert req["url"].startswith("http://127.0.0.1:") and req["url"].endswith("/users/42")
    assert req["query_string"] == "page=2&token=[Filtered]&password=[Filtered]"
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["x-custom"] == "kept"
    for name in (
        "authorization",
        "cookie",
        "x-api-key",
        "x-forwarded-for",
        "x-real-ip",
        "proxy-authorization",
        "set-cookie",
    ):
        assert name not in headers
    assert "REMOTE_ADDR" not in req.get("env", {})
    assert "cookies" not in req
    assert "1.2.3.4" not in json.dumps(tx) and "s3cret" not in json.dumps(tx)


def test_send_default_pii_keeps_headers_ip_and_query(sentry_server: SentryServer) -> None:
    init_traced(sentry_server, send_default_pii=True)
    app = TracingMiddleware(plain_app)
    with run_wsgi(app) as base:
        requests.get(
            f"{base}/x?token=s3cret",
            headers={"Authorization": "Bearer abc", "X-Forwarded-For": "1.2.3.4"},
            timeout=5,
        )
    (tx,) = _one_tx(sentry_server)
    req = tx["request"]
    headers = {k.lower(): v for k, v in req["headers"].items()}
    assert headers["authorization"] == "Bearer abc"
    assert headers["x-forwarded-for"] == "1.2.3.4"
    assert req["env"]["REMOTE_ADDR"] == "127.0.0.1"
    assert req["query_string"] == "token=s3cret"


def test_error_status_and_set_transaction_name_hook(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    assert _call(app, _environ("/missing"))[0].startswith("404")
    assert _call(app, _environ("/named"))[0].startswith("200")
    txs = {t["transaction"]: t for t in _one_tx(sentry_server, 2)}
    missing = txs["/missing"]  # the generic middleware keeps the honest raw path
    assert missing["transaction_info"]["source"] == "url"
    assert missing["contexts"]["trace"]["status"] == "not_found"
    assert missing["tags"]["http.status_code"] == "404"
    assert txs["/named/{id}"]["transaction_info"]["source"] == "route"


def test_set_transaction_name_outside_a_transaction_is_harmless() -> None:
    stm.set_transaction_name("nothing")  # no current span: no error, no effect
    assert stm.get_current_span() is None


def test_script_name_is_part_of_the_url_name(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    _call(app, _environ("/things/3", SCRIPT_NAME="/mount"))
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/mount/things/3"
    assert tx["request"]["url"].endswith("/mount/things/3")


def _late_status_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    # (a header: werkzeug takes an empty header list for headers not sent yet)
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"partial")  # the status line and headers are sent
    try:
        raise ValueError("late")
    except ValueError:  # the server re-raises: the client has its 200 already
        start_response("500 Internal Server Error", [], sys.exc_info())
    return [b"never"]


def test_a_status_the_server_refused_is_not_recorded(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    with run_wsgi(TracingMiddleware(_late_status_app)) as base:
        resp = requests.get(f"{base}/late", timeout=5, stream=True)
        assert resp.status_code == 200
        # Read what write() sent before closing: the app goes on once write() returned.
        assert resp.raw.read(7) == b"partial"
        resp.close()
    (tx,) = _one_tx(sentry_server)
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 200
    assert tx["tags"]["http.status_code"] == "200"
    assert tx["contexts"]["trace"]["status"] == "internal_error"  # the app raised


# -- lifecycle ----------------------------------------------------------------------------


def test_streamed_body_is_part_of_the_transaction(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    with run_wsgi(app) as base:
        resp = requests.get(f"{base}/stream", timeout=5)
    assert resp.text == "chunk\n" * 3
    (tx,) = _one_tx(sentry_server)
    assert tx["timestamp"] - tx["start_timestamp"] >= 0.3
    assert tx["contexts"]["trace"]["status"] == "ok"


def test_file_wrapper_fast_path_is_kept_and_ends_on_close(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    opened: list[FileWrapper] = []

    def file_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        wrapper = environ["wsgi.file_wrapper"](open(__file__, "rb"))  # noqa: SIM115
        opened.append(wrapper)
        return wrapper  # type: ignore[no-any-return]

    app = TracingMiddleware(file_app)
    environ = _environ("/file", **{"wsgi.file_wrapper": FileWrapper})
    result = app(environ, lambda s, h, e=None: None)
    assert result is opened[0]  # the server can still use sendfile
    tx = environ["sentry_tracing_mw.transaction"]
    assert tx.timestamp is None
    body = b"".join(result)
    assert tx.timestamp is None  # a file wrapper ends on close(), as servers guarantee
    result.close()  # type: ignore[attr-defined]
    assert tx.timestamp is not None
    assert body.startswith(b'"""The generic WSGI')
    (sent,) = _one_tx(sentry_server)
    assert sent["contexts"]["trace"]["status"] == "ok"


def _abandon(port: int, path: str) -> None:
    """GET ``path``, read the start of a 200 response, then reset the connection (the
    server's next write fails)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_client_disconnect_mid_stream_is_cancelled(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    with run_wsgi(app) as base:
        _abandon(int(base.rsplit(":", 1)[1]), "/endless")
        (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/endless"
    assert tx["contexts"]["trace"]["status"] == "cancelled"
    assert tx["timestamp"] - tx["start_timestamp"] < 5


def sparse_file(tmp_path: Any, size: int = 64 * 1024 * 1024) -> Any:
    """A big file made at once (sparse), larger than any socket buffer."""
    big = tmp_path / "big.bin"
    with big.open("wb") as f:
        f.truncate(size)
    return big


def check_download_cut_short_is_cancelled(sentry_server: SentryServer, port: int) -> None:
    """GET /big abandoned after its first bytes: cancelled; read whole: ok."""
    _abandon(port, "/big")
    (cut,) = _one_tx(sentry_server)
    assert cut["contexts"]["trace"]["status"] == "cancelled"
    sentry_server.clear()
    with requests.get(f"http://127.0.0.1:{port}/big", timeout=20, stream=True) as whole:
        size = int(whole.headers["Content-Length"])
        assert sum(len(c) for c in whole.iter_content(1 << 20)) == size
    (full,) = _one_tx(sentry_server)
    assert full["contexts"]["trace"]["status"] == "ok"


def test_waitress_file_download_cut_short_is_cancelled(
    sentry_server: SentryServer, tmp_path: Any
) -> None:
    # waitress keeps a file_wrapper's file as `.file` (not `.filelike`) and counts what it
    # still has to send: a client that goes away mid-file is seen.
    big = sparse_file(tmp_path)

    def file_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", str(big.stat().st_size))])
        return environ["wsgi.file_wrapper"](big.open("rb"), 65536)  # type: ignore[no-any-return]

    init_traced(sentry_server)
    with run_waitress(TracingMiddleware(file_app)) as port:
        check_download_cut_short_is_cancelled(sentry_server, port)


def test_unhandled_exception_is_captured_linked_and_reraised(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    raised: list[BaseException] = []

    def app_raises(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        exc = KeyError("boom")
        raised.append(exc)
        raise exc

    app = TracingMiddleware(app_raises)
    with pytest.raises(KeyError) as info:
        app(_environ("/boom"), lambda s, h, e=None: None)
    assert info.value is raised[0]
    assert CURRENT_SPAN.get() is None
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert event["contexts"]["trace"]["trace_id"] == tx["contexts"]["trace"]["trace_id"]
    assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]
    exc = event["exception"]["values"][-1]
    assert exc["type"] == "KeyError"
    assert exc["mechanism"] == {"type": "wsgi", "handled": False}
    assert event["transaction"] == "/boom"


class _ClosingFails:
    """A body whose ``close()`` (the app's cleanup) raises."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        raise OSError("cleanup failed")


@pytest.mark.parametrize("read", ["all", "none"])
def test_a_body_whose_close_raises_is_an_error(sentry_server: SentryServer, read: str) -> None:
    """The server calls ``close()`` after the body (or instead, when the client went
    away): its exception reaches the server unchanged, and is the request's error."""
    init_traced(sentry_server)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _ClosingFails([b"a", b"b"])

    body = TracingMiddleware(app)(_environ("/cleanup"), lambda s, h, e=None: None)
    if read == "all":
        assert b"".join(body) == b"ab"
    with pytest.raises(OSError, match="cleanup failed"):
        body.close()  # type: ignore[attr-defined]
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == "OSError"
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "wsgi", "handled": False}
    assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]
    # Read to the end, the transaction had ended (and was sent) before close().
    expected = "ok" if read == "all" else "internal_error"
    assert tx["contexts"]["trace"]["status"] == expected


def test_untraced_method_still_reports_errors_ignored_path_does_not(
    sentry_server: SentryServer,
) -> None:
    # HEAD is not traced by default, but its errors are still errors (sentry-sdk reports
    # them too); an ignored path is left alone entirely.
    init_traced(sentry_server)

    def app_raises(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise KeyError(environ["PATH_INFO"])

    app = TracingMiddleware(app_raises, ignore_paths=["/health"])
    for method, path in (("HEAD", "/boom"), ("GET", "/health")):
        with pytest.raises(KeyError):
            environ = _environ(path, method=method, QUERY_STRING="q=1")
            environ.update(HTTP_COOKIE="sessionid=s3cr3t", HTTP_X_CUSTOM="visible")
            app(environ, lambda s, h, e=None: None)
    assert stm.flush(5) and sentry_server.wait_for(1)
    assert stm.flush(1) and sentry_server.transactions() == []
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["value"] == "'/boom'"
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "wsgi", "handled": False}
    assert "transaction" not in event
    # its request data, as a traced request's events carry it (privacy rules applied)
    request = event["request"]
    assert request["method"] == "HEAD" and request["url"].endswith("/boom")
    assert request["query_string"] == "q=1"
    headers = dict(request["headers"])
    assert headers.get("X-Custom") == "visible" and "Cookie" not in headers
    assert "user" not in event


def test_exception_mid_stream(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    result = app(_environ("/stream-fail"), lambda s, h, e=None: None)
    it = iter(result)
    assert next(it) == b"first\n"
    with pytest.raises(RuntimeError, match="mid-stream"):
        next(it)
    result.close()  # type: ignore[attr-defined]
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    (tx,) = sentry_server.transactions()
    (event,) = sentry_server.events()
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]


# -- what is traced -------------------------------------------------------------------------


def test_ignore_paths_skip_tracing(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app, ignore_paths=["/health", "/static/*"])
    assert _call(app, _environ("/health"))[0].startswith("200")
    assert _call(app, _environ("/static/app.js"))[0].startswith("200")
    assert _call(app, _environ("/healthz"))[0].startswith("200")  # anchored: traced
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/healthz"


def test_head_and_options_untraced_but_each_gets_its_own_trace(
    sentry_server: SentryServer,
) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    seen: list[str] = []
    with run_wsgi(app) as base:
        for method in ("HEAD", "HEAD", "OPTIONS"):
            resp = requests.request(method, f"{base}/headers", timeout=5)
            assert resp.status_code == 200
        direct = [json.loads(_call(app, _environ("/headers", "HEAD"))[1]) for _ in range(2)]
        seen = [d["sentry-trace"].split("-")[0] for d in direct]
        requests.get(f"{base}/after", timeout=5)
    assert seen[0] != seen[1]
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/after"
    assert PROPAGATION_CONTEXT.get() is None


def test_by_default_every_method_but_head_and_options_is_traced(
    sentry_server: SentryServer,
) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    # a made-up method is no HTTP method: a scanner's would each make names of their own
    methods = ("GET", "PROPFIND", "QUERY", "PURGE", "HEAD", "OPTIONS", "post", "ZQ81", "X" * 300)
    for method in methods:
        _call(app, _environ(f"/{method.lower()[:9]}", method))
    assert stm.flush(5)
    sent = sorted(tx["request"]["method"] for tx in sentry_server.transactions())
    assert sent == ["GET", "POST", "PROPFIND", "PURGE", "QUERY"]


def test_http_methods_to_capture(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app, http_methods_to_capture=["head"])
    _call(app, _environ("/a", "HEAD"))
    _call(app, _environ("/b", "GET"))
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/a"
    assert tx["request"]["method"] == "HEAD"


# -- propagation ----------------------------------------------------------------------------


def test_continues_sentry_trace_and_baggage(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    baggage = (
        f"sentry-trace_id={TRACE_ID},sentry-public_key=upstream,sentry-sample_rate=0.5,"
        "sentry-sample_rand=0.25,sentry-sampled=true,sentry-environment=up,"
        "sentry-transaction=checkout,other=vendor"
    )
    with run_wsgi(app) as base:
        out = requests.get(
            f"{base}/headers",
            timeout=5,
            headers={"sentry-trace": f"{TRACE_ID}-{PARENT_ID}-1", "baggage": baggage},
        ).json()
    (tx,) = _one_tx(sentry_server)
    trace = tx["contexts"]["trace"]
    assert trace["trace_id"] == TRACE_ID
    assert trace["parent_span_id"] == PARENT_ID
    assert out["sentry-trace"] == f"{TRACE_ID}-{trace['span_id']}-1"
    assert "sentry-transaction=checkout" in out["baggage"]
    (env,) = [e for e in sentry_server.envelopes() if any(e.items_of("transaction"))]
    assert env.headers["trace"] == {
        "trace_id": TRACE_ID,
        "public_key": "upstream",
        "sample_rate": "0.5",
        "sample_rand": "0.25",  # frozen: a plain decimal passes exactly as received
        "sampled": "true",
        "environment": "up",
        "transaction": "checkout",
    }


def test_negative_upstream_decision_sends_nothing(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    out = json.loads(
        _call(app, _environ("/headers", HTTP_SENTRY_TRACE=f"{TRACE_ID}-{PARENT_ID}-0"))[1]
    )
    assert out["sentry-trace"].startswith(TRACE_ID) and out["sentry-trace"].endswith("-0")
    stm.flush(5)
    assert sentry_server.transactions() == []


@pytest.mark.parametrize("path", ["/boom", "/stream-fail"])
def test_unsampled_request_still_captures_errors(sentry_server: SentryServer, path: str) -> None:
    """Error events do not depend on the transaction's sampling decision."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0, instrument_http_clients=False)
    app = TracingMiddleware(plain_app)
    result = None
    with pytest.raises((KeyError, RuntimeError)):
        result = app(_environ(path, HTTP_SENTRY_TRACE=f"{TRACE_ID}-{PARENT_ID}-0"), _noop)
        for _ in result:
            pass
    if result is not None:
        result.close()  # type: ignore[attr-defined]
    assert CURRENT_SPAN.get() is None
    assert stm.flush(5)
    wait_transactions(sentry_server, 0, events=1)
    (event,) = sentry_server.events()
    assert event["contexts"]["trace"]["trace_id"] == TRACE_ID
    # the request data is on the event whatever the sampling (as sentry-sdk sends it)
    assert event["request"]["method"] == "GET"
    assert event["request"]["url"] == f"http://127.0.0.1{path}"
    assert "Sentry-Trace" in event["request"]["headers"]
    assert sentry_server.transactions() == []


def test_unsampled_streaming_body_runs_in_the_requests_trace(sentry_server: SentryServer) -> None:
    """A generator body (app code running after the app returned) sees the request's trace."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0, instrument_http_clients=False)
    seen: list[str] = []

    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        for _ in range(2):
            seen.append(stm.get_trace_headers()["sentry-trace"])
            yield b"x"

    app = TracingMiddleware(streaming)
    status, body = _call(app, _environ("/s", HTTP_SENTRY_TRACE=f"{TRACE_ID}-{PARENT_ID}-0"))
    assert status == "200 OK" and body == b"xx" and len(seen) == 2
    assert all(h.startswith(TRACE_ID) and h.endswith("-0") for h in seen), seen
    assert CURRENT_SPAN.get() is None
    list_app = TracingMiddleware(plain_app)  # a list body: the transaction ends at once
    out = json.loads(_call(list_app, _environ("/headers"))[1])
    assert out["sentry-trace"].endswith("-0")
    assert CURRENT_SPAN.get() is None and PROPAGATION_CONTEXT.get() is None


def test_an_untraced_requests_streamed_body_keeps_its_trace_and_reports_errors(
    sentry_server: SentryServer,
) -> None:
    """HEAD/OPTIONS (not traced by default): the body's app code runs in the request's own
    trace (an incoming one continued), not in one left on the server's thread, and an
    error it raises is reported; an ignored path's body reports none."""
    init_traced(sentry_server)
    seen: list[str] = []

    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] != "/health":  # (an ignored path's body is left as it is)
            seen.append(stm.get_trace_headers()["sentry-trace"].split("-")[0])
        yield b"x"
        if "fail" in environ.get("QUERY_STRING", ""):
            raise RuntimeError(f"body of {environ['PATH_INFO']} failed")

    app = TracingMiddleware(streaming, ignore_paths=["/health"])
    for _ in range(3):
        assert _call(app, _environ("/s", "OPTIONS"))[1] == b"x"
    assert _call(app, _environ("/s", "HEAD", HTTP_SENTRY_TRACE=f"{TRACE_ID}-{PARENT_ID}-1"))
    assert len(set(seen[:3])) == 3 and seen[3] == TRACE_ID, seen
    assert PROPAGATION_CONTEXT.get() is None  # nothing left on this thread
    for path in ("/s", "/health"):
        with pytest.raises(RuntimeError):
            _call(app, _environ(path, "OPTIONS", QUERY_STRING="fail"))
    assert stm.flush(5)
    wait_transactions(sentry_server, 0, events=1)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["value"] == "body of /s failed"
    assert event["request"]["method"] == "OPTIONS" and event["request"]["url"].endswith("/s")
    assert sentry_server.transactions() == []


def test_a_body_failing_before_its_first_chunk_is_a_500(sentry_server: SentryServer) -> None:
    """Nothing was sent yet, so the server answers 500: the transaction says so, not the
    200 the app had started."""
    init_traced(sentry_server)

    def fails_first(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise ValueError("no first chunk")
        yield b"never"

    with run_wsgi(TracingMiddleware(fails_first)) as base:
        assert requests.get(f"{base}/first", timeout=5).status_code == 500
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    (tx,) = sentry_server.transactions()
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 500


def test_a_body_failing_after_write_keeps_the_status_that_went_out(
    sentry_server: SentryServer,
) -> None:
    """The app sent bytes with ``write()`` (the status line went with them), then its body
    failed: the client has its 200, and so says the transaction."""
    init_traced(sentry_server)

    def writes_then_fails(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"already sent")

        def body() -> Iterator[bytes]:
            raise ValueError("after write")
            yield b"never"

        return body()

    with pytest.raises(ValueError):
        _call(TracingMiddleware(writes_then_fails), _environ("/w"))
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=1)
    (tx,) = sentry_server.transactions()
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert tx["contexts"]["trace"]["data"]["http.response.status_code"] == 200


def test_a_file_wrapper_over_an_in_memory_file_cut_short_is_cancelled(
    sentry_server: SentryServer,
) -> None:
    """``send_file(io.BytesIO(...))``: no descriptor to measure, but a seekable file tells
    its size."""
    import io

    def file_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        data = io.BytesIO(bytes(64 << 20))
        return environ["wsgi.file_wrapper"](data, 65536)  # type: ignore[no-any-return]

    from wsgiref.simple_server import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    init_traced(sentry_server)
    httpd = make_server("127.0.0.1", 0, TracingMiddleware(file_app), handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:  # wsgiref's file wrapper reads the file in blocks
        sock = socket.create_connection(("127.0.0.1", httpd.server_port), timeout=5)
        try:  # read the start of the answer (HTTP/1.0 here), then reset the connection
            sock.sendall(b"GET /mem HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert sock.recv(1024).startswith(b"HTTP/1.0 200")
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        (cut,) = _one_tx(sentry_server)
        sentry_server.clear()
        url = f"http://127.0.0.1:{httpd.server_port}/mem"
        with requests.get(url, timeout=20, stream=True) as whole:
            assert sum(len(c) for c in whole.iter_content(1 << 20)) == 64 << 20
        (full,) = _one_tx(sentry_server)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    assert cut["contexts"]["trace"]["status"] == "cancelled"
    assert full["contexts"]["trace"]["status"] == "ok"


def _noop(status: str, headers: Any, exc_info: Any = None) -> Any:
    return lambda data: None


def test_traceparent_fallback(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    _call(app, _environ("/tp", HTTP_TRACEPARENT=f"00-{TRACE_ID}-{PARENT_ID}-01"))
    (tx,) = _one_tx(sentry_server)
    assert tx["contexts"]["trace"]["trace_id"] == TRACE_ID
    assert tx["contexts"]["trace"]["parent_span_id"] == PARENT_ID


def test_traces_sampler_receives_the_environ(sentry_server: SentryServer) -> None:
    seen: list[Any] = []

    def sampler(ctx: Any) -> float:
        seen.append(
            (ctx["wsgi_environ"]["PATH_INFO"], ctx["transaction_context"]["name"], ctx.get("route"))
        )
        return 1.0 if ctx["wsgi_environ"]["PATH_INFO"] == "/yes" else 0.0

    init_traced(sentry_server, traces_sample_rate=None, traces_sampler=sampler)
    app = TracingMiddleware(plain_app)
    _call(app, _environ("/yes"))
    _call(app, _environ("/no"))
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/yes"
    assert seen == [("/yes", "/yes", None), ("/no", "/no", None)]


# -- isolation and nesting -----------------------------------------------------------------


def test_concurrent_requests_are_isolated(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    ids = [f"{i:032x}" for i in range(1, 9)]
    with run_wsgi(app) as base:

        def call(trace_id: str) -> str:
            out = requests.get(
                f"{base}/span", timeout=5, headers={"sentry-trace": f"{trace_id}-{PARENT_ID}-1"}
            ).json()
            return str(out["trace_id"])

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(call, ids))
    assert got == ids
    txs = _one_tx(sentry_server, 8)
    assert sorted(t["contexts"]["trace"]["trace_id"] for t in txs) == ids


def test_no_span_left_current_on_a_reused_server_thread(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    traced = TracingMiddleware(plain_app)
    observed: list[tuple[str, object, object]] = []

    class Recorded:
        def __init__(self, result: Iterable[bytes], path: str) -> None:
            self.result, self.path = result, path

        def __iter__(self) -> Iterator[bytes]:
            return iter(self.result)

        def close(self) -> None:
            getattr(self.result, "close", lambda: None)()
            observed.append((self.path, CURRENT_SPAN.get(), PROPAGATION_CONTEXT.get()))

    def outer(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        observed.append(("before", CURRENT_SPAN.get(), PROPAGATION_CONTEXT.get()))
        result = traced(environ, start_response)
        observed.append(("returned", CURRENT_SPAN.get(), PROPAGATION_CONTEXT.get()))
        return Recorded(result, environ["PATH_INFO"])

    with run_wsgi(outer, threaded=False) as base:  # one thread serves every request
        for path in ("/stream", "/headers", "/boom", "/x"):
            requests.request("HEAD" if path == "/headers" else "GET", f"{base}{path}", timeout=5)
        # the client may read the last response before the server thread has called close()
        deadline = time.monotonic() + 5
        while len(observed) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
    kinds = [where if where in ("before", "returned") else "close" for where, _, _ in observed]
    assert kinds.count("before") == 4 and kinds.count("returned") == 3  # /boom raised
    # werkzeug skips close() when draining the socket after the body meets a reset
    # (the client has gone): up to one close per body, never required
    assert 1 <= kinds.count("close") <= 3, observed
    assert all(span is None and ctx is None for _, span, ctx in observed), observed


def test_nested_middlewares_make_one_transaction(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(TracingMiddleware(TracingMiddleware(plain_app)))
    with run_wsgi(app) as base:
        requests.get(f"{base}/stream", timeout=5)
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/stream"
    stm.flush(1)
    assert len(sentry_server.transactions()) == 1


def test_odd_environ_is_served(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    app = TracingMiddleware(plain_app)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/caf\xc3\xa9",
        "SERVER_PORT": 8080,
        "HTTP_X_NUMBER": 5,
        "HTTP_SENTRY_TRACE": "garbage",
        "HTTP_BAGGAGE": "%%%",
    }
    status, _ = _call(app, environ)
    assert status.startswith("200")
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/café"
    assert "parent_span_id" not in tx["contexts"]["trace"]


def test_without_init_the_middleware_initializes_from_kwargs(
    sentry_server: SentryServer,
) -> None:
    app = TracingMiddleware(
        plain_app, dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False
    )
    assert stm.is_initialized()
    _call(app, _environ("/kw"))
    (tx,) = _one_tx(sentry_server)
    assert tx["transaction"] == "/kw"


def test_untraced_requests_run_in_parallel_threads() -> None:
    app = TracingMiddleware(plain_app)  # no DSN, no rate: nothing is sent, traces continue
    results: list[str] = []

    def worker() -> None:
        out = json.loads(
            _call(app, _environ("/headers", HTTP_SENTRY_TRACE=f"{TRACE_ID}-{PARENT_ID}"))[1]
        )
        results.append(out["sentry-trace"][:32])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == [TRACE_ID] * 4


def _wsgiref_response(app: Any) -> bytes:
    """The bytes wsgiref's own handler writes for one GET (its error page on failure)."""
    import io
    import sys
    from wsgiref.handlers import SimpleHandler

    out = io.BytesIO()
    handler = SimpleHandler(io.BytesIO(), out, sys.stderr, _environ("/"), multithread=False)
    handler.log_exception = lambda exc_info: None  # type: ignore[method-assign]
    handler.run(app)
    return out.getvalue()


def test_body_length_stays_visible_to_the_server(sentry_server: SentryServer) -> None:
    # PEP 3333 lets the server use len() of the app's iterable: wsgiref sends a
    # Content-Length for a one-chunk body. Our wrapper must not hide it.
    class OneChunk:
        def __len__(self) -> int:
            return 1

        def __iter__(self) -> Iterator[bytes]:
            yield b"hello"

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return OneChunk()

    init_traced(sentry_server)
    bare, ours = _wsgiref_response(app), _wsgiref_response(TracingMiddleware(app))
    assert b"Content-Length: 5" in bare
    assert b"Content-Length: 5" in ours
    assert ours.endswith(b"\r\n\r\nhello")
    (tx,) = _one_tx(sentry_server)
    assert tx["contexts"]["trace"]["status"] == "ok"


def test_a_body_that_cannot_be_iterated_is_still_closed(sentry_server: SentryServer) -> None:
    # iter() of the app's body raising: the server has the body and closes it, as without
    # the middleware; the error is captured with the request's transaction.
    closed: list[bool] = []

    class Broken:
        def __iter__(self) -> Iterator[bytes]:
            raise RuntimeError("cannot iterate")

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Broken()

    init_traced(sentry_server)
    _wsgiref_response(app)
    assert closed == [True]
    _wsgiref_response(TracingMiddleware(app))
    assert closed == [True, True]
    (tx,) = _one_tx(sentry_server)
    assert tx["contexts"]["trace"]["status"] == "internal_error"
    assert sentry_server.wait_for(2)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["value"] == "cannot iterate"


def test_odd_bodies_a_server_may_probe(sentry_server: SentryServer) -> None:
    # A body whose __getattr__ raises is still served (and closed); a sized body that a
    # server iterates once more inside its own iteration (gevent sums a one-chunk body's
    # length) ends the transaction only when the outer iteration ends.
    closed: list[bool] = []

    class Proxy:
        def __getattr__(self, name: str) -> Any:
            if name == "close":
                return lambda: closed.append(True)
            raise RuntimeError(f"lazy proxy: no {name}")

        def __iter__(self) -> Iterator[bytes]:
            yield b"ok"

    class Sized:
        def __len__(self) -> int:
            return 2

        def __iter__(self) -> Iterator[bytes]:
            for chunk in (b"a", b"b"):
                with stm.start_span("chunk", chunk.decode()):
                    pass
                yield chunk

    bodies: dict[str, Any] = {"/proxy": Proxy(), "/sized": Sized()}

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [])
        return bodies[environ["PATH_INFO"]]  # type: ignore[no-any-return]

    init_traced(sentry_server)
    traced = TracingMiddleware(app)
    result = traced(_environ("/proxy"), lambda *a: None)
    assert list(result) == [b"ok"]
    result.close()  # type: ignore[attr-defined]
    assert closed == [True]
    result = traced(_environ("/sized"), lambda *a: None)
    sent = []
    for chunk in result:
        if not sent:
            assert sum(len(c) for c in result) == 2  # the server's inner pass
        sent.append(chunk)
    result.close()  # type: ignore[attr-defined]
    assert sent == [b"a", b"b"]
    txs = _one_tx(sentry_server, 2)
    sized = next(t for t in txs if t["transaction"] == "/sized")
    # Every chunk span of the outer pass (and of the inner one) belongs to the transaction.
    assert [s["description"] for s in sized["spans"]].count("b") == 2


def test_the_same_exception_object_is_reported_by_each_request(
    sentry_server: SentryServer,
) -> None:
    """A failed cached Future re-raises one exception object in every later request: each
    request reports it (as sentry-sdk does), once, even when the app captured it too."""
    init_traced(sentry_server)
    cached = ConnectionError("config service down")

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/inner":
            stm.capture_exception(cached)  # the app's own capture, then the middleware's
        raise cached

    wrapped = TracingMiddleware(app)
    for path in ("/a", "/inner", "/b"):
        with pytest.raises(ConnectionError) as info:
            wrapped(_environ(path), lambda s, h, e=None: None)
        assert info.value is cached
    assert stm.flush(5) and wait_transactions(sentry_server, 3, events=3)
    events = sentry_server.events()
    assert sorted(e["transaction"] for e in events) == ["/a", "/b", "/inner"]
    assert len({e["contexts"]["trace"]["trace_id"] for e in events}) == 3


def test_a_before_send_editing_the_request_edits_only_its_event(
    sentry_server: SentryServer,
) -> None:
    """Each event of a request gets its own ``request``: a hook editing an error's leaves
    the next error's and the transaction's as they were."""

    def before_send(event: dict[str, Any]) -> dict[str, Any]:
        request = event["request"]
        request["headers"].pop("X-Custom", None)
        request["env"]["edited"] = "yes"
        request["url"] += "#err"
        return event

    init_traced(sentry_server, before_send=before_send)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        for i in range(2):
            stm.capture_exception(KeyError(f"handled {i}"))
            assert stm.flush(5)  # the hook runs now, while the request is still open
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    environ = _environ("/checkout", HTTP_X_CUSTOM="yes")
    wsgi_body(TracingMiddleware(app)(environ, lambda s, h, e=None: None))
    assert stm.flush(5) and wait_transactions(sentry_server, 1, events=2)
    (tx,) = sentry_server.transactions()
    assert tx["request"]["url"].endswith("/checkout")
    assert tx["request"]["headers"]["X-Custom"] == "yes"
    assert "edited" not in tx["request"].get("env", {})
    for event in sentry_server.events():
        assert event["request"]["url"].endswith("/checkout#err")
        assert "X-Custom" not in event["request"]["headers"]


@pytest.mark.parametrize(
    ("exc", "error"),
    [
        (SystemExit(1), "SystemExit"),
        (SystemExit("worker timeout"), "SystemExit"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (SystemExit(0), None),
        (SystemExit(), None),
    ],
)
@pytest.mark.parametrize("where", ["call", "body", "untraced"])
def test_a_system_exit_or_ctrl_c_in_a_request_is_an_error(
    sentry_server: SentryServer, exc: BaseException, error: str | None, where: str
) -> None:
    """As sentry-sdk's WSGI middleware: gunicorn's sync worker raises SystemExit(1) in a
    request it times out; only a SystemExit with code 0 or None is not an error. The
    exception reaches the server unchanged."""
    init_traced(sentry_server)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if where == "body":

            def body() -> Iterator[bytes]:
                start_response("200 OK", [("Content-Type", "text/plain")])
                raise exc
                yield b""

            return body()
        raise exc

    method = "HEAD" if where == "untraced" else "GET"
    with pytest.raises(type(exc)) as info:
        wsgi_body(TracingMiddleware(app)(_environ("/exit", method), lambda s, h, e=None: None))
    assert info.value is exc
    assert stm.flush(5)
    if error is None:
        assert stm.flush(1) and sentry_server.events() == []
        return
    assert sentry_server.wait_for(1 if where == "untraced" else 2, 5)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["type"] == error
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "wsgi", "handled": False}
    if where != "untraced":
        (tx,) = sentry_server.transactions()
        assert event["contexts"]["trace"]["span_id"] == tx["contexts"]["trace"]["span_id"]
        assert tx["contexts"]["trace"]["status"] == "internal_error"


class _UwsgiLikeServer:
    """uWSGI's file handling, in process: ``wsgi.file_wrapper`` is a function that gives
    back the object it is given, and the file is sent with sendfile() only when the app
    returns that very object; anything else is iterated. close() follows the sending."""

    def __init__(self, close_delay: float = 0.0) -> None:
        self.close_delay = close_delay
        self.wrapped: list[Any] = []
        self.sendfile = 0
        self.iterated = 0

    def file_wrapper(self, filelike: Any, blksize: int = 8192) -> Any:
        self.wrapped.append(filelike)
        return filelike

    def request(self, app: Any, path: str, method: str = "GET") -> bytes:
        environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": method}
        setup_testing_defaults(environ)
        environ["wsgi.file_wrapper"] = self.file_wrapper
        result = app(environ, lambda status, headers, exc_info=None: None)
        try:
            if self.wrapped and result is self.wrapped[-1]:
                self.sendfile += 1
                fd = result.fileno()  # what uWSGI reads of the object: its descriptor
                body = os.pread(fd, os.fstat(fd).st_size, 0)
            else:
                self.iterated += 1
                body = b"".join(result)
            time.sleep(self.close_delay)
            return body
        finally:
            if hasattr(result, "close"):
                result.close()


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_a_file_keeps_the_sendfile_path_of_a_server_whose_file_wrapper_is_a_function(
    sentry_server: SentryServer, tmp_path: Any, rate: float
) -> None:
    # uWSGI: our body wrapper around the returned file lost its sendfile() (a 20 MB file of
    # zeros read as one line: 40 MB more memory and 200 times slower).
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate, instrument_http_clients=False)
    data = b"\0" * 300_000
    (tmp_path / "f.bin").write_bytes(data)
    files: list[Any] = []

    def raw(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(len(data)))])
        files.append(open(tmp_path / "f.bin", "rb"))  # noqa: SIM115 (the server closes it)
        return environ["wsgi.file_wrapper"](files[-1], 65536)

    server = _UwsgiLikeServer(close_delay=0.3)
    app = TracingMiddleware(raw)
    assert server.request(app, "/file") == data
    assert server.request(app, "/file", method="HEAD") == data  # untraced method
    assert (server.sendfile, server.iterated) == (2, 0)
    assert all(f.closed for f in files)
    assert stm.flush(5)
    if rate:
        (tx,) = wait_transactions(sentry_server, 1)
        assert tx["contexts"]["trace"]["status"] == "ok"
        assert tx["timestamp"] - tx["start_timestamp"] >= 0.3  # ended at close()
    else:
        time.sleep(0.2)
        assert sentry_server.transactions() == []


def test_flask_send_file_keeps_the_sendfile_path_of_a_uwsgi_like_server(
    sentry_server: SentryServer, tmp_path: Any
) -> None:
    from flask import Flask, send_file

    from sentry_tracing_mw.integrations.flask import FlaskTracing

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    (tmp_path / "f.bin").write_bytes(b"x" * 100_000)
    app = Flask(__name__)

    @app.route("/download")
    def download() -> Any:
        return send_file(tmp_path / "f.bin", mimetype="application/octet-stream")

    FlaskTracing(app)
    server = _UwsgiLikeServer(close_delay=0.3)
    assert server.request(app, "/download") == b"x" * 100_000
    assert (server.sendfile, server.iterated) == (1, 0)
    assert stm.flush(5)
    (tx,) = wait_transactions(sentry_server, 1)
    assert tx["transaction"] == "/download"
    assert tx["timestamp"] - tx["start_timestamp"] >= 0.3


def test_the_sendfile_stand_in_copies_and_delegates() -> None:
    import copy
    import io

    from sentry_tracing_mw.integrations.wsgi import _SendfileFile

    stand_in = _SendfileFile(io.BytesIO(b"abc"))
    assert stand_in.read(2) == b"ab" and stand_in.tell() == 2
    assert copy.copy(stand_in).filelike is stand_in.filelike  # no endless __getattr__
    with pytest.raises(AttributeError):
        stand_in.__missing_dunder__  # noqa: B018
