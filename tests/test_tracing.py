"""The tracing model: ids, timing, span lifecycle, limits, context handling."""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw import _ids, _tracing
from sentry_tracing_mw._client import get_client
from sentry_tracing_mw._event import transaction_event
from sentry_tracing_mw._serialize import dumps
from tests.payload_checks import _relay_check
from tests.sentry_server import SentryServer

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")


def _capturing_client() -> tuple[list[dict[str, Any]], stm.Client]:
    """A sampling client whose transactions end in the returned list (a hook that drops
    them: nothing is sent, and the drop is counted as ``before_send``)."""
    events: list[dict[str, Any]] = []
    client = stm.init(
        dsn="http://public@127.0.0.1:9/1",
        traces_sample_rate=1.0,
        instrument_http_clients=False,
        before_send_transaction=lambda e: events.append(e),
    )
    return events, client


def _event(tx: stm.Transaction) -> dict[str, Any]:
    """The transaction's event payload, checked by sentry-relay's normalizer."""
    event = transaction_event(tx, get_client().options)
    _relay_check(dumps(event), f"transaction {tx.name!r}")
    return event


# -- ids ------------------------------------------------------------------------------------


def test_ids_have_the_right_shape_and_are_unique() -> None:
    traces = {_ids.new_trace_id() for _ in range(2000)}
    spans = {_ids.new_span_id() for _ in range(2000)}
    events = {_ids.new_event_id() for _ in range(2000)}
    assert len(traces) == len(spans) == len(events) == 2000
    assert all(HEX32.fullmatch(t) and t != "0" * 32 for t in traces)
    assert all(HEX16.fullmatch(s) and s != "0" * 16 for s in spans)
    for event_id in events:
        assert HEX32.fullmatch(event_id)
        assert event_id[12] == "4"  # uuid4 version nibble
        assert event_id[16] in "89ab"  # RFC 4122 variant


