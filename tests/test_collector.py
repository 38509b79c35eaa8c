"""The local collector end to end: real server, real SDKs, real SQLite."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw._envelope import gzip_compress, serialize_envelope
from sentry_tracing_mw.collector import Collector, parse_rate_limit
from sentry_tracing_mw.collector.show import show
from sentry_tracing_mw.collector.store import parse_timestamp
from sentry_tracing_mw.collector.tree import format_time, is_failure, render_trace
from sentry_tracing_mw.collector.viewer import percentile

ROOT = Path(__file__).resolve().parent.parent
SPAN_V2 = "application/vnd.sentry.items.span.v2+json"


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "traces.sqlite3")


@pytest.fixture
def collector(db: str) -> Iterator[Collector]:
    c = Collector(db, port=0).start()
    try:
        yield c
    finally:
        c.stop()


def hexid(n: int, width: int) -> str:
    return f"{n:0{width}x}"


def tx_payload(
    trace_id: str,
    span_id: str,
    name: str,
    start: float,
    duration: float,
    *,
    parent: str | None = None,
    spans: list[dict[str, Any]] | None = None,
    status: str = "ok",
    release: str | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    trace: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "op": "http.server",
        "status": status,
    }
    if parent:
        trace["parent_span_id"] = parent
    payload: dict[str, Any] = {
        "type": "transaction",
        "event_id": event_id or os.urandom(16).hex(),
        "transaction": name,
        "transaction_info": {"source": "route"},
        "start_timestamp": start,
        "timestamp": start + duration,
        "contexts": {"trace": trace},
        "spans": spans or [],
        "platform": "python",
    }
    if release:
        payload["release"] = release
    return payload


def child(
    trace_id: str, span_id: str, parent: str, op: str, desc: str, start: float, duration: float
) -> dict[str, Any]:
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "op": op,
        "description": desc,
        "start_timestamp": start,
        "timestamp": start + duration,
        "status": "ok",
        "tags": {"k": "v"},
        "data": {"rows": 3},
    }


def tx_envelope(payload: dict[str, Any], sample_rate: str | None = "1.0") -> bytes:
    headers: dict[str, Any] = {
        "event_id": payload["event_id"],
        "sent_at": "2025-01-01T00:00:00.000000Z",
    }
    trace = {"trace_id": payload["contexts"]["trace"]["trace_id"], "public_key": "public"}
    if sample_rate is not None:
        trace["sample_rate"] = sample_rate
    headers["trace"] = trace
    body = json.dumps(payload).encode()
    return serialize_envelope(headers, [({"type": "transaction"}, body)])


def post(
    collector: Collector,
    body: bytes,
    *,
    encoding: str | None = "gzip",
    key: str = "public",
    project: str = "1",
    headers: dict[str, str] | None = None,
    query: str = "",
) -> httpx.Response:
    h = {"Content-Type": "application/x-sentry-envelope"}
    if key:
        h["X-Sentry-Auth"] = f"Sentry sentry_version=7, sentry_client=test/1, sentry_key={key}"
    if encoding == "gzip":
        body = gzip_compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    elif encoding == "br":
        import brotli

        body = brotli.compress(body)
    if encoding:
        h["Content-Encoding"] = encoding
    h.update(headers or {})
    url = f"{collector.url}/api/{project}/envelope/{query}"
    return httpx.post(url, content=body, headers=h, timeout=10)


def ui(collector: Collector, path: str, **params: Any) -> Any:
    res = httpx.get(f"{collector.url}/api/ui/{path}", params=params, timeout=10)
    assert res.status_code == 200, res.text
    return res.json()


def wait_units(collector: Collector, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while collector.store.counts()["units"] < n:
        assert time.monotonic() < deadline, collector.store.counts()
        time.sleep(0.02)


# -- unit-level helpers ----------------------------------------------------------------------


def test_parse_timestamp_and_rate_limit_and_percentile() -> None:
    assert parse_timestamp(1735732800.5) == 1735732800.5
    assert parse_timestamp("2025-01-01T12:00:00.123Z") == pytest.approx(1735732800.123)
    assert parse_timestamp("2025-01-01T12:00:00.1234567+00:00") == pytest.approx(1735732800.123456)
    assert parse_timestamp("nope") is None and parse_timestamp(float("nan")) is None
    assert parse_timestamp(True) is None
    rl = parse_rate_limit("60:transaction;error")
    assert rl.seconds == 60 and rl.categories == {"transaction", "error"}
    assert rl.header() == "60:error;transaction:key"
    assert parse_rate_limit("30").categories == frozenset()
    with pytest.raises(ValueError):
        parse_rate_limit("soon:transaction")
    assert percentile([1, 2, 3, 4], 0.75) == pytest.approx(3.25)
    assert percentile([5], 0.95) == 5 and percentile([], 0.5) == 0


def test_show_formats_times_no_datetime_can_hold() -> None:
    # milliseconds taken for seconds: year 33658 (the store refuses these now; rows of older
    # versions and other callers of render_trace still must not crash it)
    assert format_time(1e12).startswith("<invalid time")
    assert format_time(1735732800.0) == "2025-01-01 12:00:00 UTC"
    unit = {
        "id": "u1",
        "kind": "transaction",
        "span_id": "1" * 16,
        "parent_span_id": None,
        "name": "GET /ms",
        "op": "http.server",
        "status": "ok",
        "start_ts": 1e12,
        "end_ts": 1e12 + 1,
        "service": "svc",
    }
    span = {
        "unit_id": "u1",
        "span_id": "1" * 16,
        "parent_span_id": None,
        "op": "http.server",
        "description": "GET /ms",
        "status": "ok",
        "start_ts": 1e12,
        "end_ts": 1e12 + 1,
        "is_root": 1,
    }
    text = render_trace("a" * 32, [unit], [span])
    assert text.startswith(f"trace {'a' * 32}  <invalid time 1000000000000.0>  1000ms")
    assert "[svc] transaction GET /ms" in text


# -- real SDKs ----------------------------------------------------------------------------


def _service_calls(dsn: str, fail: bool = False) -> str:
    """Three services of one trace via the real package: storefront -> pricing, inventory."""
    stm.init(dsn=dsn, traces_sample_rate=1.0, release="storefront@1.0")
    with stm.start_transaction("GET /checkout/{cart_id}", op="http.server", source="route") as tx:
        with stm.start_span("db", "SELECT * FROM carts"):
            time.sleep(0.002)
        with stm.start_span("http.client", "POST http://pricing/price"):
            to_pricing = stm.get_trace_headers()
            time.sleep(0.01)
        with stm.start_span("http.client", "GET http://inventory/stock"):
            to_inventory = stm.get_trace_headers()
            time.sleep(0.01)
        if fail:
            with stm.start_span("function", "charge"):
                try:
                    raise RuntimeError("card declined")
                except RuntimeError as exc:
                    stm.capture_exception(exc)
            tx.set_status("internal_error")
        trace_id = tx.trace_id
    assert stm.flush(5)
    for release, headers, name in (
        ("pricing@1.0", to_pricing, "POST /price"),
        ("inventory@1.0", to_inventory, "GET /stock"),
    ):
        stm.init(dsn=dsn, traces_sample_rate=1.0, release=release)
        with stm.continue_trace(headers, name=name, op="http.server"):
            with stm.start_span("db", "SELECT qty"):
                time.sleep(0.002)
        assert stm.flush(5)
    return trace_id


def test_real_package_transactions_are_stitched_across_services(collector: Collector) -> None:
    trace_id = _service_calls(collector.dsn(), fail=True)
    stm.close()
    wait_units(collector, 3)
    view = ui(collector, f"trace/{trace_id}")
    units = {u["service"]: u for u in view["units"]}
    assert set(units) == {"storefront", "pricing", "inventory"}
    assert not any(u["orphan"] for u in view["units"])
    rows = view["rows"]
    by_desc = {r["description"]: r for r in rows}
    pricing_call = by_desc["POST http://pricing/price"]
    # the downstream transaction hangs right under the http.client span that caused it
    idx = rows.index(pricing_call)
    assert rows[idx + 1]["is_unit_root"] and rows[idx + 1]["unit"]["service"] == "pricing"
    assert rows[idx + 1]["depth"] == pricing_call["depth"] + 1
    assert [c["id"] for c in pricing_call["child_units"]] == [units["pricing"]["id"]]
    # the error is linked to the span that was active
    charge = by_desc["charge"]
    assert [e["title"] for e in charge["errors"]] == ["RuntimeError: card declined"]
    # transaction view: the http.client span links to the child, and the child links back up
    tx_view = ui(collector, f"transaction/{units['storefront']['id']}")
    assert tx_view["transaction"]["status"] == "internal_error"
    assert tx_view["trace_units"] == 3
    link = next(r for r in tx_view["rows"] if r["description"] == "GET http://inventory/stock")
    assert link["child_units"][0]["service"] == "inventory"
    down = ui(collector, f"transaction/{units['inventory']['id']}")
    assert down["parent"]["unit_id"] == units["storefront"]["id"]
    assert down["parent"]["span"]["span_id"] == link["span_id"]
    assert down["orphan"] is False


def test_sentry_sdk_transaction_and_streamed_spans(collector: Collector) -> None:
    code = textwrap.dedent(
        f"""
        import time, sentry_sdk
        from sentry_sdk import traces
        sentry_sdk.init(dsn={collector.dsn()!r}, traces_sample_rate=1.0, release="legacy@2")
        with sentry_sdk.start_transaction(name="nightly-job", op="task") as tx:
            with tx.start_child(op="db", description="VACUUM"):
                time.sleep(0.005)
        sentry_sdk.flush(5)
        sentry_sdk.get_client().close()
        sentry_sdk.init(dsn={collector.dsn(2)!r}, traces_sample_rate=1.0, release="node-ish@11",
                        trace_lifecycle="stream")
        with traces.start_span(name="GET /items") as seg:
            with traces.start_span(name="SELECT items", attributes={{"sentry.op": "db"}}):
                time.sleep(0.005)
        sentry_sdk.flush(5)
        print(seg.trace_id)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SENTRY_DSN": ""},
    )
    assert out.returncode == 0, out.stderr
    stream_trace = out.stdout.strip().splitlines()[-1]
    wait_units(collector, 2)
    summary = {r["name"]: r for r in ui(collector, "summary")["rows"]}
    assert summary["nightly-job"]["services"] == ["legacy"]
    assert summary["nightly-job"]["ops"] == ["task"]
    assert summary["GET /items"]["services"] == ["node-ish"]
    job = ui(collector, "transactions", exact_name="nightly-job")["rows"][0]
    assert job["kind"] == "transaction" and job["duration_ms"] >= 5  # ISO timestamps parsed
    seg = ui(collector, f"trace/{stream_trace}")
    assert [u["kind"] for u in seg["units"]] == ["segment"]
    assert seg["units"][0]["complete"] is True
    assert [(r["description"], r["depth"]) for r in seg["rows"]] == [
        ("GET /items", 0),
        ("SELECT items", 1),
    ]
    assert seg["rows"][1]["op"] == "db"


