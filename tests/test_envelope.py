"""Envelope framing, body decoding, gzip, and never-failing JSON serialization."""

from __future__ import annotations

import gzip
import json
import math
import os
import time
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sentry_tracing_mw._envelope import (
    Envelope,
    EnvelopeError,
    Item,
    decode_body,
    gzip_compress,
    parse_envelope,
    serialize_envelope,
)
from sentry_tracing_mw._serialize import MAX_DEPTH, MAX_NODES, dumps, limit_depth

# -- serialize_envelope / parse_envelope ---------------------------------------------------


def test_serialize_exact_bytes() -> None:
    body = serialize_envelope(
        {"event_id": "a" * 32}, [({"type": "transaction"}, b'{"x":"\xc3\xa9"}')]
    )
    assert body == (
        b'{"event_id":"' + b"a" * 32 + b'"}\n{"type":"transaction","length":10}\n{"x":"\xc3\xa9"}\n'
    )
    assert b"\r" not in body


def test_roundtrip_multiple_items() -> None:
    items = [
        ({"type": "transaction", "content_type": "application/json"}, b'{"a":1}'),
        ({"type": "client_report"}, b'{"discarded_events":[]}'),
        ({"type": "attachment", "filename": "x.txt"}, b"line1\nline2\n\x00\xff"),
        ({"type": "empty"}, b""),
    ]
    env = parse_envelope(serialize_envelope({"dsn": "http://k@h/1"}, items))
    assert env.headers == {"dsn": "http://k@h/1"}
    assert [(it.headers["type"], it.payload) for it in env.items] == [
        (h["type"], p) for h, p in items
    ]
    assert env.items[0].headers["content_type"] == "application/json"
    assert env.items[2].headers["length"] == len(items[2][1])
    assert env.items[0].json() == {"a": 1}
    assert env.serialize() == serialize_envelope({"dsn": "http://k@h/1"}, items)


def test_empty_header_only() -> None:
    assert parse_envelope(b"{}") == Envelope({}, [])
    assert parse_envelope(b"{}\n") == Envelope({}, [])


def test_items_without_length() -> None:
    env = parse_envelope(b'{}\n{"type":"event"}\n{"a":1}\n{"type":"attachment"}\nabc')
    assert [it.payload for it in env.items] == [b'{"a":1}', b"abc"]
    env = parse_envelope(b'{}\n{"type":"x"}\n')
    assert env.items == [Item({"type": "x"}, b"")]
    env = parse_envelope(b'{}\n{"type":"x"}')
    assert env.items == [Item({"type": "x"}, b"")]
    # CR in an implicit-length payload is a payload byte
    assert parse_envelope(b'{}\n{"type":"x"}\nab\r\n').items[0].payload == b"ab\r"


def test_length_null_is_absent_and_zero_length_at_eof() -> None:
    assert parse_envelope(b'{}\n{"type":"x","length":null}\nab').items[0].payload == b"ab"
    assert parse_envelope(b'{}\n{"type":"x","length":0}').items[0].payload == b""
    assert parse_envelope(b'{}\n{"type":"x","length":0}\n').items[0].payload == b""


