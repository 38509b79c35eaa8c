"""Transport benchmark: request-thread hand-off cost and worker throughput.

(a) ``tx.finish()`` of a sampled transaction whose 10 child spans are finished: the
    request thread's whole hand-off (the event is built on the worker).
(b) real finished transactions/s through the worker (event built from the spans, DSC,
    JSON, gzip) POSTed to a discarding HTTP server that runs in a separate process on
    127.0.0.1.

Run: ``python benchmarks/bench_transport.py [--count 5000]``. Targets: <= 5 µs, >= 3,000 tx/s.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import threading
import time
import uuid
from typing import Any

from _harness import Sink

from sentry_tracing_mw._client_reports import ClientReports
from sentry_tracing_mw._dsn import Dsn
from sentry_tracing_mw._transport import Pending, Transport
from sentry_tracing_mw._version import VERSION

SDK = {"name": "sentry.python.tracemw", "version": VERSION}


def transaction(spans: int = 10) -> tuple[dict[str, Any], dict[str, str]]:
    """A realistic finished transaction payload and its DSC."""
    trace_id = uuid.uuid4().hex
    root = uuid.uuid4().hex[:16]
    start = time.time()
    payload: dict[str, Any] = {
        "type": "transaction",
        "event_id": uuid.uuid4().hex,
        "platform": "python",
        "transaction": "/users/{user_id}",
        "transaction_info": {"source": "route"},
        "start_timestamp": start,
        "timestamp": start + 0.25,
        "environment": "production",
        "release": "app@1.2.3",
        "server_name": "web-1",
        "sdk": SDK,
        "tags": {"http.status_code": "200"},
        "contexts": {
            "trace": {
                "trace_id": trace_id,
                "span_id": root,
                "op": "http.server",
                "status": "ok",
                "origin": "auto.http.wsgi",
                "data": {"http.response.status_code": 200},
            },
            "response": {"status_code": 200},
        },
        "request": {
            "method": "GET",
            "url": "https://example.com/users/42",
            "headers": {"Host": "example.com", "User-Agent": "bench"},
        },
        "spans": [
            {
                "trace_id": trace_id,
                "span_id": uuid.uuid4().hex[:16],
                "parent_span_id": root,
                "op": "db.query",
                "description": f"SELECT * FROM users WHERE id = %s -- {i}",
                "status": "ok",
                "origin": "auto.db.sqlite",
                "start_timestamp": start + 0.01 * i,
                "timestamp": start + 0.01 * i + 0.004,
                "data": {"db.system": "sqlite", "db.name": "app"},
            }
            for i in range(spans)
        ],
    }
    dsc = {
        "trace_id": trace_id,
        "public_key": "public",
        "sample_rate": "1.0",
        "sample_rand": "0.500000",
        "sampled": "true",
        "environment": "production",
    }
    return payload, dsc


def pending_for(payload: dict[str, Any], dsc: dict[str, str]) -> Pending:
    return Pending("transaction", lambda: (payload, dsc), span_count=10, size_hint=4096)


def bench_handoff(repeats: int = 31, batch: int = 2000) -> tuple[float, float]:
    """Median µs per ``submit()`` (worker parked) and per Pending creation + submit."""
    payload, dsc = transaction()
    t = Transport(
        Dsn.parse("http://public@127.0.0.1:9/1"),
        reports=ClientReports(),
        sdk_info=SDK,
        queue_size=repeats * batch * 2 + 10,
        queue_bytes=1 << 40,
    )
    gate = threading.Event()
    t.submit(Pending("transaction", lambda: (gate.wait(), None)[1]))
    time.sleep(0.05)
    submit_only: list[float] = []
    with_create: list[float] = []
    for _ in range(repeats):
        items = [pending_for(payload, dsc) for _ in range(batch)]
        submit = t.submit
        t0 = time.perf_counter()
        for p in items:
            submit(p)
        submit_only.append((time.perf_counter() - t0) / batch * 1e6)
        t0 = time.perf_counter()
        for _ in range(batch):
            submit(Pending("transaction", lambda: (payload, dsc), span_count=10, size_hint=4096))
        with_create.append((time.perf_counter() - t0) / batch * 1e6)
    # drop everything queued without any I/O
    with t._cond:
        t._queue.clear()
        t._bytes = 0
        t._done = t._enqueued
    gate.set()
    t.close(1)
    return statistics.median(submit_only), statistics.median(with_create)


def bench_throughput(count: int) -> tuple[float, float, int]:
    """Transactions/s through the worker to a discarding server in another process.

    Returns (wall-clock tx/s, this process's CPU µs per transaction, transactions lost).
    """
    with Sink() as sink:
        reports = ClientReports()
        t = Transport(
            Dsn.parse(sink.dsn),
            reports=reports,
            sdk_info=SDK,
            queue_size=count + 10,
        )
        # warm-up: thread start and connection
        warm = transaction()
        t.submit(pending_for(*warm))
        t.flush(10)
        items = [pending_for(*transaction()) for _ in range(count)]
        c0 = time.process_time()
        t0 = time.perf_counter()
        for p in items:
            t.submit(p)
        ok = t.flush(120)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        t.close(5)
        lost = sum(reports.snapshot().values())
        assert ok, "flush timed out"
        return count / elapsed, cpu / count * 1e6, lost


def _client(dsn: str, count: int) -> Any:
    """A real client (``init()``) whose queue holds ``count`` transactions."""
    import sentry_tracing_mw as stm
    from sentry_tracing_mw._client import get_client

    stm.init(dsn=dsn, traces_sample_rate=1.0, instrument_http_clients=False, release="bench@1")
    client = get_client()
    client.transport._queue_size = count + 10
    client.transport._queue_bytes = 1 << 40
    return client


def _unfinished_transactions(count: int) -> list[Any]:
    """Sampled transactions with 10 finished child spans each, as a request leaves them."""
    import sentry_tracing_mw as stm

    out = []
    for i in range(count):
        tx = stm.start_transaction(f"/users/{{id}}#{i % 7}", op="http.server", source="route")
        for j in range(10):
            with tx.start_child("db", f"SELECT * FROM users WHERE id = %s -- {j}") as span:
                span.set_data("db.system", "postgresql")
        tx.set_http_status(200)
        out.append(tx)
    return out


def _park(transport: Any) -> threading.Event:
    """Hold the worker on a gate item so the queue only fills."""
    gate = threading.Event()
    transport.submit(Pending("transaction", lambda: (gate.wait(), None)[1]))
    time.sleep(0.05)
    return gate


def bench_finish(repeats: int = 15, batch: int = 1000) -> float:
    """Median µs of ``tx.finish()`` for a sampled 10-span transaction: the real hand-off
    (``Client._finish_transaction`` + ``submit``), the worker parked."""
    client = _client("http://public@127.0.0.1:9/1", repeats * batch * 2)
    transport = client.transport
    gate = _park(transport)
    runs = []
    for _ in range(repeats):
        txs = _unfinished_transactions(batch)
        gc.collect()  # no collection of earlier batches' garbage inside the timed loop
        t0 = time.perf_counter()
        for tx in txs:
            tx.finish()
        runs.append((time.perf_counter() - t0) / batch * 1e6)
        with transport._cond:  # drop what was queued, without any I/O
            transport._queue.clear()
            transport._bytes = 0
            transport._done = transport._enqueued
        del txs
    gate.set()
    client.close(1)
    return statistics.median(runs)


def bench_worker(count: int) -> tuple[float, float, int]:
    """Transactions/s the worker builds (event from spans, DSC, JSON, gzip) and POSTs to a
    discarding server in another process, for real finished transactions queued up front.

    Returns (wall-clock tx/s, this process's CPU µs per transaction, transactions lost).
    """
    with Sink() as sink:
        client = _client(sink.dsn, count)
        transport = client.transport
        for tx in _unfinished_transactions(20):  # warm-up: thread, connection, caches
            tx.finish()
        transport.flush(10)
        gate = _park(transport)
        for tx in _unfinished_transactions(count):
            tx.finish()
        c0 = time.process_time()
        t0 = time.perf_counter()
        gate.set()
        ok = transport.flush(120)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        lost = sum(
            n
            for (reason, category), n in client.reports.snapshot().items()
            if category == "transaction" and reason != "sample_rate"
        )
        client.close(5)
        assert ok, "flush timed out"
        return count / elapsed, cpu / count * 1e6, lost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    finish_us = bench_finish()
    submit_us, create_us = bench_handoff()
    print(
        f"(a) hand-off of a finished 10-span transaction (tx.finish() on the request thread): "
        f"{finish_us:.2f} µs median (target <= 5 µs)"
    )
    print(
        f"    of which submit() of a ready item: {submit_us:.2f} µs; Pending + submit(): {create_us:.2f} µs"
    )
    rates: list[float] = []
    for run in range(args.runs):
        rate, cpu_us, lost = bench_worker(args.count)
        rates.append(rate)
        print(
            f"(b) run {run + 1}: {rate:,.0f} transactions/s wall-clock, {cpu_us:.0f} µs CPU per "
            f"transaction in this process ({args.count} real transactions of 10 spans: event "
            f"built from the spans, JSON, gzip, POST; {lost} lost)"
        )
    print(
        f"(b) worker throughput: median {statistics.median(rates):,.0f} tx/s, "
        f"best {max(rates):,.0f} tx/s (target >= 3,000 tx/s)"
    )
    raw = [bench_throughput(args.count)[0] for _ in range(1)]
    print(
        f"    for comparison, pre-built payload dicts only (JSON, gzip, POST): {raw[0]:,.0f} tx/s"
    )


if __name__ == "__main__":
    main()
