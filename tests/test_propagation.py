"""Tests for the trace header codec (sentry_tracing_mw._propagation)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sentry_tracing_mw import _propagation as prop
from sentry_tracing_mw._propagation import (
    ASGI_GETTER,
    DICT_GETTER,
    MAX_BAGGAGE_BYTES,
    MAX_BAGGAGE_MEMBERS,
    WSGI_GETTER,
    Baggage,
    IncomingTrace,
    SentryTrace,
    TraceParent,
    extract,
    extract_environ,
    format_baggage,
    format_sample_rand,
    format_sample_rate,
    format_sentry_trace,
    format_traceparent,
    parse_baggage,
    parse_sample_rand,
    parse_sample_rate,
    parse_sentry_trace,
    parse_traceparent,
    parse_tracestate,
)

TID = "771a43a4192642f0b136d5159a501700"
SID = "b136d5159a501700"
TID2 = "0af7651916cd43dd8448eb211c80319c"
SID2 = "00f067aa0ba902b7"

EXAMPLE_BAGGAGE = (
    "other-vendor=foo;p=1,sentry-trace_id=771a43a4192642f0b136d5159a501700,"
    "sentry-public_key=49d0f7386ad645858ae85020e393bef3,sentry-sample_rate=0.5,"
    "sentry-sample_rand=0.250000,sentry-sampled=true,sentry-environment=production,"
    "sentry-release=app%401.2.3,sentry-transaction=%2Fusers%2F%7Bid%7D,sentry-org_id=42"
)
EXAMPLE_DSC = {
    "trace_id": "771a43a4192642f0b136d5159a501700",
    "public_key": "49d0f7386ad645858ae85020e393bef3",
    "sample_rate": "0.5",
    "sample_rand": "0.250000",
    "sampled": "true",
    "environment": "production",
    "release": "app@1.2.3",
    "transaction": "/users/{id}",
    "org_id": "42",
}

# --------------------------------------------------------------------------- strategies

hex_chars = "0123456789abcdef"
trace_ids = st.text(hex_chars, min_size=32, max_size=32).filter(lambda s: s != "0" * 32)
span_ids = st.text(hex_chars, min_size=16, max_size=16).filter(lambda s: s != "0" * 16)
any_text = st.text(st.characters(exclude_categories=()), max_size=65536)
latin1_text = st.binary(max_size=65536).map(lambda b: b.decode("latin-1"))
header_text = st.one_of(
    any_text,
    latin1_text,
    st.text(" \t,;=%-0123456789abcdefsentry_@ABC\x00\x7f\ud800é", max_size=512),
)
dsc_keys = st.from_regex(r"[A-Za-z0-9_.\-!#$&'*+^`|~%]{1,20}", fullmatch=True)
ts_keys = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_\-*/]{0,30}", fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9_\-*/]{0,20}@[a-z][a-z0-9_\-*/]{0,13}", fullmatch=True),
)
ts_values = st.from_regex(
    r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,40}[\x21-\x2b\x2d-\x3c\x3e-\x7e]", fullmatch=True
)
third_party_members = st.builds(
    lambda k, v: f"{k}={v}",
    st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
        lambda k: not k.startswith("sentry")
    ),
    st.from_regex(r"[A-Za-z0-9%]{0,20}", fullmatch=True),
)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- sentry-trace


class TestSentryTrace:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (f"{TID}-{SID}-1", SentryTrace(TID, SID, True)),
            (f"{TID}-{SID}-0", SentryTrace(TID, SID, False)),
            (f"{TID}-{SID}", SentryTrace(TID, SID, None)),
            (f" \t{TID}-{SID}-1\t ", SentryTrace(TID, SID, True)),
            (f"{TID}-{SID}-1,{TID2}-{SID2}-0", SentryTrace(TID, SID, True)),
            (f" , ,{TID}-{SID}-0 , {TID2}-{SID2}-1", SentryTrace(TID, SID, False)),
        ],
    )
    def test_valid(self, value: str, expected: SentryTrace) -> None:
        assert parse_sentry_trace(value) == expected

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            " \t",
            ",,,",
            f"{TID.upper()}-{SID}-1",
            f"{TID}-{SID.upper()}-1",
            f"{'0' * 32}-{SID}-1",
            f"{TID}-{'0' * 16}-1",
            f"{TID}-{SID}-2",
            f"{TID}-{SID}-",
            f"{TID}-{SID}-10",
            f"{TID}{SID}1",
            f"{TID}--1",
            f"-{SID}-1",
            f"{TID}-1",
            f"{TID[:-1]}-{SID}-1",
            f"{TID}0-{SID}-1",
            f"{TID}-{SID}0-1",
            f"{TID}-{SID}-1\n",
            f"x{TID}-{SID}-1",
            f"garbage,{TID}-{SID}-1",  # the first non-empty value decides
            f"00-{TID}-{SID}-01",  # traceparent is not sentry-trace
        ],
    )
    def test_invalid(self, value: str | None) -> None:
        assert parse_sentry_trace(value) is None

    def test_non_str_is_none(self) -> None:
        assert parse_sentry_trace(b"x" * 51) is None  # type: ignore[arg-type]
        assert parse_sentry_trace(42) is None  # type: ignore[arg-type]

    def test_format(self) -> None:
        assert format_sentry_trace(TID, SID, True) == f"{TID}-{SID}-1"
        assert format_sentry_trace(TID, SID, False) == f"{TID}-{SID}-0"
        assert format_sentry_trace(TID, SID, None) == f"{TID}-{SID}"

    @given(trace_ids, span_ids, st.sampled_from([True, False, None]))
    def test_round_trip(self, trace_id: str, span_id: str, sampled: bool | None) -> None:
        assert parse_sentry_trace(format_sentry_trace(trace_id, span_id, sampled)) == (
            SentryTrace(trace_id, span_id, sampled)
        )


# --------------------------------------------------------------------------- traceparent


class TestTraceParent:
    @pytest.mark.parametrize(
        ("flags", "sampled", "random"),
        [("00", False, False), ("01", True, False), ("02", False, True), ("03", True, True)],
    )
    def test_flags(self, flags: str, sampled: bool, random: bool) -> None:
        assert parse_traceparent(f"00-{TID}-{SID}-{flags}") == TraceParent(
            TID, SID, sampled, random
        )

    def test_unknown_flag_bits_ignored(self) -> None:
        assert parse_traceparent(f"00-{TID}-{SID}-ff") == TraceParent(TID, SID, True, True)
        assert parse_traceparent(f"00-{TID}-{SID}-fc") == TraceParent(TID, SID, False, False)

    def test_ows_trimmed(self) -> None:
        assert parse_traceparent(f" \t00-{TID}-{SID}-01 \t") == TraceParent(TID, SID, True, False)

    def test_higher_version(self) -> None:
        assert parse_traceparent(f"01-{TID}-{SID}-01") == TraceParent(TID, SID, True, False)
        assert parse_traceparent(f"cc-{TID}-{SID}-01-what-the-future-holds") == TraceParent(
            TID, SID, True, False
        )
        assert parse_traceparent(f"cc-{TID}-{SID}-01x") is None
        assert parse_traceparent(f"cc-{TID}-{SID}-0") is None

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            f"00-{TID}-{SID}-01-extra",  # v00 must be exactly 55 chars
            f"00-{TID}-{SID}-011",
            f"ff-{TID}-{SID}-01",
            f"ff-{TID}-{SID}-01-x",
            f"00-{TID.upper()}-{SID}-01",
            f"00-{TID}-{SID.upper()}-01",
            f"00-{TID}-{SID}-0A",
            f"0A-{TID}-{SID}-01",
            f"00-{'0' * 32}-{SID}-01",
            f"00-{TID}-{'0' * 16}-01",
            f"00-{TID[:-1]}-{SID}-01",
            f"00-{TID}0-{SID}-01",
            f"00-{TID}-{SID[:-1]}-01",
            f"00-{TID}-{SID}0-01",
            f"00-{TID}-{SID}-1",
            f"0-{TID}-{SID}-01",
            f"00_{TID}-{SID}-01",
            f"00-{TID}-{SID}-01,00-{TID2}-{SID2}-01",  # multiple values
            f"00-{TID}-{SID}-01,",
            f"{TID}-{SID}-1",
        ],
    )
    def test_invalid(self, value: str | None) -> None:
        assert parse_traceparent(value) is None

    def test_format(self) -> None:
        assert format_traceparent(TID, SID, True, False) == f"00-{TID}-{SID}-01"
        assert format_traceparent(TID, SID, False, False) == f"00-{TID}-{SID}-00"
        assert format_traceparent(TID, SID, None, False) == f"00-{TID}-{SID}-00"
        assert format_traceparent(TID, SID, None, True) == f"00-{TID}-{SID}-02"
        assert format_traceparent(TID, SID, True, True) == f"00-{TID}-{SID}-03"

    @given(trace_ids, span_ids, st.sampled_from([True, False, None]), st.booleans())
    def test_round_trip(
        self, trace_id: str, span_id: str, sampled: bool | None, random: bool
    ) -> None:
        parsed = parse_traceparent(format_traceparent(trace_id, span_id, sampled, random))
        assert parsed == TraceParent(trace_id, span_id, bool(sampled), random)


# --------------------------------------------------------------------------- tracestate


class TestTraceState:
    def test_valid_normalized(self) -> None:
        assert parse_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == (
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        )
        assert parse_tracestate(" rojo=1 ,\t, ,congo=2\t") == "rojo=1,congo=2"

    def test_multi_tenant_and_special_keys(self) -> None:
        value = "fw529a3039@dt=1,t@s=v,a_b-c*d/e=x y,0tenant@sys-1=q"
        assert parse_tracestate(value) == value

    def test_duplicates_keep_first(self) -> None:
        assert parse_tracestate("a=1,b=2,a=3") == "a=1,b=2"

    @pytest.mark.parametrize("value", [None, "", " ", ",", " , \t,"])
    def test_empty(self, value: str | None) -> None:
        assert parse_tracestate(value) is None

    @pytest.mark.parametrize(
        "value",
        [
            "A=1",  # uppercase key
            "1a=1",  # simple keys start with a letter
            "a=",  # empty value
            "a",
            "=1",
            "a=1=2",
            "a=1,b",
            "a= x,b=y ",  # leading space in value is fine, 'b=y ' is trimmed: see below
            "a=é",
            "a=x\x7f",
            "a=\x00",
            "a b=1",
            f"{'a' * 257}=1",
            f"a={'x' * 257}",
            f"{'t' * 242}@s=1",
            f"t@{'s' * 15}=1",
            "t@S=1",
            "t@1s=1",
            "@s=1",
            "t@=1",
        ],
    )
    def test_invalid_member_discards_all(self, value: str) -> None:
        if value == "a= x,b=y ":
            assert parse_tracestate(value) == "a= x,b=y"
        else:
            assert parse_tracestate(f"ok=1,{value}") is None

    def test_long_valid_key_and_value(self) -> None:
        value = f"{'a' * 256}={'x' * 256},{'t' * 241}@{'s' * 14}=v"
        assert parse_tracestate(value) == value

    def test_member_limit(self) -> None:
        members = [f"k{i}=v" for i in range(33)]
        assert parse_tracestate(",".join(members[:32])) == ",".join(members[:32])
        assert parse_tracestate(",".join(members)) is None
        # empty members do not count
        assert parse_tracestate(",".join(members[:32]) + ",,, ,") == ",".join(members[:32])

    @given(st.lists(st.tuples(ts_keys, ts_values), max_size=32, unique_by=lambda kv: kv[0]))
    def test_round_trip(self, members: list[tuple[str, str]]) -> None:
        value = ",".join(f"{k}={v}" for k, v in members)
        assert parse_tracestate(value) == (value or None)
        # OWS and empty members around are normalized away
        padded = " ,\t".join(f" {k}={v}\t" for k, v in members) + ", ,"
        assert parse_tracestate(padded) == (value or None)


# --------------------------------------------------------------------------- baggage


class TestParseBaggage:
    def test_example(self) -> None:
        baggage = parse_baggage(EXAMPLE_BAGGAGE)
        assert isinstance(baggage, Baggage)
        assert baggage.sentry == EXAMPLE_DSC
        assert list(baggage.sentry) == list(EXAMPLE_DSC)  # order kept
        assert baggage.third_party == ("other-vendor=foo;p=1",)

    @pytest.mark.parametrize("value", [None, "", " ", ",", "garbage"])
    def test_empty(self, value: str | None) -> None:
        assert parse_baggage(value) == Baggage({}, ())

    def test_fresh_dict_each_call(self) -> None:
        first = parse_baggage(None)
        first.sentry["x"] = "y"
        assert parse_baggage(None).sentry == {}
        second = parse_baggage("sentry-a=1")
        second.sentry["a"] = "changed"
        assert parse_baggage("sentry-a=1").sentry == {"a": "1"}

    def test_ows_properties_and_equals(self) -> None:
        value = " sentry-a = x=y=z ; prop=1 ; flag ,\tsentry-b=%3Bv;q\t, other = 1 ; p "
        baggage = parse_baggage(value)
        assert baggage.sentry == {"a": "x=y=z", "b": ";v"}
        assert baggage.third_party == ("other = 1 ; p",)

    def test_percent_decoding(self) -> None:
        baggage = parse_baggage(
            "sentry-release=app%401.2.3,sentry-t=%E2%82%AC%20x,sentry-bad=%zz%4,"
            "sentry-half=%E2%82,sentry-plus=a+b,sentry-lit=é%C3%A9"
        )
        assert baggage.sentry == {
            "release": "app@1.2.3",
            "t": "€ x",
            "bad": "%zz%4",
            "half": "\ufffd",
            "plus": "a+b",
            "lit": "éé",
        }

    def test_duplicates_first_wins(self) -> None:
        baggage = parse_baggage("sentry-a=1,x=1,sentry-a=2,x=2,sentry-a=3")
        assert baggage.sentry == {"a": "1"}
        assert baggage.third_party == ("x=1",)
        # also when the later duplicate is already known to the member cache
        parse_baggage("sentry-environment=prod")
        assert parse_baggage("sentry-environment=dev,sentry-environment=prod").sentry == {
            "environment": "dev"
        }

    @pytest.mark.parametrize(
        "member",
        [
            "novalue",
            "sentry-a",
            "=1",
            "sentry-=1",
            "bad key=1",
            "bad(key)=1",
            'bad"key=1',
            "ké=1",
            "sentry-ké=1",
            "sentry-a b=1",
        ],
    )
    def test_invalid_members_skipped(self, member: str) -> None:
        baggage = parse_baggage(f"{member},sentry-ok=1,other=2")
        assert baggage.sentry == {"ok": "1"}
        assert baggage.third_party == ("other=2",)

    def test_sentry_prefix_is_case_sensitive(self) -> None:
        baggage = parse_baggage("Sentry-a=1,SENTRY-b=2")
        assert baggage.sentry == {}
        assert baggage.third_party == ("Sentry-a=1", "SENTRY-b=2")

    def test_unprintable_third_party_not_forwarded(self) -> None:
        baggage = parse_baggage("a=\x00,b=é,c=ok")
        assert baggage.third_party == ("c=ok",)

    @pytest.mark.parametrize("member", ["x=a b", 'x="q"', "x=a\\b", "x=v;", "x=v;p q"])
    def test_third_party_outside_the_w3c_grammar_not_forwarded(self, member: str) -> None:
        baggage = parse_baggage(f"{member},sentry-ok=1,y=v;p=1;flag")
        assert baggage.sentry == {"ok": "1"}
        assert baggage.third_party == ("y=v;p=1;flag",)

    def test_sentry_members_survive_the_member_cap(self) -> None:
        # 178 third-party members first: the DSC behind them is still read whole, and the
        # third-party members kept are the first ones that fit beside it (180 in all).
        dsc = {
            "trace_id": "771a43a4192642f0b136d5159a501700",
            "public_key": "49d0f7386ad645858ae85020e393bef3",
            "sample_rate": "0.5",
            "sample_rand": "0.250000",
            "sampled": "true",
        }
        others = [f"v{i}=x" for i in range(178)]
        value = ",".join(others + [f"sentry-{k}={v}" for k, v in dsc.items()])
        baggage = parse_baggage(value)
        assert baggage.sentry == dsc
        assert baggage.third_party == tuple(others[:175])

    def test_member_limit(self) -> None:
        members = [f"sentry-k{i}=v" for i in range(200)]
        baggage = parse_baggage(",".join(members))
        assert len(baggage.sentry) == 180
        assert "k179" in baggage.sentry
        assert "k180" not in baggage.sentry
        # empty members do not count toward the limit
        baggage = parse_baggage(",,".join(members[:180]) + ",sentry-late=1")
        assert len(baggage.sentry) == 180
        assert "late" not in baggage.sentry

    @pytest.mark.parametrize(
        "shape", ['a={ws}"', 'a=b{ws}"', 'a=b;c={ws}"', 'a=b;c{ws}"', 'a{ws}=b"', "a= {ws};c"]
    )
    def test_member_grammar_is_linear_on_hostile_whitespace(self, shape: str) -> None:
        # OWS around an empty value made a failing match quadratic: 3.7 s for one 64 KiB
        # member. The bound catches that on any machine (linear: a few ms).
        value = "sentry-a=1," + shape.format(ws=" \t" * 32_000)
        assert len(value) <= 65536
        elapsed = _timed(lambda: parse_baggage(value))
        assert elapsed < 0.5, elapsed
        assert parse_baggage(value).sentry == {"a": "1"}

    def test_oversized_header_ignored(self) -> None:
        value = "sentry-trace_id=" + TID + ",other=" + "x" * 65536
        assert len(value) > 65536
        assert parse_baggage(value) == Baggage({}, ())
        ok = ("sentry-a=1,x=" + "y" * 65536)[:65536]
        assert parse_baggage(ok).sentry == {"a": "1"}
        assert parse_baggage("sentry-a=1," + "y" * 65525).sentry == {"a": "1"}
        assert parse_baggage("sentry-a=1," + "y" * 65526) == Baggage({}, ())

    @given(st.dictionaries(dsc_keys, st.text(max_size=40), max_size=20))
    def test_round_trip_sentry(self, dsc: dict[str, str]) -> None:
        assert parse_baggage(format_baggage(dsc)).sentry == dsc

    @given(
        st.dictionaries(dsc_keys, st.text(max_size=40), max_size=10),
        st.lists(third_party_members, max_size=10, unique_by=lambda m: m.split("=")[0]),
    )
    def test_round_trip_with_forwarded(self, dsc: dict[str, str], forwarded: list[str]) -> None:
        baggage = parse_baggage(format_baggage(dsc, forwarded=forwarded))
        assert baggage.sentry == dsc
        assert baggage.third_party == tuple(forwarded)


class TestFormatBaggage:
    def test_example(self) -> None:
        assert format_baggage(EXAMPLE_DSC) == EXAMPLE_BAGGAGE.removeprefix("other-vendor=foo;p=1,")

    def test_quoting(self) -> None:
        header = format_baggage({"a": "x@y z/w", "b": "é,=;%", "c": "A-z_0.9~"})
        assert header == "sentry-a=x%40y%20z%2Fw,sentry-b=%C3%A9%2C%3D%3B%25,sentry-c=A-z_0.9~"
        assert header.isascii()

    @pytest.mark.parametrize("value", ["", "abc", "é", "\u00b2", "a b", "x" * 300, "\ud800"])
    def test_quoting_matches_urllib(self, value: str) -> None:
        expected = quote(value, safe="", errors="replace")
        assert format_baggage({"k": value}) == f"sentry-k={expected}"
        assert format_baggage({"k": value}) == f"sentry-k={expected}"  # cached path

    def test_empty(self) -> None:
        assert format_baggage({}) == ""
        assert format_baggage({}, own="a=1, b=2") == "a=1,b=2"
        assert format_baggage({}, forwarded=["c=3"]) == "c=3"

    def test_own_sentry_members_replaced(self) -> None:
        header = format_baggage(
            {"trace_id": TID}, own="foo=1, sentry-trace_id=old ,sentry-x=y,bar=2;p"
        )
        assert header == f"foo=1,bar=2;p,sentry-trace_id={TID}"

    def test_dedupe_and_forwarded(self) -> None:
        header = format_baggage(
            {"a": "1"},
            own="k=own,k=dup, m = 1",
            forwarded=["k=fwd", " z=1 ", "z=2", "sentry-a=evil", "bad", "x=1,y=2", "m=9"],
        )
        assert header == "k=own,m = 1,z=1,sentry-a=1"

    def test_idempotent_example(self) -> None:
        own = "foo=1,sentry-release=old,bar=2"
        once = format_baggage(EXAMPLE_DSC, own=own, forwarded=["fw=1"])
        twice = format_baggage(EXAMPLE_DSC, own=once, forwarded=["fw=1"])
        assert once == twice
        assert once.count("sentry-release=") == 1

    @given(
        st.dictionaries(dsc_keys, st.text(max_size=30), max_size=8),
        st.text(st.characters(exclude_categories=()), max_size=200),
        st.lists(third_party_members, max_size=5),
    )
    def test_idempotent(self, dsc: dict[str, str], own: str, forwarded: list[str]) -> None:
        once = format_baggage(dsc, own=own)
        assert format_baggage(dsc, own=once) == once
        with_fwd = format_baggage(dsc, own=own, forwarded=forwarded)
        assert format_baggage(dsc, own=with_fwd, forwarded=forwarded) == with_fwd

    def test_byte_cap_drops_forwarded_then_own(self) -> None:
        own = ",".join(f"own{i}={'o' * 1000}" for i in range(4))  # ~4 KB
        forwarded = [f"fw{i}={'f' * 1000}" for i in range(6)]  # ~6 KB
        header = format_baggage(EXAMPLE_DSC, own=own, forwarded=forwarded)
        assert len(header.encode()) <= MAX_BAGGAGE_BYTES
        assert header.endswith(format_baggage(EXAMPLE_DSC))
        assert header.startswith(own + ",fw0=")
        assert "fw5=" not in header
        keys = [m.split("=")[0] for m in header.split(",")]
        assert keys[:4] == ["own0", "own1", "own2", "own3"]
        # forwarded members are a prefix of the given list (dropped from the end)
        fw = [k for k in keys if k.startswith("fw")]
        assert fw == [f"fw{i}" for i in range(len(fw))]
        assert 0 < len(fw) < 6

        big_own = ",".join(f"own{i}={'o' * 1000}" for i in range(12))
        header = format_baggage(EXAMPLE_DSC, own=big_own, forwarded=forwarded)
        assert len(header.encode()) <= MAX_BAGGAGE_BYTES
        assert "fw0=" not in header
        assert header.startswith("own0=")
        assert header.endswith(format_baggage(EXAMPLE_DSC))

    def test_byte_cap_counts_utf8(self) -> None:
        own = ",".join(f"o{i}={'é' * 500}" for i in range(10))  # 1000+ bytes each
        header = format_baggage({"a": "1"}, own=own)
        assert len(header.encode()) <= MAX_BAGGAGE_BYTES
        assert len(header) < MAX_BAGGAGE_BYTES // 2 + 600
        assert header.endswith("sentry-a=1")

    def test_exact_byte_boundary(self) -> None:
        ours = format_baggage({"a": "1"})
        filler = "x=" + "y" * (MAX_BAGGAGE_BYTES - len(ours) - 1 - 2)
        header = format_baggage({"a": "1"}, own=filler)
        assert len(header) == MAX_BAGGAGE_BYTES
        assert header == f"{filler},{ours}"
        assert format_baggage({"a": "1"}, own=filler + "y") == ours

    def test_member_cap(self) -> None:
        own = ",".join(f"o{i}=1" for i in range(50))
        forwarded = [f"f{i}=1" for i in range(20)]
        header = format_baggage(EXAMPLE_DSC, own=own, forwarded=forwarded)
        members = header.split(",")
        assert len(members) == MAX_BAGGAGE_MEMBERS
        assert members[:50] == own.split(",")
        assert members[50:55] == forwarded[:5]
        assert members[55:] == format_baggage(EXAMPLE_DSC).split(",")

        own = ",".join(f"o{i}=1" for i in range(100))
        members = format_baggage(EXAMPLE_DSC, own=own, forwarded=forwarded).split(",")
        assert len(members) == MAX_BAGGAGE_MEMBERS
        assert members[:55] == own.split(",")[:55]

    def test_sentry_members_never_make_way_for_others(self) -> None:
        dsc = {"trace_id": "a" * 32, "transaction": "t" * 4000}
        header = format_baggage(dsc, own="a=1," + "b" * 4200 + "=1", forwarded=["c=2"])
        assert header.endswith(format_baggage(dsc))
        assert header.startswith("a=1,c=2,sentry-")  # the big own member alone is dropped
        assert len(header) <= MAX_BAGGAGE_BYTES

    def test_oversized_upstream_dsc_is_trimmed_by_priority(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """An upstream DSC too big for one header: the trace and sampling keys stay, huge
        and unknown members go; never an oversized header (protocol §10.1)."""
        dsc = {
            "trace_id": "a" * 32,
            "transaction": "t" * 20_000,
            **{f"k{i}": "v" * 200 for i in range(170)},
            "public_key": "p" * 32,
            "sample_rate": "0.5",
            "sample_rand": "0.250000",
            "sampled": "true",
        }
        with caplog.at_level(logging.DEBUG, logger="sentry_tracing_mw"):
            header = format_baggage(dsc, own="own=1", forwarded=["fwd=2"])
        members = header.split(",")
        assert len(header.encode()) <= MAX_BAGGAGE_BYTES
        assert len(members) <= MAX_BAGGAGE_MEMBERS
        kept = parse_baggage(header).sentry
        for key in ("trace_id", "public_key", "sample_rate", "sample_rand", "sampled"):
            assert kept[key] == dsc[key]
        assert "transaction" not in kept  # 20,000 bytes can never fit
        assert "k0" in kept and "k169" not in kept  # unknown keys fill what is left, in order
        assert "Sentry members left out" in caplog.text
        many = {f"k{i}": "v" for i in range(100)}
        assert len(format_baggage(many).split(",")) == MAX_BAGGAGE_MEMBERS


# --------------------------------------------------------------------------- sample rand / rate


class TestSampleNumbers:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("0", 0.0),
            ("0.0", 0.0),
            ("0.5", 0.5),
            ("1", 1.0),
            ("1.0", 1.0),
            (".25", 0.25),
            ("1e-1", 0.1),
            ("0.000001", 0.000001),
        ],
    )
    def test_parse_sample_rate_valid(self, value: str, expected: float) -> None:
        assert parse_sample_rate(value) == expected

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "x",
            "1.5",
            "-0.1",
            "-0",
            "+0.5",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "1e999",
            " 0.5",
            "0.5 ",
            "0_5",
            "0.2_5",
            "٠.٥",
            ".",
            "e1",
            "0x1",
        ],
    )
    def test_parse_sample_rate_invalid(self, value: str | None) -> None:
        assert parse_sample_rate(value) is None

    def test_parse_sample_rand(self) -> None:
        assert parse_sample_rand("0.250000") == 0.25
        assert parse_sample_rand("0") == 0.0
        assert parse_sample_rand("0.999999") == 0.999999
        for bad in (None, "1", "1.0", "1.000000", "-0.1", "nan", "abc", " 0.1", "0.5x"):
            assert parse_sample_rand(bad) is None

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (0.0, "0.000000"),
            (0.25, "0.250000"),
            (0.29, "0.290000"),
            (0.1234567, "0.123456"),
            (0.9999999, "0.999999"),
            (0.99999999999, "0.999999"),
            (1.0, "0.999999"),
            (1e-10, "0.000000"),
            (-0.5, "0.000000"),
            (float("nan"), "0.000000"),
        ],
    )
    def test_format_sample_rand(self, value: float, expected: str) -> None:
        assert format_sample_rand(value) == expected

    @given(st.integers(0, 999_999))
    def test_format_sample_rand_exact_six_digits(self, n: int) -> None:
        text = format_sample_rand(n / 1_000_000)
        assert text == f"0.{n:06d}"
        assert parse_sample_rand(text) == n / 1_000_000

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            (1, "1.0"),
            (1.0, "1.0"),
            (0, "0.0"),
            (0.25, "0.25"),
            (0.1, "0.1"),
            (1e-07, "0.0000001"),
            (1.5e-10, "0.00000000015"),
            (True, "1.0"),
        ],
    )
    def test_format_sample_rate(self, value: float, expected: str) -> None:
        assert format_sample_rate(value) == expected

    @given(st.floats(0.0, 1.0))
    def test_sample_rate_round_trip(self, value: float) -> None:
        text = format_sample_rate(value)
        assert "e" not in text
        assert parse_sample_rate(text) == value


# --------------------------------------------------------------------------- getters


class TestGetters:
    def test_dict_getter(self) -> None:
        assert DICT_GETTER.get({"baggage": "a=1"}, "baggage") == "a=1"
        assert DICT_GETTER.get({"Baggage": "a=1"}, "baggage") == "a=1"
        assert DICT_GETTER.get({"BAGGAGE": "a=1", "Baggage": "b=2"}, "baggage") == "a=1,b=2"
        assert DICT_GETTER.get({"other": "x"}, "baggage") is None
        assert DICT_GETTER.get({}, "baggage") is None
        assert DICT_GETTER.get({"baggage": b"a=\xe9"}, "baggage") == "a=é"  # type: ignore[dict-item]
        assert DICT_GETTER.get({"Baggage": ["a=1", "b=2"]}, "baggage") == "a=1,b=2"  # type: ignore[dict-item]
        assert DICT_GETTER.get({"baggage": 5}, "baggage") is None  # type: ignore[dict-item]
        assert DICT_GETTER.get({1: "x", "Baggage": "a=1"}, "baggage") == "a=1"  # type: ignore[dict-item]
        assert DICT_GETTER.get(None, "baggage") is None  # type: ignore[arg-type]

    def test_wsgi_getter(self) -> None:
        environ: dict[str, Any] = {
            "HTTP_SENTRY_TRACE": f"{TID}-{SID}-1",
            "HTTP_BAGGAGE": "a=1,b=2",
            "HTTP_TRACEPARENT": b"00",
            "HTTP_X_CUSTOM": "c",
            "HTTP_TRACESTATE": 7,
        }
        assert WSGI_GETTER.get(environ, "sentry-trace") == f"{TID}-{SID}-1"
        assert WSGI_GETTER.get(environ, "baggage") == "a=1,b=2"
        assert WSGI_GETTER.get(environ, "traceparent") == "00"
        assert WSGI_GETTER.get(environ, "tracestate") is None
        assert WSGI_GETTER.get(environ, "x-custom") == "c"
        assert WSGI_GETTER.get({}, "baggage") is None

    def test_extract_environ_reads_what_the_wsgi_getter_reads(self) -> None:
        # The direct read of an environ (str values) gives extract()'s result; values of
        # other types, and a mapping or value that refuses a read, go through the getter,
        # which reads each header on its own.
        class Refusing(dict[str, Any]):
            def get(self, key: str, default: Any = None) -> Any:
                if key == "HTTP_BAGGAGE":
                    raise RuntimeError("refused")
                return super().get(key, default)

        class Untestable:
            def __bool__(self) -> bool:
                raise ValueError("no truth value")

        sentry_trace = f"{TID}-{SID}-1"
        environs: list[Any] = [
            {},
            {"HTTP_SENTRY_TRACE": sentry_trace, "HTTP_BAGGAGE": "sentry-sampled=true,a=1"},
            {"HTTP_SENTRY_TRACE": sentry_trace.encode(), "HTTP_BAGGAGE": b"a=1"},
            {"HTTP_TRACEPARENT": f"00-{TID}-{SID}-01", "HTTP_TRACESTATE": "k=v"},
            Refusing(HTTP_SENTRY_TRACE=sentry_trace),
            {"HTTP_SENTRY_TRACE": sentry_trace, "HTTP_TRACEPARENT": Untestable()},
        ]
        for environ in environs:
            assert extract_environ(environ) == extract(environ, WSGI_GETTER, lazy=True)
        for environ in environs[1:]:
            found = extract_environ(environ)
            assert found is not None and found.trace_id == TID, environ

    def test_asgi_getter(self) -> None:
        scope: dict[str, Any] = {
            "type": "http",
            "headers": [
                (b"host", b"example.com"),
                (b"baggage", b"a=1"),
                None,
                (b"baggage",),
                123,
                (b"baggage", None),
                [b"baggage", b"b=\xe9"],
                (b"BAGGAGE", b"c=3"),
                ("baggage", "d=4"),
                (b"sentry-trace", f"{TID}-{SID}-1".encode()),
            ],
        }
        assert ASGI_GETTER.get(scope, "baggage") == "a=1,b=é,c=3,d=4"
        assert ASGI_GETTER.get(scope, "sentry-trace") == f"{TID}-{SID}-1"
        assert ASGI_GETTER.get(scope, "host") == "example.com"
        assert ASGI_GETTER.get(scope, "traceparent") is None
        assert ASGI_GETTER.get({"headers": None}, "baggage") is None
        assert ASGI_GETTER.get({"headers": 5}, "baggage") is None
        assert ASGI_GETTER.get({}, "baggage") is None


# --------------------------------------------------------------------------- extract


def _carriers(headers: Mapping[str, str]) -> list[tuple[Any, Any]]:
    """The same headers as a dict, a WSGI environ and an ASGI scope."""
    environ = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()}
    scope = {"headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]}
    return [(dict(headers), DICT_GETTER), (environ, WSGI_GETTER), (scope, ASGI_GETTER)]


def _extract_all(headers: Mapping[str, str]) -> IncomingTrace | None:
    results = [extract(carrier, getter) for carrier, getter in _carriers(headers)]
    assert results[0] == results[1] == results[2]
    return results[0]


class TestExtract:
    def test_sentry_trace_and_baggage(self) -> None:
        result = _extract_all({"sentry-trace": f"{TID}-{SID}-1", "baggage": EXAMPLE_BAGGAGE})
        assert result == IncomingTrace(
            TID, SID, True, EXAMPLE_DSC, ("other-vendor=foo;p=1",), None, False
        )
        assert extract({"Sentry-Trace": f"{TID}-{SID}-1", "Baggage": EXAMPLE_BAGGAGE}) == result

    def test_no_trace_header(self) -> None:
        assert _extract_all({"baggage": EXAMPLE_BAGGAGE}) is None
        assert _extract_all({"sentry-trace": "bogus", "traceparent": "bogus"}) is None
        assert _extract_all({}) is None

    def test_deferred_sentry_trace(self) -> None:
        result = _extract_all({"sentry-trace": f"{TID}-{SID}"})
        assert result == IncomingTrace(TID, SID, None, None, (), None, False)

    def test_sentry_trace_wins_over_traceparent(self) -> None:
        result = _extract_all(
            {
                "sentry-trace": f"{TID}-{SID}-0",
                "traceparent": f"00-{TID2}-{SID2}-03",
                "tracestate": "a=1",
            }
        )
        assert result is not None
        assert (result.trace_id, result.parent_span_id, result.parent_sampled) == (TID, SID, False)
        assert result.tracestate is None  # different trace: not forwarded
        assert result.random is False

    def test_same_trace_traceparent_contributes_state_and_random(self) -> None:
        result = _extract_all(
            {
                "sentry-trace": f"{TID}-{SID}-1",
                "traceparent": f"00-{TID}-{SID2}-02",
                "tracestate": "b=2, a=1",
            }
        )
        assert result is not None
        assert (result.parent_span_id, result.parent_sampled) == (SID, True)
        assert result.tracestate == "b=2,a=1"
        assert result.random is True

    @pytest.mark.parametrize(
        ("flags", "sampled", "random"),
        [("00", None, False), ("01", True, False), ("02", None, True), ("03", True, True)],
    )
    def test_traceparent_fallback(self, flags: str, sampled: bool | None, random: bool) -> None:
        result = _extract_all(
            {
                "sentry-trace": f"{TID.upper()}-{SID}-1",
                "traceparent": f"00-{TID2}-{SID2}-{flags}",
                "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
                "baggage": "vendor=1",
            }
        )
        assert result == IncomingTrace(
            TID2,
            SID2,
            sampled,
            None,
            ("vendor=1",),
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            random,
        )

    def test_invalid_tracestate_dropped(self) -> None:
        result = _extract_all({"traceparent": f"00-{TID2}-{SID2}-01", "tracestate": "A=1"})
        assert result is not None
        assert result.tracestate is None

    def test_asgi_repeated_headers(self) -> None:
        scope = {
            "headers": [
                (b"sentry-trace", f"{TID}-{SID}-1".encode()),
                (b"baggage", b"sentry-trace_id=" + TID.encode() + b",vendor=1"),
                (b"tracestate", b"a=1"),
                (b"baggage", b"sentry-release=r%401,vendor2=2"),
                (b"traceparent", f"00-{TID}-{SID2}-01".encode()),
                (b"tracestate", b"b=2"),
            ]
        }
        result = extract(scope, ASGI_GETTER)
        assert result is not None
        assert result.dsc == {"trace_id": TID, "release": "r@1"}
        assert result.third_party == ("vendor=1", "vendor2=2")
        assert result.tracestate == "a=1,b=2"

    def test_asgi_repeated_traceparent_is_invalid(self) -> None:
        scope = {
            "headers": [
                (b"traceparent", f"00-{TID}-{SID2}-01".encode()),
                (b"traceparent", f"00-{TID}-{SID2}-01".encode()),
            ]
        }
        assert extract(scope, ASGI_GETTER) is None

    def test_dsc_other_trace_dropped(self) -> None:
        result = _extract_all(
            {"sentry-trace": f"{TID2}-{SID2}-1", "baggage": EXAMPLE_BAGGAGE + ",more=2"}
        )
        assert result is not None
        assert result.dsc is None
        assert result.third_party == ("other-vendor=foo;p=1", "more=2")

    def test_dsc_trace_id_filled_in(self) -> None:
        result = _extract_all(
            {"sentry-trace": f"{TID}-{SID}-1", "baggage": "sentry-public_key=k,sentry-sampled=true"}
        )
        assert result is not None
        assert result.dsc == {"public_key": "k", "sampled": "true", "trace_id": TID}

    @pytest.mark.parametrize("rate", ["abc", "1.5", "-0.1", "nan", "inf", "", "0.5 "])
    def test_invalid_sample_rate_removed(self, rate: str) -> None:
        result = _extract_all(
            {
                "sentry-trace": f"{TID}-{SID}-1",
                "baggage": f"sentry-sample_rate={quote(rate)},sentry-public_key=k",
            }
        )
        assert result is not None
        assert result.dsc == {"public_key": "k", "trace_id": TID}

    @pytest.mark.parametrize("rate", ["0", "1", "1.0", "0.5", "0.000001", "1e-3"])
    def test_valid_sample_rate_kept(self, rate: str) -> None:
        for _ in range(2):  # second pass hits the validity cache
            result = _extract_all(
                {"sentry-trace": f"{TID}-{SID}-1", "baggage": f"sentry-sample_rate={rate}"}
            )
            assert result is not None
            assert result.dsc == {"sample_rate": rate, "trace_id": TID}

    @pytest.mark.parametrize(
        ("rand", "kept"),
        [
            ("0.250000", True),
            ("0.999999", True),
            ("0", True),
            ("0.5", True),
            ("1", False),
            ("1.000000", False),
            ("-0.1", False),
            ("nan", False),
            ("x", False),
        ],
    )
    def test_sample_rand_sanitized(self, rand: str, kept: bool) -> None:
        result = _extract_all(
            {"sentry-trace": f"{TID}-{SID}-1", "baggage": f"sentry-sample_rand={rand},sentry-a=1"}
        )
        assert result is not None
        assert result.dsc is not None
        assert ("sample_rand" in result.dsc) is kept

    @pytest.mark.parametrize(
        ("sampled", "kept"),
        [("true", True), ("false", True), ("yes", False), ("True", False), ("1", False)],
    )
    def test_sampled_sanitized(self, sampled: str, kept: bool) -> None:
        result = _extract_all(
            {"sentry-trace": f"{TID}-{SID}-1", "baggage": f"sentry-sampled={sampled},sentry-a=1"}
        )
        assert result is not None
        assert result.dsc is not None
        assert ("sampled" in result.dsc) is kept

    def test_dsc_empty_after_sanitizing(self) -> None:
        result = _extract_all(
            {"sentry-trace": f"{TID}-{SID}-1", "baggage": "sentry-sampled=maybe,v=1"}
        )
        assert result is not None
        assert result.dsc is None
        assert result.third_party == ("v=1",)

    def test_results_do_not_share_dicts(self) -> None:
        headers = {"sentry-trace": f"{TID}-{SID}-1", "baggage": EXAMPLE_BAGGAGE}
        first = extract(headers)
        assert first is not None and first.dsc is not None
        first.dsc["release"] = "mutated"
        second = extract(headers)
        assert second is not None and second.dsc == EXAMPLE_DSC

    def test_never_raises(self, caplog: pytest.LogCaptureFixture) -> None:
        class Broken:
            def get(self, carrier: object, key: str) -> str | None:
                raise RuntimeError("boom")

        with caplog.at_level(logging.DEBUG, logger="sentry_tracing_mw"):
            assert extract({}, Broken()) is None
        assert any(r.name == "sentry_tracing_mw" and r.exc_info for r in caplog.records)
        assert extract(None, DICT_GETTER) is None  # type: ignore[call-overload]
        assert extract(object(), WSGI_GETTER) is None
        assert extract(object(), ASGI_GETTER) is None


# --------------------------------------------------------------------------- robustness


_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(header_text)
def test_parsers_never_raise(value: str) -> None:
    parse_sentry_trace(value)
    parse_traceparent(value)
    parse_tracestate(value)
    baggage = parse_baggage(value)
    assert isinstance(baggage.sentry, dict)
    parse_sample_rand(value)
    parse_sample_rate(value)
    header = format_baggage(baggage.sentry, own=value, forwarded=baggage.third_party)
    assert format_baggage(baggage.sentry, own=header, forwarded=baggage.third_party) == header


@_FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["sentry-trace", "traceparent", "tracestate", "baggage"]), header_text
    )
)
def test_extract_never_raises(headers: dict[str, str]) -> None:
    for carrier, getter in _carriers(
        {k: v.encode("utf-8", "surrogatepass").decode("latin-1") for k, v in headers.items()}
    ):
        result = extract(carrier, getter)
        assert result is None or isinstance(result, IncomingTrace)


ADVERSARIAL = {
    "a": "a" * 2**20,
    "dash": "-" * 2**20,
    "comma": "," * 2**20,
    "space": " " * 2**20,
    "comma_space": ", \t" * (2**20 // 3),
    "percent": "sentry-x=" + "%" * 2**20,
    "percent_hex": "sentry-x=" + "%4" * 2**19,
    "equals": "=" * 2**20,
    "members": ",".join(f"k{i}=v{i}" for i in range(10_000)),
    "sentry_members": ",".join(f"sentry-k{i}=%41{i}" for i in range(10_000)),
    "hex": "0" * 2**20,
    "tracestate_like": "a=" + "b" * 2**20,
    "digits": "0." + "1" * 2**20,
    "traceparent_like": f"01-{TID}-{SID}-01-" + "x" * 2**20,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_linear_time_on_huge_headers(name: str) -> None:
    value = ADVERSARIAL[name]
    parsers: list[Callable[[str], object]] = [
        parse_sentry_trace,
        parse_traceparent,
        parse_tracestate,
        parse_baggage,
        parse_sample_rate,
        parse_sample_rand,
    ]
    for parser in parsers:
        elapsed = min(_timed(lambda p=parser: p(value)) for _ in range(2))
        assert elapsed < 0.05, (parser.__name__, elapsed)
    # just under the baggage size limit: fully parsed, still fast
    small = value[: prop._MAX_INCOMING_BAGGAGE_CHARS]
    assert min(_timed(lambda: parse_baggage(small)) for _ in range(2)) < 0.05
    assert min(_timed(lambda: format_baggage({"a": "1"}, own=value)) for _ in range(2)) < 0.2
    carrier = {"sentry-trace": value, "traceparent": value, "tracestate": value, "baggage": value}
    assert min(_timed(lambda: extract(carrier)) for _ in range(2)) < 0.05


def test_huge_valid_looking_traceparent_higher_version() -> None:
    assert parse_traceparent(ADVERSARIAL["traceparent_like"]) == TraceParent(TID, SID, True, False)


def test_no_forwarded_or_sentry_member_over_4096_bytes() -> None:
    """OpenTelemetry's parsers drop a baggage member over the older drafts' 4096 bytes: a
    forwarded third-party member or an upstream Sentry value that long is left out (the
    rest of the header goes), the app's own members go as set."""
    from sentry_tracing_mw._propagation import format_baggage

    big = "x" * 5000
    header = format_baggage(
        {"trace_id": "a" * 32, "release": big, "environment": "prod"},
        own=f"mine={big[:4200]}",
        forwarded=[f"theirs={big}", "small=1"],
    )
    members = [m.split("=", 1)[0] for m in header.split(",")]
    assert members == ["mine", "small", "sentry-trace_id", "sentry-environment"]
    assert len(header.encode()) <= MAX_BAGGAGE_BYTES