def test_ids_never_all_zero_even_when_the_generator_says_zero(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whole batches of zeros are drawn again; zero ids inside a batch are left out.
    values = iter([0, 0, 5, 0, 7 << 64])
    monkeypatch.setattr(_ids, "_bits", lambda n: next(values))
    monkeypatch.setattr(_ids, "_span_ids", [])
    monkeypatch.setattr(_ids, "pop_span_id", _ids._span_ids.pop)
    assert _ids.new_span_id() == "0000000000000005"
    assert _ids._span_ids == []  # the 63 zero ids of that batch were dropped
    monkeypatch.setattr(_ids, "_trace_ids", [])
    monkeypatch.setattr(_ids, "pop_trace_id", _ids._trace_ids.pop)
    assert _ids.new_trace_id() == "0000000000000007" + "0" * 16
    assert _ids._trace_ids == []


def test_ids_are_unique_across_threads() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def take(out: list[str]) -> None:
        for _ in range(5000):
            out.append(_ids.new_span_id())
            out.append(_ids.new_trace_id())

    threads = [threading.Thread(target=take, args=(out,)) for out in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    ids = [i for out in drawn for i in out]
    assert len(ids) == 40000
    assert len(set(ids)) == 40000


def _in_forked_child(read: Callable[[], str]) -> str:
    """What ``read()`` gives in a forked child of this process."""
    pipe_read, pipe_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(pipe_write, read().encode())
        finally:
            os._exit(0)
    os.close(pipe_write)
    with os.fdopen(pipe_read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    return child


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_the_parents_ids() -> None:
    for pool, new in ((_ids._span_ids, _ids.new_span_id), (_ids._trace_ids, _ids.new_trace_id)):
        new()
        if not pool:  # that took the last drawn id: the next call draws a batch
            new()
    assert _ids._span_ids and _ids._trace_ids  # the pools hold drawn ids the child inherits
    child = _in_forked_child(lambda: _ids.new_span_id() + _ids.new_trace_id())
    parent = _ids.new_span_id() + _ids.new_trace_id()
    assert len(child) == 48
    assert child != parent
    assert child[:16] != parent[:16] and child[16:] != parent[16:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_ambient_trace() -> None:
    # An error captured or meta tags rendered before gunicorn --preload forks: the trace
    # kept outside any request is the parent's, not every worker's.
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)

    def fork_and_read() -> tuple[str, str, str]:
        before = stm.get_trace_headers()["sentry-trace"][:32]
        child = _in_forked_child(lambda: stm.get_trace_headers()["sentry-trace"][:32])
        return before, child, stm.get_trace_headers()["sentry-trace"][:32]

    before, child, after = contextvars.copy_context().run(fork_and_read)
    assert after == before  # the parent keeps its own
    assert len(child) == 32 and child != before

    def fork_in_span() -> tuple[str, str]:  # forked inside a span on it (a fork Pool)
        with stm.start_span("task", "pool"):
            return fork_and_read()[:2]

    before, child = contextvars.copy_context().run(fork_in_span)
    assert len(child) == 32 and child != before


def test_an_ambient_trace_is_not_kept_across_init() -> None:
    # init() again (another DSN, release): the trace kept outside any request carried the
    # old client's DSC (its public key) into the new client's error events.
    def read() -> tuple[str, str]:
        stm.init(dsn="http://old@127.0.0.1:9/1", traces_sample_rate=1.0, release="old")
        first = stm.get_trace_headers()
        stm.init(dsn="http://new@127.0.0.1:9/1", traces_sample_rate=1.0, release="new")
        return first["baggage"], stm.get_trace_headers()["baggage"]

    old, new = contextvars.copy_context().run(read)
    assert "sentry-public_key=old" in old and "sentry-release=old" in old
    assert "sentry-public_key=new" in new and "sentry-release=new" in new


def test_reseed_after_fork_changes_the_sequence() -> None:
    state = _ids._rng.getstate()
    first = _ids.new_trace_id()
    _ids._rng.setstate(state)
    _ids.reseed()
    assert _ids.new_trace_id() != first


@pytest.mark.parametrize("rate", [0.0, 1e-7, 0.1, 0.25, 0.3, 0.5, 0.7, 0.999999, 1.0])
def test_sample_rand_backfill_intervals_reproduce_the_decision(rate: float) -> None:
    for _ in range(500):
        trace_id = _ids.new_trace_id()
        below = _ids.trace_sample_rand(trace_id, 0.0, rate)
        above = _ids.trace_sample_rand(trace_id, rate, 1.0)
        assert 0.0 <= below < 1.0 and 0.0 <= above < 1.0
        if rate > 0:
            assert below < rate
        if rate < 1:
            assert above >= rate
        assert float(f"{below:.6f}") == below  # on the 6-decimal grid


# -- timing ----------------------------------------------------------------------------------


class FakeClocks:
    """Wall clock that can jump and a monotonic clock that only advances when told."""

    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 100.0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(_tracing.time, "time", lambda: self.wall)
        monkeypatch.setattr(_tracing, "_perf", lambda: self.mono)


def test_durations_use_the_monotonic_clock_even_when_the_wall_clock_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clocks = FakeClocks()
    clocks.install(monkeypatch)
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    tx = stm.start_transaction("timing")
    clocks.mono += 0.25
    clocks.wall -= 3600  # NTP step backwards mid-request
    with tx.start_child("db", "q"):
        clocks.mono += 0.5
    clocks.wall += 7200
    clocks.mono += 0.25
    tx.finish()
    event = _event(tx)
    assert event["start_timestamp"] == pytest.approx(1_700_000_000.0)
    assert event["timestamp"] - event["start_timestamp"] == pytest.approx(1.0)
    (span,) = event["spans"]
    assert span["start_timestamp"] - event["start_timestamp"] == pytest.approx(0.25)
    assert span["timestamp"] - span["start_timestamp"] == pytest.approx(0.5)


def test_zero_duration_spans_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    clocks = FakeClocks()
    clocks.install(monkeypatch)
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("zero") as tx:
        with tx.start_child("noop"):
            pass
    event = _event(tx)
    assert event["timestamp"] == event["start_timestamp"]
    assert event["spans"][0]["timestamp"] == event["spans"][0]["start_timestamp"]


# -- model -----------------------------------------------------------------------------------


def test_transaction_and_children_build_a_connected_tree() -> None:
    stm.init(traces_sample_rate=1.0, release="app@1.2.3", instrument_http_clients=False)
    with stm.start_transaction("checkout", op="task", source="task") as tx:
        assert stm.get_current_span() is tx
        with tx.start_child("db", "load cart") as db:
            db.set_tag("cart.size", 3)
            db.set_data("rows", 3)
            with stm.start_span("db.query", "SELECT 1") as inner:
                assert inner.parent_span_id == db.span_id
        with stm.start_span("http.client", "GET /pay") as pay:
            pay.set_http_status(402)
        tx.set_status("ok")
        tx.set_measurement("items", 3, "none")
    assert stm.get_current_span() is None
    event = _event(tx)
    assert event["type"] == "transaction"
    assert event["transaction"] == "checkout"
    assert event["transaction_info"] == {"source": "task"}
    assert event["release"] == "app@1.2.3"
    assert event["measurements"] == {"items": {"value": 3, "unit": "none"}}
    trace = event["contexts"]["trace"]
    assert trace["op"] == "task" and trace["status"] == "ok" and trace["origin"] == "manual"
    assert "parent_span_id" not in trace
    by_desc = {s["description"]: s for s in event["spans"]}
    assert set(by_desc) == {"load cart", "SELECT 1", "GET /pay"}
    assert by_desc["load cart"]["parent_span_id"] == trace["span_id"]
    assert by_desc["SELECT 1"]["parent_span_id"] == by_desc["load cart"]["span_id"]
    assert by_desc["load cart"]["tags"] == {"cart.size": "3"}
    assert by_desc["GET /pay"]["status"] == "invalid_argument"
    assert by_desc["GET /pay"]["data"]["http.response.status_code"] == 402
    assert {s["trace_id"] for s in event["spans"]} == {tx.trace_id}


def test_read_only_attributes() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    tx = stm.start_transaction("ro", op="task")
    child = tx.start_child("op", "desc")
    assert child.trace_id == tx.trace_id and child.parent_span_id == tx.span_id
    assert child.op == "op" and child.description == "desc" and child.status is None
    assert child.timestamp is None and child.sampled is True
    child.finish()
    assert child.timestamp is not None and child.timestamp >= child.start_timestamp
    with pytest.raises(AttributeError):
        child.span_id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        child.tags["a"] = "b"  # type: ignore[index]
    tx.name = "renamed"
    tx.set_name("/users/{id}", "route")
    assert (tx.name, tx.source) == ("/users/{id}", "route")
    tx.finish()


def test_set_tag_truncates_and_sanitizes() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("tags") as tx:
        tx.set_tag("k" * 300, "v" * 300)
        tx.set_tag("with space", "line\nbreak")
    tags = _event(tx)["tags"]
    assert {len(k) for k in tags} >= {200}
    assert tags["k" * 200] == "v" * 200
    assert tags["with-space"] == "line break"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (200, "ok"),
        (301, "ok"),
        (400, "invalid_argument"),
        (401, "unauthenticated"),
        (403, "permission_denied"),
        (404, "not_found"),
        (405, "invalid_argument"),
        (409, "already_exists"),
        (413, "failed_precondition"),
        (429, "resource_exhausted"),
        (499, "cancelled"),
        (500, "internal_error"),
        (501, "unimplemented"),
        (502, "internal_error"),
        (503, "unavailable"),
        (504, "deadline_exceeded"),
        (600, "unknown"),
    ],
)
def test_http_status_mapping(code: int, status: str) -> None:
    assert _tracing.http_status_to_span_status(code) == status


def test_invalid_status_is_ignored() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("s") as tx:
        tx.set_status("bogus")
        assert tx.status is None
        tx.set_status("aborted")
    assert _event(tx)["contexts"]["trace"]["status"] == "aborted"


def test_exception_in_span_sets_internal_error_and_restores_context() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with pytest.raises(KeyError):
        with stm.start_transaction("boom") as tx:
            with tx.start_child("work"):
                raise KeyError("x")
    assert stm.get_current_span() is None
    event = _event(tx)
    assert event["contexts"]["trace"]["status"] == "internal_error"
    assert event["spans"][0]["status"] == "internal_error"


def test_only_finished_spans_are_sent_and_unfinished_ones_are_counted() -> None:
    events, client = _capturing_client()
    tx = stm.start_transaction("late")
    done = tx.start_child("done")
    done.finish()
    never = tx.start_child("never finished")
    late = tx.start_child("late")
    tx.finish()
    late.finish()
    stm.flush(5)
    assert [s.op for s in tx.spans] == ["done"]
    assert [s["op"] for s in events[0]["spans"]] == ["done"]
    assert never.timestamp is None
    counts = client.reports.snapshot()
    # both lost children once (the late one not again when it finished), then the
    # transaction and the one span it still held, dropped by the hook
    assert counts[("buffer_overflow", "span")] == 2
    assert counts[("before_send", "transaction")] == 1
    assert counts[("before_send", "span")] == 2


def test_threads_entering_one_span_at_once_each_get_their_own_current_span_back() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    tx = stm.start_transaction("shared")
    shared = tx.start_child("shared")
    errors: list[BaseException] = []
    left: list[object] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race shows

    def worker() -> None:
        try:
            for _ in range(3000):
                with shared:
                    pass
            left.append(stm.get_current_span())
        except BaseException as exc:  # any exception is the failure
            errors.append(exc)

    try:
        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert left == [None] * 16
    assert shared._tokens is None
    tx.finish()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_while_another_thread_enters_a_span_never_hangs_the_child() -> None:
    # The span bookkeeping's lock may be held by another thread at the fork: the child
    # gets a fresh one (before, about a third of such children hung for good).
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    tx = stm.start_transaction("t")
    shared = tx.start_child("x")
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            with shared:
                pass

    thread = threading.Thread(target=churn, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread.start()
    hung = 0
    try:
        for _ in range(60):
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                signal.alarm(3)
                with tx.start_child("c"):
                    pass
                os._exit(0)
            hung += os.WIFSIGNALED(os.waitpid(pid, 0)[1])
    finally:
        stop.set()
        thread.join(5)
        sys.setswitchinterval(interval)
    assert hung == 0
    tx.finish()


def test_children_of_spans_that_record_nothing_keep_no_ancestors_alive() -> None:
    stm.init(traces_sample_rate=1.0, max_spans=2, instrument_http_clients=False)
    with stm.start_transaction("t") as tx:
        kept = tx.start_child("kept")
        assert kept._parent is tx
        chain = [tx.start_child("second")]
        for _ in range(5):  # past max_spans: not recording
            chain.append(chain[-1].start_child("step"))
        assert not any(hasattr(s, "_parent") for s in chain[1:])
        for s in reversed(chain):
            s.finish()
        kept.finish()


def test_a_failing_build_counts_each_lost_span_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import sentry_tracing_mw._client as client_module

    stm.init(
        dsn="http://public@127.0.0.1:9/1", traces_sample_rate=1.0, instrument_http_clients=False
    )
    client = get_client()

    def broken(*args: Any) -> dict[str, Any]:
        raise RuntimeError("build failed")

    monkeypatch.setattr(client_module, "transaction_event", broken)
    tx = stm.start_transaction("t")
    tx.start_child("done").finish()
    tx.start_child("open")
    tx.finish()
    stm.flush(5)
    counts = client.reports.snapshot()
    assert ("buffer_overflow", "span") not in counts
    assert counts[("internal_sdk_error", "transaction")] == 1
    assert counts[("internal_sdk_error", "span")] == 3  # both children and the root


def test_a_child_started_as_its_transaction_ends_is_counted_once() -> None:
    events, client = _capturing_client()
    tx = stm.start_transaction("t")
    tx.finish()
    # Another thread passed start_child's end check just before the transaction ended,
    # and counted its children: replay that window.
    end, tx._end = tx._end, None
    racing = tx.start_child("racing")
    tx._end = end
    assert not racing._recording
    racing.finish()
    stm.flush(5)
    assert events[0]["spans"] == []
    counts = client.reports.snapshot()
    assert counts[("buffer_overflow", "span")] == 1
    assert counts[("before_send", "span")] == 1  # the transaction itself, dropped by the hook


def test_a_span_whose_parent_is_not_sent_hangs_from_its_nearest_sent_ancestor() -> None:
    events, client = _capturing_client()
    tx = stm.start_transaction("orphans")
    outer = tx.start_child("outer")  # finished: sent
    open_a = outer.start_child("open a")  # never finished
    open_b = open_a.start_child("open b")  # finished only after the transaction
    leaf = open_b.start_child("leaf")
    leaf.finish()
    direct = open_a.start_child("direct")
    direct.finish()
    stray = tx.start_child("stray")  # parent: the transaction's unfinished child below
    lost = tx.start_child("lost")
    stray_child = lost.start_child("under lost")
    stray_child.finish()
    outer.finish()
    stray.finish()
    tx.finish()
    open_b.finish()
    stm.flush(5)
    spans = {s["op"]: s for s in events[0]["spans"]}
    assert set(spans) == {"outer", "leaf", "direct", "stray", "under lost"}
    outer_id = spans["outer"]["span_id"]
    assert spans["leaf"]["parent_span_id"] == outer_id
    assert spans["direct"]["parent_span_id"] == outer_id
    assert spans["under lost"]["parent_span_id"] == tx.span_id
    assert spans["stray"]["parent_span_id"] == tx.span_id
    assert spans["outer"]["parent_span_id"] == tx.span_id
    assert client.reports.snapshot()[("buffer_overflow", "span")] == 3  # a, b, lost


def test_max_spans_caps_recorded_spans_and_counts_overflow() -> None:
    stm.init(traces_sample_rate=1.0, max_spans=5, instrument_http_clients=False)
    client = get_client()
    with stm.start_transaction("many") as tx:
        for i in range(8):
            with tx.start_child("op", str(i)) as child:
                assert child.trace_id == tx.trace_id
    assert len(_event(tx)["spans"]) == 5
    assert client.reports.snapshot()[("buffer_overflow", "span")] == 3


def test_unsampled_transaction_records_nothing_but_propagates() -> None:
    stm.init(traces_sample_rate=0.0, instrument_http_clients=False)
    with stm.start_transaction("nope") as tx:
        assert tx.sampled is False
        with tx.start_child("db") as child:
            assert child.sampled is False
            headers = stm.get_trace_headers()
    assert tx.spans == ()
    assert headers["sentry-trace"] == f"{tx.trace_id}-{child.span_id}-0"
    assert "sentry-sampled=false" in headers["baggage"]
    assert headers["traceparent"].endswith("-02")


def test_explicit_sampled_argument_wins() -> None:
    stm.init(traces_sample_rate=0.0, instrument_http_clients=False)
    assert stm.start_transaction("forced", sampled=True).sampled is True
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    assert stm.start_transaction("forced", sampled=False).sampled is False


def test_start_span_without_transaction_is_non_recording_but_carries_the_trace() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_span("task", "detached") as span:
        assert span.sampled is False
        assert HEX32.fullmatch(span.trace_id)
        assert stm.get_current_span() is span
        headers = stm.get_trace_headers()
        assert headers["sentry-trace"].startswith(span.trace_id)
    assert stm.get_current_span() is None


def test_errors_outside_any_span_share_one_trace_with_the_trace_headers(
    sentry_server: SentryServer,
) -> None:
    # protocol §16: without a span, the propagation context's ids, kept (not one new trace
    # per event); run in a copy so the context's trace does not outlive the test.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)

    def outside() -> str:
        for n in range(2):
            try:
                raise ValueError(n)
            except ValueError as exc:
                assert stm.capture_exception(exc)
        return stm.get_trace_headers()["sentry-trace"]

    header = contextvars.copy_context().run(outside)
    assert stm.flush(5)
    events = sentry_server.events()
    assert len(events) == 2
    traces = {e["contexts"]["trace"]["trace_id"] for e in events}
    spans = {e["contexts"]["trace"]["span_id"] for e in events}
    assert traces == {header[:32]} and spans == {header[33:49]}


@pytest.mark.parametrize(
    "carrier",
    [
        pytest.param(lambda st, bg: {"HTTP_SENTRY_TRACE": st, "HTTP_BAGGAGE": bg}, id="environ"),
        pytest.param(lambda st, bg: [("sentry-trace", st), ("baggage", bg)], id="str-pairs"),
        pytest.param(
            lambda st, bg: [(b"Sentry-Trace", st.encode()), (b"baggage", bg.encode())],
            id="bytes-pairs",
        ),
        pytest.param(lambda st, bg: {"Sentry-Trace": st, "BAGGAGE": bg}, id="mixed-case"),
    ],
)
def test_continue_trace_reads_environs_and_header_pairs(carrier: Any) -> None:
    # sentry-sdk's continue_trace(environ_or_headers) habit: request.META / environ work too.
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    trace_id, parent = "5" * 32, "6" * 16
    baggage = f"sentry-trace_id={trace_id},sentry-sample_rate=0.5,sentry-sampled=false,v=1"
    tx = stm.continue_trace(carrier(f"{trace_id}-{parent}-0", baggage), name="job", op="task")
    assert (tx.trace_id, tx.parent_span_id, tx.sampled) == (trace_id, parent, False)
    headers = tx.propagation_context.headers(tx.span_id)
    assert "sentry-sample_rate=0.5" in headers["baggage"] and "v=1" in headers["baggage"]
    tx.finish()


# -- context -------------------------------------------------------------------------------


def test_use_span_restores_previous_even_on_exception() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("outer") as tx:
        other = tx.start_child("other")
        with pytest.raises(RuntimeError):
            with stm.use_span(other):
                assert stm.get_current_span() is other
                raise RuntimeError
        assert stm.get_current_span() is tx
        other.finish()


def test_asyncio_gather_tasks_are_siblings() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)

    @stm.trace(op="task")
    async def work(n: int) -> str:
        await asyncio.sleep(0.01 * (3 - n))
        with stm.start_span("inner", f"inner-{n}"):
            await asyncio.sleep(0)
        span = stm.get_current_span()
        assert span is not None
        return span.span_id

    async def main() -> stm.Transaction:
        with stm.start_transaction("gather") as tx:
            await asyncio.gather(work(0), work(1), work(2))
        return tx

    tx = asyncio.run(main())
    event = _event(tx)
    root = event["contexts"]["trace"]["span_id"]
    tasks = [s for s in event["spans"] if s["op"] == "task"]
    inners = [s for s in event["spans"] if s["op"] == "inner"]
    assert len(tasks) == 3 and len(inners) == 3
    assert {s["parent_span_id"] for s in tasks} == {root}
    assert {s["parent_span_id"] for s in inners} == {s["span_id"] for s in tasks}


def test_wrap_context_carries_the_span_into_threads() -> None:
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    seen: list[Any] = []

    def job() -> None:
        seen.append(stm.get_current_span())
        with stm.start_span("thread.work"):
            pass

    with stm.start_transaction("threads") as tx:
        thread = threading.Thread(target=stm.wrap_context(job))
        thread.start()
        thread.join()
        with ThreadPoolExecutor(2) as pool:
            pool.submit(stm.wrap_context(job)).result()
        # Without wrap_context a plain thread sees no span.
        plain = threading.Thread(target=lambda: seen.append(stm.get_current_span()))
        plain.start()
        plain.join()
    assert seen == [tx, tx, None]
    assert [s.op for s in tx.spans] == ["thread.work", "thread.work"]


def test_changes_after_finish_are_not_sent() -> None:
    # The event is built later, on the sender, from the transaction itself: it must carry
    # the state at finish() (as sentry-sdk sends), whatever the app does afterwards.
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("checkout", op="task") as tx:
        with tx.start_child("db", "q") as child:
            pass
    tx.set_status("internal_error")
    tx.set_name("renamed", "custom")
    tx.name = "renamed again"
    tx.set_tag("late", "1")
    tx.set_data("late", 1)
    tx.set_measurement("late", 1.0, "none")
    tx.set_http_status(503)
    child.set_tag("late", "1")
    child.set_data("late", 1)
    child.set_status("cancelled")
    event = _event(tx)
    assert (event["transaction"], event["transaction_info"]["source"]) == ("checkout", "custom")
    assert event["contexts"]["trace"]["status"] == "ok"
    assert "late" not in (event.get("tags") or {})
    assert "late" not in event["contexts"]["trace"].get("data", {})
    assert "measurements" not in event
    (span,) = event["spans"]
    assert span["status"] == "ok" and "late" not in (span.get("tags") or {})
    assert "late" not in span.get("data", {})


def test_wrap_context_of_a_coroutine_function_stays_async_and_bound() -> None:
    # A coroutine run on another loop (run_coroutine_threadsafe, a BackgroundTask) sees the
    # wrapping request's trace, and Starlette still awaits it (it checks for a coroutine
    # function).
    import inspect

    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    seen: list[Any] = []

    async def job(n: int) -> int:
        await asyncio.sleep(0)
        seen.append(stm.get_current_span())
        with stm.start_span("async.work"):
            pass
        return n * 2

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with stm.start_transaction("async") as tx:
            bound = stm.wrap_context(job)
            assert inspect.iscoroutinefunction(bound) and asyncio.iscoroutinefunction(bound)
            assert asyncio.run_coroutine_threadsafe(bound(21), loop).result(5) == 42
        # from a thread with no trace of its own
        other = threading.Thread(target=lambda: asyncio.run(bound(1)))
        other.start()
        other.join(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    assert seen == [tx, tx]
    assert [s.op for s in tx.spans][:1] == ["async.work"]


def test_wrap_context_async_binds_every_context_variable_and_async_callables() -> None:
    import contextvars
    import inspect

    app_var: contextvars.ContextVar[str] = contextvars.ContextVar("app_var", default="unset")
    seen: list[Any] = []

    class Job:
        async def __call__(self) -> None:
            seen.append(app_var.get())
            app_var.set("changed by the job")

    async def main() -> None:
        app_var.set("at wrap")
        bound = stm.wrap_context(Job())
        assert inspect.iscoroutinefunction(bound)
        app_var.set("at call")
        await bound()
        seen.append(app_var.get())  # the caller's value is back

    asyncio.run(main())
    assert seen == ["at wrap", "at call"]


def test_trace_decorator_sync_and_async_without_current_span_is_transparent() -> None:
    @stm.trace
    def plain(x: int) -> int:
        return x + 1

    @stm.trace(op="db", description="custom")
    async def coro(x: int) -> int:
        return x * 2

    assert plain(1) == 2
    assert asyncio.run(coro(2)) == 4
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("decorated") as tx:
        plain(1)
        asyncio.run(coro(1))
    assert sorted((s.op or "", s.description or "") for s in tx.spans) == [
        ("db", "custom"),
        ("function", plain.__wrapped__.__qualname__),  # type: ignore[attr-defined]
    ]


# -- what a user may pass that an event cannot carry verbatim --------------------------


def test_invalid_origins_and_blank_names_still_give_valid_envelopes(
    sentry_server: SentryServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An origin outside ``auto|manual[.part]{0,3}`` goes out as ``manual`` (debug log); a
    blank name as ``<unlabeled transaction>``. The fixture's teardown runs every received
    envelope through Relay's normalizer and the shared validator."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)
    with caplog.at_level("DEBUG", logger="sentry_tracing_mw"):
        with stm.start_transaction("   ", op="task", origin="my-origin") as tx:
            with tx.start_child("db", "q", origin="auto.db.sqlalchemy.extra.more"):
                pass
            with tx.start_child("db", "q2", origin="auto.db.sqlalchemy"):
                pass
            with tx.start_child("db", "q3", origin=None):  # type: ignore[arg-type]
                pass
        assert stm.flush(10)
    assert sentry_server.wait_for(1)
    (event,) = sentry_server.transactions()
    assert event["transaction"] == "<unlabeled transaction>"
    assert event["contexts"]["trace"]["origin"] == "manual"
    origins = [span["origin"] for span in event["spans"]]
    assert origins == ["manual", "auto.db.sqlalchemy", "manual"]
    assert "invalid span origin 'my-origin'" in caplog.text


def test_unparsable_http_status_sets_unknown() -> None:
    """protocol §7: an unparsable status maps to ``unknown`` (not left as it was)."""
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    with stm.start_transaction("t") as tx:
        span = tx.start_child("http.client")
        span.set_status("ok")
        span.set_http_status("abc")  # type: ignore[arg-type]
        assert span._status == "unknown"
        span.finish()
        tx.set_status("ok")
        tx.set_http_status(None)  # type: ignore[arg-type]
        assert tx._status == "unknown"
    assert _event(tx)["contexts"]["trace"]["status"] == "unknown"


def test_capture_exception_accepts_an_exc_info_tuple(sentry_server: SentryServer) -> None:
    # sentry-sdk's capture_exception(sys.exc_info()) idiom.
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)

    def outside() -> tuple[str | None, str | None]:
        try:
            raise KeyError("from exc_info")
        except KeyError:
            event_id = stm.capture_exception(sys.exc_info())
        nothing = stm.capture_exception((None, None, None))  # exc_info() outside an except
        return event_id, nothing

    event_id, nothing = contextvars.copy_context().run(outside)
    assert event_id is not None and nothing is None
    assert stm.flush(5)
    (event,) = sentry_server.events()
    assert event["event_id"] == event_id
    assert event["exception"]["values"][-1]["type"] == "KeyError"


def test_sentry_sdk_name_keyword_is_the_description(sentry_server: SentryServer) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, instrument_http_clients=False)

    @stm.trace(op="fn", name="named work")
    def work() -> None:
        pass

    with stm.start_transaction("named") as tx:
        with stm.start_span(op="db", name="SELECT 1"):
            work()
        with tx.start_child(op="cache", name="get k"):
            pass
    assert stm.flush(5)
    (event,) = sentry_server.transactions()
    assert sorted(s["description"] for s in event["spans"]) == ["SELECT 1", "get k", "named work"]


def test_capture_exception_without_a_dsn_returns_no_event_id() -> None:
    # Nothing will be sent, so there is no event id to hand out (as sentry-sdk's
    # non-recording client); the same after close().
    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    assert stm.capture_exception(ValueError("nowhere")) is None
    stm.init(dsn="http://k@127.0.0.1:9/1", instrument_http_clients=False)
    stm.close()
    assert stm.capture_exception(ValueError("closed")) is None


def test_one_span_entered_by_overlapping_tasks_and_threads_gives_each_its_own_span_back() -> None:
    """``with span:`` keeps context tokens on the span; tasks or threads that enter the
    same span at overlapping times must each find their own current span after the block
    (not none at all, which would start a fresh trace for every later call)."""
    import asyncio
    import threading

    stm.init(traces_sample_rate=1.0, instrument_http_clients=False)
    after: dict[str, Any] = {}

    async def task(shared: Any, name: str, wait_in: float, wait_out: float) -> None:
        await asyncio.sleep(wait_in)
        with shared:
            assert stm.get_current_span() is shared
            await asyncio.sleep(wait_out)
        after[name] = stm.get_current_span()

    async def main() -> Any:
        with stm.start_transaction("req") as tx:
            shared = tx.start_child("db", "pool")
            await asyncio.gather(task(shared, "a", 0, 0.05), task(shared, "b", 0.01, 0.1))
            return tx

    tx = asyncio.run(main())
    assert after == {"a": tx, "b": tx}

    entered = threading.Barrier(2)
    with stm.start_transaction("threads") as tx2:
        shared = tx2.start_child("db", "pool")

        def thread(name: str, first: bool) -> None:
            with shared:
                entered.wait(5)
                if not first:
                    time.sleep(0.05)
            after[name] = stm.get_current_span()

        workers = [
            threading.Thread(target=stm.wrap_context(thread), args=(n, n == "c"))
            for n in ("c", "d")
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(5)
    assert after["c"] is tx2 and after["d"] is tx2


def test_a_span_left_in_another_context_ends_and_restores() -> None:
    """A span entered in one context and left in another (FastAPI runs a sync ``yield``
    dependency's two halves in two thread-pool calls, a sync generator streamed by a
    StreamingResponse steps in new context copies, a worker thread ends it): it ends
    normally, nothing is raised into the app, the other context gets its previous span."""
    stm.init(traces_sample_rate=1.0)
    tx = stm.start_transaction("t")
    with stm.use_span(tx):
        span = stm.start_span("db", "cross")
        entered = contextvars.copy_context()
        entered.run(span.__enter__)
        assert entered.run(stm.get_current_span) is span
        leaving = entered.copy()  # another context whose current span is ``span``
        leaving.run(span.__exit__, None, None, None)
        assert span.timestamp is not None and span.status is None
        assert leaving.run(stm.get_current_span) is tx

        def exit_in_thread(s: Any) -> None:
            with ThreadPoolExecutor(1) as pool:
                pool.submit(s.__exit__, None, None, None).result()

        other = stm.start_span("db", "threaded")
        other.__enter__()
        exit_in_thread(other)  # raised NameError before
        assert other.timestamp is not None
        tx.finish()


def test_use_span_left_in_another_context_restores() -> None:
    stm.init(traces_sample_rate=1.0)
    tx = stm.start_transaction("t")

    def gen() -> Any:
        with stm.use_span(tx):
            yield stm.get_current_span()

    g = gen()
    assert contextvars.copy_context().run(next, g) is tx
    # the generator's block is left in another context: no ValueError out of it
    with pytest.raises(StopIteration):
        contextvars.copy_context().run(next, g)
    tx.finish()


def test_start_transaction_of_a_continued_trace_is_that_transaction(
    sentry_server: SentryServer,
) -> None:
    """sentry-sdk's pattern: ``start_transaction(continue_trace(headers, ...))`` (or
    ``transaction=``) is the continued transaction, not a new trace named after its repr."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    trace_id, parent = "771a43a4192642f0b136d5159a501700", "1234567890abcdef"
    headers = {"sentry-trace": f"{trace_id}-{parent}-1"}
    tx = stm.continue_trace(headers, op="queue.task", name="job")
    with stm.start_transaction(tx) as started:
        assert started is tx
    other = stm.continue_trace(headers, name="job2")
    assert stm.start_transaction(transaction=other, op="queue.other") is other
    other.finish()
    with pytest.raises(TypeError):
        stm.start_transaction(transaction="job")  # type: ignore[arg-type]
    assert stm.flush(5) and sentry_server.wait_for(2)
    sent = {t["transaction"]: t["contexts"]["trace"] for t in sentry_server.transactions()}
    assert set(sent) == {"job", "job2"}
    assert {t["trace_id"] for t in sent.values()} == {trace_id}
    assert {t["parent_span_id"] for t in sent.values()} == {parent}
    assert (sent["job"]["op"], sent["job2"]["op"]) == ("queue.task", "queue.other")


def test_wrap_context_of_generators_binds_every_step() -> None:
    stm.init(traces_sample_rate=1.0)
    tx = stm.start_transaction("t")

    def numbers(n: int) -> Any:
        got = yield stm.get_current_span()
        for _ in range(n):
            got = yield (got, stm.get_current_span())
        return "done"

    async def anumbers(n: int) -> Any:
        for _ in range(n):
            await asyncio.sleep(0)
            yield stm.get_current_span()

    with stm.use_span(tx):
        bound = stm.wrap_context(numbers)
        abound = stm.wrap_context(anumbers)
    assert stm.get_current_span() is None
    g = bound(2)
    assert next(g) is tx
    assert g.send("a") == ("a", tx) and g.send("b") == ("b", tx)
    with pytest.raises(StopIteration) as stop:
        g.send("c")
    assert stop.value.value == "done"
    assert stm.get_current_span() is None

    async def consume() -> list[Any]:
        return [s async for s in abound(3)]

    assert asyncio.run(consume()) == [tx, tx, tx]
    tx.finish()


@pytest.mark.parametrize(("code", "status"), [(0, None), (None, None), (2, "internal_error")])
def test_sys_exit_inside_a_span(code: Any, status: str | None) -> None:
    """``sys.exit(0)`` ends a job cleanly (as sentry-sdk reads it); a non-zero code fails."""
    stm.init(traces_sample_rate=1.0)
    with pytest.raises(SystemExit):
        with stm.start_transaction("job") as tx:
            with tx.start_child("step") as child:
                sys.exit(code)
    assert (tx.status, child.status) == (status, status)


def test_wrap_context_async_generator_keeps_its_own_context_across_steps() -> None:
    """A span an async generator enters stays its current span over its next steps (its
    children hang off it), while the iterating code keeps its own current span."""
    stm.init(traces_sample_rate=1.0)

    async def stream() -> Any:
        with stm.start_span("gen", "stream") as span:
            for _ in range(3):
                with stm.start_span("chunk", "c"):
                    pass
                yield stm.get_current_span() is span

    async def consume() -> tuple[list[bool], Any]:
        with stm.start_transaction("t") as tx:
            bound = stm.wrap_context(stream)
            seen = []
            async for inside in bound():
                seen.append(inside)
                assert stm.get_current_span() is tx  # the caller's own, between steps
            return seen, tx

    seen, tx = asyncio.run(consume())
    assert seen == [True, True, True]
    by_id = {s.span_id: s for s in tx._spans}
    chunks = [s for s in tx._spans if s.op == "chunk"]
    assert len(chunks) == 3 and all(by_id[c.parent_span_id].op == "gen" for c in chunks)


def test_wrap_context_async_generator_wrapped_outside_any_span_leaves_none_behind() -> None:
    """Wrapped where no span was ever current (import time, a fresh thread): a span the
    generator keeps open across a yield is still never current in the iterating code."""
    stm.init(traces_sample_rate=1.0)

    async def stream() -> Any:
        with stm.start_transaction("inside-gen"):
            for i in range(2):
                yield i

    bound = contextvars.Context().run(stm.wrap_context, stream)  # no span, no trace set

    async def consume() -> list[Any]:
        seen = []
        with stm.start_transaction("consumer") as tx:
            async for _ in bound():
                seen.append(stm.get_current_span() is tx)
            seen.append(stm.get_current_span() is tx)
        return seen

    assert asyncio.run(consume()) == [True, True, True]
