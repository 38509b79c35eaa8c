"""The transport queue's byte bound holds for what events really carry (big span texts,
many spans, error frames), and long span texts are clipped so an item stays far below
Sentry's 1 MiB item limit (protocol §17)."""

from __future__ import annotations

import gc
import json

import psutil
import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw._event import error_event_bytes
from sentry_tracing_mw._tracing import MAX_TEXT

from .sentry_server import SentryServer

MiB = 1024 * 1024


def test_long_span_texts_are_clipped_on_the_wire(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("clip") as tx:
        with tx.start_child("db", "SELECT " + "x" * 50_000) as span:
            span.set_data("blob", "y" * 50_000)
            span.set_data("raw", b"z" * 50_000)
            span.set_data("short", "kept as is")
    assert stm.flush(5)
    (event,) = sentry_server.transactions()
    (span_json,) = event["spans"]
    assert len(span_json["description"]) == MAX_TEXT
    assert span_json["description"].endswith("...")
    assert span_json["description"].startswith("SELECT xxx")
    assert len(span_json["data"]["blob"]) == MAX_TEXT
    assert span_json["data"]["blob"].endswith("...")
    assert span_json["data"]["short"] == "kept as is"
    assert len(span_json["data"]["raw"]) <= MAX_TEXT


def test_queue_byte_bound_counts_real_span_sizes(sentry_server: SentryServer) -> None:
    """With Sentry hanging, transactions of 100 spans with 8 KiB texts each (~1.6 MiB queued
    apiece) overflow a 4 MiB byte bound after a few; the count of drops is exact and memory
    stays bounded whatever the flood."""
    sentry_server.hang()
    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    transport = client.transport
    assert transport is not None
    transport._queue_bytes = 4 * MiB
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    produced = 60
    for i in range(produced):
        with stm.start_transaction(f"big{i}") as tx:
            for _ in range(100):
                with tx.start_child("db", "SELECT " + "q" * 9000) as span:
                    span.set_data("blob", "b" * 9000)
    assert sentry_server.wait_hanging()
    gc.collect()
    growth = (proc.memory_info().rss - rss0) / MiB
    queued = transport.queued()
    overflow = client.reports.snapshot().get(("queue_overflow", "transaction"), 0)
    assert transport._bytes <= 4 * MiB
    # at most the bound's worth is held (about 2 transactions), plus the one being sent
    assert queued <= 3
    assert overflow >= produced - queued - 1
    assert overflow + queued + 1 >= produced  # every transaction is queued, in flight or counted
    assert growth < 40, f"RSS grew {growth:.1f} MiB under a 4 MiB queue bound"
    sentry_server.release()


def test_error_size_estimate_grows_with_frames_and_locals() -> None:
    small = {"exception": {"values": [{"value": "boom", "stacktrace": {"frames": [{}]}}]}}
    frames = [{"context_line": "x = 1", "vars": {"a": "'" + "v" * 500 + "'"}}] * 100
    big = {"exception": {"values": [{"value": "e" * 8000, "stacktrace": {"frames": frames}}]}}
    assert error_event_bytes(small) < 4096
    assert error_event_bytes(big) > 8000 + 100 * 500
    assert error_event_bytes({"exception": "not a mapping"}) == 65536


def test_oversized_transaction_is_shrunk_to_fit_and_left_out_spans_reported(
    sentry_server: SentryServer,
) -> None:
    """1,000 spans of ~16 KiB texts serialize to ~16 MiB: the worker clips the texts, then
    leaves out the spans that still do not fit, counts them, and the item is accepted."""
    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("huge") as tx:
        for i in range(1000):
            with tx.start_child("db", f"SELECT {i} " + "q" * 9000) as span:
                span.set_data("blob", "b" * 9000)
    assert stm.flush(10)
    (event,) = sentry_server.transactions()
    kept = len(event["spans"])
    assert 0 < kept < 1000
    assert all(len(s["description"]) <= 1024 for s in event["spans"])
    assert event["spans"][0]["description"].startswith("SELECT 0 ")
    dropped = client.reports.snapshot().get(("buffer_overflow", "span"), 0)
    assert dropped == 1000 - kept
    raw = sentry_server.accepted()[0]
    assert raw.envelope is not None
    (item,) = raw.envelope.items_of("transaction")
    assert len(item.payload) <= 1024 * 1024


def test_descriptions_of_any_type_are_accepted() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("any") as tx:
        with tx.start_child("db", 123) as a:  # type: ignore[arg-type]
            pass
        with tx.start_child("db", object()) as b:  # type: ignore[arg-type]
            pass
    assert a.description == "123"  # made text when the span starts
    assert b.description is not None and b.description.startswith("<object object at")


def test_size_estimate_counts_what_is_kept_once() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False, max_spans=10)
    with stm.start_transaction("est") as tx:
        with tx.start_child("db", "q") as span:
            for _ in range(5000):  # the same key over and over: one value is kept
                span.set_data("last_row", "r" * 9000)
            span.set_data("rows", list(range(100)))
            span.set_data("rows", [1])
        base = tx._extra_bytes
        assert MAX_TEXT <= base <= MAX_TEXT + 64 * 2
        for _ in range(50):  # 9 beyond max_spans: not recorded, not counted
            with tx.start_child("db", "x" * 9000):
                pass
        assert tx._extra_bytes == base + 9 * MAX_TEXT