def test_span_and_client_report_items() -> None:
    spans = json.dumps(
        {
            "version": 2,
            "items": [
                {
                    "trace_id": "a" * 32,
                    "span_id": "b" * 16,
                    "name": "GET /",
                    "status": "ok",
                    "is_segment": True,
                    "start_timestamp": 1.0,
                    "end_timestamp": 2.0,
                    "attributes": {"sentry.op": {"type": "string", "value": "http.server"}},
                }
            ],
        }
    ).encode()
    report = b'{"timestamp":1.5,"discarded_events":[{"reason":"sample_rate","category":"span","quantity":3}]}'
    raw = serialize_envelope(
        {},
        [
            (
                {
                    "type": "span",
                    "item_count": 1,
                    "content_type": "application/vnd.sentry.items.span.v2+json",
                },
                spans,
            ),
            ({"type": "client_report"}, report),
            ({"type": "future_thing"}, b"\x00\x01"),
        ],
    )
    env = parse_envelope(raw)
    assert [it.type for it in env.items] == ["span", "client_report", "future_thing"]
    assert env.items[0].json()["items"][0]["is_segment"] is True
    assert env.items[1].json()["discarded_events"][0]["quantity"] == 3
    assert next(env.items_of("future_thing")).payload == b"\x00\x01"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "empty"),
        (b"[]", "not a JSON object"),
        (b"{}\r\n", "carriage return"),
        (b"{} \n", "whitespace"),
        (b" {}\n", "whitespace"),
        (b"{nope\n", "not valid JSON"),
        (b"\xff\xfe\n", "not valid JSON"),
        (b"{}\n\n", "blank line"),
        (b'{}\n{"type":"x","length":1}\na\n\n', "blank line"),
        (b'{}\n{"type":"x","length":1}\na\n \n', "whitespace"),
        (b'{}\n{"type":"x","length":3}\nab', "end of file"),
        (b'{}\n{"type":"x","length":3}', "end of file"),
        (b'{}\n{"type":"x","length":1}\nab\n', "missing newline"),
        (b'{}\n{"type":"x","length":1}\na \n', "missing newline"),
        (b'{}\n{"type":"x","length":1}\na\r\n', "missing newline"),
        (b'{}\n{"type":"x","length":-1}\n\n', "negative"),
        (b'{}\n{"type":"x","length":"1"}\na\n', "not an integer"),
        (b'{}\n{"type":"x","length":1.5}\na\n', "not an integer"),
        (b'{}\n{"type":"x","length":true}\na\n', "not an integer"),
        (b'{}\n{"length":1}\na\n', "no 'type'"),
        (b'{}\n{"type":5}\na\n', "not a string"),
        (b'{}\n{"type":"x"}\r\na\n', "carriage return"),
        (b"{}\n[1]\n", "not a JSON object"),
        (b'{}\n"x"\n', "not a JSON object"),
        (b"{}\n" + b"[" * 100000 + b"\n", "not valid JSON"),
    ],
)
def test_malformed(raw: bytes, fragment: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        parse_envelope(raw)
    assert fragment.lower() in str(info.value).lower()


def test_parse_rejects_non_bytes() -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope("{}")  # type: ignore[arg-type]


def test_item_json_error() -> None:
    with pytest.raises(EnvelopeError):
        Item({"type": "event"}, b"\xff").json()


_header = st.one_of(
    st.just(b"{}"),
    st.just(b'{"type":"event"}'),
    st.builds(lambda n: b'{"type":"x","length":%d}' % n, st.integers(-2, 12)),
    st.binary(max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.one_of(_header, st.binary(max_size=16), st.sampled_from([b"\n", b"\r", b" "])),
        max_size=10,
    )
)
def test_fuzz_structured(chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    try:
        env = parse_envelope(data)
    except EnvelopeError:
        return
    assert isinstance(env, Envelope)
    for it in env.items:
        assert isinstance(it.type, str)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    try:
        parse_envelope(data)
    except EnvelopeError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
            st.binary(max_size=50),
        ),
        max_size=5,
    )
)
def test_fuzz_roundtrip(items: list[tuple[dict[str, str], bytes]]) -> None:
    typed = [({**h, "type": "t"}, p) for h, p in items]
    env = parse_envelope(serialize_envelope({"k": "v"}, typed))
    assert [it.payload for it in env.items] == [p for _, p in typed]


# -- decode_body / gzip ----------------------------------------------------------------------


def test_gzip_compress_roundtrip() -> None:
    data = b'{"a":1}' * 1000
    packed = gzip_compress(data)
    assert packed[:2] == b"\x1f\x8b"
    assert gzip.decompress(packed) == data
    assert decode_body(packed, "gzip", len(data)) == data


