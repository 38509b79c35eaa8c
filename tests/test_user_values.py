"""Odd values given to the manual API: never an exception in the caller's code, never a
payload Sentry refuses or silently rewrites (the ``sentry_server`` fixture checks every
envelope with sentry-relay's normalizer and, where present, the shared validator)."""

from __future__ import annotations

import datetime
import enum
import logging
import math
import time
from http import HTTPStatus
from typing import Any

import pytest

import sentry_tracing_mw as stm
from tests.sentry_server import SentryServer, flushed_transactions


class _Count(int):
    pass


class _BadStr:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    def __repr__(self) -> str:
        return "<BadStr>"


def test_odd_values_never_raise_into_the_caller(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sentry_tracing_mw")
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("t", op="task") as tx:
        span = tx.start_child("db", "q")
        tx.set_tag("bad", _BadStr())
        tx.set_tag("huge", 10**5000)  # str() refuses ints over 4300 digits
        tx.set_tag(_BadStr(), "v")
        tx.set_data(_BadStr(), 1)
        tx.set_status(["ok"])  # type: ignore[arg-type]
        tx.set_name("t", source=["task"])  # type: ignore[arg-type]
        tx.set_http_status(float("inf"))  # type: ignore[arg-type]
        span.set_http_status(float("nan"))  # type: ignore[arg-type]
        tx.set_measurement(_BadStr(), 1)  # type: ignore[arg-type]
        span.finish(end_timestamp="later")  # type: ignore[arg-type]
    (event,) = flushed_transactions(sentry_server, 1)
    assert event["transaction"] == "t" and event["transaction_info"] == {"source": "custom"}
    assert event["tags"] == {
        "bad": "<BadStr>",  # its repr
        "huge": f"<int of {(10**5000).bit_length()} bits>",
        "_BadStr_": "v",
    }
    assert event["contexts"]["trace"]["status"] == "unknown"  # the unparsable HTTP status
    assert event["contexts"]["trace"]["data"]["<BadStr>"] == 1
    (sent,) = event["spans"]
    assert sent["status"] == "unknown"
    assert sent["start_timestamp"] <= sent["timestamp"] <= event["timestamp"]
    # each value replaced says so in a debug log (the README's promise)
    logged = caplog.text
    assert "str() failed: sent as <BadStr>" in logged
    assert "str() failed: sent as <int of" in logged


def test_integers_wider_than_64_bits(sentry_server: SentryServer) -> None:
    # Sentry keeps i64/u64 and turns wider integers into 0 without a word; an int too
    # long to print made the whole event unserializable.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("t", op="task") as tx:
        tx.set_data("max_u64", 2**64 - 1)
        tx.set_data("wide", 2**64 + 1)
        tx.set_data("huge", 10**5000)
        tx.set_data("nested", {"n": [-(2**70)], 2**80: "k"})
        tx.set_measurement("bytes", 2**64, "byte")
        tx.set_measurement("too_big", 10**400)
        tx.set_measurement("too_big_too", _Count(10**400))
    (event,) = flushed_transactions(sentry_server, 1)
    data = event["contexts"]["trace"]["data"]
    assert data["max_u64"] == 2**64 - 1
    assert data["wide"] == float(2**64 + 1) and isinstance(data["wide"], float)
    assert data["huge"] == f"<int of {(10**5000).bit_length()} bits>"
    assert data["nested"] == {"n": [-float(2**70)], str(2**80): "k"}  # keys are text anyway
    assert "bytes" in event["measurements"]
    assert event["measurements"] == {"bytes": {"value": float(2**64), "unit": "byte"}}


def test_empty_tag_values_are_not_sent(sentry_server: SentryServer) -> None:
    # Relay refuses a tag with an empty value (and drops it with an error entry).
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("t", op="task") as tx:
        tx.set_tag("empty", "")
        tx.set_tag("kept", "1")
    (event,) = flushed_transactions(sentry_server, 1)
    assert event["tags"] == {"kept": "1"}


def test_blank_tag_values_and_names_are_not_sent(sentry_server: SentryServer) -> None:
    """Blank is empty to Relay (a tag value of spaces, or a newline made a space); a blank
    name is ``<unlabeled transaction>`` in the event, and no DSC ``transaction``."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("   ", op="task", source="task") as tx:
        tx.set_tag("blank", "   ")
        tx.set_tag("kept", " 1 ")
        with tx.start_child("db", "q") as span:
            span.set_tag("newline", "\n")
    (event,) = flushed_transactions(sentry_server, 1)
    assert event["tags"] == {"kept": " 1 "}
    assert "tags" not in event["spans"][0]
    assert "transaction" not in sentry_server.envelopes()[0].headers["trace"]


def test_wide_integers_from_hooks_and_int_subclasses(sentry_server: SentryServer) -> None:
    """``json_int``'s rule for every value, not only plain ints given to ``set_data``: a
    hook's payload and an int subclass (Relay turns an integer wider than 64 bits into 0)."""

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        event["extra"] = {"order_id": 2**70, "ok": 5}
        return event

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, before_send_transaction=hook)
    with stm.start_transaction("t", op="task") as tx:
        tx.set_data("sub", _Count(2**70))
        tx.set_data("nested_sub", {"n": _Count(2**70)})
    (event,) = flushed_transactions(sentry_server, 1)
    data = event["contexts"]["trace"]["data"]
    wide = [event["extra"]["order_id"], data["sub"], data["nested_sub"]["n"]]
    assert wide == [float(2**70)] * 3  # (2**70 == float(2**70): the type tells)
    assert all(type(value) is float for value in wide), wide
    assert type(event["extra"]["ok"]) is int