def test_left_out_spans_are_not_reported_twice_when_the_send_fails(
    sentry_server: SentryServer,
) -> None:
    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    sentry_server.respond(500)
    with stm.start_transaction("huge") as tx:
        for i in range(1000):
            with tx.start_child("db", f"SELECT {i} " + "q" * 9000):
                pass
    assert stm.flush(10)
    totals = client.reports.snapshot()
    left_out = totals.get(("buffer_overflow", "span"), 0)
    assert left_out > 0
    assert totals.get(("send_error", "transaction")) == 1
    # every span of the 1,001 (the transaction counts as one) is reported exactly once
    assert left_out + totals.get(("send_error", "span"), 0) == 1001
    sentry_server.respond(200)


def test_shrinking_keeps_the_span_tree_and_clips_the_transactions_own_data(
    sentry_server: SentryServer,
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("tree") as tx:
        tx.set_data("blob", "t" * 9000)
        for i in range(30):
            with tx.start_child("http.server", f"outer {i}") as outer:
                for j in range(30):
                    with outer.start_child("db", f"SELECT {i} {j} " + "q" * 9000):
                        pass
    assert stm.flush(10)
    (event,) = sentry_server.transactions()
    ids = {s["span_id"] for s in event["spans"]} | {event["contexts"]["trace"]["span_id"]}
    assert 0 < len(event["spans"]) < 930
    assert all(s["parent_span_id"] in ids for s in event["spans"]), "a kept span lost its parent"
    assert len(event["contexts"]["trace"]["data"]["blob"]) <= 1024


@pytest.mark.parametrize("fill", ["data-list", "data-dict", "tags", "measurement"])
def test_a_transaction_over_the_item_limit_by_its_own_values_is_trimmed_not_dropped(
    sentry_server: SentryServer, fill: str
) -> None:
    # Each value is within its own limits; together they pass 1 MiB. The transaction and
    # its span are still sent (trimmed), nothing is counted as lost.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("big") as tx:
        with tx.start_child("db", "small"):
            pass
        if fill == "data-list":
            tx.set_data("rows", ["r" * 8000] * 200)
        elif fill == "data-dict":
            tx.set_data("resp", {f"k{i}": "v" * 8000 for i in range(200)})
        elif fill == "tags":
            for i in range(3000):
                tx.set_tag(f"{i:05d}" + "k" * 195, "v" * 200)
        else:
            tx.set_measurement("m" * 2_000_000, 1, "none")
            tx.set_measurement("items", 3, "none")
    assert stm.flush(10)
    (event,) = sentry_server.transactions()
    assert [s["description"] for s in event["spans"]] == ["small"]
    assert len(json.dumps(event)) <= 1024 * 1024
    if fill == "tags":
        assert 0 < len(event["tags"]) < 3000
    if fill == "measurement":
        assert list(event["measurements"]) == ["items"]
    assert not [k for k in stm.get_client().reports.snapshot() if k[0] != "sample_rate"]


def test_request_snapshot_counts_against_the_byte_bound(sentry_server: SentryServer) -> None:
    """A queued request transaction holds its request's headers until the worker builds the
    event: they count, so big headers fill the byte bound and no more is held."""
    from sentry_tracing_mw.integrations.wsgi import TracingMiddleware

    def app(environ: dict, start_response: object) -> list[bytes]:  # type: ignore[type-arg]
        start_response("200 OK", [])  # type: ignore[operator]
        return [b"ok"]

    sentry_server.hang()
    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    transport = client.transport
    assert transport is not None
    transport._queue_bytes = 2 * MiB
    traced = TracingMiddleware(app)
    for i in range(40):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": f"/r/{i}",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            **{f"HTTP_X_BIG_{k}": "h" * 8000 for k in range(25)},  # ~200 KB of headers
        }
        for _ in traced(environ, lambda status, headers, exc_info=None: None):
            pass
    assert sentry_server.wait_hanging()
    overflow = client.reports.snapshot().get(("queue_overflow", "transaction"), 0)
    assert transport._bytes <= 2 * MiB
    assert transport.queued() <= 11
    assert overflow >= 40 - transport.queued() - 1
    sentry_server.release()


