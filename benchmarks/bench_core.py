"""Core hot-path costs (foundation budgets), timeit-style, median of several runs.

    python benchmarks/bench_core.py [--quick]

Budgets on a 2-core reference machine: a sampled transaction with 3 child spans,
started, finished and turned into an event dict <= 25 µs; an unsampled transaction
<= 3 µs; parsing an incoming sentry-trace + baggage pair <= 3 µs; formatting outgoing
headers <= 3 µs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sentry_tracing_mw as stm
from sentry_tracing_mw._client import get_client
from sentry_tracing_mw._event import transaction_event
from sentry_tracing_mw._propagation import DICT_GETTER, extract, parse_dsc, parse_sentry_trace

INCOMING = {
    "sentry-trace": "771a43a4192642f0b136d5159a501700-a0cfbde2bdff3adc-1",
    "baggage": (
        "sentry-trace_id=771a43a4192642f0b136d5159a501700,"
        "sentry-public_key=49d0f7386ad645858ae85020e393bef3,sentry-sample_rate=0.5,"
        "sentry-sample_rand=0.250000,sentry-sampled=true,sentry-environment=production,"
        "sentry-release=app%401.2.3,sentry-transaction=%2Fusers%2F%7Bid%7D,sentry-org_id=42"
    ),
}


def _incoming_variants(n: int) -> list[dict[str, str]]:
    """``n`` copies of INCOMING, each with its own trace id and sample_rand."""
    rng = random.Random(1)
    out = []
    for _ in range(n):
        trace_id = f"{rng.getrandbits(128):032x}"
        rand = f"0.{rng.randrange(1_000_000):06d}"
        out.append(
            {
                "sentry-trace": trace_id + INCOMING["sentry-trace"][32:],
                "baggage": INCOMING["baggage"]
                .replace(INCOMING["sentry-trace"][:32], trace_id)
                .replace("sentry-sample_rand=0.250000", f"sentry-sample_rand={rand}"),
            }
        )
    return out


def measure(fn: Callable[[], object], number: int, repeat: int) -> tuple[float, float, float]:
    """Median, min and max microseconds per call over ``repeat`` runs of ``number`` calls."""
    runs = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return statistics.median(runs), min(runs), max(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    number, repeat = (2_000, 5) if args.quick else (20_000, 9)

    # No DSN: nothing is sent, so only the request-thread work is measured here
    # (the transport's hand-off is measured in bench_transport.py).
    stm.init(traces_sample_rate=1.0, release="app@1.2.3", instrument_http_clients=False)
    options = get_client().options

    def sampled() -> None:
        with stm.start_transaction("/users/{id}", op="http.server", source="route") as tx:
            for _ in range(3):
                with tx.start_child("db", "SELECT 1"):
                    pass
        transaction_event(tx, options)

    results = {"sampled tx + 3 spans + event dict": measure(sampled, number, repeat)}

    stm.init(traces_sample_rate=0.0, instrument_http_clients=False)

    def unsampled() -> None:
        with stm.start_transaction("/users/{id}", op="http.server", source="route"):
            pass

    results["unsampled tx"] = measure(unsampled, number, repeat)
    # Every request continues another trace: a new trace id and sample_rand each time.
    carriers = itertools.cycle(_incoming_variants(1000))

    def parse_pair() -> object:
        headers = next(carriers)
        parsed = parse_sentry_trace(headers["sentry-trace"])
        return parsed and parse_dsc(headers["baggage"], parsed.trace_id)

    results["parse sentry-trace + baggage"] = measure(parse_pair, number, repeat)
    # The whole incoming side from a header dict: four case-insensitive lookups (also
    # traceparent and tracestate), the pair parsed and the DSC sanitized.
    results["extract from a header dict"] = measure(
        lambda: extract(next(carriers), DICT_GETTER), number, repeat
    )
    # What a middleware pays per request: the baggage is kept raw until the DSC is needed
    # (an outgoing call, an envelope, an org check or a traces_sampler).
    results["parse, DSC deferred (middlewares)"] = measure(
        lambda: extract(INCOMING, DICT_GETTER, lazy=True), number, repeat
    )

    stm.init(traces_sample_rate=1.0, release="app@1.2.3", instrument_http_clients=False)
    tx = stm.start_transaction("/users/{id}", source="route")
    ctx = tx.propagation_context
    ctx.dsc()
    span_id = tx.span_id

    results["format outgoing headers"] = measure(lambda: ctx.headers(span_id), number, repeat)
    results["format outgoing headers (own baggage)"] = measure(
        lambda: ctx.headers(span_id, "app=1,other=2"), number, repeat
    )
    budgets: dict[str, float | None] = {
        "sampled tx + 3 spans + event dict": 25.0,
        "unsampled tx": 3.0,
        "parse sentry-trace + baggage": 3.0,
        "extract from a header dict": None,
        "parse, DSC deferred (middlewares)": 3.0,
        "format outgoing headers": 3.0,
        "format outgoing headers (own baggage)": 3.0,
    }
    if args.json:
        print(
            json.dumps(
                {k: {"median_us": v[0], "min_us": v[1], "max_us": v[2]} for k, v in results.items()}
            )
        )
        return
    print(f"{'benchmark':42} {'median µs':>10} {'min':>8} {'max':>8} {'budget':>7}")
    for name, (med, lo, hi) in results.items():
        budget = budgets[name]
        shown = "-" if budget is None else f"{budget:.1f}"
        print(f"{name:42} {med:10.2f} {lo:8.2f} {hi:8.2f} {shown:>7}")


if __name__ == "__main__":
    main()
