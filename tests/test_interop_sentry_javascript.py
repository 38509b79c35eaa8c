"""Interop: the JavaScript Sentry SDK (``@sentry/node``, pinned in ``tests/js_peer``) as a peer.

A chain of real processes on 127.0.0.1: a Node job traced by ``@sentry/node`` calls our app
(FastAPI under uvicorn, Flask under werkzeug) with ``fetch`` and with ``http.get``; our app
calls a Node service traced by ``@sentry/node``. One trace end to end, every transaction's
parent is the caller's ``http.client`` span, the head's decision is honoured by every hop
(each later hop is configured with the opposite rate), and the head's DSC reaches the last
hop unchanged. The Node peers keep what they would send (no network): ``js_peer/peer.js``.

Also: the JavaScript SDK's own parser reads our ``<meta>`` tags (what the browser SDK
continues a page-load trace from) as the trace we are in.

``tox`` installs the peer (``tests/js_peer/install.py``: ``npm ci``); without Node.js or the
package these tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import requests

import sentry_tracing_mw as stm
from sentry_tracing_mw import _tracing

from .sentry_server import SentryServer
from .servers import run_asgi, run_wsgi

PEER = Path(__file__).resolve().parent / "js_peer"
NODE = shutil.which("node")


def _peer_problem() -> str | None:
    """Why the JavaScript peer cannot run here (None: it can)."""
    from .js_peer.install import MIN_NODE, installed, node_version

    if NODE is None:
        return "Node.js is not installed"
    version = node_version(NODE)
    if version is None or version < MIN_NODE:
        return f"Node.js {version} is older than {MIN_NODE}"
    if not installed():
        return "the JavaScript peer is not installed: python tests/js_peer/install.py"
    return None


PROBLEM = _peer_problem()
pytestmark = [
    pytest.mark.skipif(PROBLEM is not None, reason=str(PROBLEM)),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

TIMEOUT = 60
#: Environment variables the JavaScript SDK or Node read that would change the peers
#: (Spotlight sends to localhost:8969, DEBUG floods stderr, NODE_OPTIONS preloads code).
_PEER_UNSET = ("DEBUG", "NODE_OPTIONS")


def _node_env(rate: float, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("SENTRY_") and k not in _PEER_UNSET
    }
    return {**env, "RATE": str(rate), **extra}


def run_node_client(target: str, rate: float) -> dict[str, Any]:
    """Run ``js_peer/client.js`` against ``target``; the JSON it printed last."""
    proc = subprocess.run(
        [str(NODE), "client.js"],
        cwd=PEER,
        env=_node_env(rate, TARGET=target),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@contextmanager
def node_service(rate: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run ``js_peer/server.js``; yields its URL and a dict that gets ``sent`` (the
    transactions it sent) once the service has stopped."""
    proc = subprocess.Popen(
        [str(NODE), "server.js"],
        cwd=PEER,
        env=_node_env(rate),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first, proc.stderr.read() if proc.stderr else "no output"
        port = json.loads(first)["port"]
        yield f"http://127.0.0.1:{port}/echo", result
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        result.update(json.loads(out.strip().splitlines()[-1]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _fastapi_app(downstream: str) -> Any:
    from fastapi import FastAPI

    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    app = FastAPI()

    @app.get("/hop")
    async def hop() -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            return (await client.get(downstream)).json()

    app.add_middleware(TracingMiddleware)
    return app


def _flask_app(downstream: str) -> Any:
    from flask import Flask

    from sentry_tracing_mw.integrations.flask import FlaskTracing

    app = Flask("hop")

    @app.route("/hop")
    def hop() -> Any:
        return requests.get(downstream, timeout=10).json()

    FlaskTracing(app)
    return app


SERVED: dict[str, tuple[Callable[[str], Any], Callable[..., Any]]] = {
    "fastapi": (_fastapi_app, run_asgi),
    "flask": (_flask_app, run_wsgi),
}


def _dsc_of_baggage(baggage: str) -> dict[str, str]:
    members = (part.split(";", 1)[0].strip().split("=", 1) for part in baggage.split(","))
    return {k[7:]: unquote(v) for k, v in members if k.startswith("sentry-")}


def _our_transactions(server: SentryServer, n: int) -> list[tuple[dict[str, Any], Any]]:
    """Our ``n`` transactions, each with its envelope's ``trace`` header."""
    assert stm.flush(5)
    assert server.wait_for(n, timeout=5)
    found = [
        (item.json(), envelope.headers.get("trace"))
        for envelope in server.envelopes()
        for item in envelope.items_of("transaction")
    ]
    assert len(found) == n, found
    return found


@pytest.mark.parametrize("framework", ["fastapi", "flask"])
@pytest.mark.parametrize("head_rate", [1.0, 0.0])
def test_node_to_ours_to_node_is_one_trace(
    sentry_server: SentryServer, framework: str, head_rate: float
) -> None:
    make_app, serve = SERVED[framework]
    later_rate = 1.0 - head_rate  # every later hop would decide otherwise
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=later_rate)
    with node_service(later_rate) as (downstream, service):
        with serve(make_app(downstream)) as url:
            client = run_node_client(f"{url}/hop", head_rate)
    sampled = head_rate == 1.0
    trace_id = client["root"]["traceId"]
    calls = client["calls"]
    assert [c["via"] for c in calls] == ["fetch", "http"]
    flag = "1" if sampled else "0"
    # What the Node service got from us: the head's trace and decision, and the head's DSC.
    seen = [c["answer"]["headers"] for c in calls]
    for headers in seen:
        head, our_span, got_flag = headers["sentry-trace"].split("-")
        assert (head, got_flag) == (trace_id, flag)
        assert headers["traceparent"] == f"00-{trace_id}-{our_span}-0{flag}"
    # ... and it continued that trace (an active span of the trace in every request).
    assert [c["answer"]["span"]["traceId"] for c in calls] == [trace_id, trace_id]

    if not sampled:
        assert client["sent"] == []
        assert service["sent"] == []
        assert all(_dsc_of_baggage(h["baggage"])["sampled"] == "false" for h in seen)
        assert stm.flush(5)
        assert sentry_server.transactions() == []
        return

    # The head: one transaction with an http.client span per call, and its DSC.
    assert len(client["sent"]) == 1
    head_tx = client["sent"][0]["event"]
    head_dsc = client["sent"][0]["dsc"]
    assert head_tx["contexts"]["trace"]["trace_id"] == trace_id
    assert head_dsc["trace_id"] == trace_id and head_dsc["sampled"] == "true"
    node_spans = [s["span_id"] for s in head_tx["spans"] if s.get("op") == "http.client"]
    assert len(node_spans) == 2

    # Ours: one transaction per call, each a child of the Node job's http.client span,
    # sampled at our rate 0, sending the head's DSC unchanged.
    ours = _our_transactions(sentry_server, 2)
    our_spans = []
    for tx, dsc in ours:
        trace = tx["contexts"]["trace"]
        assert trace["trace_id"] == trace_id
        assert tx["transaction"] == "/hop"
        assert dsc == head_dsc
        (span,) = [s for s in tx["spans"] if s["op"] == "http.client"]
        our_spans.append((trace["parent_span_id"], span["span_id"]))
    assert sorted(parent for parent, _ in our_spans) == sorted(node_spans)
    for headers in seen:
        assert _dsc_of_baggage(headers["baggage"]) == head_dsc

    # The Node service: a child of our http.client span, sampled at its rate 0, the
    # head's DSC in its envelopes (sample_rand included: one random value for the trace).
    assert len(service["sent"]) == 2
    for sent in service["sent"]:
        trace = sent["event"]["contexts"]["trace"]
        assert trace["trace_id"] == trace_id
        assert sent["dsc"] == head_dsc
    assert sorted(s["event"]["contexts"]["trace"]["parent_span_id"] for s in service["sent"]) == (
        sorted(span for _, span in our_spans)
    )


class _MetaTags(HTMLParser):
    """The ``content`` of ``<meta name=...>`` tags, as a browser reads them (unescaped)."""

    def __init__(self) -> None:
        super().__init__()
        self.content: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "meta" and found.get("name"):
            self.content[str(found["name"])] = found.get("content") or ""


def _read_meta_tags(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The JavaScript SDK's ``propagationContextFromHeaders`` of each (sentry-trace, baggage)."""
    proc = subprocess.run(
        [str(NODE), "meta.js"],
        cwd=PEER,
        input=json.dumps(pairs),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    result: list[dict[str, Any]] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("sampled", [True, False])
def test_the_javascript_sdk_continues_our_meta_tags(
    sentry_server: SentryServer, sampled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trace's random value whose six decimals end in 0 (0.387390), which the JavaScript
    # SDK writes back shorter (one trace in ten had it: the test failed then).
    monkeypatch.setattr(_tracing, "new_sample_rand", lambda: 0.38739)
    # Names and versions with the characters that need escaping in baggage and in HTML.
    stm.init(
        dsn=sentry_server.dsn,
        traces_sample_rate=1.0 if sampled else 0.0,
        release='shop@1.0 "<b>",a=b;c%d',
        environment="prod & staging é",
    )
    with stm.start_transaction(name="/checkout/{id}", op="http.server", source="route") as tx:
        parser = _MetaTags()
        parser.feed(stm.trace_meta_tags())
        headers = stm.get_trace_headers()
        span_id = tx.span_id
    (continued,) = _read_meta_tags([(parser.content["sentry-trace"], parser.content["baggage"])])
    assert continued["traceId"] == tx.trace_id
    assert continued["parentSpanId"] == span_id
    assert continued["sampled"] is sampled
    dsc = _dsc_of_baggage(headers["baggage"])
    _assert_same_dsc(continued["dsc"], dsc)
    assert dsc["release"] == 'shop@1.0 "<b>",a=b;c%d'
    assert dsc["environment"] == "prod & staging é"
    assert dsc["transaction"] == "/checkout/{id}"
    assert continued["sampleRand"] == float(dsc["sample_rand"])
    if sampled:
        ((_, envelope_dsc),) = _our_transactions(sentry_server, 1)
        _assert_same_dsc(continued["dsc"], envelope_dsc)


def _assert_same_dsc(theirs: dict[str, str], ours: dict[str, str]) -> None:
    """The JavaScript SDK keeps the DSC's ``sample_rand`` as a number and writes it back
    with ``toString()``: our ``0.387390`` comes back as ``0.38739``, the same value."""
    assert {k: v for k, v in theirs.items() if k != "sample_rand"} == {
        k: v for k, v in ours.items() if k != "sample_rand"
    }
    assert float(theirs["sample_rand"]) == float(ours["sample_rand"])