@pytest.mark.parametrize(
    "size", [0, 1, 255, 256, 257, 511, 512, 513, 4097, 32767, 32768, 32769, 300_000]
)
def test_gzip_window_sized_to_the_data_round_trips_and_compresses_as_well(size: int) -> None:
    import random
    import zlib

    rng = random.Random(size)
    words = [b"span", b"db", b"SELECT", b"http.client", b"trace_id", b'":"', b","]
    data = b"".join(rng.choice(words) for _ in range(size))[:size]
    packed = gzip_compress(data)
    assert gzip.decompress(packed) == data
    assert decode_body(packed, "gzip", max(1, len(data))) == data or not data
    reference = zlib.compressobj(3, zlib.DEFLATED, 31)
    default_size = len(reference.compress(data) + reference.flush())
    assert len(packed) <= default_size * 1.02 + 8


@pytest.mark.parametrize("encoding", [None, "", "identity"])
def test_identity(encoding: str | None) -> None:
    assert decode_body(b"abc", encoding, 3) == b"abc"
    with pytest.raises(EnvelopeError):
        decode_body(b"abcd", encoding, 3)


def test_stacked_encodings_are_bounded() -> None:
    data = b'{"event_id":"x"}\n'
    body = data
    for _ in range(4):
        body = gzip.compress(body)
    assert decode_body(body, "gzip, gzip, gzip, gzip", 10_000) == data
    with pytest.raises(EnvelopeError, match="stacked"):
        decode_body(gzip.compress(body), ", ".join(["gzip"] * 5), 10_000)
    with pytest.raises(EnvelopeError, match="stacked"):
        decode_body(data, ", ".join(["identity"] * 2500), 10_000)


def test_brotli_bounded_and_checked() -> None:
    import brotli

    data = b'{"event_id":"x"}\n{"type":"transaction"}\n{}\n'
    assert decode_body(brotli.compress(data), "br", 10_000) == data
    bomb = brotli.compress(b"\x00" * (64 * 1024 * 1024))  # a few hundred bytes
    with pytest.raises(EnvelopeError, match="exceeds"):
        decode_body(bomb, "br", 1_000_000)
    with pytest.raises(EnvelopeError, match="invalid br"):
        decode_body(brotli.compress(data)[:-3], "br", 10_000)
    with pytest.raises(EnvelopeError, match="invalid br"):
        decode_body(b"not brotli", "br", 10_000)


def test_a_brotli_body_over_64_kib_decodes() -> None:
    """brotli 1.2 keeps output pending past ``output_buffer_limit``: a body over 64 KiB
    decoded was refused as truncated. The size limit still holds, truncation is found."""
    import brotli

    data = json.dumps([os.urandom(12).hex() for _ in range(12_000)]).encode()  # ~350 KB
    packed = brotli.compress(data)
    assert decode_body(packed, "br", 1_000_000) == data
    with pytest.raises(EnvelopeError, match="exceeds"):
        decode_body(packed, "br", len(data) - 1)
    with pytest.raises(EnvelopeError, match="invalid br"):
        decode_body(packed[: len(packed) // 2], "br", 1_000_000)
    with pytest.raises(EnvelopeError, match="invalid br"):
        decode_body(packed[:-1], "br", 1_000_000)


def test_deflate_zlib_and_raw() -> None:
    data = b"hello world" * 50
    assert decode_body(zlib.compress(data), "deflate", 10_000) == data
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert decode_body(raw.compress(data) + raw.flush(), "Deflate", 10_000) == data


def test_gzip_concatenated_members() -> None:
    assert decode_body(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 10) == b"abcd"


def test_size_limit_is_enforced_without_allocating() -> None:
    bomb = gzip_compress(b"\x00" * (50 * 1024 * 1024))
    with pytest.raises(EnvelopeError, match="exceeds"):
        decode_body(bomb, "gzip", 1024 * 1024)
    with pytest.raises(EnvelopeError, match="exceeds"):
        decode_body(zlib.compress(b"\x00" * 100_000), "deflate", 1000)
    assert decode_body(gzip_compress(b"x" * 1000), "gzip", 1000) == b"x" * 1000


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"not gzip", "gzip"),
        (gzip.compress(b"abcdef")[:-10], "gzip"),
        (b"\x00\x01\x02", "deflate"),
        (gzip.compress(b"x") + b"garbage", "gzip"),
        (b"abc", "br"),
        (b"abc", "compress"),
    ],
)
def test_bad_bodies(data: bytes, encoding: str) -> None:
    with pytest.raises(EnvelopeError):
        decode_body(data, encoding, 1000)