def test_client_reports_and_rate_limit_backoff_seen_by_the_app(db: str) -> None:
    limited = Collector(db, port=0, rate_limits=[parse_rate_limit("60:transaction")]).start()
    try:
        stm.init(dsn=limited.dsn(), traces_sample_rate=1.0)
        with stm.start_transaction("first", op="task"):
            pass
        stm.flush(5)
        with stm.start_transaction("second", op="task"):  # dropped by the app's backoff
            pass
        stm.flush(5)
        stm.close()
        assert limited.responses.get(429) == 1  # the second one was never sent
        totals = {
            (r["reason"], r["category"]): r["quantity"]
            for r in limited.store.client_report_totals()
        }
        assert totals.get(("ratelimit_backoff", "transaction")) == 1
        assert limited.store.counts()["units"] == 0
        # an error event is not limited; a mixed envelope keeps its unlimited items
        event_id = os.urandom(16).hex()
        err = json.dumps(
            {
                "event_id": event_id,
                "message": "hello",
                "contexts": {"trace": {"trace_id": hexid(7, 32), "span_id": hexid(7, 16)}},
            }
        )
        res = post(
            limited, serialize_envelope({"event_id": event_id}, [({"type": "event"}, err.encode())])
        )
        assert res.status_code == 200, res.text
        payload = tx_payload(hexid(8, 32), hexid(8, 16), "mixed", time.time(), 0.01)
        report = json.dumps(
            {
                "discarded_events": [
                    {"reason": "sample_rate", "category": "transaction", "quantity": 4}
                ]
            }
        ).encode()
        body = serialize_envelope(
            {"event_id": payload["event_id"]},
            [
                ({"type": "transaction"}, json.dumps(payload).encode()),
                ({"type": "client_report"}, report),
            ],
        )
        res = post(limited, body)
        assert res.status_code == 200
        assert res.headers["X-Sentry-Rate-Limits"] == "60:transaction:key"
        assert res.json()["stored"]["client_reports"] == 1
        res = post(limited, tx_envelope(payload))
        assert res.status_code == 429
        assert res.headers["Retry-After"] == "60"
        assert res.headers["X-Sentry-Rate-Limits"] == "60:transaction:key"
        assert "rate limited" in res.json()["detail"]
        assert limited.store.counts()["units"] == 0
    finally:
        limited.stop()


