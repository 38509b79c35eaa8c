"""Property-based tests across the codecs, beyond tests/test_propagation.py.

test_propagation.py covers round trips from valid values, "never raises" on arbitrary
text and example-based limits. Here: what survives a *whole hop* (incoming headers ->
``continue_trace`` -> the DSC we would put in an envelope -> the headers we send on -> the
next service), normalization idempotence of every parser, the outgoing baggage budget as a
property, and the envelope, rate-limit and DSN parsers on arbitrary input.
"""

from __future__ import annotations

import math
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentry_tracing_mw._client import Client
from sentry_tracing_mw._dsn import Dsn
from sentry_tracing_mw._envelope import EnvelopeError, parse_envelope, serialize_envelope
from sentry_tracing_mw._errors import ConfigurationError
from sentry_tracing_mw._options import build_options
from sentry_tracing_mw._propagation import (
    _SHAPE_CACHE,
    _SHAPE_CACHE_LIMIT,
    MAX_BAGGAGE_BYTES,
    MAX_BAGGAGE_MEMBERS,
    _parse_baggage,
    _sanitize_dsc,
    extract,
    format_baggage,
    format_sentry_trace,
    format_traceparent,
    parse_baggage,
    parse_dsc,
    parse_incoming_baggage,
    parse_sentry_trace,
    parse_traceparent,
    parse_tracestate,
)
from sentry_tracing_mw._ratelimits import ALL, KNOWN_CATEGORIES, RateLimits, parse_rate_limits

from .hostile.checks import assert_valid_dsc

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TID = "771a43a4192642f0b136d5159a501700"
SID = "b7ad6b7169203331"

# --------------------------------------------------------------------------- strategies

