"""App code that ours calls back (log handlers, hooks, values' reprs) and that fails: it
never breaks a request or the transport's worker thread, and nothing is lost uncounted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations.flask import FlaskTracing

from .sentry_server import SentryServer


class _Broken(logging.Handler):
    """A log shipper whose endpoint is down and which does not catch that."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.calls = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.calls += 1
        raise ConnectionError("log shipper is down")


@pytest.fixture
def broken_root_handler() -> Iterator[_Broken]:
    handler = _Broken()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _transaction(name: str) -> None:
    with stm.start_transaction(name, op="task"):
        pass


def test_a_raising_log_handler_does_not_kill_the_worker(
    sentry_server: SentryServer, broken_root_handler: _Broken
) -> None:
    """The worker logs "sending failed" through the app's handlers: one that raises used
    to end the worker thread, and every later event stayed queued for good."""
    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    sentry_server.respond(500)
    _transaction("during-outage")
    stm.flush(5)
    assert broken_root_handler.calls >= 1  # our warning reached the broken handler
    sentry_server.respond(200)
    assert client.transport is not None
    client.transport._backoff_until = 0.0  # (the 500's backoff window, not under test)
    for i in range(3):
        _transaction(f"after-{i}")
    assert stm.flush(5)
    names = {t["transaction"] for t in sentry_server.transactions()}
    assert {"after-0", "after-1", "after-2"} <= names
    assert client.transport._worker is not None and client.transport._worker.is_alive()


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_a_hook_raising_a_base_exception_does_not_kill_the_worker(
    sentry_server: SentryServer, exc: type[BaseException]
) -> None:
    """``before_send_transaction`` runs on the worker; a BaseException from it is a
    failing filter: that event is dropped (counted exactly once, an unfinished child too),
    and the worker goes on with the next."""

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        if event.get("transaction") == "poisoned":
            raise exc()
        return event

    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, before_send_transaction=hook)
    with stm.start_transaction("poisoned", op="task") as tx:
        tx.start_child("db").finish()
        tx.start_child("never.ends")
    _transaction("healthy")
    assert stm.flush(5)
    assert [t["transaction"] for t in sentry_server.transactions()] == ["healthy"]
    assert client.reports.snapshot() == {
        ("before_send", "transaction"): 1,
        ("before_send", "span"): 2,  # the transaction and its finished child
        ("buffer_overflow", "span"): 1,  # the child that never ended
    }


@pytest.mark.parametrize("exc", [SystemExit, asyncio.CancelledError, GeneratorExit])
def test_a_value_whose_repr_raises_a_base_exception_is_sent_as_unrepresentable(
    sentry_server: SentryServer, exc: type[BaseException]
) -> None:
    class Poison:
        def __repr__(self) -> str:
            raise exc("no")

        __str__ = __repr__

    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("poisoned", op="task") as tx:
        tx.set_data("value", Poison())
    _transaction("healthy")
    assert stm.flush(5)
    sent = {t["transaction"]: t for t in sentry_server.transactions()}
    assert set(sent) == {"poisoned", "healthy"}
    assert sent["poisoned"]["contexts"]["trace"]["data"]["value"] == "<unrepresentable>"
    assert client.reports.snapshot() == {}


def test_an_event_submitted_to_a_closed_transport_is_counted(
    sentry_server: SentryServer,
) -> None:
    """``init()`` may close a client between a capture's check and its submit (a signal
    handler, another thread): the event is then dropped, and counted."""
    old = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    assert old.transport is not None
    old.transport.close()  # the window: the transport is closed, the client not yet
    try:
        raise ValueError("lost")
    except ValueError as exc:
        old.capture_exception(exc)
    old.start_transaction("late", op="task").finish()
    counts = old.reports.snapshot()
    assert counts.get(("queue_overflow", "error")) == 1
    assert counts.get(("queue_overflow", "transaction")) == 1


def test_a_raising_handler_on_our_logger_never_breaks_a_request(
    sentry_server: SentryServer,
) -> None:
    """With ``debug=True`` our debug lines reach the app's handlers on the request path
    (here: the sampler failing is logged); a handler that raises must not fail the request."""
    handler = _Broken()
    ours = logging.getLogger("sentry_tracing_mw")
    ours.addHandler(handler)
    try:

        def sampler(ctx: Any) -> float:
            raise RuntimeError("sampler bug")

        stm.init(dsn=sentry_server.dsn, traces_sampler=sampler, debug=True)
        app = Flask(__name__)

        @app.route("/ok")
        def ok() -> str:
            stm.get_current_span().set_status(object())  # type: ignore[union-attr]
            return "fine"

        FlaskTracing(app)
        response = app.test_client().get("/ok")
        assert (response.status_code, response.text) == (200, "fine")
        assert handler.calls >= 1
    finally:
        ours.removeHandler(handler)
        ours.setLevel(logging.NOTSET)


