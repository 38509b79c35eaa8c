"""Soak test: steady load on a traced app for a bounded time; memory must show no upward trend.

    python benchmarks/soak.py [--duration 600] [--server wsgi|asgi] [--rate 150] [--json OUT]

Three processes: this one serves the traced app (Flask on werkzeug's threaded server, or
Starlette on uvicorn) with tracing on (rate 1.0, outgoing calls instrumented, an error
every 50th request, half the requests continuing an incoming trace); a local Sentry sink
(accepts envelopes and downstream calls, keeps nothing); a load generator at a fixed rate.
Every ``--interval`` seconds (default 10) the server's RSS and, after a ``gc.collect()``,
its count of allocated Python memory blocks (``sys.getallocatedblocks()``: every object
and buffer the interpreter holds, at no cost per allocation) are sampled; ``--tracemalloc``
samples traced bytes instead (it more than doubles the app's CPU per request, so use a
lower ``--rate``), and ``--top N`` implies it. After a warm-up (default: the first quarter,
at most 60 s) a least-squares line is fitted to each series. Exit status 1 when a slope
exceeds its threshold (``--max-rss-slope`` 2.0 MB/min, ``--max-blocks-slope`` 1000
blocks/min or ``--max-traced-slope`` 0.25 MB/min), when requests failed, or when the sink
received fewer transactions than requests served. The load generator retries a request
once on a new connection when the server closed the idle keep-alive one first (counted as
``reconnects``; uvicorn closes it after an app exception).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# -- the Sentry sink (its own process) -----------------------------------------------------------


def run_sink(port_file: str) -> None:
    """Accept envelopes (count transactions/events) and downstream GETs; keep nothing."""
    counts = {"envelopes": 0, "transactions": 0, "events": 0, "downstream": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else every reply waits out the client's delayed ACK

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/counts":
                with lock:
                    self._reply(json.dumps(counts).encode())
                return
            with lock:
                counts["downstream"] += 1
            self._reply(b'{"ok":true}')

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            tx = raw.count(b'{"type":"transaction","length":')
            ev = raw.count(b'{"type":"event","length":')
            with lock:
                counts["envelopes"] += 1
                counts["transactions"] += tx
                counts["events"] += ev
            self._reply(b'{"id":"00000000000000000000000000000000"}')

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    parent = os.getppid()

    def orphan_watch() -> None:  # never outlive the soak process (e.g. it was SIGKILLed)
        while os.getppid() == parent:
            time.sleep(1)
        server.shutdown()

    threading.Thread(target=orphan_watch, daemon=True).start()
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever(poll_interval=0.1)


# -- the load generator (its own process) -----------------------------------------------------------


def run_load(base: str, duration: float, rate: float, concurrency: int) -> None:
    """Send ``rate`` requests/s for ``duration`` s from ``concurrency`` threads; print JSON."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stats = {"requests": 0, "ok": 0, "errors_expected": 0, "failed": 0, "reconnects": 0}
    lock = threading.Lock()
    interval = concurrency / rate
    deadline = time.monotonic() + duration

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        n = 0
        next_at = time.monotonic() + w * interval / concurrency
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            if next_at > now:
                time.sleep(next_at - now)
            next_at += interval
            n += 1
            i = w * 10_000_000 + n
            path = f"/work/{i}" if i % 50 else f"/fail/{i}"
            headers = {}
            if i % 2:
                trace = f"{i:032x}"
                headers["sentry-trace"] = f"{trace}-{i % 2**63:016x}-1"
                headers["baggage"] = (
                    f"sentry-trace_id={trace},sentry-sample_rate=1.0,sentry-sampled=true"
                )
            kind = "failed"
            reconnected = False
            for attempt in (1, 2):
                reused = conn.sock is not None
                try:
                    conn.request("GET", path, headers=headers)
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status == 200 and body == f"done {i}".encode():
                        kind = "ok"
                    elif resp.status == 500 and path.startswith("/fail/"):
                        kind = "errors_expected"
                    if resp.will_close:
                        conn.close()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    conn.close()
                    # The server closed the idle keep-alive connection before reading this
                    # request (uvicorn does after an app raised, even when the 500 response
                    # did not say "Connection: close"): retry once on a new connection, as
                    # every pooling client does for an idempotent request.
                    if attempt == 1 and reused:
                        reconnected = True
                        continue
                except (OSError, http.client.HTTPException):
                    conn.close()
                break
            with lock:
                stats["requests"] += 1
                stats[kind] += 1
                stats["reconnects"] += reconnected
        conn.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(stats), flush=True)