def test_spans_a_hook_returns_as_a_tuple_are_sent_and_not_counted_as_dropped(
    sentry_server: SentryServer,
) -> None:
    def hook(event: dict[str, Any]) -> dict[str, Any]:
        event["spans"] = tuple(event["spans"])
        return event

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, before_send_transaction=hook)
    with stm.start_transaction("t", op="task") as tx:
        for i in range(3):
            tx.start_child("db", f"q{i}").finish()
    (event,) = flushed_transactions(sentry_server, 1)
    assert len(event["spans"]) == 3
    assert stm.get_client().reports.snapshot() == {}


@pytest.mark.parametrize("code", [-1, 1000, 10**30, "2O0", float("inf")])
def test_impossible_http_status_is_unknown(sentry_server: SentryServer, code: Any) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("t", op="http.server") as tx:
        tx.set_http_status(code)
        with tx.start_child("http.client", "GET /x") as span:
            span.set_http_status(code)
    (event,) = flushed_transactions(sentry_server, 1)
    assert event["contexts"]["trace"]["status"] == "unknown"
    assert "response" not in event["contexts"]  # Relay refuses a negative status code
    assert "http.status_code" not in event.get("tags", {})
    (sent,) = event["spans"]
    assert sent["status"] == "unknown" and "data" not in sent


@pytest.mark.parametrize("code", ["404", "404 Not Found", b"404", 404.0, HTTPStatus.NOT_FOUND])
def test_http_status_given_as_text_is_read(sentry_server: SentryServer, code: Any) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("t", op="http.server") as tx:
        tx.set_http_status(code)
    (event,) = flushed_transactions(sentry_server, 1)
    assert event["contexts"]["response"] == {"status_code": 404}
    assert event["contexts"]["trace"]["status"] == "not_found"


@pytest.mark.parametrize("end", [math.inf, -math.inf, math.nan, 1e300, -5.0, "soon", None])
def test_unusable_end_timestamps_mean_now(sentry_server: SentryServer, end: Any) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    before = time.time()
    tx = stm.start_transaction("t", op="task")
    span = tx.start_child("work")
    span.finish(end_timestamp=end)
    tx.finish(end_timestamp=end)
    after = time.time()
    (event,) = flushed_transactions(sentry_server, 1)
    (sent,) = event["spans"]
    for timestamp in (event["timestamp"], sent["timestamp"]):
        assert before - 1 <= timestamp <= after + 1
    assert event["start_timestamp"] <= sent["start_timestamp"] <= sent["timestamp"]


