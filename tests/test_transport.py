"""The background transport against a real local HTTP "Sentry" (127.0.0.1 only)."""

# The sentry_server fixture is imported, then requested by name:
# ruff: noqa: F401, F811

from __future__ import annotations

import collections
import gc
import gzip
import itertools
import logging
import os
import re
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest

from sentry_tracing_mw import _transport
from sentry_tracing_mw._client_reports import ClientReports
from sentry_tracing_mw._context import SUPPRESS_INSTRUMENTATION
from sentry_tracing_mw._dsn import Dsn
from sentry_tracing_mw._transport import Pending, Transport, uwsgi_threads_disabled
from sentry_tracing_mw._version import VERSION

from .payload_checks import (
    check_all,
    check_envelope,
    sample_dsc,
    sample_error,
    sample_transaction,
)
from .sentry_server import SentryServer, sentry_server

SDK = {"name": "sentry.python.tracemw", "version": VERSION}
SENT_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

MakeTransport = Callable[..., Transport]


def tx_pending(spans: int = 0, hook: Callable[[], object] | None = None) -> Pending:
    payload = sample_transaction(spans)
    dsc = sample_dsc(payload["contexts"]["trace"]["trace_id"])

    def prepare() -> tuple[dict[str, Any], dict[str, str] | None]:
        if hook is not None:
            hook()
        return payload, dsc

    return Pending("transaction", prepare, span_count=spans)


def error_pending() -> Pending:
    payload = sample_error()
    dsc = sample_dsc(payload["contexts"]["trace"]["trace_id"])
    return Pending("error", lambda: (payload, dsc))