def test_a_large_brotli_body_is_stored(collector: Collector) -> None:
    """sentry-sdk compresses with brotli whenever it can import it: a transaction of a
    few hundred KB (over 64 KiB decoded) was refused with 400 "invalid br body"."""
    now = time.time()
    trace_id, root = hexid(200, 32), hexid(200, 16)
    spans = [
        child(trace_id, hexid(300 + i, 16), root, "db", f"SELECT {os.urandom(16).hex()}", now, 0.01)
        for i in range(1500)
    ]
    payload = tx_payload(trace_id, root, "big-br", now, 0.1, spans=spans)
    body = tx_envelope(payload)
    assert len(body) > 300_000
    res = post(collector, body, encoding="br")
    assert res.status_code == 200, res.text
    assert res.json()["stored"]["spans"] == 1501


def test_envelope_forms_and_key_check(collector: Collector) -> None:
    now = time.time()
    for i, (encoding, kwargs) in enumerate(
        [
            ("gzip", {}),
            ("deflate", {}),
            ("br", {}),  # sentry-sdk's choice whenever it can import brotli
            (None, {}),
            (None, {"key": "", "query": "?sentry_key=public&sentry_version=7"}),
        ]
    ):
        payload = tx_payload(hexid(100 + i, 32), hexid(100 + i, 16), f"form-{i}", now, 0.01)
        res = post(collector, tx_envelope(payload), encoding=encoding, **kwargs)
        assert res.status_code == 200, res.text
        assert res.json() == {
            "id": payload["event_id"],
            "stored": {
                "envelope_id": i + 1,
                "transactions": 1,
                "spans": 1,
                "errors": 0,
                "client_reports": 0,
                "ignored_item_types": [],
            },
        }
    # authentication through the envelope's dsn header only
    payload = tx_payload(hexid(120, 32), hexid(120, 16), "dsn-auth", now, 0.01)
    body = serialize_envelope(
        {"event_id": payload["event_id"], "dsn": collector.dsn()},
        [({"type": "transaction"}, json.dumps(payload).encode())],
    )
    assert post(collector, body, key="").status_code == 200
    before = collector.store.counts()
    bad = tx_payload(hexid(130, 32), hexid(130, 16), "bad", now, 0.01)
    for kwargs, body in [
        ({"key": "wrong"}, tx_envelope(bad)),
        ({"key": ""}, tx_envelope(bad)),
        ({"key": "", "query": "?sentry_key=wrong"}, tx_envelope(bad)),
        ({"query": "?sentry_key=other"}, tx_envelope(bad)),  # header and query disagree
        (
            {"key": ""},
            serialize_envelope(
                {"event_id": bad["event_id"], "dsn": "http://wrong@127.0.0.1/1"},
                [({"type": "transaction"}, json.dumps(bad).encode())],
            ),
        ),
    ]:
        res = post(collector, body, **kwargs)
        assert res.status_code == 403, (kwargs, res.text)
        assert res.json()["detail"]
    assert collector.store.counts() == before
    # unknown item types are accepted and ignored
    res = post(
        collector,
        serialize_envelope(
            {}, [({"type": "statsd"}, b"a:1|c"), ({"type": "profile_chunk"}, b"{}")]
        ),
    )
    assert res.status_code == 200
    assert res.json()["stored"]["ignored_item_types"] == ["statsd", "profile_chunk"]


