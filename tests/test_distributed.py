"""Distributed traces across real services on 127.0.0.1.

Chain 1, all ours in one process (one client, one local Sentry):
WSGI (Flask + generic WSGI middleware) --requests--> ASGI (Starlette + generic ASGI
middleware) --httpx--> WSGI. Chain 2 puts a Flask service instrumented with ``sentry-sdk``
(a subprocess) in the middle: ours --requests--> sentry-sdk --requests--> ours.

The services share one client, so the head decides with one rate and its handler then
switches the client's rate to the opposite value before calling downstream: every later
hop would decide otherwise if it did not inherit the head's decision.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import pytest
import requests
from flask import Flask, jsonify
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import sentry_tracing_mw as stm
from sentry_tracing_mw._client import get_client
from sentry_tracing_mw._dsn import SDK_NAME
from sentry_tracing_mw.integrations import asgi, wsgi

from .servers import free_port, run_asgi, run_wsgi

TRACE_HEADERS = ("sentry-trace", "baggage", "traceparent")


def _set_rate(rate: float) -> None:
    """Give the shared client another traces_sample_rate (a 'downstream service' setting)."""
    client = get_client()
    client.options = dataclasses.replace(client.options, traces_sample_rate=rate)


def _flask_service(name: str, downstream: str | None, switch_to: list[float]) -> Any:
    app = Flask(name)

    @app.route(f"/{name}")
    def handler() -> Any:
        got = {h: flask_request.headers.get(h) for h in TRACE_HEADERS}
        nxt = None
        if downstream is not None:
            if switch_to:
                _set_rate(switch_to[0])
            nxt = requests.get(downstream, timeout=10).json()
        return jsonify(service=name, got=got, next=nxt)

    return wsgi.TracingMiddleware(app)


def _starlette_service(name: str, downstream: str) -> Any:
    async def handler(request: Request) -> JSONResponse:
        got = {h: request.headers.get(h) for h in TRACE_HEADERS}
        async with httpx.AsyncClient(timeout=10) as client:
            nxt = (await client.get(downstream)).json()
        return JSONResponse({"service": name, "got": got, "next": nxt})

    return asgi.TracingMiddleware(Starlette(routes=[Route(f"/{name}", handler)]))


def _hops(answer: dict[str, Any]) -> list[dict[str, Any]]:
    hops = []
    node: dict[str, Any] | None = answer
    while node is not None:
        hops.append(node)
        node = node["next"]
    return hops


def _by_name(transactions: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {t["transaction"]: t for t in transactions}


def _http_span(tx: dict[str, Any], target: str) -> dict[str, Any]:
    (span,) = [
        s
        for s in tx["spans"]
        if s["op"] == "http.client" and s.get("description", "").endswith(target)
    ]
    return span


def _trace_headers_of(sentry_server: Any) -> dict[str, dict[str, Any]]:
    """Envelope ``trace`` header (DSC) per transaction name."""
    found = {}
    for env in sentry_server.envelopes():
        for item in env.items_of("transaction"):
            found[item.json()["transaction"]] = env.headers.get("trace")
    return found


@contextmanager
def _our_chain() -> Iterator[tuple[str, list[float]]]:
    switch: list[float] = []
    with ExitStack() as stack:
        tail = stack.enter_context(run_wsgi(_flask_service("c", None, switch)))
        middle = stack.enter_context(run_asgi(_starlette_service("b", f"{tail}/c")))
        head = stack.enter_context(run_wsgi(_flask_service("a", f"{middle}/b", switch)))
        yield f"{head}/a", switch


@pytest.mark.parametrize("head_rate", [1.0, 0.0])
def test_three_service_chain(sentry_server: Any, head_rate: float) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=head_rate, release="chain@1")
    with _our_chain() as (url, switch):
        switch.append(1.0 - head_rate)
        answer = requests.get(url, timeout=15).json()
    a, b, c = _hops(answer)
    assert [h["service"] for h in (a, b, c)] == ["a", "b", "c"]
    assert all(v is None for v in a["got"].values())  # the test itself sends nothing
    trace_id = b["got"]["sentry-trace"][:32]
    flag = "1" if head_rate else "0"
    for hop in (b, c):
        assert hop["got"]["sentry-trace"].startswith(trace_id)
        assert hop["got"]["sentry-trace"].endswith(f"-{flag}")
        assert hop["got"]["traceparent"].startswith(f"00-{trace_id}-")
        assert f"sentry-sampled={'true' if head_rate else 'false'}" in hop["got"]["baggage"]
        assert "sentry-sample_rate=" + ("1.0" if head_rate else "0.0") in hop["got"]["baggage"]
    assert stm.flush(5)

    if not head_rate:
        assert sentry_server.transactions() == []
        assert sentry_server.client_reports().get(("sample_rate", "transaction")) == 3
        return
    assert sentry_server.wait_for(3, timeout=5)
    txs = _by_name(sentry_server.transactions())
    assert set(txs) == {"/a", "/b", "/c"}
    for tx in txs.values():
        assert tx["contexts"]["trace"]["trace_id"] == trace_id
    assert "parent_span_id" not in txs["/a"]["contexts"]["trace"]
    a_span = _http_span(txs["/a"], "/b")
    b_span = _http_span(txs["/b"], "/c")
    assert a_span["origin"] == "auto.http.stdlib" and b_span["origin"] == "auto.http.httpx"
    assert txs["/b"]["contexts"]["trace"]["parent_span_id"] == a_span["span_id"]
    assert txs["/c"]["contexts"]["trace"]["parent_span_id"] == b_span["span_id"]
    assert b["got"]["sentry-trace"] == f"{trace_id}-{a_span['span_id']}-1"
    assert c["got"]["sentry-trace"] == f"{trace_id}-{b_span['span_id']}-1"
    dscs = _trace_headers_of(sentry_server)
    assert {d["trace_id"] for d in dscs.values()} == {trace_id}
    assert {(d["sampled"], d["sample_rate"]) for d in dscs.values()} == {("true", "1.0")}


# --------------------------------------------------------------------------- sentry-sdk middle

_SDK_SERVICE = r"""
import sys
import requests
import sentry_sdk
from flask import Flask, jsonify, request
from werkzeug.serving import make_server

