"""Request latency of a traced app while its Sentry endpoint fails (issue: faults under load).

    python benchmarks/bench_faults.py [--servers wsgi,asgi] [--requests 3000]
                                      [--concurrency 8] [--rounds 3] [--json OUT]

The traced app runs in its own process (werkzeug's threaded WSGI server, or uvicorn), the
load generator in another (keep-alive ``http.client`` clients), and the fake Sentry
(``tests/sentry_server.py``) in this one. For each round and each mode -- healthy, down
(closed port), hang (requests held), 429 (``Retry-After: 1``), 500, reset (connection reset
mid-response) -- the load runs against the app; then Sentry is healed, the app is given
time to deliver again (its transport may still be backing off) and Sentry is drained before
the next mode. The order of the modes rotates from round to round, so no mode always runs
first or right after the same neighbour. Reported per mode (median over rounds): p50 and
p99 latency, p99 relative to the healthy run (the target is within 10%), the app process's
CPU time per request (its worker thread included: what a fault costs the app, much less
noisy than a tail latency on a shared machine), the requests Sentry received during the
load and the drain after it, and errors (summed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODES = ["healthy", "down", "hang", "429", "500", "reset"]


# -- the app process ---------------------------------------------------------------------------


def serve(kind: str, dsn: str, port: int) -> None:
    import sentry_tracing_mw as stm
    from sentry_tracing_mw.integrations import asgi as generic_asgi
    from sentry_tracing_mw.integrations import wsgi as generic_wsgi

    stm.init(dsn=dsn, traces_sample_rate=1.0, instrument_http_clients=False)

    if kind == "wsgi":
        import logging

        from werkzeug.serving import make_server

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            path = environ["PATH_INFO"]
            with stm.start_span("app.work", f"render {path}"):
                body = f"served {path}\n".encode()
            start_response(
                "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
            )
            return [body]

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = make_server("127.0.0.1", port, generic_wsgi.TracingMiddleware(app), threaded=True)
        print("ready", flush=True)
        server.serve_forever()
        return

    import uvicorn

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        with stm.start_span("app.work", f"render {path}"):
            body = f"served {path}\n".encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    print("ready", flush=True)
    uvicorn.run(
        generic_asgi.TracingMiddleware(asgi_app),
        host="127.0.0.1",
        port=port,
        log_level="critical",
        lifespan="off",
        access_log=False,
    )


# -- the load process ----------------------------------------------------------------------------


def load(base: str, requests: int, concurrency: int) -> None:
    """Print JSON: latencies in ms (sorted) and the error count."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    per = requests // concurrency
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(w: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine = []
        bad = 0
        for i in range(per):
            path = f"/item/{w}/{i}"
            started = time.perf_counter()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or body != f"served {path}\n".encode():
                    bad += 1
                if resp.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException):
                bad += 1
                conn.close()
            mine.append((time.perf_counter() - started) * 1000)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"latencies": sorted(latencies), "errors": errors[0]}))


# -- orchestration (this process) --------------------------------------------------------------------


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_load(base: str, requests: int, concurrency: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--load", base, "--requests", str(requests),
         "--concurrency", str(concurrency)],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def recover(base: str, server: Any, limit: float = 90.0) -> None:
    """Request the app until Sentry gets a transaction again.

    After a fault the transport's backoff window (up to 60 s) may still be open: without
    this the next mode would start while events are still dropped unsent.
    """
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(base)
    start = len(server.received)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        try:
            conn.request("GET", "/recover")
            conn.getresponse().read()
        finally:
            conn.close()
        time.sleep(0.2)
        for rec in server.received[start:]:
            envelope = rec.envelope if rec.status == 200 else None
            if envelope is not None and any(True for _ in envelope.items_of("transaction")):
                return
    raise RuntimeError("the app did not deliver to Sentry again after the fault")


def drain(server: Any, quiet: float = 1.0, limit: float = 30.0) -> None:
    """Wait until Sentry received nothing new for ``quiet`` seconds (the app's queue is empty)."""
    deadline = time.monotonic() + limit
    last, since = len(server.received), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(server.received)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def bench_server(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    from tests.sentry_server import SentryServer
    from tests.servers import free_port

    sentry = SentryServer()
    port = free_port()
    app = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--dsn", sentry.dsn, "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    base = f"http://127.0.0.1:{port}"
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        proc = psutil.Process(app.pid)
        time.sleep(0.5)
        run_load(base, min(1000, args.requests), args.concurrency)  # warm-up
        drain(sentry)
        sentry.received.clear()
        for r in range(args.rounds):
            for mode in MODES[r % len(MODES) :] + MODES[: r % len(MODES)]:
                sentry.fault(mode)
                cpu = proc.cpu_times()
                try:
                    result = run_load(base, args.requests, args.concurrency)
                finally:
                    sentry.heal(mode)
                used = proc.cpu_times()
                drain(sentry)
                posts = len(sentry.received)
                recover(base, sentry)
                drain(sentry)
                sentry.received.clear()  # keep this process small
                lat = result["latencies"]
                cpu_s = (used.user - cpu.user) + (used.system - cpu.system)
                runs[mode].append(
                    {"p50": percentile(lat, 0.5), "p99": percentile(lat, 0.99),
                     "errors": result["errors"], "n": len(lat),
                     "cpu_us": cpu_s * 1e6 / max(1, len(lat)), "posts": posts}
                )  # fmt: skip
                print(
                    f"[{kind}] round {r + 1} {mode:8s} p50={runs[mode][-1]['p50']:.2f} ms "
                    f"p99={runs[mode][-1]['p99']:.2f} ms "
                    f"cpu={runs[mode][-1]['cpu_us']:.0f} us/req posts={posts} "
                    f"errors={result['errors']}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        app.terminate()
        try:
            app.wait(10)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(5)
        sentry.stop()
    summary: dict[str, Any] = {}
    healthy_p99 = statistics.median(x["p99"] for x in runs["healthy"])
    for mode, items in runs.items():
        p99 = statistics.median(x["p99"] for x in items)
        summary[mode] = {
            "p50_ms": round(statistics.median(x["p50"] for x in items), 3),
            "p99_ms": round(p99, 3),
            "p99_vs_healthy": round(p99 / healthy_p99, 3),
            "app_cpu_us_per_request": round(statistics.median(x["cpu_us"] for x in items), 1),
            "sentry_requests": statistics.median(x["posts"] for x in items),
            "errors": sum(x["errors"] for x in items),
            "requests": sum(x["n"] for x in items),
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="wsgi,asgi")
    parser.add_argument("--requests", type=int, default=3000, help="per mode and round")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.dsn, args.port)
        return 0
    if args.load:
        load(args.load, args.requests, args.concurrency)
        return 0

    results = {kind: bench_server(kind, args) for kind in args.servers.split(",")}
    print(
        f"{'server':6s} {'mode':8s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99/healthy':>12s} "
        f"{'CPU us/req':>11s} {'Sentry reqs':>11s} errors"
    )
    worst = 0.0
    for kind, summary in results.items():
        for mode, row in summary.items():
            print(
                f"{kind:6s} {mode:8s} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
                f"{row['p99_vs_healthy']:12.3f} {row['app_cpu_us_per_request']:11.0f} "
                f"{row['sentry_requests']:11.0f} {row['errors']}"
            )
            worst = max(worst, row["p99_vs_healthy"])
    print(f"worst p99 ratio vs healthy: {worst:.3f} (target <= 1.10)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    errors = sum(row["errors"] for s in results.values() for row in s.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
