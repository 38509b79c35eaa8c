"""Django through real servers on 127.0.0.1: werkzeug (WSGI handler) and uvicorn (ASGI)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from .django_project import create_tables, setup

setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

import sentry_tracing_mw as stm  # noqa: E402
from sentry_tracing_mw.integrations import asgi as generic_asgi  # noqa: E402
from sentry_tracing_mw.integrations import wsgi as generic_wsgi  # noqa: E402

from .sdk_peer import run_sdk_script  # noqa: E402
from .sentry_server import SentryServer, init_traced  # noqa: E402
from .servers import pipelined, run_asgi, run_wsgi  # noqa: E402

TRACE_ID = "771a43a4192642f0b136d5159a501700"
PARENT_ID = "b7ad6b7169203331"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _tables() -> None:
    create_tables()


pytestmark = pytest.mark.usefixtures("no_outgoing_headers")  # the test thread's own calls


def _wait(server: SentryServer, n: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        stm.flush(1)
        if len(server.accepted()) >= n:
            break
        time.sleep(0.02)
    assert server.wait_for(n, 1)


def _trace(tx: dict[str, Any]) -> dict[str, Any]:
    return tx["contexts"]["trace"]  # type: ignore[no-any-return]


def _duration(tx: dict[str, Any]) -> float:
    return float(tx["timestamp"]) - float(tx["start_timestamp"])


def _by_name(server: SentryServer) -> dict[str, dict[str, Any]]:
    return {t["transaction"]: t for t in server.transactions()}


def test_wsgi_server(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    with run_wsgi(get_wsgi_application()) as base:
        r = requests.get(
            f"{base}/users/3/", timeout=5, headers={"sentry-trace": f"{TRACE_ID}-{PARENT_ID}-1"}
        )
        assert r.status_code == 200
        r = requests.get(f"{base}/stream/", timeout=5)
        assert r.text == "chunk0\nchunk1\nchunk2\n"
        r = requests.get(f"{base}/file/", timeout=5)
        assert r.content == b"x" * 30
        assert requests.get(f"{base}/error/", timeout=5).status_code == 500
        assert requests.get(f"{base}/orm/", timeout=5).status_code == 200
        assert requests.get(f"{base}/nowhere/", timeout=5).status_code == 404
        _wait(sentry_server, 7)
    txs = _by_name(sentry_server)
    assert set(txs) == {"/users/{pk}/", "/stream/", "/file/", "/error/", "/orm/", "GET 404"}
    assert _trace(txs["/users/{pk}/"])["trace_id"] == TRACE_ID
    assert _trace(txs["/users/{pk}/"])["parent_span_id"] == PARENT_ID
    assert _duration(txs["/stream/"]) >= 0.3
    assert _duration(txs["/file/"]) >= 0.3
    assert _trace(txs["/error/"])["status"] == "internal_error"
    assert any(s["op"] == "db" for s in txs["/orm/"]["spans"])
    assert txs["/users/{pk}/"]["request"]["url"].startswith("http://127.0.0.1:")
    (event,) = sentry_server.events()
    assert event["contexts"]["trace"]["span_id"] == _trace(txs["/error/"])["span_id"]
    assert all(_trace(t)["origin"] == "auto.http.django" for t in txs.values())


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous")
def test_asgi_server(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    with run_asgi(get_asgi_application()) as base:
        r = requests.get(
            f"{base}/async/3/", timeout=5, headers={"sentry-trace": f"{TRACE_ID}-{PARENT_ID}-1"}
        )
        assert r.status_code == 200
        assert requests.get(f"{base}/aorm/", timeout=5).status_code == 200
        assert requests.get(f"{base}/astream/", timeout=5).text == "chunk0\nchunk1\nchunk2\n"
        assert requests.get(f"{base}/stream/", timeout=5).text == "chunk0\nchunk1\nchunk2\n"
        assert requests.get(f"{base}/aerror/", timeout=5).status_code == 500
        assert requests.get(f"{base}/users/1/", timeout=5).status_code == 200
        _wait(sentry_server, 7)
    txs = _by_name(sentry_server)
    assert set(txs) == {
        "/async/{pk}/",
        "/aorm/",
        "/astream/",
        "/stream/",
        "/aerror/",
        "/users/{pk}/",
    }
    assert _trace(txs["/async/{pk}/"])["trace_id"] == TRACE_ID
    db = [s for s in txs["/aorm/"]["spans"] if s["op"] == "db"]
    assert db and all(s["parent_span_id"] == _trace(txs["/aorm/"])["span_id"] for s in db)
    assert _duration(txs["/astream/"]) >= 0.3
    assert _duration(txs["/stream/"]) >= 0.3
    assert _trace(txs["/aerror/"])["status"] == "internal_error"
    (event,) = sentry_server.events()
    assert event["exception"]["values"][0]["type"] == "KeyError"
    assert event["contexts"]["trace"]["span_id"] == _trace(txs["/aerror/"])["span_id"]
    assert all(t["request"]["url"].startswith("http://127.0.0.1:") for t in txs.values())


@pytest.mark.parametrize("outer", [False, True])
def test_asgi_pipelined_requests_each_get_their_own_transaction(
    sentry_server: SentryServer, outer: bool
) -> None:
    # uvicorn starts a buffered request inside the previous response's last send, so its
    # task starts with a copy of that request's context
    init_traced(sentry_server)
    app = get_asgi_application()
    if outer:
        app = generic_asgi.TracingMiddleware(app)
    paths = ["/astream/", "/users/1/", "/stream/", "/async/2/", "/users/3/"]
    with run_asgi(app) as base:
        responses = pipelined(base, [("GET", p) for p in paths])
        assert [r.status for r in responses] == [200] * 5
        _wait(sentry_server, 5)
    txs = sentry_server.transactions()
    assert sorted(t["transaction"] for t in txs) == sorted(
        ["/astream/", "/users/{pk}/", "/stream/", "/async/{pk}/", "/users/{pk}/"]
    )
    assert len({_trace(t)["trace_id"] for t in txs}) == 5


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_asgi_error_inside_a_streamed_body_ends_the_transaction(
    sentry_server: SentryServer, rate: float
) -> None:
    # Django's ASGI handler re-raises an error from the body and never calls
    # response.close(): the body wrapper itself must end the transaction.
    init_traced(sentry_server, traces_sample_rate=rate)
    with run_asgi(get_asgi_application()) as base:
        for path in ("/stream-error/", "/astream-error/"):
            with pytest.raises(requests.RequestException):
                _ = requests.get(f"{base}{path}", timeout=5).content
        deadline = time.monotonic() + 5
        want = 2 if rate == 0.0 else 4
        while len(sentry_server.events()) + len(sentry_server.transactions()) < want:
            assert time.monotonic() < deadline, "the error events and transactions never came"
            stm.flush(1)
            time.sleep(0.02)
    events = sentry_server.events()
    assert len(events) == 2
    if rate == 0.0:
        assert stm.flush(5)
        assert sentry_server.transactions() == []
        reports = sentry_server.client_reports()
        assert reports[("sample_rate", "transaction")] == 2  # both finished, and counted
        return
    txs = _by_name(sentry_server)
    assert set(txs) == {"/stream-error/", "/astream-error/"}
    for tx in txs.values():
        assert _trace(tx)["status"] == "internal_error"
    linked = {e["contexts"]["trace"]["span_id"] for e in events}
    assert linked == {_trace(tx)["span_id"] for tx in txs.values()}


def test_asgi_client_disconnect_mid_stream_is_cancelled(sentry_server: SentryServer) -> None:
    init_traced(sentry_server)
    with run_asgi(get_asgi_application()) as base:
        host, port = urlsplit(base).hostname, urlsplit(base).port
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET /astream/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200" in sock.recv(4096)
        _wait(sentry_server, 1)
    (tx,) = sentry_server.transactions()
    # (Django 4.2's ASGI handler never reads the connection while streaming: it produces
    # and "sends" the whole body; the disconnect is seen by our reading it.)
    assert _trace(tx)["status"] == "cancelled"


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous")
def test_asgi_client_leaving_a_sync_streamed_body_is_cancelled(
    sentry_server: SentryServer,
) -> None:
    # Django reads a synchronous body whole (in a thread) before sending it: our body
    # wrapper sees it end normally, and the disconnect cancels Django's sending instead.
    init_traced(sentry_server)
    with run_asgi(get_asgi_application()) as base:
        host, port = urlsplit(base).hostname, urlsplit(base).port
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GET /stream/ HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.1)  # the body (0.3 s) is being produced: leave
        _wait(sentry_server, 1)
    (tx,) = sentry_server.transactions()
    assert tx["transaction"] == "/stream/"
    assert _trace(tx)["status"] == "cancelled"


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_asgi_response_the_server_refuses_to_send_is_an_error(
    sentry_server: SentryServer, rate: float
) -> None:
    # Sending raises (a body on a 204): Django's handler then skips the response's
    # close(), so the transaction ended nowhere and its error was never reported.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate)
    with run_asgi(get_asgi_application()) as base:
        with contextlib.suppress(requests.RequestException):  # (the 204 head may arrive)
            requests.get(base + "/body-on-204/", timeout=5)
        assert requests.get(base + "/health/", timeout=5).status_code == 200  # still serving
        _wait(sentry_server, 2 if rate else 1)
    (event,) = sentry_server.events()
    assert event["exception"]["values"][-1]["mechanism"] == {"type": "django", "handled": False}
    assert event["transaction"] == "/body-on-204/"
    assert event["request"]["url"].endswith("/body-on-204/")  # sampled or not
    if rate:
        txs = _by_name(sentry_server)
        assert _trace(txs["/body-on-204/"])["status"] == "internal_error"
        assert _trace(txs["/body-on-204/"])["trace_id"] == event["contexts"]["trace"]["trace_id"]
        assert _trace(txs["/health/"])["status"] == "ok"


@pytest.mark.parametrize("rate", [1.0, 0.0])
def test_asgi_cache_middleware_before_ours_caches_the_response(
    sentry_server: SentryServer, rate: float
) -> None:
    # Under ASGI ours also keeps its state on the response (for send_response): pickled by
    # UpdateCacheMiddleware (placed first, as Django's docs say), it must pickle to nothing.
    from django.conf import settings
    from django.test import override_settings

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=rate)
    middleware = [
        "django.middleware.cache.UpdateCacheMiddleware",
        *settings.MIDDLEWARE,
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]
    with override_settings(MIDDLEWARE=middleware, CACHE_MIDDLEWARE_SECONDS=30):
        with run_asgi(get_asgi_application()) as base:
            statuses = [requests.get(base + "/cbv/5/", timeout=5).status_code for _ in "ab"]
            if rate:
                _wait(sentry_server, 2)
    assert statuses == [200, 200]
    assert sentry_server.events() == []


def test_wsgi_file_download_cut_short_is_cancelled(sentry_server: SentryServer) -> None:
    """A FileResponse (no body wrapper: the server may send its file itself) tells how far
    it was read: a client gone mid-file is ``cancelled``, a whole download ``ok``."""
    init_traced(sentry_server)
    with run_wsgi(get_wsgi_application()) as base:
        host, port = urlsplit(base).hostname, urlsplit(base).port
        sock = socket.create_connection((host, port), timeout=5)
        try:
            sock.sendall(b"GET /big-file/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200" in sock.recv(4096)
        finally:  # reset: the server's next write fails
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        _wait(sentry_server, 1)
        (cut,) = sentry_server.transactions()
        sentry_server.clear()
        whole = requests.get(f"{base}/big-file/", timeout=20)
        assert len(whole.content) == 16 << 20
        _wait(sentry_server, 1)
        (full,) = sentry_server.transactions()
    assert _trace(cut)["status"] == "cancelled"
    assert _trace(full)["status"] == "ok"


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_nested_generic_middleware_owns_one_transaction(
    sentry_server: SentryServer, kind: str
) -> None:
    init_traced(sentry_server)
    if kind == "wsgi":
        server = run_wsgi(generic_wsgi.TracingMiddleware(get_wsgi_application()))
    else:
        server = run_asgi(generic_asgi.TracingMiddleware(get_asgi_application()))
    with server as base:
        assert requests.get(f"{base}/users/9/", timeout=5).status_code == 200
        assert requests.get(f"{base}/error/", timeout=5).status_code == 500
        _wait(sentry_server, 3)
        time.sleep(0.2)
        stm.flush(2)
    txs = sentry_server.transactions()
    assert sorted(t["transaction"] for t in txs) == ["/error/", "/users/{pk}/"]
    assert {_trace(t)["origin"] for t in txs} == {f"auto.http.{kind}"}
    assert all(t["transaction_info"]["source"] == "route" for t in txs)
    (event,) = sentry_server.events()
    error_tx = next(t for t in txs if t["transaction"] == "/error/")
    assert event["contexts"]["trace"]["span_id"] == _trace(error_tx)["span_id"]


# -- interop: a sentry-sdk instrumented client calls us ----------------------------------

_CLIENT_SCRIPT = r"""
import json, sys
import requests
import sentry_sdk

