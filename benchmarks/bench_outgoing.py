"""Outgoing HTTP benchmark: client CPU added per call by instrumentation.

For requests, urllib3, httpx (sync) and httpx (async), against a minimal keep-alive server
in a separate process on 127.0.0.1, each configuration runs in a fresh subprocess:

* ``ours``: ``sentry_tracing_mw.init(traces_sample_rate=1.0)``, calls inside a sampled
  transaction (an http.client span + sentry-trace/baggage/traceparent headers);
* ``ours-idle``: instrumented, but no transaction and no trace current (the fast path);
* ``sentry-sdk``: ``sentry_sdk.init(traces_sample_rate=1.0)`` (its stdlib and httpx
  integrations), calls inside a sampled transaction;
* ``otel``: OpenTelemetry SDK with the requests/urllib3/httpx instrumentations and an
  in-memory exporter, calls inside a recording span.

The machine is shared, so absolute timings drift. Each worker therefore measures paired
batches: the patched class attributes installed by the configuration are swapped in and out
(the uninstrumented libraries are the baseline), batches of 100 calls alternate between the
two, each inside a fresh transaction so no SDK hits its span cap, and the added cost is the
median of the per-pair differences. Only the calls are timed, with ``time.thread_time()``
(the calling thread's CPU; the async client's event loop runs on that thread too).

Run: ``python benchmarks/bench_outgoing.py [--calls 4000] [--repeat 3]``. Budget: <= 10 µs.
Nothing is sent anywhere (no DSN); the numbers are the request-thread cost only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

CLIENTS = ("requests", "urllib3", "httpx", "httpx-async")
CONFIGS = ("ours", "ours-idle", "sentry-sdk", "otel")
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

# A minimal keep-alive HTTP/1.1 server: parses the head and Content-Length only.
SERVER = r"""
import socket, threading

RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"

def handle(conn):
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value)
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            buf = buf[length:]
            conn.sendall(RESP)

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(128)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


# --------------------------------------------------------------------------- worker side


def _setup(config: str) -> Callable[[], Any]:
    """Install the configuration; return a factory of per-batch context managers."""
    import contextlib

    if config in ("ours", "ours-idle"):
        import sentry_tracing_mw as stm

        stm.init(traces_sample_rate=1.0)
        if config == "ours-idle":
            return contextlib.nullcontext
        return lambda: stm.start_transaction("bench", op="bench")
    if config == "sentry-sdk":
        import sentry_sdk

        sentry_sdk.init(
            traces_sample_rate=1.0, send_client_reports=False, auto_session_tracking=False
        )
        return lambda: sentry_sdk.start_transaction(name="bench", op="bench")
    if config == "otel":
        from opentelemetry import trace
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.requests import RequestsInstrumentor
        from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        RequestsInstrumentor().instrument()
        URLLib3Instrumentor().instrument()
        HTTPXClientInstrumentor().instrument()
        tracer = trace.get_tracer("bench")

        @contextlib.contextmanager
        def batch() -> Any:
            with tracer.start_as_current_span("bench"):
                yield
            exporter.clear()

        return batch
    raise SystemExit(f"unknown config {config}")


Patches = dict[tuple[type, str], Any]


def _snapshot() -> dict[type, dict[str, Any]]:
    import importlib

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


def _measure(
    run_batch: Callable[[], float],
    batch: Callable[[], Any],
    on: Patches,
    off: Patches,
    calls: int,
) -> dict[str, float]:
    """Alternate instrumented / plain batches; the added cost is the median pair difference."""
    on_times, off_times, diffs = [], [], []
    for i in range(max(1, calls // (2 * BATCH))):
        pair = {}
        for state in ("on", "off") if i % 2 else ("off", "on"):
            _apply(on if state == "on" else off)
            with batch():
                pair[state] = run_batch()
        _apply(on)
        on_times.append(pair["on"])
        off_times.append(pair["off"])
        diffs.append(pair["on"] - pair["off"])
    return {
        "on_us": statistics.median(on_times) * 1e6,
        "off_us": statistics.median(off_times) * 1e6,
        "added_us": statistics.median(diffs) * 1e6,
    }


def worker(config: str, client: str, port: int, calls: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/bench"
    import httpx
    import requests
    import urllib3

    before = _snapshot()
    batch = _setup(config)
    on, off = _diff(before)
    if not on:
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
    for state in (off, on):  # warm up both paths (connections, caches)
        _apply(state)
        with batch():
            run()
    result = _measure(run, batch, on, off, calls)
    return {"config": config, "client": client, **result}


# --------------------------------------------------------------------------- driver side


def _run_worker(config: str, client: str, port: int, calls: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--worker",
            config,
            client,
            "--port",
            str(port),
            "--calls",
            str(calls),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{config}/{client} failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000, help="calls per worker")
    parser.add_argument("--repeat", type=int, default=3, help="workers per client/config")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "CLIENT"))
    parser.add_argument("--port", type=int)
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.port, args.calls)))
        return

    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        clients = args.clients.split(",")
        configs = args.configs.split(",")
        runs: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.repeat):  # interleaved, so drift hits every config alike
            for client in clients:
                for config in configs:
                    runs.setdefault((client, config), []).append(
                        _run_worker(config, client, port, args.calls)
                    )
    finally:
        server.terminate()
        server.wait(5)

    def med(key: tuple[str, str], field: str) -> float:
        return statistics.median(r[field] for r in runs[key])

    print(
        f"added client CPU per call (µs), median of {args.repeat} workers x "
        f"{args.calls} calls; in brackets: the plain call's own CPU"
    )
    print(f"{'client':<12}" + "".join(f"{c:>16}" for c in configs))
    for client in clients:
        row = f"{client:<12}"
        for config in configs:
            key = (client, config)
            row += f"{med(key, 'added_us'):>9.1f} ({med(key, 'off_us'):>4.0f})"
        print(row)
    if args.json:
        print(
            json.dumps(
                {
                    f"{c}/{k}": {f: med((c, k), f) for f in ("added_us", "off_us", "on_us")}
                    for (c, k) in runs
                }
            )
        )


if __name__ == "__main__":
    main()