def test_a_logging_integration_installed_later_sees_our_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sentry-sdk's logging integration patches ``Logger.callHandlers`` at its init, usually
    after this package was imported: our guarded logger goes through the patch too."""
    seen: list[str] = []
    original = logging.Logger.callHandlers

    def patched(self: logging.Logger, record: logging.LogRecord) -> None:
        seen.append(record.getMessage())
        original(self, record)

    monkeypatch.setattr(logging.Logger, "callHandlers", patched)
    logging.getLogger("sentry_tracing_mw").warning("seen by a later patch")
    assert seen == ["seen by a later patch"]


def test_a_measurement_unit_of_a_str_subclass_is_sent_as_its_text(
    sentry_server: SentryServer,
) -> None:
    """A unit whose truth raises used to drop the whole transaction; a StrEnum unit is
    sent as its text (no method of the subclass runs)."""
    import enum

    class Unit(str):
        def __bool__(self) -> bool:
            raise RuntimeError("no truth")

    class Units(str, enum.Enum):
        MS = "millisecond"

    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    with stm.start_transaction("measured", op="task") as tx:
        tx.set_measurement("odd", 1, Unit("second"))
        tx.set_measurement("lcp", 5, Units.MS)
        tx.set_measurement("bad", 3, 42)  # type: ignore[arg-type]
        tx.set_measurement("plain", 2, "none")
    assert stm.flush(5)
    (event,) = sentry_server.transactions()
    assert event["measurements"] == {
        "odd": {"value": 1, "unit": "second"},
        "lcp": {"value": 5, "unit": "millisecond"},
        "plain": {"value": 2, "unit": "none"},
    }


def test_close_drops_and_counts_what_a_dead_worker_left_queued(
    sentry_server: SentryServer,
) -> None:
    """A worker that ended without draining its queue (it cannot die of an item any more,
    but a thread can end in ways no code sees): close() says so and counts them."""
    import threading

    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    transport = client.transport
    assert transport is not None
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    transport._worker = dead  # (queued items wait for a worker that is gone)
    _transaction("stranded-1")
    _transaction("stranded-2")
    assert transport.queued() == 2
    client.close(timeout=0.5)
    assert client.reports.snapshot()[("queue_overflow", "transaction")] == 2


def test_a_hook_returning_an_event_that_cannot_be_walked_is_counted_once(
    sentry_server: SentryServer,
) -> None:
    """The event a hook returns holds a mapping whose iteration raises SystemExit: the
    transaction is dropped and each of its spans counted once (the unfinished child was
    counted before the hook ran)."""

    class Hostile(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            raise SystemExit("no")

        def __iter__(self) -> Any:
            raise SystemExit("no")

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        event["extra"] = Hostile(a=1)
        return event

    client = stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0, before_send_transaction=hook)
    with stm.start_transaction("walked", op="task") as tx:
        tx.start_child("db").finish()
        tx.start_child("never.ends")
    assert stm.flush(5)
    counts = client.reports.snapshot()
    sent = sentry_server.transactions()
    assert counts.get(("buffer_overflow", "span")) == 1
    if sent:  # serialized after all (the mapping written some other way)
        assert len(sent) == 1 and len(counts) == 1
    else:
        assert counts == {
            ("buffer_overflow", "span"): 1,
            ("internal_sdk_error", "transaction"): 1,
            ("internal_sdk_error", "span"): 2,
        }


def test_a_before_send_hook_that_captures_does_not_loop(sentry_server: SentryServer) -> None:
    """A hook that reports its own trouble with ``capture_exception`` runs on the worker:
    that event would go through the hook again, and capture again, for ever. It is not
    sent, and counted; the event the hook returned is."""
    calls = 0

    def hook(event: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        try:
            raise LookupError("enrichment failed")
        except LookupError as exc:
            stm.capture_exception(exc)
        return event

    client = stm.init(dsn=sentry_server.dsn, before_send=hook)
    try:
        raise ValueError("the app's error")
    except ValueError as exc:
        stm.capture_exception(exc)
    assert stm.flush(5)
    stm.flush(0.5)  # anything the hook captured would be queued by now
    assert [e["exception"]["values"][-1]["value"] for e in sentry_server.events()] == [
        "the app's error"
    ]
    assert calls == 1
    assert client.reports.snapshot() == {("internal_sdk_error", "error"): 1}
