"""The collector under hostile input: every malformed body gets a 4xx with a message, nothing
is stored, and the server keeps serving; 50 concurrent uploads are all stored; rows written by
older versions (before timestamps and nesting were checked) never break the viewer or show."""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import unicodedata
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from sentry_tracing_mw._envelope import (
    MAX_GZIP_MEMBERS,
    EnvelopeError,
    decode_body,
    gzip_compress,
    serialize_envelope,
)
from sentry_tracing_mw.collector import Collector
from sentry_tracing_mw.collector.server import MAX_BODY
from sentry_tracing_mw.collector.show import show
from sentry_tracing_mw.collector.store import MAX_JSON_DEPTH
from sentry_tracing_mw.collector.tree import printable
from sentry_tracing_mw.collector.viewer import json_safe

AUTH = "Sentry sentry_version=7, sentry_client=test/1, sentry_key=public"


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    path: Path = tmp_path_factory.mktemp("hostile") / "traces.sqlite3"
    c = Collector(str(path), port=0).start()
    try:
        yield c
    finally:
        c.stop()


def transaction(n: int) -> dict[str, Any]:
    now = time.time()
    trace_id, span_id = f"{n + 1:032x}", f"{n + 1:016x}"
    return {
        "type": "transaction",
        "event_id": os.urandom(16).hex(),
        "transaction": f"tx-{n}",
        "start_timestamp": now,
        "timestamp": now + 0.01,
        "contexts": {"trace": {"trace_id": trace_id, "span_id": span_id, "op": "task"}},
        "spans": [
            {
                "trace_id": trace_id,
                "span_id": f"{n + 1:08x}{0xABC:08x}",
                "parent_span_id": span_id,
                "op": "db",
                "start_timestamp": now,
                "timestamp": now + 0.001,
            }
        ],
    }


def envelope(payload: dict[str, Any], *extra: tuple[dict[str, Any], bytes]) -> bytes:
    return serialize_envelope(
        {"event_id": payload["event_id"]},
        [({"type": "transaction"}, json.dumps(payload).encode()), *extra],
    )


