"""atheris (libFuzzer) target for everything that parses bytes from the network.

Input layout: the first byte picks the parser, the rest is split on ``\\n`` into fields
(decoded as latin-1, as a server hands header bytes to a WSGI app). Targets:

0. ``extract`` with the dict getter    1. ``extract`` with the WSGI getter
2. ``extract`` with the ASGI getter    3. ``parse_baggage`` + ``format_baggage``
4. ``parse_tracestate``                5. ``parse_traceparent``
6. ``parse_sentry_trace``              7. ``parse_envelope`` (+ ``decode_body``)
8. rate limits (``X-Sentry-Rate-Limits`` / ``Retry-After``)
9. a whole hop: ``extract`` -> ``continue_trace`` -> DSC and outgoing headers

Besides "never raises", each target checks invariants (a DSC with string values and a valid
trace id, ``sample_rand`` with 6 decimals or a plain decimal kept as received, outgoing
headers that parse back, rate limits that are finite and never shrink); a violation raises
``AssertionError`` = a crash.

Run (see fuzz/README.md)::

    python fuzz/fuzz_headers.py -max_total_time=600 -print_final_stats=1 fuzz/corpus
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import atheris

with atheris.instrument_imports(include=["sentry_tracing_mw"]):
    from sentry_tracing_mw import _propagation as prop
    from sentry_tracing_mw._client import Client
    from sentry_tracing_mw._envelope import EnvelopeError, decode_body, parse_envelope
    from sentry_tracing_mw._options import build_options
    from sentry_tracing_mw._ratelimits import ALL, KNOWN_CATEGORIES, RateLimits, parse_rate_limits

HEADERS = ("sentry-trace", "traceparent", "tracestate", "baggage")
_HEX32 = re.compile(r"[0-9a-f]{32}")
# 6 decimals when we made or reformatted it; a plain decimal from upstream stays as received
_RAND = re.compile(r"0\.[0-9]{1,24}")
_CLIENT = Client(
    build_options(
        dsn="http://0123456789abcdef0123456789abcdef@127.0.0.1:9/1",
        traces_sample_rate=0.5,
        instrument_http_clients=False,
        send_client_reports=False,
    )
)


def _fields(data: bytes, n: int) -> list[str]:
    parts = data.split(b"\n", n - 1)
    parts += [b""] * (n - len(parts))
    return [p.decode("latin-1") for p in parts]


def _check_dsc(dsc: dict[str, str] | None, trace_id: str) -> None:
    if dsc is None:
        return
    assert all(type(k) is str and type(v) is str for k, v in dsc.items()), dsc
    assert dsc.get("trace_id") == trace_id, (dsc, trace_id)
    rand = dsc.get("sample_rand")
    assert rand is None or _RAND.fullmatch(rand), dsc
    rate = dsc.get("sample_rate")
    assert rate is None or 0.0 <= float(rate) <= 1.0, dsc
    assert dsc.get("sampled") in (None, "true", "false"), dsc


def _check_incoming(result: prop.IncomingTrace | None) -> None:
    if result is None:
        return
    assert _HEX32.fullmatch(result.trace_id) and result.trace_id != "0" * 32
    _check_dsc(result.dsc, result.trace_id)
    if result.tracestate is not None:
        assert prop.parse_tracestate(result.tracestate) == result.tracestate


def _extract(fields: list[str], how: int) -> prop.IncomingTrace | None:
    if how == 0:
        return prop.extract(dict(zip(HEADERS, fields, strict=True)))
    if how == 1:
        environ = {
            "HTTP_" + h.upper().replace("-", "_"): v for h, v in zip(HEADERS, fields, strict=True)
        }
        return prop.extract(environ, prop.WSGI_GETTER)
    scope: dict[str, Any] = {"headers": []}
    for name, value in zip(HEADERS, fields, strict=True):
        for part in value.split("\r"):  # CR: a repeated header line
            scope["headers"].append((name.encode(), part.encode("latin-1")))
    return prop.extract(scope, prop.ASGI_GETTER)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target, body = data[0] % 10, data[1:]
    if target <= 2:
        _check_incoming(_extract(_fields(body, 4), target))
    elif target == 3:
        own, value = _fields(body, 2)
        bag = prop.parse_baggage(value)
        header = prop.format_baggage(bag.sentry, own=own, forwarded=bag.third_party)
        assert prop.format_baggage(bag.sentry, own=header, forwarded=bag.third_party) == header
        assert (
            prop.parse_baggage(header).sentry
            == prop.parse_baggage(prop.format_baggage(bag.sentry)).sentry
        )
    elif target == 4:
        state = prop.parse_tracestate(body.decode("latin-1"))
        assert state is None or prop.parse_tracestate(state) == state
    elif target == 5:
        tp = prop.parse_traceparent(body.decode("latin-1"))
        if tp is not None:
            out = prop.format_traceparent(tp.trace_id, tp.parent_id, tp.sampled, tp.random)
            assert prop.parse_traceparent(out) == tp
    elif target == 6:
        st = prop.parse_sentry_trace(body.decode("latin-1"))
        if st is not None:
            assert prop.parse_sentry_trace(prop.format_sentry_trace(*st)) == st
    elif target == 7:
        for encoding in (None, "gzip", "deflate"):
            try:
                raw = decode_body(body, encoding, 1 << 20)
                env = parse_envelope(raw)
            except EnvelopeError:
                continue
            again = parse_envelope(env.serialize())
            assert again.headers == env.headers and len(again.items) == len(env.items)
    elif target == 8:
        header, retry = _fields(body, 2)
        for seconds, cats in parse_rate_limits(header):
            assert math.isfinite(seconds) and seconds >= 0
            assert cats and cats <= KNOWN_CATEGORIES | {ALL}
        limits = RateLimits()
        limits.update_from_response(429, {"Retry-After": retry}, 100.0)
        before = limits.snapshot()
        limits.update_from_response(200, {"x-sentry-rate-limits": header}, 100.0)
        after = limits.snapshot()
        assert all(after.get(k, 0.0) >= v for k, v in before.items())
        assert all(math.isfinite(v) for v in after.values())
    else:
        incoming = _extract(_fields(body, 4), 0)
        ctx = _CLIENT.continue_trace(incoming)
        dsc = ctx.dsc()
        _check_dsc(dsc, ctx.trace_id)
        if {"sample_rate", "sample_rand", "sampled"} <= dsc.keys():
            rand, rate = float(dsc["sample_rand"]), float(dsc["sample_rate"])
            assert (rand < rate) is (dsc["sampled"] == "true"), dsc
        out = ctx.headers("b7ad6b7169203331")
        again = prop.extract(out)
        assert again is not None and again.trace_id == ctx.trace_id
        if prop.sentry_part(dsc)[1] == len(dsc):
            assert again.dsc == dsc
        else:  # too big for one header: a part of it goes on, never other values
            assert again.dsc is not None and again.dsc.items() <= dsc.items()


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