def test_span_v2_segments_arrive_in_pieces_and_stitch_under_a_transaction(
    collector: Collector,
) -> None:
    trace_id, now = hexid(0xABC, 32), time.time()
    call = hexid(0xA2, 16)
    head = tx_payload(
        trace_id,
        hexid(0xA1, 16),
        "GET /front",
        now,
        0.2,
        spans=[
            child(
                trace_id,
                call,
                hexid(0xA1, 16),
                "http.client",
                "GET http://node/api",
                now + 0.01,
                0.15,
            )
        ],
        release="front@1",
    )
    assert post(collector, tx_envelope(head)).status_code == 200
    seg_id = hexid(0xB1, 16)

    def v2(
        span_id: str,
        parent: str | None,
        name: str,
        start: float,
        dur: float,
        segment: bool,
        op: str,
    ) -> dict[str, Any]:
        span: dict[str, Any] = {
            "trace_id": trace_id,
            "span_id": span_id,
            "name": name,
            "status": "ok",
            "is_segment": segment,
            "start_timestamp": start,
            "end_timestamp": start + dur,
            "attributes": {
                "sentry.op": {"type": "string", "value": op},
                "sentry.segment.id": {"type": "string", "value": seg_id},
                "sentry.segment.name": {"type": "string", "value": "GET /api"},
                "sentry.release": {"type": "string", "value": "node-api@11"},
                "db.rows": {"type": "integer", "value": 3},
            },
        }
        if parent:
            span["parent_span_id"] = parent
        return span

    def send(*spans: dict[str, Any]) -> httpx.Response:
        payload = json.dumps({"version": 2, "items": list(spans)}).encode()
        return post(
            collector,
            serialize_envelope(
                {"trace": {"trace_id": trace_id, "public_key": "public", "sample_rate": "0.5"}},
                [({"type": "span", "content_type": SPAN_V2, "item_count": len(spans)}, payload)],
            ),
            project="2",
        )

    # children first (root not yet received), then the segment root in another envelope
    res = send(
        v2(hexid(0xB2, 16), seg_id, "SELECT 1", now + 0.03, 0.02, False, "db"),
        v2(hexid(0xB3, 16), hexid(0xB2, 16), "fetch row", now + 0.035, 0.005, False, "function"),
    )
    assert res.status_code == 200 and res.json()["stored"]["spans"] == 2
    partial = ui(collector, f"trace/{trace_id}")
    seg_unit = next(u for u in partial["units"] if u["kind"] == "segment")
    assert seg_unit["complete"] is False
    assert any(r["synthetic"] for r in partial["rows"])
    res = send(v2(seg_id, call, "GET /api", now + 0.02, 0.12, True, "http.server"))
    assert res.status_code == 200
    full = ui(collector, f"trace/{trace_id}")
    seg_unit = next(u for u in full["units"] if u["kind"] == "segment")
    assert seg_unit["complete"] is True and seg_unit["sample_rate"] == 0.5
    assert seg_unit["service"] == "node-api" and seg_unit["parent_span_id"] == call
    assert [(r["description"], r["depth"]) for r in full["rows"]] == [
        ("GET /front", 0),
        ("GET http://node/api", 1),
        ("GET /api", 2),
        ("SELECT 1", 3),
        ("fetch row", 4),
    ]
    assert full["rows"][3]["data"]["db.rows"] == 3
    summary = {r["name"]: r for r in ui(collector, "summary")["rows"]}
    assert summary["GET /api"]["extrapolated_count"] == 2.0


def _three_transaction_trace(collector: Collector, trace_id: str, now: float) -> None:
    a, a_call = hexid(0xA1, 16), hexid(0xA2, 16)
    b, b_call = hexid(0xB1, 16), hexid(0xB2, 16)
    c = hexid(0xC1, 16)
    storefront = tx_payload(
        trace_id,
        a,
        "GET /checkout",
        now,
        0.3,
        release="storefront@1",
        spans=[
            child(trace_id, a_call, a, "http.client", "POST http://pricing/price", now + 0.01, 0.2)
        ],
    )
    pricing = tx_payload(
        trace_id,
        b,
        "POST /price",
        now + 0.02,
        0.15,
        parent=a_call,
        release="pricing@1",
        spans=[child(trace_id, b_call, b, "http.client", "GET http://tax/rate", now + 0.03, 0.1)],
    )
    tax = tx_payload(
        trace_id,
        c,
        "GET /rate",
        now + 0.04,
        0.05,
        parent=b_call,
        release="tax@1",
        status="internal_error",
    )
    orphan = tx_payload(
        trace_id,
        hexid(0xD1, 16),
        "task.email",
        now + 0.31,
        0.02,
        parent=hexid(0xDEAD, 16),
        release="worker@1",
    )
    for payload in (tax, orphan, pricing, storefront):  # arrival order does not matter
        assert post(collector, tx_envelope(payload)).status_code == 200


