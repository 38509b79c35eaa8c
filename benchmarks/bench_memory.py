"""Memory: growth with request count, and memory held per in-flight sampled transaction.

(a) Growth. Each configuration runs in a fresh process: the app is driven through its
    WSGI/ASGI callable (as in ``bench_incoming.py``; half the requests continue a trace, the
    transport really POSTs to the sink), a warm-up of 2,000 requests, then two passes of
    50,000 requests: the first without tracemalloc reads the RSS, the second under
    tracemalloc reads the Python heap (tracemalloc's own bookkeeping would move the RSS). At
    each checkpoint (10k / 20k / 50k requests into the pass) the tracer is flushed and
    ``gc.collect()`` runs before the reading. A leak shows as growth that keeps rising with
    the count; the verdict: heap slope between the first and last checkpoint > 2 B/request,
    or RSS rising by more than 1 MiB between the last two checkpoints.
(b) Held per in-flight transaction: 300 sampled transactions, each with 10 finished child
    spans, kept open at once; tracemalloc difference divided by 300 (same for sentry-sdk;
    for OpenTelemetry, a root span with 10 ended children, as the exporter's queue drains).

    python benchmarks/bench_memory.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import _apps
import _harness as h

LEAK_BYTES_PER_REQUEST = 2.0
# RSS grows in steps (pymalloc arenas of 1 MiB, malloc heaps) and settles during the first
# tens of thousands of requests; a leak keeps rising. RSS counts as growth when it rises by
# more than one arena between the last two checkpoints.
RSS_LATE_RISE = 1 << 20


def _rss() -> int:
    import psutil

    rss: int = psutil.Process().memory_info().rss
    return rss


def growth(framework: str, config: str, dsn: str, checkpoints: list[int]) -> dict[str, Any]:
    app, flush = _apps.install(framework, config, dsn)
    is_sampled = _apps.sampled(config)
    chunk = 500
    if framework in _apps.ASGI:
        loop = asyncio.new_event_loop()

        async def go(scopes: list[dict[str, Any]]) -> None:
            for s in scopes:
                await _apps.call_asgi(app, s)

        def drive(start: int, n: int) -> None:
            for k in range(start, start + n, chunk):
                loop.run_until_complete(go(_apps.asgi_scopes(chunk, is_sampled, k)))
                flush()

    else:

        def drive(start: int, n: int) -> None:
            for k in range(start, start + n, chunk):
                for env in _apps.wsgi_environs(chunk, is_sampled, k):
                    _apps.call_wsgi(app, env)
                flush()

    drive(0, 2000)
    flush()
    gc.collect()
    t0 = time.monotonic()
    # Pass 1, RSS without tracemalloc (whose bookkeeping would move RSS itself).
    base_rss = _rss()
    done = 0
    rss_points = []
    for target in checkpoints:
        drive(2000 + done, target - done)
        done = target
        flush()
        gc.collect()
        rss_points.append(_rss() - base_rss)
    # Pass 2, the same number of requests again under tracemalloc.
    tracemalloc.start()
    base_heap = tracemalloc.get_traced_memory()[0]
    offset = 2000 + done
    done = 0
    points = []
    for target, rss in zip(checkpoints, rss_points, strict=True):
        drive(offset + done, target - done)
        done = target
        flush()
        gc.collect()
        heap = tracemalloc.get_traced_memory()[0] - base_heap
        points.append({"requests": target, "heap": heap, "rss": rss})
    top = tracemalloc.take_snapshot().statistics("lineno")[:3]
    tracemalloc.stop()
    return {
        "points": points,
        "seconds": time.monotonic() - t0,
        "top": [str(s) for s in top],
    }


def in_flight(tracer: str, dsn: str, count: int = 300) -> dict[str, Any]:
    """Bytes held per open sampled transaction with 10 finished child spans."""
    if tracer == "ours":
        import sentry_tracing_mw as stm

        stm.init(dsn=dsn, traces_sample_rate=1.0)

        def one(i: int) -> Any:
            tx = stm.start_transaction(f"/users/{{id}}#{i}", op="http.server", source="route")
            for j in range(10):
                tx.start_child("db.query", f"SELECT {j}").finish()
            return tx

    elif tracer == "sentry-sdk":
        import sentry_sdk

        sentry_sdk.init(
            dsn="http://public@127.0.0.1:9/1",
            transport=_apps.sdk_transport(),
            traces_sample_rate=1.0,
        )

        def one(i: int) -> Any:
            tx = sentry_sdk.start_transaction(
                name=f"/users/{{id}}#{i}", op="http.server", source="route"
            )
            for j in range(10):
                tx.start_child(op="db.query", name=f"SELECT {j}").finish()
            return tx

    else:
        from opentelemetry import trace as otel_trace

        provider = _apps.otel_provider(True)
        tracer_ = provider.get_tracer("bench")

        def one(i: int) -> Any:
            root = tracer_.start_span(f"/users/{{id}}#{i}", kind=otel_trace.SpanKind.SERVER)
            ctx = otel_trace.set_span_in_context(root)
            for j in range(10):
                tracer_.start_span(f"SELECT {j}", context=ctx).end()
            return root

    held = [one(i) for i in range(50)]  # warm-up: caches, interned strings
    del held
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    held = [one(i) for i in range(count)]
    gc.collect()
    per = (tracemalloc.get_traced_memory()[0] - base) / count
    tracemalloc.stop()
    del held
    return {"bytes": per}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] == "growth":
        return growth(spec["framework"], spec["config"], spec["dsn"], spec["checkpoints"])
    return in_flight(spec["tracer"], spec["dsn"])


# Ours and bare on every framework; the rivals on one WSGI and one ASGI framework (their
# sampled runs cost about 1 ms a request, so all four would add a quarter of an hour).
GROWTH_KEYS = [
    (fw, config) for fw in _apps.FRAMEWORKS for config in ("bare", "ours-1.0", "ours-0.0")
] + [
    (fw, config)
    for fw in ("flask", "fastapi")
    for config in ("sdk-1.0", "sdk-0.0", "otel-on", "otel-off")
]
QUICK_GROWTH_KEYS = [("flask", "ours-1.0")]


def _kb(n: float) -> str:
    return f"{n / 1024:+,.0f}"


def run(quick: bool) -> h.Section:
    checkpoints = [1000, 2000, 4000] if quick else [10_000, 20_000, 50_000]
    keys = QUICK_GROWTH_KEYS if quick else GROWTH_KEYS
    load_start = h.loadavg()
    t0 = time.monotonic()
    rows = []
    targets: list[tuple[str, str, bool | None]] = []
    with h.Sink() as sink:

        def measure(key: tuple[str, str]) -> dict[str, Any]:
            h.log(f"memory growth {key[0]} {key[1]}")
            return h.run_child(
                "bench_memory.py",
                {
                    "kind": "growth",
                    "framework": key[0],
                    "config": key[1],
                    "dsn": sink.dsn,
                    "checkpoints": checkpoints,
                },
                timeout=1800,
            )

        # Memory figures do not depend on timing: two configurations at a time.
        with ThreadPoolExecutor(2) as pool:
            growth_results = list(pool.map(measure, keys))
        for (fw, config), r in zip(keys, growth_results, strict=True):
            pts = r["points"]
            first, last = pts[0], pts[-1]
            span = last["requests"] - first["requests"]
            slope = (last["heap"] - first["heap"]) / span
            rss_slope = (last["rss"] - first["rss"]) / span
            late_rise = last["rss"] - pts[-2]["rss"]
            grows = slope > LEAK_BYTES_PER_REQUEST or late_rise > RSS_LATE_RISE
            rows.append(
                [fw, f"`{config}`"]
                + [f"{_kb(p['heap'])} / {_kb(p['rss'])}" for p in pts]
                + [f"{slope:+.2f} / {rss_slope:+.1f}", "**grows**" if grows else "flat"]
            )
            if config.startswith("ours"):
                targets.append(
                    (
                        f"no memory growth with request count: {fw} `{config}`",
                        f"{slope:+.2f} B/request heap, {rss_slope:+.1f} B/request RSS, "
                        f"{first['requests']:,}→{last['requests']:,} requests",
                        not grows,
                    )
                )
        flight = []
        for tracer in ("ours", "sentry-sdk", "otel"):
            h.log(f"memory in-flight {tracer}")
            flight.append(
                (
                    tracer,
                    h.run_child(
                        "bench_memory.py", {"kind": "flight", "tracer": tracer, "dsn": sink.dsn}
                    )["bytes"],
                )
            )
    elapsed = time.monotonic() - t0
    headers = (
        ["framework", "config"]
        + [f"{c:,} req: heap / RSS KiB" for c in checkpoints]
        + ["B/request: heap / RSS", "verdict"]
    )
    body = (
        "(a) Growth after a 2,000-request warm-up, each configuration in a fresh process (two at a "
        "time: memory does not depend on timing), driven "
        "in-process as in the incoming benchmark; the tracer is flushed and `gc.collect()` runs "
        "before each reading. RSS: a first pass without tracemalloc, minus the RSS after the "
        "warm-up (it moves in allocator-arena steps, so a few hundred KiB either way is noise); "
        "heap: a second pass of as many requests under tracemalloc, current traced memory minus "
        "the value when tracing started. *B/request*: slopes between the first and last "
        f"checkpoint. *Grows* when the heap slope exceeds {LEAK_BYTES_PER_REQUEST:g} B/request or the "
        "RSS rises by more than 1 MiB (one pymalloc arena) between the last two checkpoints: RSS "
        "moves in arena steps and settles over the first tens of thousands of requests, while a "
        "leak keeps rising.\n\n"
        + h.md_table(headers, rows)
        + "\n\n(b) Memory held per in-flight sampled transaction with 10 finished child spans "
        "(300 held open at once, tracemalloc; OpenTelemetry: a recording root span with 10 ended "
        "children, which wait in the BatchSpanProcessor's queue until its next export):\n\n"
        + h.md_table(
            ["tracer", "bytes per open transaction"], [(t, f"{b:,.0f}") for t, b in flight]
        )
    )
    return h.Section("Memory", body, targets, elapsed, load_start, h.loadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    section = run(args.quick)
    print(f"## {section.title}\n\n{section.body}\n")
    for target, measured, met in section.targets:
        print(f"- {h.verdict_text(met)}: {target}: {measured}")


if __name__ == "__main__":
    sys.exit(main())