def test_datetime_end_timestamps_as_sentry_sdk_takes_them(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    tx = stm.start_transaction("t", op="task")
    span = tx.start_child("work")
    end = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    span.finish(end_timestamp=end)
    local = datetime.datetime.now() + datetime.timedelta(seconds=3)  # naive: local time
    tx.finish(end_timestamp=local)
    (event,) = flushed_transactions(sentry_server, 1)
    (sent,) = event["spans"]
    assert sent["timestamp"] == pytest.approx(end.timestamp(), abs=0.01)
    assert event["timestamp"] == pytest.approx(local.timestamp(), abs=0.01)
    assert event["timestamp"] - event["start_timestamp"] == pytest.approx(3, abs=0.5)


def test_names_and_ops_that_are_not_text(sentry_server: SentryServer) -> None:
    # One value of the wrong type used to fail the whole transaction on the worker thread.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction(123, op=7) as tx:  # type: ignore[arg-type]
        with tx.start_child(404, 3.5):  # type: ignore[arg-type]
            pass
        with stm.start_span(_BadStr(), description=b"bytes"):  # type: ignore[arg-type]
            pass
    with stm.get_client().start_transaction(None, op=_BadStr(), source=5):  # type: ignore[arg-type]
        pass
    first, second = flushed_transactions(sentry_server, 2)
    assert first["transaction"] == "123" and first["contexts"]["trace"]["op"] == "7"
    ops = sorted((s["op"], s["description"]) for s in first["spans"])
    assert ops == [("404", "3.5"), ("<BadStr>", "b'bytes'")]
    assert second["transaction"] == "None" and second["contexts"]["trace"]["op"] == "<BadStr>"
    assert second["transaction_info"] == {"source": "custom"}


def test_exception_classes_that_refuse_attributes_are_captured(
    sentry_server: SentryServer,
) -> None:
    # capture_exception marks an exception once captured: a class whose __getattr__ raises
    # (proxies, lazy wrappers) or that refuses new attributes must still be sent.
    class Proxying(Exception):
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(f"no attribute {name}")

    class Frozen(Exception):
        def __setattr__(self, name: str, value: Any) -> None:
            raise TypeError("frozen")

    stm.init(dsn=sentry_server.dsn)
    proxying, frozen = Proxying("a"), Frozen("b")
    ids = [stm.capture_exception(proxying), stm.capture_exception(frozen)]
    assert all(ids)
    assert stm.capture_exception(proxying) is None  # still captured once only
    assert stm.capture_exception(frozen) is None
    assert stm.flush(5) and sentry_server.wait_for(2)
    events = sentry_server.events()
    assert sorted(e["event_id"] for e in events) == sorted(ids)
    names = sorted(e["exception"]["values"][-1]["type"].rpartition(".")[2] for e in events)
    assert names == ["Frozen", "Proxying"]


class _Op(str, enum.Enum):
    TASK = "queue.task"
    DB = "db.query"


def test_str_enum_members_are_sent_as_their_value(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction(_Op.TASK, op=_Op.TASK) as tx:  # type: ignore[arg-type]
        with tx.start_child(_Op.DB, _Op.DB):
            pass
        tx.set_tag(_Op.DB, _Op.TASK)
    (event,) = flushed_transactions(sentry_server, 1)
    assert event["transaction"] == "queue.task"
    assert event["contexts"]["trace"]["op"] == "queue.task"
    assert [(s["op"], s["description"]) for s in event["spans"]] == [("db.query", "db.query")]
    assert event["tags"] == {"db.query": "queue.task"}


def test_a_custom_sampling_context_that_is_no_mapping_is_ignored() -> None:
    seen: list[Any] = []
    stm.init(traces_sampler=lambda ctx: seen.append(dict(ctx)) or 1.0)
    with stm.start_transaction("t", custom_sampling_context=[1, 2]):  # type: ignore[arg-type]
        pass
    assert seen and seen[0]["transaction_context"]["name"] == "t"