def test_show_stitches_three_transactions_and_marks_the_orphan(
    collector: Collector, db: str
) -> None:
    trace_id = hexid(0x5EED, 32)
    _three_transaction_trace(collector, trace_id, time.time())
    out = subprocess.run(
        [sys.executable, "-m", "sentry_tracing_mw.collector", "show", trace_id[:12], "--db", db],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}") and "4 transactions" in lines[0]
    assert "1 orphan" in lines[0]
    tree = [ln for ln in lines[1:] if "missing instrumentation" not in ln]
    assert tree[0].startswith("[storefront] transaction GET /checkout (http.server)")
    assert tree[1].startswith("└─ http.client POST http://pricing/price")
    assert tree[2].startswith("   └─ [pricing] transaction POST /price")
    assert tree[3].startswith("      └─ http.client GET http://tax/rate")
    assert tree[4].startswith("         └─ [tax] transaction GET /rate")
    assert "internal_error" in tree[4]
    assert tree[5].startswith("[worker] transaction task.email")
    assert "[ORPHAN transaction: parent 000000000000dead not found]" in tree[5]
    for line in tree[:6]:  # every row has a duration bar scaled to the trace
        assert line.count("|") == 2 and "█" in line
    # bars are scaled to the whole trace (330 ms over 30 columns)
    bars = [line.split("|")[1] for line in tree[:6]]
    assert bars[0] == "█" * 27 + "···"  # 0-300 ms
    assert bars[4] == "···" + "█" * 5 + "·" * 22  # tax: 40-90 ms
    assert bars[5] == "·" * 28 + "██"  # the orphan, 310-330 ms
    # without an id: a list of recent traces and the latest tree
    newer = hexid(0x5EEE, 32)
    post(
        collector, tx_envelope(tx_payload(newer, hexid(0xE1, 16), "GET /later", time.time(), 0.01))
    )
    buf = io.StringIO()
    assert show(db, None, buf) == 0
    text = buf.getvalue()
    assert text.startswith("recent traces (2 shown")
    assert text.index(newer) < text.index(trace_id)
    assert f"latest trace:\ntrace {newer}" in text
    buf = io.StringIO()
    assert show(db, "ffffffff", buf) == 1 and "not found" in buf.getvalue()
    assert show(db + ".missing", None, io.StringIO()) == 1