# -- dumps -----------------------------------------------------------------------------------


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("nope")


class _Custom:
    def __repr__(self) -> str:
        return "<custom>"


def test_dumps_fast_path_compact_utf8() -> None:
    assert (
        dumps({"a": [1, 2.5, None, True], "é": "ü"}) == '{"a":[1,2.5,null,true],"é":"ü"}'.encode()
    )


def test_dumps_coercions() -> None:
    out = json.loads(
        dumps(
            {
                1: b"\xff\xfeab",
                (1, 2): {3},
                "t": (1, 2),
                "o": _Custom(),
                "bad": _BadRepr(),
                None: 1,
            }
        )
    )
    assert out["1"] == "\ufffd\ufffdab"
    assert out["(1, 2)"] == [3]
    assert out["t"] == [1, 2]
    assert out["o"] == "<custom>"
    assert out["bad"] == "<unrepresentable>"
    assert out["null"] == 1


def test_dumps_nan_inf() -> None:
    assert json.loads(dumps({"a": math.nan, "b": [math.inf, -math.inf], "c": 1.0})) == {
        "a": None,
        "b": [None, None],
        "c": 1.0,
    }


def test_dumps_cycles_and_depth() -> None:
    a: dict[str, Any] = {"x": 1}
    a["self"] = a
    lst: list[Any] = [1]
    lst.append(lst)
    out = json.loads(dumps({"a": a, "l": lst}))
    assert out["a"]["self"] == "[Circular]"
    assert out["l"][1] == "[Circular]"
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    text = dumps(deep)  # never raises, however deep (how deep depends on the Python)
    json.loads(text)
    # What a user hook returns is capped: Sentry refuses payloads over ~128 levels, and
    # json.dumps nests 5000 levels without a RecursionError on Python 3.13.
    for nested in (deep, {"a": {"b": deep}}, [a, lst, deep]):
        text = dumps(limit_depth(nested))
        assert b"[MaxDepth]" in text
        assert _depth(json.loads(text)) <= MAX_DEPTH + 1
    shallow = {"a": [1, {"b": "c"}], "d": ({"e": None},)}
    assert limit_depth(shallow) is shallow  # nothing copied when nothing is too deep
    assert json.loads(dumps(limit_depth({"cycle": a})))["cycle"]["self"] == "[Circular]"
    shared: list[Any] = [1]
    for _ in range(MAX_DEPTH - 2):
        shared = [shared, shared]  # 2**18 paths, one object per level
    copied = limit_depth(shared)  # shared sub-objects: written out, within MAX_NODES values
    assert copied is not shared and json.loads(dumps(copied)) == json.loads(json.dumps(shared))


def test_limit_depth_bounds_what_json_would_expand_or_iterate_itself() -> None:
    # A hook's shared sub-objects: json.dumps would write 10**8 leaves holding the GIL.
    shared: Any = "leaf"
    for _ in range(8):
        shared = [shared] * 10
    started = time.perf_counter()
    text = dumps(limit_depth({"extra": shared}))
    assert time.perf_counter() - started < 5
    assert b"[MaxSize]" in text and len(text) < 10 * MAX_NODES
    flat = dumps(limit_depth({"x": list(range(2 * MAX_NODES))}))
    assert flat.endswith(b',"[MaxSize]"]}') and len(flat) < 10 * MAX_NODES
    # big but plain (a transaction's thousand spans with data): not copied, nothing cut
    spans = [{"span_id": str(i), "data": {"ids": list(range(100))}} for i in range(1000)]
    event = {"spans": spans}
    assert limit_depth(event) is event
    # containers json iterates through code of their own: sets, subclasses
    frozen: Any = frozenset({1})
    for i in range(300):
        frozen = frozenset({frozen, i})

    class Sneaky(dict):  # type: ignore[type-arg]
        def values(self) -> Any:
            return []

    sneaky: Any = "leaf"
    for _ in range(300):
        sneaky = Sneaky(k=sneaky)
    for value in (frozen, sneaky, {"t": (("x",) * 3,) * 2}):
        out = json.loads(dumps(limit_depth({"v": value})))
        assert _depth(out) <= MAX_DEPTH + 1


