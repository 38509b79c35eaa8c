"""A test suite's clock mock (freezegun replaces the time functions, and module attributes
bound to them) around traced code: no negative durations, no unbounded waits."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw import _tracing

from .sentry_server import SentryServer


def _backwards(start: float) -> Iterator[float]:
    value = start
    while True:
        yield value
        value -= 10.0


def test_a_clock_going_back_never_gives_a_negative_duration(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    clock = _backwards(1000.0)
    monkeypatch.setattr(_tracing, "_perf", lambda: next(clock))
    with stm.start_transaction("back", op="task") as tx:
        with tx.start_child("db"):
            pass
    monkeypatch.undo()
    assert stm.flush(5)
    (event,) = sentry_server.transactions()  # (validated by the fixture: Relay too)
    assert event["timestamp"] >= event["start_timestamp"]
    (span,) = event["spans"]
    assert span["timestamp"] >= span["start_timestamp"]


def test_flush_and_close_keep_their_deadlines_under_a_frozen_clock(
    sentry_server: SentryServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """freezegun freezes ``time.monotonic`` for the caller: a deadline computed from it
    never came, and ``flush(0.5)`` behind a hung Sentry waited for the send's own timeout."""
    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, shutdown_timeout=0.5)
    sentry_server.hang()
    with stm.start_transaction("held", op="task"):
        pass
    assert sentry_server.wait_hanging()
    monkeypatch.setattr(time, "monotonic", lambda: 1000.0)
    try:
        started = time.perf_counter()
        assert stm.flush(0.5) is False
        assert time.perf_counter() - started < 3
        started = time.perf_counter()
        client.close()
        assert time.perf_counter() - started < 3
    finally:
        monkeypatch.undo()
        sentry_server.release()


def test_durations_stay_real_when_a_mock_rebinds_the_time_functions(
    sentry_server: SentryServer,
) -> None:
    """freezegun replaces every module attribute that *is* ``time.perf_counter`` (and the
    other time functions) with its frozen clock: a transaction that straddled the freeze
    lasted 50 years, one inside it 0 s. Ours keeps the real counter out of that reach."""
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    real = time.perf_counter

    def frozen() -> float:
        return 1.0e9

    replaced = []
    for module in list(sys.modules.values()):
        try:
            names = [k for k, v in vars(module).items() if v is real]
        except TypeError:
            continue
        for name in names:
            setattr(module, name, frozen)
            replaced.append((module, name))
    try:
        with stm.start_transaction("frozen", op="task") as tx:
            with tx.start_child("db"):
                time.sleep(0.05)
    finally:
        for module, name in replaced:
            setattr(module, name, real)
    assert stm.flush(5)
    (event,) = sentry_server.transactions()
    assert 0.04 <= event["timestamp"] - event["start_timestamp"] < 5
    (span,) = event["spans"]
    assert 0.04 <= span["timestamp"] - span["start_timestamp"] < 5