port, dsn, rate, downstream = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
sentry_sdk.init(
    dsn=dsn, traces_sample_rate=rate, send_client_reports=False, auto_session_tracking=False,
    before_send_transaction=lambda event, hint: None if event["transaction"] in ("flush", "ping")
    else event,
)
app = Flask("sdk")

@app.route("/mid")
def mid():
    got = {h: request.headers.get(h) for h in ("sentry-trace", "baggage", "traceparent")}
    return jsonify(service="sdk", got=got, next=requests.get(downstream, timeout=10).json())

@app.route("/ping")
def ping():
    return "ok"

@app.route("/flush")
def flush():
    sentry_sdk.flush(5)
    return "ok"

server = make_server("127.0.0.1", port, app, threaded=True)
print("ready", flush=True)
server.serve_forever()
"""


@contextmanager
def _sdk_service(dsn: str, rate: float, downstream: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in ("SENTRY_DSN", "SENTRY_TRACES_SAMPLE_RATE", "SENTRY_RELEASE"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SDK_SERVICE, str(port), dsn, str(rate), downstream],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(f"{base}/ping", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sentry-sdk service did not start: {proc.stderr.read()!r}"
                        if proc.stderr
                        else "sentry-sdk service did not start"
                    )
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.mark.parametrize("head_rate", [1.0, 0.0])
def test_chain_through_sentry_sdk(sentry_server: Any, head_rate: float) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=head_rate)
    switch: list[float] = [1.0 - head_rate]
    with ExitStack() as stack:
        tail = stack.enter_context(run_wsgi(_flask_service("c", None, switch)))
        middle = stack.enter_context(_sdk_service(sentry_server.dsn, 1.0 - head_rate, f"{tail}/c"))
        head = stack.enter_context(run_wsgi(_flask_service("a", f"{middle}/mid", switch)))
        answer = requests.get(f"{head}/a", timeout=15).json()
        requests.get(f"{middle}/flush", timeout=10)
    a, sdk, c = _hops(answer)
    assert [h["service"] for h in (a, sdk, c)] == ["a", "sdk", "c"]
    trace_id = sdk["got"]["sentry-trace"][:32]
    flag = "1" if head_rate else "0"
    for hop in (sdk, c):
        assert hop["got"]["sentry-trace"].startswith(trace_id)
        assert hop["got"]["sentry-trace"].endswith(f"-{flag}")
        assert f"sentry-trace_id={trace_id}" in hop["got"]["baggage"]
    assert stm.flush(5)

    if not head_rate:
        time.sleep(0.2)
        assert sentry_server.transactions() == []
        assert sentry_server.client_reports().get(("sample_rate", "transaction")) == 2
        return
    assert sentry_server.wait_for(3, timeout=10)
    txs = sentry_server.transactions()
    assert {t["contexts"]["trace"]["trace_id"] for t in txs} == {trace_id}
    ours = _by_name([t for t in txs if t["sdk"]["name"] == SDK_NAME])
    assert set(ours) == {"/a", "/c"}
    (sdk_tx,) = [t for t in txs if t["sdk"]["name"] != SDK_NAME]
    a_span = _http_span(ours["/a"], "/mid")
    assert sdk_tx["contexts"]["trace"]["parent_span_id"] == a_span["span_id"]
    assert sdk["got"]["sentry-trace"] == f"{trace_id}-{a_span['span_id']}-1"
    sdk_spans = [s for s in sdk_tx["spans"] if s["op"] == "http.client"]
    assert ours["/c"]["contexts"]["trace"]["parent_span_id"] in {s["span_id"] for s in sdk_spans}
    assert (
        c["got"]["sentry-trace"].split("-")[1]
        == (ours["/c"]["contexts"]["trace"]["parent_span_id"])
    )
    dscs = [
        env.headers.get("trace")
        for env in sentry_server.envelopes()
        if any(True for _ in env.items_of("transaction"))
    ]
    assert all(d and d["trace_id"] == trace_id and d["sampled"] == "true" for d in dscs)