def test_bounded_repr_of_locals() -> None:
    import collections

    from sentry_tracing_mw._serialize import safe_repr as _safe_repr

    big = collections.defaultdict(int, {i: i for i in range(200_000)})
    started = time.perf_counter()
    for _ in range(20):
        text = _safe_repr(big)
    assert time.perf_counter() - started < 1  # a full repr took about 50 ms each
    assert text.startswith("defaultdict({0: 0, 1: 1,") and text.endswith(", ...})")

    class Bad:
        def __repr__(self) -> str:
            raise ValueError("no")

    class dict(collections.UserDict):  # type: ignore[type-arg]  # a user class named dict
        pass

    assert _safe_repr(Bad()) == "<unrepresentable>"  # never a memory address
    assert _safe_repr(dict(a=1)) == "{'a': 1}"  # its own repr
    assert _safe_repr("x" * 5000) == "'" + "x" * 508 + "..."
    assert _safe_repr([1, "a", None]) == "[1, 'a', None]"
    assert _safe_repr((1,)) == "(1,)" and _safe_repr(set()) == "set()"
    assert _safe_repr([[[[[1]]]]]) == "[[[[...]]]]"
    # bounded in work, not only in output: 20**4 long strings are never formatted
    leaf = ["x" * 512] * 20
    nested = [[[leaf] * 20] * 20] * 20
    started = time.perf_counter()
    assert len(_safe_repr(nested)) <= 512
    assert time.perf_counter() - started < 0.1
    # by the real type: a lazy proxy is never evaluated (Django's request.user)
    from django.utils.functional import SimpleLazyObject

    evaluated = []
    lazy = SimpleLazyObject(lambda: evaluated.append(1) or [1, 2])
    assert _safe_repr(lazy).startswith("<SimpleLazyObject") and not evaluated
    from collections import namedtuple

    point = namedtuple("point", "x y")
    assert _safe_repr([point(1, 2)]) == "[point(x=1, y=2)]"  # its own repr, when small


def test_a_budgeted_copy_keeps_small_values_and_marks_cut_lists() -> None:
    from sentry_tracing_mw._serialize import _sanitize

    event = {
        "extra": {"big": [list(range(1000))] * 2000},  # shared: copied within the budget
        "event_id": "e" * 32,
        "contexts": {"trace": {"trace_id": "t" * 32}},
        "spans": [{"span_id": "s"}],
    }
    copied = limit_depth(event)
    assert copied["event_id"] == "e" * 32 and copied["contexts"]["trace"]["trace_id"] == "t" * 32
    assert copied["spans"] == [{"span_id": "s"}]  # small values go first
    assert copied["extra"]["big"][-1] == "[MaxSize]"
    assert _sanitize([1, 2], 0, set(), [3]) == [1, 2]  # an exact fit is not marked


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def test_dumps_surrogates_valid_utf8() -> None:
    out = dumps({"k\ud800": "a\udfffb", "pair": "\ud83d\ude00"})
    text = out.decode("utf-8")  # strict: must be valid UTF-8
    assert json.loads(text) == {"k\ufffd": "a\ufffdb", "pair": "\U0001f600"}


def test_dumps_long_repr_truncated() -> None:
    class Long:
        def __repr__(self) -> str:
            return "x" * 10_000

    assert len(json.loads(dumps(Long()))) <= 512


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary()),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(st.one_of(st.text(), st.integers(), st.floats()), children, max_size=4),
        ),
        max_leaves=20,
    )
)
def test_dumps_never_fails(obj: Any) -> None:
    json.loads(dumps(obj).decode("utf-8"))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"sent_at":"2025-01-01T00:00:00Z","sent_at":"2025-01-01T00:00:01Z"}\n',
        b'{"event_id":"9ec79c33ec9942ab8353589fcb2e04dc","x":NaN}\n',
        b'{}\n{"type":"event","type":"transaction","length":2}\n{}\n',
        b'{}\n{"type":"event","length":-Infinity}\n{}\n',
    ],
)
def test_parser_rejects_duplicate_header_keys_and_non_json_numbers(raw: bytes) -> None:
    """Sentry rejects a duplicate ``sent_at`` (protocol §4); NaN/Infinity are not JSON."""
    with pytest.raises(EnvelopeError, match=r"duplicate key|not valid JSON"):
        parse_envelope(raw)


