"""Outgoing HTTP calls: client time added per call by each tracer, inside a sampled transaction.

Clients: requests, urllib3, httpx (sync) and httpx (async), against a keep-alive sink in a
separate process on 127.0.0.1; the DSN is another sink (trace headers never go to the DSN's
host and port, so a shared one would leave header injection out of the measurement).
Configurations, each in a fresh process:

* ``ours``: ``sentry_tracing_mw.init(traces_sample_rate=1.0)``, calls inside a sampled
  transaction: an ``http.client`` span each, plus sentry-trace/baggage/traceparent;
* ``ours-idle``: instrumented, but no transaction and no trace current (the fast path);
* ``headers``: the floor: no tracer, only the three headers ours sends in a sampled
  transaction (``sentry-trace``, ``baggage``, ``traceparent``, values made by ours once)
  added to every request at the lowest level (``http.client``'s ``putrequest``, httpx's
  transports), with no span and no per-call logic: what any tracer that propagates them
  costs the client at least;
* ``sentry-sdk``: ``sentry_sdk.init(traces_sample_rate=1.0)`` with its default integrations
  (stdlib, httpx) and the serialize-and-discard transport, inside a sampled transaction;
* ``otel``: OpenTelemetry SDK with the requests/urllib3/httpx instrumentations, ALWAYS_ON,
  a ``BatchSpanProcessor`` with the OTLP-encoding exporter, inside a recording span;
* ``none``: nothing installed, the A/A control: both batches of a pair run the same plain
  calls, so its "added" cost is noise, the resolution of the other columns.

*Bare* is measured in the same process: the class attributes each configuration patched are
swapped out and in, and batches of 100 calls alternate between the plain and the
instrumented libraries, each batch in a fresh transaction (no SDK hits its span cap). The
added cost is the median of the per-pair differences. Timed with ``time.thread_time()``, the
calling thread's CPU (the async client's event loop runs on that thread too): the wall time
of a loopback call mostly measures the server and the scheduler, not the client.

    python benchmarks/bench_outgoing.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _apps
import _harness as h

CLIENTS = ("requests", "urllib3", "httpx", "httpx-async")
CONFIGS = ("ours", "ours-idle", "headers", "sentry-sdk", "otel", "none")
# Classes whose attributes instrumentations patch; the worker swaps whatever changed.
PATCH_POINTS = (
    ("http.client", "HTTPConnection"),
    ("http.client", "HTTPResponse"),
    ("urllib3.connection", "HTTPConnection"),
    ("urllib3.connectionpool", "HTTPConnectionPool"),
    ("urllib3.poolmanager", "PoolManager"),
    ("urllib3.response", "HTTPResponse"),
    ("requests.sessions", "Session"),
    ("requests.adapters", "HTTPAdapter"),
    ("httpx", "Client"),
    ("httpx", "AsyncClient"),
    ("httpx", "HTTPTransport"),
    ("httpx", "AsyncHTTPTransport"),
)
_MISSING = object()
BATCH = 100
Patches = dict[tuple[type, str], Any]


# --------------------------------------------------------------------------- child side


def _setup(config: str, dsn: str) -> Callable[[], Any]:
    """Install the configuration; return a factory of per-batch context managers."""
    if config == "none":
        return contextlib.nullcontext
    if config in ("ours", "ours-idle"):
        import sentry_tracing_mw as stm

        stm.init(dsn=dsn, traces_sample_rate=1.0)
        if config == "ours-idle":
            return contextlib.nullcontext
        return lambda: stm.start_transaction("bench", op="bench")
    if config == "headers":
        _install_headers_only(dsn)
        return contextlib.nullcontext
    if config == "sentry-sdk":
        import sentry_sdk

        sentry_sdk.init(
            dsn="http://public@127.0.0.1:9/1",
            transport=_apps.sdk_transport(),
            traces_sample_rate=1.0,
        )
        return lambda: sentry_sdk.start_transaction(name="bench", op="bench")
    if config == "otel":
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

        provider = _apps.otel_provider(True)
        RequestsInstrumentor().instrument()
        URLLib3Instrumentor().instrument()
        HTTPXClientInstrumentor().instrument()
        tracer = provider.get_tracer("bench")
        return lambda: tracer.start_as_current_span("bench")
    raise SystemExit(f"unknown config {config}")


def _install_headers_only(dsn: str) -> None:
    """Patch the clients to add the trace headers ours sends, fixed, to every request."""
    import http.client

    import httpx

    import sentry_tracing_mw as stm

    stm.init(dsn=dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    tx = stm.start_transaction("bench", op="bench")  # never finished: nothing is sent
    pairs = list(tx.propagation_context.headers(tx.span_id).items())
    raw = [(n.encode(), n.encode(), v.encode()) for n, v in pairs]
    putrequest = http.client.HTTPConnection.putrequest
    handle = httpx.HTTPTransport.handle_request
    handle_async = httpx.AsyncHTTPTransport.handle_async_request

    def headers_putrequest(self: Any, *args: Any, **kwargs: Any) -> None:
        putrequest(self, *args, **kwargs)
        for name, value in pairs:
            self.putheader(name, value)

    def headers_handle(self: Any, request: Any) -> Any:
        request.headers._list = request.headers._list + raw
        return handle(self, request)

    async def headers_handle_async(self: Any, request: Any) -> Any:
        request.headers._list = request.headers._list + raw
        return await handle_async(self, request)

    http.client.HTTPConnection.putrequest = headers_putrequest  # type: ignore[method-assign]
    httpx.HTTPTransport.handle_request = headers_handle  # type: ignore[method-assign]
    httpx.AsyncHTTPTransport.handle_async_request = headers_handle_async  # type: ignore[method-assign]


def _snapshot() -> dict[type, dict[str, Any]]:
    return {
        cls: dict(vars(cls))
        for cls in (getattr(importlib.import_module(m), n) for m, n in PATCH_POINTS)
    }


def _diff(before: dict[type, dict[str, Any]]) -> tuple[Patches, Patches]:
    on: Patches = {}
    off: Patches = {}
    for cls, old in before.items():
        new = dict(vars(cls))
        for name in set(old) | set(new):
            a, b = new.get(name, _MISSING), old.get(name, _MISSING)
            if a is not b:
                on[(cls, name)] = a
                off[(cls, name)] = b
    return on, off


def _apply(patches: Patches) -> None:
    for (cls, name), value in patches.items():
        if value is _MISSING:
            if name in vars(cls):
                delattr(cls, name)
        else:
            setattr(cls, name, value)


def measure(config: str, client: str, url: str, dsn: str, calls: int) -> dict[str, float]:
    import httpx
    import requests
    import urllib3

    before = _snapshot()
    batch = _setup(config, dsn)
    on, off = _diff(before)
    if not on and config != "none":
        raise SystemExit(f"{config}: nothing was patched")
    clock = time.thread_time

    def sync_batch(call: Callable[[], object]) -> Callable[[], float]:
        def run() -> float:
            start = clock()
            for _ in range(BATCH):
                call()
            return (clock() - start) / BATCH

        return run

    if client == "requests":
        session = requests.Session()
        run = sync_batch(lambda: session.get(url).content)
    elif client == "urllib3":
        pool = urllib3.PoolManager()
        run = sync_batch(lambda: pool.request("GET", url).data)
    elif client == "httpx":
        sync_client = httpx.Client()
        run = sync_batch(lambda: sync_client.get(url).content)
    elif client == "httpx-async":
        import asyncio

        loop = asyncio.new_event_loop()
        async_client = httpx.AsyncClient()

        async def many() -> float:
            start = clock()
            for _ in range(BATCH):
                (await async_client.get(url)).content  # noqa: B018
            return (clock() - start) / BATCH

        def run() -> float:
            return loop.run_until_complete(many())

    else:
        raise SystemExit(f"unknown client {client}")
    for state in (off, on, off, on):  # warm up both paths (connections, caches)
        _apply(state)
        with batch():
            run()
    on_times, off_times, diffs = [], [], []
    for i in range(max(1, calls // (2 * BATCH))):
        pair = {}
        for state in ("on", "off") if i % 2 else ("off", "on"):
            _apply(on if state == "on" else off)
            with batch():
                pair[state] = run()
        _apply(on)
        on_times.append(pair["on"])
        off_times.append(pair["off"])
        diffs.append(pair["on"] - pair["off"])
    return {
        "on_us": statistics.median(on_times) * 1e6,
        "off_us": statistics.median(off_times) * 1e6,
        "added_us": statistics.median(diffs) * 1e6,
    }


def child(spec: dict[str, Any]) -> dict[str, float]:
    return measure(spec["config"], spec["client"], spec["url"], spec["dsn"], spec["calls"])


# --------------------------------------------------------------------------- driver side


def run(quick: bool, rounds: int | None = None) -> h.Section:
    rounds = rounds or (1 if quick else 3)
    calls = 600 if quick else 4000
    load_start = h.loadavg()
    t0 = time.monotonic()
    keys = [(client, config) for client in CLIENTS for config in CONFIGS]
    with h.Sink() as sink, h.Sink() as target:
        results = h.interleaved(
            keys,
            rounds,
            lambda k: h.run_child(
                "bench_outgoing.py",
                {
                    "client": k[0],
                    "config": k[1],
                    "url": target.url,
                    "dsn": sink.dsn,
                    "calls": calls,
                },
            ),
            progress=lambda m: h.log(f"outgoing {m}"),
        )
    elapsed = time.monotonic() - t0
    rows = []
    targets: list[tuple[str, str, bool | None]] = []
    for client in CLIENTS:
        bare = h.Stat.of(r["off_us"] for c in CONFIGS for r in results[(client, c)])
        added = {c: h.Stat.of(r["added_us"] for r in results[(client, c)]) for c in CONFIGS}
        ours = added["ours"].median
        rows.append(
            [client, bare.fmt()]
            + [added[c].fmt() for c in CONFIGS]
            + [h.ratio(added["sentry-sdk"].median, ours), h.ratio(added["otel"].median, ours)]
        )
        targets.append(
            (
                f"outgoing {client}: ≤ 10 µs added per call (sampled transaction)",
                f"{ours:+.1f} µs (the three headers alone: {added['headers'].median:+.1f}; "
                f"A/A {added['none'].fmt()})",
                h.budget_verdict(ours, 10.0, max(abs(added["none"].min), abs(added["none"].max))),
            )
        )
    body = (
        f"{rounds} round(s), each configuration × client in a fresh process, {calls} calls per "
        f"process in alternating batches of {BATCH} plain / instrumented calls. µs of the calling "
        "thread's CPU per call: *bare* is the plain call's own cost (the plain batches of every "
        "configuration's processes pooled); the other columns are the "
        "cost **added** per call (median of paired batch differences; median (min–max) over "
        "rounds). *A/A*: the same measurement with nothing installed (both batches plain): "
        "its spread is the resolution of the other columns. *Headers only*: no tracer, just "
        "the three headers ours sends (`sentry-trace`, `baggage`, `traceparent`) added to "
        "each request at the lowest level: the floor for any tracer that propagates them "
        "(sentry-sdk sends no `traceparent` by default). Ratios: rival's added cost / "
        "ours.\n\n"
        + h.md_table(
            [
                "client",
                "bare µs/call",
                "ours (sampled tx)",
                "ours (no trace)",
                "headers only",
                "sentry-sdk",
                "OTel",
                "A/A (noise)",
                "sdk/ours",
                "OTel/ours",
            ],
            rows,
        )
    )
    return h.Section("Outgoing HTTP calls", body, targets, elapsed, load_start, h.loadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    section = run(args.quick, args.rounds)
    print(f"## {section.title}\n\n{section.body}\n")
    for target, measured, met in section.targets:
        print(f"- {h.verdict_text(met)}: {target}: {measured}")


if __name__ == "__main__":
    sys.exit(main())