garbage = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(list("%,;= \t")),
    max_size=40,
)
numberish = st.one_of(
    st.sampled_from(
        [
            "nan",
            "NaN",
            "inf",
            "-inf",
            "-0.5",
            "1.5",
            "1",
            "1.0",
            "0",
            "0.0",
            "1e-3",
            "1e400",
            "0x1p-2",
            "",
            " 0.5",
            "0.5 ",
            "0.2_5",
            "+0.5",
            ".5",
            "5.",
            "0.9999999",
            "0.0000001",
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(0, 1).map(lambda f: f"{f:.6f}"),
    st.decimals(-2, 2, allow_nan=False).map(str),
    garbage,
)
sentry_trace_values = st.one_of(
    st.sampled_from([f"{TID}-{SID}-1", f"{TID}-{SID}-0", f"{TID}-{SID}", f"{TID.upper()}-{SID}"]),
    garbage,
)
dsc_members = st.dictionaries(
    st.sampled_from(
        [
            "trace_id",
            "public_key",
            "sample_rate",
            "sample_rand",
            "sampled",
            "release",
            "environment",
            "transaction",
            "org_id",
            "replay_id",
            "x",
        ]
    ),
    st.one_of(numberish, garbage, st.sampled_from(["true", "false", TID, "0" * 32])),
    max_size=11,
)


@st.composite
def incoming_headers(draw: st.DrawFn) -> dict[str, str]:
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        headers["sentry-trace"] = draw(sentry_trace_values)
    if draw(st.booleans()):
        flags = draw(st.sampled_from(["00", "01", "02", "03", "zz"]))
        headers["traceparent"] = draw(st.sampled_from([f"00-{TID}-{SID}-{flags}", "garbage"]))
        headers["tracestate"] = draw(st.sampled_from(["a=1", "a=1,b=2", "A=1", ""]))
    members = draw(dsc_members)
    encoded = [f"sentry-{k}={v}" for k, v in members.items()]
    encoded += draw(st.lists(garbage, max_size=3))
    headers["baggage"] = ",".join(draw(st.permutations(encoded)))
    return headers


def _new_client(rate: float | None) -> Client:
    return Client(
        build_options(
            dsn="http://0123456789abcdef0123456789abcdef@127.0.0.1:9/1",
            traces_sample_rate=rate,
            instrument_http_clients=False,
            send_client_reports=False,
        )
    )


# Clients with a DSN (for the public key) whose transports never send: nothing here
# finishes a transaction. Not the process client (init() is not called).
_CLIENTS: dict[float | None, Client | None] = {}


def _client_for(rate: float | None) -> Client:
    client = _CLIENTS.get(rate)
    if client is None:
        client = _CLIENTS[rate] = _new_client(rate)
    return client


def teardown_module() -> None:
    for client in _CLIENTS.values():
        if client is not None:
            client.close(timeout=0.1)


# --------------------------------------------------------------------------- a whole hop


def _invariant(dsc: dict[str, str]) -> None:
    assert_valid_dsc(dsc)
    if {"sample_rate", "sample_rand", "sampled"} <= dsc.keys():
        rand, rate = float(dsc["sample_rand"]), float(dsc["sample_rate"])
        assert (rand < rate) is (dsc["sampled"] == "true"), dsc


@PROPS
@given(incoming_headers(), st.sampled_from([None, 0.0, 0.5, 1.0]))
def test_dsc_from_any_incoming_headers_is_valid(
    headers: dict[str, str], rate: float | None
) -> None:
    """Whatever comes in, the DSC we would put in an envelope is sane (protocol §10, §12.2)."""
    client = _client_for(rate)
    incoming = extract(headers)
    ctx = client.continue_trace(incoming)
    dsc = ctx.dsc()
    _invariant(dsc)
    assert dsc["trace_id"] == ctx.trace_id
    if incoming is not None:
        assert ctx.trace_id == incoming.trace_id
    assert 0.0 <= ctx.sample_rand < 1.0
    if ctx.sample_rate is not None:
        assert 0.0 <= ctx.sample_rate <= 1.0 and math.isfinite(ctx.sample_rate)


@PROPS
@given(incoming_headers(), st.sampled_from([None, 0.0, 0.5, 1.0]))
def test_lazy_baggage_gives_the_same_trace_as_eager_parsing(
    headers: dict[str, str], rate: float | None
) -> None:
    """Middlewares extract lazily; once used, the context equals the eagerly parsed one."""
    client = _client_for(rate)
    eager = extract(headers)
    lazy = extract(headers, lazy=True)
    if eager is None:
        assert lazy is None
        return
    assert lazy is not None
    if lazy.baggage is not None:  # left unparsed (a clear traceparent flag parses it now)
        assert lazy.dsc is None and lazy.third_party == ()
    assert parse_incoming_baggage(lazy) == eager
    a = client.continue_trace(eager)
    b = client.continue_trace(lazy)
    assert (a.trace_id, a.parent_span_id, a.sampled) == (b.trace_id, b.parent_span_id, b.sampled)
    assert a.third_party == b.third_party
    assert a.sample_rate == b.sample_rate
    dsc_a, dsc_b = a.dsc(), b.dsc()
    _invariant(dsc_b)
    # sample_rand is derived when upstream sent none (or an inconsistent one); eager and lazy
    # parsing may derive it at different moments, so only the rest is compared
    assert {k: v for k, v in dsc_a.items() if k != "sample_rand"} == {
        k: v for k, v in dsc_b.items() if k != "sample_rand"
    }
    if eager.dsc is not None and eager.dsc.get("sample_rand") == dsc_a.get("sample_rand"):
        assert dsc_b.get("sample_rand") == dsc_a.get("sample_rand")
        assert a.sample_rand == b.sample_rand


@PROPS
@given(incoming_headers(), st.sampled_from([None, 0.5, 1.0]))
def test_outgoing_headers_are_stable_across_hops(
    headers: dict[str, str], rate: float | None
) -> None:
    """Hop 1 sends headers; hop 2 reading them sends the same (but for its span id)."""
    client = _client_for(rate)
    hop1 = client.continue_trace(extract(headers))
    out1 = hop1.headers(SID)
    assert parse_sentry_trace(out1["sentry-trace"]) is not None
    assert parse_traceparent(out1["traceparent"]) is not None
    incoming2 = extract(out1)
    assert incoming2 is not None and incoming2.trace_id == hop1.trace_id
    assert incoming2.dsc == hop1.dsc()  # the frozen DSC travels unchanged
    hop2 = client.continue_trace(incoming2)
    assert hop2.dsc() == hop1.dsc()
    out2 = hop2.headers(SID)
    assert out2 == out1


# --------------------------------------------------------------------------- normalization


any_text = st.text(st.characters(codec="latin-1"), max_size=300) | garbage


@PROPS
@given(any_text)
def test_parsers_normalize_idempotently(value: str) -> None:
    st_ = parse_sentry_trace(value)
    if st_ is not None:
        assert parse_sentry_trace(format_sentry_trace(*st_)) == st_
    tp = parse_traceparent(value)
    if tp is not None:
        again = parse_traceparent(
            format_traceparent(tp.trace_id, tp.parent_id, tp.sampled, tp.random)
        )
        assert again == tp
    ts = parse_tracestate(value)
    if ts is not None:
        assert parse_tracestate(ts) == ts
    bag = parse_baggage(value)
    header = format_baggage(bag.sentry, forwarded=bag.third_party)
    again_bag = parse_baggage(header)
    assert again_bag.sentry == bag.sentry or len(header.encode()) > MAX_BAGGAGE_BYTES
    assert set(again_bag.third_party) <= set(bag.third_party)


@PROPS
@given(
    st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), garbage, max_size=8),
    st.lists(garbage, max_size=80).map(",".join),
    st.lists(st.from_regex(r"[a-z][a-z0-9]{0,8}=[A-Za-z0-9]{0,300}", fullmatch=True), max_size=80),
)
def test_outgoing_baggage_budget(sentry: dict[str, str], own: str, forwarded: list[str]) -> None:
    """Always within 8192 bytes / 64 members, no key twice; the app's and forwarded
    members never push out a Sentry member, and all of ours go when they fit alone."""
    header = format_baggage(sentry, own=own, forwarded=forwarded)
    members = [m for m in header.split(",") if m]
    keys = [m.partition("=")[0].strip(" \t") for m in members]
    assert len(header.encode("utf-8", "surrogatepass")) <= MAX_BAGGAGE_BYTES
    assert len(members) <= MAX_BAGGAGE_MEMBERS
    assert len(keys) == len(set(keys)), header
    ours_only = format_baggage(sentry)
    assert len(ours_only.encode("utf-8", "surrogatepass")) <= MAX_BAGGAGE_BYTES
    assert parse_baggage(header).sentry == parse_baggage(ours_only).sentry
    fits = (
        len(sentry) <= MAX_BAGGAGE_MEMBERS
        and sum(
            len(f"sentry-{k}={quote(v, safe='', errors='replace')},".encode())
            for k, v in sentry.items()
        )
        <= MAX_BAGGAGE_BYTES + 1
    )
    if fits:
        ours = [k for k in keys if k.startswith("sentry-")]
        assert sorted(ours) == sorted(f"sentry-{k}" for k in sentry)
    # Formatting is idempotent: our own header as the app's baggage gives it back.
    assert format_baggage(sentry, own=header, forwarded=forwarded) == header