def test_container_data_is_copied_bounded_and_counted(sentry_server: SentryServer) -> None:
    """Strings inside lists and dicts are clipped and counted like top-level ones (a list of
    one 200 KB string used to be held whole and counted as 64 bytes), containers are cut at
    MAX_DATA_ITEMS values and MAX_DATA_DEPTH levels, and the app may change its own object
    after set_data without changing what is sent."""
    from sentry_tracing_mw._tracing import MAX_DATA_DEPTH, MAX_DATA_ITEMS

    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    mine = {"rows": ["x" * 200_000], "ids": list(range(5 * MAX_DATA_ITEMS))}
    nested: list[object] = []
    level = nested
    for _ in range(3 * MAX_DATA_DEPTH):
        inner: list[object] = []
        level.append(inner)
        level = inner
    with stm.start_transaction("containers") as tx:
        with tx.start_child("db") as span:
            span.set_data("params", mine)
            span.set_data("deep", nested)
            span.set_data("tags", {"a", "b"})
        held = tx._extra_bytes
        mine["rows"].append("added later")
        mine["new"] = "added later"
    assert MAX_TEXT <= held < MAX_TEXT + 64 * 1024  # the clipped string, counted
    assert stm.flush(5)
    (event,) = sentry_server.transactions()
    data = event["spans"][0]["data"]
    assert data["params"]["rows"] == ["x" * (MAX_TEXT - 3) + "..."]
    assert "new" not in data["params"]
    assert len(data["params"]["ids"]) == MAX_DATA_ITEMS - 3  # "rows", its string, "ids"
    depth, level = 0, data["deep"]
    while isinstance(level, list) and level:
        depth, level = depth + 1, level[0]
    assert depth == MAX_DATA_DEPTH and level == "[MaxDepth]"
    assert sorted(data["tags"]) == ["a", "b"]
    assert client.reports.snapshot() == {}


def test_queue_byte_bound_holds_for_strings_inside_containers(
    sentry_server: SentryServer,
) -> None:
    sentry_server.hang()
    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    transport = client.transport
    assert transport is not None
    transport._queue_bytes = 1 * MiB
    for i in range(300):
        with stm.start_transaction(f"t{i}") as tx:
            for _ in range(10):
                with tx.start_child("db") as span:
                    span.set_data("blob", ["y" * 200_000, {"k": "z" * 200_000}])
    assert sentry_server.wait_hanging()
    assert transport._bytes <= 1 * MiB
    assert transport.queued() <= 8  # about 160 KiB held per transaction
    assert client.reports.snapshot().get(("queue_overflow", "transaction"), 0) >= 290
    sentry_server.release()


def test_container_keys_are_clipped_and_counted_like_values() -> None:
    from sentry_tracing_mw._tracing import _bounded

    many = {f"{i:08d}" + "k" * 20_000: 1 for i in range(1000)}
    copy, held = _bounded(many)
    assert all(len(k) == MAX_TEXT for k in copy) and held >= 1000 * MAX_TEXT
    copy, held = _bounded({b"b" * 50_000_000: 1, ("t",) * 10_000: 2, 7: 3})
    keys = list(copy)
    assert len(keys[0]) == MAX_TEXT and isinstance(keys[1], str) and len(keys[1]) <= MAX_TEXT
    assert keys[2] == 7 and held >= 2 * MAX_TEXT - 64
