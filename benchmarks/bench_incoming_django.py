"""Per-request overhead of the Django integration, in-process, next to sentry-sdk.

A Django app (route ``/users/<int:id>/``) is called through Django's WSGI handler with
prepared environs; half the requests carry an incoming ``sentry-trace`` + ``baggage``.
Each configuration runs in a fresh subprocess:

* ``bare``: no tracing at all
* ``ours-1.0`` / ``ours-0.0``: our middleware first in MIDDLEWARE, DSN pointing at a local
  HTTP server (another subprocess) that reads envelopes and discards them
* ``sdk-1.0`` / ``sdk-0.0``: sentry-sdk's DjangoIntegration with a transport that serializes
  each envelope and discards it

Half the requests carry an incoming trace whose decision matches the configuration (sampled
for the 1.0 runs, not sampled for the 0.0 runs), so ``0.0`` measures the unsampled path.
Configurations run round-robin in several passes; prints the median (over passes) of the
per-pass median µs per request, the best round, and the overhead over bare. Budget: sampled <= 25 µs,
unsampled <= 5 µs above bare.

    .venv/bin/python benchmarks/bench_incoming_django.py [--rounds 15] [--per-round 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

CONFIGS = ["bare", "ours-1.0", "ours-0.0", "sdk-1.0", "sdk-0.0"]
TRACE_ID = "771a43a4192642f0b136d5159a501700"

# -- the app (this module is also the URLconf) ------------------------------------------

urlpatterns: list[Any] = []


def _view(request: Any, id: int) -> Any:
    from django.http import HttpResponse

    return HttpResponse(b"user")


def _configure(middleware: list[str]) -> None:
    import django
    from django.conf import settings
    from django.urls import path

    urlpatterns.append(path("users/<int:id>/", _view))
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=middleware,
        INSTALLED_APPS=[],
        DATABASES={},
        USE_I18N=False,
        USE_TZ=True,
    )
    django.setup()


def _environs(sampled: bool) -> list[dict[str, Any]]:
    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_ACCEPT": "*/*",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    out = []
    for i in range(2):
        env = dict(base, PATH_INFO=f"/users/{i + 1}/")
        if i % 2:
            flag, rate, word = ("1", "1.0", "true") if sampled else ("0", "0.0", "false")
            env["HTTP_SENTRY_TRACE"] = f"{TRACE_ID}-b7ad6b7169203331-{flag}"
            env["HTTP_BAGGAGE"] = (
                f"sentry-trace_id={TRACE_ID},sentry-public_key=public,sentry-sample_rate={rate},"
                f"sentry-sample_rand=0.5,sentry-sampled={word},sentry-environment=prod"
            )
        out.append(env)
    return out


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def _child(config: str, dsn: str, rounds: int, per_round: int) -> None:
    import io

    ours = config.startswith("ours")
    middleware = ["sentry_tracing_mw.integrations.django.TracingMiddleware"] if ours else []
    rate = float(config.split("-")[1]) if "-" in config else 0.0
    if ours:
        import sentry_tracing_mw as stm

        stm.init(dsn=dsn, traces_sample_rate=rate)
    elif config.startswith("sdk"):
        import sentry_sdk
        from sentry_sdk.integrations.django import DjangoIntegration
        from sentry_sdk.transport import Transport

        class Serialize(Transport):
            def capture_envelope(self, envelope: Any) -> None:
                envelope.serialize()

            def flush(self, timeout: float, callback: Any = None) -> None:
                pass

        sentry_sdk.init(
            dsn="http://public@127.0.0.1:9/1",
            transport=Serialize,
            traces_sample_rate=rate,
            integrations=[DjangoIntegration()],
        )
    _configure(middleware)
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    environs = _environs(rate > 0)

    def run(n: int) -> float:
        start = time.perf_counter()
        for i in range(n):
            env = dict(environs[i & 1])
            env["wsgi.input"] = io.BytesIO(b"")
            result = app(env, _start_response)
            for _ in result:
                pass
            result.close()
        return (time.perf_counter() - start) / n * 1e6

    run(per_round)  # warm-up
    samples = [run(per_round) for _ in range(rounds)]
    if ours:
        import sentry_tracing_mw as stm

        stm.flush(10)
    print(
        json.dumps(
            {"config": config, "median_us": statistics.median(samples), "min_us": min(samples)}
        )
    )


_SINK = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_port, flush=True)
server.serve_forever()
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=2000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.dsn, args.rounds, args.per_round)
        return
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        dsn = f"http://public@127.0.0.1:{port}/1"
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": root}
        env.pop("DJANGO_SETTINGS_MODULE", None)
        medians: dict[str, list[float]] = {}
        mins: dict[str, list[float]] = {}
        for _ in range(args.passes):  # round-robin passes: load drift hits every config
            for config in CONFIGS:
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        config,
                        "--dsn",
                        dsn,
                        "--rounds",
                        str(args.rounds),
                        "--per-round",
                        str(args.per_round),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=600,
                )
                if proc.returncode != 0:
                    print(f"{config}: failed\n{proc.stderr}", file=sys.stderr)
                    continue
                out = json.loads(proc.stdout.strip().splitlines()[-1])
                medians.setdefault(config, []).append(out["median_us"])
                mins.setdefault(config, []).append(out["min_us"])
        results = {c: statistics.median(v) for c, v in medians.items()}
        best = {c: min(v) for c, v in mins.items()}
    finally:
        sink.terminate()
        sink.wait(5)
    bare = results.get("bare", 0.0)
    bare_min = best.get("bare", 0.0)
    print(f"{'config':<10} {'median µs':>10} {'overhead':>9} {'min µs':>8} {'overhead':>9}")
    for config in CONFIGS:
        if config in results:
            value, low = results[config], best[config]
            print(
                f"{config:<10} {value:>10.1f} {value - bare:>9.1f} {low:>8.1f} "
                f"{low - bare_min:>9.1f}"
            )
    if "ours-1.0" in results and "ours-0.0" in results:
        sampled = results["ours-1.0"] - bare
        unsampled = results["ours-0.0"] - bare
        print(
            f"budget: sampled {sampled:.1f} <= 25 µs: {'ok' if sampled <= 25 else 'OVER'}; "
            f"unsampled {unsampled:.1f} <= 5 µs: {'ok' if unsampled <= 5 else 'OVER'}"
        )


if __name__ == "__main__":
    main()