# --------------------------------------------------------------------------- envelopes

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@PROPS
@given(
    st.dictionaries(st.text(max_size=8), _json_values, max_size=3),
    st.lists(
        st.tuples(
            st.text(
                st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=10
            ),
            st.binary(max_size=200),
        ),
        max_size=4,
    ),
)
def test_envelope_serialize_parse_round_trip(
    headers: dict[str, object], items: list[tuple[str, bytes]]
) -> None:
    raw = serialize_envelope(headers, [({"type": t}, p) for t, p in items])
    env = parse_envelope(raw)
    assert env.headers == headers
    assert [(it.type, it.payload) for it in env.items] == items
    assert parse_envelope(env.serialize()) == env


@PROPS
@given(st.binary(max_size=400))
def test_envelope_parse_is_stable(data: bytes) -> None:
    """Anything the parser accepts re-serializes to something that parses the same."""
    try:
        env = parse_envelope(data)
    except EnvelopeError:
        return
    again = parse_envelope(env.serialize())
    assert again.headers == env.headers
    assert [(i.type, i.payload) for i in again.items] == [(i.type, i.payload) for i in env.items]


# --------------------------------------------------------------------------- rate limits

_limit_text = (
    st.lists(
        st.tuples(
            numberish,
            st.lists(
                st.sampled_from([*sorted(KNOWN_CATEGORIES)[:8], "bogus", "", " error "]), max_size=4
            ),
            st.sampled_from(["", ":key", ":organization:quota", ":x:y:z:w"]),
        ).map(lambda t: f"{t[0]}:{';'.join(t[1])}{t[2]}"),
        max_size=5,
    ).map(", ".join)
    | garbage
)


@PROPS
@given(_limit_text)
def test_rate_limit_parser(header: str) -> None:
    for seconds, categories in parse_rate_limits(header):
        assert math.isfinite(seconds) and seconds >= 0
        assert categories and categories <= KNOWN_CATEGORIES | {ALL}


