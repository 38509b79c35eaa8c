"""In-process per-request overhead: Flask, Django, Starlette, FastAPI; ours vs sentry-sdk vs OTel.

Each app is driven directly through its WSGI/ASGI callable (no sockets) with
``GET /users/<id>``; every second request carries an incoming ``sentry-trace`` + ``baggage``
whose decision matches the configuration (``-1`` for sampled runs, ``-0`` for unsampled
ones). The configurations are those of ``_apps.py``; each runs in a fresh process, in
interleaved rounds.

Per process: a warm-up, then requests in batches of 100; each request is timed on the
request thread (``perf_counter``) while the tracer's worker thread runs concurrently in the
same process; after each batch the tracer is flushed (outside the timed requests, so no
queue overflows and drops nothing). Reported per process: the median and the mean wall time
of one request (the mean includes the occasional wait for the GIL held by the worker), the
request thread's CPU per request, and the process CPU per request (every thread, flushes included: the worker's serializing,
gzipping and POSTing shows here). Across rounds: median (min–max) of those.

Then ours is measured paired with bare (``paired``): one process per framework, decision
and round builds both apps and alternates batches of them; the median over pairs of the
difference is the overhead the budgets are checked against (no process-to-process speed
difference in it). The same pairing measures the floor (``_apps.FloorMiddleware``: only a
per-request context variable, no tracing) and the A/A control (bare against bare).

    python benchmarks/bench_incoming.py [--quick] [--frameworks flask,django] [--rounds N]
    python benchmarks/bench_incoming.py --profile flask ours-1.0   # cProfile of one config
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from typing import Any

import _apps
import _harness as h

BATCH = 100
PAIRS = 30  # bare/ours batch pairs per paired process
OURS, UNSAMPLED = "ours-1.0", "ours-0.0"
#: The paired A/A control: the bare app paired with a second bare app (the noise floor).
AA = "bare"
#: The bare app under the floor layer (``_apps.FloorMiddleware``): what any tracer that keeps
#: a per-request trace context pays at least.
FLOOR = "floor"
#: The bare app under the contract's floor (``_apps.ContractFloorMiddleware``): the least an
#: unsampled request costs with what the contract obliges (headers parsed, a per-request
#: trace record current and marked, the last send cleared, a client-report count).
CONTRACT = "contract"
METRICS = ("median_us", "thread_cpu_us", "cpu_us", "mean_us")
RIVALS = {"sdk-1.0": OURS, "otel-on": OURS, "sdk-0.0": UNSAMPLED, "otel-off": UNSAMPLED}


def measure(framework: str, config: str, dsn: str, requests: int, warmup: int) -> dict[str, Any]:
    """In this process: install the configuration, run, return per-request figures."""
    app, flush = _apps.install(framework, config, dsn)
    is_sampled = _apps.sampled(config)
    perf = time.perf_counter_ns
    tcpu = time.thread_time_ns
    times: list[int] = []
    thread_cpu = [0]

    if framework in _apps.ASGI:
        loop = asyncio.new_event_loop()
        call = _apps.call_asgi

        async def batch(scopes: list[dict[str, Any]], record: bool) -> None:
            for scope in scopes:
                c0 = tcpu()
                t0 = perf()
                await call(app, scope)
                if record:
                    times.append(perf() - t0)
                    thread_cpu[0] += tcpu() - c0

        def run(n: int, record: bool) -> None:
            for start in range(0, n, BATCH):
                loop.run_until_complete(batch(_apps.asgi_scopes(BATCH, is_sampled, start), record))
                flush()

    else:
        call_wsgi = _apps.call_wsgi

        def run(n: int, record: bool) -> None:
            for start in range(0, n, BATCH):
                for env in _apps.wsgi_environs(BATCH, is_sampled, start):
                    c0 = tcpu()
                    t0 = perf()
                    call_wsgi(app, env)
                    if record:
                        times.append(perf() - t0)
                        thread_cpu[0] += tcpu() - c0
                flush()

    run(warmup, False)
    gc.collect()
    cpu0 = time.process_time()
    run(requests, True)
    cpu = time.process_time() - cpu0
    return {
        "dropped": _dropped(config),
        "median_us": statistics.median(times) / 1000,
        "mean_us": statistics.fmean(times) / 1000,
        "thread_cpu_us": thread_cpu[0] / len(times) / 1000,
        "cpu_us": cpu / len(times) * 1e6,
        "requests": len(times),
    }


def paired(framework: str, config: str, dsn: str, pairs: int, warmup: int) -> dict[str, Any]:
    """In this process: the bare app and ours side by side, in alternating batches.

    Separate processes can differ in speed for their whole life (CPU frequency, cache and
    page placement, a shared VM's neighbours), which adds noise to a difference of two
    processes' medians. Here each batch of ours is compared with the bare batch just before
    it in the same process: per pair, the difference of the median wall times and of the
    thread CPU per request; reported: the median over pairs.
    """
    import sentry_tracing_mw as stm

    is_sampled = _apps.sampled(config)
    stm.init(dsn=dsn, traces_sample_rate=1.0 if is_sampled else 0.0)
    mode = {AA: "bare", FLOOR: "floor", CONTRACT: "contract"}.get(config, "ours")
    apps = _apps.paired_apps(framework, mode)
    perf = time.perf_counter_ns
    tcpu = time.thread_time_ns

    if framework in _apps.ASGI:
        loop = asyncio.new_event_loop()
        call_asgi = _apps.call_asgi

        async def run_batch(app: Any, scopes: list[dict[str, Any]]) -> list[int]:
            times = []
            for scope in scopes:
                t0 = perf()
                await call_asgi(app, scope)
                times.append(perf() - t0)
            return times

        make_inputs = _apps.asgi_scopes

        def timed(app: Any, scopes: list[dict[str, Any]]) -> list[int]:
            return loop.run_until_complete(run_batch(app, scopes))

    else:
        call_wsgi = _apps.call_wsgi

        make_inputs = _apps.wsgi_environs

        def timed(app: Any, envs: list[dict[str, Any]]) -> list[int]:
            times = []
            for env in envs:
                t0 = perf()
                call_wsgi(app, env)
                times.append(perf() - t0)
            return times

    def batch(app: Any, start: int) -> tuple[float, float]:
        """One batch: (median wall µs, thread CPU µs) per request; flushed after."""
        inputs = make_inputs(BATCH, is_sampled, start)
        c0 = tcpu()
        times = timed(app, inputs)
        cpu = (tcpu() - c0) / BATCH / 1000
        stm.flush(30)
        return statistics.median(times) / 1000, cpu

    wall: list[float] = []
    cpu: list[float] = []
    bare_wall: list[float] = []
    for i in range(warmup + pairs):
        b = batch(apps["bare"], i * BATCH)
        o = batch(apps["ours"], i * BATCH)
        if i >= warmup:
            bare_wall.append(b[0])
            wall.append(o[0] - b[0])
            cpu.append(o[1] - b[1])
    return {
        "dropped": _dropped(config),
        "bare_us": statistics.median(bare_wall),
        "wall_over_us": statistics.median(wall),
        "cpu_over_us": statistics.median(cpu),
    }


def _dropped(config: str) -> int | None:
    """Transactions ours discarded for any reason but sampling (None for other tracers).

    A tracer that drops events unbuilt (backoff, overflow, rate limits) would look cheaper;
    the report shows this count so such a run is visible.
    """
    if not config.startswith("ours"):
        return None
    import sentry_tracing_mw as stm
    from sentry_tracing_mw._client import get_client

    stm.flush(30)
    totals = get_client().reports.snapshot()
    return sum(
        n
        for (reason, category), n in totals.items()
        if category == "transaction" and reason != "sample_rate"
    )


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("paired"):
        return paired(spec["framework"], spec["config"], spec["dsn"], spec["pairs"], 5)
    return measure(spec["framework"], spec["config"], spec["dsn"], spec["requests"], spec["warmup"])


def profile(framework: str, config: str, requests: int) -> None:
    """cProfile of one configuration (sink started here), top functions by own time."""
    import cProfile
    import pstats

    with h.Sink() as sink:
        app, flush = _apps.install(framework, config, sink.dsn)
        is_sampled = _apps.sampled(config)
        prof = cProfile.Profile()
        if framework in _apps.ASGI:
            loop = asyncio.new_event_loop()

            async def go(scopes: list[dict[str, Any]]) -> None:
                for s in scopes:
                    await _apps.call_asgi(app, s)

            loop.run_until_complete(go(_apps.asgi_scopes(500, is_sampled)))
            flush()
            scopes = _apps.asgi_scopes(requests, is_sampled)
            prof.enable()
            loop.run_until_complete(go(scopes))
            prof.disable()
        else:
            for env in _apps.wsgi_environs(500, is_sampled):
                _apps.call_wsgi(app, env)
            flush()
            envs = _apps.wsgi_environs(requests, is_sampled)
            prof.enable()
            for env in envs:
                _apps.call_wsgi(app, env)
            prof.disable()
        flush()
    stats = pstats.Stats(prof)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


def run(quick: bool, frameworks: list[str] | None = None, rounds: int | None = None) -> h.Section:
    frameworks = frameworks or list(_apps.FRAMEWORKS)
    rounds = rounds or (1 if quick else 3)
    requests, warmup = (400, 200) if quick else (3000, 500)
    load_start = h.loadavg()
    t0 = time.monotonic()
    keys = [(f, c) for f in frameworks for c in _apps.CONFIGS]
    pair_keys = [(f, c) for f in frameworks for c in (OURS, UNSAMPLED, FLOOR, CONTRACT, AA)]
    pairs = 10 if quick else PAIRS
    with h.Sink() as sink:
        results = h.interleaved(
            keys,
            rounds,
            lambda key: h.run_child(
                "bench_incoming.py",
                {
                    "framework": key[0],
                    "config": key[1],
                    "dsn": sink.dsn,
                    "requests": requests,
                    "warmup": warmup,
                },
            ),
            progress=lambda m: h.log(f"incoming {m}"),
        )
        paired_results = h.interleaved(
            pair_keys,
            rounds,
            lambda key: h.run_child(
                "bench_incoming.py",
                {
                    "paired": True,
                    "framework": key[0],
                    "config": key[1],
                    "dsn": sink.dsn,
                    "pairs": pairs,
                },
            ),
            progress=lambda m: h.log(f"incoming paired {m}"),
        )
    elapsed = time.monotonic() - t0
    return report(
        results, paired_results, frameworks, rounds, requests, warmup, load_start, elapsed
    )


def report(
    results: dict[Any, list[dict[str, Any]]],
    paired_results: dict[Any, list[dict[str, Any]]],
    frameworks: list[str],
    rounds: int,
    requests: int,
    warmup: int,
    load_start: str,
    elapsed: float,
) -> h.Section:
    parts = [
        f"{rounds} round(s) × {requests} timed requests (after {warmup} warm-up) per "
        "configuration and framework, each configuration in a fresh process, rounds interleaved. "
        "Figures: median (min–max) over rounds of each process's value. *wall*: median wall time "
        "of one request on the request thread; *thread CPU*: the request thread's CPU per request "
        "(insensitive to preemption by other processes); *process CPU*: CPU of all threads per "
        "request (the transport / exporter worker included, flushes too); *mean wall*: includes "
        "waits for the GIL held by the worker and preemption, so it is noisy on a loaded machine. "
        "Overheads are over *bare* in the same column; *ratio*: that tracer's overhead divided by "
        "ours for the same sampling decision (sampled: ours-1.0, unsampled: ours-0.0).",
    ]
    targets: list[tuple[str, str, bool | None]] = []
    summary_rows = []
    paired_rows: list[list[object]] = []
    for fw in frameworks:
        stat = {
            c: {m: h.Stat.of(r[m] for r in results[(fw, c)]) for m in METRICS}
            for c in _apps.CONFIGS
        }
        bare = stat["bare"]
        over = {c: {m: stat[c][m].median - bare[m].median for m in bare} for c in _apps.CONFIGS}
        rows = []
        for c in _apps.CONFIGS:
            cells: list[object] = [f"`{c}`"]
            for m in ("median_us", "thread_cpu_us", "cpu_us"):
                cells.append(stat[c][m].fmt())
                cells.append("" if c == "bare" else f"{over[c][m]:+.1f}")
            cells.append(stat[c]["mean_us"].fmt())
            if c in RIVALS:
                ours = RIVALS[c]
                cells.append(h.ratio(over[c]["median_us"], over[ours]["median_us"]))
                cells.append(h.ratio(over[c]["cpu_us"], over[ours]["cpu_us"]))
            else:
                cells += ["", ""]
            rows.append(cells)
        parts.append(f"### {fw}\n")
        parts.append(
            h.md_table(
                [
                    "config",
                    "wall µs",
                    "overhead",
                    "thread CPU µs",
                    "overhead",
                    "process CPU µs",
                    "overhead",
                    "mean wall µs",
                    "ratio (wall)",
                    "ratio (process CPU)",
                ],
                rows,
            )
        )
        s, u = over[OURS]["median_us"], over[UNSAMPLED]["median_us"]
        sdk, otel = over["sdk-1.0"]["median_us"], over["otel-on"]["median_us"]
        cs, csdk, cotel = over[OURS]["cpu_us"], over["sdk-1.0"]["cpu_us"], over["otel-on"]["cpu_us"]
        summary_rows.append(
            [
                fw,
                f"{bare['median_us'].median:.1f}",
                f"{s:+.1f}",
                f"{u:+.1f}",
                f"{sdk:+.1f}",
                f"{over['sdk-0.0']['median_us']:+.1f}",
                f"{otel:+.1f}",
                f"{over['otel-off']['median_us']:+.1f}",
                h.ratio(sdk, s),
                h.ratio(otel, s),
                h.ratio(csdk, cs),
                h.ratio(cotel, cs),
            ]
        )
        targets.append(
            (
                f"{fw}: sampled overhead ≤ 1/8 of sentry-sdk's (request thread, median wall)",
                f"ours {s:+.1f} µs vs sentry-sdk {sdk:+.1f} µs ({h.ratio(sdk, s)})",
                s <= sdk / 8,
            )
        )
        targets.append(
            (
                f"{fw}: sampled overhead ≤ 1/5 of OpenTelemetry's (request thread, median wall)",
                f"ours {s:+.1f} µs vs OTel {otel:+.1f} µs ({h.ratio(otel, s)})",
                s <= otel / 5,
            )
        )
        ps = statistics.median(r["wall_over_us"] for r in paired_results[(fw, OURS)])
        pu = statistics.median(r["wall_over_us"] for r in paired_results[(fw, UNSAMPLED)])
        aa = _paired_cell(paired_results[(fw, AA)], "wall_over_us")
        floor = statistics.median(r["wall_over_us"] for r in paired_results[(fw, FLOOR)])
        contract = statistics.median(r["wall_over_us"] for r in paired_results[(fw, CONTRACT)])
        noise = max(abs(r["wall_over_us"]) for r in paired_results[(fw, AA)])
        targets.append(
            (
                f"{fw}: sampled overhead ≤ 25 µs (paired with bare in one process, median)",
                f"{ps:+.1f} µs (A/A {aa})",
                h.budget_verdict(ps, 25.0, noise),
            )
        )
        targets.append(
            (
                f"{fw}: unsampled overhead ≤ 5 µs (paired with bare in one process, median)",
                f"{pu:+.1f} µs (the floor layer alone: {floor:+.1f}; the contract's floor: "
                f"{contract:+.1f}; A/A {aa})",
                h.budget_verdict(pu, 5.0, noise),
            )
        )
        paired_rows.append(
            [fw]
            + [
                _paired_cell(paired_results[(fw, c)], m)
                for c in (OURS, UNSAMPLED, FLOOR, CONTRACT, AA)
                for m in ("wall_over_us", "cpu_over_us")
            ]
            + [_paired_cell(paired_results[(fw, UNSAMPLED)], "bare_us")]
        )
        targets.append(
            (
                f"{fw}: sampled overhead ≤ 1/8 of sentry-sdk's, ≤ 1/5 of OTel's (process CPU, all threads: sending included)",
                f"ours {cs:+.1f} µs, sentry-sdk {csdk:+.1f} µs ({h.ratio(csdk, cs)}), OTel {cotel:+.1f} µs ({h.ratio(cotel, cs)})",
                cs <= csdk / 8 and cs <= cotel / 5,
            )
        )
    dropped = {
        key: sum(r.get("dropped") or 0 for r in [*runs, *paired_results.get(key, [])])
        for key, runs in results.items()
        if key[1].startswith("ours")
    }
    lost = {k: n for k, n in dropped.items() if n}
    delivery = (
        "Delivery: ours dropped no transaction in any run (client-report counters after a "
        "final flush; sampling decisions aside)."
        if not lost
        else "Delivery: ours dropped transactions in some runs, so those runs did less work: "
        + ", ".join(f"{fw} `{c}`: {n}" for (fw, c), n in sorted(lost.items()))
        + "."
    )
    summary = h.md_table(
        [
            "framework",
            "bare µs",
            "ours 1.0",
            "ours 0.0",
            "sdk 1.0",
            "sdk 0.0",
            "OTel on",
            "OTel off",
            "sdk/ours wall",
            "OTel/ours wall",
            "sdk/ours process CPU",
            "OTel/ours process CPU",
        ],
        summary_rows,
    )
    paired_table = h.md_table(
        [
            "framework",
            "ours 1.0 wall",
            "ours 1.0 thread CPU",
            "ours 0.0 wall",
            "ours 0.0 thread CPU",
            "floor wall",
            "floor thread CPU",
            "contract wall",
            "contract thread CPU",
            "A/A wall",
            "A/A thread CPU",
            "bare wall µs",
        ],
        paired_rows,
    )
    body = (
        "Summary, overhead over bare in µs per request (median wall time on the request thread), "
        "and the sampled ratios (rival's overhead / ours) on that wall time and on process CPU. "
        "The wall time is what a request waits for; process CPU adds the work of every thread, "
        "the sending of transactions included, which the request loop leaves to the flush after "
        "each batch (method notes):\n\n"
        + summary
        + "\n\n"
        + "Ours paired with bare in the same process (the budget figures): each process "
        f"builds the bare app and the traced one and runs them in alternating batches of {BATCH} "
        "requests; per pair of batches, the difference of the median wall times (and of the "
        "request thread's CPU per request); per process, the median over its pairs. Cells: "
        f"median (min–max) over {rounds} process(es). This removes the speed differences "
        "between processes (CPU placement, a shared VM's neighbours) that the "
        "cross-process figures above include; the rivals patch their frameworks globally, so "
        "they are compared in the cross-process tables only. *A/A*: the same measurement "
        "with a second bare app in place of the traced one, so nothing differs but the "
        "noise: its spread is the resolution of the figures beside it. *floor*: the bare app "
        "under a layer that does only what any tracer keeping a per-request trace context "
        "must: where ours goes, it sets a context variable to a new random trace id and resets "
        "it when the request is done (ASGI: when the app returns; WSGI: at the body's "
        "`close()`; no headers read, no sampling, no span, no wrapped `send`): the part of an "
        "overhead that no tracing code removes. *contract*: the bare app under a layer doing the least the contract makes an "
        "unsampled request cost, with none of our tracing code but the header parsing: the "
        "trace headers read and parsed (to continue the trace and learn its decision), a "
        "small record of the request's trace (no transaction object) made current and marked "
        "in the scope/environ for inner middleware, the trace context cleared around an ASGI "
        "response's last message, the request counted for client reports; no route name, "
        "request data, error capture or framework hooks (`_apps.ContractFloorMiddleware`). "
        "*bare wall µs*: the bare app's median in the ours-0.0 processes.\n\n"
        + paired_table
        + "\n\n"
        + delivery
        + "\n\n"
        + "\n\n".join(parts)
    )
    return h.Section(
        "Incoming requests, in-process", body, targets, elapsed, load_start, h.loadavg()
    )


def _paired_cell(runs: list[dict[str, Any]], metric: str) -> str:
    stat = h.Stat.of(r[metric] for r in runs)
    sign = "" if metric == "bare_us" else "+"
    return f"{stat.median:{sign}.1f} ({stat.min:{sign}.1f}–{stat.max:{sign}.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--frameworks", default=",".join(_apps.FRAMEWORKS))
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile", nargs=2, metavar=("FRAMEWORK", "CONFIG"))
    parser.add_argument("--requests", type=int, default=5000, help="with --profile")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.profile:
        profile(args.profile[0], args.profile[1], args.requests)
        return
    section = run(args.quick, args.frameworks.split(","), args.rounds)
    print(f"## {section.title}\n\n{section.body}\n")
    for target, measured, met in section.targets:
        print(f"- {h.verdict_text(met)}: {target}: {measured}")


if __name__ == "__main__":
    sys.exit(main())
