"""Client report aggregation (protocol §15)."""

from __future__ import annotations

import threading
import time
import types

import pytest

from sentry_tracing_mw import _client_reports
from sentry_tracing_mw._client_reports import FLUSH_INTERVAL, MAX_ENTRIES, ClientReports


def entries(payload: dict[str, object] | None) -> dict[tuple[str, str], int]:
    assert payload is not None
    return {(e["reason"], e["category"]): e["quantity"] for e in payload["discarded_events"]}  # type: ignore[attr-defined]


def test_record_take_reset() -> None:
    r = ClientReports()
    assert r.take() is None
    r.record("sample_rate", "transaction")
    r.record("sample_rate", "transaction", 2)
    r.record("queue_overflow", "error")
    payload = r.take()
    assert payload is not None
    assert isinstance(payload["timestamp"], float)
    assert set(payload) == {"timestamp", "discarded_events"}
    assert entries(payload) == {("sample_rate", "transaction"): 3, ("queue_overflow", "error"): 1}
    assert r.take() is None
    assert r.snapshot() == {("sample_rate", "transaction"): 3, ("queue_overflow", "error"): 1}


def test_ignores_invalid() -> None:
    r = ClientReports()
    r.record("sample_rate", "transaction", 0)
    r.record("sample_rate", "transaction", -3)
    r.record("rate_limited_events", "error")  # reserved for Relay
    r.record("made_up", "error")
    r.record("sample_rate", "not_a_category")
    assert r.take() is None
    assert r.snapshot() == {}


def test_record_transaction_counts_spans_plus_one() -> None:
    r = ClientReports()
    r.record_transaction("network_error", 10)
    r.record_transaction("network_error", 0)
    assert entries(r.take()) == {("network_error", "transaction"): 2, ("network_error", "span"): 12}


def test_restore_puts_counts_back_once() -> None:
    r = ClientReports()
    r.record("send_error", "error", 4)
    payload = r.take()
    assert payload is not None
    r.record("send_error", "error", 1)
    r.restore(payload)
    assert entries(r.take()) == {("send_error", "error"): 5}
    assert r.snapshot() == {("send_error", "error"): 5}
    r.restore({"discarded_events": [{"reason": "x", "category": "y", "quantity": "bad"}, 3]})
    r.restore({})
    assert r.take() is None


def test_due() -> None:
    r = ClientReports()
    now = time.monotonic()
    assert not r.due(now + FLUSH_INTERVAL + 1)  # nothing pending
    r.record("sample_rate", "span")
    assert not r.due(now)
    assert r.due(now + FLUSH_INTERVAL + 1)
    r.take()
    r.record("sample_rate", "span")
    assert not r.due(time.monotonic() + 1)


def test_entries_capped_rest_waits() -> None:
    r = ClientReports()
    reasons = [
        "sample_rate",
        "queue_overflow",
        "network_error",
        "send_error",
        "before_send",
        "ignored",
    ]
    cats = ["transaction", "span", "error", "default", "attachment", "session", "profile", "replay"]
    for reason in reasons:
        for cat in cats:
            r.record(reason, cat)
    first = entries(r.take())
    second = entries(r.take())
    assert len(first) == MAX_ENTRIES
    assert len(first) + len(second) == len(reasons) * len(cats)
    assert r.take() is None


def take_while_running(
    r: ClientReports, threads: list[threading.Thread], rounds: int, also_fold: bool = False
) -> list[dict[tuple[str, str], int]]:
    """Run ``threads`` while taking reports (and, with ``also_fold``, reading pending and
    snapshot too); every report taken, the final one after the threads ended included."""
    taken: list[dict[tuple[str, str], int]] = []
    for t in threads:
        t.start()
    for _ in range(rounds):
        if also_fold:
            r.pending()
            r.snapshot()
        p = r.take()
        if p:
            taken.append(entries(p))
    for t in threads:
        t.join()
    p = r.take()
    if p:
        taken.append(entries(p))
    return taken


def test_thread_safe_and_fast() -> None:
    r = ClientReports()

    def work() -> None:
        for _ in range(10_000):
            r.record("sample_rate", "span")

    taken = take_while_running(r, [threading.Thread(target=work) for _ in range(8)], 50)
    assert sum(d.get(("sample_rate", "span"), 0) for d in taken) == 80_000
    n = 100_000
    t0 = time.perf_counter()
    for _ in range(n):
        r.record("queue_overflow", "transaction")
    per_call = (time.perf_counter() - t0) / n
    assert per_call < 20e-6


