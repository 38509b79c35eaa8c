"""Interop: a sentry-sdk-instrumented client process calls our Flask app on a real server.

The client runs in its own Python process (sentry-sdk patches globals), inside a
sentry-sdk transaction, calling with ``requests``; sentry-sdk's stdlib integration adds
``sentry-trace`` and ``baggage``. Our transaction must continue that trace exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations.flask import FlaskTracing

from .flask_apps import create_app
from .sdk_peer import run_sdk_script
from .sentry_server import SentryServer
from .servers import run_wsgi
from .test_wsgi import wait_transactions

ROOT = Path(__file__).resolve().parent.parent

_CLIENT_SCRIPT = r"""
import json, sys
import requests
import sentry_sdk

url, rate = sys.argv[1], float(sys.argv[2])
sentry_sdk.init(dsn="http://sdkkey@127.0.0.1:9/7", transport=Capture,
                traces_sample_rate=rate, release="client@1.2", environment="interop")
with sentry_sdk.start_transaction(name="client-job", op="task") as tx:
    resp = requests.get(url, timeout=5)
sentry_sdk.flush()
print(json.dumps({"trace_id": tx.trace_id, "sampled": tx.sampled, "response": resp.json(),
                  "events": transactions}))
"""


pytestmark = pytest.mark.usefixtures("no_outgoing_headers")  # the test thread's own calls


def _run_client(url: str, rate: float) -> dict[str, Any]:
    out: dict[str, Any] = run_sdk_script(_CLIENT_SCRIPT, url, str(rate))
    return out


def _baggage_dsc(baggage: str) -> dict[str, str]:
    dsc = {}
    for member in baggage.split(","):
        key, _, value = member.strip().partition("=")
        if key.startswith("sentry-"):
            dsc[key[7:]] = unquote(value)
    return dsc


def test_continues_a_sampled_sentry_sdk_trace(sentry_server: SentryServer) -> None:
    # Our own rate is 0: the transaction is only sent because we inherit sentry-sdk's decision.
    app = create_app()
    FlaskTracing(app, dsn=sentry_server.dsn, traces_sample_rate=0.0, instrument_http_clients=False)
    with run_wsgi(app) as base:
        out = _run_client(f"{base}/trace", 1.0)
    assert out["sampled"] is True
    received = out["response"]["received"]
    (sdk_tx,) = out["events"]
    (http_span,) = [s for s in sdk_tx["spans"] if s["op"] == "http.client"]
    assert received["Sentry-Trace"] == f"{out['trace_id']}-{http_span['span_id']}-1"

    assert stm.flush(5)
    (tx,) = wait_transactions(sentry_server, 1)
    trace = tx["contexts"]["trace"]
    assert tx["transaction"] == "/trace"
    assert trace["trace_id"] == out["trace_id"] == sdk_tx["contexts"]["trace"]["trace_id"]
    assert trace["parent_span_id"] == http_span["span_id"]
    (env,) = [e for e in sentry_server.envelopes() if any(e.items_of("transaction"))]
    sent_dsc = _baggage_dsc(received["Baggage"])
    assert sent_dsc["sampled"] == "true" and sent_dsc["transaction"] == "client-job"
    assert sent_dsc["release"] == "client@1.2" and sent_dsc["public_key"] == "sdkkey"
    assert env.headers["trace"] == sent_dsc  # frozen: exactly what sentry-sdk sent
    # ...and our outgoing headers carry it on unchanged
    ours = out["response"]["headers"]
    assert ours["sentry-trace"] == f"{out['trace_id']}-{trace['span_id']}-1"
    assert _baggage_dsc(ours["baggage"]) == sent_dsc


def test_negative_sentry_sdk_decision_sends_nothing(sentry_server: SentryServer) -> None:
    app = create_app()
    FlaskTracing(app, dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    with run_wsgi(app) as base:
        out = _run_client(f"{base}/trace", 0.0)
    assert out["sampled"] is False and out["events"] == []
    received = out["response"]["received"]
    assert received["Sentry-Trace"].startswith(out["trace_id"])
    assert received["Sentry-Trace"].endswith("-0")
    ours = out["response"]["headers"]
    assert ours["sentry-trace"].startswith(out["trace_id"]) and ours["sentry-trace"].endswith("-0")
    assert _baggage_dsc(ours["baggage"]) == _baggage_dsc(received["Baggage"])
    assert stm.flush(5)
    assert sentry_server.transactions() == []
    assert sentry_server.client_reports()[("sample_rate", "transaction")] == 1