def test_viewer_api_aggregates_filters_and_gaps(collector: Collector) -> None:
    now = time.time()
    durations = [0.010, 0.020, 0.030, 0.040, 0.100]
    rates = ["1.0", "0.5", "0.25", None, "0.1"]
    statuses = ["ok", "ok", "cancelled", "internal_error", "unknown"]
    for i, (dur, rate, status) in enumerate(zip(durations, rates, statuses, strict=True)):
        payload = tx_payload(
            hexid(200 + i, 32), hexid(200 + i, 16), "GET /items", now - 10, dur, status=status
        )
        assert post(collector, tx_envelope(payload, sample_rate=rate)).status_code == 200
    old = tx_payload(hexid(300, 32), hexid(300, 16), "GET /old", now - 7200, 0.5)
    assert post(collector, tx_envelope(old)).status_code == 200
    rows = {r["name"]: r for r in ui(collector, "summary")["rows"]}
    items = rows["GET /items"]
    assert items["count"] == 5
    assert items["avg_ms"] == pytest.approx(40.0)
    assert items["p75_ms"] == pytest.approx(40.0)
    assert items["p95_ms"] == pytest.approx(88.0)
    assert items["failure_rate"] == pytest.approx(0.2)  # only internal_error fails
    assert items["extrapolated_count"] == pytest.approx(1 + 2 + 4 + 1 + 10)
    hour = ui(collector, "summary", window="1h")
    assert {r["name"] for r in hour["rows"]} == {"GET /items"}
    assert hour["rows"][0]["tpm"] == pytest.approx(5 / 60)
    assert ui(collector, "summary", status="failed")["rows"][0]["count"] == 1
    assert ui(collector, "summary", min_duration="35")["rows"][0]["count"] == 2
    assert [r["name"] for r in ui(collector, "summary", name="old")["rows"]] == ["GET /old"]
    assert httpx.get(f"{collector.url}/api/ui/summary?window=soon").status_code == 400
    assert httpx.get(f"{collector.url}/api/ui/transaction/nope").status_code == 404
    # gaps: a 100 ms transaction with spans covering only 0-20 ms and 90-100 ms
    trace_id, root = hexid(400, 32), hexid(400, 16)
    gappy = tx_payload(
        trace_id,
        root,
        "GET /gappy",
        now,
        0.1,
        spans=[
            child(trace_id, hexid(401, 16), root, "db", "a", now, 0.02),
            child(trace_id, hexid(402, 16), root, "db", "b", now + 0.09, 0.01),
            child(trace_id, hexid(403, 16), root, "db", "tiny gap after a", now + 0.021, 0.002),
        ],
    )
    assert post(collector, tx_envelope(gappy)).status_code == 200
    view = ui(collector, f"transaction/{gappy['event_id']}")
    assert [(round(g["start"] - now, 3), round(g["end"] - now, 3)) for g in view["gaps"]] == [
        (0.023, 0.09)
    ]
    detail = next(r for r in view["rows"] if r["description"] == "a")
    assert detail["tags"] == {"k": "v"} and detail["data"] == {"rows": 3}
    assert view["orphan"] is False and view["parent"] is None
    # the static page and its assets are served locally
    page = httpx.get(collector.url + "/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page.text):
        assert ref.startswith(("/", "#", "data:")), ref  # no CDN, nothing remote
    for asset in ("app.js", "style.css"):
        res = httpx.get(f"{collector.url}/static/{asset}")
        assert res.status_code == 200 and "://" not in res.text.replace("location.protocol", "")


def test_names_with_non_ascii_capitals_can_be_opened_and_searched(collector: Collector) -> None:
    # SQLite's lower() folds ASCII only: the viewer's name page and name filter found
    # nothing for names it listed
    now = time.time()
    names = ["/Ölpreis", "/ÉCOLE/<id>", "/Straße", "/olpreis-ascii"]
    for i, name in enumerate(names):
        payload = tx_payload(hexid(700 + i, 32), hexid(700 + i, 16), name, now - 5, 0.01)
        assert post(collector, tx_envelope(payload)).status_code == 200
    listed = {r["name"] for r in ui(collector, "summary")["rows"]}
    assert listed == set(names)
    for name in names:  # each name page shows its transaction, only it
        rows = ui(collector, "transactions", exact_name=name)["rows"]
        assert [r["name"] for r in rows] == [name]
        found = [r["name"] for r in ui(collector, "summary", name=name)["rows"]]
        assert found == [name]
    for search, expected in [
        ("ölpreis", {"/Ölpreis"}),
        ("ÖLPREIS", {"/Ölpreis"}),
        ("olpreis", {"/olpreis-ascii"}),
        ("école", {"/ÉCOLE/<id>"}),
        ("STRASSE", {"/Straße"}),
    ]:
        assert {r["name"] for r in ui(collector, "summary", name=search)["rows"]} == expected
    # an exact name is exact: another case is another name
    assert ui(collector, "transactions", exact_name="/ölpreis")["total"] == 0


def test_data_survives_a_restart(db: str) -> None:
    first = Collector(db, port=0).start()
    trace_id = hexid(0x777, 32)
    try:
        _three_transaction_trace(first, trace_id, time.time())
        port = first.port
    finally:
        first.stop()
    assert os.path.exists(db)
    second = Collector(db, port=port).start()  # the port is free again right away
    try:
        view = ui(second, f"trace/{trace_id}")
        assert len(view["units"]) == 4
        assert sum(u["orphan"] for u in view["units"]) == 1
        payload = tx_payload(hexid(0x778, 32), hexid(0x778, 16), "after", time.time(), 0.01)
        assert post(second, tx_envelope(payload)).status_code == 200
        assert second.store.counts()["units"] == 5
    finally:
        second.stop()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the collector's command line to its end."""
    command = [sys.executable, "-m", "sentry_tracing_mw.collector", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)


def _serving(*args: str) -> subprocess.Popen[str]:
    """Start the collector's command line (the caller stops it)."""
    command = [sys.executable, "-m", "sentry_tracing_mw.collector", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def test_cli_serve_and_clean_exit(tmp_path: Path) -> None:
    db = tmp_path / "cli.sqlite3"
    bad = _cli("--rate-limit", "x:y", "--db", str(db))
    assert bad.returncode == 2 and "--rate-limit" in bad.stderr
    proc = _serving("--port", "0", "--db", str(db), "--key", "sekrit", "--rate-limit", "30:error")
    try:
        assert proc.stdout is not None
        banner = [proc.stdout.readline() for _ in range(5)]
        assert banner[0].startswith("sentry-tracing-mw collector on http://127.0.0.1:")
        dsn = banner[1].split()[-1]
        assert dsn.startswith("http://sekrit@127.0.0.1:") and dsn.endswith("/1")
        assert "30:error:key" in banner[4]
        stm.init(dsn=dsn, traces_sample_rate=1.0)
        with stm.start_transaction("from-cli-test", op="task"):
            pass
        assert stm.flush(5)
        stm.close()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "stored 1 transaction(s); 'from-cli-test'" in err
    out = subprocess.run(
        [sys.executable, "-m", "sentry_tracing_mw.collector", "show", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert "from-cli-test" in out.stdout


def test_cli_refuses_a_file_that_is_no_database_and_a_limit_below_one(tmp_path: Path) -> None:
    not_db = tmp_path / "notes.txt"
    not_db.write_text("not a database\n")

    for args in (("show", "--db", str(not_db)), ("show", "--db", str(tmp_path))):
        res = _cli(*args)
        assert res.returncode == 2, res
        assert "is not a collector database" in res.stdout and "Traceback" not in res.stderr
    serve = _cli("--port", "0", "--db", str(not_db))
    assert serve.returncode == 2 and "is not a collector database" in serve.stderr, serve
    assert "Traceback" not in serve.stderr
    assert not_db.read_text() == "not a database\n"
    missing_dir = _cli("--port", "0", "--db", str(tmp_path / "no-such-dir" / "x.sqlite3"))
    assert missing_dir.returncode == 2 and "cannot open --db" in missing_dir.stderr, missing_dir
    for limit in ("-1", "0", "x"):
        res = _cli("show", "--db", str(tmp_path / "none.sqlite3"), "--limit", limit)
        assert res.returncode == 2 and "argument --limit" in res.stderr, res


def test_database_is_in_wal_mode(collector: Collector, db: str) -> None:
    payload = tx_payload(hexid(0x3A1, 32), hexid(0x3A1, 16), "GET /wal", time.time(), 0.01)
    assert post(collector, tx_envelope(payload)).status_code == 200
    conn = sqlite3.connect(db)
    try:  # WAL is a property of the file: any new connection sees it
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert os.path.exists(db + "-wal")


def test_one_failure_definition_for_trace_list_viewer_and_show(
    collector: Collector, db: str
) -> None:
    # Sentry's failure rate: every status but ok, cancelled and unknown (unset is unknown)
    statuses = ["ok", "cancelled", "unknown", "unset", "internal_error", "not_found", "error"]
    now = time.time()
    trace_of: dict[str, str] = {}
    for i, status in enumerate(statuses):
        trace_of[status] = trace_id = hexid(0x5A0 + i, 32)
        payload = tx_payload(trace_id, hexid(0x5A0 + i, 16), f"GET /{status}", now, 0.01)
        payload["contexts"]["trace"]["status"] = status
        assert post(collector, tx_envelope(payload)).status_code == 200
    failed_in_list = {r["trace_id"]: r["failed"] for r in ui(collector, "traces")["rows"]}
    rates = {r["name"]: r["failure_rate"] for r in ui(collector, "summary")["rows"]}
    for status in statuses:
        expected = int(is_failure(status))
        assert failed_in_list[trace_of[status]] == expected, status
        assert rates[f"GET /{status}"] == expected, status
    assert [is_failure(s) for s in statuses] == [False] * 4 + [True] * 3
    buf = io.StringIO()
    assert show(db, None, buf, limit=len(statuses)) == 0
    listed = {ln.split()[0]: ln for ln in buf.getvalue().splitlines()[1 : len(statuses) + 1]}
    for status in statuses:
        assert ("1 failed" in listed[trace_of[status]]) is is_failure(status), status


def test_cli_never_writes_into_a_database_that_is_not_its_own(tmp_path: Path) -> None:
    # An app's SQLite file given as --db by mistake: refused, and left as it was.
    app_db = tmp_path / "db.sqlite3"
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE auth_user(id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    before = app_db.read_bytes()
    for args in (("show", "--db", str(app_db)), ("show", "--db", str(empty))):
        res = _cli(*args)
        assert res.returncode == 2 and "is not a collector database" in res.stdout, res
    serve = _cli("--port", "0", "--db", str(app_db))
    assert serve.returncode == 2 and "auth_user" in serve.stderr, serve
    assert "Traceback" not in serve.stderr
    assert app_db.read_bytes() == before and empty.stat().st_size == 0


def test_cli_port_out_of_range_and_port_in_use(tmp_path: Path) -> None:
    res = _cli("--port", "99999", "--db", str(tmp_path / "a.sqlite3"))
    assert res.returncode == 2 and "argument --port" in res.stderr and "Traceback" not in res.stderr
    with Collector(str(tmp_path / "first.sqlite3"), port=0) as first:
        res = _cli("--port", str(first.port), "--db", str(tmp_path / "second.sqlite3"))
    assert res.returncode == 1 and "cannot listen" in res.stderr, res
    assert not (tmp_path / "second.sqlite3").exists()  # no database made for a failed start


def test_show_piped_into_a_reader_that_stops_early(collector: Collector, db: str) -> None:
    # More output than a pipe holds (the list, then the latest trace: 3,000 spans), read
    # one line of: a write fails with EPIPE, which ends show quietly.
    now = time.time()
    trace_id, root = hexid(0x7B0, 32), hexid(0x7B0, 16)
    spans = [
        {
            "trace_id": trace_id,
            "span_id": hexid(0x7B00 + i, 16),
            "parent_span_id": root,
            "op": "db",
            "description": f"SELECT {i} FROM a_table_with_a_long_name",
            "start_timestamp": now,
            "timestamp": now + 0.001,
        }
        for i in range(3000)
    ]
    payload = tx_payload(trace_id, root, "GET /piped", now, 0.01, spans=spans)
    assert post(collector, tx_envelope(payload)).status_code == 200
    show_cmd = [sys.executable, "-m", "sentry_tracing_mw.collector", "show", "--db", db]
    shell = f"{' '.join(map(repr, show_cmd))} | head -1"
    res = subprocess.run(shell, shell=True, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert len(res.stdout.splitlines()) == 1
    assert "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr


def test_sigterm_closes_the_database(tmp_path: Path) -> None:
    db = tmp_path / "term.sqlite3"
    proc = _serving("--port", "0", "--db", str(db))
    try:
        assert proc.stdout is not None
        dsn = [proc.stdout.readline() for _ in range(4)][1].split()[-1]
        stm.init(dsn=dsn, traces_sample_rate=1.0)
        with stm.start_transaction("before-sigterm", op="task"):
            pass
        assert stm.flush(5)
        stm.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err
    assert not os.path.exists(f"{db}-wal") and not os.path.exists(f"{db}-shm")
    buf = io.StringIO()
    assert show(str(db), None, buf) == 0 and "before-sigterm" in buf.getvalue()


def test_serve_forever_keeps_a_programs_own_sigterm_handler(tmp_path: Path) -> None:
    # A program that embeds the collector and handles SIGTERM itself still gets it (uvicorn
    # restores the handler it found and raises the signal again after shutting down).
    script = textwrap.dedent(
        """
        import os, signal, sys, threading
        from sentry_tracing_mw.collector import Collector
        got = []
        signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
        collector = Collector(sys.argv[1], port=0)
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
        collector.serve_forever()
        print("handled", got, signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "embed.sqlite3")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "handled [15] True", (res.stdout, res.stderr)


def test_cli_allow_host(tmp_path: Path) -> None:
    proc = _serving("--port", "0", "--db", str(tmp_path / "h.sqlite3"), "--allow-host", "t.lan")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        for host, status in (("t.lan", 200), ("u.lan", 403)):
            res = httpx.get(url + "/api/ui/stats", headers={"Host": host}, timeout=10)
            assert res.status_code == status, (host, res.text[:200])
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def _prepared(body: bytes) -> Any:
    from sentry_tracing_mw._envelope import parse_envelope
    from sentry_tracing_mw.collector.store import prepare_envelope

    return prepare_envelope(parse_envelope(body), "1", len(body))


def _numbered_envelope(n: int, now: float) -> bytes:
    """Envelope ``n``: a transaction of trace ``n`` with two spans; every third one also
    carries an error of that trace, every fifth a client report."""
    trace_id, root = hexid(n + 1, 32), hexid(n + 1, 16)
    spans = [
        child(trace_id, hexid(0x1000 + 2 * n + k, 16), root, "db", "SELECT 1", now, 0.001)
        for k in range(2)
    ]
    payload = tx_payload(trace_id, root, f"GET /n{n}", now, 0.01, spans=spans)
    items = [({"type": "transaction"}, json.dumps(payload).encode())]
    if n % 3 == 0:
        error = {
            "event_id": hexid(0xE000 + n, 32),
            "level": "error",
            "exception": {"values": [{"type": "ValueError", "value": f"n{n}"}]},
            "contexts": {"trace": {"trace_id": trace_id, "span_id": root}},
        }
        items.append(({"type": "event"}, json.dumps(error).encode()))
    if n % 5 == 0:
        report = {
            "discarded_events": [{"reason": "queue_overflow", "category": "span", "quantity": 1}]
        }
        items.append(({"type": "client_report"}, json.dumps(report).encode()))
    return serialize_envelope({"event_id": payload["event_id"]}, items)


def test_store_keeps_the_newest_envelopes_and_everything_from_them(db: str) -> None:
    from sentry_tracing_mw.collector.store import Store

    store = Store(db, max_envelopes=10)
    now = time.time()
    try:
        for n in range(30):
            store.ingest(_prepared(_numbered_envelope(n, now)), received=now + n)
        counts = store.counts()
        # pruned back to 10 once it holds 1% (at least one) more: 10 or 11 kept
        assert counts["envelopes"] in (10, 11), counts
        kept = counts["envelopes"]
        assert store.pruned_envelopes == 30 - kept
        names = {row["name"] for row in store.query("SELECT name FROM units")}
        assert names == {f"GET /n{n}" for n in range(30 - kept, 30)}
        assert counts["spans"] == 3 * kept  # the spans of dropped transactions went too
        errors = {row["title"] for row in store.query("SELECT title FROM errors")}
        assert errors == {f"ValueError: n{n}" for n in range(30 - kept, 30) if n % 3 == 0}
        reports = store.query("SELECT COUNT(*) AS n FROM client_reports")[0]["n"]
        assert reports == len([n for n in range(30 - kept, 30) if n % 5 == 0])
    finally:
        store.close()
    # a smaller limit prunes what an earlier run left at once; no limit keeps everything
    store = Store(db, max_envelopes=4)
    try:
        assert store.counts()["envelopes"] == 4 and store.pruned_envelopes == kept - 4
        assert {r["name"] for r in store.query("SELECT name FROM units")} == {
            f"GET /n{n}" for n in range(26, 30)
        }
    finally:
        store.close()
    store = Store(db)
    try:
        store.ingest(_prepared(_numbered_envelope(30, now)), received=now + 30)
        assert store.counts()["envelopes"] == 5 and store.pruned_envelopes == 0
    finally:
        store.close()
    for bad in (0, -1, 1.5, "10", True):
        with pytest.raises(ValueError, match="max_envelopes"):
            Store(db, max_envelopes=bad)  # type: ignore[arg-type]


def test_store_file_stops_growing_at_its_limit(db: str) -> None:
    from sentry_tracing_mw.collector.store import Store

    store = Store(db, max_envelopes=200)
    now = time.time()
    sizes = []
    try:
        for n in range(1200):
            store.ingest(_prepared(_numbered_envelope(n, now)), received=now + n)
            if n in (599, 1199):
                size = os.path.getsize(db)
                wal = db + "-wal"
                sizes.append(size + (os.path.getsize(wal) if os.path.exists(wal) else 0))
        assert store.counts()["envelopes"] <= 202
    finally:
        store.close()
    # freed pages are reused: the second 600 envelopes add (almost) nothing
    assert sizes[1] <= sizes[0] * 1.1, sizes


def test_collector_max_envelopes_option_stats_and_cli(db: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_envelopes"):
        Collector(db, port=0, max_envelopes=0)
    small = Collector(db, port=0, max_envelopes=3).start()
    try:
        now = time.time()
        for n in range(5):  # the fifth is one more than 3 + 1: back to 3
            assert post(small, _numbered_envelope(n, now)).status_code == 200
        stats = ui(small, "stats")
        assert stats["max_envelopes"] == 3
        assert stats["counts"]["envelopes"] == 3 and stats["pruned_envelopes"] == 2
        listed = {row["name"] for row in ui(small, "transactions")["rows"]}
        assert listed == {"GET /n2", "GET /n3", "GET /n4"}
    finally:
        small.stop()
    for bad in ("-1", "x"):
        res = _cli("--port", "0", "--db", str(tmp_path / "m.sqlite3"), "--max-envelopes", bad)
        assert res.returncode == 2 and "argument --max-envelopes" in res.stderr, res
    assert Collector.__init__.__kwdefaults__["max_envelopes"] == 50_000  # type: ignore[index]
