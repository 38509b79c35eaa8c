"""The public API as users write it, for ``test_typing.py``: type-checked with
``mypy --strict`` from outside the project, never imported or run."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from flask import Flask
from starlette.applications import Starlette
from typing_extensions import assert_type

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations import http_clients
from sentry_tracing_mw.integrations.asgi import TracingMiddleware as AsgiMiddleware
from sentry_tracing_mw.integrations.flask import FlaskTracing
from sentry_tracing_mw.integrations.starlette import TracingMiddleware
from sentry_tracing_mw.integrations.wsgi import TracingMiddleware as WsgiMiddleware


def sampler(context: stm.SamplingContext) -> float:
    route = context.get("route")
    assert context["transaction_context"]["op"] is not None
    return 0.5 if route else float(bool(context["parent_sampled"]))


def keep(event: dict[str, Any]) -> dict[str, Any] | None:
    return event


client = stm.init(
    dsn="https://key@o1.ingest.sentry.io/1",
    traces_sample_rate=0.25,
    traces_sampler=sampler,
    trace_propagation_targets=["api", re.compile("internal")],
    environment="production",
    release="1.0",
    server_name="web-1",
    send_default_pii=False,
    before_send_transaction=keep,
    before_send=keep,
    sample_rate=1.0,
    ignore_transactions=["/health", re.compile("^/static")],
    trace_ignore_status_codes={404},
    max_spans=100,
    shutdown_timeout=2.0,
    send_client_reports=True,
    http_proxy=None,
    https_proxy=None,
    org_id="1",
    strict_trace_continuation=False,
    max_inherited_sampled_per_second=10,
    trust_incoming_traces=["10.0.0.0/8"],
    debug=False,
    instrument_http_clients=True,
    propagate_traceparent=True,
)
assert_type(client, stm.Client)

# API.md, manual instrumentation: `with ... as tx` is the transaction, with its own methods
with stm.start_transaction("checkout", op="task", source="task") as tx:
    assert_type(tx, stm.Transaction)
    with tx.start_child("db", "load cart") as span:
        assert_type(span, stm.Span)
        span.set_tag("cart.size", "3")
        span.set_data("rows", 3)
    with stm.start_span("http.client", "GET /pay") as pay:
        pay.set_http_status(402)
    tx.set_status("ok")
    tx.set_measurement("items", 3, "none")
    tx.name = "checkout"
    tx.set_name("checkout", "custom")
    name: str = tx.name
    source: str = tx.source
    trace_id: str = tx.trace_id
    parent: str | None = tx.parent_span_id
with stm.continue_trace({"sentry-trace": "..."}, name="job", op="queue.task") as job:
    assert_type(job, stm.Transaction)
    job.set_measurement("items", 1, "none")
started = stm.start_transaction(stm.continue_trace({}, name="job"))
started.finish()
current = stm.get_current_span()
if current is not None:
    with stm.use_span(current) as used:
        used.set_tag("a", "b")
headers: dict[str, str] = stm.get_trace_headers()
event_id = stm.capture_exception(ValueError("x"))
flushed: bool = stm.flush(timeout=None)
meta: str = stm.trace_meta_tags()


@stm.trace(op="function")
def work(x: int) -> str:
    return str(x)


@stm.trace
async def work_async(x: int) -> int:
    return x


class Worker:
    @stm.trace
    def run(self, y: int) -> int:
        return y


assert_type(work(1), str)
assert_type(Worker().run(2), int)
assert_type(stm.wrap_context(work)(1), str)
http_clients.instrument()
http_clients.uninstrument()

flask_app = Flask("shop")
FlaskTracing(flask_app)
FlaskTracing(flask_app, transaction_style="endpoint")
FlaskTracing().init_app(flask_app)
wsgi_app = WsgiMiddleware(flask_app.wsgi_app, ignore_paths=("/health",))
starlette_app = Starlette()
starlette_app.add_middleware(TracingMiddleware, traces_sample_rate=1.0)
fastapi_app = FastAPI()
fastapi_app.add_middleware(TracingMiddleware, transaction_style="endpoint")
asgi_app = AsgiMiddleware(starlette_app)
stm.close()
