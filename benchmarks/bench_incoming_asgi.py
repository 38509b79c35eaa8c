"""Incoming-request overhead for Starlette and FastAPI, driven through the ASGI callable.

No sockets on the request path: one asyncio loop calls ``await app(scope, receive, send)``
with a minimal scope for ``GET /users/{id}``; half of the requests carry incoming
``sentry-trace`` + ``baggage``. Configurations, each in a fresh subprocess:

* ``bare``: no instrumentation;
* ``ours-1.0`` / ``ours-0.0``: our middleware, sample rate 1.0 / 0.0; the DSN points at a
  local discarding HTTP server (another subprocess), so sampled transactions really go
  through the transport; incoming headers carry the matching decision;
* ``sdk-1.0`` / ``sdk-0.0``: sentry-sdk's Starlette/FastAPI integrations with a transport
  that serializes each envelope and discards it.

Reports the median µs per request and the overhead over bare. Budget: sampled <= 25 µs,
unsampled <= 5 µs above bare.

Run: ``python benchmarks/bench_incoming_asgi.py [--requests 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

CONFIGS = ("bare", "ours-1.0", "ours-0.0", "sdk-1.0", "sdk-0.0")
FRAMEWORKS = ("starlette", "fastapi")
TRACE = "771a43a4192642f0b136d5159a501700"
PARENT = "b0e6f15b45c36b12"


def build_app(framework: str) -> Any:
    if framework == "starlette":
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, Response
        from starlette.routing import Route

        async def user(request: Request) -> Response:
            return PlainTextResponse(request.path_params["id"])

        return Starlette(routes=[Route("/users/{id}", user)])
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse as FastText

    app = FastAPI()

    @app.get("/users/{id}", response_class=FastText)
    async def get_user(id: str) -> str:
        return id

    return app


def setup(framework: str, config: str, dsn: str) -> Any:
    app = build_app(framework)
    if config.startswith("ours"):
        import sentry_tracing_mw as stm
        from sentry_tracing_mw.integrations.starlette import TracingMiddleware

        stm.init(dsn=dsn, traces_sample_rate=float(config[5:]), instrument_http_clients=False)
        app.add_middleware(TracingMiddleware)
    elif config.startswith("sdk"):
        import sentry_sdk
        from sentry_sdk.integrations.fastapi import FastApiIntegration
        from sentry_sdk.integrations.starlette import StarletteIntegration
        from sentry_sdk.transport import Transport

        class Discard(Transport):
            def capture_envelope(self, envelope: Any) -> None:
                envelope.serialize()

        sentry_sdk.init(
            dsn="http://0123456789abcdef0123456789abcdef@127.0.0.1:9/1",
            traces_sample_rate=float(config[4:]),
            transport=Discard,
            default_integrations=False,
            auto_enabling_integrations=False,
            integrations=[StarletteIntegration(), FastApiIntegration()],
        )
    return app


async def drive(app: Any, n: int, sampled: bool) -> list[int]:
    flag = b"1" if sampled else b"0"
    base_headers = [(b"host", b"bench"), (b"user-agent", b"bench/1"), (b"accept", b"*/*")]
    incoming = [
        *base_headers,
        (b"sentry-trace", f"{TRACE}-{PARENT}-".encode() + flag),
        (
            b"baggage",
            f"sentry-trace_id={TRACE},sentry-public_key=0123456789abcdef0123456789abcdef,"
            f"sentry-sample_rate={'1.0' if sampled else '0.0'},sentry-sample_rand=0.5,"
            f"sentry-sampled={'true' if sampled else 'false'},sentry-environment=prod".encode(),
        ),
    ]
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def send(message: dict[str, Any]) -> None:
        pass

    times: list[int] = []
    perf = time.perf_counter_ns
    for i in range(n):
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": f"/users/{i % 100}",
            "raw_path": b"/users/1",
            "query_string": b"",
            "root_path": "",
            "headers": incoming if i % 2 else base_headers,
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
        }
        t0 = perf()
        await app(scope, receive, send)
        times.append(perf() - t0)
    return times


def worker(framework: str, config: str, n: int, dsn: str) -> None:
    app = setup(framework, config, dsn)
    sampled = config.endswith("1.0") or config == "bare"

    async def main() -> list[int]:
        await drive(app, 2000, sampled)  # warm-up (builds the middleware stack)
        gc.collect()
        return await drive(app, n, sampled)

    times = asyncio.run(main())
    print(json.dumps({"median_us": statistics.median(times) / 1000}))


def start_discard_server() -> tuple[subprocess.Popen[str], int]:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from bench_transport import DISCARD_SERVER

    proc = subprocess.Popen(
        [sys.executable, "-c", DISCARD_SERVER], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CONFIG"))
    parser.add_argument("--dsn", default="")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.requests, args.dsn)
        return
    server, port = start_discard_server()
    dsn = f"http://public@127.0.0.1:{port}/1"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        for framework in FRAMEWORKS:
            results: dict[str, float] = {}
            for config in CONFIGS:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        framework,
                        config,
                        "--requests",
                        str(args.requests),
                        "--dsn",
                        dsn,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=root,
                    env={**os.environ, "PYTHONPATH": root},
                )
                results[config] = json.loads(out.stdout.strip().splitlines()[-1])["median_us"]
            bare = results["bare"]
            print(f"\n{framework} (median µs per request, {args.requests} requests)")
            for config in CONFIGS:
                extra = "" if config == "bare" else f"  (+{results[config] - bare:.1f})"
                print(f"  {config:10s} {results[config]:8.1f}{extra}")
    finally:
        server.kill()
        server.wait(5)


if __name__ == "__main__":
    main()