sentry_sdk.init(dsn="http://theirkey@127.0.0.1:9/42", transport=Capture,
                traces_sample_rate=float(sys.argv[2]), release="client@1")
with sentry_sdk.start_transaction(name="client-job", op="task") as tx:
    r = requests.get(sys.argv[1], timeout=5)
spans = [s for t in transactions for s in t.get("spans", [])]
http = [s["span_id"] for s in spans if s.get("op") == "http.client"]
print(json.dumps({"trace_id": tx.trace_id, "sampled": tx.sampled, "http_span": http,
                  "sentry_trace": r.headers.get("X-Sentry-Trace")}))
"""


@pytest.mark.parametrize("rate", ["1.0", "0"])
def test_sentry_sdk_client_interop(sentry_server: SentryServer, rate: str) -> None:
    init_traced(sentry_server, traces_sample_rate=0.5)
    with run_wsgi(get_wsgi_application()) as base:
        info = run_sdk_script(_CLIENT_SCRIPT, f"{base}/trace-header/", rate)
        stm.flush(5)
    ours_trace_id, our_span_id, flag = info["sentry_trace"].split("-")
    assert ours_trace_id == info["trace_id"]
    if rate == "0":
        assert info["sampled"] is False and flag == "0"
        time.sleep(0.2)
        assert stm.flush(5)
        assert sentry_server.transactions() == []
        return
    assert flag == "1"
    _wait(sentry_server, 1)
    (tx,) = sentry_server.transactions()
    assert _trace(tx)["trace_id"] == info["trace_id"]
    assert [_trace(tx)["parent_span_id"]] == info["http_span"]  # sentry-sdk's http.client span
    assert _trace(tx)["span_id"] == our_span_id
    dsc = sentry_server.envelopes()[0].headers["trace"]
    assert dsc["public_key"] == "theirkey"
    assert dsc["release"] == "client@1"
    assert dsc["trace_id"] == info["trace_id"]


DJANGO_ASGI_SHUTDOWN_SCRIPT = """
import sys
import uvicorn
from tests.django_project import setup
setup()
import sentry_tracing_mw as stm
stm.init(dsn=sys.argv[1], traces_sample_rate=1.0, shutdown_timeout=10,
         instrument_http_clients=False)
