"""Incoming-request overhead of the Flask/WSGI integration, next to sentry-sdk.

A Flask app with ``/users/<int:user_id>`` is driven through its WSGI callable with a
minimal environ; half of the requests carry an incoming ``sentry-trace`` + ``baggage``
(whose decision matches the configuration, so "unsampled" really is unsampled). Each
configuration runs in a fresh subprocess:

- ``bare``: the app alone
- ``ours-1.0`` / ``ours-0.0``: ``FlaskTracing``, DSN pointing at a local discarding HTTP
  server, so sampled transactions are really serialized, gzipped and POSTed
- ``sdk-1.0`` / ``sdk-0.0``: ``sentry-sdk`` with its Flask integration and a transport that
  serializes and gzips on a worker thread, then discards

Requests run in batches; after each batch the client is flushed (untimed), so nothing is
dropped by a full queue. Reported per configuration: the median latency of one request on
the request thread (the transport worker runs concurrently) and the process CPU per request
(every thread, so serialization/gzip/POST on the worker counts), each with its overhead vs
bare, as the median over interleaved rounds.

Run: ``python benchmarks/bench_incoming_wsgi.py [--requests 6000] [--rounds 3]``.
Budget: ours sampled <= 25 µs, unsampled <= 5 µs above bare.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = ("bare", "ours-1.0", "ours-0.0", "sdk-1.0", "sdk-0.0")
BATCH = 50

# A keep-alive HTTP/1.1 sink that reads and discards each request body.
DISCARD_SERVER = r"""
import socket, threading

RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

def handle(conn):
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
srv.listen(64)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""


def make_app() -> Any:
    """The benchmark Flask app."""
    from flask import Flask

    app = Flask("bench")

    @app.route("/users/<int:user_id>")
    def get_user(user_id: int) -> str:
        return "user"

    return app


def environs(n: int, sampled: bool) -> list[dict[str, Any]]:
    """``n`` fresh environs; every second one continues an incoming trace."""
    flag = "1" if sampled else "0"
    base = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/users/42",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench",
        "HTTP_ACCEPT": "*/*",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    out = []
    for i in range(n):
        env = dict(base)
        env["wsgi.input"] = io.BytesIO()
        if i % 2:
            trace_id = uuid.uuid4().hex
            env["HTTP_SENTRY_TRACE"] = f"{trace_id}-{uuid.uuid4().hex[:16]}-{flag}"
            env["HTTP_BAGGAGE"] = (
                f"sentry-trace_id={trace_id},sentry-public_key=public,"
                f"sentry-sample_rate={'1.0' if sampled else '0.0'},sentry-sample_rand=0.5,"
                f"sentry-sampled={'true' if sampled else 'false'},"
                "sentry-environment=production,sentry-transaction=upstream"
            )
        out.append(env)
    return out


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def _sdk_transport() -> Any:
    import gzip
    import queue
    import threading

    from sentry_sdk.transport import Transport

    class SerializeAndDiscard(Transport):
        """Like sentry-sdk's HTTP transport minus the network: work on a worker thread."""

        def __init__(self, options: Any = None) -> None:
            super().__init__(options)
            self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
            self.pending = 0
            self.cond = threading.Condition()
            threading.Thread(target=self._run, daemon=True).start()

        def _run(self) -> None:
            while True:
                envelope = self.queue.get()
                buf = io.BytesIO()
                envelope.serialize_into(buf)
                gzip.compress(buf.getvalue(), 1)
                with self.cond:
                    self.pending -= 1
                    self.cond.notify_all()

        def capture_envelope(self, envelope: Any) -> None:
            with self.cond:
                self.pending += 1
            self.queue.put(envelope)

        def flush(self, timeout: float, callback: Any = None) -> None:
            with self.cond:
                self.cond.wait_for(lambda: self.pending == 0, timeout)

    return SerializeAndDiscard


def child(config: str, port: int, n: int) -> dict[str, Any]:
    """Run one configuration in this (fresh) process."""
    app = make_app()
    flush: Callable[[], object] = lambda: None  # noqa: E731
    sampled = config.endswith("1.0")
    if config.startswith("ours"):
        import sentry_tracing_mw as stm
        from sentry_tracing_mw.integrations.flask import FlaskTracing

        FlaskTracing(
            app,
            dsn=f"http://public@127.0.0.1:{port}/1",
            traces_sample_rate=1.0 if sampled else 0.0,
            instrument_http_clients=False,
        )
        flush = lambda: stm.flush(10)  # noqa: E731
    elif config.startswith("sdk"):
        import sentry_sdk
        from sentry_sdk.integrations.flask import FlaskIntegration

        sentry_sdk.init(
            dsn="http://public@127.0.0.1:9/1",
            transport=_sdk_transport(),
            traces_sample_rate=1.0 if sampled else 0.0,
            integrations=[FlaskIntegration(transaction_style="url")],
        )
        flush = lambda: sentry_sdk.flush(10)  # noqa: E731

    def run(n: int, times: list[float] | None) -> None:
        # Environs are built per batch (untimed) and dropped after it, as a server would:
        # keeping thousands of finished requests alive would measure heap growth instead.
        perf = time.perf_counter
        for _ in range(0, n, BATCH):
            for env in environs(BATCH, sampled):
                t0 = perf()
                result: Iterable[bytes] = app(env, _start_response)
                for _ in result:
                    pass
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                if times is not None:
                    times.append(perf() - t0)
            flush()

    run(500, None)  # warm-up
    times: list[float] = []
    cpu = time.process_time()
    run(n, times)
    cpu = time.process_time() - cpu  # every thread of this process: the workers too
    return {"median_us": statistics.median(times) * 1e6, "cpu_us": cpu / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.port, args.requests)))
        return

    sink = subprocess.Popen(
        [sys.executable, "-c", DISCARD_SERVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        results: dict[str, list[float]] = {c: [] for c in CONFIGS}
        cpu: dict[str, list[float]] = {c: [] for c in CONFIGS}
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        for _ in range(args.rounds):
            for config in CONFIGS:  # interleaved, so drifts hit every configuration alike
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        config,
                        "--port",
                        str(port),
                        "--requests",
                        str(args.requests),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=300,
                    check=True,
                )
                data = json.loads(out.stdout.strip().splitlines()[-1])
                results[config].append(data["median_us"])
                cpu[config].append(data["cpu_us"])
    finally:
        sink.kill()
        sink.wait()

    bare = statistics.median(results["bare"])
    bare_cpu = statistics.median(cpu["bare"])
    print(
        f"{'config':<10} {'median µs/req':>14} {'overhead':>9} {'CPU µs/req':>11} "
        f"{'overhead':>9}   rounds (median µs/req)"
    )
    for config in CONFIGS:
        med = statistics.median(results[config])
        med_cpu = statistics.median(cpu[config])
        rounds = ", ".join(f"{v:.1f}" for v in results[config])
        over = "" if config == "bare" else f"{med - bare:+.1f}"
        over_cpu = "" if config == "bare" else f"{med_cpu - bare_cpu:+.1f}"
        print(f"{config:<10} {med:>14.1f} {over:>9} {med_cpu:>11.1f} {over_cpu:>9}   [{rounds}]")
    print(
        "median: latency of one request on the request thread (workers run concurrently);"
        "\nCPU: process CPU per request incl. the transport worker (serialize/gzip/post)."
    )


if __name__ == "__main__":
    main()
