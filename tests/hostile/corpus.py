"""A named corpus of adversarial trace-header requests (issue 8, "Hostile input").

Every :class:`Case` is one HTTP request's header lines as raw bytes (names as sent, in
order, repeats kept), plus an optional raw query string. Cases are generated from small
tables so that each one has a stable, readable name (``baggage/sample_rate_nan``,
``sentry-trace/huge_1mib``, ``combo/all_huge``...). The same corpus runs in-process through
every integration's WSGI/ASGI callable and, over raw sockets, through real servers.

``wire=False`` marks cases that cannot be written verbatim on an HTTP/1.1 connection (a CR
or LF inside a value would change the framing); they only run in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["CASES", "HUGE", "Case", "by_name"]

TID = "771a43a4192642f0b136d5159a501700"
SID = "b7ad6b7169203331"
TID2 = "0af7651916cd43dd8448eb211c80319c"
SID2 = "00f067aa0ba902b7"
MIB = 1 << 20

ST = b"sentry-trace"
TP = b"traceparent"
TS = b"tracestate"
BG = b"baggage"

VALID_ST = f"{TID}-{SID}-1".encode()
VALID_ST_UNSAMPLED = f"{TID}-{SID}-0".encode()
VALID_ST_DEFERRED = f"{TID}-{SID}".encode()
VALID_TP = f"00-{TID}-{SID}-01".encode()
VALID_TS = b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
VALID_BG = (
    f"other=1,sentry-trace_id={TID},sentry-public_key=49d0f7386ad645858ae85020e393bef3,"
    "sentry-sample_rate=0.5,sentry-sample_rand=0.250000,sentry-sampled=true,"
    "sentry-environment=prod,sentry-release=app%401.0"
).encode()


@dataclass(frozen=True)
class Case:
    """One adversarial request: raw header lines (+ query) and where it can run."""

    name: str
    headers: tuple[tuple[bytes, bytes], ...]
    query: bytes = b""
    wire: bool = True
    #: Extra WSGI environ entries (str values outside PEP 3333's latin-1), in-process only.
    environ_extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def size(self) -> int:
        return sum(len(k) + len(v) for k, v in self.headers) + len(self.query)

    @property
    def huge(self) -> bool:
        """Over 64 KiB of headers or more than 1,000 lines (stock server limits reject it)."""
        return self.size > 65536 or len(self.headers) > 1000

    def environ(self) -> dict[str, str]:
        """The ``HTTP_*`` environ entries a PEP 3333 server would make (repeats joined)."""
        env: dict[str, str] = {}
        for name, value in self.headers:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            text = value.decode("latin-1")
            env[key] = f"{env[key]},{text}" if key in env else text
        env.update(self.environ_extra)
        return env

    def asgi_headers(self) -> list[tuple[bytes, bytes]]:
        """ASGI scope headers: lowercase names, raw values, repeats kept."""
        out = [(name.lower(), value) for name, value in self.headers]
        for key, text in self.environ_extra:
            name = key[5:].lower().replace("_", "-").encode("latin-1")
            out.append((name, text.encode("utf-8", "surrogatepass")))
        return out


def _case(
    name: str,
    *headers: tuple[bytes, bytes],
    query: bytes = b"",
    wire: bool = True,
    environ_extra: tuple[tuple[str, str], ...] = (),
) -> Case:
    framing = b"".join(v for _, v in headers) + query
    if b"\r" in framing or b"\n" in framing or any(c in query for c in b" #"):
        wire = False
    return Case(name, tuple(headers), query, wire=wire, environ_extra=environ_extra)


# --------------------------------------------------------------------------- generic values
# Value shapes applied to every one of the four headers. For baggage and tracestate, the
# request also carries a valid sentry-trace / traceparent so that the value is really parsed.

_CTRL = bytes(c for c in range(0x20) if c not in (0x0A, 0x0D)) + b"\x7f"

GENERIC: dict[str, bytes | list[bytes]] = {
    "empty": b"",
    "spaces": b"   \t ",
    "only_commas": b",,,,, ,\t,",
    "only_equals": b"====",
    "only_dashes": b"-" * 200,
    "nul_inside": b"sentry-trace_id=" + TID.encode() + b"\x00" + SID.encode(),
    "nul_only": b"\x00" * 64,
    "control_bytes": _CTRL,
    "del_and_escape": b"\x1b[31m\x7f" + VALID_ST,
    "crlf_injection": VALID_ST + b"\r\nX-Injected: 1",
    "bare_lf": b"a=b\nc=d",
    "latin1_high": b"\xe9\xe8\xff\xfe" * 8,
    "invalid_utf8": b"\xc3\x28\xa0\xa1\xe2\x28\xa1\xf0\x28\x8c\xbc",
    "utf8_surrogate_bytes": b"\xed\xa0\x80\xed\xbf\xbf",
    "overlong_utf8": b"\xc0\xaf\xe0\x80\xaf",
    "huge_1mib": b"a" * MIB,
    "huge_1mib_commas": b"," * MIB,
    "huge_1mib_spaces": b" " * MIB,
    "huge_1mib_percent": b"%" * MIB,
    "huge_valid_prefix": VALID_ST + b"," + b"x" * MIB,
    "members_10k": b",".join(b"k%d=v%d" % (i, i) for i in range(10_000)),
    "repeated_2": [VALID_ST, VALID_ST_UNSAMPLED],
    "repeated_10k": [b"k%d=v" % i for i in range(10_000)],
    "nested_percent": b"sentry-release=" + b"%25" * 50 + b"41",
    "keys_without_values": b"a,b,c,sentry-trace_id,sentry-sampled,=,=x,;",
    "json_like": b'{"trace_id": "' + TID.encode() + b'"}',
}

_HEADER_NAMES = {ST: "sentry-trace", TP: "traceparent", TS: "tracestate", BG: "baggage"}
_COMPANION = {TS: (TP, VALID_TP), BG: (ST, VALID_ST)}


def _generic_cases() -> Iterator[Case]:
    for header, label in _HEADER_NAMES.items():
        for shape, value in GENERIC.items():
            lines = [(header, v) for v in value] if isinstance(value, list) else [(header, value)]
            companion = _COMPANION.get(header)
            if companion is not None:
                lines.insert(0, companion)
            yield _case(f"{label}/{shape}", *lines)


# --------------------------------------------------------------------------- header specific

SENTRY_TRACE: dict[str, bytes] = {
    "uppercase_ids": f"{TID.upper()}-{SID.upper()}-1".encode(),
    "uppercase_trace_id": f"{TID.upper()}-{SID}-1".encode(),
    "zero_trace_id": f"{'0' * 32}-{SID}-1".encode(),
    "zero_span_id": f"{TID}-{'0' * 16}-1".encode(),
    "all_zero": f"{'0' * 32}-{'0' * 16}-0".encode(),
    "short_trace_id": f"{TID[:31]}-{SID}-1".encode(),
    "long_trace_id": f"{TID}0-{SID}-1".encode(),
    "short_span_id": f"{TID}-{SID[:15]}-1".encode(),
    "sampled_2": f"{TID}-{SID}-2".encode(),
    "sampled_true": f"{TID}-{SID}-true".encode(),
    "double_sampled": f"{TID}-{SID}-1-1".encode(),
    "trailing_dash": f"{TID}-{SID}-".encode(),
    "only_flag": b"-1",
    "no_dashes": f"{TID}{SID}1".encode(),
    "dashed_uuid": b"771a43a4-1926-42f0-b136-d5159a501700-" + SID.encode() + b"-1",
    "leading_tab": b"\t" + VALID_ST,
    "leading_vt": b"\x0b" + VALID_ST,
    "trailing_junk": VALID_ST + b"xyz",
    "first_empty_then_valid": b" , " + VALID_ST,
    "unicode_digits": "٧٧١a43a4192642f0b136d5159a501700-b7ad6b7169203331-1".encode(),
    "nonhex": f"{'g' * 32}-{SID}-1".encode(),
    "semicolon_joined": VALID_ST + b";" + VALID_ST_UNSAMPLED,
}

TRACEPARENT: dict[str, bytes] = {
    "version_ff": f"ff-{TID}-{SID}-01".encode(),
    "version_01_extra": f"01-{TID}-{SID}-01-whatever-else".encode(),
    "version_00_extra": f"00-{TID}-{SID}-01-extra".encode(),
    "version_zz": f"zz-{TID}-{SID}-01".encode(),
    "version_cc_huge": f"cc-{TID}-{SID}-01-".encode() + b"x" * MIB,
    "uppercase": f"00-{TID.upper()}-{SID.upper()}-01".encode(),
    "zero_trace_id": f"00-{'0' * 32}-{SID}-01".encode(),
    "zero_parent_id": f"00-{TID}-{'0' * 16}-01".encode(),
    "flags_zz": f"00-{TID}-{SID}-zz".encode(),
    "flags_ff": f"00-{TID}-{SID}-ff".encode(),
    "flags_1_char": f"00-{TID}-{SID}-1".encode(),
    "length_54": f"00-{TID}-{SID}-0".encode(),
    "comma_joined": VALID_TP + b"," + f"00-{TID2}-{SID2}-01".encode(),
    "ows_padded": b" \t " + VALID_TP + b" \t",
    "repeated_same": VALID_TP,  # (sent twice: see below)
}

TRACESTATE: dict[str, bytes] = {
    "33_members": b",".join(b"k%d=v" % i for i in range(33)),
    "invalid_key_upper": b"Congo=t61rcWkgMzE",
    "value_with_equals": b"congo=a=b",
    "value_trailing_space": b"congo=abc ",
    "duplicate_keys": b"a=1,a=2,b=3",
    "value_257_chars": b"a=" + b"v" * 257,
    "tenant_too_long": b"t" * 242 + b"@sys=1",
    "system_too_long": b"t@" + b"s" * 15 + b"=1",
    "key_256_chars": b"k" * 257 + b"=1",
    "empty_members": b",,a=1,,,b=2,,",
    "no_traceparent": b"congo=t61rcWkgMzE",  # (sent without traceparent)
}

_DSC = f"sentry-trace_id={TID},sentry-public_key=abc,sentry-sampled=true".encode()

BAGGAGE: dict[str, bytes] = {
    "sample_rand_1": _DSC + b",sentry-sample_rand=1.0",
    "sample_rand_negative": _DSC + b",sentry-sample_rand=-0.1",
    "sample_rand_non_numeric": _DSC + b",sentry-sample_rand=abc",
    "sample_rand_nan": _DSC + b",sentry-sample_rand=nan",
    "sample_rand_inf": _DSC + b",sentry-sample_rand=inf",
    "sample_rand_exponent": _DSC + b",sentry-sample_rand=1e-3",
    "sample_rand_7_decimals": _DSC + b",sentry-sample_rand=0.5000001",
    "sample_rand_empty": _DSC + b",sentry-sample_rand=",
    "sample_rand_huge_digits": _DSC + b",sentry-sample_rand=0." + b"9" * 60000,
    "sample_rand_underscore": _DSC + b",sentry-sample_rand=0.2_5",
    "sample_rand_hex": _DSC + b",sentry-sample_rand=0x0.8p0",
    "sample_rate_nan": _DSC + b",sentry-sample_rate=NaN",
    "sample_rate_inf": _DSC + b",sentry-sample_rate=inf",
    "sample_rate_neg_inf": _DSC + b",sentry-sample_rate=-inf",
    "sample_rate_negative": _DSC + b",sentry-sample_rate=-0.5",
    "sample_rate_above_1": _DSC + b",sentry-sample_rate=1.5",
    "sample_rate_1e400": _DSC + b",sentry-sample_rate=1e400",
    "sample_rate_zero_sampled_true": _DSC + b",sentry-sample_rate=0",
    "sample_rate_one_unsampled": f"sentry-trace_id={TID},sentry-sampled=false,"
    "sentry-sample_rate=1.0".encode(),
    "inconsistent_rand_sampled": _DSC + b",sentry-sample_rate=0.1,sentry-sample_rand=0.900000",
    "inconsistent_rand_unsampled": f"sentry-trace_id={TID},sentry-sampled=false,"
    "sentry-sample_rate=0.9,sentry-sample_rand=0.100000".encode(),
    "sample_rate_pct_nan": _DSC + b",sentry-sample_rate=%4E%61%4E",
    "sample_rate_spaces": _DSC + b",sentry-sample_rate= 0.5 ",
    "sampled_maybe": f"sentry-trace_id={TID},sentry-sampled=maybe".encode(),
    "sampled_upper_true": f"sentry-trace_id={TID},sentry-sampled=TRUE".encode(),
    "trace_id_mismatch": f"sentry-trace_id={TID2},sentry-public_key=abc".encode(),
    "trace_id_garbage": b"sentry-trace_id=%00%ff,sentry-public_key=abc",
    "public_key_quotes_ctrl": b'sentry-public_key="\x01\x02"',
    "release_nested_pct": b"sentry-release=%252525252541%2541",
    "release_invalid_pct": b"sentry-release=%zz%4%",
    "release_pct_invalid_utf8": b"sentry-release=%C3%28%ED%A0%80%FF",
    "release_pct_nul": b"sentry-release=a%00b%0Ac%0D",
    "transaction_100k": b"sentry-transaction=" + b"%41" * 33000,
    "environment_newline_pct": b"sentry-environment=prod%0Ainjected",
    "sentry_keys_without_values": b"sentry-release,sentry-environment,sentry-=x,=sentry-,sentry-trace_id",
    "empty_sentry_key": b"sentry-=1,sentry-%20=2",
    "properties_everywhere": b"sentry-release=1;a;b=c;;;,sentry-environment=e;x=y",
    "members_181": b",".join(b"sentry-k%d=v" % i for i in range(181)),
    "members_10k_sentry": b",".join(b"sentry-k%d=%%41" % i for i in range(10_000)),
    "duplicate_sentry_keys": b"sentry-release=a,sentry-release=b,sentry-release=c",
    "unknown_sentry_keys": b"sentry-foo=1,sentry-replay_id=xyz,sentry-user_segment=x",
    "third_party_unprintable": b"vendor=\x01\x02,other=ok",
    "third_party_invalid_keys": b'bad key=1,"q"=2,(p)=3,ok=4',
    "over_64k": b"sentry-release=x," + b"a=" + b"b" * 70000,
}


def _specific_cases() -> Iterator[Case]:
    for shape, value in SENTRY_TRACE.items():
        yield _case(f"sentry-trace/{shape}", (ST, value))
    for shape, value in TRACEPARENT.items():
        if shape == "repeated_same":
            yield _case(f"traceparent/{shape}", (TP, value), (TP, value))
        else:
            yield _case(f"traceparent/{shape}", (TP, value))
    for shape, value in TRACESTATE.items():
        if shape == "no_traceparent":
            yield _case(f"tracestate/{shape}", (TS, value))
        else:
            yield _case(f"tracestate/{shape}", (TP, VALID_TP), (TS, value))
    for shape, value in BAGGAGE.items():
        yield _case(f"baggage/{shape}", (ST, VALID_ST), (BG, value))
    # The same baggage continuing a traceparent-only (W3C) trace and an unsampled trace.
    for shape in ("sample_rate_nan", "sample_rand_1", "trace_id_mismatch", "members_10k_sentry"):
        yield _case(f"baggage/{shape}+traceparent", (TP, VALID_TP), (BG, BAGGAGE[shape]))
        yield _case(f"baggage/{shape}+unsampled", (ST, VALID_ST_UNSAMPLED), (BG, BAGGAGE[shape]))


# --------------------------------------------------------------------------- combinations


def _combo_cases() -> Iterator[Case]:
    huge = b"z" * MIB
    yield _case("combo/all_valid", (ST, VALID_ST), (TP, VALID_TP), (TS, VALID_TS), (BG, VALID_BG))
    yield _case("combo/all_empty", (ST, b""), (TP, b""), (TS, b""), (BG, b""))
    yield _case("combo/all_huge", (ST, huge), (TP, huge), (TS, huge), (BG, huge))
    yield _case("combo/valid_ids_huge_rest", (ST, VALID_ST), (TP, VALID_TP), (TS, huge), (BG, huge))
    yield _case(
        "combo/all_nul",
        (ST, VALID_ST + b"\x00"),
        (TP, b"\x00" + VALID_TP),
        (TS, b"a=\x00"),
        (BG, b"sentry-release=\x00"),
    )
    yield _case(
        "combo/conflicting_traces",
        (ST, VALID_ST_UNSAMPLED),
        (TP, f"00-{TID2}-{SID2}-03".encode()),
        (TS, VALID_TS),
        (BG, f"sentry-trace_id={TID2},sentry-sampled=true".encode()),
    )
    yield _case(
        "combo/deferred_with_garbage_dsc",
        (ST, VALID_ST_DEFERRED),
        (BG, b"sentry-sample_rate=-1,sentry-sample_rand=2,sentry-sampled=yes"),
    )
    yield _case(
        "combo/invalid_st_valid_tp_hostile_ts",
        (ST, b"garbage"),
        (TP, VALID_TP),
        (TS, b"," * 70000),
        (BG, BAGGAGE["sample_rate_nan"]),
    )
    yield _case(
        "combo/every_header_repeated_1k",
        *[(h, v) for h, v in ((ST, VALID_ST), (TP, VALID_TP), (TS, b"a=1"), (BG, b"b=2"))] * 1000,
    )
    yield _case(
        "combo/mixed_case_names",
        (b"Sentry-Trace", VALID_ST),
        (b"BAGGAGE", VALID_BG),
        (b"TraceParent", VALID_TP),
    )
    yield _case(
        "combo/many_other_headers",
        (ST, VALID_ST),
        *[(b"x-junk-%d" % i, b"v" * 10) for i in range(5000)],
    )
    yield _case(
        "combo/secret_like_headers_huge",
        (ST, VALID_ST),
        (b"authorization", b"Bearer " + b"s" * MIB),
        (b"cookie", b"c=" + b"d" * MIB),
    )
    # Hostile query strings next to valid trace headers (request data is built from them).
    for shape, query in {
        "query_invalid_pct": b"a=%zz&token=%ff%fe&%=%",
        "query_huge": b"q=" + b"x" * MIB,
        "query_many_keys": b"&".join(b"k%d=v" % i for i in range(10_000)),
        "query_latin1": b"name=\xe9\xff&password=\xc3\x28",
        "query_nul": b"a=%00&b=\x00",
    }.items():
        yield _case(f"combo/{shape}", (ST, VALID_ST), (BG, VALID_BG), query=query)
    # Non-latin-1 text in the WSGI environ (not PEP 3333 compliant servers / middlewares).
    yield _case(
        "environ/non_latin1_text",
        environ_extra=(
            ("HTTP_SENTRY_TRACE", f"{TID}-{SID}-1\u2603"),
            ("HTTP_BAGGAGE", "sentry-release=\u00e9\u2603\U0001f600,sentry-environment=\u4e2d"),
        ),
        wire=False,
    )
    yield _case(
        "environ/lone_surrogates",
        (ST, VALID_ST),
        environ_extra=(("HTTP_BAGGAGE", "sentry-release=\ud800x,vendor=\udfff"),),
        wire=False,
    )
    yield _case(
        "environ/surrogate_trace_header",
        environ_extra=(("HTTP_TRACEPARENT", f"00-{TID}-{SID}-0\udc80"),),
        wire=False,
    )


def _build() -> tuple[Case, ...]:
    cases = [*_generic_cases(), *_specific_cases(), *_combo_cases()]
    names = [c.name for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise AssertionError(f"duplicate case names: {sorted(duplicates)}")
    return tuple(cases)


CASES: tuple[Case, ...] = _build()
HUGE: tuple[Case, ...] = tuple(c for c in CASES if c.huge)
_BY_NAME = {c.name: c for c in CASES}


def by_name(name: str) -> Case:
    """The case called ``name``."""
    return _BY_NAME[name]