def send(
    c: Collector,
    body: bytes,
    encoding: str | None = "gzip",
    headers: dict[str, str] | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:
    h = {"X-Sentry-Auth": AUTH, "Content-Type": "application/x-sentry-envelope"}
    if encoding:
        h["Content-Encoding"] = encoding
    h.update(headers or {})
    url = f"{c.url}/api/1/envelope/"
    if client is not None:
        return client.post(url, content=body, headers=h)
    return httpx.post(url, content=body, headers=h, timeout=30)


def assert_still_serving(c: Collector) -> None:
    payload = transaction(999_000 + int(time.monotonic_ns() % 100_000))
    before = c.store.counts()["units"]
    res = send(c, gzip_compress(envelope(payload)))
    assert res.status_code == 200, res.text
    assert c.store.counts()["units"] == before + 1
    assert httpx.get(c.url + "/api/ui/summary", timeout=10).status_code == 200


GOOD = envelope(transaction(1))
_tx = transaction(2)
_body = json.dumps(_tx).encode()


def _tx_envelope(payload: dict[str, Any], nested: str | None = None) -> bytes:
    """A transaction envelope; ``nested`` (raw JSON text) replaces the string ``"@@"``."""
    body = json.dumps(payload)
    if nested is not None:
        body = body.replace('"@@"', nested)
    return serialize_envelope({}, [({"type": "transaction"}, body.encode())])


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _with_span(**changes: Any) -> dict[str, Any]:
    return dict(_tx, spans=[dict(_tx["spans"][0], **changes)])


_now = _tx["start_timestamp"]
_span_v2 = {
    "trace_id": "f" * 32,
    "span_id": "e" * 16,
    "is_segment": True,
    "name": "GET /late",
    "status": "ok",
    "start_timestamp": _now,
    "end_timestamp": 1e20,
}


def _gzip_bomb() -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    parts = [comp.compress(chunk) for _ in range(MAX_BODY // len(chunk) + 2)]
    return b"".join(parts) + comp.flush()


CASES: list[tuple[str, bytes, str | None, int, str]] = [
    ("garbage", os.urandom(4096), None, 400, "header"),
    ("garbage labelled gzip", b"this is not gzip at all", "gzip", 400, "gzip"),
    ("truncated gzip", gzip_compress(GOOD)[:-20], "gzip", 400, "truncated"),
    ("gzip with trailing garbage", gzip_compress(GOOD) + b"XXXX", "gzip", 400, "gzip body"),
    ("gzip bomb", _gzip_bomb(), "gzip", 413, "exceeds"),
    ("deflate garbage", b"\x78\x9c garbage", "deflate", 400, "deflate"),
    ("unsupported encoding", GOOD, "zstd", 415, "Content-Encoding"),
    ("br garbage", b"not brotli at all", "br", 400, "invalid br"),
    ("unknown encoding", GOOD, "rot13", 415, "Content-Encoding"),
    ("empty body", b"", None, 400, "empty"),
    ("empty gzip body", gzip_compress(b""), "gzip", 400, "empty"),
    ("non-JSON envelope header", b"{not json}\n" + GOOD.split(b"\n", 1)[1], None, 400, "JSON"),
    ("envelope header not an object", b"[1,2]\n", None, 400, "object"),
    (
        "non-JSON item header",
        GOOD.split(b"\n", 1)[0] + b"\n{type: transaction}\n{}\n",
        None,
        400,
        "JSON",
    ),
    ("item header without type", b'{}\n{"length":2}\n{}\n', None, 400, "type"),
    (
        "length longer than body",
        b'{}\n{"type":"transaction","length":99999}\n' + _body,
        None,
        400,
        "end of file",
    ),
    (
        "length shorter than payload",
        b'{}\n{"type":"transaction","length":10}\n' + _body + b"\n",
        None,
        400,
        "newline",
    ),
    ("negative length", b'{}\n{"type":"event","length":-1}\n{}\n', None, 400, "negative"),
    ("CRLF framing", GOOD.replace(b"\n", b"\r\n"), None, 400, "carriage return"),
    ("blank line between items", GOOD.replace(b"}\n{", b"}\n\n{", 1), None, 400, "blank"),
    (
        "huge envelope header",
        json.dumps({"pad": "x" * 200_000}).encode() + b"\n",
        None,
        400,
        "longer than",
    ),
    (
        "huge item header",
        b"{}\n" + json.dumps({"type": "event", "pad": "x" * 200_000}).encode() + b"\n{}\n",
        None,
        400,
        "longer than",
    ),
    (
        "transaction payload not JSON",
        serialize_envelope({}, [({"type": "transaction"}, b"{oops")]),
        None,
        400,
        "not JSON",
    ),
    (
        "transaction without contexts.trace",
        serialize_envelope(
            {},
            [
                (
                    {"type": "transaction"},
                    json.dumps({k: v for k, v in _tx.items() if k != "contexts"}).encode(),
                )
            ],
        ),
        None,
        400,
        "contexts.trace",
    ),
    (
        "transaction with bad trace id",
        serialize_envelope(
            {},
            [
                (
                    {"type": "transaction"},
                    json.dumps(
                        dict(_tx, contexts={"trace": {"trace_id": "xyz", "span_id": "1" * 16}})
                    ).encode(),
                )
            ],
        ),
        None,
        400,
        "trace_id",
    ),
    (
        "transaction ending before it starts",
        serialize_envelope(
            {},
            [
                (
                    {"type": "transaction"},
                    json.dumps(dict(_tx, timestamp=_tx["start_timestamp"] - 1)).encode(),
                )
            ],
        ),
        None,
        400,
        "before",
    ),
    (
        "valid transaction followed by a bad span item (all or nothing)",
        envelope(transaction(3), ({"type": "span"}, b'{"version":2,"items":[{"span_id":1}]}')),
        None,
        400,
        "span",
    ),
    (
        "valid transaction followed by a bad client report",
        envelope(
            transaction(4), ({"type": "client_report"}, b'{"discarded_events":[{"reason":"x"}]}')
        ),
        None,
        400,
        "reason",
    ),
    (
        "span item of the wrong shape",
        serialize_envelope({}, [({"type": "span"}, b"[1,2,3]")]),
        None,
        400,
        "version",
    ),
    # timestamps: Relay drops a transaction before 1970; past year 9999 is no date at all
    # (0 .. 1e306 made an infinite duration that broke every viewer page)
    (
        "transaction from 1970 to 1e306 (infinite duration)",
        _tx_envelope(dict(_tx, start_timestamp=0, timestamp=1e306)),
        None,
        400,
        "timestamp 1e+306 is out of range",
    ),
    (
        "millisecond timestamps",
        _tx_envelope(dict(_tx, start_timestamp=_now * 1000, timestamp=_now * 1000 + 10)),
        None,
        400,
        "milliseconds",
    ),
    (
        "start_timestamp before 1970",
        _tx_envelope(dict(_tx, start_timestamp=-1)),
        None,
        400,
        "start_timestamp -1.0 is out of range",
    ),
    (
        "RFC 3339 timestamp in year 1",
        _tx_envelope(dict(_tx, start_timestamp="0001-01-01T00:00:00Z")),
        None,
        400,
        "out of range",
    ),
    (
        "span ending in year 33658",
        _tx_envelope(_with_span(timestamp=1e12)),
        None,
        400,
        "span 0: timestamp 1000000000000.0 is out of range",
    ),
    (
        "streamed span ending after year 9999",
        serialize_envelope(
            {},
            [({"type": "span"}, json.dumps({"version": 2, "items": [_span_v2]}).encode())],
        ),
        None,
        400,
        "end_timestamp 1e+20 is out of range",
    ),
    # nesting: Python parses ~1000 levels but cannot store or show that deep
    (
        "transaction nested 300 deep",
        _tx_envelope(dict(_tx, extra="@@"), _nested(300)),
        None,
        400,
        f"nested deeper than {MAX_JSON_DEPTH} levels",
    ),
    (
        "transaction contexts nested 970 deep",
        _tx_envelope(dict(_tx, contexts=dict(_tx["contexts"], x={"v": "@@"})), _nested(970)),
        None,
        400,
        "invalid envelope",  # too deep, or (depending on the Python) not even parsed
    ),
    (
        "error event nested 300 deep",
        serialize_envelope(
            {},
            [
                (
                    {"type": "event"},
                    json.dumps({"event_id": "a" * 32, "extra": "@@"})
                    .replace('"@@"', _nested(300))
                    .encode(),
                )
            ],
        ),
        None,
        400,
        "item 0 (event): JSON nested deeper",
    ),
    (
        "envelope header nested 300 deep",
        ('{"x":' + _nested(300) + "}").encode() + b"\n" + GOOD.split(b"\n", 1)[1],
        None,
        400,
        "envelope header: JSON nested deeper",
    ),
    (
        "item header nested 300 deep",
        b"{}\n" + ('{"type":"event","x":' + _nested(300) + "}").encode() + b"\n{}\n",
        None,
        400,
        "item 0: header nested deeper",
    ),
    (
        "dsn header that is not a DSN",
        serialize_envelope({"dsn": 42}, [({"type": "transaction"}, _body)]),
        None,
        400,
        "dsn",
    ),
    (
        "dsn header for another project",
        serialize_envelope(
            {"dsn": "http://public@127.0.0.1:1/7"}, [({"type": "transaction"}, _body)]
        ),
        None,
        403,
        "project '7'",
    ),
    # JSON that is valid syntax but no value a store can hold (they used to give 500s or a
    # stored row that broke the trace's viewer pages for good)
    (
        "lone surrogate in a tag value",
        _tx_envelope(dict(_tx, tags={"path": "@@"}), nested='"\\ud800"'),
        None,
        400,
        "surrogate",
    ),
    (
        "lone surrogate in the transaction name",
        _tx_envelope(dict(_tx, transaction="@@"), nested='"a\\udc00b"'),
        None,
        400,
        "surrogate",
    ),
    (
        "lone surrogate in an item header's type",
        b'{}\n{"type":"weird\\ud800","length":1}\nx\n',
        None,
        400,
        "item 0 header: a string holds a lone surrogate",
    ),
    (
        "lone surrogate in an item header after a valid transaction",
        GOOD + b'{"type":"attachment","filename":"\\udfff.txt","length":1}\nx\n',
        None,
        400,
        "item 1 header: a string holds a lone surrogate",
    ),
    (
        "start_timestamp beyond any float",
        _tx_envelope(dict(_tx, start_timestamp="@@"), nested="1" + "0" * 400),
        None,
        400,
        "start_timestamp",
    ),
    (
        "span start beyond any float",
        _tx_envelope(_with_span(start_timestamp="@@"), nested="1" + "0" * 400),
        None,
        400,
        "start_timestamp",
    ),
    (
        "a number no float holds in extra data",
        _tx_envelope(dict(_tx, extra={"n": "@@"}), nested="1e999"),
        None,
        400,
        "float",
    ),
    (
        "a number no float holds in a span's data",
        _tx_envelope(_with_span(data={"n": "@@"}), nested="-2.5e400"),
        None,
        400,
        "float",
    ),
    (
        "client report quantity beyond any count",
        envelope(
            transaction(5),
            (
                {"type": "client_report"},
                b'{"discarded_events":[{"reason":"x","category":"error","quantity":'
                + b"1"
                + b"0" * 30
                + b"}]}",
            ),
        ),
        None,
        400,
        "quantity",
    ),
    # sample rates are converted to floats: an integer beyond any float used to give a 500
    (
        "sample_rate beyond any float in the envelope header",
        serialize_envelope(
            {"trace": {"trace_id": "2" * 32, "public_key": "public", "sample_rate": 10**400}},
            [({"type": "transaction"}, _body)],
        ),
        None,
        400,
        "envelope header trace.sample_rate is a number no float holds",
    ),
    (
        "streamed span's sentry.sample_rate beyond any float",
        serialize_envelope(
            {},
            [
                (
                    {"type": "span"},
                    json.dumps(
                        {
                            "version": 2,
                            "items": [
                                dict(
                                    _span_v2,
                                    end_timestamp=_now + 1,
                                    attributes={
                                        "sentry.sample_rate": {"type": "integer", "value": 10**400}
                                    },
                                )
                            ],
                        }
                    ).encode(),
                )
            ],
        ),
        None,
        400,
        "span 0: attribute sentry.sample_rate is a number no float holds",
    ),
]


@pytest.mark.parametrize(
    ("body", "encoding", "status", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_malformed_bodies_are_rejected_and_change_nothing(
    collector: Collector, body: bytes, encoding: str | None, status: int, message: str
) -> None:
    before = collector.store.counts()
    res = send(collector, body, encoding)
    assert res.status_code == status, res.text
    detail = res.json()["detail"]
    assert message.lower() in detail.lower(), detail
    assert collector.store.counts() == before
    assert_still_serving(collector)


def test_escaped_surrogate_pairs_are_text(collector: Collector) -> None:
    # sentry-sdk dumps with ensure_ascii: an emoji arrives as a surrogate-pair escape
    payload = transaction(40)
    body = json.dumps(dict(payload, transaction="@@")).replace('"@@"', '"cart \\ud83d\\uded2"')
    res = send(collector, serialize_envelope({}, [({"type": "transaction"}, body.encode())]), None)
    assert res.status_code == 200, res.text
    view = httpx.get(f"{collector.url}/api/ui/transaction/{payload['event_id']}", timeout=10)
    assert view.status_code == 200 and "cart \U0001f6d2" in view.text


@pytest.mark.parametrize("limit", ["inf", "nan", "1e309", "-inf", "1e300"])
def test_list_parameters_must_be_finite(collector: Collector, limit: str) -> None:
    res = httpx.get(f"{collector.url}/api/ui/transactions", params={"limit": limit}, timeout=10)
    assert res.status_code == 400 and "finite" in res.json()["detail"]
    assert_still_serving(collector)


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b2", "abc", "inf", "1e999"])
@pytest.mark.parametrize(
    "path",
    [
        "traces?limit=",
        "transactions?limit=",
        "transactions?min_duration=",
        "summary?min_duration=",
        "summary?window=",
    ],
)
def test_numeric_parameters_refuse_what_is_no_number(
    collector: Collector, path: str, value: str
) -> None:
    # str.isdigit() takes a superscript two for a digit, int() does not: that was a 500
    res = httpx.get(f"{collector.url}/api/ui/{path}{quote(value)}", timeout=10)
    assert res.status_code == 400, (path, value, res.text)
    assert res.json()["detail"]
    ok = httpx.get(f"{collector.url}/api/ui/{path}{quote('7')}", timeout=10)
    assert ok.status_code == 200, ok.text


def _raw_controls(text: str) -> list[str]:
    """Control characters (but the newlines between lines) and bidi overrides in ``text``."""
    return [c for c in text if (unicodedata.category(c) == "Cc" and c != "\n") or c == "\u202e"]


def test_control_characters_never_reach_show_or_the_log(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    """Names, services, ops, descriptions, statuses, error types and item types are
    printed by ``show`` and logged: ESC [2J would clear the screen, OSC 52 write the
    clipboard, a newline forge a line. They are shown as visible escapes instead."""
    esc = "\x1b"
    now = time.time() - 5
    trace_id, root, child_id = os.urandom(16).hex(), "1" * 15 + "a", "2" * 15 + "b"
    name = f"/evil{esc}[2J{esc}]52;c;cm0=\x07\n  fake line\u202e\x9b"
    payload = dict(
        transaction(41),
        transaction=name,
        release=f"svc{esc}[31mRED@1",
        contexts={"trace": {"trace_id": trace_id, "span_id": root, "op": f"http{esc}[8m"}},
        spans=[
            {
                "trace_id": trace_id,
                "span_id": child_id,
                "parent_span_id": root,
                "op": f"db{esc}[8m",
                "description": f"select{esc}[1A{esc}[2K",
                "status": f"ok{esc}[5m",
                "start_timestamp": now,
                "timestamp": now + 0.001,
            }
        ],
    )
    error_id = os.urandom(16).hex()
    error = {
        "event_id": error_id,
        "timestamp": now,
        "contexts": {"trace": {"trace_id": trace_id, "span_id": child_id}},
        "exception": {"values": [{"type": f"Err{esc}[2J", "value": "v\x07"}]},
    }
    with caplog.at_level(logging.INFO, logger="sentry_tracing_mw.collector"):
        for body in (
            envelope(payload, ({"type": f"weird{esc}]0;TITLE\x07"}, b"x")),
            serialize_envelope(
                {"event_id": error_id}, [({"type": "event"}, json.dumps(error).encode())]
            ),
        ):
            assert send(collector, body, None).status_code == 200
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("sentry_tracing_mw")]
    assert any("svc\\x1b[31mRED" in m and "weird\\x1b]0;TITLE\\x07" in m for m in logged)
    assert not [m for m in logged if _raw_controls(m)]
    for args in ((trace_id,), (None,)):
        out = io.StringIO()
        assert show(collector.store.path, *args, out, limit=100) == 0
        text = out.getvalue()
        assert not _raw_controls(text), _raw_controls(text)
        assert "/evil\\x1b[2J" in text and "svc\\x1b[31mRED" in text
        lines = text.splitlines()
        assert all("/evil" in line for line in lines if "fake line" in line), text
    tree = io.StringIO()
    show(collector.store.path, trace_id, tree)
    for shown in ("db\\x1b[8m select\\x1b[1A\\x1b[2K", "ok\\x1b[5m", "[ERROR Err\\x1b[2J"):
        assert shown in tree.getvalue(), tree.getvalue()


def test_show_output_is_linear_in_the_depth_of_a_span_chain(collector: Collector) -> None:
    """Each line used to repeat the whole tree prefix: a 10,000-deep chain printed 150 MB.
    Indentation stops at 32 levels (tree.MAX_DRAWN_DEPTH); deeper spans show their depth."""
    depth = 3000
    payload = transaction(42)
    trace_id = payload["contexts"]["trace"]["trace_id"]
    parent, start = payload["contexts"]["trace"]["span_id"], payload["start_timestamp"]
    chain = []
    for i in range(depth):
        span_id = f"{0xC0000000 + i:016x}"
        chain.append(
            {
                "trace_id": trace_id,
                "span_id": span_id,
                "parent_span_id": parent,
                "op": "db",
                "description": f"level {i + 1}",
                "start_timestamp": start,
                "timestamp": start + 0.001,
            }
        )
        parent = span_id
    assert send(collector, envelope(dict(payload, spans=chain)), None).status_code == 200
    out = io.StringIO()
    assert show(collector.store.path, trace_id, out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) >= depth + 1
    width = max(map(len, lines))
    assert width < 250, width  # was 9,000 characters
    deepest = next(line for line in lines if f"level {depth}" in line)
    assert f"[depth {depth}] db level {depth}" in deepest
    # the columns after the label stay aligned however deep the span
    top = next(line for line in lines if "db level 1 " in line)
    assert deepest.index("|") == top.index("|")


def test_printable_text_cannot_pass_for_an_escape() -> None:
    # The text "\x1b" (four characters) and a real ESC print differently.
    assert printable("a\x1b[2J") == "a\\x1b[2J"
    assert printable("a\\x1b[2J") == "a\\\\x1b[2J"
    assert printable("C:\\tmp\n") == "C:\\\\tmp\\n"


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/ui/summary", "/api/ui/stats"])
def test_viewer_answers_loopback_host_names_only(collector: Collector, path: str) -> None:
    """DNS rebinding: a web page whose host name resolves to 127.0.0.1 could read every
    stored trace from a collector bound to loopback; its requests carry its own Host."""
    url = collector.url + path
    for host in ("evil.example", "evil.example:8969", "127.0.0.1.evil.example", "[::2]:80"):
        res = httpx.get(url, headers={"Host": host}, timeout=10)
        assert res.status_code == 403, (host, res.text[:200])
        assert "loopback" in res.json()["detail"]
    for host in (
        "localhost",
        "localhost:8969",
        "app.localhost:8969",  # RFC 6761: *.localhost is loopback, no DNS involved
        "127.0.0.1",
        "127.0.0.1:1",
        "[::1]:8969",
        "[::ffff:127.0.0.1]:8969",
    ):
        res = httpx.get(url, headers={"Host": host}, timeout=10)
        assert res.status_code == 200, (host, res.text[:200])
    # ingestion answers any host name (SDKs use whatever their DSN says)
    res = send(collector, envelope(transaction(43)), None, headers={"Host": "evil.example"})
    assert res.status_code == 200, res.text
    assert httpx.get(collector.url + "/healthz", headers={"Host": "x"}).status_code == 200


def test_allowed_host_names_reach_the_viewer(tmp_path: Path) -> None:
    # A reverse proxy on this machine that keeps its own Host: named with --allow-host.
    with Collector(
        str(tmp_path / "allowed.sqlite3"), port=0, allowed_hosts=["Traces.Internal"]
    ) as c:
        for host, status in (
            ("traces.internal", 200),
            ("TRACES.internal.:8080", 200),
            ("other.internal", 403),
            ("localhost", 200),
        ):
            res = httpx.get(c.url + "/api/ui/stats", headers={"Host": host}, timeout=10)
            assert res.status_code == status, (host, res.text[:200])


def test_event_ids_the_first_one_stays(collector: Collector) -> None:
    # Sentry deduplicates by event id and keeps the first event: a reused id must not
    # replace (and so erase) another trace's transaction.
    first, second = transaction(41), transaction(42)
    second["event_id"] = first["event_id"]
    assert send(collector, envelope(first), None).status_code == 200
    res = send(collector, envelope(second), None)
    assert res.status_code == 200 and res.json()["stored"]["transactions"] == 0
    unit = collector.store.unit(first["event_id"])
    assert unit is not None and unit["trace_id"] == first["contexts"]["trace"]["trace_id"]
    # the envelope header's event_id wins over the payload's (protocol §4)
    third = transaction(43)
    header_id = os.urandom(16).hex()
    body = serialize_envelope(
        {"event_id": header_id}, [({"type": "transaction"}, json.dumps(third).encode())]
    )
    res = send(collector, body, None)
    assert res.status_code == 200 and res.json()["id"] == header_id
    assert collector.store.unit(header_id) is not None
    assert collector.store.unit(third["event_id"]) is None


def test_oversized_and_lying_bodies(collector: Collector) -> None:
    before = collector.store.counts()
    huge = b"{}\n" + b'{"type":"attachment"}\n' + b"a" * (MAX_BODY + 10)
    res = send(collector, huge, None)
    assert res.status_code == 413 and "exceeds" in res.json()["detail"]
    # a Content-Length over the limit is refused before the body is read
    with socket.create_connection(("127.0.0.1", collector.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/1/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: "
            + AUTH.encode()
            + f"\r\nContent-Length: {MAX_BODY * 4}\r\n\r\n".encode()
            + b"{}\n"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    # a body shorter than its Content-Length, then the client goes away
    with socket.create_connection(("127.0.0.1", collector.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/1/envelope/ HTTP/1.1\r\nHost: x\r\nX-Sentry-Auth: "
            + AUTH.encode()
            + b"\r\nContent-Length: 5000\r\n\r\n"
            + GOOD[:100]
        )
    # huge HTTP headers are refused by the HTTP layer: a 4xx, or a reset when the server
    # closes while the client is still sending (either way nothing is stored)
    try:
        res = send(collector, GOOD, None, headers={"X-Junk": "j" * 200_000})
    except httpx.TransportError:
        pass
    else:
        assert 400 <= res.status_code < 500
    # wrong key, unknown project path, non-POST
    assert (
        send(collector, GOOD, None, headers={"X-Sentry-Auth": "Sentry sentry_key=nope"}).status_code
        == 403
    )
    res = httpx.post(collector.url + "/api/1/envelope/", content=GOOD, timeout=10)
    assert res.status_code == 403 and "missing sentry_key" in res.json()["detail"]
    assert httpx.post(
        collector.url + "/api/a-b/envelope/",
        content=GOOD,
        headers={"X-Sentry-Auth": AUTH},
        timeout=10,
    ).status_code in (404, 405)
    assert httpx.get(collector.url + "/api/1/envelope/", timeout=10).status_code == 405
    assert collector.store.counts() == before
    assert_still_serving(collector)


def test_fifty_concurrent_clients_are_all_stored(collector: Collector) -> None:
    before = collector.store.counts()
    n = 50
    barrier = threading.Barrier(n + 5)
    results: list[int] = []
    problems: list[str] = []
    lock = threading.Lock()

    def upload(i: int) -> None:
        body = gzip_compress(envelope(transaction(10_000 + i)))
        with httpx.Client(timeout=30) as client:
            barrier.wait(10)
            for _ in range(2):
                try:
                    res = send(collector, body, client=client)
                except httpx.HTTPError as exc:
                    with lock:
                        problems.append(repr(exc))
                    return
                with lock:
                    results.append(res.status_code)
                    if res.status_code != 200:
                        problems.append(res.text)
                body = gzip_compress(envelope(transaction(20_000 + i)))

    def read() -> None:
        with httpx.Client(timeout=30) as client:
            barrier.wait(10)
            for _ in range(5):
                res = client.get(collector.url + "/api/ui/summary")
                with lock:
                    if res.status_code != 200:
                        problems.append(res.text)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(n)]
    threads += [threading.Thread(target=read) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not problems, problems[:3]
    assert results == [200] * (2 * n)
    after = collector.store.counts()
    assert after["units"] == before["units"] + 2 * n
    assert after["spans"] == before["spans"] + 4 * n
    assert collector.responses.get(500) is None
    assert_still_serving(collector)


def _depth_payload(levels: int) -> bytes:
    """A transaction whose JSON nests exactly ``levels`` deep (payload, contexts, x, lists)."""
    payload = dict(transaction(77), contexts=dict(transaction(77)["contexts"], x="@@"))
    return _tx_envelope(payload, _nested(levels - 2))


def test_nesting_limit_and_what_passes_it_can_be_viewed(collector: Collector) -> None:
    before = collector.store.counts()
    res = send(collector, _depth_payload(MAX_JSON_DEPTH + 1), None)
    assert res.status_code == 400 and "nested deeper" in res.json()["detail"], res.text
    assert collector.store.counts() == before
    body = _depth_payload(MAX_JSON_DEPTH)
    res = send(collector, body, None)
    assert res.status_code == 200, res.text
    event_id = json.loads(body.split(b"\n")[2])["event_id"]
    view = httpx.get(f"{collector.url}/api/ui/transaction/{event_id}", timeout=10)
    assert view.status_code == 200, view.text
    nested = view.json()["event"]["contexts"]["x"]
    depth = 0
    while isinstance(nested, list):
        depth, nested = depth + 1, nested[0] if nested else None
    assert depth == MAX_JSON_DEPTH - 2


def test_many_gzip_members_are_refused_quickly(collector: Collector) -> None:
    empty = gzip.compress(b"", mtime=0)
    parts = (GOOD[:100], GOOD[100:200], GOOD[200:])  # concatenated members are still fine
    assert decode_body(b"".join(gzip.compress(p) for p in parts), "gzip", MAX_BODY) == GOOD
    assert decode_body(empty * MAX_GZIP_MEMBERS, "gzip", MAX_BODY) == b""
    with pytest.raises(EnvelopeError, match="members"):
        decode_body(empty * (MAX_GZIP_MEMBERS + 1), "gzip", MAX_BODY)
    with pytest.raises(EnvelopeError, match="exceeds"):  # the size limit still holds
        decode_body(gzip.compress(b"x" * 5000) * 3, "gzip", 12_000)
    # 160,000 empty members (3.2 MB) used to cost seconds of CPU (quadratic copying)
    before = collector.store.counts()
    started = time.perf_counter()
    res = send(collector, empty * 160_000, "gzip")
    elapsed = time.perf_counter() - started
    assert res.status_code == 400 and "members" in res.json()["detail"], res.text
    assert elapsed < 2.0, elapsed
    started = time.perf_counter()
    with pytest.raises(EnvelopeError):
        decode_body(empty * 160_000, "gzip", MAX_BODY)
    assert time.perf_counter() - started < 0.5
    assert collector.store.counts() == before
    assert_still_serving(collector)


def test_json_safe_makes_anything_encodable() -> None:
    deep: list[Any] = []
    cur = deep
    for _ in range(5000):
        cur.append([])
        cur = cur[0]
    value = {"inf": math.inf, "nan": math.nan, "ok": 1.5, "deep": deep, "set": {1}, 3: (1, 2)}
    safe = json_safe(value)
    text = json.dumps(safe, allow_nan=False)
    assert safe["inf"] is None and safe["nan"] is None and safe["ok"] == 1.5
    assert safe["3"] == [1, 2] and safe["set"] == "{1}"
    assert "nested deeper than" in text


def test_rows_stored_by_older_versions_never_break_the_viewer_or_show(tmp_path: Path) -> None:
    db = str(tmp_path / "old.sqlite3")
    payloads = [transaction(500 + i) for i in range(4)]
    first = Collector(db, port=0).start()
    try:
        for p in payloads:
            assert send(first, envelope(p), None).status_code == 200
    finally:
        first.stop()
    ids = [p["event_id"] for p in payloads]
    traces = [p["contexts"]["trace"]["trace_id"] for p in payloads]
    deep_event = '{"contexts":{"x":' + _nested(990) + "}}"
    # what older versions let in, written the way they wrote it
    with sqlite3.connect(db) as conn:
        conn.execute(  # 0 .. 1e306: an infinite duration
            "UPDATE units SET start_ts = 0, end_ts = 1e306, duration_ms = ? WHERE id = ?",
            (math.inf, ids[0]),
        )
        conn.execute("UPDATE spans SET start_ts = 0, end_ts = 1e306 WHERE unit_id = ?", (ids[0],))
        conn.execute(  # milliseconds taken for seconds (year 33658)
            "UPDATE units SET start_ts = 1e12, end_ts = 1e12 + 1, duration_ms = 1000 WHERE id = ?",
            (ids[1],),
        )
        conn.execute(
            "UPDATE spans SET start_ts = 1e12, end_ts = 1e12 + 0.5 WHERE unit_id = ?", (ids[1],)
        )
        conn.execute(  # JSON too deep to encode again; span JSON that does not decode
            "UPDATE units SET event = ? WHERE id = ?", (deep_event, ids[2])
        )
        conn.execute(
            "UPDATE spans SET tags = ?, data = '[1,' WHERE unit_id = ?",
            ("[" * 100_000, ids[2]),
        )
        conn.execute(  # an error with an impossible timestamp and a deep payload
            "INSERT INTO errors(event_id, trace_id, span_id, transaction_name, level, title, "
            "timestamp, received, project, event) VALUES (?, ?, ?, 'x', 'error', 'boom', ?, ?, "
            "'1', ?)",
            (
                "e" * 32,
                traces[3],
                payloads[3]["contexts"]["trace"]["span_id"],
                -math.inf,
                time.time(),
                deep_event,
            ),
        )
    second = Collector(db, port=0).start()
    try:
        paths = [
            "summary",
            "summary?window=all",
            "summary?window=all&status=failed&min_duration=1",
            "transactions?window=all",
            "traces",
            "stats",
            f"error/{'e' * 32}",
            *(f"transaction/{i}" for i in ids),
            *(f"trace/{t}" for t in traces),
            *(f"transactions?window=all&exact_name=tx-{500 + i}" for i in range(4)),
        ]
        for path in paths:
            res = httpx.get(f"{second.url}/api/ui/{path}", timeout=10)
            assert res.status_code == 200, (path, res.text[:300])
            json.loads(res.text)  # strict JSON: no Infinity or NaN
        view = httpx.get(f"{second.url}/api/ui/transaction/{ids[0]}", timeout=10).json()
        assert math.isfinite(view["duration_ms"]) and view["transaction"]["start_ts"] == 0
        assert second.responses.get(500) is None
    finally:
        second.stop()
    for trace_id in (None, *traces):
        out = io.StringIO()
        assert show(db, trace_id, out) == 0
        assert out.getvalue()
    out = io.StringIO()
    show(db, traces[1], out)
    assert "9999-12-31 23:59:59 UTC" in out.getvalue()  # clamped to the latest time shown


def _auth_head(length: int) -> bytes:
    return (
        b"POST /api/1/envelope/ HTTP/1.1\r\nHost: x\r\n"
        b"X-Sentry-Auth: Sentry sentry_version=7, sentry_key=public\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


def _closed_by_server(sock: socket.socket, within: float) -> bytes:
    """What the server sent before closing ``sock`` (fails if it is still open)."""
    sock.settimeout(within)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"still open after {within} s; got {data[:200]!r}")
        if not chunk:
            return data
        data += chunk


def test_slow_clients_are_cut_off(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slowloris: a head or body trickling in would hold its connection forever (1,000 of
    them locked everyone out with 503s); the server now drops them, and others are served."""
    from sentry_tracing_mw.collector import server

    monkeypatch.setattr(server, "HEAD_TIMEOUT", 0.5)
    monkeypatch.setattr(server, "BODY_IDLE_TIMEOUT", 0.5)
    heads = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", collector.port), timeout=5)
        sock.sendall(b"POST /api/1/envelope/ HTTP/1.1\r\nHost: x\r\n")  # never finished
        heads.append(sock)
    body = socket.create_connection(("127.0.0.1", collector.port), timeout=5)
    body.sendall(_auth_head(1000) + b"{}\n")  # 3 of 1000 bytes, then nothing
    try:
        assert_still_serving(collector)
        for sock in heads:
            assert _closed_by_server(sock, 5) == b""
        answer = _closed_by_server(body, 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        for sock in [*heads, body]:
            sock.close()
    assert_still_serving(collector)


def test_bodies_in_flight_share_one_memory_budget(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many concurrent large uploads: each may be under MAX_BODY, but together they are
    held to one budget (503 with Retry-After beyond it), so memory stays bounded."""
    from sentry_tracing_mw.collector import server

    app_budget = None
    for route in collector.app.routes:  # the one _App behind the envelope route
        owner = getattr(getattr(route, "endpoint", None), "__self__", None)
        if isinstance(getattr(owner, "budget", None), server._BodyBudget):
            app_budget = owner.budget
    assert app_budget is not None
    monkeypatch.setattr(app_budget, "limit", 1_000_000)
    size = 400_000
    socks = []
    try:
        for _ in range(2):  # 800 KB held: within the budget
            sock = socket.create_connection(("127.0.0.1", collector.port), timeout=5)
            sock.sendall(_auth_head(size) + b"x" * (size - 1))
            socks.append(sock)
        deadline = time.monotonic() + 5
        while app_budget.held < 2 * (size - 1) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert app_budget.held >= 2 * (size - 1)
        third = socket.create_connection(("127.0.0.1", collector.port), timeout=5)
        socks.append(third)
        third.sendall(_auth_head(size) + b"x" * (size - 1))
        answer = third.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 5" in answer.lower()
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 5
    while app_budget.held and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app_budget.held == 0  # given back when the uploads ended
    assert_still_serving(collector)