@PROPS
@given(st.lists(st.tuples(st.sampled_from([200, 429, 500]), _limit_text), max_size=5))
def test_rate_limits_never_shorten(responses: list[tuple[int, str]]) -> None:
    limits = RateLimits()
    now = 1000.0
    previous: dict[str, float] = {}
    for status, header in responses:
        limits.update_from_response(status, {"X-Sentry-Rate-Limits": header}, now)
        snap = limits.snapshot()
        for cat, expiry in previous.items():
            assert snap.get(cat, 0.0) >= expiry
        assert all(math.isfinite(v) for v in snap.values())
        previous = snap


# --------------------------------------------------------------------------- DSN


@PROPS
@given(
    st.one_of(
        garbage,
        st.builds(
            lambda scheme, key, secret, host, port, path, project: (
                f"{scheme}://{key}{secret}@{host}{port}{path}/{project}"
            ),
            st.sampled_from(["http", "https", "HTTPS", "ftp", ""]),
            st.from_regex(r"[a-z0-9]{0,8}", fullmatch=True),
            st.sampled_from(["", ":s3cr3tvalue", ":"]),
            st.sampled_from(["o12.ingest.sentry.io", "127.0.0.1", "[::1]", "", "h/x", "[::1"]),
            st.sampled_from(["", ":9000", ":0", ":99999", ":x"]),
            st.sampled_from(["", "/prefix", "/a/b"]),
            st.sampled_from(["1", "42", "", "abc"]),
        ),
    )
)
def test_dsn_parser_total_and_secret_never_in_errors(value: str) -> None:
    try:
        dsn = Dsn.parse(value)
    except ConfigurationError as exc:
        assert "s3cr3tvalue" not in str(exc)
        return
    assert dsn.envelope_url.endswith(f"/api/{dsn.project_id}/envelope/")
    assert dsn.project_id.isdigit() and dsn.public_key
    assert Dsn.parse(str(dsn)) == dsn


# --------------------------------------------------------------------------- DSC shape memo


def _full_parse(baggage: str, trace_id: str) -> tuple[dict[str, str] | None, tuple[str, ...]]:
    """The reference: a full parse and sanitize, no shape memo."""
    sentry, third_party = _parse_baggage(baggage)
    return (_sanitize_dsc(sentry, trace_id) if sentry else None), third_party


_hex32 = st.text("0123456789abcdef", min_size=32, max_size=32).filter(lambda t: t != "0" * 32)
# Sometimes one of the fixed members' values, so a varying value can shadow a fixed one.
_rand = st.sampled_from(["0.123456", "0.654321", "0.111111"]) | st.integers(0, 999_999).map(
    lambda n: f"0.{n:06d}"
)
_member = st.one_of(
    st.sampled_from(
        [
            "sentry-sample_rate=0.5",
            "sentry-sampled=true",
            "sentry-sampled=maybe",
            "sentry-release=app%401.0",
            "sentry-trace_id=771a43a4192642f0b136d5159a501700",
            "sentry-sample_rand=0.5",
            "sentry-sample_rand=0.123456",
            " sentry-sample_rand=0.654321",
            "sentry-sample_rand=0.111111;prop",
            "sentry-public_key=abc",
            "other=1",
            "sentry-trace_id=",
            "",
            " ",
        ]
    ),
    garbage,
)


# Where the two varying values sit: as the usual members, or in places a parser must not
# mistake for them (inside another member, with OWS or properties, repeated).
_TRACE_SLOTS = [
    "sentry-trace_id={}",
    " sentry-trace_id={}",
    "sentry-trace_id={} ",
    "sentry-trace_id={};p=1",
    "x=sentry-trace_id={}",
    "other={}",
    "sentry-trace_id={}{}",
]
_RAND_SLOTS = [
    "sentry-sample_rand={}",
    " sentry-sample_rand={}",
    "sentry-sample_rand={} ",
    "sentry-sample_rand={};p=1",
    "x=sentry-sample_rand={}",
    "sentry-sample_rand={}1",
    "sentry-release={}",
]


