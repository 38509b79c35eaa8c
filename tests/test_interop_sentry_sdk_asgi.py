"""Interop: a sentry-sdk instrumented client (separate process) calls our uvicorn FastAPI app."""

from __future__ import annotations

import textwrap
from typing import Any
from urllib.parse import unquote

import pytest

import sentry_tracing_mw as stm

from .asgi_apps import fastapi_app
from .sdk_peer import run_sdk_script
from .sentry_server import SentryServer
from .servers import run_asgi

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CLIENT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("ignore")
    import requests
    import sentry_sdk

    sentry_sdk.init(dsn="http://0123456789abcdef0123456789abcdef@127.0.0.1:9/42",
                    traces_sample_rate=float(sys.argv[2]),
                    transport=Capture, release="client@1", environment="sdk-env")
    with sentry_sdk.start_transaction(name="client-job", op="task"):
        r = requests.get(sys.argv[1] + "/users/11", timeout=5)
    sentry_sdk.flush(2)
    body = r.json()
    events = transactions
    spans = [s for e in events for s in e.get("spans", []) if s.get("op") == "http.client"]
    print(json.dumps({
        "status": r.status_code,
        "seen_by_app": body["trace"],
        "trace_id": events[0]["contexts"]["trace"]["trace_id"] if events else None,
        "http_span_id": spans[0]["span_id"] if spans else None,
    }))
    """
)


def run_client(url: str, rate: str) -> dict[str, Any]:
    result: dict[str, Any] = run_sdk_script(CLIENT, url, rate)
    return result


def sdk_dsc(baggage: str) -> dict[str, str]:
    items = (part.strip().split("=", 1) for part in baggage.split(","))
    return {k[7:]: unquote(v) for k, v in items if k.startswith("sentry-")}


def test_sampled_sdk_client_trace_is_continued(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=0.0)  # the parent's decision wins
    with run_asgi(fastapi_app()) as url:
        result = run_client(url, "1.0")
    assert result["status"] == 200 and result["trace_id"] and result["http_span_id"]
    assert stm.flush(5) and sentry_server.wait_for(1)
    (tx,) = sentry_server.transactions()
    trace = tx["contexts"]["trace"]
    assert trace["trace_id"] == result["trace_id"]
    assert trace["parent_span_id"] == result["http_span_id"]
    assert tx["transaction"] == "/users/{user_id}"
    # The view's own outgoing headers carry the same trace, the decision and the frozen DSC.
    seen = result["seen_by_app"]
    assert seen["sentry-trace"].startswith(result["trace_id"]) and seen["sentry-trace"].endswith(
        "-1"
    )
    envelope_dsc = sentry_server.envelopes()[0].headers["trace"]
    upstream = sdk_dsc(seen["baggage"])
    assert upstream["trace_id"] == result["trace_id"]
    assert (
        upstream["public_key"] == "0123456789abcdef0123456789abcdef"
        and upstream["transaction"] == "client-job"
    )
    assert envelope_dsc == upstream  # frozen: exactly what the sdk sent, not re-derived
    assert upstream["sampled"] == "true"


def test_unsampled_sdk_client_sends_nothing(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)  # the parent's "-0" wins
    with run_asgi(fastapi_app()) as url:
        result = run_client(url, "0")
    assert result["status"] == 200
    seen = result["seen_by_app"]
    assert seen["sentry-trace"].endswith("-0")
    assert sdk_dsc(seen["baggage"])["sampled"] == "false"
    assert stm.flush(5)
    assert sentry_server.transactions() == []