@pytest.fixture
def make_transport(sentry_server: SentryServer) -> Iterator[MakeTransport]:
    made: list[Transport] = []

    def make(dsn: str | None = None, **kwargs: Any) -> Transport:
        kwargs.setdefault("reports", ClientReports())
        t = Transport(Dsn.parse(dsn or sentry_server.dsn), sdk_info=SDK, **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        t.close(timeout=1.0)


def test_delivers_envelopes_with_headers(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    t = make_transport()
    tx, err = tx_pending(spans=3), error_pending()
    assert t.submit(tx)
    assert t.submit(err)
    assert t.flush(5)
    assert sentry_server.wait_for(2)
    dsn = Dsn.parse(sentry_server.dsn)
    for rec in sentry_server.accepted():
        assert rec.path == "/api/1/envelope/"
        assert rec.headers["X-Sentry-Auth"] == dsn.auth_header
        assert rec.headers["Content-Type"] == "application/x-sentry-envelope"
        assert rec.headers["Content-Encoding"] == "gzip"
        assert rec.headers["User-Agent"] == f"sentry.python.tracemw/{VERSION}"
        assert rec.raw[:2] == b"\x1f\x8b" and gzip.decompress(rec.raw) == rec.body
    env_tx, env_err = sentry_server.envelopes()
    (tx_payload, _), (err_payload, _) = tx.prepare() or ({}, None), err.prepare() or ({}, None)
    assert env_tx.headers["event_id"] == tx_payload["event_id"]
    assert SENT_AT.match(env_tx.headers["sent_at"])
    assert env_tx.headers["dsn"] == sentry_server.dsn
    assert env_tx.headers["sdk"] == SDK
    assert env_tx.headers["trace"]["trace_id"] == tx_payload["contexts"]["trace"]["trace_id"]
    assert [it.type for it in env_tx.items] == ["transaction"]
    assert env_tx.items[0].headers == {
        "type": "transaction",
        "length": len(env_tx.items[0].payload),
    }
    assert env_err.items[0].type == "event"
    assert env_err.headers["event_id"] == err_payload["event_id"]
    assert len(sentry_server.transactions()[0]["spans"]) == 3
    assert sentry_server.events()[0]["exception"]["values"][0]["value"] == "boom"


def test_keep_alive_and_no_trace_header_when_dsc_none(
    sentry_server: SentryServer,
    make_transport: MakeTransport,
) -> None:
    t = make_transport()
    for _ in range(5):
        t.submit(tx_pending())
        assert t.flush(5)
    payload = sample_error()
    t.submit(Pending("error", lambda: (payload, None)))
    assert t.flush(5)
    assert sentry_server.wait_for(6)
    assert len({rec.extra["client"] for rec in sentry_server.accepted()}) == 1
    assert "trace" not in sentry_server.envelopes()[-1].headers
    # The error was handed over without a DSC on purpose (the client always has one, and
    # protocol.md requires it on event envelopes): the transactions are validated fully,
    # the error by our checks and sentry-relay's normalizer with only the DSC not required.
    sentry_server.check_parsed()
    bodies = [rec.raw for rec in sentry_server.received]
    check_all(bodies[:-1])
    check_envelope(bodies[-1], require_trace=False)
    sentry_server.validate = False  # done above; teardown still checks every body parsed


def test_a_sender_thread_that_cannot_start_is_retried_and_drops_are_said(
    sentry_server: SentryServer,
    make_transport: MakeTransport,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A process out of threads (a pids limit): submit() still returns at once, the failure
    # is logged, the next submit tries again; close() says what it drops.
    original = threading.Thread.start
    refuse = [True]

    def start(self: threading.Thread) -> None:
        if refuse[0] and self.name == "sentry_tracing_mw.transport":
            raise RuntimeError("can't start new thread")
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    t = make_transport()
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        assert t.submit(tx_pending())
        assert any("cannot start" in r.getMessage() for r in caplog.records)
        refuse[0] = False
        assert t.submit(tx_pending())  # started now: both are sent
        assert t.flush(5)
        assert sentry_server.wait_for(2)
        stuck = make_transport()
        refuse[0] = True
        assert stuck.submit(tx_pending(spans=2))
        caplog.clear()
        started = time.monotonic()
        stuck.close(timeout=0.5)
    assert time.monotonic() - started < 2
    (record,) = [r for r in caplog.records if "still queued" in r.getMessage()]
    assert "1 transaction(s) (3 span(s))" in record.getMessage()


def test_worker_thread_identity(sentry_server: SentryServer, make_transport: MakeTransport) -> None:
    seen: dict[str, Any] = {}

    def hook() -> None:
        thread = threading.current_thread()
        seen.update(
            name=thread.name, daemon=thread.daemon, suppressed=SUPPRESS_INSTRUMENTATION.get()
        )

    t = make_transport()
    assert t.submit(tx_pending(hook=hook))
    assert t.flush(5)
    assert seen == {"name": "sentry_tracing_mw.transport", "daemon": True, "suppressed": True}
    assert SUPPRESS_INSTRUMENTATION.get() is False


def test_prepare_errors_and_drops(
    sentry_server: SentryServer,
    make_transport: MakeTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = make_transport()

    def boom() -> None:
        raise RuntimeError("hook exploded")

    with caplog.at_level(logging.ERROR, logger="sentry_tracing_mw"):
        assert t.submit(tx_pending(spans=2, hook=boom))
        assert t.submit(Pending("transaction", lambda: None, span_count=5))  # dropped by a hook
        assert t.submit(Pending("error", lambda: 42))  # type: ignore[arg-type,return-value]
        assert t.submit(tx_pending())
        assert t.flush(5)
    assert "hook exploded" in caplog.text
    assert len(sentry_server.transactions()) == 1
    assert t.reports.snapshot() == {
        ("internal_sdk_error", "transaction"): 1,
        ("internal_sdk_error", "span"): 3,
        ("internal_sdk_error", "error"): 1,
    }


def test_down_then_reported_exactly_once(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    t = make_transport()
    sentry_server.go_down()
    for _ in range(3):
        assert t.submit(tx_pending(spans=2))
    assert t.submit(error_pending())
    assert t.flush(5)  # delivery failed, but everything was handled
    expected = {
        ("network_error", "transaction"): 3,
        ("network_error", "span"): 9,
        ("network_error", "error"): 1,
    }
    assert t.reports.snapshot() == expected
    assert t.reports.pending()  # the report could not be sent either: restored
    sentry_server.come_back()
    assert t.flush(5)
    assert sentry_server.wait_for(1)
    assert sentry_server.client_reports() == expected
    env = sentry_server.envelopes()[0]
    assert list(env.headers) == ["sent_at"] and env.headers["sent_at"].endswith("Z")
    assert [it.type for it in env.items] == ["client_report"]
    assert t.flush(5)
    t.submit(tx_pending())
    assert t.flush(5)
    assert sentry_server.client_reports() == expected  # not reported twice
    assert len(sentry_server.transactions()) == 1


def test_client_report_piggybacks_when_due(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    reports = ClientReports()
    t = make_transport(reports=reports)
    reports.record_transaction("sample_rate", 4)
    t.submit(tx_pending())
    assert t.flush(5)
    assert [it.type for it in sentry_server.envelopes()[0].items] == ["transaction"]
    assert sentry_server.client_reports() == {
        ("sample_rate", "transaction"): 1,
        ("sample_rate", "span"): 5,
    }
    sentry_server.clear()
    reports.record("sample_rate", "transaction", 2)
    reports._last_take -= 31.0  # the clock: 30 s have passed
    t.submit(tx_pending())
    assert sentry_server.wait_for(1)
    assert [it.type for it in sentry_server.envelopes()[0].items] == [
        "transaction",
        "client_report",
    ]
    assert sentry_server.client_reports() == {("sample_rate", "transaction"): 2}


# What the failed POST itself is reported as (a 429'd envelope is counted by Sentry).
FAILED_SEND_REASON = {"500": "send_error", "413": "send_error", "reset": "network_error"}


@pytest.mark.parametrize("fault", ["500", "413", "reset", "429"])
def test_report_on_a_failed_envelope_is_put_back_and_reported_once(
    fault: str, sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    reports = ClientReports()
    t = make_transport(reports=reports)
    reports.record_transaction("sample_rate", 4)
    reports.record("before_send", "error", 2)
    before = {
        ("sample_rate", "transaction"): 1,
        ("sample_rate", "span"): 5,
        ("before_send", "error"): 2,
    }
    reports._last_take -= 31.0  # the clock: a report is due, it rides on the next envelope
    sentry_server.fault(fault)
    assert t.submit(tx_pending(spans=2))
    assert sentry_server.wait_requests(1)
    (failed,) = sentry_server.received
    assert failed.status != 200 and failed.envelope is not None
    assert [it.type for it in failed.envelope.items] == ["transaction", "client_report"]
    rode = failed.envelope.items[1].json()["discarded_events"]
    assert {(e["reason"], e["category"]): e["quantity"] for e in rode} == before

    sentry_server.heal(fault)
    expected = dict(before)
    if fault in FAILED_SEND_REASON:
        reason = FAILED_SEND_REASON[fault]
        expected.update({(reason, "transaction"): 1, (reason, "span"): 3})
    deadline = time.monotonic() + 5  # a 429's Retry-After (1 s) holds reports back
    while True:
        assert t.flush(5)
        if sentry_server.client_reports() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert sentry_server.client_reports() == expected  # every drop once: none lost, none twice
    assert not reports.pending()
    reports._last_take -= 31.0  # due again: nothing left to ride along
    assert t.submit(tx_pending())
    assert t.flush(5)
    assert sentry_server.client_reports() == expected
    assert [it.type for it in sentry_server.envelopes()[-1].items] == ["transaction"]


def test_client_reports_disabled(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    reports = ClientReports()
    t = make_transport(reports=reports, send_client_reports=False)
    reports.record("sample_rate", "transaction", 2)
    reports._last_take -= 31.0
    t.submit(tx_pending())
    assert t.flush(5)
    assert sentry_server.client_reports() == {}
    assert len(sentry_server.received) == 1


def test_closing_while_the_only_envelope_is_in_flight_says_so(
    sentry_server: SentryServer, make_transport: MakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing queued, one envelope being sent to a Sentry that hangs: close() gives up at
    its timeout and said nothing, so a transaction lost at exit left no trace."""
    sentry_server.hang()
    try:
        t = make_transport(read_timeout=10.0)
        assert t.submit(tx_pending())
        assert sentry_server.wait_hanging(5)
        with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
            started = time.monotonic()
            t.close(timeout=0.3)
        assert time.monotonic() - started < 2
    finally:
        sentry_server.release()
    (record,) = [r for r in caplog.records if "still being sent" in r.getMessage()]
    assert "shutdown_timeout" in record.getMessage()


def test_closing_with_no_time_left_after_a_flush_says_nothing(
    sentry_server: SentryServer, make_transport: MakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """close(0) after everything was sent: the idle worker may not have exited within the
    zero timeout, which is no envelope in flight (shutdown_timeout=0 warned at every exit)."""
    t = make_transport()
    assert t.submit(tx_pending())
    assert t.flush(5)
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        t.close(timeout=0)
    assert [r.getMessage() for r in caplog.records] == []


def test_hanging_sentry_does_not_block(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.hang()
    t = make_transport(read_timeout=10.0)
    # Bounds far below the 10 s the worker is stuck for: "does not block", not "is fast"
    # (that is the benchmarks' job), so a loaded machine passes too.
    t0 = time.perf_counter()
    assert t.submit(tx_pending())
    assert time.perf_counter() - t0 < 0.5
    assert sentry_server.wait_hanging(5)
    t0 = time.perf_counter()
    for _ in range(50):
        t.submit(tx_pending())
    assert time.perf_counter() - t0 < 1.0
    assert t.flush(0.2) is False
    t0 = time.monotonic()
    t.close(timeout=0.5)
    assert time.monotonic() - t0 < 0.5 + 1.5
    assert t.submit(tx_pending()) is False  # closed


def test_429_retry_after_drops_before_io(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.respond(429, {"Retry-After": "30"})
    t = make_transport()
    gate = threading.Event()
    assert t.submit(tx_pending(spans=1, hook=lambda: gate.wait(5)))
    assert t.submit(tx_pending(spans=3))  # queued before the 429 was seen
    gate.set()
    assert t.flush(5)
    assert len(sentry_server.received) == 1
    assert t.rate_limits.is_limited("transaction", time.monotonic())
    assert t.rate_limits.is_limited("error", time.monotonic())
    assert t.submit(tx_pending(spans=1)) is False
    assert t.submit(error_pending()) is False
    assert t.flush(5)
    assert len(sentry_server.received) == 1  # nothing else was sent, not even a client report
    assert t.reports.snapshot() == {
        ("ratelimit_backoff", "transaction"): 2,
        ("ratelimit_backoff", "span"): 4 + 2,
        ("ratelimit_backoff", "error"): 1,
    }


def test_category_limit_lets_errors_flow(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.respond(429, {"X-Sentry-Rate-Limits": "60:transaction:key"})
    t = make_transport()
    t.submit(tx_pending())
    assert t.flush(5)
    sentry_server.respond(200)
    assert t.submit(tx_pending()) is False
    assert t.submit(error_pending())
    assert t.flush(5)
    assert len(sentry_server.events()) == 1
    assert sentry_server.transactions() == []
    assert ("ratelimit_backoff", "transaction") in t.reports.snapshot()


def test_rate_limit_header_on_200(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.respond(200, {"X-Sentry-Rate-Limits": "60:error:organization"})
    t = make_transport()
    t.submit(tx_pending())
    assert t.flush(5)
    assert t.rate_limits.is_limited("error", time.monotonic())
    assert not t.rate_limits.is_limited("transaction", time.monotonic())


@pytest.mark.parametrize("status", [413, 500, 400, 403])
def test_error_status_is_send_error(
    status: int,
    sentry_server: SentryServer,
    make_transport: MakeTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sentry_server.respond(status)
    t = make_transport()
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        t.submit(tx_pending(spans=4))
        t.submit(error_pending())
        assert t.flush(5)
    assert t.reports.snapshot() == {
        ("send_error", "transaction"): 1,
        ("send_error", "span"): 5,
        ("send_error", "error"): 1,
    }
    if status == 413:
        assert any(r.levelno == logging.ERROR and "413" in r.getMessage() for r in caplog.records)
    assert not t.rate_limits.is_limited("transaction", time.monotonic())


def test_reset_mid_response_is_network_error(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.reset()
    t = make_transport()
    t.submit(tx_pending(spans=1))
    assert t.flush(5)
    assert t.reports.snapshot() == {
        ("network_error", "transaction"): 1,
        ("network_error", "span"): 2,
    }
    sentry_server.respond(200)
    t.submit(tx_pending())
    assert t.flush(5)
    assert len(sentry_server.transactions()) == 1  # recovered on a fresh connection
    assert sentry_server.client_reports() == {
        ("network_error", "transaction"): 1,
        ("network_error", "span"): 2,
    }


def test_queue_byte_bound(sentry_server: SentryServer, make_transport: MakeTransport) -> None:
    t = make_transport(queue_size=1000, queue_bytes=10_000)
    started, gate = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        gate.wait(5)

    assert t.submit(tx_pending(hook=block))
    assert started.wait(5)
    results = []
    for _ in range(20):
        p = tx_pending()
        p.size_hint = 1000
        results.append(t.submit(p))
    assert results == [True] * 10 + [False] * 10
    big = tx_pending()
    big.size_hint = 20_000
    gate.set()
    assert t.flush(5)
    assert t.submit(big) is False
    assert t.reports.snapshot() == {
        ("queue_overflow", "transaction"): 11,
        ("queue_overflow", "span"): 11,
    }


def test_flood_bounded_memory_exact_overflow(
    sentry_server: SentryServer, make_transport: MakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    sentry_server.go_down()
    t = make_transport(queue_size=1000)
    t._backoff_after = 10**9  # the queue bound, not the backoff, is under test here
    payload = sample_transaction(10)
    dsc = sample_dsc(payload["contexts"]["trace"]["trace_id"])
    proc = psutil.Process()
    gc.collect()
    rss0 = proc.memory_info().rss
    n, accepted = 100_000, 0
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        for i in range(n):
            blob = bytes(1024) + i.to_bytes(4, "little")  # ~1 KiB held per queued item

            def prepare(blob: bytes = blob) -> tuple[dict[str, Any], dict[str, str]]:
                return payload, dsc

            pending = Pending("transaction", prepare, span_count=10, size_hint=len(blob))
            accepted += t.submit(pending)
    elapsed = time.perf_counter() - t0
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 1, [r.getMessage() for r in full]  # said once, not per drop
    rss1 = proc.memory_info().rss
    assert t.queued() <= 1000
    assert (rss1 - rss0) < 50 * 1024 * 1024, f"RSS grew by {(rss1 - rss0) / 1e6:.1f} MB"
    snap = t.reports.snapshot()
    assert snap[("queue_overflow", "transaction")] == n - accepted
    assert snap[("queue_overflow", "span")] == 11 * (n - accepted)
    assert accepted >= 1000
    assert elapsed < 10, f"{n} submits took {elapsed:.2f}s"
    t.close(timeout=2)


def test_a_close_inside_a_submit_leaves_nothing_stranded(make_transport: MakeTransport) -> None:
    # A signal handler that closes the transport may run inside submit() (the lock is
    # reentrant): the item submit then queues must be dropped and counted, not stranded.
    t = make_transport()

    class Interrupting(collections.deque):  # type: ignore[type-arg]
        fired = False

        def __len__(self) -> int:
            if not Interrupting.fired:
                Interrupting.fired = True
                t.close(0)  # what the handler does, on the thread that holds the lock
            return super().__len__()

    t._queue = Interrupting()
    t._closed = False  # (close() in the first submit runs after its closed check)
    assert t.submit(tx_pending(spans=2)) is False
    assert t.queued() == 0
    assert t.reports.snapshot()[("queue_overflow", "transaction")] == 1


def test_drops_of_a_replaced_reports_go_to_its_successor() -> None:
    old, new = ClientReports(), ClientReports()
    old.record("network_error", "error")
    old.hand_over(new)
    old.record("send_error", "transaction")  # a send the old worker finished later
    old.record_transaction("network_error", 2)
    old.restore({"discarded_events": [{"reason": "send_error", "category": "span", "quantity": 4}]})
    assert new.snapshot() == {
        ("network_error", "error"): 1,
        ("send_error", "transaction"): 1,
        ("network_error", "transaction"): 1,
        ("network_error", "span"): 3,
    }
    report = new.take()
    assert report is not None
    assert {(e["reason"], e["category"]): e["quantity"] for e in report["discarded_events"]}[
        ("send_error", "span")
    ] == 4
    assert old.take() is None
    # many re-inits: a chain, followed in a loop (never a RecursionError)
    chain = [ClientReports() for _ in range(1200)]
    for before, after in itertools.pairwise(chain):
        before.hand_over(after)
    chain[0].record("network_error", "error")
    chain[0].hand_over(chain[0])  # a cycle onto itself is refused
    assert chain[-1].snapshot() == {("network_error", "error"): 1}
    # concurrent init()s: A hands over to B after B handed over to C; C gets A's counts
    a, b, c = ClientReports(), ClientReports(), ClientReports()
    a.record("network_error", "error", 5)
    b.hand_over(c)
    a.hand_over(b)
    assert c.snapshot() == {("network_error", "error"): 5}
    assert b.take() is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_gets_fresh_worker(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    t = make_transport()
    t.submit(tx_pending())
    assert t.flush(5)  # the parent's worker and pooled connection exist now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            ok = t.submit(tx_pending(spans=1)) and t.flush(5)
            code = 0 if ok and t._worker is not None and t._worker.is_alive() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sentry_server.wait_for(2)
    clients = {rec.extra["client"] for rec in sentry_server.accepted()}
    assert len(clients) == 2  # the child used its own connection
    t.submit(tx_pending())
    assert t.flush(5)  # the parent still works
    assert sentry_server.wait_for(3)


def test_explicit_http_proxy_is_used(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    t = make_transport("http://public@sentry.invalid:9000/1", http_proxy=sentry_server.url)
    t.submit(tx_pending())
    assert t.flush(5)
    assert sentry_server.wait_for(1)
    assert sentry_server.received[0].path == "http://sentry.invalid:9000/api/1/envelope/"


def test_proxy_selection_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    https = Dsn.parse("https://k@o1.ingest.example.com/1")
    http = Dsn.parse("http://k@sentry.local:9000/1")
    assert _transport._select_proxy(https, None, None) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain:8080")
    assert _transport._select_proxy(https, None, None) == "http://proxy:3128"
    assert _transport._select_proxy(http, None, None) == "http://plain:8080"
    assert (
        _transport._select_proxy(https, "http://explicit:1", "http://explicit:2")
        == "http://explicit:2"
    )
    assert _transport._select_proxy(https, "http://explicit:1", None) == "http://explicit:1"
    assert _transport._select_proxy(http, "", None) is None
    monkeypatch.setenv("NO_PROXY", "example.com,localhost")
    assert _transport._select_proxy(https, None, None) is None
    assert _transport._select_proxy(http, None, None) == "http://plain:8080"


def test_flush_and_close_edge_cases(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    t = make_transport()
    t0 = time.monotonic()
    assert t.flush(1)
    assert t._worker is None  # nothing submitted: no thread, no request
    t.close(1)
    t.close(1)
    assert time.monotonic() - t0 < 0.5
    assert sentry_server.received == []
    assert t.submit(tx_pending()) is False


def test_submit_is_cheap(sentry_server: SentryServer, make_transport: MakeTransport) -> None:
    sentry_server.go_down()
    t = make_transport(queue_size=200_000)
    gate = threading.Event()
    t.submit(tx_pending(hook=lambda: gate.wait(5)))
    items = [tx_pending() for _ in range(1)] * 20_000
    t0 = time.perf_counter()
    for p in items:
        t.submit(p)
    per = (time.perf_counter() - t0) / len(items)
    gate.set()
    t.close(0.1)
    assert per < 50e-6, f"submit costs {per * 1e6:.1f} µs"


def test_uwsgi_detection(monkeypatch: pytest.MonkeyPatch) -> None:
    assert uwsgi_threads_disabled() is False
    fake = types.ModuleType("uwsgi")
    fake.opt = {"master": True}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    assert uwsgi_threads_disabled() is True
    fake.opt = {"enable-threads": True}  # type: ignore[attr-defined]
    assert uwsgi_threads_disabled() is False
    fake.opt = {"threads": b"4"}  # type: ignore[attr-defined]
    assert uwsgi_threads_disabled() is False
    fake.opt = {"threads": b"0"}  # type: ignore[attr-defined]
    assert uwsgi_threads_disabled() is True


# -- backoff after repeated failures (5xx, network errors) ----------------------------------


BACKOFF_REASON = {"500": "send_error", "503": "send_error", "reset": "network_error"}


@pytest.mark.parametrize("mode", ["500", "503", "reset", "down"])
def test_backoff_after_repeated_failures_drops_unbuilt(
    mode: str, sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.fault(mode)
    t = make_transport(send_client_reports=False)  # flush() sends no report probes here
    t._backoff_base = 30.0  # the window outlasts the test
    built = [0]

    def count() -> None:
        built[0] += 1

    accepted = 0
    for _ in range(200):  # one at a time: the worker sees each failure before the next
        accepted += t.submit(tx_pending(spans=2, hook=count))
        assert t.flush(5)
    assert t.submit(error_pending()) is False  # every category waits out the window
    # Three sends failed, then nothing was built, serialized or sent: the rest was dropped
    # on submit (the request thread never woke the worker).
    assert built[0] == accepted == 3
    if mode != "down":
        assert len(sentry_server.received) == 3  # no reconnect storm either
    reason = BACKOFF_REASON.get(mode, "network_error")
    assert t.reports.snapshot() == {
        (reason, "transaction"): 200,
        (reason, "span"): 600,
        (reason, "error"): 1,
    }


def test_backoff_drops_of_queued_items_and_exact_reports_after_recovery(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.respond(500)
    t = make_transport(queue_size=5000)
    t._backoff_base = 30.0
    gate = threading.Event()
    built = [0]

    def count() -> None:
        built[0] += 1
        gate.wait(5)

    for _ in range(500):  # all queued before the first failure is seen
        assert t.submit(tx_pending(spans=1, hook=count))
    gate.set()
    assert t.flush(5)
    assert built[0] == 3  # queued items after the third failure were dropped unbuilt
    expected = {("send_error", "transaction"): 500, ("send_error", "span"): 1000}
    assert t.reports.snapshot() == expected
    sentry_server.respond(200)
    # The window (30 s) is still open, but a flush always tries its client report: it is
    # delivered at once, and that success ends the backoff.
    assert t.flush(5)
    assert sentry_server.client_reports() == expected
    assert not t.reports.pending()
    assert t.submit(tx_pending())
    assert t.flush(5)
    assert len(sentry_server.transactions()) == 1
    assert sentry_server.client_reports() == expected  # not reported twice


@pytest.mark.parametrize("mode", ["500", "reset", "down"])
def test_backoff_window_grows_caps_and_resets(
    mode: str, sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.fault(mode)
    t = make_transport(send_client_reports=False)  # no report probes: only events send
    t._backoff_base, t._backoff_max = 0.5, 1.25

    def window() -> float:
        return t._backoff_until - time.monotonic()

    def wait_out() -> None:
        time.sleep(max(0.0, window()) + 0.02)

    def failing_send_opens(delay: float) -> None:
        """One more failed send sets the window to ``delay`` from when the worker saw it
        (between these two clock reads: no bound on how fast this machine is)."""
        before = time.monotonic()
        assert t.submit(tx_pending())
        assert t.flush(5)
        after = time.monotonic()
        assert before + delay <= t._backoff_until <= after + delay

    for _ in range(2):
        assert t.submit(tx_pending())
        assert t.flush(5)
    assert window() <= 0  # two failures: no backoff yet
    failing_send_opens(0.5)
    assert t.submit(tx_pending()) is False
    wait_out()
    failing_send_opens(1.0)  # the probe after the window failed: the window doubled
    wait_out()
    failing_send_opens(1.25)  # capped
    sentry_server.heal(mode)
    wait_out()
    assert t.submit(tx_pending(spans=1))
    assert t.flush(5)
    assert sentry_server.wait_for(1)
    assert window() <= 0 and t._failures == 0
    for _ in range(2):  # the count restarted: two new failures do not back off
        sentry_server.fault(mode)
        assert t.submit(tx_pending())
        assert t.flush(5)
    assert window() <= 0
    reason = BACKOFF_REASON.get(mode, "network_error")
    assert t.reports.snapshot() == {(reason, "transaction"): 8, (reason, "span"): 8}


@pytest.mark.parametrize("status", [400, 403, 413])
def test_4xx_never_backs_off(
    status: int, sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.respond(status)
    t = make_transport(send_client_reports=False)
    for _ in range(10):
        assert t.submit(tx_pending())
        assert t.flush(5)
    assert len(sentry_server.received) == 10
    assert t.reports.snapshot() == {("send_error", "transaction"): 10, ("send_error", "span"): 10}


def test_an_answer_below_500_ends_the_failure_streak(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    t = make_transport(send_client_reports=False)
    for status in (500, 500, 413, 500, 500, 429, 500, 500):
        sentry_server.respond(status, {"Retry-After": "0"} if status == 429 else None)
        assert t.submit(tx_pending())
        assert t.flush(5)
    assert t._backoff_until == 0.0
    assert len(sentry_server.received) == 8


@pytest.fixture
def moved_to(sentry_server: SentryServer) -> Iterator[SentryServer]:
    """A second "Sentry": where the first one redirects to."""
    target = SentryServer()
    try:
        yield target
    finally:
        target.stop()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_followed_with_the_same_body_and_said_once(
    status: int,
    sentry_server: SentryServer,
    moved_to: SentryServer,
    make_transport: MakeTransport,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A self-hosted Sentry moved behind a redirect (http to https, a new path): sentry-sdk
    follows it (urllib3 re-sends the POST), so must we; the log says where to point the DSN."""
    sentry_server.respond(status, {"Location": f"{moved_to.url}/new/api/1/envelope/"})
    t = make_transport()
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        t.submit(tx_pending(spans=2))
        t.submit(error_pending())
        assert t.flush(5)
    assert len(sentry_server.received) == 2
    assert moved_to.wait_for(2)
    assert [r.path for r in moved_to.received] == ["/new/api/1/envelope/"] * 2
    assert moved_to.received[0].raw == sentry_server.received[0].raw
    assert moved_to.received[0].headers["X-Sentry-Auth"].startswith("Sentry sentry_version=7")
    assert len(moved_to.transactions()) == 1 and len(moved_to.events()) == 1
    assert t.reports.snapshot() == {}
    said = [r.getMessage() for r in caplog.records if "redirects" in r.getMessage()]
    assert len(said) == 1 and f"{moved_to.url}/new/api/1/envelope/" in said[0], said


def test_redirect_loops_303_and_relative_locations(
    sentry_server: SentryServer, moved_to: SentryServer, make_transport: MakeTransport
) -> None:
    sentry_server.respond(307, {"Location": "/api/1/envelope/"})  # itself, for ever
    t = make_transport(send_client_reports=False)
    t.submit(tx_pending())
    assert t.flush(5)
    assert len(sentry_server.received) == 4  # the POST and three redirects, then it stops
    assert t.reports.snapshot() == {("send_error", "transaction"): 1, ("send_error", "span"): 1}
    sentry_server.received.clear()
    sentry_server.respond(303, {"Location": f"{moved_to.url}/api/1/envelope/"})
    t.submit(tx_pending())
    assert t.flush(5)
    assert len(sentry_server.received) == 1 and moved_to.received == []  # a POST is no GET
    moved_to.respond(308, {"Location": "../../2/envelope/"})  # relative to the moved URL
    t2 = make_transport(moved_to.dsn)
    t2.submit(error_pending())
    assert t2.flush(5)
    paths = [r.path for r in moved_to.received]  # (it answers the new URL with 308 too)
    assert paths[:2] == ["/api/1/envelope/", "/api/2/envelope/"], paths


def test_an_empty_rate_limit_header_on_a_429_is_no_header(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    """sentry-sdk reads an empty ``X-Sentry-Rate-Limits`` as absent: the 429's
    ``Retry-After`` (or its 60 s default) limits every category."""
    sentry_server.respond(429, {"X-Sentry-Rate-Limits": "", "Retry-After": "30"})
    t = make_transport()
    t.submit(tx_pending())
    assert t.flush(5)
    now = time.monotonic()
    assert t.rate_limits.is_limited("transaction", now) and t.rate_limits.is_limited("error", now)
    assert t.submit(error_pending()) is False
    assert len(sentry_server.received) == 1


def test_a_proxy_given_as_host_and_port_is_an_http_proxy(
    sentry_server: SentryServer, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``127.0.0.1:3128`` (as curl and requests take it, in the option or ``HTTP_PROXY``)."""
    t = make_transport(
        "http://public@sentry.invalid:9000/1", http_proxy=f"127.0.0.1:{sentry_server.port}"
    )
    t.submit(tx_pending())
    assert t.flush(5) and sentry_server.wait_for(1)
    assert sentry_server.received[0].path == "http://sentry.invalid:9000/api/1/envelope/"
    assert t.reports.snapshot() == {}
    for var in ("http_proxy", "https_proxy", "no_proxy", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HTTP_PROXY", "plain:8080")
    dsn = Dsn.parse("http://k@sentry.local:9000/1")
    assert _transport._select_proxy(dsn, None, None) == "http://plain:8080"
    monkeypatch.setenv("NO_PROXY", "sentry.local:9000")  # a host:port entry, as requests
    assert _transport._select_proxy(dsn, None, None) is None
    monkeypatch.setenv("NO_PROXY", "sentry.local:9001")
    assert _transport._select_proxy(dsn, None, None) == "http://plain:8080"


def test_a_407_names_the_proxy(
    sentry_server: SentryServer, make_transport: MakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    sentry_server.respond(407, {"Proxy-Authenticate": 'Basic realm="p"'})
    t = make_transport("http://public@sentry.invalid:9000/1", http_proxy=sentry_server.url)
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        t.submit(tx_pending())
        assert t.flush(5)
    (said,) = [r.getMessage() for r in caplog.records if "407" in r.getMessage()]
    assert "proxy" in said and sentry_server.url in said and "Sentry answered" not in said
    assert t.reports.snapshot() == {("send_error", "transaction"): 1, ("send_error", "span"): 1}


def test_a_dsn_path_prefix_beyond_ascii_is_sent_percent_encoded(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    t = make_transport(f"http://public@127.0.0.1:{sentry_server.port}/中/é/1")
    t.submit(error_pending())
    assert t.flush(5) and sentry_server.wait_for(1)
    assert sentry_server.received[0].path == "/%E4%B8%AD/%C3%A9/api/1/envelope/"


def test_debug_logs_each_envelope_sent(
    sentry_server: SentryServer, make_transport: MakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``debug=True`` a wrong path prefix or host shows: the URL of every send."""
    t = make_transport()
    with caplog.at_level(logging.DEBUG, logger="sentry_tracing_mw"):
        t.submit(error_pending())
        assert t.flush(5)
    said = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("sentry_tracing_mw: sent")
    ]
    assert len(said) == 1 and f"{sentry_server.url}/api/1/envelope/: HTTP 200" in said[0], said


def test_a_lock_swapped_by_late_monkey_patching_gets_a_matching_condition(
    sentry_server: SentryServer, make_transport: MakeTransport
) -> None:
    """``eventlet.monkey_patch()`` after the client exists (a gunicorn ``--preload`` master
    forking eventlet workers) replaces every reference to our lock by a green lock, the
    condition's too, but the condition keeps methods bound to the old lock: before a fix,
    ``notify``/``wait`` raised "un-acquired lock", the sender died and flush() raised into
    the app. The swap is done here as eventlet does it, with a pure-Python RLock."""
    t = make_transport()
    green = threading._PyRLock()  # type: ignore[attr-defined]
    t._lock = green
    t._cond._lock = green  # type: ignore[attr-defined]
    for _ in range(3):
        assert t.submit(error_pending())
    assert t.flush(5)
    time.sleep(0.2)  # the sender idles on the condition now
    for _ in range(3):
        assert t.submit(error_pending())
    assert t.flush(5)
    assert sentry_server.wait_for(6)
    assert t.reports.snapshot() == {}