@PROPS
@given(
    st.lists(_member, max_size=6),
    st.lists(_member, max_size=6),
    st.lists(_member, max_size=6),
    st.booleans(),
    st.sampled_from([0, 0, 0, 178, 179, 181]),
    st.lists(st.sampled_from(_TRACE_SLOTS), min_size=1, max_size=2),
    st.lists(st.sampled_from(_RAND_SLOTS), min_size=1, max_size=2),
    st.tuples(_hex32, _rand),
    st.tuples(_hex32, _rand),
)
def test_parse_dsc_shape_memo_gives_a_full_parse(
    head: list[str],
    middle: list[str],
    tail: list[str],
    rand_first: bool,
    padding: int,
    trace_slots: list[str],
    rand_slots: list[str],
    first: tuple[str, str],
    second: tuple[str, str],
) -> None:
    """Baggages of one shape (only the trace id and sample_rand values differ): each one,
    whether the memo answers it or not, equals a full parse."""

    def baggage(trace_id: str, rand: str) -> str:
        a = [slot.format(trace_id, "") for slot in trace_slots]
        b = [slot.format(rand) for slot in rand_slots]
        if rand_first:
            a, b = b, a
        # Past 180 members a parser stops reading: the varying members may fall beyond.
        pad = ["sentry-sampled=true", *(f"k{n}=v" for n in range(1, padding))][:padding]
        return ",".join([*pad, *head, *a, *middle, *b, *tail])

    _SHAPE_CACHE.clear()
    for trace_id, rand in (first, second, first):
        value = baggage(trace_id, rand)
        assert parse_dsc(value, trace_id) == _full_parse(value, trace_id)
        # The same text read with another trace header: never the memo's trace.
        assert parse_dsc(value, second[0]) == _full_parse(value, second[0])


@pytest.mark.parametrize(
    "template",
    [
        # the first "sentry-sample_rand=" text is inside another member's value
        "x=sentry-sample_rand={rand},sentry-trace_id={tid},sentry-sample_rand=0.123456",
        "x=1;sentry-sample_rand={rand},sentry-trace_id={tid},sentry-sample_rand=0.123456",
        # the trace id text also sits in another member, before the real one
        "y=sentry-trace_id={tid},sentry-trace_id={tid},sentry-sample_rand={rand}",
        # the varying members lie past the 180 members a parser reads
        "sentry-sampled=true,"
        + ",".join(f"k{n}=v" for n in range(179))
        + ",sentry-trace_id={tid},sentry-sample_rand={rand}",
        "sentry-trace_id={tid},"
        + ",".join(f"k{n}=v" for n in range(179))
        + ",sentry-sample_rand={rand}",
        # not canonical: "0.1234567" is read as "0.123456"
        "sentry-trace_id={tid},sentry-sample_rand={rand}7",
        "sentry-trace_id={tid},sentry-sample_rand={rand}e-1",
    ],
)
def test_parse_dsc_memo_is_not_fooled(template: str) -> None:
    """Shapes whose cut-out text is not what the parser reads are never answered wrongly."""
    _SHAPE_CACHE.clear()
    for tid, rand in ((TID, "0.123456"), ("b" * 32, "0.999999"), (TID, "0.500000")):
        value = template.format(tid=tid, rand=rand)
        assert parse_dsc(value, tid) == _full_parse(value, tid), value


def test_parse_dsc_memo_is_used_and_bounded() -> None:
    """The usual upstream baggage is answered from the memo, and the memo stays bounded."""
    _SHAPE_CACHE.clear()
    template = "sentry-trace_id={},sentry-sample_rand={},sentry-sampled=true,sentry-release=r{}"
    tid2 = "a" * 32
    value = template.format(TID, "0.250000", 1)
    assert parse_dsc(value, TID) == _full_parse(value, TID)
    assert len(_SHAPE_CACHE) == 1
    again = template.format(tid2, "0.999999", 1)
    dsc, _ = parse_dsc(again, tid2)
    assert dsc == {
        "trace_id": tid2,
        "sample_rand": "0.999999",
        "sampled": "true",
        "release": "r1",
    }
    assert len(_SHAPE_CACHE) == 1  # a hit adds nothing
    dsc["release"] = "changed"  # callers own the dict they get
    assert parse_dsc(again, tid2)[0] == {**dsc, "release": "r1"}
    for n in range(3 * _SHAPE_CACHE_LIMIT):
        parse_dsc(template.format(TID, "0.250000", n), TID)
        assert len(_SHAPE_CACHE) <= _SHAPE_CACHE_LIMIT
    assert parse_dsc(None, TID) == (None, ())
    assert parse_dsc("x" * 70_000, TID) == (None, ())