# -- the app under test (this process) -----------------------------------------------------------


def wsgi_app(downstream: str) -> Any:
    import urllib.request

    from flask import Flask

    from sentry_tracing_mw.integrations.flask import FlaskTracing

    app = Flask("soak")
    app.logger.disabled = True  # the planted failures would print a traceback each

    @app.route("/work/<int:i>")
    def work(i: int) -> str:
        import sentry_tracing_mw as stm

        with stm.start_span("app.compute", f"compute {i % 10}") as span:
            span.set_data("i", i)
            with urllib.request.urlopen(f"{downstream}/down/{i}", timeout=10) as resp:
                resp.read()
        return f"done {i}"

    @app.route("/fail/<int:i>")
    def fail(i: int) -> str:
        raise RuntimeError(f"soak failure {i}")

    FlaskTracing(app)
    return app


def asgi_app(downstream: str) -> Any:
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    import sentry_tracing_mw as stm
    from sentry_tracing_mw.integrations.starlette import TracingMiddleware

    client = httpx.AsyncClient(timeout=10)

    async def work(request: Request) -> PlainTextResponse:
        i = request.path_params["i"]
        with stm.start_span("app.compute", f"compute {i % 10}") as span:
            span.set_data("i", i)
            (await client.get(f"{downstream}/down/{i}")).read()
        return PlainTextResponse(f"done {i}")

    async def fail(request: Request) -> PlainTextResponse:
        raise RuntimeError(f"soak failure {request.path_params['i']}")

    app = Starlette(routes=[Route("/work/{i:int}", work), Route("/fail/{i:int}", fail)])
    app.add_middleware(TracingMiddleware)
    return app


