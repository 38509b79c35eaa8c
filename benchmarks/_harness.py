"""Shared machinery of the benchmark suite.

* every measured configuration runs in a fresh interpreter (``run_child``): no import,
  patch or warm cache of one tracer leaks into another;
* configurations are run in interleaved rounds (``interleaved``), the order rotating each
  round, so a drift of the shared machine's load hits all of them alike;
* a keep-alive HTTP/1.1 server in a separate process (``Sink``) reads and discards request
  bodies: it is the Sentry endpoint of the transport and the target of outgoing calls;
* statistics (median/min/max), machine and version facts, and Markdown helpers.
"""

from __future__ import annotations

import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable

# What the suite imports; the runner checks them before starting.
REQUIRED = {
    "sentry_tracing_mw": "sentry-tracing-mw",
    "flask": "flask",
    "django": "django",
    "starlette": "starlette",
    "fastapi": "fastapi",
    "httpx": "httpx",
    "requests": "requests",
    "urllib3": "urllib3",
    "sentry_sdk": "sentry-sdk",
    "opentelemetry.sdk": "opentelemetry-sdk",
    "opentelemetry.instrumentation.flask": "opentelemetry-instrumentation-flask",
    "opentelemetry.instrumentation.django": "opentelemetry-instrumentation-django",
    "opentelemetry.instrumentation.starlette": "opentelemetry-instrumentation-starlette",
    "opentelemetry.instrumentation.fastapi": "opentelemetry-instrumentation-fastapi",
    "opentelemetry.instrumentation.requests": "opentelemetry-instrumentation-requests",
    "opentelemetry.instrumentation.urllib3": "opentelemetry-instrumentation-urllib3",
    "opentelemetry.instrumentation.httpx": "opentelemetry-instrumentation-httpx",
    "opentelemetry.exporter.otlp.proto.common": "opentelemetry-exporter-otlp-proto-common",
    "gunicorn": "gunicorn",
    "uvicorn": "uvicorn",
    "psutil": "psutil",
}

VERSIONED = (
    "sentry-tracing-mw",
    "sentry-sdk",
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-flask",
    "opentelemetry-instrumentation-django",
    "opentelemetry-instrumentation-starlette",
    "opentelemetry-instrumentation-fastapi",
    "opentelemetry-instrumentation-requests",
    "opentelemetry-instrumentation-urllib3",
    "opentelemetry-instrumentation-httpx",
    "opentelemetry-exporter-otlp-proto-common",
    "flask",
    "werkzeug",
    "django",
    "starlette",
    "fastapi",
    "requests",
    "urllib3",
    "httpx",
    "gunicorn",
    "uvicorn",
    "psutil",
)


def missing_modules() -> list[str]:
    """Distribution names whose module cannot be imported by this interpreter."""
    import importlib.util

    missing = []
    for module, dist in REQUIRED.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(dist)
    return missing


# --------------------------------------------------------------------------- sink server

# A keep-alive HTTP/1.1 server, threaded, that parses only the request head and
# Content-Length, discards the body and answers ``200 {}``. Cheap enough that the client
# side dominates what is measured.
SINK_SERVER = r"""
import socket, threading

RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

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
srv.listen(256)
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=handle, args=(conn,), daemon=True).start()
"""


class Sink:
    """The discarding server, in its own process, as a context manager."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> Sink:
        self.proc = subprocess.Popen([PY, "-c", SINK_SERVER], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(
    port: int, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


# --------------------------------------------------------------------------- children


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, HERE, os.environ.get("PYTHONPATH")])),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    for key in [k for k in env if k.startswith("SENTRY_") or k.startswith("OTEL_")]:
        env.pop(key)
    env["PYTHONHASHSEED"] = "0"
    if extra:
        env.update(extra)
    return env


def run_child(script: str, spec: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Run ``script --child JSON`` in a fresh interpreter; return the JSON it prints last."""
    proc = subprocess.run(
        [PY, os.path.join(HERE, script), "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {spec} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{script} {spec} printed nothing:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def interleaved(
    keys: Sequence[Any],
    rounds: int,
    run: Callable[[Any], dict[str, Any]],
    progress: Callable[[str], None] | None = None,
) -> dict[Any, list[dict[str, Any]]]:
    """Run every key once per round, in a new order each round. Returns key -> results.

    The order is a seeded shuffle per round (reproducible), so no configuration always runs
    next to the same neighbours or at the same point of a drifting machine's day.
    """
    out: dict[Any, list[dict[str, Any]]] = {k: [] for k in keys}
    keys = list(keys)
    shuffler = random.Random(20261122)
    for r in range(rounds):
        order = keys[:]
        shuffler.shuffle(order)
        for key in order:
            if progress is not None:
                progress(f"round {r + 1}/{rounds}: {key}")
            out[key].append(run(key))
    return out


# --------------------------------------------------------------------------- statistics


@dataclass
class Stat:
    median: float
    min: float
    max: float
    values: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        vals = list(values)
        return cls(statistics.median(vals), min(vals), max(vals), vals)

    def fmt(self, digits: int = 1) -> str:
        if len(self.values) <= 1:
            return f"{self.median:.{digits}f}"
        return f"{self.median:.{digits}f} ({self.min:.{digits}f}–{self.max:.{digits}f})"


def ratio(theirs: float, ours: float) -> str:
    """``theirs / ours`` as text; ours at or below noise level makes the ratio unbounded."""
    if ours <= 0.5:
        return f"> {theirs / 0.5:.0f}×" if theirs > 0 else "n/a"
    return f"{theirs / ours:.1f}×"


def budget_verdict(value: float, budget: float, noise: float) -> bool | None:
    """Met / missed, or None (inconclusive) when the A/A noise is as large as the margin."""
    if abs(value - budget) <= noise:
        return None
    return value <= budget


def verdict_text(met: bool | None) -> str:
    """A target's verdict as a word: met, MISSED, or inconclusive (``budget_verdict``)."""
    return "inconclusive" if met is None else ("met" if met else "MISSED")


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


# --------------------------------------------------------------------------- facts


def loadavg() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    try:
        import psutil

        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
        physical = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        mem, physical = "n/a", None
    cores = f"{os.cpu_count()} logical" + (f", {physical} physical" if physical else "")
    try:
        usable = len(os.sched_getaffinity(0))
        cores += f", {usable} usable by this process"
    except AttributeError:
        pass
    return {
        "code": code_revision(),
        "CPU": cpu_model(),
        "cores": cores,
        "memory": mem,
        "OS": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "load average at start (1/5/15 min)": loadavg(),
    }


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=10, check=True
    ).stdout.strip()


def code_revision() -> str:
    """The git commit measured, marked when the work tree had uncommitted changes."""
    try:
        head = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"commit {head}" + (" with uncommitted changes" if dirty else "")


def versions() -> dict[str, str]:
    out = {}
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


@dataclass
class Section:
    """One part of the report: Markdown text plus the target verdicts it contributes."""

    title: str
    body: str
    targets: list[tuple[str, str, bool | None]] = field(
        default_factory=list
    )  # (target, measured, met)
    seconds: float = 0.0
    load_start: str = ""
    load_end: str = ""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