from django.core.asgi import get_asgi_application
uvicorn.run(get_asgi_application(), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")  # lifespan "auto", as uvicorn runs Django by default
"""


def test_asgi_shutdown_under_uvicorn_flushes_queued_transactions(
    sentry_server: SentryServer,
) -> None:
    """Django's ASGI handler has no lifespan of its own and uvicorn re-raises SIGTERM after
    its graceful shutdown (no atexit): the lifespan shutdown we answer flushes the queue."""
    import os

    from .servers import sigterm_with_queued_transactions

    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    names = sigterm_with_queued_transactions(
        sentry_server,
        DJANGO_ASGI_SHUTDOWN_SCRIPT,
        ("/users/1/", "/users/2/", "/articles/2020/"),
        env,
    )
    assert names == ["/articles/{year}/", "/users/{pk}/", "/users/{pk}/"]


DJANGO_GRACEFUL_TIMEOUT_SCRIPT = """
import sys
import uvicorn
from tests.django_project import setup
setup()
import sentry_tracing_mw as stm
stm.init(dsn=sys.argv[1], traces_sample_rate=1.0, shutdown_timeout=5,
         instrument_http_clients=False)
from django.core.asgi import get_asgi_application
uvicorn.run(get_asgi_application(), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="critical", timeout_graceful_shutdown=1)
"""


def test_asgi_request_the_server_cancels_at_shutdown_is_sent_cancelled(
    sentry_server: SentryServer,
) -> None:
    """uvicorn cancels the requests still running when its graceful-shutdown timeout
    expires. Django 5+ serves a request in a task of its own and closes the response (our
    end of the transaction) in the call the server cancels: the transaction is ended
    ``cancelled`` there and flushed with the lifespan shutdown, without waiting for the
    body Django goes on streaming, nor for a synchronous view's thread."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from .servers import free_port, wait_listening

    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", DJANGO_GRACEFUL_TIMEOUT_SCRIPT, sentry_server.dsn, str(port)],
        cwd=root,
        env=env,
    )
    streaming = threading.Event()

    def read() -> None:
        try:
            with requests.get(
                f"http://127.0.0.1:{port}/astream-long/", stream=True, timeout=20
            ) as response:
                for _ in response.iter_content(8):
                    streaming.set()
        except requests.RequestException:
            pass

    def wait_slow() -> None:
        try:
            requests.get(f"http://127.0.0.1:{port}/sync-slow/", timeout=20)
        except requests.RequestException:
            pass

    reader = threading.Thread(target=read)
    slow = threading.Thread(target=wait_slow)
    try:
        wait_listening(port, proc)
        reader.start()
        slow.start()
        assert streaming.wait(10)
        time.sleep(0.2)  # the synchronous view is sleeping in its thread
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for thread in (reader, slow):
            if thread.is_alive():
                thread.join(20)
    statuses = {t["transaction"]: _trace(t)["status"] for t in sentry_server.transactions()}
    assert statuses == {"/astream-long/": "cancelled", "/sync-slow/": "cancelled"}
    # Django goes on with the view in its thread and then sends the response, which the
    # server refuses: no error of the app's.
    assert sentry_server.events() == []
    assert took < 3.5, took  # 1 s of grace, not the 5 s body nor the 5 s shutdown_timeout


