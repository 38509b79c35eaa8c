"""Sampling abuse through real servers: forced-sampling floods and untrusted trace headers.

Anyone on the internet can send ``sentry-trace: <trace>-<span>-1``. With
``max_inherited_sampled_per_second`` the transactions such requests make Sentry receive stay
within a token-bucket budget, the dropped decisions are client-reported (``sample_rate``),
and a transaction that is sent keeps the upstream DSC exactly as received (protocol §12.3).
With ``trust_incoming_traces`` limited to networks, a request from any other *connection
peer* starts a fresh trace; ``X-Forwarded-For`` and friends never make a peer trusted.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any
from urllib.parse import unquote

import pytest
import requests

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations import asgi as generic_asgi
from sentry_tracing_mw.integrations import wsgi as generic_wsgi

from .sentry_server import SentryServer
from .servers import answer_lifespan, run_asgi, run_wsgi

logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

UPSTREAM_PARENT = "b7ad6b7169203331"
BODY = b"hello from the app"

# -- apps under test ---------------------------------------------------------------------------


def _wsgi_plain(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


async def _asgi_plain(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def _flask_app() -> Any:
    from flask import Flask

    from sentry_tracing_mw.integrations.flask import FlaskTracing

    app = Flask("abuse")

    @app.route("/hit/<int:n>")
    def hit(n: int) -> bytes:
        return BODY

    FlaskTracing(app)
    return app


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    async def hit(request: Request) -> Response:
        return Response(BODY, media_type="text/plain")

    app = Starlette(routes=[Route("/hit/{n:int}", hit)])
    app.add_middleware(TracingMiddleware)
    return app


def _django_app() -> Any:
    from .django_project import setup

    setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


@contextmanager
def serve(kind: str) -> Iterator[str]:
    """Serve the ``kind`` app through a real server; yields the URL of a path answering BODY.

    uvicorn runs with ``proxy_headers=False``: with its default (forwarded headers honoured
    from loopback peers) the *server* rewrites the peer address from ``X-Forwarded-For``.
    """
    server: AbstractContextManager[str]
    if kind == "wsgi":
        server, path = run_wsgi(generic_wsgi.TracingMiddleware(_wsgi_plain)), "/hit/1"
    elif kind == "asgi":
        app = generic_asgi.TracingMiddleware(_asgi_plain)
        server, path = run_asgi(app, proxy_headers=False), "/hit/1"
    elif kind == "flask":
        server, path = run_wsgi(_flask_app()), "/hit/1"
    elif kind == "starlette":
        server, path = run_asgi(_starlette_app(), proxy_headers=False), "/hit/1"
    elif kind == "django":
        server, path = run_wsgi(_django_app()), "/health/"
    else:  # pragma: no cover
        raise AssertionError(kind)
    with server as base:
        yield base + path


def expected_body(url: str) -> bytes:
    """What the app behind ``url`` answers (the Django project's health view says "ok")."""
    return b"ok" if url.endswith("/health/") else BODY


def incoming(trace_id: str, flag: str = "1") -> tuple[dict[str, str], dict[str, str]]:
    """Forced-sampling headers from an "upstream" and the DSC their baggage carries."""
    dsc = {
        "trace_id": trace_id,
        "public_key": "upstreamkey",
        "sample_rate": "1.0",
        "sample_rand": "0.250000",
        "sampled": "true" if flag == "1" else "false",
        "environment": "upstream-env",
        "release": "upstream@1.2.3",
        "transaction": "UpstreamCheckout",
    }
    baggage = ",".join(f"sentry-{k}={v}" for k, v in dsc.items())
    return {"sentry-trace": f"{trace_id}-{UPSTREAM_PARENT}-{flag}", "baggage": baggage}, dsc


def init(server: SentryServer, **options: Any) -> None:
    options.setdefault("traces_sample_rate", 1.0)
    stm.init(dsn=server.dsn, instrument_http_clients=False, **options)


def envelopes_by_trace(server: SentryServer) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """trace id -> (envelope ``trace`` header, transaction payload) over accepted envelopes."""
    found: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for env in server.envelopes():
        for item in env.items_of("transaction"):
            tx = item.json()
            trace_id = tx["contexts"]["trace"]["trace_id"]
            assert trace_id not in found, "a trace was sent twice"
            found[trace_id] = (env.headers.get("trace") or {}, tx)
    return found


def flush_reports(server: SentryServer, key: tuple[str, str], want: int) -> int:
    """Flush until the merged client-report count for ``key`` reaches ``want`` (or 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        assert stm.flush(5)
        got = server.client_reports().get(key, 0)
        if got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


# -- the flood -----------------------------------------------------------------------------------


class Flood:
    """``threads`` keep-alive clients sending forced-sampled requests until ``seconds`` pass."""

    def __init__(self, url: str, seconds: float, threads: int = 4) -> None:
        self.url = url
        self.seconds = seconds
        self.threads = threads
        self.sent: dict[str, dict[str, str]] = {}  # trace id -> DSC its baggage carried
        self.bad: list[str] = []
        self.lock = threading.Lock()

    def _worker(self, deadline: float) -> None:
        body = expected_body(self.url)
        with requests.Session() as session:
            while time.monotonic() < deadline:
                trace_id = uuid.uuid4().hex
                headers, dsc = incoming(trace_id)
                try:
                    resp = session.get(self.url, headers=headers, timeout=10)
                    ok = resp.status_code == 200 and resp.content == body
                    problem = "" if ok else f"{resp.status_code} {resp.content[:80]!r}"
                except requests.RequestException as exc:
                    problem = repr(exc)
                with self.lock:
                    if problem:
                        self.bad.append(problem)
                    else:
                        self.sent[trace_id] = dsc

    def run(self) -> float:
        """Run the flood; returns its duration in seconds."""
        started = time.monotonic()
        deadline = started + self.seconds
        workers = [
            threading.Thread(target=self._worker, args=(deadline,)) for _ in range(self.threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(self.seconds + 30)
        return time.monotonic() - started


def max_in_window(stamps: list[float], width: float) -> int:
    """The largest number of ``stamps`` inside any half-open window ``[t, t + width)``."""
    stamps = sorted(stamps)
    best = lo = 0
    for hi, stamp in enumerate(stamps):
        while stamps[lo] <= stamp - width:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


CAP = 15.0  # tokens per second; the bucket holds one second's worth (burst = CAP)


@pytest.mark.parametrize(
    ("kind", "seconds"),
    [("wsgi", 4.0), ("asgi", 4.0), ("flask", 2.0), ("starlette", 2.0), ("django", 2.0)],
)
def test_forced_sampling_flood_stays_within_budget(
    sentry_server: SentryServer, kind: str, seconds: float
) -> None:
    init(sentry_server, max_inherited_sampled_per_second=CAP)
    with serve(kind) as url:
        requests.get(url, timeout=5)  # warm-up (no trace headers: our own decision, sent)
        # ASGI servers answer before the transaction finishes: wait for it to arrive.
        assert sentry_server.wait_for(1, 5) or (stm.flush(5) and sentry_server.wait_for(1, 5))
        sentry_server.clear()
        flood = Flood(url, seconds)
        elapsed = flood.run()
    produced = len(flood.sent)
    assert flood.bad == []
    assert produced > 4 * CAP * seconds, f"flood too slow to test the cap: {produced} requests"

    # Wait until every request is accounted for: sent, or reported as dropped.
    key = ("sample_rate", "transaction")
    deadline = time.monotonic() + 10
    while True:
        assert stm.flush(10)
        got = envelopes_by_trace(sentry_server)
        sent = len(got)
        dropped = sentry_server.client_reports().get(key, 0)
        if sent + dropped >= produced or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sent + dropped == produced
    # Every transaction Sentry received belongs to the flood, continues its trace and keeps the
    # upstream DSC exactly as received (frozen; protocol §12.3).
    for trace_id, (header, tx) in got.items():
        assert header == flood.sent[trace_id], trace_id
        trace = tx["contexts"]["trace"]
        assert trace["parent_span_id"] == UPSTREAM_PARENT
        assert tx.get("release") != "upstream@1.2.3"  # the event itself describes this service
    # The budget: at most CAP per second plus one burst of CAP, in every window. (A window
    # right after a stall of the flood may hold a refilled burst, so "CAP per second after
    # the first second" would only hold on a machine that never pauses the flood.)
    starts = [tx["start_timestamp"] for _, tx in got.values()]
    assert sent <= CAP * elapsed + CAP + 1, (sent, elapsed)
    for width in (1.0, 2.0, 4.0):
        # (+3: a transaction's start timestamp is taken just after the bucket's decision,
        # and a busy machine can delay a few threads between the two)
        assert max_in_window(starts, width) <= CAP * width + CAP + 3, width
    # ... and the cap admits about what it allows (not a blanket "drop everything").
    assert sent >= CAP * seconds * 0.6, (sent, seconds)

    # Every dropped decision is client-reported as sample_rate (transaction and its span).
    reports = sentry_server.client_reports()
    assert reports.get(("sample_rate", "span"), 0) == dropped
    assert set(reports) <= {("sample_rate", "transaction"), ("sample_rate", "span")}


def test_our_own_head_decisions_are_not_capped(sentry_server: SentryServer) -> None:
    init(sentry_server, max_inherited_sampled_per_second=1)
    with serve("wsgi") as url, requests.Session() as session:
        for _ in range(30):
            assert session.get(url, timeout=5).content == BODY
    assert stm.flush(5)
    assert sentry_server.wait_for(1, 5)
    assert len(sentry_server.transactions()) == 30
    assert ("sample_rate", "transaction") not in sentry_server.client_reports()


def test_capped_request_propagates_its_own_decision_downstream(
    sentry_server: SentryServer,
) -> None:
    """A request the cap dropped tells services after it ``-0`` but keeps the frozen DSC."""
    init(sentry_server, max_inherited_sampled_per_second=0)
    seen: list[dict[str, str]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(stm.get_trace_headers())
        return _wsgi_plain(environ, start_response)

    trace_id = uuid.uuid4().hex
    headers, dsc = incoming(trace_id)
    with run_wsgi(generic_wsgi.TracingMiddleware(app)) as base:
        assert requests.get(base + "/x", headers=headers, timeout=5).content == BODY
    ((out,),) = [seen]
    assert out["sentry-trace"].startswith(trace_id + "-") and out["sentry-trace"].endswith("-0")
    members = {k: unquote(v) for k, v in (m.split("=", 1) for m in out["baggage"].split(","))}
    assert members == {f"sentry-{k}": v for k, v in dsc.items()}  # frozen, "sampled=true" kept
    assert flush_reports(sentry_server, ("sample_rate", "transaction"), 1) == 1
    assert sentry_server.transactions() == []


# -- trust_incoming_traces -------------------------------------------------------------------------

SPOOF = {
    "X-Forwarded-For": "10.1.2.3",
    "X-Real-IP": "10.1.2.3",
    "Forwarded": "for=10.1.2.3;proto=https",
    "True-Client-IP": "10.1.2.3",
}


def _one_request(url: str, flag: str, extra: dict[str, str] | None = None) -> str:
    trace_id = uuid.uuid4().hex
    headers, _ = incoming(trace_id, flag)
    resp = requests.get(url, headers={**headers, **(extra or {})}, timeout=5)
    assert resp.status_code == 200 and resp.content == expected_body(url)
    return trace_id


@pytest.mark.parametrize("kind", ["wsgi", "asgi", "flask", "starlette", "django"])
def test_untrusted_peer_starts_a_fresh_trace_even_when_spoofing(
    sentry_server: SentryServer, kind: str
) -> None:
    # Our own decision: rate 1.0 samples although upstream said -0, and a rate of 0 would
    # not sample although upstream said -1 (checked below with a second client).
    init(sentry_server, trust_incoming_traces=["10.0.0.0/8", "::1/128"])
    with serve(kind) as url:
        forced_off = [_one_request(url, "0", SPOOF) for _ in range(3)]
    assert stm.flush(5)
    got = envelopes_by_trace(sentry_server)
    assert len(got) == 3
    for trace_id, (header, tx) in got.items():
        assert trace_id not in forced_off  # a new trace id
        trace = tx["contexts"]["trace"]
        assert "parent_span_id" not in trace or trace["parent_span_id"] is None
        assert header["trace_id"] == trace_id
        assert header["public_key"] == "public"  # our DSC, not the upstream's
        assert header.get("sampled") == "true" and header.get("sample_rate") == "1.0"
        assert "upstream" not in repr(header)


@pytest.mark.parametrize("kind", ["wsgi", "asgi", "django"])
def test_untrusted_forced_sampling_is_ignored(sentry_server: SentryServer, kind: str) -> None:
    init(sentry_server, traces_sample_rate=0.0, trust_incoming_traces=["10.0.0.0/8"])
    with serve(kind) as url:
        for _ in range(5):
            _one_request(url, "1", SPOOF)
    assert flush_reports(sentry_server, ("sample_rate", "transaction"), 5) == 5
    assert sentry_server.transactions() == []


@pytest.mark.parametrize("kind", ["wsgi", "asgi", "flask", "starlette", "django"])
def test_trusted_network_continues(sentry_server: SentryServer, kind: str) -> None:
    init(sentry_server, traces_sample_rate=0.0, trust_incoming_traces=["127.0.0.0/8"])
    with serve(kind) as url:
        forced_on = [_one_request(url, "1") for _ in range(3)]
        _one_request(url, "0")  # inherited "not sampled" (rate 1.0 upstream, -0)
    assert stm.flush(5)
    got = envelopes_by_trace(sentry_server)
    assert sorted(got) == sorted(forced_on)
    for trace_id, (header, tx) in got.items():
        assert tx["contexts"]["trace"]["parent_span_id"] == UPSTREAM_PARENT
        assert header == incoming(trace_id)[1]


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_callable_trust_sees_the_request(sentry_server: SentryServer, kind: str) -> None:
    def internal(request: Any) -> bool:
        if isinstance(request, dict) and "REMOTE_ADDR" in request:  # WSGI environ
            return bool(request.get("HTTP_X_INTERNAL_TOKEN") == "s3cret")
        headers = dict(request["headers"])  # ASGI scope
        return headers.get(b"x-internal-token") == b"s3cret"

    init(sentry_server, trust_incoming_traces=internal)
    with serve(kind) as url:
        trusted = _one_request(url, "1", {"X-Internal-Token": "s3cret"})
        untrusted = _one_request(url, "1", {"X-Internal-Token": "guess", **SPOOF})
    assert stm.flush(5)
    got = envelopes_by_trace(sentry_server)
    assert len(got) == 2
    assert trusted in got and untrusted not in got
    assert got[trusted][1]["contexts"]["trace"]["parent_span_id"] == UPSTREAM_PARENT


def test_uvicorn_forwarded_headers_are_the_server_s_decision(sentry_server: SentryServer) -> None:
    """Documented caveat: uvicorn's proxy-header support rewrites ``scope["client"]``.

    With ``proxy_headers=True`` and the peer in ``forwarded_allow_ips``, uvicorn itself
    takes the client address from ``X-Forwarded-For``, so the middleware sees that address as
    the peer. Without it (checked above), a spoofed header changes nothing.
    """
    init(sentry_server, trust_incoming_traces=["10.0.0.0/8"])
    app = generic_asgi.TracingMiddleware(_asgi_plain)
    with run_asgi(app, proxy_headers=True, forwarded_allow_ips="127.0.0.1") as base:
        continued = _one_request(base + "/x", "1", {"X-Forwarded-For": "10.9.9.9"})
    assert stm.flush(5)
    assert continued in envelopes_by_trace(sentry_server)
