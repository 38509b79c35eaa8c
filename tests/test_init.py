"""init() side effects: HTTP-client instrumentation, the uWSGI warning, debug logging."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator

import pytest

import sentry_tracing_mw as stm
from sentry_tracing_mw.integrations import http_clients

from .sentry_server import SentryServer


@pytest.fixture
def restore_instrumentation() -> Iterator[None]:
    was = http_clients.is_instrumented()
    yield
    if was:
        http_clients.instrument()
    else:
        http_clients.uninstrument()


@pytest.mark.usefixtures("restore_instrumentation")
def test_init_installs_http_client_instrumentation_by_default() -> None:
    http_clients.uninstrument()
    stm.init(instrument_http_clients=False)
    assert not http_clients.is_instrumented()
    stm.init()
    assert http_clients.is_instrumented()


@pytest.mark.parametrize(
    ("opt", "warned"),
    [
        ({}, True),
        ({"enable-threads": True}, False),
        ({"threads": b"4"}, False),
        ({"enable-threads": b"0"}, True),
        ({"has_threads": 1}, False),  # uWSGI 2.0.31 runs Python threads by default
        ({"has_threads": 0}, True),
    ],
)
def test_uwsgi_without_threads_logs_a_clear_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    opt: dict[str, object],
    warned: bool,
) -> None:
    fake = types.ModuleType("uwsgi")
    opt = dict(opt)
    if "has_threads" in opt:
        fake.has_threads = opt.pop("has_threads")  # type: ignore[attr-defined]
    fake.opt = opt  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        stm.init(dsn="http://key@127.0.0.1:9/1", instrument_http_clients=False)
    messages = [r.getMessage() for r in caplog.records if r.name == "sentry_tracing_mw"]
    assert any("--enable-threads" in m for m in messages) is warned


def test_no_uwsgi_warning_without_a_dsn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fake = types.ModuleType("uwsgi")
    fake.opt = {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        stm.init(instrument_http_clients=False)
    assert not [r for r in caplog.records if "--enable-threads" in r.getMessage()]


def test_debug_option_logs_to_the_package_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("sentry_tracing_mw")
    level = logger.level
    try:
        with caplog.at_level(logging.DEBUG, logger="sentry_tracing_mw"):
            stm.init(
                dsn="http://public:very-secret@127.0.0.1:9/1",
                debug=True,
                instrument_http_clients=False,
            )
            assert logger.level == logging.DEBUG
        assert any("initialized" in r.getMessage() for r in caplog.records)
        assert not any("very-secret" in r.getMessage() for r in caplog.records)
    finally:
        logger.setLevel(level)


@pytest.mark.parametrize("undo", ["init(debug=False)", "close()"])
def test_debug_logging_is_undone_by_a_client_without_debug_and_by_close(undo: str) -> None:
    logger = logging.getLogger("sentry_tracing_mw")
    assert logger.level == logging.NOTSET and not logger.handlers
    stm.init(debug=True, instrument_http_clients=False)
    assert logger.level == logging.DEBUG and len(logger.handlers) == 1
    stm.init(debug=True, instrument_http_clients=False)  # a second one changes nothing more
    assert len(logger.handlers) == 1
    if undo == "close()":
        stm.close()
    else:
        stm.init(debug=False, instrument_http_clients=False)
    assert logger.level == logging.NOTSET and not logger.handlers


def test_debug_logging_set_up_by_racing_threads_adds_one_handler() -> None:
    """Threads racing the first init(debug=True) each added a handler (2 to 8 in a probe),
    and init(debug=False) removed one: every later line was logged several times."""
    from sentry_tracing_mw._client import _configure_logging

    logger = logging.getLogger("sentry_tracing_mw")
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(20):
            barrier = threading.Barrier(16)

            def configure(barrier: threading.Barrier) -> None:
                barrier.wait()
                _configure_logging(True)

            threads = [threading.Thread(target=configure, args=(barrier,)) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(logger.handlers) == 1
            _configure_logging(False)
            assert logger.handlers == [] and logger.level == logging.NOTSET
    finally:
        sys.setswitchinterval(interval)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


def test_debug_off_leaves_the_apps_own_logging_alone() -> None:
    logger = logging.getLogger("sentry_tracing_mw")
    handler = logging.NullHandler()
    logger.addHandler(handler)
    try:
        stm.init(debug=True, instrument_http_clients=False)  # the app's handler: none added
        assert logger.handlers == [handler]
        logger.setLevel(logging.INFO)  # the app's choice since
        stm.close()
        assert logger.handlers == [handler] and logger.level == logging.INFO
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@pytest.mark.usefixtures("restore_instrumentation")
def test_dsn_may_be_given_positionally(sentry_server: SentryServer) -> None:
    client = stm.init(sentry_server.dsn, traces_sample_rate=1.0)  # sentry_sdk.init("...")
    assert client.options.dsn is not None and str(client.options.dsn) == sentry_server.dsn
    with stm.start_transaction("positional"):
        pass
    assert stm.flush(5)
    assert [t["transaction"] for t in sentry_server.transactions()] == ["positional"]
    with pytest.raises(stm.ConfigurationError, match="dsn"):
        stm.init("not a dsn")


@pytest.mark.usefixtures("restore_instrumentation")
def test_close_ends_initialization_and_the_next_middleware_inits_again(
    sentry_server: SentryServer,
) -> None:
    from flask import Flask

    from sentry_tracing_mw.integrations.flask import FlaskTracing

    stm.init(dsn="http://public@127.0.0.1:9/1", traces_sample_rate=1.0)
    assert stm.is_initialized()
    stm.close()
    assert not stm.is_initialized()
    # A test suite that closes between tests: the next app's own settings are used, not a
    # closed client's (which would drop everything silently).
    app = Flask("after_close")
    app.config.update(SENTRY_DSN=sentry_server.dsn, SENTRY_TRACES_SAMPLE_RATE=1.0)

    @app.route("/after")
    def after() -> str:
        return "ok"

    FlaskTracing(app)
    assert stm.is_initialized()
    assert app.test_client().get("/after").data == b"ok"
    assert stm.flush(5)
    assert [t["transaction"] for t in sentry_server.transactions()] == ["/after"]
    stm.close()
    stm.close()  # idempotent, and fine with nothing initialized
    assert not stm.is_initialized()


@pytest.mark.usefixtures("restore_instrumentation")
def test_a_later_init_without_client_instrumentation_restores_the_clients() -> None:
    http_clients.uninstrument()
    stm.init()
    assert http_clients.is_instrumented()
    stm.init(instrument_http_clients=False)  # the replacing client's option applies
    assert not http_clients.is_instrumented()
    stm.init(instrument_http_clients=False)
    assert not http_clients.is_instrumented()
    # Patching the user did by hand is theirs: init() restores only what init() patched.
    http_clients.instrument()
    stm.init(instrument_http_clients=False)
    assert http_clients.is_instrumented()


@pytest.mark.usefixtures("restore_instrumentation")
def test_a_transaction_open_across_a_second_init_is_sent_by_the_new_client(
    sentry_server: SentryServer,
) -> None:
    stm.init(dsn="http://public@127.0.0.1:9/1", traces_sample_rate=1.0)
    tx = stm.start_transaction("in-flight", op="http.server")
    with tx.start_child("db", "query"):
        pass
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)  # closes the first client
    tx.finish()
    assert stm.flush(5)
    (event,) = sentry_server.transactions()
    assert event["transaction"] == "in-flight"
    assert [s["description"] for s in event["spans"]] == ["query"]


@pytest.mark.usefixtures("restore_instrumentation")
def test_a_transaction_finished_after_close_is_not_sent_and_does_not_fail(
    sentry_server: SentryServer,
) -> None:
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    tx = stm.start_transaction("late")
    stm.close()
    tx.finish()  # nothing current to send it: dropped without an exception
    stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
    assert stm.flush(5)
    assert sentry_server.transactions() == []


def test_init_replacing_a_client_a_middleware_made_names_the_options_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sentry_tracing_mw.integrations.wsgi import TracingMiddleware

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        return [b""]

    TracingMiddleware(app, traces_sample_rate=1.0, release="mw@1", instrument_http_clients=False)
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        stm.init(release="mw@1", instrument_http_clients=False)  # the same release: kept
    (message,) = [r.getMessage() for r in caplog.records]
    assert "TracingMiddleware" in message and "options traces_sample_rate;" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sentry_tracing_mw"):
        stm.init(instrument_http_clients=False)  # replacing init()'s own client: no warning
        stm.close()
        TracingMiddleware(app)  # no options of its own: nothing is dropped
        stm.init(instrument_http_clients=False)
    assert not caplog.records


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.usefixtures("restore_instrumentation")
@pytest.mark.parametrize(
    "module, name",
    [
        ("sentry_tracing_mw.integrations.http_clients", "_lock"),
        ("sentry_tracing_mw._client", "_lock"),
        ("sentry_tracing_mw.integrations._common", "_init_lock"),
        ("sentry_tracing_mw._log", "_warned_lock"),
    ],
)
def test_a_child_forked_while_a_thread_holds_a_module_lock_can_init(
    sentry_server: SentryServer, module: str, name: str
) -> None:
    """A thread inside init() (importing the HTTP clients to patch them takes tens of ms)
    holds a module lock when another thread forks: the child's own init() hung for ever
    on the copy, which no thread of the child releases. (A thread forked in the middle of
    patching leaves the child's HTTP clients unpatched, with a warning.)"""
    lock = getattr(importlib.import_module(module), name)
    released = threading.Event()
    held = threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            released.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            signal.alarm(10)  # a hang fails the test instead of blocking it
            code = 1
            try:
                from sentry_tracing_mw._log import warn_once
                from sentry_tracing_mw.integrations._common import ensure_client

                stm.init(dsn=sentry_server.dsn, traces_sample_rate=1.0)
                http_clients.instrument()
                ensure_client({}, "TracingMiddleware")
                warn_once("forked child", "warned once in a forked child")
                # forked while a thread was patching: what it patched is unknown, and a
                # library it was importing cannot be imported here; left as they are
                patching = name == "_lock" and module.endswith("http_clients")
                code = 0 if (http_clients._installed is None) == patching else 3
            finally:
                os._exit(code)
    finally:
        released.set()
        holder.join(5)
    deadline = time.monotonic() + 15
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:  # pragma: no cover - the failure being tested
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(status) == 0