def serve(kind: str, app: Any) -> tuple[str, Any]:
    """Start the server in a thread; returns (base URL, stop callable)."""
    if kind == "wsgi":
        import logging

        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        return f"http://127.0.0.1:{server.server_port}", server.shutdown
    import asyncio
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical")
    userver = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(userver.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not userver.started and time.monotonic() < deadline:
        time.sleep(0.01)

    def stop() -> None:
        userver.should_exit = True
        thread.join(10)

    return f"http://127.0.0.1:{port}", stop


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) points, in MB per minute."""
    n = len(points)
    if n < 3:
        return 0.0
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    sxx = sum((t - mx) ** 2 for t, _ in points)
    sxy = sum((t - mx) * (v - my) for t, v in points)
    return (sxy / sxx) * 60.0 if sxx else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--server", choices=["wsgi", "asgi"], default="wsgi")
    parser.add_argument("--rate", type=float, default=150.0, help="requests per second")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--interval", type=float, default=10.0, help="sampling period (s)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds excluded from the fit")
    parser.add_argument("--max-rss-slope", type=float, default=2.0, help="MB/min")
    parser.add_argument("--max-traced-slope", type=float, default=0.25, help="MB/min")
    parser.add_argument("--max-blocks-slope", type=float, default=1000.0, help="blocks/min")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="sample traced bytes (costs CPU per request)"
    )
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument(
        "--top", type=int, default=0, help="print the N source lines whose memory grew most"
    )
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.sink:
        run_sink(args.sink)
        return 0
    if args.load:
        run_load(args.load, args.duration, args.rate, args.concurrency)
        return 0

    import signal

    import psutil

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below

    import sentry_tracing_mw as stm

    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 4)
    me = [sys.executable, os.path.abspath(__file__)]
    port_file = Path(os.environ.get("TMPDIR", "/tmp")) / f"stm-soak-sink-{os.getpid()}"
    sink = subprocess.Popen([*me, "--sink", str(port_file)])
    load: subprocess.Popen[str] | None = None
    stop_server = None
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or sink.poll() is not None:
                raise RuntimeError("the sink did not start")
            time.sleep(0.05)
        sink_url = f"http://127.0.0.1:{int(port_file.read_text())}"

        traced_mode = args.tracemalloc or args.top > 0
        if traced_mode:
            tracemalloc.start(1)
        stm.init(
            dsn=f"http://public@{sink_url[7:]}/1",
            traces_sample_rate=1.0,
            release="soak@1",
            environment="soak",
        )
        app = wsgi_app(sink_url) if args.server == "wsgi" else asgi_app(sink_url)
        base, stop_server = serve(args.server, app)

        load = subprocess.Popen(
            [
                *me,
                "--load",
                base,
                "--duration",
                str(args.duration),
                "--rate",
                str(args.rate),
                "--concurrency",
                str(args.concurrency),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        proc = psutil.Process()
        heap_key = "traced_mb" if traced_mode else "blocks"
        started = time.monotonic()
        samples: list[dict[str, float]] = []
        baseline_snapshot = None
        while True:
            elapsed = time.monotonic() - started
            if args.top and baseline_snapshot is None and elapsed >= warmup:
                baseline_snapshot = tracemalloc.take_snapshot()
            rss = proc.memory_info().rss / 2**20
            gc.collect()  # count what is still reachable, not cyclic garbage awaiting the GC
            heap = (
                round(tracemalloc.get_traced_memory()[0] / 2**20, 3)
                if traced_mode
                else sys.getallocatedblocks()
            )
            transport = stm.get_client().transport
            queued = transport.queued() if transport is not None else 0
            samples.append(
                {
                    "t": round(elapsed, 1),
                    "rss_mb": round(rss, 2),
                    heap_key: heap,
                    "queued": queued,
                }
            )
            print(
                f"[soak] t={elapsed:6.0f}s rss={rss:7.2f} MB {heap_key}={heap} queued={queued}",
                file=sys.stderr,
                flush=True,
            )
            if elapsed >= args.duration or load.poll() is not None:
                break
            time.sleep(min(args.interval, max(0.0, args.duration - elapsed)) or args.interval)
        if args.top and baseline_snapshot is not None:
            diff = tracemalloc.take_snapshot().compare_to(baseline_snapshot, "lineno")
            for stat in diff[: args.top]:
                print(f"[soak] {stat}", file=sys.stderr)
        out, _ = load.communicate(timeout=60)
        stats = json.loads(out.strip().splitlines()[-1])
        stm.flush(10)
        import urllib.request

        from sentry_tracing_mw._context import SUPPRESS_INSTRUMENTATION

        SUPPRESS_INSTRUMENTATION.set(True)
        with urllib.request.urlopen(sink_url + "/counts", timeout=10) as resp:
            counts = json.loads(resp.read())
    finally:
        if stop_server is not None:
            stop_server()
        stm.close()
        if load is not None and load.poll() is None:
            load.kill()
        sink.terminate()
        sink.wait(10)
        port_file.unlink(missing_ok=True)

    fit = [s for s in samples if s["t"] >= warmup]
    rss_slope = slope_per_min([(s["t"], s["rss_mb"]) for s in fit])
    heap_slope = slope_per_min([(s["t"], s[heap_key]) for s in fit])
    served = stats["ok"] + stats["errors_expected"]
    problems = []
    if rss_slope > args.max_rss_slope:
        problems.append(f"RSS grows {rss_slope:.3f} MB/min (> {args.max_rss_slope})")
    if traced_mode and heap_slope > args.max_traced_slope:
        problems.append(f"traced memory grows {heap_slope:.3f} MB/min (> {args.max_traced_slope})")
    if not traced_mode and heap_slope > args.max_blocks_slope:
        problems.append(
            f"allocated blocks grow {heap_slope:.0f}/min (> {args.max_blocks_slope:.0f})"
        )
    backlog = max((s["queued"] for s in fit), default=0)
    if backlog > 200:
        # Not a leak: the sender fell behind (CPU starved?), so the bounded queue filled and
        # memory followed it. The figures above then say nothing about leaks.
        problems.append(f"overloaded: the transport queue held up to {backlog} events")
    if stats["failed"]:
        problems.append(f"{stats['failed']} requests failed")
    if counts["transactions"] < served:
        problems.append(f"sink got {counts['transactions']} transactions for {served} requests")
    if counts["events"] < stats["errors_expected"]:
        problems.append(f"sink got {counts['events']} error events for {stats['errors_expected']}")
    result = {
        "server": args.server,
        "duration_s": args.duration,
        "rate_target": args.rate,
        "requests_per_s": round(stats["requests"] / max(1e-9, samples[-1]["t"]), 1),
        "load": stats,
        "sink": counts,
        "warmup_s": warmup,
        "rss_start_mb": fit[0]["rss_mb"] if fit else None,
        "rss_end_mb": samples[-1]["rss_mb"],
        "rss_slope_mb_per_min": round(rss_slope, 4),
        "heap_metric": heap_key,
        "heap_start": fit[0][heap_key] if fit else None,
        "heap_end": samples[-1][heap_key],
        "heap_slope_per_min": round(heap_slope, 4),
        "max_queued": backlog,
        "samples": samples,
        "problems": problems,
        "pass": not problems,
    }
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
