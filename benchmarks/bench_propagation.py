"""Micro-benchmark of the trace header codec: prints the median time per call in µs."""

from __future__ import annotations

import statistics
import timeit

from sentry_tracing_mw._propagation import (
    DICT_GETTER,
    extract,
    format_baggage,
    format_sentry_trace,
    format_traceparent,
)

TRACE_ID = "771a43a4192642f0b136d5159a501700"
SPAN_ID = "b136d5159a501700"
BAGGAGE = (
    "sentry-trace_id=771a43a4192642f0b136d5159a501700,"
    "sentry-public_key=49d0f7386ad645858ae85020e393bef3,sentry-sample_rate=0.5,"
    "sentry-sample_rand=0.250000,sentry-sampled=true,sentry-environment=production,"
    "sentry-release=app%401.2.3,sentry-transaction=%2Fusers%2F%7Bid%7D,sentry-org_id=42"
)
CARRIER = {"sentry-trace": f"{TRACE_ID}-{SPAN_ID}-1", "baggage": BAGGAGE}
CARRIER_WITH_HEADERS = {
    "host": "example.com",
    "user-agent": "bench/1.0",
    "accept": "*/*",
    "accept-encoding": "gzip",
    "content-type": "application/json",
    "content-length": "42",
    "connection": "keep-alive",
    "x-request-id": "abc",
    **CARRIER,
}
DSC = {
    "trace_id": TRACE_ID,
    "public_key": "49d0f7386ad645858ae85020e393bef3",
    "sample_rate": "0.5",
    "sample_rand": "0.250000",
    "sampled": "true",
    "environment": "production",
    "release": "app@1.2.3",
    "transaction": "/users/{id}",
    "org_id": "42",
}


def parse_pair() -> object:
    return extract(CARRIER, DICT_GETTER)


def parse_pair_many_headers() -> object:
    return extract(CARRIER_WITH_HEADERS, DICT_GETTER)


def format_outgoing() -> object:
    return (
        format_sentry_trace(TRACE_ID, SPAN_ID, True),
        format_traceparent(TRACE_ID, SPAN_ID, True, True),
        format_baggage(DSC),
    )


def format_outgoing_merge() -> object:
    return (
        format_sentry_trace(TRACE_ID, SPAN_ID, True),
        format_traceparent(TRACE_ID, SPAN_ID, True, True),
        format_baggage(DSC, own="app=1", forwarded=("vendor=2",)),
    )


def median_us(fn: object, number: int = 20_000, repeat: int = 15) -> float:
    times = timeit.repeat(fn, number=number, repeat=repeat)  # type: ignore[arg-type]
    return statistics.median(times) / number * 1e6


def main() -> None:
    assert parse_pair() is not None
    for name, fn in [
        ("extract sentry-trace + baggage (dict carrier, 2 headers)", parse_pair),
        ("extract sentry-trace + baggage (dict carrier, 10 headers)", parse_pair_many_headers),
        ("format sentry-trace + traceparent + baggage (9-member DSC)", format_outgoing),
        ("same, merged with an app member and a forwarded member", format_outgoing_merge),
    ]:
        print(f"{median_us(fn):7.2f} µs  {name}")


if __name__ == "__main__":
    main()