def test_unsampled_counts_are_exact_under_concurrent_folds() -> None:
    # record_unsampled takes no lock; take(), snapshot() and pending() fold concurrently.
    r = ClientReports()

    def work(children: int) -> None:
        for i in range(5_000):
            r.record_unsampled(children if i % 10 == 0 else 0)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    taken = take_while_running(r, threads, 200, also_fold=True)
    assert not r.pending()
    assert sum(d.get(("sample_rate", "transaction"), 0) for d in taken) == 20_000
    # 20,000 transactions, 500 per thread with 0+1+2+3 children.
    assert sum(d.get(("sample_rate", "span"), 0) for d in taken) == 20_000 + 500 * 6
    assert r.snapshot()[("sample_rate", "transaction")] == 20_000
    r.record_unsampled(0)
    assert r.pending()
    assert entries(r.take()) == {("sample_rate", "transaction"): 1, ("sample_rate", "span"): 1}


# -- every reason, invalid reasons, the 30 s interval, restore, hand-over, snapshot --
# (each of these guards a line a mutation check showed no other test watched)


# §15 "Valid reasons".
VALID_REASONS = [
    "queue_overflow",
    "cache_overflow",
    "ratelimit_backoff",
    "network_error",
    "sample_rate",
    "before_send",
    "event_processor",
    "send_error",
    "internal_sdk_error",
    "insufficient_data",
    "backpressure",
    "buffer_overflow",
    "ignored",
    "invalid",
]


@pytest.mark.parametrize("reason", VALID_REASONS)
def test_every_valid_reason_is_recorded(reason: str) -> None:
    r = ClientReports()
    r.record(reason, "error")
    r.record_transaction(reason, 2)
    payload = r.take()
    assert payload is not None
    got = {(e["reason"], e["category"]): e["quantity"] for e in payload["discarded_events"]}
    assert got == {(reason, "error"): 1, (reason, "transaction"): 1, (reason, "span"): 3}


def test_record_transaction_ignores_invalid_reasons() -> None:
    r = ClientReports()
    r.record_transaction("made_up", 3)
    r.record_transaction("rate_limited_events", 3)  # reserved for Relay (§15)
    assert r.take() is None
    assert r.snapshot() == {}


def test_reports_are_due_30_seconds_after_the_last_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time)
    monkeypatch.setattr(_client_reports, "time", fake_time)  # this module's clock only
    r = ClientReports()  # the interval starts at creation
    r.record("send_error", "error")
    assert not r.due(1029.9)
    assert r.due(1030.0)  # §15: "once 30 s have passed"
    clock[0] = 1100.0
    assert r.take() is not None  # the interval restarts at each take()
    r.record("send_error", "error")
    assert not r.due(1129.9)
    assert r.due(1130.0)


def test_restore_keeps_single_counts_and_drops_zero_quantities() -> None:
    # a report that was not delivered goes back whole, 1s included; a quantity must stay
    # a positive integer on the wire (§15)
    r = ClientReports()
    r.record("network_error", "error", 1)
    r.record("network_error", "transaction", 2)
    payload = r.take()
    assert payload is not None
    payload["discarded_events"].append({"reason": "send_error", "category": "error", "quantity": 0})
    r.restore(payload)
    again = r.take()
    assert again is not None
    assert sorted(
        (e["reason"], e["category"], e["quantity"]) for e in again["discarded_events"]
    ) == [("network_error", "error", 1), ("network_error", "transaction", 2)]


def test_hand_over_moves_unsampled_counts_too() -> None:
    # init() again: the old client's sample_rate drops are sent by the new one (§15)
    old, new = ClientReports(), ClientReports()
    old.record_unsampled(2)
    old.hand_over(new)
    payload = new.take()
    assert payload is not None
    got = {(e["reason"], e["category"]): e["quantity"] for e in payload["discarded_events"]}
    assert got == {("sample_rate", "transaction"): 1, ("sample_rate", "span"): 3}
    assert old.take() is None


def test_snapshot_includes_unsampled_counts() -> None:
    r = ClientReports()
    r.record_unsampled(1)
    assert r.snapshot() == {("sample_rate", "transaction"): 1, ("sample_rate", "span"): 2}