def test_asgi_cancelled_under_an_outer_middleware_is_its_to_end(
    sentry_server: SentryServer,
) -> None:
    """A middleware between the generic ASGI middleware and Django cancels Django (a
    timeout) and answers 504 itself: the request goes on, so the outer transaction is not
    ended at Django's cancellation; it ends with the 504 (``deadline_exceeded``)."""
    import asyncio

    from .asgi_apps import http_scope

    init_traced(sentry_server)
    django_app = get_asgi_application()

    async def timeout_middleware(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.wait_for(django_app(scope, receive, send), 0.2)
        except asyncio.TimeoutError:
            await send({"type": "http.response.start", "status": 504, "headers": []})
            await send({"type": "http.response.body", "body": b"timeout"})

    app = generic_asgi.TracingMiddleware(timeout_middleware)
    sent: list[dict[str, Any]] = []
    body = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict[str, Any]:
        if body:
            return body.pop()
        await asyncio.sleep(5)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(http_scope("/async-slow/", b"testserver"), receive, send))
    assert [m.get("status") for m in sent if m["type"] == "http.response.start"] == [504]
    _wait(sentry_server, 1)
    (tx,) = sentry_server.transactions()
    assert _trace(tx)["status"] == "deadline_exceeded"
    assert tx["tags"]["http.status_code"] == "504"


def test_lifespan_under_an_outer_generic_middleware_flushes_once(
    sentry_server: SentryServer,
) -> None:
    """Django's answered lifespan flushes; the generic ASGI middleware around it sees that
    and does not wait for a hanging Sentry a second time."""
    import asyncio

    init_traced(sentry_server, shutdown_timeout=1.0)
    app = generic_asgi.TracingMiddleware(get_asgi_application())
    with stm.start_transaction("first", op="task"):
        pass
    assert stm.flush(5)
    sentry_server.hang()
    with stm.start_transaction("stuck", op="task"):
        pass
    assert sentry_server.wait_hanging(5)
    with stm.start_transaction("queued", op="task"):
        pass
    sent: list[dict[str, Any]] = []

    async def lifespan() -> float:
        messages = asyncio.Queue[dict[str, Any]]()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            messages.put_nowait({"type": kind})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        started = time.monotonic()
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, messages.get, send)
        return time.monotonic() - started

    try:
        elapsed = asyncio.run(lifespan())
    finally:
        sentry_server.release()
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert 0.9 < elapsed < 1.8, elapsed  # one shutdown_timeout, not two