# -- forms a mutation check showed no other test watched ------------------------------------

_ZERO_IDS = [f"{'0' * 32}-{SID}-1", f"{TID}-{'0' * 16}-1"]


@pytest.mark.parametrize("value", _ZERO_IDS)
@pytest.mark.parametrize("wrap", ["{}", " {}", "\t{} ", "{},", " ,{}, x"])
def test_zero_ids_stay_invalid_when_trimmed_or_comma_joined(value: str, wrap: str) -> None:
    # §8: spaces and tabs around a value are trimmed and the first comma-joined value is
    # read, so an id the plain form refuses is refused in those forms too
    assert parse_sentry_trace(value) is None
    assert parse_sentry_trace(wrap.format(value)) is None
    assert extract({"sentry-trace": wrap.format(value)}) is None


@pytest.mark.parametrize("lead", ["\n", "\r", "\x0b", "\x0c", "\xa0"])
def test_other_whitespace_before_a_sentry_trace_is_invalid(lead: str) -> None:
    # §8: only spaces and tabs are trimmed, whether or not other values follow a comma
    value = f"{TID}-{SID}-1"
    assert parse_sentry_trace(lead + value) is None
    assert parse_sentry_trace(lead + value + ",") is None
    assert parse_sentry_trace(" ," + lead + value + ", x") is None
    assert parse_sentry_trace(" ," + value + ", x") == (TID, SID, True)


def test_comma_joined_traceparents_of_a_higher_version_are_invalid() -> None:
    # §9: more than one traceparent is invalid; a version above 00 may carry more "-"
    # fields, so a joined pair of such values would otherwise parse
    single = f"01-{TID}-{SID}-01-extra"
    assert parse_traceparent(single) == (TID, SID, True, False)
    joined = f"{single},00-{TID}-{SID}-01"
    assert parse_traceparent(joined) is None
    assert extract({"traceparent": joined}) is None


def test_lazy_extract_reads_the_recorded_decision_of_a_clear_traceparent() -> None:
    # a traceparent with the sampled bit clear and Sentry baggage recording the head's
    # decision takes that decision; lazy=True (what the middlewares use) must agree
    headers = {
        "traceparent": f"00-{TID}-{SID}-00",
        "baggage": "sentry-sample_rate=0.5,sentry-sample_rand=0.100000,sentry-sampled=true",
    }
    eager = extract(headers)
    lazy = extract(headers, lazy=True)
    assert eager is not None and lazy is not None
    assert eager.parent_sampled is True
    assert lazy.parent_sampled is True