def test_item_json_rejects_nan() -> None:
    env = parse_envelope(b'{}\n{"type":"event","length":11}\n{"a":NaN }\n')
    with pytest.raises(EnvelopeError, match="NaN is not valid JSON"):
        env.items[0].json()


# -- what a copy keeps, where depth is cut, one-item tuples ---------------------------------
# (each of these guards a line a mutation check showed no other test watched)


def test_json_int_keeps_exactly_the_64_bit_range() -> None:
    """Sentry stores integers as i64 or u64 and zeroes wider ones (_serialize.json_int)."""
    from sentry_tracing_mw._serialize import json_int

    for kept in (0, 1, -(2**63), 2**64 - 1):
        assert json_int(kept) == kept and type(json_int(kept)) is int
    for wide in (2**64, -(2**63) - 1):
        assert json_int(wide) == float(wide) and type(json_int(wide)) is float
    assert json_int(10**400) == f"<int of {(10**400).bit_length()} bits>"


def test_a_copy_keeps_scalars_as_they_are() -> None:
    """limit_depth's copy (forced here by a set) keeps None/True/False, turns only ints
    wider than 64 bits into floats, and a date into its ISO form."""
    import datetime
    import json

    from sentry_tracing_mw._serialize import dumps, limit_depth

    class Big(int):
        pass

    event = {"s": {1}, "n": None, "t": True, "f": False, "i": 7, "w": 2**70, "b": Big(2**70)}
    copied = limit_depth(event)
    assert copied == {
        "s": [1],
        "n": None,
        "t": True,
        "f": False,
        "i": 7,
        "w": float(2**70),
        "b": float(2**70),
    }
    assert copied["f"] is False and copied["t"] is True and type(copied["i"]) is int
    # no set: still copied, for the wide int and for the int subclass alone
    assert type(limit_depth({"w": 2**70})["w"]) is float
    assert type(limit_depth({"b": [Big(3)]})["b"][0]) is int
    assert json.loads(dumps({"d": datetime.date(2026, 1, 2), "x": {1}})) == {
        "d": "2026-01-02",
        "x": [1],
    }
    assert limit_depth(frozenset({1})) == [1]  # a top-level set is copied too


def test_limit_depth_cuts_at_exactly_max_depth() -> None:
    import json

    from sentry_tracing_mw._serialize import MAX_DEPTH, dumps, limit_depth

    nested: object = "leaf"
    for _ in range(MAX_DEPTH + 5):
        nested = {"k": nested}
    out = json.loads(dumps(limit_depth({"x": {1}, "n": nested})))
    node = out["n"]
    depth = 1
    while isinstance(node, dict):
        node, depth = node["k"], depth + 1
    assert node == "[MaxDepth]" and depth == MAX_DEPTH


def test_safe_repr_of_a_one_item_tuple_of_a_container() -> None:
    from sentry_tracing_mw._serialize import safe_repr

    assert safe_repr(([1],)) == "([1],)"


# -- numbers no float can hold --
# (each of these guards a line a mutation check showed no other test watched)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"x":1e999}\n',  # no float holds it: it would come back as Infinity, not JSON
        b'{}\n{"type":"event","length":2,"sample_rate":-1e400}\n{}\n',
    ],
)
def test_parser_rejects_numbers_no_float_can_hold(raw: bytes) -> None:
    with pytest.raises(EnvelopeError, match="does not fit a float"):
        parse_envelope(raw)
    env = parse_envelope(b'{}\n{"type":"event","length":11}\n{"a":1e999}\n')
    with pytest.raises(EnvelopeError, match="does not fit a float"):
        env.items[0].json()
