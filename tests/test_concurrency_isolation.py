"""1,000 concurrent requests: every span in its own request's transaction, nothing left current.

Each request carries an id (``rid-NNNNNN``) that its handler writes into every span
description and every outgoing URL. Handlers make outgoing calls (to a recording server),
fan out with ``asyncio.gather`` and anyio task groups, run Starlette ``BackgroundTasks``,
Django ``sync_to_async`` and thread pools through ``stm.wrap_context``. Checked afterwards:

* one transaction per request, and every span in it names that request and no other;
* every span has the expected parent (so sibling tasks are siblings, and every
  ``http.client`` span's parent chain reaches its own transaction);
* the downstream server saw, for each outgoing call, the trace id of the calling request's
  transaction and the span id of that call's ``http.client`` span;
* after each request, no span is current: neither in the server's context (checked by an
  outer wrapper after the traced app returned) nor in the pool's worker threads.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw._context import CURRENT_SPAN, SUPPRESS_INSTRUMENTATION
from sentry_tracing_mw.integrations import wsgi as generic_wsgi

from .django_project import setup
from .recording_server import RecordingServer, running
from .sentry_server import SentryServer
from .servers import run_asgi, run_wsgi, wsgi_body

setup()

from asgiref.sync import sync_to_async  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402

logging.getLogger("werkzeug").setLevel(logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RID = re.compile(r"rid-\d{6}")
N = 1000
POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="isolation-pool")


class State:
    """Per-test shared state: the downstream URL, the async client, leak reports."""

    downstream = ""
    client: httpx.AsyncClient | None = None
    lock = threading.Lock()
    checked = 0
    leaks: list[str] = []

    @classmethod
    def reset(cls, downstream: str) -> None:
        cls.downstream = downstream
        cls.checked = 0
        cls.leaks = []

    @classmethod
    def after_request(cls, where: str) -> None:
        """Called once a request is completely done: nothing may be current anywhere."""
        problems = []
        if CURRENT_SPAN.get() is not None:
            problems.append(f"{where}: span left current: {CURRENT_SPAN.get()!r}")
        leaked = POOL.submit(CURRENT_SPAN.get).result(10)
        if leaked is not None:
            problems.append(f"{where}: pool thread has a current span: {leaked!r}")
        with cls.lock:
            cls.checked += 1
            cls.leaks.extend(problems)


def fetch(rid: str, kind: str) -> None:
    """A blocking outgoing call (``http.client`` via urllib)."""
    with urllib.request.urlopen(f"{State.downstream}/echo/{rid}/{kind}", timeout=30) as resp:
        resp.read()


def pool_job(rid: str, i: int) -> None:
    with stm.start_span("pool", f"pool {rid} {i}"):
        if i == 0:  # one outgoing call per fan-out keeps 1,000 requests quick
            fetch(rid, f"pool{i}")
        else:
            time.sleep(0.001)


# -- WSGI (werkzeug, threaded) --------------------------------------------------------------------


def wsgi_handler(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    rid = environ["PATH_INFO"].rsplit("/", 1)[1]
    with stm.start_span("work", f"work {rid}"):
        fetch(rid, "main")
        jobs = [POOL.submit(stm.wrap_context(pool_job), rid, i) for i in range(2)]
        for job in jobs:
            job.result(30)
    body = rid.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def wsgi_app() -> Callable[..., Any]:
    traced = generic_wsgi.TracingMiddleware(wsgi_handler)

    def outer(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        result = traced(environ, start_response)
        body = wsgi_body(result)
        State.after_request("wsgi")
        return [body]

    return outer


WSGI_SHAPE = {  # span key -> parent key ("" = the transaction)
    "work": "",
    "http main": "work",
    "pool 0": "work",
    "pool 1": "work",
    "http pool0": "pool 0",
}


# -- ASGI (Starlette on uvicorn) ---------------------------------------------------------------------


async def async_fetch(rid: str, kind: str) -> None:
    assert State.client is not None
    resp = await State.client.get(f"{State.downstream}/echo/{rid}/{kind}")
    assert resp.status_code == 200


async def gathered(rid: str, i: int) -> None:
    with stm.start_span("gather", f"gather {rid} {i}"):
        await asyncio.sleep(0)
        if i == 0:
            await async_fetch(rid, f"gather{i}")
        else:
            await asyncio.sleep(0.001)


async def group_job(rid: str, i: int) -> None:
    with stm.start_span("group", f"group {rid} {i}"):
        await anyio.sleep(0.001)


async def background_job(rid: str) -> None:
    with stm.start_span("bg", f"bg {rid}"):
        await async_fetch(rid, "bg")


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTasks
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    async def endpoint(request: Request) -> PlainTextResponse:
        rid = request.path_params["rid"]
        with stm.start_span("work", f"work {rid}"):
            await asyncio.gather(gathered(rid, 0), gathered(rid, 1))
            async with anyio.create_task_group() as tg:
                tg.start_soon(group_job, rid, 0)
                tg.start_soon(group_job, rid, 1)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(POOL, stm.wrap_context(pool_job), rid, 0)
        tasks = BackgroundTasks()
        tasks.add_task(background_job, rid)
        return PlainTextResponse(rid, background=tasks)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        State.client = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50))
        try:
            yield
        finally:
            await State.client.aclose()
            State.client = None

    app = Starlette(routes=[Route("/req/{rid}", endpoint)], lifespan=lifespan)
    app.add_middleware(TracingMiddleware)

    async def outer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http":
            State.after_request("asgi")

    return outer


STARLETTE_SHAPE = {
    "work": "",
    "gather 0": "work",
    "gather 1": "work",
    "http gather0": "gather 0",
    "group 0": "work",
    "group 1": "work",
    "pool 0": "work",
    "http pool0": "pool 0",
    "function background_job": "",  # the BackgroundTask span
    "bg": "function background_job",
    "http bg": "bg",
}


# -- Django (ASGI) with sync_to_async ---------------------------------------------------------------


def django_sync(rid: str, i: int) -> None:
    with stm.start_span("s2a", f"s2a {rid} {i}"):
        fetch(rid, f"s2a{i}")


async def django_view(request: HttpRequest, rid: str) -> HttpResponse:
    with stm.start_span("work", f"work {rid}"):
        await sync_to_async(django_sync)(rid, 0)
        await sync_to_async(django_sync, thread_sensitive=False)(rid, 1)
        await asyncio.gather(gathered(rid, 0), gathered(rid, 1))
    return HttpResponse(rid)


urlpatterns = [path("req/<str:rid>", django_view)]  # used through ROOT_URLCONF=__name__

DJANGO_SHAPE = {
    "work": "",
    "s2a 0": "work",
    "s2a 1": "work",
    "http s2a0": "s2a 0",
    "http s2a1": "s2a 1",
    "gather 0": "work",
    "gather 1": "work",
    "http gather0": "gather 0",
}


def django_app() -> Any:
    from django.core.asgi import get_asgi_application

    app = get_asgi_application()

    async def outer(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                if message["type"] == "lifespan.startup":
                    State.client = httpx.AsyncClient(
                        timeout=30, limits=httpx.Limits(max_connections=50)
                    )
                    await send({"type": "lifespan.startup.complete"})
                message = await receive()
            if State.client is not None:
                await State.client.aclose()
                State.client = None
            await send({"type": "lifespan.shutdown.complete"})
            return
        await app(scope, receive, send)
        State.after_request("django")

    return outer


# -- driving and checking -------------------------------------------------------------------------


def hammer(base: str, n: int, connections: int = 16) -> None:
    """``n`` requests at once (at most ``connections`` in flight); every answer is its rid."""

    async def go() -> list[tuple[str, int, str]]:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            # At most ``connections`` requests wait on the pool at once: httpcore's pool scans
            # every queued request on every change, so 1,000 queued ones cost O(n^2) CPU.
            gate = asyncio.Semaphore(connections)

            async def one(i: int) -> tuple[str, int, str]:
                rid = f"rid-{i:06d}"
                async with gate:
                    resp = await client.get(f"/req/{rid}")
                return rid, resp.status_code, resp.text

            return await asyncio.gather(*(one(i) for i in range(n)))

    token = SUPPRESS_INSTRUMENTATION.set(True)  # the load generator is not traced
    try:
        results = asyncio.run(go())
    finally:
        SUPPRESS_INSTRUMENTATION.reset(token)
    bad = [r for r in results if r[1] != 200 or r[2] != r[0]]
    assert bad == [], bad[:5]


def span_key(span: dict[str, Any], rid: str) -> str:
    desc = span.get("description") or ""
    if span["op"] == "http.client":
        match = re.search(r"/echo/(rid-\d{6})/(\w+)", desc)
        assert match and match.group(1) == rid, (rid, desc)
        return f"http {match.group(2)}"
    found = set(RID.findall(desc))
    if not found:
        return f"{span['op']} {desc}"
    assert found == {rid}, (rid, desc)
    return RID.sub("", desc).replace("  ", " ").strip()


def wait_all(server: SentryServer, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        stm.flush(10)
        txs = [t for t in server.transactions() if RID.search(t.get("request", {}).get("url", ""))]
        if len(txs) >= n or time.monotonic() > deadline:
            return txs
        time.sleep(0.2)


def verify(server: SentryServer, recorder: RecordingServer, n: int, shape: dict[str, str]) -> None:
    txs = wait_all(server, n)
    assert server.client_reports() == {}  # nothing dropped (queue, errors)
    assert len(txs) == n
    by_rid: dict[str, tuple[dict[str, Any], dict[str, dict[str, Any]]]] = {}
    for tx in txs:
        rids = set(RID.findall(tx["request"]["url"]))
        assert len(rids) == 1, tx["request"]["url"]
        (rid,) = rids
        assert rid not in by_rid, f"two transactions for {rid}"
        trace = tx["contexts"]["trace"]
        spans: dict[str, dict[str, Any]] = {}
        for span in tx["spans"]:
            key = span_key(span, rid)  # fails on a span of another request
            assert key not in spans, (rid, key)
            assert span["trace_id"] == trace["trace_id"]
            spans[key] = span
        assert set(spans) == set(shape), (rid, sorted(spans))
        for key, parent in shape.items():
            want = trace["span_id"] if parent == "" else spans[parent]["span_id"]
            assert spans[key]["parent_span_id"] == want, (rid, key, parent)
        by_rid[rid] = (trace, spans)
    assert len({t["trace_id"] for t, _ in by_rid.values()}) == n  # n distinct traces

    calls = [k.split(" ", 1)[1] for k in shape if k.startswith("http ")]
    seen: dict[tuple[str, str], str] = {}
    for rec in recorder.received("/echo/"):
        _, _, rid, kind = rec.path.split("/")
        header = rec.header("sentry-trace")
        assert header is not None, rec.path
        assert (rid, kind) not in seen, f"{rec.path} called twice"
        seen[(rid, kind)] = header
        trace, spans = by_rid[rid]
        assert header == f"{trace['trace_id']}-{spans['http ' + kind]['span_id']}-1", rec.path
        baggage = rec.header("baggage") or ""
        assert f"sentry-trace_id={trace['trace_id']}" in baggage
    assert len(seen) == n * len(calls)

    assert State.leaks == []
    assert State.checked == n


@pytest.fixture
def downstream(sentry_server: SentryServer) -> Iterator[RecordingServer]:
    # Every envelope is validated at the sentry_server fixture's teardown (sentry-relay's
    # normalizer in-process, the shared validator in one batched run).
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with running() as recorder:
        State.reset(recorder.url)
        yield recorder


def test_threaded_wsgi(sentry_server: SentryServer, downstream: RecordingServer) -> None:
    with run_wsgi(wsgi_app()) as base:
        hammer(base, N)
    verify(sentry_server, downstream, N, WSGI_SHAPE)


def test_uvicorn_starlette(sentry_server: SentryServer, downstream: RecordingServer) -> None:
    with run_asgi(starlette_app()) as base:
        hammer(base, N)
    verify(sentry_server, downstream, N, STARLETTE_SHAPE)


def test_uvicorn_django_sync_to_async(
    sentry_server: SentryServer, downstream: RecordingServer
) -> None:
    from django.test import override_settings

    with override_settings(ROOT_URLCONF=__name__), run_asgi(django_app()) as base:
        hammer(base, 300)
    verify(sentry_server, downstream, 300, DJANGO_SHAPE)
